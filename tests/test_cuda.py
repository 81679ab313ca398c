"""CUDA graphs and the matrix-product kernel behind them (lenet/fast/graphs.py); every case needs a GPU."""

import numpy as np
import pytest

from lenet.backend import cupy_available, cupy_unavailable_reason, get_backend
from lenet.fast import FastRunner
from lenet.model import LeNet5
from lenet.optim import SGD, Adam

pytestmark = pytest.mark.skipif(not cupy_available(), reason=cupy_unavailable_reason() or "")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "m, k, n, a_transposed, b_transposed",
    [
        (24, 37, 6272, False, False),  # C1's block product at batch 32
        (64, 6400, 217, False, True),  # C3's weight gradient at batch 256: K cut into slices
        (24, 50176, 37, False, True),  # C1's weight gradient at batch 256: few tiles, long K
        (120, 400, 32, False, True),  # F5 forward
        (7, 3, 5, True, True),  # smaller than a tile, both operands transposed views
        (1, 1, 1, False, False),
    ],
)
def test_matmul_matches_numpy(dtype, m, k, n, a_transposed, b_transposed, rng):
    cp = get_backend("cupy")
    from lenet.fast import graphs as cuda

    a = rng.standard_normal((k, m) if a_transposed else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if b_transposed else (k, n)).astype(dtype)
    a_dev, b_dev = cp.asarray(a), cp.asarray(b)
    a_dev, b_dev = (a_dev.T if a_transposed else a_dev), (b_dev.T if b_transposed else b_dev)
    want = (a.T if a_transposed else a).astype(np.float64) @ (b.T if b_transposed else b).astype(np.float64)
    tol = 1e-4 if dtype == "float32" else 1e-12
    got = cp.asnumpy(cuda.matmul(a_dev, b_dev))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(k))
    out = cp.full((n, m), np.nan, dtype=dtype).T  # a strided output
    assert cuda.matmul(a_dev, b_dev, out=out) is out
    np.testing.assert_allclose(cp.asnumpy(out), want, rtol=tol, atol=tol * np.sqrt(k))


def test_matmul_refuses_mismatched_shapes():
    cp = get_backend("cupy")
    from lenet.fast import graphs as cuda

    with pytest.raises(ValueError, match="shapes"):
        cuda.matmul(cp.zeros((2, 3)), cp.zeros((4, 5)))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_graph_steps_match_eager_steps(optimizer, rng):
    """The same batches (two shapes, so two graphs) and a changing learning rate, with and without CUDA graphs."""
    cp = get_backend("cupy")
    sizes = [16, 16, 16, 16, 5, 16, 5, 16, 5, 16]  # each shape: two eager steps, then recorded and replayed
    batches = [(rng.random((n, 1, 28, 28)), rng.integers(0, 10, n)) for n in sizes]
    runs = {}
    for graphs in (False, True):
        model = LeNet5(backend="cupy", dtype="float64", seed=3)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd" else Adam(model.parameters())
        runner = FastRunner(model, opt, threads=1, cuda_graphs=graphs)
        results = []
        for i, (x, y) in enumerate(batches):
            opt.lr = (0.05 if optimizer == "sgd" else 1e-3) / (1 + i)  # the graph must read each step's rate
            loss, correct = runner.train_step(cp.asarray(x), cp.asarray(y))
            results.append((float(loss), int(correct)))
        if graphs:
            assert runner.cuda_graphs and len(runner._graphs) == 2
            assert all(g.graph is not None for g in runner._graphs.values())
        runs[graphs] = (results, model.state_dict(), opt.state_dict())
    (eager, eager_w, eager_opt), (replayed, graph_w, graph_opt) = runs[False], runs[True]
    np.testing.assert_allclose([r[0] for r in replayed], [r[0] for r in eager], rtol=1e-10)
    assert [r[1] for r in replayed] == [r[1] for r in eager]
    for name in eager_w:
        np.testing.assert_allclose(graph_w[name], eager_w[name], rtol=1e-9, atol=1e-12, err_msg=name)
    assert graph_opt["steps"] == eager_opt["steps"] == len(sizes)
    for key, value in eager_opt.items():
        np.testing.assert_allclose(graph_opt[key], value, rtol=1e-9, atol=1e-15, err_msg=key)


def test_graph_step_results_are_on_the_device_and_finite(rng):
    cp = get_backend("cupy")
    model = LeNet5(backend="cupy", seed=0)
    opt = Adam(model.parameters())
    runner = FastRunner(model, opt, threads=1)
    x, y = cp.asarray(rng.random((32, 1, 28, 28), dtype=np.float32)), cp.asarray(rng.integers(0, 10, 32))
    losses = []
    for _ in range(6):
        loss, correct = runner.train_step(x, y)
        assert isinstance(loss, cp.ndarray) and isinstance(correct, cp.ndarray)
        losses.append(float(loss))
    assert runner.cuda_graphs and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # six steps on one batch: the loss goes down, replays included
