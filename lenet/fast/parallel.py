"""Data parallelism on the CPU: workers that each run part of a batch, each with a one-thread BLAS.

What it must equal: trainer.train_step on the whole batch (forward, mean loss, backward, optimizer step), the same
numbers up to the rounding of adding the chunks' gradients (tests/test_fast.py: 1e-12 in float64), and the same bits
whatever the number of threads. `benchmarks/run.py` measures what it gains.

A batch is cut into chunks, which the workers take in turn: the calling thread and, on Linux, worker processes
(processes.py), elsewhere Python threads (NumPy releases the GIL inside ufuncs and BLAS calls), each thread with its
own replica of the model (shared weights, own caches and gradients). How a batch is cut depends on its size alone,
and the chunks' gradients are added in chunk order, so the result is the same, bit for bit, whatever the number of
workers. The loss is the mean over the whole batch: each chunk's loss gradient is scaled by its share.

BLAS runs one thread per call during a step, also when the batch is too small to split: OpenBLAS's own threads
spin while they wait (lenet/fast/tuning.py).
"""

import contextlib
import os
import sys
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..layers import SoftmaxCrossEntropy
from . import processes as _processes
from .tuning import one_thread_blas

# With the default 5 ms switch interval a thread that wants the GIL back can wait long between the many
# short NumPy calls of a LeNet step; a shorter one lets the two threads interleave.
SWITCH_INTERVAL_S = 5e-4


def default_threads(xp):
    """Threads for data parallelism: one per core on NumPy, 1 on CuPy (the GPU is one device)."""
    if xp is not np:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def chunk_step(model, loss_fn, x, y, n):
    """Forward, loss and backward of one chunk (x, y) of a batch of n images: (its share of the mean loss, its hits,
    its gradients). What every worker, thread or process, runs on each of its chunks."""
    logits = model.forward(x)
    loss = loss_fn.forward(logits, y)
    dlogits = loss_fn.backward()
    if x.shape[0] != n:
        loss = loss * (x.shape[0] / n)
        dlogits *= dlogits.dtype.type(x.shape[0] / n)
    model.backward(dlogits)
    # Each backward pass gives its layers new gradient arrays, so keeping these references is safe.
    return loss, (logits.argmax(axis=1) == y).sum(), [p.grad for p in model.parameters()]


