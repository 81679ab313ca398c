"""Worker processes for data parallelism on Linux: each takes chunks of a batch from a queue, in a Python of its own.

What it must equal: the same chunks run in the calling process (parallel.DataParallel with one thread), bit for bit.
A worker runs the same code on the same numbers: its model's parameters are the caller's own arrays (shared memory),
and what it computes (each chunk's loss, hits and gradients, or its logits) is copied back exactly. Which process
computes a chunk changes no number, so the queue below may hand any chunk to any of them.
tests/test_parallel.py holds DataParallel to that for every number of workers, and with a worker made slow.

Why processes and not only threads: a small chunk is mostly short NumPy calls that hold the GIL, and on a virtual
machine each hand-over of the GIL between two threads waits for the other core to wake up. Two threads on half a batch
of 32 each were slower than one thread on all of it; two processes share no GIL, so each pays its chunk's fixed costs
at the same time as the other (docs/speed.md has the figures).

Why a queue: on a real laptop other programs share the cores. A fixed split of every batch waits, at every step, for
the slowest worker, and a worker the system has not given a core to yet holds the whole step up (docs/speed.md: 3x
slower epochs beside one busy process). Here a step puts its chunks in a queue, and whoever is free takes the next
one, the calling process included, which takes chunks until none are left: a worker that is late takes nothing, and
the step goes on without it.

How it is built, with no fork and no code sent between the processes:
- The parameters live in a memfd, an anonymous file in memory: never named on disk or in /dev/shm, and gone when the
  last process holding it ends, kill -9 included. `share_parameters` copies them in and points each Parameter at its
  view, so the caller's optimizer steps update what the workers read. The batch's images and labels go into a second
  memfd that every worker reads.
- The queue is a pipe: a step writes one token (its number, the batch size, the chunk's bounds and index) per chunk
  in one write, and each process that reads a token owns that chunk (a pipe hands each token to exactly one reader).
  A worker sends "done" for each chunk it took, on a socket of its own, its results in a memfd of its own.
- A worker is a new Python (this interpreter, running `main`) in a session of its own, so Ctrl-C in a terminal reaches
  only the caller, which decides what happens. It builds the same fused twin (fused.fused_on: activation, pooling,
  dtype) on the shared weights, runs chunk.chunk_step on its chunks as the caller does, and ends when its socket
  closes, however the caller ended.
- Both sides poll a little before they sleep (`spin_s`, written by the caller into the shared control block): on a
  quiet virtual machine a sleeping core took 0.1-1 ms to wake, more than a small chunk's whole work; beside other
  programs, polling takes a core from them and from lenet's other processes, so the caller turns it off there
  (lenet/fast/contention.py).
"""

import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import time
import warnings
import weakref
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_connections

import numpy as np

from ..layers import SoftmaxCrossEntropy
from ..model import INPUT_SHAPE, NUM_CLASSES
from ..optim import flatten, unflatten
from .chunk import chunk_step
from .fused import fused_on, settings
from .tuning import tune_process

_ALIGN = 64
# How long a process that waits for the other side polls before it sleeps, on a quiet machine. On a virtual machine a
# sleeping core took 0.1-1 ms to wake, more than a small chunk's whole work; polling keeps the hand-over to tens of
# microseconds.
SPIN_S = 2e-3
# A chunk in the queue: step number, batch size, first and last image, chunk index, operation (0 train, 1 forward).
TOKEN = struct.Struct("<IIIIHH")
OPS = ("train", "forward")
# The worker's program. `python -c` puts the current folder first on sys.path, where a `lenet/` (a checkout with
# other edits, say) would shadow the caller's: the worker takes it off and imports lenet from where the caller did.
_WORKER_MAIN = (
    "import sys; getattr(sys.flags, 'safe_path', False) or sys.path.pop(0); sys.path.insert(0, sys.argv[1]); "
    "from lenet.fast.processes import main; main(sys.argv[2:])"
)
# The folder this lenet is imported from (a checkout or site-packages).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def available():
    """Whether this platform can run workers: Linux, with memfd_create (elsewhere DataParallel uses threads)."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


class SharedArrays:
    """Arrays laid out one after another in a memfd-backed shared mapping; layout is [(name, shape, dtype)]."""

    def __init__(self, fd, layout, create=False):
        offsets, size = [], 0
        for _, shape, dtype in layout:
            offsets.append(size)
            size += -(-int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
        size = max(size, _ALIGN)
        if create:
            os.ftruncate(fd, size)
        self._map = mmap.mmap(fd, size)
        self.arrays = {
            name: np.ndarray(shape, dtype, buffer=self._map, offset=offset)
            for (name, shape, dtype), offset in zip(layout, offsets, strict=True)
        }

    def __getitem__(self, name):
        return self.arrays[name]


def weights_layout(model):
    return [(name, tuple(p.shape), model.dtype.str) for name, p in model.named_parameters()]


def batch_layout(images, dtype):
    """What every worker reads: the batch's images and labels, and the control block (spin_s)."""
    return [("x", (images, *INPUT_SHAPE), np.dtype(dtype).str), ("y", (images,), "<i8"), ("spin_s", (1,), "<f8")]


