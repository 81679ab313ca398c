"""Data parallelism on the CPU: Python threads that each run part of a batch, each with a one-thread BLAS.

What it must equal: trainer.train_step on the whole batch (forward, mean loss, backward, optimizer step), the same
numbers up to the rounding of adding the chunks' gradients (tests/test_fast.py: 1e-12 in float64), and the same bits
whatever the number of threads. `benchmarks/run.py` measures what it gains.

NumPy releases the GIL inside ufuncs and BLAS calls, so two threads, each running forward and backward on
part of the batch with a one-thread BLAS, keep both cores busy through the elementwise work too, which a
single thread (whose BLAS alone is multi-threaded) leaves on one core. Each thread uses its own replica of
the model (shared weights, own caches and gradients). Batches are cut into chunks of at most `max_chunk`
images, which the threads take in turn, so the im2col buffers of a chunk stay in cache. How a batch is cut
depends on its size alone, and the chunks' gradients are added in chunk order, so the result is the same,
bit for bit, whatever the number of threads. The loss is the mean over the whole batch: each chunk's loss
gradient is scaled by its share.

BLAS runs one thread per call during a step, also when the batch is too small to split: OpenBLAS's own threads
spin while they wait (lenet/fast/tuning.py).
"""

import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..layers import SoftmaxCrossEntropy
from .tuning import one_thread_blas

# With the default 5 ms switch interval a thread that wants the GIL back can wait long between the many
# short NumPy calls of a LeNet step; a shorter one lets the two threads interleave.
SWITCH_INTERVAL_S = 5e-4


def default_threads(xp):
    """Threads for data parallelism: one per core on NumPy, 1 on CuPy (the GPU is one device)."""
    if xp is not np:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class DataParallel:
    """Runs training steps and inference of `model` on `threads` threads, over chunks of each batch.

    A batch of at least `split_at` images is cut into two chunks or more, of at most `max_chunk` images
    (beyond max_chunk the buffers fall out of cache). Smaller batches run on one thread: a small chunk's many
    short NumPy calls hold the GIL most of the time, so two threads on half a small batch each were no faster
    than one thread on all of it (docs/speed.md). A batch of one chunk is exactly trainer.train_step.
    """

    def __init__(self, model, threads=2, split_at=96, max_chunk=128):
        self.model, self.threads = model, threads
        self.on_cpu = model.xp is np  # a GPU wants the whole batch in one go, and has no BLAS threads to tame
        self.split_at, self.max_chunk = split_at, max_chunk
        self.replicas = [model] + [model.replica() for _ in range(threads - 1)]
        self.loss_fns = [SoftmaxCrossEntropy() for _ in range(threads)]
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def chunks(self, n):
        """[(start, stop)] of the chunks of a batch of n images; depends on n only, not on the threads."""
        if not self.on_cpu or n < self.split_at:
            return [(0, n)]
        k = max(2, -(-n // self.max_chunk))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    @contextlib.contextmanager
    def _settings(self, parallel):
        """Process-wide settings that hold only during a step: a one-thread BLAS (NumPy), a short switch interval."""
        if not self.on_cpu:
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

    def _map(self, work, n_chunks):
        """work(replica_index, chunk_index) for every chunk, the threads taking them in turn; results in order."""
        threads = min(self.threads, n_chunks)
        with self._settings(parallel=threads > 1):
            if threads == 1:
                return [work(0, c) for c in range(n_chunks)]

            errors = np.geterr()  # np.errstate is per thread: carry the caller's into the workers

            def share(t):
                with np.errstate(**errors):
                    return [work(t, c) for c in range(t, n_chunks, threads)]

            per_thread = list(self._pool.map(share, range(threads)))
        return [per_thread[c % threads][c // threads] for c in range(n_chunks)]

    def train_step(self, optimizer, x, y):
        """Forward, loss, backward and optimizer step on a batch. Returns (loss, correct) on the device."""
        n = x.shape[0]
        chunks = self.chunks(n)

        def work(r, c):
            model, loss_fn = self.replicas[r], self.loss_fns[r]
            lo, hi = chunks[c]
            logits = model.forward(x[lo:hi])
            loss = loss_fn.forward(logits, y[lo:hi])
            dlogits = loss_fn.backward()
            if hi - lo != n:
                loss = loss * ((hi - lo) / n)
                dlogits *= dlogits.dtype.type((hi - lo) / n)
            model.backward(dlogits)
            # Each backward pass gives its layers new gradient arrays, so keeping these references is safe.
            return loss, (logits.argmax(axis=1) == y[lo:hi]).sum(), [p.grad for p in model.parameters()]

        results = self._map(work, len(chunks))
        loss, correct, grads = results[0]
        for other_loss, other_correct, other_grads in results[1:]:  # in chunk order
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
        out = self._map(lambda r, c: self.replicas[r].forward(x[chunks[c][0] : chunks[c][1]]), len(chunks))
        return out[0] if len(out) == 1 else self.model.xp.concatenate(out)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
