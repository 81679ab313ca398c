"""The speed wing: code that makes lenet fast, beside the textbook core it must equal.

The core (backend, im2col, layers, model, optim, step, trainer) is complete on its own: `LeNet5()` and
`trainer.PlainRunner` train exactly the code a reader sees. The wing wraps the model from outside and the model never
knows. Each module here speeds up one part of it, says in its docstring what core code it must equal, and
tests/test_fast.py and tests/test_parallel.py (tests/test_cuda.py on a GPU) hold it to that:

- convpool.py:  the fused stage Conv2d -> activation -> 2x2 pooling as one layer;
- fused.py:     fuse(model), the model's twin on the same parameters with its conv stages fused;
- parallel.py:  data parallelism on the CPU over chunks of each batch (equals the core's train_step), its workers
                processes.py's worker processes on Linux, Python threads elsewhere, each running chunk.py's step;
- gpu.py:       the model and its optimizer on CuPy as a few kernels of kernels.cu and cuBLAS products (cublas.py);
- graphs.py:    CUDA graphs of gpu.py's training step and forward pass (equal its eager calls);
- contention.py: how much of the CPU other programs take, which the worker processes' waiting adapts to;
- tuning.py:    process settings (malloc, BLAS threads, switch interval) that the entry points make.

A training step reaches the wing in one visible place: the entry point hands `FastRunner` to trainer.fit, e.g.

    tune_process(config.backend)                # at the top of the entry point: the process settings
    fit(config, runner=FastRunner.for_config)   # instead of the default trainer.PlainRunner
"""

import os
import traceback
import warnings

import numpy as np

from .fused import fuse
from .parallel import DataParallel, default_threads


class FastRunner:
    """Runs `model`'s training steps and forward passes fast; the interface of trainer.PlainRunner.

    On NumPy the steps run the model's fused twin, fuse(model), on the model's own parameters (so `optimizer`, made
    on model.parameters(), steps both), through DataParallel (worker processes or threads over chunks of each batch);
    the process settings they need are the entry point's (tuning.tune_process). On CuPy they go to the model's GPU
    twin (gpu.py: LeNet-5 in a few kernels), each batch size's step and forward pass replayed as a CUDA graph after
    its first call (graphs.py). Should recording fail, a warning says why and the twin goes on eagerly; an optimizer
    the twin does not know runs the fused twin's step, eagerly. On CuPy the results, (loss, correct) and logits, are
    overwritten by the next call of the same batch size. optimizer=None: forward passes only. warn(line): told
    once when other programs start to use the CPU beside the workers (DataParallel's notify).
    """

    def __init__(self, model, optimizer, threads=None, cuda_graphs=True, warn=None):
        self.model, self.optimizer = model, optimizer
        self.parallel = self.gpu = self.graphs = None
        if model.xp is not np:
            from .gpu import GpuTwin  # imports cupy: only reached on the CuPy backend

            if optimizer is None or type(optimizer) in GpuTwin.OPTIMIZERS:
                self.gpu = GpuTwin(model, optimizer)
                if cuda_graphs:
                    from .graphs import CudaGraphs

                    self.graphs = CudaGraphs(self.gpu)
        if self.gpu is None:
            self.parallel = DataParallel(fuse(model), threads or default_threads(model.xp), notify=warn)

    @property
    def cuda_graphs(self):
        return self.graphs is not None

    @classmethod
    def for_config(cls, model, optimizer, config, warn=None):
        """The runner a TrainConfig asks for (its threads and cuda_graphs); warn(line): where to say that other programs
        are using the CPU, and what the workers do about it (once a run)."""
        return cls(model, optimizer, threads=config.threads, cuda_graphs=config.cuda_graphs, warn=warn)

    def train_step(self, x, y):
        """Forward, loss, backward and optimizer step on a batch. Returns (loss, correct) on the device."""
        if self.parallel is not None:
            return self.parallel.train_step(self.optimizer, x, y)
        return self._guarded(lambda runs: runs.train_step(x, y))

    def forward(self, x):
        """Logits for a batch."""
        if self.parallel is not None:
            return self.parallel.forward(x)
        return self._guarded(lambda runs: runs.forward(x))

    def _guarded(self, call):
        """call(graphs or twin); a graph that fails to record turns graphs off, with a warning, and runs eagerly."""
        if self.graphs is None:
            return call(self.gpu)
        try:
            return call(self.graphs)
        except Exception as e:
            self.graphs = None
            where = [f for f in traceback.extract_tb(e.__traceback__) if f"{os.sep}lenet{os.sep}" in f.filename]
            at = f" at {os.path.basename(where[-1].filename)}:{where[-1].lineno}" if where else ""
            warnings.warn(
                f"CUDA graphs are off ({type(e).__name__}: {e}{at}); the steps go on without them", stacklevel=3
            )
        return call(self.gpu)

    def close(self):
        if self.parallel is not None:
            self.parallel.close()


__all__ = ["DataParallel", "FastRunner", "default_threads", "fuse"]
