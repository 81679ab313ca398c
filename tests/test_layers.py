"""Every layer: float64 gradient checks with a random upstream gradient, forward against naive loops."""

import numpy as np
import pytest

from lenet.backend import to_numpy
from lenet.gradcheck import GradientCheckError, assert_grad_close, check_layer, numerical_grad
from lenet.layers import (
    AvgPool2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
)


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
    check_layer(layer, xp.asarray(rng.standard_normal((2, c, h, w))), rng)


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
    check_layer(layer, x, rng, check_input=False)


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
    check_layer(layer_cls(), xp.asarray(rng.standard_normal((3, 2, 4, 5)) * 3), rng)


def test_relu_gradient_away_from_the_kink(xp, rng):
    x = rng.standard_normal((3, 40))
    x[np.abs(x) < 0.05] = 0.5  # keep every entry far from 0 compared with the finite-difference step
    check_layer(ReLU(), xp.asarray(x), rng)


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
    check_layer(layer, xp.asarray(x), rng)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool_gradients_and_forward_away_from_ties(xp, rng, case):
    k, s, h, w = case
    layer = MaxPool2d(k, s)
    # A permutation of well-spaced values: no ties, and no two entries closer than the finite-difference step.
    x = rng.permutation(2 * 3 * h * w).reshape(2, 3, h, w) * 0.01
    np.testing.assert_array_equal(to_numpy(layer.forward(xp.asarray(x))), naive_pool(x, k, s or k, np.max))
    check_layer(layer, xp.asarray(x), rng)


def test_maxpool_gives_a_tied_window_gradient_once(xp):
    layer = MaxPool2d(2)
    out = layer.forward(xp.zeros((1, 1, 2, 2)))  # all four tie: the gradient goes to the first, as in PyTorch
    dx = to_numpy(layer.backward(xp.ones_like(out)))
    np.testing.assert_array_equal(dx, [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_linear_gradients(xp, rng):
    layer = Linear(xp.asarray(rng.standard_normal((7, 5))), xp.asarray(rng.standard_normal(7)))
    check_layer(layer, xp.asarray(rng.standard_normal((4, 5))), rng)


def test_flatten_gradients(xp, rng):
    check_layer(Flatten(), xp.asarray(rng.standard_normal((2, 3, 4, 5))), rng)


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


def test_check_layer_catches_a_scrambled_backward(rng):
    """The checker itself: a backward with its gradient's rows swapped (right sums, wrong places) must fail."""

    class Scrambled(Linear):
        def backward(self, dout):
            return super().backward(dout)[::-1]

    layer = Scrambled(rng.standard_normal((3, 4)), rng.standard_normal(3))
    with pytest.raises(GradientCheckError, match="Scrambled input: relative error"):
        check_layer(layer, rng.standard_normal((5, 4)), rng)
    with pytest.raises(TypeError, match="float64"):
        check_layer(Linear(np.ones((3, 4), np.float32), np.zeros(3, np.float32)), np.ones((2, 4), np.float32))
