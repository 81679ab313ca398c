"""Worker processes for data parallelism on Linux: each runs its share of a batch's chunks in a Python of its own.

What it must equal: the same chunks run in the calling process (parallel.DataParallel with one thread), bit for bit.
A worker runs the same code on the same numbers: its model's parameters are the caller's own arrays (shared memory),
and what it computes (each chunk's loss, hits and gradients, or its logits) is copied back exactly.
tests/test_fast.py holds DataParallel to that for every number of workers.

Why processes and not only threads: a small chunk is mostly short NumPy calls that hold the GIL, and on a virtual
machine each hand-over of the GIL between two threads waits for the other core to wake up. Two threads on half a batch
of 32 each were slower than one thread on all of it; two processes share no GIL, so each pays its chunk's fixed costs
at the same time as the other (docs/speed.md has the figures).

How it is built, with no fork and no code sent between the processes:
- The parameters live in a memfd, an anonymous file in memory: never named on disk or in /dev/shm, and gone when the
  last process holding it ends, kill -9 included. `share_parameters` copies them in and points each Parameter at its
  view, so the caller's optimizer steps update what the workers read.
- A worker is a new Python (this interpreter, running `main`) in a session of its own, so Ctrl-C in a terminal reaches
  only the caller, which decides what happens. It is given three file descriptors: its end of a socket pair, the
  weights' memfd and a memfd of its own for the images it is sent and the results it sends back. It builds the same
  LeNet5 (activation, pooling, dtype, fused) on the shared weights, and ends when its socket closes, however the
  caller ended.
- Messages are small tuples of numbers and names; the arrays go through shared memory. Both sides poll for a message
  a little before they sleep (SPIN_S).
"""

import mmap
import os
import signal
import subprocess
import sys
import time
import warnings
import weakref
from multiprocessing.connection import Connection

import numpy as np

from ..model import INPUT_SHAPE, NUM_CLASSES

_ALIGN = 64
# How long a process that waits for the other side polls before it sleeps. On a virtual machine a sleeping core took
# 0.1-1 ms to wake, more than a small chunk's whole work; polling keeps the hand-over to tens of microseconds.
SPIN_S = 2e-3
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


