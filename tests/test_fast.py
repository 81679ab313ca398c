"""The speed wing (lenet/fast): each piece against the textbook code it must equal.

ConvPool against Conv2d -> activation -> pooling; col2im_stride2 against im2col by the adjoint identity;
BatchLastLinear against Linear; DataParallel and FastRunner against trainer.train_step; the process settings.
"""

import os

import numpy as np
import pytest

from lenet import LeNet5
from lenet.backend import to_numpy
from lenet.fast import DataParallel, FastRunner
from lenet.fast.convpool import BatchLastLinear, ConvPool, col2im_stride2
from lenet.fast.processes import available as processes_available
from lenet.gradcheck import assert_grad_close, check_layer, numerical_grad
from lenet.im2col import batch_last, windows
from lenet.layers import AvgPool2d, Conv2d, Linear, MaxPool2d, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh
from lenet.optim import SGD, Adam
from lenet.trainer import PlainRunner

# -- the fused stage ---------------------------------------------------------------------------------------------
CONVPOOL_CASES = [  # (C, F, H, W, K, pad): LeNet's two stages, an odd conv output (pooling drops a row), 3x3
    (1, 6, 28, 28, 5, 2),
    (6, 16, 14, 14, 5, 0),
    (2, 3, 9, 8, 3, 0),
    (3, 2, 6, 7, 3, 1),
]
CONVPOOL_IDS = ["C{}F{}H{}W{}K{}p{}".format(*c) for c in CONVPOOL_CASES]
STAGES = [("sigmoid", "avg"), ("tanh", "avg"), ("relu", "max"), ("sigmoid", "max")]
ACTIVATIONS = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU}


@pytest.mark.parametrize("case", CONVPOOL_CASES[1:], ids=CONVPOOL_IDS[1:])
@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_convpool_gradients(xp, rng, case, act):
    c, f, h, w, k, pad = case
    wt, b = xp.asarray(rng.standard_normal((f, c, k, k)) * 0.3), xp.asarray(rng.standard_normal(f))
    check_layer(ConvPool(wt, b, act, "avg", padding=pad), xp.asarray(rng.standard_normal((2, c, h, w))), rng)


@pytest.mark.parametrize("case", CONVPOOL_CASES, ids=CONVPOOL_IDS)
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_convpool_equals_conv_activation_pool(xp, rng, case, stage):
    """Forward, dx and parameter gradients as Conv2d -> activation -> pooling give them, float64."""
    c, f, h, w, k, pad = case
    act, pool = stage
    wt, b = xp.asarray(rng.standard_normal((f, c, k, k)) * 0.3), xp.asarray(rng.standard_normal(f))
    x = xp.asarray(rng.standard_normal((3, c, h, w)))
    fused = ConvPool(wt, b, act, pool, padding=pad)
    conv = Conv2d(wt, b, padding=pad)
    chain = [conv, ACTIVATIONS[act](), AvgPool2d(2) if pool == "avg" else MaxPool2d(2)]
    out = fused.forward(x)
    expected = x
    for layer in chain:
        expected = layer.forward(expected)
    assert out.shape == expected.shape == fused.output_shape(x.shape)
    np.testing.assert_allclose(to_numpy(out), to_numpy(expected), rtol=1e-12, atol=1e-14)
    upstream = xp.asarray(rng.standard_normal(out.shape))
    dx, expected_dx = fused.backward(upstream), upstream
    for layer in reversed(chain):
        expected_dx = layer.backward(expected_dx)
    np.testing.assert_allclose(to_numpy(dx), to_numpy(expected_dx), rtol=1e-11, atol=1e-13)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(
            to_numpy(fused.params[name].grad), to_numpy(conv.params[name].grad), rtol=1e-11, atol=1e-13
        )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_convpool_keeps_dtype_and_skips_input_grad_when_asked(xp, rng, dtype):
    wt, b = xp.asarray(rng.standard_normal((6, 1, 5, 5)), dtype=dtype), xp.zeros(6, dtype=dtype)
    layer = ConvPool(wt, b, "sigmoid", padding=2, input_grad=False)
    out = layer.forward(xp.asarray(rng.standard_normal((2, 1, 28, 28)), dtype=dtype))
    assert out.dtype == dtype and out.shape == (2, 6, 14, 14)
    assert layer.backward(xp.ones_like(out)) is None
    assert layer.weight.grad.dtype == dtype and layer.bias.grad.dtype == dtype


