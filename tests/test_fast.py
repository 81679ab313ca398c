"""The speed wing's fused stage and fused twin (lenet/fast/convpool.py, fused.py) and FastRunner, each against the
textbook code it must equal; and the core, which never imports the wing.

ConvPool against Conv2d -> activation -> pooling and against central differences (lenet.gradcheck's checker);
col2im_stride2 against im2col by the adjoint identity; BatchLastLinear against Linear; fuse(model) against the model
it wraps; FastRunner against PlainRunner. Data parallelism: tests/test_parallel.py.
"""

import ast
from pathlib import Path

import numpy as np
import pytest

from lenet import LeNet5
from lenet.backend import to_numpy
from lenet.fast import FastRunner, fuse
from lenet.fast.convpool import BatchLastLinear, ConvPool, col2im_stride2
from lenet.gradcheck import assert_grad_close, check_layer, check_loss, numerical_grad
from lenet.im2col import batch_last, windows
from lenet.layers import AvgPool2d, Conv2d, Linear, MaxPool2d, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh
from lenet.optim import SGD, Adam
from lenet.trainer import PlainRunner

pytestmark = pytest.mark.usefixtures("one_blas_thread")  # as tune_process holds BLAS for train.py's runner

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
@pytest.mark.parametrize("stage", STAGES[:3], ids=lambda s: f"{s[0]}-{s[1]}")
def test_convpool_gradients(xp, rng, case, stage):
    """lenet.gradcheck's checker on the fused stage: the input and both parameters, float64, max pooling on distinct
    well-spaced inputs (away from ties)."""
    c, f, h, w, k, pad = case
    wt, b = xp.asarray(rng.standard_normal((f, c, k, k)) * 0.3), xp.asarray(rng.standard_normal(f))
    if stage[1] == "max":
        x = rng.permutation(2 * c * h * w).reshape(2, c, h, w) * 0.01
    else:
        x = rng.standard_normal((2, c, h, w))
    check_layer(ConvPool(Conv2d(wt, b, padding=pad), *stage), xp.asarray(x), rng)


@pytest.mark.parametrize("case", CONVPOOL_CASES, ids=CONVPOOL_IDS)
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_convpool_equals_conv_activation_pool(xp, rng, case, stage):
    """Forward, dx and parameter gradients as Conv2d -> activation -> pooling give them, float64."""
    c, f, h, w, k, pad = case
    act, pool = stage
    wt, b = xp.asarray(rng.standard_normal((f, c, k, k)) * 0.3), xp.asarray(rng.standard_normal(f))
    x = xp.asarray(rng.standard_normal((3, c, h, w)))
    fused = ConvPool(Conv2d(wt, b, padding=pad), act, pool)
    conv = Conv2d(wt, b, padding=pad)  # parameters of its own, to compare with the fused stage's
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
    layer = ConvPool(Conv2d(wt, b, padding=2, input_grad=False), "sigmoid")
    out = layer.forward(xp.asarray(rng.standard_normal((2, 1, 28, 28)), dtype=dtype))
    assert out.dtype == dtype and out.shape == (2, 6, 14, 14)
    assert layer.backward(xp.ones_like(out)) is None
    assert layer.weight.grad.dtype == dtype and layer.bias.grad.dtype == dtype


def test_convpool_reuses_its_scratch_arrays_safely(xp, rng):
    """Outputs and gradients do not alias the arrays the layer keeps: a later call, of another batch size
    too, leaves earlier results unchanged, and every call matches a fresh layer."""
    wt, b = xp.asarray(rng.standard_normal((4, 2, 5, 5))), xp.asarray(rng.standard_normal(4))
    layer = ConvPool(Conv2d(wt, b, padding=2), "sigmoid")
    results = []
    for n in (3, 5, 3):
        x = xp.asarray(rng.standard_normal((n, 2, 12, 12)))
        out = layer.forward(x)
        upstream = xp.asarray(rng.standard_normal(out.shape))
        dx = layer.backward(upstream)
        fresh = ConvPool(Conv2d(wt, b, padding=2), "sigmoid")
        np.testing.assert_array_equal(to_numpy(out), to_numpy(fresh.forward(x)))
        np.testing.assert_array_equal(to_numpy(dx), to_numpy(fresh.backward(upstream)))
        np.testing.assert_array_equal(to_numpy(layer.weight.grad), to_numpy(fresh.weight.grad))
        results.append((out, out.copy(), dx, dx.copy(), layer.weight.grad, layer.weight.grad.copy()))
    for kept in results:
        for now, then in zip(kept[::2], kept[1::2], strict=True):
            np.testing.assert_array_equal(to_numpy(now), to_numpy(then))