def results_layout(images, chunks, n_params, dtype):
    """What one worker sends back: logits of the images it ran, and per chunk (loss, hits) and the flat gradient."""
    dtype = np.dtype(dtype).str
    return [
        ("logits", (images, NUM_CLASSES), dtype),
        ("scalars", (chunks, 2), "<f8"),
        ("grads", (chunks, n_params), dtype),
    ]


def share_parameters(model):
    """Move the model's parameters into a new memfd (copied; every Parameter then holds a view of it). Returns
    (fd, SharedArrays)."""
    fd = os.memfd_create("lenet-weights", os.MFD_CLOEXEC)
    shared = SharedArrays(fd, weights_layout(model), create=True)
    for name, p in model.named_parameters():
        shared[name][...] = p.data
        p.data = shared[name]
    return fd, shared


class WorkerGroup:
    """Worker processes and the calling process, taking the chunks of each batch from one queue.

    run(op, x, y, chunks, local) puts the chunks in the queue and takes chunks itself (running local(c) on each)
    until none are left, then waits for those the workers took. The results come back in chunk order, whoever
    computed them.
    """

    def __init__(self, model, weights_fd):
        self.model, self.weights_fd = model, weights_fd
        self.workers, self.step, self.takers = [], 0, []
        self.spin_s = SPIN_S
        # What the group holds outside Python objects, freed once: by close(), or when this object is collected.
        self._held = _Held(os.memfd_create("lenet-batch", os.MFD_CLOEXEC), *os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK))
        self._release = weakref.finalize(self, self._held.release)
        self.batch, self.capacity = None, 0  # the batch's shared memory, and the images it holds

    def grow(self, count):
        """Start workers until there are `count` of them."""
        while len(self.workers) < count:
            self.workers.append(Worker(self.model, (self.weights_fd, self._held.batch_fd, self._held.tokens[0])))
            if self.batch is not None:
                self.workers[-1].send(("batch", batch_layout(self.capacity, self.model.dtype)))

    def set_spin(self, seconds):
        """How long every process of the group polls before it sleeps (0: sleep at once)."""
        self.spin_s = seconds
        if self.batch is not None:
            self.batch["spin_s"][0] = seconds

    def run(self, op, x, y, chunks, local):
        """local(c) -> result for the chunks the caller takes; [result of each chunk] in chunk order. The caller
        takes the first chunk before the queue opens (so its images need no copy), then the next free ones."""
        self.check_workers()
        self._reserve(x.shape[0], len(chunks), op)
        self._put(op, x, y, chunks)
        self.takers = [0] * len(chunks)  # who ran each chunk: 0 the caller, w + 1 worker w (for tests and figures)
        results = [local(0), *([None] * (len(chunks) - 1))]
        while (token := self._take()) is not None:  # the caller takes chunks as long as any are left
            results[token[4]] = local(token[4])
        return self._collect(op, chunks, results)

    def check_workers(self):
        """Raise WorkerError if a worker ended (between steps a worker says nothing, so anything to read is that);
        send each the caller's NumPy error state if it changed."""
        errors = np.geterr()
        for worker in self.workers:
            if worker.conn.poll(0):
                raise WorkerError(f"a worker answered out of turn: {worker.receive()[:3]}")
            if worker.errors != errors:
                worker.send(("errors", errors))
                worker.errors = errors

    def _put(self, op, x, y, chunks):
        """Copy the batch but its first chunk into shared memory, then put those chunks in the queue."""
        n, start = x.shape[0], chunks[0][1]
        self.batch["x"][start:n] = x[start:]
        if y is not None:
            self.batch["y"][start:n] = y[start:]
        self.step = (self.step + 1) % (1 << 32)
        tokens = (TOKEN.pack(self.step, n, lo, hi, c, OPS.index(op)) for c, (lo, hi) in enumerate(chunks) if c)
        os.write(self._held.tokens[1], b"".join(tokens))

    def _collect(self, op, chunks, results):
        """Wait for the chunks the workers took (those still None in `results`), and fill them in."""
        waiting, dtype = {w.conn: i for i, w in enumerate(self.workers)}, self.model.dtype.type
        missing, failed = sum(r is None for r in results), None
        deadline = time.perf_counter() + self.spin_s
        while missing:
            ready = [conn for conn in waiting if conn.poll(0)]
            if not ready:
                if time.perf_counter() < deadline:
                    continue
                ready = wait_for_connections(list(waiting))
            for conn in ready:
                worker = self.workers[waiting[conn]]
                answer, step, c, details = worker.receive()
                self.takers[c] = waiting[conn] + 1
                if step != self.step:  # cannot happen: every chunk of a step is answered before the next starts
                    raise WorkerError(f"a worker answered step {step} in step {self.step}")
                missing -= 1
                if answer != "done":
                    failed = f"a chunk failed in a worker process ({details})"
                    continue
                worker.replay_warnings(details)
                lo, hi = chunks[c]
                if op == "forward":
                    results[c] = worker.results["logits"][lo:hi]
                else:
                    loss, hits = worker.results["scalars"][c]
                    results[c] = (dtype(loss), int(hits), worker.gradients(c))
            deadline = time.perf_counter() + self.spin_s
        if failed:
            raise ChunkError(failed)
        return results

    def _take(self):
        """The next token in the queue, or None when it is empty."""
        try:
            data = os.read(self._held.tokens[0], TOKEN.size)
        except BlockingIOError:
            return None
        return TOKEN.unpack(data)

    def _reserve(self, images, chunks, op):
        """Make the shared memory hold a batch of `images`, and each worker's results for `chunks` chunks."""
        if images > self.capacity:
            self.capacity = images
            layout = batch_layout(images, self.model.dtype)
            self.batch = SharedArrays(self._held.batch_fd, layout, create=True)
            self.batch["spin_s"][0] = self.spin_s
            for worker in self.workers:
                worker.send(("batch", layout))
        for worker in self.workers:
            worker.reserve(images, chunks if op == "train" else 0)  # a forward pass sends back no gradients

    def close(self):
        """End the workers and free the group's memory and descriptors (again: nothing more)."""
        workers, self.workers = self.workers, []  # taken first: a second Ctrl-C here must not close one twice
        for worker in workers:
            worker.close()
        self._release()
        self.batch = None  # the mapping, which holds a descriptor of its own


