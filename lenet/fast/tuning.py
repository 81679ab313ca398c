"""Process tuning for the NumPy backend: settings of the whole process that the entry points make, never a constructor.

What it speeds up: the allocator and BLAS behaviour around a LeNet step, not its arithmetic; nothing here changes a
single number a step computes. `benchmarks/run.py` measures a step with these settings, as train.py runs it.

- glibc's malloc gives every freed block over 128 KiB back to the system at once (mmap/munmap), so each of a step's
  im2col buffers is fresh memory whose pages fault in on first touch; `keep_freed_memory` raises that threshold.
  (glibc raises it by itself once large blocks have been freed, which is why a run that loaded a big data set was
  fast without it; this makes every process fast.)
- OpenBLAS's own threads spin while they wait for work; next to lenet's threads (lenet/fast/parallel.py), or with
  anything else running on the machine, they slowed training steps by orders of magnitude. `one_thread_blas` holds BLAS
  at one thread per call.
"""

import contextlib
import ctypes
import sys

from threadpoolctl import ThreadpoolController

_blas = None  # a ThreadpoolController, made once: finding the BLAS libraries again each step costs a noticeable share


def one_thread_blas():
    """A context in which NumPy's BLAS uses one thread (it restores the previous setting on exit)."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    if all(lib.num_threads == 1 for lib in _blas.select(user_api="blas").lib_controllers):
        return contextlib.nullcontext()  # already so (tune_process): checking costs a step less than limiting
    return _blas.limit(limits=1, user_api="blas")


def keep_freed_memory():
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB for reuse instead of handing them back to the OS.

    Linux with glibc only; elsewhere a no-op. Returns whether the setting took.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def tune_process(backend="numpy"):
    """What train.py, test.py and the benchmarks call once at start: the settings above, for the NumPy backend.

    BLAS is held at one thread for the rest of the process (lenet's own threads use the cores); returns the
    threadpoolctl limiter, whose restore_original_limits() undoes that. None on CuPy (nothing to tune).
    """
    if backend != "numpy":
        return None
    keep_freed_memory()
    return one_thread_blas()
