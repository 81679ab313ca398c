"""Data parallelism on the CPU: workers that each run part of a batch through the model's fused twin.

What it must equal: step.train_step on the whole batch (forward, mean loss, backward, optimizer step), the same
numbers up to the rounding of adding the chunks' gradients (tests/test_parallel.py: 1e-12 in float64), and the same
bits whatever the number of threads. `benchmarks/run.py` measures what it gains.

A batch is cut into chunks, which the workers take from a queue, each the next one as soon as it is free: the
calling thread and, on Linux, worker processes (processes.py), elsewhere Python threads (NumPy releases the GIL
inside ufuncs and BLAS calls), each thread with its own replica of the twin (shared weights, own caches and
gradients). Every worker runs chunk.chunk_step, the core's train_step on its chunk. How a batch is cut depends on its
size alone, and the chunks' gradients are added in chunk order, so the result is the same, bit for bit, whatever the
number of workers and whoever took which chunk. The loss is the mean over the whole batch: each chunk's loss gradient
is scaled by its share. A worker that other programs keep off its core takes fewer chunks, or none, and the step
does not wait for it.

The process settings the workers need (one BLAS thread per call, a short switch interval for threads) are made once
by the entry points (lenet/fast/tuning.py's tune_process), not here.
"""

import math
import os
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import cpu_cores
from ..layers import SoftmaxCrossEntropy
from .chunk import chunk_step
from .contention import CpuWatch
from .fused import FusedLeNet5
from .processes import SPIN_S, ChunkError, WorkerError, WorkerGroup, share_parameters
from .processes import available as processes_available


def default_threads(xp):
    """Threads for data parallelism: one per core on NumPy, 1 on CuPy (the GPU is one device)."""
    return cpu_cores() if xp is np else 1


def busy_message(others, cores, active, threads):
    """The one line train.py prints when other programs first take a share of the cores."""
    if active < threads:
        doing = f"lenet now runs its steps on {active} of its {threads} workers, and on all once the cores free up"
    else:
        doing = f"lenet's {threads} workers now sleep instead of polling while they wait for each other"
    return f"other programs are using the CPU (about {others:.1f} of the {cores} cores lenet runs on): {doing}"