def test_convpool_reuses_its_scratch_arrays_safely(xp, rng):
    """Outputs and gradients do not alias the arrays the layer keeps: a later call, of another batch size
    too, leaves earlier results unchanged, and every call matches a fresh layer."""
    wt, b = xp.asarray(rng.standard_normal((4, 2, 5, 5))), xp.asarray(rng.standard_normal(4))
    layer = ConvPool(wt, b, "sigmoid", padding=2)
    results = []
    for n in (3, 5, 3):
        x = xp.asarray(rng.standard_normal((n, 2, 12, 12)))
        out = layer.forward(x)
        upstream = xp.asarray(rng.standard_normal(out.shape))
        dx = layer.backward(upstream)
        fresh = ConvPool(wt, b, "sigmoid", padding=2)
        np.testing.assert_array_equal(to_numpy(out), to_numpy(fresh.forward(x)))
        np.testing.assert_array_equal(to_numpy(dx), to_numpy(fresh.backward(upstream)))
        np.testing.assert_array_equal(to_numpy(layer.weight.grad), to_numpy(fresh.weight.grad))
        results.append((out, out.copy(), dx, dx.copy(), layer.weight.grad, layer.weight.grad.copy()))
    for kept in results:
        for now, then in zip(kept[::2], kept[1::2], strict=True):
            np.testing.assert_array_equal(to_numpy(now), to_numpy(then))


def test_convpool_refuses_even_kernels(xp):
    with pytest.raises(ValueError, match="odd kernel"):
        ConvPool(xp.zeros((2, 1, 4, 4)), xp.zeros(2))


@pytest.mark.parametrize("shape,kh,kw", [((2, 3, 14, 14), 6, 6), ((1, 2, 9, 8), 4, 2), ((2, 1, 32, 32), 6, 6)])
def test_stride2_windows_and_col2im_stride2_are_adjoint(xp, rng, shape, kh, kw):
    xb = batch_last(xp.asarray(rng.standard_normal(shape)))  # (C, H, W, N)
    win = windows(xb, kh, kw, stride=2)
    cols = win.reshape(win.shape[0] * kh * kw, -1)
    c = xp.asarray(rng.standard_normal(cols.shape))
    back = col2im_stride2(c, xb.shape, kh, kw)
    assert back.shape == xb.shape
    assert float((cols * c).sum()) == pytest.approx(float((xb * back).sum()), rel=1e-12)


def test_batch_last_linear_equals_linear_and_keeps_the_memory_order(xp, rng):
    w, b = xp.asarray(rng.standard_normal((7, 5))), xp.asarray(rng.standard_normal(7))
    fast, plain = BatchLastLinear(w, b), Linear(w, b)
    memory = xp.asarray(rng.standard_normal((5, 4)))  # (in, N): the input is its transpose, as F5 gets it
    upstream = xp.asarray(rng.standard_normal((4, 7)))
    np.testing.assert_array_equal(to_numpy(fast.forward(memory.T)), to_numpy(plain.forward(memory.T)))
    dx, expected = fast.backward(upstream), plain.backward(upstream)
    assert dx.shape == (4, 5) and dx.T.flags.c_contiguous
    np.testing.assert_allclose(to_numpy(dx), to_numpy(expected), rtol=1e-13)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(to_numpy(fast.params[name].grad), to_numpy(plain.params[name].grad), rtol=1e-13)
    numeric = numerical_grad(lambda: (fast.forward(memory.T) * upstream).sum(), memory)
    assert_grad_close(dx.T, numeric, "BatchLastLinear batch-last input")


