"""Data parallelism: the threaded step must compute the same step as one thread on the whole batch."""

import numpy as np
import pytest

from lenet import LeNet5
from lenet.layers import SoftmaxCrossEntropy
from lenet.optim import SGD
from lenet.parallel import DataParallel


def serial_step(model, x, y, lr=0.1):
    ce = SoftmaxCrossEntropy()
    loss = ce.forward(model.forward(x), y)
    model.backward(ce.backward())
    SGD(model.parameters(), lr=lr).step()
    return float(loss)


@pytest.mark.parametrize("threads,batch", [(2, 256), (2, 300), (1, 300), (2, 1024), (3, 200)])
def test_parallel_step_equals_serial_step_in_float64(threads, batch):
    rng = np.random.default_rng(0)
    x, y = rng.random((batch, 1, 28, 28)), rng.integers(0, 10, batch)
    serial = LeNet5(dtype="float64", seed=4)
    parallel = LeNet5(dtype="float64", seed=4)
    runner = DataParallel(parallel, threads)
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


@pytest.mark.parametrize("batch", [200, 512])
def test_steps_are_the_same_bit_for_bit_whatever_the_threads(batch):
    rng = np.random.default_rng(1)
    x, y = rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch)
    states = []
    for threads in (2, 2, 1, 3):
        model = LeNet5(seed=2)
        runner = DataParallel(model, threads)
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            runner.train_step(opt, x, y)
        runner.close()
        states.append(model.state_dict())
    for state in states[1:]:
        for k in states[0]:
            np.testing.assert_array_equal(states[0][k], state[k])


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

    from lenet.parallel import keep_freed_memory

    first, second = keep_freed_memory(), keep_freed_memory()
    assert first == second  # idempotent: the same answer each time
    if sys.platform.startswith("linux"):
        import ctypes

        assert first == hasattr(ctypes.CDLL(None), "mallopt")
