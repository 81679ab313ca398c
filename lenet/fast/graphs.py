"""CUDA graphs: the GPU twin's training step or forward pass for one batch size, recorded once and replayed.

What it speeds up: even at 21 launches (gpu.py), an eager step costs the host more time than a small batch costs
the GPU: each CuPy launch takes microseconds of Python. A CUDA graph records the launches once and replays them with
one call. What it must equal: the twin's eager calls, bit for bit (the same kernels, products and buffers in the same
order; tests/test_cuda.py).

A graph replays fixed addresses and fixed arguments. The twin is built for that: every array a batch size needs is
made once (gpu._Buffers), the batch is copied into them before each replay, and what changes from step to step (the
learning rate, Adam's step count) is read by the kernels from device memory that the twin writes when it changes.
The first call of each batch size runs eagerly (it compiles and loads every kernel and cuBLAS's, which a recording
must not do); the second records the launches, which runs nothing, then replays them.

Imported only when CuPy is in use.
"""

import contextlib

import cupy


class CudaGraphs:
    """`twin.train_step` and `twin.forward` (a gpu.GpuTwin) replayed as CUDA graphs, one per batch size and kind."""

    def __init__(self, twin):
        self.twin = twin
        self.stream = cupy.cuda.Stream(non_blocking=True)  # recording needs a stream other than the default one
        self.graphs = {}  # (kind, batch size) -> cupy.cuda.Graph
        self.seen = set()  # (kind, batch size) run once eagerly

    def train_step(self, x, y):
        """twin.train_step(x, y); (loss, correct) are overwritten by the next step of this batch size."""
        twin = self.twin
        b = twin.stage_train(x, y)
        self._run(("train", b.n), lambda: twin.run_train(b))
        twin.finish_train()
        return b.loss, b.correct

    def forward(self, x):
        """twin.forward(x); the logits are overwritten by the next forward pass of this batch size."""
        b = self.twin.stage_forward(x)
        self._run(("forward", b.n), lambda: self.twin.run_forward(b))
        return b.logits

    def _run(self, key, launches):
        graph = self.graphs.get(key)
        if graph is None:
            if key not in self.seen:
                self.seen.add(key)
                launches()
                return
            graph = self.graphs[key] = self._record(launches)
        graph.launch(stream=cupy.cuda.get_current_stream())

    def _record(self, launches):
        """The launches as a graph (recording runs nothing)."""
        with self.stream:
            self.stream.begin_capture()
            try:
                launches()
            except BaseException:
                with contextlib.suppress(Exception):
                    self.stream.end_capture()
                raise
            return self.stream.end_capture()
