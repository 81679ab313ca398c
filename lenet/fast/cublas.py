"""cuBLAS through ctypes: matrix products that a CUDA graph can record.

Why not cupy.matmul: CuPy (14.2) refuses cuBLAS while a stream is being captured into a CUDA graph, through
cupy.matmul and through its own cublas bindings alike. cuBLAS itself records fine when its handle is set to the
capturing stream and has a workspace given beforehand (so it allocates nothing during the capture): this module
holds such a handle. It loads the very libcublas that CuPy loaded, so there is one cuBLAS in the process.

What it must equal: a @ b (tests/test_cuda.py compares it with NumPy; tests/test_gpu_emulated.py checks the
translation to cuBLAS's column-major arguments below against a column-major product written out in NumPy).
"""

import ctypes
import re

import numpy as np

OP_N, OP_T = 0, 1  # cublasOperation_t
WORKSPACE_BYTES = 32 << 20  # what NVIDIA's cuBLAS guide recommends on Hopper


def gemm_arguments(a, b, out):
    """The column-major cuBLAS call that computes the row-major out (M, N) = a (M, K) @ b (K, N).

    Each operand is a 2-D array view, either rows of a row-major matrix (strides (ld, 1) in elements) or the
    transpose of one (strides (1, ld)); out must be of the first kind. A row-major (R, C) matrix with leading
    dimension ld is, read column-major, its transpose, so out^T = b^T a^T is computed: cuBLAS's m, n, k are
    N, M, K and its first operand is b. Returns (op_b, op_a, m, n, k, b, ldb, a, lda, ldc) with a and b the
    arrays as given (their data pointers are the operands').
    """
    (m_rows, k), (k2, n_cols) = a.shape, b.shape
    if k != k2 or out.shape != (m_rows, n_cols) or not a.dtype == b.dtype == out.dtype:
        raise ValueError(f"gemm: {a.shape} {a.dtype} @ {b.shape} {b.dtype} -> {out.shape} {out.dtype}")
    op_a, lda = _layout(a)
    op_b, ldb = _layout(b)
    op_out, ldc = _layout(out)
    if op_out != OP_N:
        raise ValueError("gemm: the output must be rows of a row-major matrix")
    return op_b, op_a, n_cols, m_rows, k, b, ldb, a, lda, ldc


def _layout(x):
    """(OP_N, ld) for rows of a row-major matrix, (OP_T, ld) for the transpose of one (strides in elements)."""
    rows, cols = x.shape
    s0, s1 = (s // x.itemsize for s in x.strides)
    if (s1 == 1 or cols == 1) and s0 >= max(cols, 1):
        return OP_N, max(s0, cols, 1)
    if (s0 == 1 or rows == 1) and s1 >= max(rows, 1):
        return OP_T, max(s1, rows, 1)
    raise ValueError(f"gemm: an operand of shape {x.shape} and strides {x.strides} is neither layout")


def _library():
    """The libcublas CuPy loaded (the process's /proc/self/maps names it), else the system's."""
    import cupy

    cupy.cuda.device.get_cublas_handle()  # makes CuPy load its cuBLAS
    try:
        with open("/proc/self/maps") as f:
            paths = {m.group(0) for m in re.finditer(r"/\S*/libcublas\.so[.\d]*", f.read())}
    except OSError:
        paths = set()
    for path in sorted(paths) + ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    raise OSError("cannot find the cuBLAS library CuPy uses")


class Blas:
    """A cuBLAS handle of our own, with its workspace, that computes products on any stream (recorded or not)."""

    def __init__(self):
        import cupy

        lib = self.lib = _library()
        self.handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self.workspace = cupy.empty(WORKSPACE_BYTES, dtype=np.uint8)
        self._check(
            lib.cublasSetWorkspace_v2(
                self.handle, ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(WORKSPACE_BYTES)
            ),
            "cublasSetWorkspace",
        )
        self.stream = None
        self.one = {np.dtype(np.float32): ctypes.c_float(1), np.dtype(np.float64): ctypes.c_double(1)}
        self.zero = {np.dtype(np.float32): ctypes.c_float(0), np.dtype(np.float64): ctypes.c_double(0)}
        self.functions = {np.dtype(np.float32): lib.cublasSgemm_v2, np.dtype(np.float64): lib.cublasDgemm_v2}

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise RuntimeError(f"{what} failed: cuBLAS status {status}")

    def gemm(self, a, b, out, stream):
        """out = a @ b on `stream` (a stream pointer), queued there like any kernel."""
        op_b, op_a, m, n, k, b, ldb, a, lda, ldc = gemm_arguments(a, b, out)
        if stream != self.stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream)), "cublasSetStream")
            self.stream = stream
        dtype = out.dtype
        status = self.functions[dtype](
            self.handle, op_b, op_a, m, n, k, ctypes.byref(self.one[dtype]),
            ctypes.c_void_p(b.data.ptr), ldb, ctypes.c_void_p(a.data.ptr), lda,
            ctypes.byref(self.zero[dtype]), ctypes.c_void_p(out.data.ptr), ldc,
        )  # fmt: skip
        self._check(status, "cublas gemm")

    def __del__(self):
        if getattr(self, "handle", None) and self.handle.value:
            self.lib.cublasDestroy_v2(self.handle)