# -- data parallelism and the runner ---------------------------------------------------------------------------
needs_processes = pytest.mark.skipif(not processes_available(), reason="worker processes need Linux (memfd_create)")


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
    runner = DataParallel(parallel, threads, processes=processes)
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
    runner = DataParallel(LeNet5(), threads=2, split_at=96, max_chunk=128)
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
        runner = DataParallel(model, threads, processes=processes)
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
    with_processes, with_threads = DataParallel(model, 2), DataParallel(model, 2, processes=False)
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
    import signal

    batches = float64_batches()
    model = LeNet5(dtype="float64", seed=7)
    expected = run_steps(DataParallel(model, 1), model, batches)  # one worker: the calling thread alone
    model = LeNet5(dtype="float64", seed=7)
    runner = DataParallel(model, 2)
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
    expected = run_steps(DataParallel(model, 1), model, batches)
    model = LeNet5(dtype="float64", seed=8)
    runner = DataParallel(model, 2)
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
    worker = processes.Worker(model, fd)
    try:
        worker.send("forward", np.zeros((4, 1, 28, 28), np.float32), None, [(0, 4)], 4)
        assert worker.conn.poll(60)  # answered, and left unread
    finally:
        worker.close()
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
    runner = DataParallel(model, 2)
    try:
        logits = runner.forward(x)  # a worker that imported the shadow would end, and a warning would fail the test
        assert runner.processes and runner._workers
    finally:
        runner.close()
    np.testing.assert_array_equal(logits, DataParallel(model, 1).forward(x))


def overflowing_model():
    model = LeNet5("relu", "max")
    model.f7.weight.data[...] = 3e38  # logits overflow to inf, then inf - inf in the loss
    return model


@needs_processes
def test_a_chunk_that_raises_in_a_worker_raises_in_the_caller_and_the_workers_stay():
    model = overflowing_model()
    runner = DataParallel(model, 2)
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
        runner = DataParallel(model, 2, processes=processes)
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
    runner = DataParallel(LeNet5(), 2)
    runner.forward(x)  # the first worker: whatever it opens once (imports, pools) is open from here on
    runner.close()
    gc.collect()
    before = open_fds()
    for _ in range(3):
        runner = DataParallel(LeNet5(), 2)
        runner.forward(x)
        process = runner._workers[0].process
        del runner  # no close()
        gc.collect()
        assert process.returncode == 0
    assert not Counter(open_fds()) - Counter(before)  # (an earlier test's garbage may have gone meanwhile)
    runner = DataParallel(LeNet5(), 2)
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
    runner = DataParallel(model, 3)
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
    runner, plain = DataParallel(model, 2), DataParallel(reference, 1)
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


def test_settings_are_restored_after_a_parallel_step():
    import sys

    from threadpoolctl import threadpool_info

    before = (sys.getswitchinterval(), [p["num_threads"] for p in threadpool_info()])
    model = LeNet5()
    runner = DataParallel(model, 2)
    runner.train_step(SGD(model.parameters(), lr=0.1), np.zeros((256, 1, 28, 28), np.float32), np.zeros(256, int))
    runner.close()
    assert (sys.getswitchinterval(), [p["num_threads"] for p in threadpool_info()]) == before


def test_the_callers_errstate_holds_in_the_worker_threads():
    """train.py ignores overflow warnings and checks the loss by value; the threads must do the same."""
    model = LeNet5()
    model.f7.weight.data[...] = 3e38  # logits overflow to inf: the loss becomes nan
    runner = DataParallel(model, 2)
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


