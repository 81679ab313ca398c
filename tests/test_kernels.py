"""Every CUDA kernel the GPU twin can ask for compiles, on any machine: NVRTC needs no GPU.

On a GPU CuPy compiles lenet/fast/kernels.cu with NVRTC when a run starts; here the same compiler, from the
nvidia-cuda-nvrtc wheel (the dev extra), is called through ctypes for every template instantiation of
gpu.all_kernel_names(), for Hopper (compute_90), so a kernel that does not build fails CI, with the compiler's log.
"""

import ctypes
import glob
import os

import pytest

from lenet.fast.gpu import KERNELS_SOURCE, all_kernel_names


def nvrtc_library():
    """The NVRTC library of the nvidia-cuda-nvrtc wheel, or None."""
    try:
        import nvidia
    except ImportError:
        return None
    for folder in nvidia.__path__:
        for path in sorted(glob.glob(os.path.join(folder, "*", "lib", "libnvrtc.so*"))):
            if "builtins" not in path:
                return ctypes.CDLL(path)
    return None


NVRTC = nvrtc_library()
pytestmark = pytest.mark.skipif(NVRTC is None, reason="NVRTC is not installed (pip install nvidia-cuda-nvrtc)")


def compile_kernels(source, names, options):
    """(status, log, {name: lowered name}) of one NVRTC compilation of `source` with `names` instantiated."""
    program = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), source, b"kernels.cu", 0, None, None) == 0
    try:
        for name in names:
            assert NVRTC.nvrtcAddNameExpression(program, name.encode()) == 0
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = NVRTC.nvrtcCompileProgram(program, len(options), opts)
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(program, log)
        lowered = {}
        if status == 0:
            for name in names:
                symbol = ctypes.c_char_p()
                assert NVRTC.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(symbol)) == 0
                lowered[name] = symbol.value.decode()
        return status, log.value.decode(errors="replace"), lowered
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program))


def test_every_kernel_compiles_for_hopper():
    names = all_kernel_names()
    status, log, lowered = compile_kernels(KERNELS_SOURCE.read_bytes(), names, ["-arch=compute_90", "-std=c++17"])
    assert status == 0, f"NVRTC could not compile lenet/fast/kernels.cu:\n{log}"
    assert "warning" not in log.lower(), log
    assert set(lowered) == set(names) and all(lowered.values())


def test_a_broken_kernel_is_reported_with_the_compilers_words():
    """The check above can fail: a kernel with an error gives a status and a log that names it."""
    source = KERNELS_SOURCE.read_bytes() + b"\n__global__ void broken(float* x) { x[0] = undeclared; }\n"
    status, log, _ = compile_kernels(source, [], ["-arch=compute_90", "-std=c++17"])
    assert status != 0 and "undeclared" in log
