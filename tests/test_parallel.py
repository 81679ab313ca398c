"""Data parallelism (lenet/fast/parallel.py, processes.py, chunk.py) against the core's train_step it must equal.

DataParallel runs a fused twin (lenet.fast.fuse) over chunks of each batch on worker processes or threads; here it is
held to train_step on the whole batch, to itself whatever the number of workers, and to leaving the process's settings
alone (the entry points make them: lenet/fast/tuning.py).
"""

import contextlib
import os
import signal

import numpy as np
import pytest
from helpers import needs_processes

from lenet import LeNet5
from lenet.backend import to_numpy
from lenet.fast import DataParallel, fuse
from lenet.layers import SoftmaxCrossEntropy
from lenet.optim import SGD

pytestmark = pytest.mark.usefixtures("one_blas_thread")  # as tune_process holds BLAS for train.py's workers


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """Every DataParallel here sees a quiet machine, so that its worker processes start at the first split batch and
    take chunks, however busy the machine that runs the tests is (tests/test_contention.py tests the busy case)."""
    import lenet.fast.parallel

    monkeypatch.setattr(lenet.fast.parallel, "CpuWatch", lambda pids: QuietMachine())


def serial_step(model, x, y, lr=0.1):
    ce = SoftmaxCrossEntropy()
    loss = ce.forward(model.forward(x), y)
    model.backward(ce.backward())
    SGD(model.parameters(), lr=lr).step()
    return float(loss)


WORKERS = [pytest.param(True, id="processes", marks=needs_processes), pytest.param(False, id="threads")]