@pytest.mark.parametrize("batch", [32, 200])
@pytest.mark.parametrize("fused", [True, False])
def test_fast_runner_equals_the_plain_runner(batch, fused):
    """FastRunner (threads over chunks) against PlainRunner (trainer.train_step on the whole batch), float64, Adam."""
    rng = np.random.default_rng(5)
    batches = [(rng.random((batch, 1, 28, 28)), rng.integers(0, 10, batch)) for _ in range(3)]
    results = {}
    for name, make in (("plain", PlainRunner), ("fast", lambda m, o: FastRunner(m, o, threads=2))):
        model = LeNet5("relu", "max", dtype="float64", seed=6, fused=fused)
        runner = make(model, Adam(model.parameters(), lr=1e-3))
        losses = [float(runner.train_step(x, y)[0]) for x, y in batches]
        logits = to_numpy(runner.forward(batches[0][0]))
        runner.close()
        results[name] = (losses, model.state_dict(), logits)
    (plain_losses, plain_w, plain_logits), (fast_losses, fast_w, fast_logits) = results["plain"], results["fast"]
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-12)
    for name in plain_w:
        np.testing.assert_allclose(fast_w[name], plain_w[name], rtol=1e-10, atol=1e-13, err_msg=name)
    np.testing.assert_allclose(fast_logits, plain_logits, rtol=1e-11, atol=1e-13)


# -- CPU round 2 (docs/speed.md): the NumPy forms of the fused stage ----------------------------------------------
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_numpy_sigmoid_stage_in_float32_stays_close_to_the_float64_chain(rng, pool):
    """The NumPy sigmoid stage computes 0.5 + 0.5 tanh(x / 2); in float32 it must stay as close to the exact values
    as float32 allows, saturated pixels included (inputs scaled so that some reach |x| > 20)."""
    from lenet.fast.convpool import _SigmoidViaTanh

    wt, b = rng.standard_normal((6, 1, 5, 5)) * 2, rng.standard_normal(6)
    x = rng.standard_normal((4, 1, 28, 28)) * 2
    fused = ConvPool(wt.astype(np.float32), b.astype(np.float32), "sigmoid", pool, padding=2, input_grad=True)
    assert isinstance(fused.activation, _SigmoidViaTanh)  # the form under test
    conv = Conv2d(wt, b, padding=2)
    chain = [conv, Sigmoid(), AvgPool2d(2) if pool == "avg" else MaxPool2d(2)]
    expected = x
    for layer in chain:
        expected = layer.forward(expected)
    out = fused.forward(x.astype(np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)
    upstream = rng.standard_normal(out.shape)
    dx, expected_dx = fused.backward(upstream.astype(np.float32)), upstream
    for layer in reversed(chain):
        expected_dx = layer.backward(expected_dx)
    np.testing.assert_allclose(dx, expected_dx, rtol=0, atol=1e-5 * np.abs(expected_dx).max())
    for name in ("weight", "bias"):
        g = conv.params[name].grad
        np.testing.assert_allclose(fused.params[name].grad, g, rtol=0, atol=1e-5 * np.abs(g).max(), err_msg=name)


@pytest.mark.parametrize("shape,pad", [((3, 1, 28, 28), 2), ((2, 6, 14, 14), 0), ((2, 2, 8, 6), 2)])
def test_parity_plane_columns_equal_the_stride2_windows(rng, shape, pad):
    """The NumPy columns, copied from the input's parity planes, are exactly the (KH+1)x(KW+1) windows at stride 2
    of the padded batch-last input (im2col's view), for a batch-last input view as C3 gets it too."""
    c = shape[1]
    layer = ConvPool(rng.standard_normal((3, c, 5, 5)), rng.standard_normal(3), padding=pad)
    batch_last_view = np.ascontiguousarray(rng.standard_normal(shape).transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    for x in (batch_last_view, np.ascontiguousarray(batch_last_view)):
        cols, padded_shape = layer._columns(x)
        assert "planes" in layer._buffers  # the parity-plane copy ran
        win = windows(batch_last(x, pad), 6, 6, stride=2)
        assert padded_shape == batch_last(x, pad).shape
        np.testing.assert_array_equal(cols[:-1], win.reshape(c * 36, -1))
        np.testing.assert_array_equal(cols[-1], 1)
