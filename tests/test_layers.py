"""Every layer: float64 gradient checks with a random upstream gradient, forward against naive loops."""

import numpy as np
import pytest
from gradcheck import assert_grad_close, numerical_grad

from lenet.backend import to_numpy
from lenet.layers import (
    AvgPool2d,
    Conv2d,
    ConvPool,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
)


def check_layer(layer, x, xp, rng, check_input=True):
    """Gradient of sum(forward(x) * G) for a random G, on x and every parameter."""
    out = layer.forward(x)
    upstream = xp.asarray(rng.standard_normal(out.shape))
    dx = layer.backward(upstream)
    grads = {name: p.grad.copy() for name, p in layer.params.items()}

    def f():
        return (layer.forward(x) * upstream).sum()

    if check_input:
        assert dx.shape == x.shape and dx.dtype == x.dtype
        assert_grad_close(dx, numerical_grad(f, x), f"{type(layer).__name__} input")
    for name, p in layer.params.items():
        assert grads[name].shape == p.shape
        assert_grad_close(grads[name], numerical_grad(f, p.data), f"{type(layer).__name__} {name}")


def naive_conv(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(n):
        for j in range(f):
            for r in range(oh):
                for s in range(ow):
                    patch = xp_[i, :, r * stride : r * stride + kh, s * stride : s * stride + kw]
                    out[i, j, r, s] = (patch * w[j]).sum() + b[j]
    return out


def naive_pool(x, k, s, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for q in range(ow):
            out[:, :, r, q] = reduce(x[:, :, r * s : r * s + k, q * s : q * s + k], axis=(2, 3))
    return out


CONV_CASES = [  # (C, F, H, W, K, stride, pad)
    (1, 3, 8, 8, 5, 1, 2),
    (3, 4, 7, 9, 3, 1, 0),
    (2, 5, 9, 8, 3, 2, 1),
    (3, 2, 10, 10, 5, 2, 0),
    (6, 16, 14, 14, 5, 1, 0),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "C{}F{}H{}W{}K{}s{}p{}".format(*c))
def test_conv2d_gradients(xp, rng, case):
    c, f, h, w, k, stride, pad = case
    layer = Conv2d(xp.asarray(rng.standard_normal((f, c, k, k))), xp.asarray(rng.standard_normal(f)), stride, pad)
    check_layer(layer, xp.asarray(rng.standard_normal((2, c, h, w))), xp, rng)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "C{}F{}H{}W{}K{}s{}p{}".format(*c))
def test_conv2d_forward_matches_naive_loop(xp, rng, case):
    c, f, h, w, k, stride, pad = case
    x, wt, b = rng.standard_normal((2, c, h, w)), rng.standard_normal((f, c, k, k)), rng.standard_normal(f)
    layer = Conv2d(xp.asarray(wt), xp.asarray(b), stride, pad)
    np.testing.assert_allclose(to_numpy(layer.forward(xp.asarray(x))), naive_conv(x, wt, b, stride, pad), rtol=1e-12)


def test_conv2d_without_input_grad_still_fills_parameter_grads(xp, rng):
    layer = Conv2d(xp.asarray(rng.standard_normal((3, 1, 5, 5))), xp.zeros(3), padding=2, input_grad=False)
    x = xp.asarray(rng.standard_normal((2, 1, 6, 6)))
    out = layer.forward(x)
    assert layer.backward(xp.ones_like(out)) is None
    check_layer(layer, x, xp, rng, check_input=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layer_cls", [Sigmoid, Tanh, ReLU, AvgPool2d, MaxPool2d, Flatten])
def test_layers_keep_dtype(xp, rng, layer_cls, dtype):
    layer = layer_cls()
    x = xp.asarray(rng.standard_normal((2, 3, 8, 8)), dtype=dtype)
    out = layer.forward(x)
    assert out.dtype == dtype
    assert layer.backward(xp.ones_like(out)).dtype == dtype


@pytest.mark.parametrize("layer_cls", [Sigmoid, Tanh])
def test_smooth_activation_gradients(xp, rng, layer_cls):
    check_layer(layer_cls(), xp.asarray(rng.standard_normal((3, 2, 4, 5)) * 3), xp, rng)


def test_relu_gradient_away_from_the_kink(xp, rng):
    x = rng.standard_normal((3, 40))
    x[np.abs(x) < 0.05] = 0.5  # keep every entry far from 0 compared with the finite-difference step
    check_layer(ReLU(), xp.asarray(x), xp, rng)


def test_sigmoid_does_not_overflow(xp):
    # No overflow warning (warnings are errors here), and accurate relative to the value even in the tails.
    z = np.array([-1000.0, -50.0, -3.0, 0.0, 2.5, 50.0, 1000.0])
    y = to_numpy(Sigmoid().forward(xp.asarray(z)))
    e = np.exp(-np.abs(z))
    np.testing.assert_allclose(y, np.where(z >= 0, 1 / (1 + e), e / (1 + e)), rtol=1e-14, atol=0)


def test_backward_does_not_modify_dout(xp, rng):
    dout = xp.asarray(rng.standard_normal((2, 3, 4, 4)))
    kept = dout.copy()
    for layer in [Sigmoid(), Tanh(), ReLU(), AvgPool2d(), MaxPool2d()]:
        out = layer.forward(xp.asarray(rng.standard_normal((2, 3, 8, 8)) if "Pool" in type(layer).__name__ else dout))
        layer.backward(dout if out.shape == dout.shape else xp.asarray(rng.standard_normal(out.shape)))
    assert xp.array_equal(dout, kept)


POOL_CASES = [
    (2, None, 8, 8),
    (2, None, 7, 9),
    (3, 2, 9, 7),
    (3, 1, 6, 6),
    (2, 2, 28, 28),
    (1, 1, 4, 4),
    (3, None, 9, 6),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_avgpool_gradients_and_forward(xp, rng, case):
    k, s, h, w = case
    layer = AvgPool2d(k, s)
    x = rng.standard_normal((2, 3, h, w))
    np.testing.assert_allclose(
        to_numpy(layer.forward(xp.asarray(x))), naive_pool(x, k, s or k, np.mean), rtol=1e-12, atol=1e-15
    )
    check_layer(layer, xp.asarray(x), xp, rng)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool_gradients_and_forward_away_from_ties(xp, rng, case):
    k, s, h, w = case
    layer = MaxPool2d(k, s)
    # A permutation of well-spaced values: no ties, and no two entries closer than the finite-difference step.
    x = rng.permutation(2 * 3 * h * w).reshape(2, 3, h, w) * 0.01
    np.testing.assert_array_equal(to_numpy(layer.forward(xp.asarray(x))), naive_pool(x, k, s or k, np.max))
    check_layer(layer, xp.asarray(x), xp, rng)


def test_maxpool_gives_a_tied_window_gradient_once(xp):
    layer = MaxPool2d(2)
    out = layer.forward(xp.zeros((1, 1, 2, 2)))  # all four tie: the gradient goes to the first, as in PyTorch
    dx = to_numpy(layer.backward(xp.ones_like(out)))
    np.testing.assert_array_equal(dx, [[[[1.0, 0.0], [0.0, 0.0]]]])


CONVPOOL_CASES = [  # (C, F, H, W, K, pad): LeNet's two stages, an odd conv output (pooling drops a row), 3x3
    (1, 6, 28, 28, 5, 2),
    (6, 16, 14, 14, 5, 0),
    (2, 3, 9, 8, 3, 0),
    (3, 2, 6, 7, 3, 1),
]
CONVPOOL_IDS = ["C{}F{}H{}W{}K{}p{}".format(*c) for c in CONVPOOL_CASES]
STAGES = [(Sigmoid, "avg"), (Tanh, "avg"), (ReLU, "max"), (Sigmoid, "max")]


@pytest.mark.parametrize("case", CONVPOOL_CASES[1:], ids=CONVPOOL_IDS[1:])
@pytest.mark.parametrize("act", [Sigmoid, Tanh])
def test_convpool_gradients(xp, rng, case, act):
    c, f, h, w, k, pad = case
    wt, b = xp.asarray(rng.standard_normal((f, c, k, k)) * 0.3), xp.asarray(rng.standard_normal(f))
    check_layer(ConvPool(wt, b, act(), "avg", padding=pad), xp.asarray(rng.standard_normal((2, c, h, w))), xp, rng)


@pytest.mark.parametrize("case", CONVPOOL_CASES, ids=CONVPOOL_IDS)
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s[0].__name__}-{s[1]}")
def test_convpool_equals_conv_activation_pool(xp, rng, case, stage):
    """Forward, dx and parameter gradients as Conv2d -> activation -> pooling give them, float64."""
    c, f, h, w, k, pad = case
    act, pool = stage
    wt, b = xp.asarray(rng.standard_normal((f, c, k, k)) * 0.3), xp.asarray(rng.standard_normal(f))
    x = xp.asarray(rng.standard_normal((3, c, h, w)))
    fused = ConvPool(wt, b, act(), pool, padding=pad)
    conv = Conv2d(wt, b, padding=pad)
    chain = [conv, act(), AvgPool2d(2) if pool == "avg" else MaxPool2d(2)]
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
    layer = ConvPool(wt, b, Sigmoid(), padding=2, input_grad=False)
    out = layer.forward(xp.asarray(rng.standard_normal((2, 1, 28, 28)), dtype=dtype))
    assert out.dtype == dtype and out.shape == (2, 6, 14, 14)
    assert layer.backward(xp.ones_like(out)) is None
    assert layer.weight.grad.dtype == dtype and layer.bias.grad.dtype == dtype


def test_convpool_reuses_its_scratch_arrays_safely(xp, rng):
    """Outputs and gradients do not alias the arrays the layer keeps: a later call, of another batch size
    too, leaves earlier results unchanged, and every call matches a fresh layer."""
    wt, b = xp.asarray(rng.standard_normal((4, 2, 5, 5))), xp.asarray(rng.standard_normal(4))
    layer = ConvPool(wt, b, Sigmoid(), padding=2)
    results = []
    for n in (3, 5, 3):
        x = xp.asarray(rng.standard_normal((n, 2, 12, 12)))
        out = layer.forward(x)
        upstream = xp.asarray(rng.standard_normal(out.shape))
        dx = layer.backward(upstream)
        fresh = ConvPool(wt, b, Sigmoid(), padding=2)
        np.testing.assert_array_equal(to_numpy(out), to_numpy(fresh.forward(x)))
        np.testing.assert_array_equal(to_numpy(dx), to_numpy(fresh.backward(upstream)))
        np.testing.assert_array_equal(to_numpy(layer.weight.grad), to_numpy(fresh.weight.grad))
        results.append((out, out.copy(), dx, dx.copy(), layer.weight.grad, layer.weight.grad.copy()))
    for kept in results:
        for now, then in zip(kept[::2], kept[1::2], strict=True):
            np.testing.assert_array_equal(to_numpy(now), to_numpy(then))


def test_convpool_refuses_even_kernels(xp):
    with pytest.raises(ValueError, match="odd kernel"):
        ConvPool(xp.zeros((2, 1, 4, 4)), xp.zeros(2), Sigmoid())


def test_linear_gradients(xp, rng):
    layer = Linear(xp.asarray(rng.standard_normal((7, 5))), xp.asarray(rng.standard_normal(7)))
    check_layer(layer, xp.asarray(rng.standard_normal((4, 5))), xp, rng)


def test_linear_gives_a_batch_last_input_a_batch_last_gradient(xp, rng):
    layer = Linear(xp.asarray(rng.standard_normal((7, 5))), xp.asarray(rng.standard_normal(7)))
    memory = xp.asarray(rng.standard_normal((5, 4)))  # (in, N): the input is its transpose, as F5 gets it
    upstream = xp.asarray(rng.standard_normal((4, 7)))
    layer.forward(memory.T)
    dx = layer.backward(upstream)
    assert dx.shape == (4, 5) and dx.T.flags.c_contiguous
    numeric = numerical_grad(lambda: (layer.forward(memory.T) * upstream).sum(), memory)
    assert_grad_close(dx.T, numeric, "Linear batch-last input")


def test_flatten_gradients(xp, rng):
    check_layer(Flatten(), xp.asarray(rng.standard_normal((2, 3, 4, 5))), xp, rng)


def test_softmax_cross_entropy_value_and_gradient(xp, rng):
    logits = rng.standard_normal((6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    ce = SoftmaxCrossEntropy()
    x = xp.asarray(logits)
    loss = float(ce.forward(x, xp.asarray(labels)))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(6), labels]).mean(), rel=1e-12)
    d = ce.backward()
    assert_grad_close(d, numerical_grad(lambda: ce.forward(x, xp.asarray(labels)), x), "softmax cross-entropy")


def test_softmax_cross_entropy_is_stable_for_huge_logits(xp):
    logits = xp.asarray([[1000.0, 0.0], [0.0, -1000.0]])
    loss = float(SoftmaxCrossEntropy().forward(logits, xp.asarray([1, 0])))
    assert loss == pytest.approx(500.0)
