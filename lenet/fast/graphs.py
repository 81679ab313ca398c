"""CUDA graphs for the CuPy backend: a whole training step launched as one graph.

What it speeds up: an eager lenet step makes a few hundred CuPy calls (kernels and views), each costing the host more
time than the GPU needs to run it, so an eager step takes about the same time whatever the batch size. A CUDA graph
records the step's kernels once and replays them with one launch (docs/speed.md has the figures; benchmarks/run.py
measures them). What it must equal: the eager step it records (lenet/fast/parallel.py's, itself equal to
trainer.train_step), the same numbers up to the rounding of another matrix-product kernel; tests/test_cuda.py holds it
to that on a GPU. Three things stand in the way, and this module handles them:

- CuPy refuses cuBLAS calls while a stream is being captured. `matmul` is lenet's own tiled matrix product (any
  strides, float32 or float64); the layers call it through backend.matmul, which hands CuPy products to it while
  `capturable()` has set backend.matmul_override.
- A graph replays fixed addresses. The batch is copied into fixed input arrays, every array the step allocates comes
  from a memory pool of the graph's own (nothing else allocates from it, so its blocks stay the graph's), and the
  optimizer reads its per-step numbers (learning rate, bias corrections) from a device array written before each
  replay (Optimizer.coefficients).
- Capture runs nothing: the step is run eagerly first (warm-up), so every kernel is compiled and every block the
  capture asks for is already in the pool.

Imported only when CuPy is in use (backend.get_backend("cupy") has succeeded).
"""

import contextlib

import cupy
import numpy as np

from .. import backend

_GEMM_SOURCE = r"""
template <typename T>
__global__ void gemm(const T* a, const T* b, T* c, int m, int n, int k, int kc,
                     long long sam, long long sak, long long sbk, long long sbn, long long scm, long long scn,
                     long long scz) {
    // c[z] (m, n) = a[:, z*kc:(z+1)*kc] @ b[z*kc:(z+1)*kc, :] for z = blockIdx.z, all with element strides;
    // 16x16 tiles through shared memory.
    __shared__ T tile_a[16][17];
    __shared__ T tile_b[16][17];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
    const int k_end = min(k, (int)(blockIdx.z + 1) * kc);
    T acc = 0;
    for (int k0 = blockIdx.z * kc; k0 < k_end; k0 += 16) {
        tile_a[ty][tx] = (row < m && k0 + tx < k_end) ? a[row * sam + (k0 + tx) * sak] : T(0);
        tile_b[ty][tx] = (k0 + ty < k_end && col < n) ? b[(k0 + ty) * sbk + col * sbn] : T(0);
        __syncthreads();
        #pragma unroll
        for (int i = 0; i < 16; ++i) acc += tile_a[ty][i] * tile_b[i][tx];
        __syncthreads();
    }
    if (row < m && col < n) c[blockIdx.z * scz + row * scm + col * scn] = acc;
}
"""
_GEMM_NAMES = {np.dtype(np.float32): "gemm<float>", np.dtype(np.float64): "gemm<double>"}
_kernels = {}


def _gemm(dtype):
    if not _kernels:
        module = cupy.RawModule(code=_GEMM_SOURCE, options=("-std=c++14",), name_expressions=list(_GEMM_NAMES.values()))
        _kernels.update({d: module.get_function(name) for d, name in _GEMM_NAMES.items()})
    return _kernels[np.dtype(dtype)]


