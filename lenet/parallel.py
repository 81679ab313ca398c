"""Data parallelism on the CPU: Python threads that each run part of a batch.

NumPy releases the GIL inside ufuncs and BLAS calls, so two threads, each running forward and backward on
half of the batch with a one-thread BLAS, keep both cores busy through the elementwise work too, which a
single thread (whose BLAS alone is multi-threaded) leaves on one core. Each thread uses its own replica of
the model (shared weights, own caches and gradients); the gradients are added in a fixed order, so a run
is as deterministic as a single thread's. The loss is the mean over the whole batch: each part's loss
gradient is scaled by its share of the batch.
"""

import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from .backend import get_array_module
from .layers import SoftmaxCrossEntropy

# With the default 5 ms switch interval a thread that wants the GIL back waits too long between the
# short NumPy calls of a LeNet step; 0.1 ms lets the two threads interleave (measured: see README).
SWITCH_INTERVAL_S = 1e-4


def default_threads(xp):
    """Threads for data parallelism: one per core on NumPy, 1 on CuPy (the GPU is one device)."""
    if xp is not np:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class DataParallel:
    """Run training steps and inference of `model` over `threads` parts of each batch.

    Parts smaller than `min_part` are not split (below it one thread with a multi-threaded BLAS is faster).
    """

    def __init__(self, model, threads=2, min_part=48):
        self.model, self.threads, self.min_part = model, threads, min_part
        self.replicas = [model] + [model.replica() for _ in range(threads - 1)]
        self.loss_fns = [SoftmaxCrossEntropy() for _ in range(threads)]
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    # The process-wide settings (BLAS threads, switch interval) hold only while a step runs in parallel.
    @contextlib.contextmanager
    def _parallel_settings(self):
        old = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            with threadpool_limits(1, user_api="blas"):
                yield
        finally:
            sys.setswitchinterval(old)

    def _parts(self, n):
        k = max(1, min(self.threads, n // self.min_part))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    def train_step(self, optimizer, x, y):
        """Forward, loss, backward and optimizer step on a batch. Returns (loss, correct) on the device."""
        n = x.shape[0]
        parts = self._parts(n)
        if len(parts) == 1:
            return _step_part(self.model, self.loss_fns[0], x, y, 1.0, optimizer)

        def work(i):
            lo, hi = parts[i]
            return _step_part(self.replicas[i], self.loss_fns[i], x[lo:hi], y[lo:hi], (hi - lo) / n)

        with self._parallel_settings():
            results = list(self._pool.map(work, range(len(parts))))
        # model.grad = sum over the parts; the first part's arrays are the model's own.
        params = [r.parameters() for r in self.replicas[: len(parts)]]
        for group in zip(*params, strict=True):
            for other in group[1:]:
                group[0].grad += other.grad
        optimizer.step()
        loss = sum(r[0] for r in results)
        correct = sum(r[1] for r in results)
        return loss, correct

    def forward(self, x):
        """Logits for a batch, the parts run in parallel."""
        parts = self._parts(x.shape[0])
        if len(parts) == 1:
            return self.model.forward(x)
        xp = get_array_module(x)
        with self._parallel_settings():
            outs = list(
                self._pool.map(lambda i: self.replicas[i].forward(x[parts[i][0] : parts[i][1]]), range(len(parts)))
            )
        return xp.concatenate(outs)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()


def _step_part(model, loss_fn, x, y, share, optimizer=None):
    """Forward and backward on (part of) a batch, its loss gradient scaled by `share`; optionally the step."""
    logits = model.forward(x)
    loss = loss_fn.forward(logits, y)
    dlogits = loss_fn.backward()
    if share != 1.0:
        dlogits *= dlogits.dtype.type(share)
    model.backward(dlogits)
    if optimizer is not None:
        optimizer.step()
    return loss * share, (logits.argmax(axis=1) == y).sum()