def test_convpool_refuses_even_kernels_and_strides_but_one(xp):
    with pytest.raises(ValueError, match="odd kernel"):
        ConvPool(Conv2d(xp.zeros((2, 1, 4, 4)), xp.zeros(2)))
    with pytest.raises(ValueError, match="stride 1"):
        ConvPool(Conv2d(xp.zeros((2, 1, 5, 5)), xp.zeros(2), stride=2))


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
    fast, plain = BatchLastLinear(Linear(w, b)), Linear(w, b)
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


# -- the fused twin: fuse(model) -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", STAGES, ids=str)
def test_the_fused_twin_equals_the_model(xp, arch):
    """fuse(model) against the textbook model it wraps: logits, loss and every parameter gradient in float64, then
    the weights after several Adam steps (two models from one seed, so that each has its own gradients)."""
    rng = np.random.default_rng(8)
    backend = "numpy" if xp is np else "cupy"
    models = {"textbook": LeNet5(*arch, backend=backend, dtype="float64", seed=5)}
    models["fused"] = fuse(LeNet5(*arch, backend=backend, dtype="float64", seed=5))
    optimizers = {kind: Adam(m.parameters(), lr=1e-2) for kind, m in models.items()}
    for step in range(4):
        x, y = xp.asarray(rng.random((6, 1, 28, 28))), xp.asarray(rng.integers(0, 10, 6))
        out = {}
        for kind, model in models.items():
            ce = SoftmaxCrossEntropy()
            logits = model.forward(x)
            loss = float(ce.forward(logits, y))
            model.backward(ce.backward())
            out[kind] = (to_numpy(logits), loss, {n: to_numpy(p.grad) for n, p in model.named_parameters()})
            optimizers[kind].step()
        (logits_t, loss_t, grads_t), (logits_f, loss_f, grads_f) = out["textbook"], out["fused"]
        np.testing.assert_allclose(logits_f, logits_t, rtol=1e-10, atol=1e-12)
        assert loss_f == pytest.approx(loss_t, rel=1e-10)
        for name in grads_t:
            np.testing.assert_allclose(grads_f[name], grads_t[name], rtol=1e-10, atol=1e-13, err_msg=f"{step} {name}")
    for name, value in models["textbook"].state_dict().items():
        np.testing.assert_allclose(models["fused"].state_dict()[name], value, rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("arch", STAGES[:3], ids=str)
def test_the_fused_twins_loss_passes_the_gradient_check(arch):
    """lenet.gradcheck.check_loss on the twin: 12 entries of every parameter, float64, distinct pixels (no ties)."""
    rng = np.random.default_rng(3)
    twin = fuse(LeNet5(*arch, dtype="float64", seed=3))
    images = rng.permutation(3 * 784).reshape(3, 1, 28, 28) / (3 * 784)
    errors = check_loss(twin, images, np.arange(3), rng, name=f"fused LeNet5 {arch}")
    assert set(errors) == {name for name, _ in twin.named_parameters()}


def test_the_twin_computes_with_the_models_own_parameters():
    """The twin's parameters are the model's objects: an optimizer on the model trains the twin, the model's state
    dict is the twin's, and the model's layers (what visualize and the summary read) stay the textbook ones."""
    model = LeNet5("relu", "max", seed=4)
    summary = model.summary()
    twin = fuse(model)
    assert [name for name, _ in twin.named_parameters()] == [name for name, _ in model.named_parameters()]
    assert all(a is b for a, b in zip(twin.parameters(), model.parameters(), strict=True))
    assert [type(layer).__name__ for _, layer in twin.layers[:2]] == ["ConvPool", "ConvPool"]
    assert [name for name, _ in twin.layers] == [
        "c1+act1+s2",
        "c3+act3+s4",
        "flatten",
        "f5",
        "act5",
        "f6",
        "act6",
        "f7",
    ]
    assert not {id(layer) for _, layer in twin.layers} & {id(layer) for _, layer in model.layers}  # own caches
    assert model.summary() == summary and type(model.layers[0][1]) is Conv2d
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    y = np.arange(4)
    before = twin.forward(x).copy()
    ce = SoftmaxCrossEntropy()
    ce.forward(twin.forward(x), y)
    twin.backward(ce.backward())
    SGD(model.parameters(), lr=0.5).step()  # the model's optimizer, the twin's gradients
    after = twin.forward(x)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, model.forward(x), rtol=1e-5, atol=1e-6)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(twin.state_dict()[name], value, err_msg=name)