def io_layout(images, chunks, n_params, dtype):
    """What one worker is sent and sends back: its images and labels, logits, and per chunk (loss, hits) and the
    flat gradient."""
    dtype = np.dtype(dtype).str
    return [
        ("x", (images, *INPUT_SHAPE), dtype),
        ("y", (images,), "<i8"),
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


class Worker:
    """One worker process and its shared memory, seen from the calling process."""

    def __init__(self, model, weights_fd):
        self.n_params = model.num_params()
        self.shapes = [tuple(p.shape) for p in model.parameters()]
        self._gradients = {}  # chunk slot -> its per-parameter views of io["grads"]
        self.dtype = model.dtype
        self.io, self.capacity = None, (0, 0)  # (images, chunks) the mapping holds
        # What the worker holds outside Python objects, freed once: by close(), or when this object is collected
        # or Python exits without close() (also when Ctrl-C lands in the middle of this constructor).
        self._held = _Held(os.memfd_create("lenet-worker", os.MFD_CLOEXEC))
        self._release = weakref.finalize(self, self._held.release)
        self.io_fd = self._held.io_fd
        ours, theirs = _socketpair()
        self.conn = self._held.conn = Connection(ours)
        fds = (theirs, weights_fd, self.io_fd)
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
        settings = {"activation": model.activation, "pool": model.pool, "dtype": model.dtype.name, "fused": model.fused}
        self._send(("start", settings, weights_layout(model)))

    def _send(self, message):
        try:
            self.conn.send(message)
        except OSError as e:
            raise self._ended() from e

    def _ended(self):
        try:
            status = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            status = "unknown"
        return WorkerError(f"a worker process ended (exit status {status})")

    def reserve(self, images, chunks):
        """Make the shared mapping hold at least `images` images and `chunks` chunks' results."""
        if images <= self.capacity[0] and chunks <= self.capacity[1]:
            return
        self.capacity = (max(images, self.capacity[0]), max(chunks, self.capacity[1]))
        layout = io_layout(*self.capacity, self.n_params, self.dtype)
        self.io = SharedArrays(self.io_fd, layout, create=True)
        self._gradients = {}
        self._send(("map", layout))

    def gradients(self, slot):
        """The per-parameter gradients the worker wrote for its chunk `slot` (views of shared memory)."""
        if slot not in self._gradients:
            flat, views, start = self.io["grads"][slot], [], 0
            for shape in self.shapes:
                size = int(np.prod(shape))
                views.append(flat[start : start + size].reshape(shape))
                start += size
            self._gradients[slot] = views
        return self._gradients[slot]

    def send(self, op, x, y, chunks, n):
        """Start `op` ("train" or "forward") on the chunks [(lo, hi)] of the batch x, y (the whole batch's size n)."""
        images = sum(hi - lo for lo, hi in chunks)
        self.reserve(images, len(chunks) if op == "train" else 0)  # a forward pass sends back no gradients
        local, at = [], 0
        for lo, hi in chunks:  # the worker's chunks, one after another in its own buffer
            self.io["x"][at : at + hi - lo] = x[lo:hi]
            if y is not None:
                self.io["y"][at : at + hi - lo] = y[lo:hi]
            local.append((at, at + hi - lo))
            at += hi - lo
        self._send((op, local, n, np.geterr()))
        return local

    def wait(self):
        """Block until the worker has answered the last send(), then give the caller the warnings it raised.

        Raises WorkerError if the worker ended, ChunkError if a chunk raised there (a FloatingPointError under
        np.errstate(all="raise"), say): the worker is still there, and the caller runs the chunks itself.
        """
        try:
            answer, details = receive(self.conn)
        except (EOFError, OSError) as e:
            raise self._ended() from e
        if answer != "done":
            raise ChunkError(f"a chunk failed in a worker process ({details})")
        for category, message in details:  # through the caller's warnings filters, as on a thread
            warnings.warn(message, _WARNINGS.get(category, RuntimeWarning), stacklevel=4)

    def close(self):
        """End the worker and free its memory and descriptors (again: nothing more)."""
        self._release()
        self.io, self._gradients = None, {}  # the mapping, which holds a descriptor of its own


class _Held:
    def __init__(self, io_fd):
        self.io_fd, self.conn, self.process = io_fd, None, None

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
        if self.io_fd is not None:
            os.close(self.io_fd)
            self.io_fd = None


class WorkerError(RuntimeError):
    """A worker process could not start or ended: the caller goes on without worker processes."""


class ChunkError(WorkerError):
    """A chunk raised in a worker process that is still running."""


# The warning categories a worker's NumPy arithmetic raises, by name (a message carries names, not classes).
_WARNINGS = {c.__name__: c for c in (RuntimeWarning, UserWarning, DeprecationWarning)}


def receive(conn, spin_s=SPIN_S):
    """conn.recv(), polling for up to spin_s seconds before it blocks."""
    deadline = time.perf_counter() + spin_s
    while not conn.poll(0) and time.perf_counter() < deadline:
        pass
    return conn.recv()


def _socketpair():
    import socket

    a, b = socket.socketpair()
    ours, theirs = a.detach(), b.detach()
    os.set_inheritable(theirs, True)
    return ours, theirs


# -- the worker's side ---------------------------------------------------------------------------------------------
def serve(conn, weights_fd, io_fd):
    """The worker's loop: build the model on the shared weights, then run what the socket asks until it closes."""
    from ..layers import SoftmaxCrossEntropy
    from ..model import LeNet5
    from .parallel import chunk_step
    from .tuning import tune_process

    tune_process()
    try:
        _, settings, layout = conn.recv()
    except (EOFError, OSError):  # the caller stopped before it had started this worker
        return
    model = LeNet5(**settings)
    weights = SharedArrays(weights_fd, layout)
    for name, p in model.named_parameters():
        p.data = weights[name]
    loss_fn = SoftmaxCrossEntropy()
    io = None
    while True:
        try:
            message = receive(conn)
        except (EOFError, OSError):  # the caller closed its end (or ended), with or without a reply unread
            return
        op = message[0]
        if op == "map":
            io = SharedArrays(io_fd, message[1])
            continue
        _, chunks, n, errors = message
        try:
            with np.errstate(**errors), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # every one goes to the caller, whose filters decide
                for i, (lo, hi) in enumerate(chunks):
                    x = io["x"][lo:hi]
                    if op == "forward":
                        io["logits"][lo:hi] = model.forward(x)
                        continue
                    loss, hits, grads = chunk_step(model, loss_fn, x, io["y"][lo:hi], n)
                    io["scalars"][i] = (loss, hits)
                    flat, start = io["grads"][i], 0
                    for g in grads:
                        flat[start : start + g.size] = g.reshape(-1)
                        start += g.size
        except Exception as e:  # reported to the caller, which runs the chunks itself
            answer = ("failed", f"{type(e).__name__}: {e}")
        else:
            answer = ("done", [(w.category.__name__, str(w.message)) for w in caught])
        try:
            conn.send(answer)
        except OSError:  # the caller closed the socket while this chunk ran
            return


def main(argv):
    """The worker's entry point: argv holds the three file descriptors (socket, weights, io)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the calling process to handle
    conn_fd, weights_fd, io_fd = (int(a) for a in argv)
    serve(Connection(conn_fd), weights_fd, io_fd)
