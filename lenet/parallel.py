"""Data parallelism on the CPU: Python threads that each run part of a batch, each with a one-thread BLAS.

NumPy releases the GIL inside ufuncs and BLAS calls, so two threads, each running forward and backward on
part of the batch with a one-thread BLAS, keep both cores busy through the elementwise work too, which a
single thread (whose BLAS alone is multi-threaded) leaves on one core. Each thread uses its own replica of
the model (shared weights, own caches and gradients). Large batches are cut into chunks of at most
`max_chunk` images that a thread runs one after another, so the im2col buffers of a chunk stay in cache;
the gradients of the chunks are added in a fixed order, so a run is exactly as repeatable as a single
thread's. The loss is the mean over the whole batch: each chunk's loss gradient is scaled by its share.

BLAS runs one thread per call always, also when the batch is too small to split: OpenBLAS's own threads
spin while they wait, and on a machine where anything else runs they were measured to slow a LeNet step
by 30 to 500 times. On an idle machine a two-thread BLAS was only about 10% faster at batch 32.
"""

import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from .layers import SoftmaxCrossEntropy

# With the default 5 ms switch interval a thread that wants the GIL back can wait long between the many
# short NumPy calls of a LeNet step; a shorter one lets the two threads interleave.
SWITCH_INTERVAL_S = 5e-4

_blas = None  # a ThreadpoolController, made once: threadpool_limits() would cost 0.2 ms a step to find BLAS


def one_thread_blas():
    """A context in which NumPy's BLAS uses one thread (it restores the previous setting on exit)."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def default_threads(xp):
    """Threads for data parallelism: one per core on NumPy, 1 on CuPy (the GPU is one device)."""
    if xp is not np:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class DataParallel:
    """Runs training steps and inference of `model` on `threads` threads, over chunks of each batch.

    A batch is split only into chunks of at least `min_chunk` images (below that one thread with a
    multi-threaded BLAS is faster) and at most `max_chunk` (beyond that the buffers fall out of cache).
    With threads=1 and a batch up to max_chunk this is exactly model.forward / backward / optimizer.step.
    """

    def __init__(self, model, threads=2, min_chunk=48, max_chunk=128):
        self.model, self.threads = model, threads
        # A GPU wants the whole batch in one go: no chunks there.
        self.min_chunk, self.max_chunk = min_chunk, (max_chunk if model.xp is np else None)
        self.replicas = [model] + [model.replica() for _ in range(threads - 1)]
        self.loss_fns = [SoftmaxCrossEntropy() for _ in range(threads)]
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def chunks(self, n):
        """[(start, stop)] of the chunks of a batch of n: as few as the limits allow, at least one per thread."""
        k = max(-(-n // self.max_chunk) if self.max_chunk else 1, min(self.threads, n // self.min_chunk), 1)
        if self.threads > 1 and k > 1:
            k = -(-k // self.threads) * self.threads  # a whole number of chunks per thread
        bounds = [round(i * n / k) for i in range(k + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    @contextlib.contextmanager
    def _settings(self, parallel):
        """Process-wide settings that hold only during a step: a one-thread BLAS (NumPy), a short switch interval."""
        if self.model.xp is not np:
            yield
            return
        old = sys.getswitchinterval()
        if parallel:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            with one_thread_blas():
                yield
        finally:
            sys.setswitchinterval(old)

    def _map(self, work, chunks):
        """Run work(replica_index, chunk_indices) for every thread's share of the chunks; results in order."""
        threads = min(self.threads, len(chunks))
        shares = [list(range(t, len(chunks), threads)) for t in range(threads)]
        with self._settings(parallel=threads > 1):
            if threads == 1:
                return [work(0, shares[0])]
            return list(self._pool.map(work, range(threads), shares))

    def train_step(self, optimizer, x, y):
        """Forward, loss, backward and optimizer step on a batch. Returns (loss, correct) on the device."""
        n = x.shape[0]
        chunks = self.chunks(n)

        def work(r, share):
            model, loss_fn = self.replicas[r], self.loss_fns[r]
            loss = correct = grads = None
            for c in share:
                lo, hi = chunks[c]
                logits = model.forward(x[lo:hi])
                part_loss = loss_fn.forward(logits, y[lo:hi]) * ((hi - lo) / n)
                dlogits = loss_fn.backward()
                if hi - lo != n:
                    dlogits *= dlogits.dtype.type((hi - lo) / n)
                model.backward(dlogits)
                part_correct = (logits.argmax(axis=1) == y[lo:hi]).sum()
                if grads is None:
                    loss, correct, grads = part_loss, part_correct, [p.grad for p in model.parameters()]
                else:
                    loss, correct = loss + part_loss, correct + part_correct
                    for g, p in zip(grads, model.parameters(), strict=True):
                        g += p.grad
            return loss, correct, grads

        results = self._map(work, chunks)
        loss, correct, grads = results[0]
        for other_loss, other_correct, other_grads in results[1:]:
            loss, correct = loss + other_loss, correct + other_correct
            for g, other in zip(grads, other_grads, strict=True):
                g += other
        for p, g in zip(self.model.parameters(), grads, strict=True):
            p.grad = g
        optimizer.step()
        return loss, correct

    def forward(self, x):
        """Logits for a batch, its chunks run in parallel."""
        chunks = self.chunks(x.shape[0])
        out = [None] * len(chunks)

        def work(r, share):
            for c in share:
                lo, hi = chunks[c]
                out[c] = self.replicas[r].forward(x[lo:hi])

        self._map(work, chunks)
        return out[0] if len(out) == 1 else self.model.xp.concatenate(out)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