class DataParallel:
    """Runs training steps and inference of `model` over chunks of each batch, on `threads` workers.

    A batch of at least `split_at` images is cut into two chunks or more, of at most `max_chunk` images in a
    training step and `max_forward_chunk` in a forward pass (beyond them the buffers fall out of cache; a forward
    pass, which keeps less, ran fastest in smaller chunks: docs/speed.md); smaller batches run whole, in the
    calling thread. Chunk c
    goes to worker c % threads, worker 0 being the calling thread. On Linux the other workers are processes
    (lenet/fast/processes.py): each pays a chunk's many short NumPy calls on its own core, so batches split
    from 16 images. Elsewhere (or with processes=False) they are threads with replicas of the model;
    a small chunk's short NumPy calls hold the GIL most of the time, so threads split only from 96 images
    (docs/speed.md). A batch of one chunk is exactly trainer.train_step.
    """

    def __init__(self, model, threads=2, split_at=None, max_chunk=128, max_forward_chunk=64, processes=None):
        self.model, self.threads = model, threads
        self.on_cpu = model.xp is np  # a GPU wants the whole batch in one go, and has no BLAS threads to tame
        if processes is None:
            processes = self.on_cpu and _processes.available()
        self.processes = bool(processes) and self.on_cpu
        self.split_at = split_at if split_at is not None else (16 if self.processes else 96)
        self.max_chunk, self.max_forward_chunk = max_chunk, max_forward_chunk
        self.loss_fns = [SoftmaxCrossEntropy() for _ in range(threads)]
        self._replicas, self._pool = None, None  # made when threads first run chunks
        self._workers, self._weights = [], None  # made when processes first run chunks

    def chunks(self, n, max_chunk=None):
        """[(start, stop)] of the chunks of a batch of n images (of at most max_chunk, default self.max_chunk);
        depends on n only, not on the threads."""
        if not self.on_cpu or n < self.split_at:
            return [(0, n)]
        k = max(2, -(-n // (max_chunk or self.max_chunk)))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    @contextlib.contextmanager
    def _settings(self, parallel):
        """Process-wide settings that hold only during a step: a one-thread BLAS (NumPy), a short switch interval
        (threads)."""
        if not self.on_cpu:
            yield
            return
        old = sys.getswitchinterval()
        if parallel and not self.processes:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            with one_thread_blas():
                yield
        finally:
            sys.setswitchinterval(old)

    def _train_chunk(self, r, x, y, n):
        return chunk_step(self._replica(r), self.loss_fns[r], x, y, n)

    def _replica(self, r):
        if r == 0:
            return self.model
        if self._replicas is None:
            self._replicas = [self.model.replica() for _ in range(self.threads - 1)]
        return self._replicas[r - 1]

    def _run(self, op, x, y):
        """op ("train" or "forward") on every chunk of the batch, the workers taking chunks in turn: the results in
        chunk order ((loss, hits, grads) or logits)."""
        n = x.shape[0]
        chunks = self.chunks(n, self.max_chunk if op == "train" else self.max_forward_chunk)
        workers = min(self.threads, len(chunks))

        def local(r, c):
            lo, hi = chunks[c]
            if op == "train":
                return self._train_chunk(r, x[lo:hi], y[lo:hi], n)
            return self._replica(r).forward(x[lo:hi])

        with self._settings(parallel=workers > 1):
            if workers == 1:
                return [local(0, c) for c in range(len(chunks))]
            if self.processes:
                try:
                    return self._run_on_processes(op, x, y, chunks, workers, local)
                except _processes.ChunkError:  # raise here, where the caller's errstate and warnings hold
                    return [local(0, c) for c in range(len(chunks))]
                except _processes.WorkerError as e:  # the chunks stay as they were: the same numbers on threads
                    warnings.warn(f"{e}; the chunks run on threads from now on", stacklevel=3)
                    self.processes = False
            errors = np.geterr()  # np.errstate is per thread: carry the caller's into the workers

            def share(t):
                with np.errstate(**errors):
                    return [local(t, c) for c in range(t, len(chunks), workers)]

            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads)
            per_thread = list(self._pool.map(share, range(workers)))
        return [per_thread[c % workers][c // workers] for c in range(len(chunks))]

    def _run_on_processes(self, op, x, y, chunks, workers, local):
        """_run with workers 1.. as processes: each is sent its chunks, the calling process runs its own meanwhile."""
        self.model.check_input(x)  # a wrong batch fails here, as it would in the model, before any worker sees it
        self._share_weights()
        try:
            while len(self._workers) < workers - 1:
                self._workers.append(_processes.Worker(self.model, self._weights[0]))
            for w, worker in enumerate(self._workers[: workers - 1], start=1):
                worker.send(op, x, y, chunks[w::workers], x.shape[0])
            results = [None] * len(chunks)
            for c in range(0, len(chunks), workers):  # this process's own chunks, while the workers run theirs
                results[c] = local(0, c)
            dtype = self.model.dtype.type
            for w, worker in enumerate(self._workers[: workers - 1], start=1):
                worker.wait()
                at = 0
                for i, c in enumerate(range(w, len(chunks), workers)):
                    lo, hi = chunks[c]
                    if op == "forward":
                        results[c] = worker.io["logits"][at : at + hi - lo]
                    else:
                        loss, hits = worker.io["scalars"][i]
                        results[c] = (dtype(loss), int(hits), worker.gradients(i))
                    at += hi - lo
            return results
        except BaseException:  # Ctrl-C, or a worker's failure: a worker may be mid-chunk, so start afresh next time
            self._close_workers()
            raise

    def _share_weights(self):
        """Put the model's parameters in shared memory (again, if something gave a parameter a new array)."""
        if self._weights is None:
            fd, shared = _processes.share_parameters(self.model)
            views = [(p, shared[name]) for name, p in self.model.named_parameters()]  # each parameter, its view
            self._weights = (fd, views, weakref.finalize(self, os.close, fd))  # closed by close(), or when collected
            return
        for p, view in self._weights[1]:
            if p.data is not view:
                view[...] = p.data
                p.data = view

    def train_step(self, optimizer, x, y):
        """Forward, loss, backward and optimizer step on a batch. Returns (loss, correct) on the device."""
        results = self._run("train", x, y)
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
        out = self._run("forward", x, None)
        return out[0] if len(out) == 1 else self.model.xp.concatenate(out)

    def _close_workers(self):
        workers, self._workers = self._workers, []  # taken first: a second Ctrl-C here must not close one twice
        for worker in workers:
            worker.close()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
        self._close_workers()
        if self._weights is not None:
            self._weights[2]()  # closes the memfd; the parameters keep their views of the mapping
            self._weights = None
