"""The GPU twin on a GPU (lenet/fast/gpu.py, kernels.cu, cublas.py, graphs.py); every case needs one.

The kernels' arithmetic is checked on the CPU as well (test_gpu_emulated.py); here: the real compiler and device,
cuBLAS through ctypes, CUDA graphs (bit for bit against the eager twin), and FastRunner as train.py uses it.
"""

import numpy as np
import pytest

from lenet.backend import cupy_available, cupy_unavailable_reason, get_backend
from lenet.fast import FastRunner
from lenet.layers import SoftmaxCrossEntropy
from lenet.model import LeNet5
from lenet.optim import SGD, Adam
from lenet.step import train_step

pytestmark = pytest.mark.skipif(not cupy_available(), reason=cupy_unavailable_reason() or "")


def models(activation="sigmoid", pool="avg", dtype="float64", seed=3, optimizer="adam"):
    """(textbook model, its optimizer, a twin's model, its optimizer), all on CuPy, from the same weights."""
    out = []
    for _ in range(2):
        model = LeNet5(activation=activation, pool=pool, backend="cupy", dtype=dtype, seed=seed)
        params = model.parameters()
        opt = Adam(params, lr=1e-2, weight_decay=1e-3) if optimizer == "adam" else SGD(params, lr=0.05, momentum=0.9)
        out += [model, opt]
    return out


def batches(rng, sizes, dtype="float64"):
    cp = get_backend("cupy")
    return [(cp.asarray(rng.random((n, 1, 28, 28)).astype(dtype)), cp.asarray(rng.integers(0, 10, n))) for n in sizes]


def relative_error(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 3e-5)])
@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_twin_steps_equal_textbook_steps(activation, pool, dtype, tol, rng):
    from lenet.fast.gpu import GpuTwin

    # Adam's step is about lr whatever the gradient's size, so in float32 the rounding of gradients near zero moves
    # weights by up to lr: the weights are compared after SGD steps there.
    ref, ref_opt, model, opt = models(activation, pool, dtype, optimizer="adam" if dtype == "float64" else "sgd")
    twin = GpuTwin(model, opt)
    for i, (x, y) in enumerate(batches(rng, [64, 33, 64], dtype)):
        loss, correct = train_step(ref, SoftmaxCrossEntropy(), ref_opt, x, y)
        twin_loss, twin_correct = twin.train_step(x, y)
        assert relative_error(twin_loss.get(), loss.get()) < tol, i
        assert abs(int(twin_correct) - int(correct)) <= (0 if dtype == "float64" else 1), i
        grads = twin.gradients()
        for name, p in ref.named_parameters():
            assert relative_error(grads[name].get(), p.grad.get()) < tol, (i, name)
        ours = model.state_dict()
        for name, w in ref.state_dict().items():
            assert relative_error(ours[name], w) < tol, (i, name)
    x, _ = batches(rng, [17], dtype)[0]
    assert relative_error(twin.forward(x).get(), ref.forward(x).get()) < tol


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_graph_replays_equal_eager_steps_bit_for_bit(optimizer, rng):
    """Two batch sizes (two graphs of each kind), a learning rate that changes every step, forward passes between."""
    from lenet.fast.gpu import GpuTwin
    from lenet.fast.graphs import CudaGraphs

    _, _, model_a, opt_a = models(optimizer=optimizer, dtype="float32")
    _, _, model_b, opt_b = models(optimizer=optimizer, dtype="float32")
    eager, graphs = GpuTwin(model_a, opt_a), CudaGraphs(GpuTwin(model_b, opt_b))
    data = batches(rng, [32, 32, 32, 32, 7, 32, 7, 7, 32], "float32")
    for i, (x, y) in enumerate(data):
        opt_a.lr = opt_b.lr = 1e-2 / (1 + i)
        a, b = eager.train_step(x, y), graphs.train_step(x, y)
        assert float(a[0]) == float(b[0]) and int(a[1]) == int(b[1]), i
        assert bool((eager.forward(x) == graphs.forward(x)).all()), i
    assert {k for k in graphs.graphs} == {("train", 32), ("train", 7), ("forward", 32), ("forward", 7)}
    for (name, w), w_b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        np.testing.assert_array_equal(w, w_b, err_msg=name)
    for key, value in opt_a.state_dict().items():
        np.testing.assert_array_equal(value, opt_b.state_dict()[key], err_msg=key)
    assert opt_a.steps == opt_b.steps == len(data)


def test_fast_runner_on_cupy_trains_with_graphs_and_matches_the_textbook(rng):
    ref, ref_opt, model, opt = models(optimizer="sgd", dtype="float64")
    runner = FastRunner(model, opt)
    assert runner.gpu is not None and runner.cuda_graphs
    for x, y in batches(rng, [16] * 5):
        want = train_step(ref, SoftmaxCrossEntropy(), ref_opt, x, y)
        got = runner.train_step(x, y)
        assert relative_error(got[0].get(), want[0].get()) < 1e-10
    assert ("train", 16) in runner.graphs.graphs
    x, _ = batches(rng, [16])[0]
    assert relative_error(runner.forward(x).get(), ref.forward(x).get()) < 1e-10


def test_a_graph_that_cannot_be_recorded_warns_once_and_the_steps_go_on(rng, monkeypatch):
    from lenet.fast import graphs

    _, _, model, opt = models(dtype="float32")
    runner = FastRunner(model, opt)

    def refuse(self, launches):
        raise RuntimeError("no graphs here")

    monkeypatch.setattr(graphs.CudaGraphs, "_record", refuse)
    ((x, y),) = batches(rng, [8], "float32")
    runner.train_step(x, y)  # the first call of a batch size runs eagerly
    with pytest.warns(UserWarning, match="CUDA graphs are off .*no graphs here"):
        runner.train_step(x, y)
    assert not runner.cuda_graphs
    losses = [float(runner.train_step(x, y)[0]) for _ in range(5)]
    assert losses[-1] < losses[0] and opt.steps == 7


def test_an_optimizer_the_twin_does_not_know_runs_the_textbook_step(rng):
    model = LeNet5(backend="cupy", dtype="float64")

    class MySGD(SGD):
        pass

    runner = FastRunner(model, MySGD(model.parameters(), lr=0.1))
    assert runner.gpu is None and runner.parallel is not None
    ((x, y),) = batches(rng, [8])
    assert np.isfinite(float(runner.train_step(x, y)[0]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cublas_products_equal_numpy(dtype, rng):
    """Every layout the twin multiplies: rows, rows with a bias column, transposed views."""
    cp = get_backend("cupy")
    from lenet.fast.cublas import Blas

    blas = Blas()
    s4, w = rng.random((33, 401)).astype(dtype), rng.random((120, 400)).astype(dtype)
    dz = rng.random((33, 120)).astype(dtype)
    s4_dev, w_dev, dz_dev = cp.asarray(s4), cp.asarray(w), cp.asarray(dz)
    cases = [  # (host a, host b, device a, device b) in the same layouts
        (s4[:, :400], w.T, s4_dev[:, :400], w_dev.T),  # F5 forward
        (dz.T, s4, dz_dev.T, s4_dev),  # F5's weight and bias gradient
        (dz, w, dz_dev, w_dev),  # F5's input gradient
    ]
    for a, b, a_dev, b_dev in cases:
        out = cp.full((a.shape[0], b.shape[1]), np.nan, dtype=dtype)
        blas.gemm(a_dev, b_dev, out, cp.cuda.get_current_stream().ptr)
        want = a.astype(np.float64) @ b.astype(np.float64)
        tol = 1e-4 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(out.get(), want, rtol=tol, atol=tol * a.shape[1])