def matmul(a, b, out=None):
    """a (M, K) @ b (K, N) -> out (M, N), any strides, without cuBLAS (so a CUDA graph can capture it).

    When the output has few tiles and K is long (a weight gradient: K is the batch times the pixels), K is cut
    into slices whose partial products are summed afterwards, so that enough blocks run at once.
    """
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2 or a.dtype != b.dtype or (out is not None and (out.shape != (m, n) or out.dtype != a.dtype)):
        raise ValueError(f"matmul: shapes {a.shape} @ {b.shape}, dtypes {a.dtype} and {b.dtype}")
    if out is None:
        out = cupy.empty((m, n), dtype=a.dtype)
    tiles = -(-n // 16) * -(-m // 16)
    splits = max(1, min(-(-k // 512), -(-256 // tiles)))  # slices of at least 512 until about 256 blocks
    kc = -(-k // splits)
    target = out if splits == 1 else cupy.empty((splits, m, n), dtype=a.dtype)
    size = a.itemsize
    strides = [np.int64(s // size) for s in (*a.strides, *b.strides, *target.strides[-2:])]
    scz = np.int64(target.strides[0] // size if splits > 1 else 0)
    grid = (-(-n // 16), -(-m // 16), splits)
    sizes = [np.int32(v) for v in (m, n, k, kc)]
    _gemm(a.dtype)(grid, (16, 16, 1), (a, b, target, *sizes, *strides, scz))
    if splits > 1:
        cupy.sum(target, axis=0, out=out)
    return out


@contextlib.contextmanager
def capturable():
    """Run lenet's CuPy code without cuBLAS (for warm-up and capture): backend.matmul uses `matmul` above."""
    before, backend.matmul_override = backend.matmul_override, matmul
    try:
        yield
    finally:
        backend.matmul_override = before


class GraphStep:
    """`step(optimizer, x, y)` (an eager training step, e.g. DataParallel's) for one batch shape, from a CUDA graph.

    The first WARMUP calls run the step eagerly, on the graph's stream and memory pool and without cuBLAS: they are
    real training steps, and they compile every kernel and fill the pool. The next call records the step as a graph
    (recording runs nothing) and replays it; every later call copies the batch in and replays. The same numbers come
    out as from eager steps, up to the rounding of a different matrix-product kernel. (loss, correct) are device
    arrays of the graph's, overwritten by the next call: read or add them before that.
    """

    WARMUP = 2

    def __init__(self, step, optimizer, x, y):
        self.step, self.optimizer = step, optimizer
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.pool = cupy.cuda.MemoryPool()  # the graph's own: nothing else allocates from it
        self.calls, self.graph, self.result = 0, None, None
        with self._own():
            self.x, self.y = cupy.empty_like(x), cupy.empty_like(y)
            self.coefficients = cupy.empty(len(optimizer.coefficients(1)), dtype=optimizer.params[0].data.dtype)

    @contextlib.contextmanager
    def _own(self):
        """Run on the graph's stream and pool without cuBLAS, ordered after and before the default stream's work."""
        null = cupy.cuda.Stream.null
        self.stream.wait_event(null.record())
        try:
            with cupy.cuda.using_allocator(self.pool.malloc), self.stream, capturable():
                yield
        finally:
            null.wait_event(self.stream.record())

    def _write_coefficients(self):
        values = list(self.optimizer.coefficients(self.optimizer.steps + 1).values())
        self.coefficients.set(np.asarray(values, dtype=self.coefficients.dtype))

    def __call__(self, x, y):
        opt = self.optimizer
        self._write_coefficients()  # on the default stream, before the step's work
        self.x[...], self.y[...] = x, y
        self.calls += 1
        if self.graph is None:
            with self._own():
                opt.device_coefficients = self.coefficients
                try:
                    if self.calls <= self.WARMUP:
                        return self.step(opt, self.x, self.y)
                    self._record()
                finally:
                    opt.device_coefficients = None
        opt.steps += 1
        self.graph.launch(stream=cupy.cuda.Stream.null)
        return self.result

    def _record(self):
        steps = self.optimizer.steps
        self.stream.begin_capture()
        try:
            self.result = self.step(self.optimizer, self.x, self.y)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stream.end_capture()
            raise
        finally:
            self.optimizer.steps = steps  # recording took no step: the replay does
        self.graph = self.stream.end_capture()