def test_the_twin_and_the_model_keep_their_own_caches():
    """A forward pass of the model between the twin's forward and backward leaves the twin's backward as it was."""
    rng = np.random.default_rng(1)
    x, other, upstream = rng.random((3, 1, 28, 28)), rng.random((5, 1, 28, 28)), rng.standard_normal((3, 10))
    model = LeNet5(dtype="float64", seed=2)
    twin = fuse(model)
    twin.forward(x)
    twin.backward(upstream)
    expected = {name: p.grad.copy() for name, p in twin.named_parameters()}
    twin.forward(x)
    model.forward(other)
    twin.backward(upstream)
    for name, p in twin.named_parameters():
        np.testing.assert_array_equal(p.grad, expected[name], err_msg=name)


def test_a_replica_has_parameters_of_its_own_on_the_same_weights():
    """What the thread fallback runs: its own gradients, the twin's weight arrays (an optimizer step reaches both)."""
    twin = fuse(LeNet5("tanh", "avg", dtype="float64", seed=3, input_grad=True))
    replica = twin.replica()
    assert isinstance(replica.c1, ConvPool) and replica.input_grad and replica.dtype == twin.dtype
    for p, q in zip(replica.parameters(), twin.parameters(), strict=True):
        assert p is not q and p.data is q.data
    x = np.random.default_rng(2).random((2, 1, 28, 28))
    np.testing.assert_array_equal(replica.forward(x), twin.forward(x))


def imported_modules(source):
    """Every module the source of a lenet/*.py file imports, anywhere in it, as absolute names (lenet.x.y for
    `from .x import y`)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = f"lenet.{node.module or ''}".rstrip(".") if node.level else node.module
            names += [module, *(f"{module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_the_core_imports_nothing_of_the_speed_wing():
    """The wing wraps the core from outside: no core module (nor what looks inside a model) imports lenet.fast."""
    lenet_dir = Path(__file__).resolve().parent.parent / "lenet"
    core = ["backend", "im2col", "layers", "model", "optim", "step", "trainer", "gradcheck", "visualize", "demo"]
    lazy = "def f():\n    from .fast.convpool import ConvPool\n"  # what model.py had: the check must see it
    assert "lenet.fast.convpool.ConvPool" in imported_modules(lazy)
    for name in core:
        imported = imported_modules((lenet_dir / f"{name}.py").read_text())
        wing = [m for m in imported if m == "lenet.fast" or m.startswith("lenet.fast.")]
        assert not wing, f"lenet/{name}.py imports {wing}"


# -- the runner ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [32, 200])
def test_fast_runner_equals_the_plain_runner(batch):
    """FastRunner (threads over chunks) against PlainRunner (trainer.train_step on the whole batch), float64, Adam."""
    rng = np.random.default_rng(5)
    batches = [(rng.random((batch, 1, 28, 28)), rng.integers(0, 10, batch)) for _ in range(3)]
    results = {}
    for name, make in (("plain", PlainRunner), ("fast", lambda m, o: FastRunner(m, o, threads=2))):
        model = LeNet5("relu", "max", dtype="float64", seed=6)
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
    fused = ConvPool(Conv2d(wt.astype(np.float32), b.astype(np.float32), padding=2), "sigmoid", pool)
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
    layer = ConvPool(Conv2d(rng.standard_normal((3, c, 5, 5)), rng.standard_normal(3), padding=pad))
    batch_last_view = np.ascontiguousarray(rng.standard_normal(shape).transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    for x in (batch_last_view, np.ascontiguousarray(batch_last_view)):
        cols, padded_shape = layer._columns(x)
        assert "planes" in layer._buffers  # the parity-plane copy ran
        win = windows(batch_last(x, pad), 6, 6, stride=2)
        assert padded_shape == batch_last(x, pad).shape
        np.testing.assert_array_equal(cols[:-1], win.reshape(c * 36, -1))
        np.testing.assert_array_equal(cols[-1], 1)
