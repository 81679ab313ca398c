"""The speed wing: code that makes lenet fast, beside the textbook core it must equal.

The core (backend, im2col, layers, model, optim, trainer) is complete on its own: `LeNet5(fused=False)` and
`trainer.PlainRunner` train exactly the code a reader sees. Each module here speeds up one part of it, says in its
docstring what core code it must equal, and tests/test_fast.py (tests/test_cuda.py on a GPU) holds it to that:

- convpool.py: the fused stage Conv2d -> activation -> 2x2 pooling (what `LeNet5(fused=True)`, the default, runs);
- parallel.py: data parallelism on the CPU over chunks of each batch (equals trainer.train_step), its workers
               processes.py's worker processes on Linux, Python threads elsewhere;
- graphs.py:   CUDA graphs of the training step on CuPy (equals the eager step);
- tuning.py:   process settings (malloc, BLAS threads) that the entry points make.

A training step reaches the wing in one visible place: the entry point hands `FastRunner` to trainer.fit, e.g.

    fit(config, runner=FastRunner.for_config)   # instead of the default trainer.PlainRunner
"""

import os
import traceback
import warnings

import numpy as np

from .parallel import DataParallel, default_threads


class FastRunner:
    """Runs `model`'s training steps and forward passes fast; the interface of trainer.PlainRunner.

    On NumPy the steps go to DataParallel (worker processes or threads over chunks of each batch). On CuPy each
    batch shape's step becomes a CUDA graph after two eager steps (graphs.py); its (loss, correct) are overwritten
    by the next step. Should recording fail, a warning says why, and the steps go on eagerly.
    """

    def __init__(self, model, optimizer, threads=None, cuda_graphs=True):
        self.model, self.optimizer = model, optimizer
        self.parallel = DataParallel(model, threads or default_threads(model.xp))
        self.cuda_graphs = cuda_graphs and model.xp is not np
        self._graphs = {}  # (x shape, y shape) -> graphs.GraphStep

    @classmethod
    def for_config(cls, model, optimizer, config):
        """The runner a TrainConfig asks for (its threads and cuda_graphs)."""
        return cls(model, optimizer, threads=config.threads, cuda_graphs=config.cuda_graphs)

    def train_step(self, x, y):
        """Forward, loss, backward and optimizer step on a batch. Returns (loss, correct) on the device."""
        if self.cuda_graphs:
            key = (x.shape, y.shape)
            try:
                if key not in self._graphs:
                    from . import graphs  # imports cupy: only reached on the CuPy backend

                    self._graphs[key] = graphs.GraphStep(self.parallel.train_step, self.optimizer, x, y)
                return self._graphs[key](x, y)
            except Exception as e:  # any failure to record falls back to the eager step
                self.cuda_graphs, self._graphs = False, {}
                where = [f for f in traceback.extract_tb(e.__traceback__) if f"{os.sep}lenet{os.sep}" in f.filename]
                at = f" at {os.path.basename(where[-1].filename)}:{where[-1].lineno}" if where else ""
                reason = f"{type(e).__name__}: {e}{at}"
                warnings.warn(f"CUDA graphs are off ({reason}); the steps go on without them", stacklevel=2)
        return self.parallel.train_step(self.optimizer, x, y)

    def forward(self, x):
        """Logits for a batch, its chunks run in parallel."""
        return self.parallel.forward(x)

    def close(self):
        self.parallel.close()


__all__ = ["DataParallel", "FastRunner", "default_threads"]
