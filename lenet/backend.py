"""The array backend: the one module that knows about NumPy and CuPy.

Layer code never imports cupy. It asks an array for its module, as CuPy's user guide recommends:

    xp = get_array_module(x)      # numpy or cupy, whichever owns x

CuPy is imported lazily, on the first request for it. If that fails (package missing, no CUDA
device, driver too old), the reason is kept and shown in one sentence by `get_backend("cupy")`.
"""

import os

import numpy as np

from .errors import LenetError

BACKENDS = ("numpy", "cupy")

_cupy = None  # the cupy module once imported and checked
_cupy_error = None  # why it could not be used, once we know


def _load_cupy():
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        _cupy_error = (
            f"CuPy is not installed or does not import ({type(e).__name__}: {e}); "
            "install the wheel for your CUDA version, e.g. pip install 'lenet[gpu]' "
            "or pip install cupy-cuda12x"
        )
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, driver too old, no device
        _cupy_error = f"CuPy is installed but no CUDA device answers ({type(e).__name__}: {e})"
        return None
    if count < 1:
        _cupy_error = "CuPy is installed but this machine has no CUDA device"
        return None
    _cupy = cupy
    return _cupy


def cupy_available():
    """True when CuPy imports and a CUDA device answers."""
    return _load_cupy() is not None


def cupy_unavailable_reason():
    """The sentence that explains why CuPy cannot be used here, or None if it can."""
    _load_cupy()
    return _cupy_error


def get_backend(name):
    """Return the array module for a backend name: numpy, or cupy (checked to have a GPU)."""
    if name == "numpy":
        return np
    if name == "cupy":
        cp = _load_cupy()
        if cp is None:
            raise LenetError(f"--backend cupy is not available: {_cupy_error}")
        return cp
    raise LenetError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


def get_array_module(x):
    """numpy or cupy, whichever owns the array x (numpy for anything that is not a CuPy array)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy
    return np


def backend_name(xp):
    return "cupy" if xp is not np else "numpy"


def to_numpy(x):
    """A NumPy copy of x (a host transfer for CuPy arrays): use it only at the edges."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def matmul(a, b, out=None):
    """a (M, K) @ b (K, N), into out (M, N) if given, by the array's own library (NumPy or CuPy)."""
    return get_array_module(a).matmul(a, b, out=out)


def cpu_cores():
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def synchronize(xp):
    """Wait for the GPU to finish queued work (nothing to do on NumPy). For timing only."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