class _Held:
    def __init__(self, batch_fd, tokens_out, tokens_in):
        self.batch_fd, self.tokens = batch_fd, (tokens_out, tokens_in)

    def release(self):
        if self.batch_fd is not None:
            for fd in (self.batch_fd, *self.tokens):
                os.close(fd)
            self.batch_fd = None


class Worker:
    """One worker process and its shared memory, seen from the calling process."""

    def __init__(self, model, shared_fds):
        self.n_params = model.num_params()
        self.shapes = [tuple(p.shape) for p in model.parameters()]
        self._gradients = {}  # chunk index -> its per-parameter views of results["grads"]
        self.dtype = model.dtype
        self.results, self.capacity = None, (0, 0)  # (images, chunks) the mapping holds
        self.errors = None  # the NumPy error state the worker was last sent
        # What the worker holds outside Python objects, freed once: by close(), or when this object is collected
        # or Python exits without close() (also when Ctrl-C lands in the middle of this constructor).
        self._held = _WorkerHeld(os.memfd_create("lenet-worker", os.MFD_CLOEXEC))
        self._release = weakref.finalize(self, self._held.release)
        self.results_fd = self._held.results_fd
        ours, theirs = _socketpair()
        self.conn = self._held.conn = Connection(ours)
        fds = (theirs, self.results_fd, *shared_fds)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            self.process = self._held.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, _PACKAGE_PARENT, *map(str, fds)],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            self.close()
            raise WorkerError(f"could not start a worker process ({e})") from e
        finally:
            os.close(theirs)
        self.send(("start", settings(model), weights_layout(model)))

    def send(self, message):
        try:
            self.conn.send(message)
        except OSError as e:
            raise self._ended() from e

    def receive(self):
        """The worker's next answer: (answer, step, chunk, details)."""
        try:
            return self.conn.recv()
        except (EOFError, OSError) as e:
            raise self._ended() from e

    def _ended(self):
        try:
            status = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            status = "unknown"
        return WorkerError(f"a worker process ended (exit status {status})")

    def reserve(self, images, chunks):
        """Make the worker's results mapping hold at least `images` images and `chunks` chunks."""
        if images <= self.capacity[0] and chunks <= self.capacity[1]:
            return
        self.capacity = (max(images, self.capacity[0]), max(chunks, self.capacity[1]))
        layout = results_layout(*self.capacity, self.n_params, self.dtype)
        self.results = SharedArrays(self.results_fd, layout, create=True)
        self._gradients = {}
        self.send(("results", layout))

    def gradients(self, c):
        """The per-parameter gradients the worker wrote for chunk c (views of shared memory)."""
        if c not in self._gradients:
            self._gradients[c] = unflatten(self.results["grads"][c], self.shapes)
        return self._gradients[c]

    @staticmethod
    def replay_warnings(details):
        """The warnings a chunk raised in the worker, raised here, through the caller's warnings filters."""
        for category, message in details:
            warnings.warn(message, _WARNINGS.get(category, RuntimeWarning), stacklevel=5)

    def close(self):
        """End the worker and free its memory and descriptors (again: nothing more)."""
        self._release()
        self.results, self._gradients = None, {}  # the mapping, which holds a descriptor of its own


