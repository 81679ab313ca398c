"""lenet/fast/kernels.cu run on the CPU: a stand-in for lenet.fast.gpu.CudaDevice in tests without a GPU.

The kernels are compiled by the C++ compiler against cuda_on_cpu.h (each CUDA thread a fiber, __syncthreads a
meeting point of the block's fibers, shared memory one array per block), the arrays are NumPy's and the matrix
products np.matmul. What the GPU twin computes is then checked against the textbook model in CI, where no GPU is:
every index, every barrier and every reduction order of the kernels, but not their speed, cuBLAS, or CUDA graphs
(tests/test_cuda.py covers those on a GPU).
"""

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lenet.fast.gpu import KERNELS_SOURCE

SHIM = Path(__file__).with_name("cuda_on_cpu.h")
_SCALARS = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.float32: ctypes.c_float, np.float64: ctypes.c_double}


def compiler():
    """The C++ compiler, or None."""
    return shutil.which("g++") or shutil.which("c++")


def build(names):
    """A shared library with one launch_<i> function per template instantiation in `names` (cached by content)."""
    wrappers = "\n".join(
        f'extern "C" void launch_{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, '
        f"void** p) {{ emu::launch(&{name}, dim3(gx, gy, gz), dim3(bx, by, bz), p); }}"
        for i, name in enumerate(names)
    )
    source = f'#include "{SHIM}"\n#include "{KERNELS_SOURCE}"\n{wrappers}\n'
    key = hashlib.sha256((source + SHIM.read_text() + KERNELS_SOURCE.read_text()).encode()).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"lenet-cuda-on-cpu-{key}.so"
    if not lib.exists():
        cpp = lib.with_suffix(".cpp")
        cpp.write_text(source)
        tmp = lib.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.tmp")
        subprocess.run(
            [compiler(), "-std=c++17", "-O1", "-w", "-shared", "-fPIC", "-o", str(tmp), str(cpp)],
            check=True,
            capture_output=True,
            text=True,
        )
        tmp.replace(lib)  # atomic: a parallel test process never loads half a library
    return ctypes.CDLL(str(lib))


class Kernel:
    """One instantiation, called as CuPy calls a RawKernel: kernel(grid, block, args)."""

    def __init__(self, function, name):
        self.function, self.name = function, name

    def __call__(self, grid, block, args):
        values = []
        for a in args:
            if isinstance(a, np.ndarray):
                values.append(ctypes.c_void_p(a.ctypes.data))
            elif type(a) in _SCALARS:
                values.append(_SCALARS[type(a)](a))
            else:
                raise TypeError(f"{self.name}: argument {a!r} needs an explicit NumPy type, as CuPy would")
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        grid, block = (*grid, 1, 1)[:3], (*block, 1, 1)[:3]
        self.function(*map(ctypes.c_uint, (*grid, *block)), params)


class CpuDevice:
    """lenet.fast.gpu.CudaDevice's interface on NumPy arrays."""

    xp = np

    def compile(self, names):
        order = sorted(set(names.values()))
        lib = build(order)
        return {role: Kernel(getattr(lib, f"launch_{order.index(name)}"), name) for role, name in names.items()}

    def gemm(self, a, b, out):
        np.matmul(a, b, out=out)

    def copy(self, dst, src):
        dst[...] = src