class DataParallel:
    """Runs training steps and inference of `model`, a fused twin (lenet.fast.fuse), over chunks of each batch, on
    `threads` workers.

    A batch of at least `split_at` images is cut into two chunks or more, of at most `max_chunk` images in a
    training step and `max_forward_chunk` in a forward pass (beyond them the buffers fall out of cache; a forward
    pass, which keeps less, ran fastest in smaller chunks: docs/speed.md); smaller batches run whole, in the
    calling thread. The workers, the calling thread among them, take the chunks from a queue. On Linux the other
    workers are processes (lenet/fast/processes.py): each pays a chunk's many short NumPy calls on its own core, so
    batches split from 16 images. Elsewhere (or with processes=False) they are threads with replicas of the twin;
    a small chunk's short NumPy calls hold the GIL most of the time, so threads split only from 96 images
    (docs/speed.md). A batch of one chunk is exactly train_step on the twin.

    While the worker processes run, a CpuWatch (lenet/fast/contention.py) measures what other programs take of the
    cores. The worker processes start once it has found the machine quiet (the calling process runs the chunks
    alone until then: a fifth of a second). Beside other programs the chunks go to as many workers as the others
    leave whole cores (the calling process alone, beside one busy program on two cores: its worker would share a core
    with it), lenet's processes sleep while they wait instead of polling, and `notify` (train.py's warning channel)
    is told so once, in one line, the first time the machine is found busy.
    """

    def __init__(
        self, model, threads=2, split_at=None, max_chunk=128, max_forward_chunk=64, processes=None, notify=None
    ):
        if not isinstance(model, FusedLeNet5):  # every worker rebuilds the fused twin: the caller must run it too
            raise TypeError("DataParallel runs a fused twin: DataParallel(lenet.fast.fuse(model), ...)")
        self.model, self.threads = model, threads
        self.on_cpu = model.xp is np  # a GPU wants the whole batch in one go, and has no BLAS threads to tame
        if processes is None:
            processes = self.on_cpu and processes_available()
        self.processes = bool(processes) and self.on_cpu
        self.split_at = split_at if split_at is not None else (16 if self.processes else 96)
        self.max_chunk, self.max_forward_chunk = max_chunk, max_forward_chunk
        self.loss_fns = [SoftmaxCrossEntropy() for _ in range(threads)]
        self._replicas, self._pool = None, None  # made when threads first run chunks
        self._group, self._weights = None, None  # made when processes first run chunks
        self.notify, self.watch, self._told = notify, None, False  # watch: made when processes first run chunks
        self.active = threads  # the workers that take chunks now: fewer while other programs use the cores
        self.takers = []  # who ran each chunk of the last batch: 0 the caller (on threads, the thread with its twin)

    def chunks(self, n, max_chunk=None):
        """[(start, stop)] of the chunks of a batch of n images (of at most max_chunk, default self.max_chunk);
        depends on n only, not on the threads."""
        if not self.on_cpu or n < self.split_at:
            return [(0, n)]
        k = max(2, -(-n // (max_chunk or self.max_chunk)))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    def _train_chunk(self, r, x, y, n):
        return chunk_step(self._replica(r), self.loss_fns[r], x, y, n)

    def _replica(self, r):
        if r == 0:
            return self.model
        if self._replicas is None:
            self._replicas = [self.model.replica() for _ in range(self.threads - 1)]
        return self._replicas[r - 1]

    def _run(self, op, x, y):
        """op ("train" or "forward") on every chunk of the batch, the workers taking the next chunk as they come
        free: the results in chunk order ((loss, hits, grads) or logits)."""
        n = x.shape[0]
        chunks = self.chunks(n, self.max_chunk if op == "train" else self.max_forward_chunk)
        workers = min(self.threads, len(chunks))

        def local(r, c):
            lo, hi = chunks[c]
            if op == "train":
                return self._train_chunk(r, x[lo:hi], y[lo:hi], n)
            return self._replica(r).forward(x[lo:hi])

        self.takers = [0] * len(chunks)
        if workers == 1:
            return [local(0, c) for c in range(len(chunks))]
        if self.processes:
            try:
                return self._run_on_processes(op, x, y, chunks, workers, local)
            except ChunkError:  # raise here, where the caller's errstate and warnings hold
                return [local(0, c) for c in range(len(chunks))]
            except WorkerError as e:  # the chunks stay as they were: the same numbers on threads
                warnings.warn(f"{e}; the chunks run on threads from now on", stacklevel=3)
                self.processes = False
        errors = np.geterr()  # np.errstate is per thread: carry the caller's into the workers
        queue = iter(range(len(chunks)))  # next() on it is atomic under the GIL: each chunk goes to one thread
        results = [None] * len(chunks)

        def take(t):
            with np.errstate(**errors):
                for c in queue:
                    results[c], self.takers[c] = local(t, c), t

        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads)
        list(self._pool.map(take, range(workers)))
        return results

    def _run_on_processes(self, op, x, y, chunks, workers, local):
        """_run with workers 1.. as processes, which take chunks from the same queue as the calling process; on as
        many of them as the cores that other programs leave free (self.active), the calling process alone at least."""
        self.model.check_input(x)  # a wrong batch fails here, as it would in the model, before any worker sees it
        self._share_weights()
        if self.watch is None:
            self.watch = CpuWatch(lambda: [w.process.pid for w in self._workers])
        results = None
        try:
            if self._group is None:
                self._group = WorkerGroup(self.model, self._weights[0])
                self._group.set_spin(SPIN_S if self.watch.busy is False else 0)
            if self.watch.busy is False:  # started once the machine is known quiet: a start takes CPU from the step
                self._group.grow(min(self.active, workers) - 1)
            if self.active > 1 and self._group.workers:
                results = self._group.run(op, x, y, chunks, lambda c: local(0, c))
                self.takers = self._group.takers
            else:
                self._group.check_workers()  # idle, but a worker that ended is noticed all the same
        except ChunkError:  # every chunk was answered: the workers stay, idle, and _run runs the chunks here
            raise
        except BaseException:  # Ctrl-C, or a worker's failure: a worker may be mid-chunk, so start afresh next time
            self._close_workers()
            raise
        if results is None:  # the machine not measured yet, or the others leave one core: the chunks run here
            results = [local(0, c) for c in range(len(chunks))]
        if self.watch.update():
            self._adapt()
        return results

    def _adapt(self):
        """After each measured window: how many workers take chunks, whether they poll, and the user told once."""
        busy, cores = self.watch.busy, len(self.watch.cpus)
        self._group.set_spin(SPIN_S if busy is False else 0)
        if not busy:
            self.active = self.threads
            return
        taken = math.floor(self.watch.others + 0.5)  # the cores the others take, to the nearest whole one
        self.active = max(1, min(self.threads, cores - taken))
        if self.notify is not None and not self._told:
            self._told = True
            self.notify(busy_message(self.watch.others, cores, self.active, self.threads))

    def _share_weights(self):
        """Put the model's parameters in shared memory (again, if something gave a parameter a new array)."""
        if self._weights is None:
            fd, shared = share_parameters(self.model)
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

    @property
    def _workers(self):
        """The worker processes running now ([] on threads, or before the first split batch)."""
        return self._group.workers if self._group is not None else []

    def _close_workers(self):
        group, self._group = self._group, None  # taken first: a second Ctrl-C here must not close it twice
        if group is not None:
            group.close()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
        self._close_workers()
        if self._weights is not None:
            self._weights[2]()  # closes the memfd; the parameters keep their views of the mapping
            self._weights = None