class _WorkerHeld:
    def __init__(self, results_fd):
        self.results_fd, self.conn, self.process = results_fd, None, None

    def release(self):
        if self.conn is not None:
            self.conn.close()  # the worker sees its socket close, and exits
            self.conn = None
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.results_fd is not None:
            os.close(self.results_fd)
            self.results_fd = None


class WorkerError(RuntimeError):
    """A worker process could not start or ended: the caller goes on without worker processes."""


class ChunkError(WorkerError):
    """A chunk raised in a worker process that is still running."""


# The warning categories a worker's NumPy arithmetic raises, by name (a message carries names, not classes).
_WARNINGS = {c.__name__: c for c in (RuntimeWarning, UserWarning, DeprecationWarning)}


def _socketpair():
    import socket

    a, b = socket.socketpair()
    ours, theirs = a.detach(), b.detach()
    os.set_inheritable(theirs, True)
    return ours, theirs


# -- the worker's side ---------------------------------------------------------------------------------------------
class _Serving:
    """A worker's state: its twin on the shared weights, and the shared memory it was last told of."""

    def __init__(self, model):
        self.model, self.loss_fn = model, SoftmaxCrossEntropy()
        self.batch = self.results = None
        self.errors = np.geterr()

    def control(self, message, results_fd, batch_fd):
        if message[0] == "batch":
            self.batch = SharedArrays(batch_fd, message[1])
        elif message[0] == "results":
            self.results = SharedArrays(results_fd, message[1])
        elif message[0] == "errors":
            self.errors = message[1]

    def chunk(self, step, n, lo, hi, c, op):
        """Run one chunk: its answer to the caller."""
        x = self.batch["x"][lo:hi]
        try:
            with np.errstate(**self.errors), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # every one goes to the caller, whose filters decide
                if OPS[op] == "forward":
                    self.results["logits"][lo:hi] = self.model.forward(x)
                else:
                    loss, hits, grads = chunk_step(self.model, self.loss_fn, x, self.batch["y"][lo:hi], n)
                    self.results["scalars"][c] = (loss, hits)
                    flatten(grads, out=self.results["grads"][c])
        except Exception as e:  # reported to the caller, which runs the chunks itself
            return ("failed", step, c, f"{type(e).__name__}: {e}")
        return ("done", step, c, [(w.category.__name__, str(w.message)) for w in caught])


def serve(conn, results_fd, weights_fd, batch_fd, tokens_fd):
    """The worker's loop: build the fused twin on the shared weights, then take chunks from the queue until the socket
    closes. Messages on the socket (where the shared memory is, the error state) come before the tokens they concern,
    so they are read first."""
    try:
        _, model_settings, layout = conn.recv()
    except (EOFError, OSError):  # the caller stopped before it had started this worker
        return
    state = _Serving(fused_on(SharedArrays(weights_fd, layout), **model_settings))
    deadline = None
    while True:
        try:
            while conn.poll(0):
                state.control(conn.recv(), results_fd, batch_fd)
        except (EOFError, OSError):  # the caller closed its end (or ended), with or without an answer unread
            return
        try:
            token = TOKEN.unpack(os.read(tokens_fd, TOKEN.size))
        except BlockingIOError:  # nothing to take: poll a while, then sleep until a token or a message comes
            now = time.perf_counter()
            if deadline is None:
                deadline = now + (state.batch["spin_s"][0] if state.batch is not None else SPIN_S)
            if now >= deadline:
                select.select([tokens_fd, conn.fileno()], [], [])
                deadline = None
            continue
        deadline = None
        try:
            conn.send(state.chunk(*token))
        except OSError:  # the caller closed the socket while this chunk ran
            return


def main(argv):
    """The worker's entry point: argv holds the file descriptors (socket, results, weights, batch, token queue)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the calling process to handle
    tune_process()  # this process's settings, as any entry point makes them
    conn_fd, results_fd, weights_fd, batch_fd, tokens_fd = (int(a) for a in argv)
    serve(Connection(conn_fd), results_fd, weights_fd, batch_fd, tokens_fd)