@pytest.mark.parametrize("processes", WORKERS)
@pytest.mark.parametrize("threads,batch", [(2, 256), (2, 300), (1, 300), (2, 1024), (3, 200)])
def test_parallel_step_equals_serial_step_in_float64(threads, batch, processes):
    rng = np.random.default_rng(0)
    x, y = rng.random((batch, 1, 28, 28)), rng.integers(0, 10, batch)
    serial = LeNet5(dtype="float64", seed=4)
    parallel = LeNet5(dtype="float64", seed=4)
    runner = DataParallel(fuse(parallel), threads, processes=processes)
    assert len(runner.chunks(batch)) > 1  # the case under test really splits the batch
    try:
        loss_serial = serial_step(serial, x, y)
        loss_parallel, correct = runner.train_step(SGD(parallel.parameters(), lr=0.1), x, y)
        np.testing.assert_allclose(float(loss_parallel), loss_serial, rtol=1e-13)
        assert 0 <= int(correct) <= batch
        for (name, a), b in zip(serial.named_parameters(), parallel.parameters(), strict=True):
            np.testing.assert_allclose(b.data, a.data, rtol=1e-12, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(runner.forward(x), serial.forward(x), rtol=1e-12, atol=1e-15)
    finally:
        runner.close()


def test_chunks_cover_the_batch_in_order():
    runner = DataParallel(fuse(LeNet5()), threads=2, split_at=96, max_chunk=128)
    try:
        assert runner.chunks(95) == [(0, 95)]  # too small to split
        assert runner.chunks(96) == [(0, 48), (48, 96)]
        assert runner.chunks(128) == [(0, 64), (64, 128)]
        assert runner.chunks(256) == [(0, 128), (128, 256)]
        for n in (1, 31, 32, 47, 96, 97, 255, 1000, 1024):
            chunks = runner.chunks(n)
            assert chunks[0][0] == 0 and chunks[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
            assert max(hi - lo for lo, hi in chunks) <= 128
            assert (len(chunks) == 1) == (n < 96)
    finally:
        runner.close()


@pytest.mark.parametrize("processes", WORKERS)
@pytest.mark.parametrize("batch", [32, 200, 512])
def test_steps_are_the_same_bit_for_bit_whatever_the_threads(batch, processes):
    rng = np.random.default_rng(1)
    x, y = rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch)
    states = []
    for threads in (2, 2, 1, 3):
        model = LeNet5(seed=2)
        runner = DataParallel(fuse(model), threads, processes=processes)
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            runner.train_step(opt, x, y)
        runner.close()
        states.append(model.state_dict())
    for state in states[1:]:
        for k in states[0]:
            np.testing.assert_array_equal(states[0][k], state[k])


@needs_processes
def test_worker_processes_split_small_batches_and_threads_do_not():
    model = LeNet5()
    with_processes, with_threads = DataParallel(fuse(model), 2), DataParallel(fuse(model), 2, processes=False)
    assert with_processes.processes and not with_threads.processes  # processes are the default where they run
    assert with_processes.chunks(15) == [(0, 15)] and with_processes.chunks(16) == [(0, 8), (8, 16)]
    assert with_threads.chunks(95) == [(0, 95)] and len(with_threads.chunks(96)) == 2
    for runner in (with_processes, with_threads):  # a forward pass runs in smaller chunks than a training step
        assert len(runner.chunks(256)) == 2 and len(runner.chunks(256, runner.max_forward_chunk)) == 4
    with_processes.close()
    with_threads.close()


def run_steps(runner, model, batches):
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = [float(runner.train_step(opt, x, y)[0]) for x, y in batches]
    return losses, model.state_dict(), to_numpy(runner.forward(batches[0][0]))


def float64_batches(n=3, batch=40):
    rng = np.random.default_rng(3)
    return [(rng.random((batch, 1, 28, 28)), rng.integers(0, 10, batch)) for _ in range(n)]


def assert_same_run(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    for name in a[1]:
        np.testing.assert_array_equal(a[1][name], b[1][name], err_msg=name)
    np.testing.assert_array_equal(a[2], b[2])


@needs_processes
def test_a_worker_process_that_dies_leaves_the_run_going_on_threads_with_the_same_numbers():
    batches = float64_batches()
    model = LeNet5(dtype="float64", seed=7)
    expected = run_steps(DataParallel(fuse(model), 1), model, batches)  # one worker: the calling thread alone
    model = LeNet5(dtype="float64", seed=7)
    runner = DataParallel(fuse(model), 2)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = [float(runner.train_step(opt, *batches[0])[0])]
    worker = runner._workers[0]
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    with pytest.warns(UserWarning, match=r"a worker process ended \(exit status -9\); the chunks run on threads"):
        losses.append(float(runner.train_step(opt, *batches[1])[0]))
    assert not runner.processes and not runner._workers
    losses += [float(runner.train_step(opt, x, y)[0]) for x, y in batches[2:]]
    got = (losses, model.state_dict(), to_numpy(runner.forward(batches[0][0])))
    runner.close()
    assert_same_run(got, expected)


@needs_processes
def test_an_interrupted_step_leaves_no_worker_behind_and_the_next_step_is_exact(monkeypatch, capfd):
    """Ctrl-C while the workers run their chunks: they are closed quietly, and the next step starts them afresh."""
    batches = float64_batches()
    model = LeNet5(dtype="float64", seed=8)
    expected = run_steps(DataParallel(fuse(model), 1), model, batches)
    model = LeNet5(dtype="float64", seed=8)
    runner = DataParallel(fuse(model), 2)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = [float(runner.train_step(opt, *batches[0])[0])]
    first = runner._workers[0]
    real = DataParallel._train_chunk

    def interrupted(self, *args):
        monkeypatch.setattr(DataParallel, "_train_chunk", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(DataParallel, "_train_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.train_step(opt, *batches[1])
    assert runner._workers == [] and first.process.poll() is not None  # the worker ended
    assert first.process.returncode == 0 and "Traceback" not in capfd.readouterr().err  # and said nothing
    losses += [float(runner.train_step(opt, x, y)[0]) for x, y in batches[1:]]
    assert runner.processes and runner._workers and runner._workers[0] is not first
    got = (losses, model.state_dict(), to_numpy(runner.forward(batches[0][0])))
    runner.close()
    assert_same_run(got, expected)


@needs_processes
def test_a_worker_closed_with_its_answer_unread_ends_quietly(capfd):
    """Ctrl-C can land after a worker answered and before the caller read it: the worker's next read then fails
    (the socket is reset), which must end it as quietly as a plain close."""
    from lenet.fast import processes

    model = LeNet5()
    fd, _ = processes.share_parameters(model)
    group = processes.WorkerGroup(model, fd)
    try:
        group.grow(1)
        worker = group.workers[0]
        group._reserve(4, 1, "forward")
        os.write(group._held.tokens[1], processes.TOKEN.pack(1, 4, 0, 4, 0, processes.OPS.index("forward")))
        assert worker.conn.poll(60)  # answered, and left unread
    finally:
        group.close()
        os.close(fd)
    assert worker.process.returncode == 0 and "Traceback" not in capfd.readouterr().err


@needs_processes
def test_a_lenet_folder_where_the_caller_runs_does_not_shadow_the_workers_lenet(tmp_path, monkeypatch):
    """`python -c` would put the current folder first on the worker's path: a checkout with other edits there must not
    be what the worker runs."""
    (tmp_path / "lenet").mkdir()
    (tmp_path / "lenet" / "__init__.py").write_text("raise ImportError('the shadow lenet was imported')\n")
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).random((40, 1, 28, 28))
    model = LeNet5(dtype="float64")
    runner = DataParallel(fuse(model), 2)
    try:
        logits = runner.forward(x)  # a worker that imported the shadow would end, and a warning would fail the test
        assert runner.processes and runner._workers
    finally:
        runner.close()
    np.testing.assert_array_equal(logits, DataParallel(fuse(model), 1).forward(x))


def overflowing_model():
    model = LeNet5("relu", "max")
    model.f7.weight.data[...] = 3e38  # logits overflow to inf, then inf - inf in the loss
    return model


@needs_processes
def test_a_chunk_that_raises_in_a_worker_raises_in_the_caller_and_the_workers_stay():
    model = overflowing_model()
    runner = DataParallel(fuse(model), 2)
    x, y = np.ones((64, 1, 28, 28), np.float32), np.zeros(64, int)
    try:
        with np.errstate(all="raise"), pytest.raises(FloatingPointError):
            runner.train_step(SGD(model.parameters(), lr=0.1), x, y)
        assert runner.processes  # no fallback to threads, no warning (filterwarnings = error would fail the test)
        with np.errstate(all="ignore"):
            loss, _ = runner.train_step(SGD(model.parameters(), lr=0.1), x, y)
        assert not np.isfinite(float(loss)) and runner._workers
    finally:
        runner.close()


@pytest.mark.parametrize("processes", WORKERS)
def test_the_workers_warnings_go_through_the_callers_filters(processes):
    import warnings

    x, y = np.ones((128, 1, 28, 28), np.float32), np.zeros(128, int)
    for action in ("always", "error"):  # "error": as -W error or pytest's filterwarnings make them
        model = overflowing_model()  # afresh: a step on overflowing weights leaves NaNs, which warn no more
        runner = DataParallel(fuse(model), 2, processes=processes)
        try:
            with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
                warnings.simplefilter(action)
                if action == "error":
                    with pytest.raises(RuntimeWarning, match="overflow"):
                        runner.train_step(SGD(model.parameters(), lr=0.1), x, y)
                else:
                    runner.train_step(SGD(model.parameters(), lr=0.1), x, y)
                    assert any(w.category is RuntimeWarning and "overflow" in str(w.message) for w in caught), caught
        finally:
            runner.close()


@needs_processes
def test_workers_left_unclosed_free_their_descriptors_and_end_when_collected():
    import gc
    from collections import Counter

    def open_fds():
        """This process's memfds and sockets (what the workers use; pytest opens and closes files of its own)."""
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # the listing's own descriptor, closed by now
                pass
        return sorted(link for link in links if link.startswith(("/memfd:", "socket:")))

    x = np.zeros((32, 1, 28, 28), np.float32)
    runner = DataParallel(fuse(LeNet5()), 2)
    runner.forward(x)  # the first worker: whatever it opens once (imports, pools) is open from here on
    runner.close()
    gc.collect()
    before = open_fds()
    for _ in range(3):
        runner = DataParallel(fuse(LeNet5()), 2)
        runner.forward(x)
        process = runner._workers[0].process
        del runner  # no close()
        gc.collect()
        assert process.returncode == 0
    assert not Counter(open_fds()) - Counter(before)  # (an earlier test's garbage may have gone meanwhile)
    runner = DataParallel(fuse(LeNet5()), 2)
    runner.forward(x)
    worker = runner._workers[0]
    worker.close()
    worker.close()  # a second close frees nothing twice: an unrelated file that took a freed number stays open
    with open(os.devnull) as unrelated:
        runner.close()
        assert not unrelated.closed and os.fstat(unrelated.fileno())
    del runner, worker  # the model's parameters keep the weights' mapping (and its descriptor) while they live
    gc.collect()
    assert not Counter(open_fds()) - Counter(before)


@needs_processes
def test_worker_processes_are_in_their_own_session_and_end_with_close():
    """Ctrl-C in a terminal goes to the foreground process group: the workers must not get it."""
    model = LeNet5()
    runner = DataParallel(fuse(model), 3)
    try:
        runner.forward(np.zeros((300, 1, 28, 28), np.float32))  # three chunks: one each
        workers = list(runner._workers)
        assert len(workers) == 2
        assert all(os.getsid(w.process.pid) not in (os.getsid(0), os.getpgid(0)) for w in workers)
    finally:
        runner.close()
    assert all(w.process.returncode == 0 for w in workers)


@needs_processes
def test_the_parameters_are_shared_with_the_workers_and_reshared_when_replaced():
    batches = float64_batches(n=2)
    model = LeNet5(dtype="float64", seed=9)
    reference = LeNet5(dtype="float64", seed=9)
    runner, plain = DataParallel(fuse(model), 2), DataParallel(fuse(reference), 1)
    try:
        runner.forward(batches[0][0])
        new_weight = np.random.default_rng(0).random(model.f7.weight.shape)
        model.f7.weight.data = new_weight.copy()  # a new array, not the shared one: the next step must see it
        reference.f7.weight.data = new_weight.copy()
        a = run_steps(runner, model, batches)
        b = run_steps(plain, reference, batches)
        assert_same_run(a, b)
    finally:
        runner.close()


@pytest.mark.parametrize("processes", WORKERS)
def test_a_step_leaves_the_process_settings_as_the_entry_point_made_them(monkeypatch, processes):
    """Process settings are the entry points' (tune_process): a runner makes none, not even for the length of a step."""
    import sys

    from threadpoolctl import threadpool_info

    import lenet.fast.parallel

    def settings():
        return sys.getswitchinterval(), [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before, seen, real = settings(), [], lenet.fast.parallel.chunk_step

    def watched(*args):
        seen.append(settings())
        return real(*args)

    monkeypatch.setattr(lenet.fast.parallel, "chunk_step", watched)
    model = LeNet5()
    runner = DataParallel(fuse(model), 2, processes=processes)
    try:
        runner.train_step(SGD(model.parameters(), lr=0.1), np.zeros((256, 1, 28, 28), np.float32), np.zeros(256, int))
    finally:
        runner.close()
    assert seen and all(during == before for during in seen) and settings() == before


def test_tune_process_makes_the_settings_for_the_rest_of_the_process():
    import sys

    from threadpoolctl import threadpool_info, threadpool_limits

    from lenet.fast.tuning import SWITCH_INTERVAL_S, tune_process

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    old = sys.getswitchinterval()  # an entry point run in this process (test_cli) may have tuned it already
    with threadpool_limits(2, user_api="blas"):
        try:
            sys.setswitchinterval(0.005)  # Python's default
            assert tune_process("cupy") is None and sys.getswitchinterval() == 0.005  # nothing to tune on CuPy
            limiter = tune_process()
            assert sys.getswitchinterval() == SWITCH_INTERVAL_S
            assert blas_threads() and set(blas_threads()) == {1}
            limiter.restore_original_limits()
            assert set(blas_threads()) == {2}
        finally:
            sys.setswitchinterval(old)


def test_train_and_test_make_the_process_settings_once_at_their_top(monkeypatch, tmp_path):
    import lenet.commands.test
    import lenet.commands.train
    from lenet.errors import LenetError

    calls = []
    for command in (lenet.commands.train, lenet.commands.test):
        monkeypatch.setattr(command, "tune_process", lambda backend: calls.append(("tune", backend)))
    monkeypatch.setattr(lenet.commands.train, "fit", lambda config, runner, **_: calls.append(("fit", runner)))
    lenet.commands.train.run(["--out", str(tmp_path / "run"), "--no-progress"])
    assert calls == [("tune", "numpy"), ("fit", lenet.commands.train._runner)]
    calls.clear()
    with pytest.raises(LenetError, match="no such file"):
        lenet.commands.test.run(["--checkpoint", str(tmp_path / "missing.npz")])
    assert calls == [("tune", "numpy")]


def test_a_chunk_step_is_the_cores_train_step_on_its_share_of_the_batch():
    """chunk_step's losses, hits and gradients add up to train_step's on the whole batch; it steps no weights."""
    from lenet.fast.chunk import chunk_step
    from lenet.step import train_step

    rng = np.random.default_rng(2)
    x, y = rng.random((10, 1, 28, 28)), rng.integers(0, 10, 10)
    whole = LeNet5(dtype="float64", seed=1)
    loss, hits = train_step(whole, SoftmaxCrossEntropy(), SGD(whole.parameters(), lr=0.1), x, y)
    chunked = LeNet5(dtype="float64", seed=1)
    start = chunked.state_dict()
    one = chunk_step(chunked, SoftmaxCrossEntropy(), x, y, 10)  # a chunk that is the whole batch: train_step's bits
    assert one[0] == loss and one[1] == hits
    for (name, p), g in zip(whole.named_parameters(), one[2], strict=True):
        np.testing.assert_array_equal(g, p.grad, err_msg=name)
    parts = [chunk_step(chunked, SoftmaxCrossEntropy(), x[lo:hi], y[lo:hi], 10) for lo, hi in ((0, 3), (3, 10))]
    assert parts[0][0] + parts[1][0] == pytest.approx(float(loss), rel=1e-14) and parts[0][1] + parts[1][1] == hits
    for (name, p), a, b in zip(whole.named_parameters(), parts[0][2], parts[1][2], strict=True):
        np.testing.assert_allclose(a + b, p.grad, rtol=1e-12, atol=1e-15, err_msg=name)
    for name, value in chunked.state_dict().items():
        np.testing.assert_array_equal(value, start[name], err_msg=name)


def test_data_parallel_runs_a_fused_twin_and_refuses_a_plain_model():
    """Every worker rebuilds the fused twin, so the caller must run it too: a plain model is refused, not mixed."""
    with pytest.raises(TypeError, match=r"fuse\(model\)"):
        DataParallel(LeNet5(), 2)


def test_the_callers_errstate_holds_in_the_worker_threads():
    """train.py ignores overflow warnings and checks the loss by value; the threads must do the same."""
    model = LeNet5()
    model.f7.weight.data[...] = 3e38  # logits overflow to inf: the loss becomes nan
    runner = DataParallel(fuse(model), 2)
    try:
        assert len(runner.chunks(128)) == 2
        with np.errstate(all="ignore"):
            loss, _ = runner.train_step(
                SGD(model.parameters(), lr=0.1), np.ones((128, 1, 28, 28), np.float32), np.zeros(128, int)
            )
        assert not np.isfinite(float(loss))
    finally:
        runner.close()


def test_keep_freed_memory_is_safe_to_call_again():
    import sys

    from lenet.fast.tuning import keep_freed_memory

    first, second = keep_freed_memory(), keep_freed_memory()
    assert first == second  # idempotent: the same answer each time
    if sys.platform.startswith("linux"):
        import ctypes

        assert first == hasattr(ctypes.CDLL(None), "mallopt")


# -- the queue: whoever is free takes the next chunk, and the bits do not depend on who ----------------------------
def float32_batches(n=4, batch=512, seed=5):
    rng = np.random.default_rng(seed)
    return [(rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch)) for _ in range(n)]


@contextlib.contextmanager
def deadline(seconds):
    """Fail, rather than hang, if the block takes longer than `seconds` (SIGALRM; the main thread only)."""

    def expired(signum, frame):
        raise AssertionError(f"not done within {seconds} s: a step waited for a worker that was not running")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class QuietMachine:
    """A CpuWatch that finds the machine quiet at every step."""

    busy, others, cpus = False, 0.0, [0, 1]

    def update(self):
        return True


def one_worker_run(batches, seed=11):
    """The reference: the same steps with one worker, the calling thread alone."""
    model = LeNet5(seed=seed)
    return run_steps(DataParallel(fuse(model), 1), model, batches)


@needs_processes
def test_a_worker_kept_off_its_core_takes_no_chunk_and_holds_no_step_up():
    """A worker the system does not run (stopped with SIGSTOP between steps) takes nothing from the queue: the caller
    takes every chunk and the steps go on without waiting for it, with the bits of one worker."""
    batches = float32_batches()
    model = LeNet5(seed=11)
    runner = DataParallel(fuse(model), 2)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    try:
        losses = [float(runner.train_step(opt, *batches[0])[0])]
        worker = runner._workers[0].process
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            with deadline(60):
                for x, y in batches[1:]:
                    losses.append(float(runner.train_step(opt, x, y)[0]))
                    assert runner.takers == [0, 0, 0, 0]  # the caller ran all four chunks
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        got = (losses, model.state_dict(), to_numpy(runner.forward(batches[0][0])))
        assert runner._workers and runner._workers[0].process is worker  # still there, and used again
    finally:
        runner.close()
    assert_same_run(got, one_worker_run(batches))


@pytest.mark.parametrize("processes", WORKERS)
def test_a_slow_caller_leaves_the_chunks_to_the_other_workers_with_the_same_bits(monkeypatch, processes):
    """The calling process made artificially slow: the other worker takes the chunks it is free for, and the steps
    give one worker's bits."""
    import time

    real = DataParallel._train_chunk

    def slow_caller(self, r, *args):
        if r == 0:
            time.sleep(0.1)
        return real(self, r, *args)

    batches = float32_batches()
    expected = one_worker_run(batches)
    monkeypatch.setattr(DataParallel, "_train_chunk", slow_caller)
    model = LeNet5(seed=11)
    runner = DataParallel(fuse(model), 2, processes=processes)
    takers = []
    try:
        for _ in range(100):  # until the other worker has started and answered (a process takes a while to start)
            runner.forward(batches[0][0])
            if any(runner.takers):
                break
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for x, y in batches:
            losses.append(float(runner.train_step(opt, x, y)[0]))
            takers.append(list(runner.takers))
        got = (losses, model.state_dict(), to_numpy(runner.forward(batches[0][0])))
    finally:
        runner.close()
    assert_same_run(got, expected)
    assert sum(t.count(1) for t in takers) > sum(t.count(0) for t in takers), takers  # the worker did most


@needs_processes
def test_a_worker_stopped_and_continued_at_random_moments_gives_the_same_bits():
    """A straggler of every kind: the worker stopped (SIGSTOP) and let go (SIGCONT) at random moments while the steps
    run, mid-chunk included. Whoever ran which chunk, the numbers are one worker's, bit for bit."""
    import threading
    import time

    batches = float32_batches(n=8, batch=256, seed=6) + float32_batches(n=4, batch=1024, seed=7)
    model = LeNet5(seed=11)
    runner = DataParallel(fuse(model), 2)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    done, seen = threading.Event(), []
    try:
        runner.train_step(opt, *batches[0])
        worker = runner._workers[0].process

        def stop_and_go():
            rng = np.random.default_rng(0)
            while not done.is_set():
                os.kill(worker.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(0, 0.01))
                os.kill(worker.pid, signal.SIGCONT)
                time.sleep(rng.uniform(0, 0.01))

        meddler = threading.Thread(target=stop_and_go)
        meddler.start()
        try:
            losses = []
            for x, y in batches[1:]:
                losses.append(float(runner.train_step(opt, x, y)[0]))
                seen.append(list(runner.takers))
        finally:
            done.set()
            meddler.join()
            os.kill(worker.pid, signal.SIGCONT)
        got = (losses, model.state_dict(), to_numpy(runner.forward(batches[0][0])))
    finally:
        runner.close()
    model = LeNet5(seed=11)
    plain = DataParallel(fuse(model), 1)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    plain.train_step(opt, *batches[0])
    losses = [float(plain.train_step(opt, x, y)[0]) for x, y in batches[1:]]
    assert_same_run(got, (losses, model.state_dict(), to_numpy(plain.forward(batches[0][0]))))
    assert all(len(t) in (2, 8) for t in seen)
