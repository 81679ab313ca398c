"""Gradient checking: does a hand-written backward pass agree with the slope of its own forward pass?

For a layer y = f(x; params) and a random upstream gradient G (of y's shape), the scalar L = sum(f(x) * G) has
dL/dx = backward(G) and dL/dparam = param.grad. Central differences estimate the same numbers from forward alone:

    dL/dx[i] ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)        (error O(eps^2); eps = 1e-6 in float64)

The upstream gradient is random, not all ones: with ones, a backward that mixes up positions (a scrambled reshape,
a wrong transpose) can still give the right sums. Everything runs in float64, where LeNet's smooth layers agree to
a relative error far below 1e-6; max pooling and ReLU have kinks, so check them on inputs away from ties and zeros.

    from lenet.gradcheck import check_layer
    errors = check_layer(MyLayer(...), x)   # x float64; {"input": 3e-10, "weight": 2e-10, ...}, or GradientCheckError

`python -m lenet.gradcheck` checks every layer of layers.py and the whole LeNet-5 loss and prints a table (the speed
wing's fused stage is held to the same checker in tests/test_fast.py).
"""

import sys

import numpy as np

from .backend import get_array_module, to_numpy

TOLERANCE = 1e-6


class GradientCheckError(AssertionError):
    """A backward pass disagrees with central differences; the message names the worst entries."""


def numerical_grad(f, x, eps=1e-6, indices=None):
    """Central-difference gradient of the scalar f() with respect to the array x (changed in place, then restored).

    With `indices` (flat positions), only those entries are computed; the rest are NaN. x must be contiguous.
    """
    grad = np.full(x.shape, np.nan)
    flat = x.reshape(-1)  # a view of x's memory, since x is contiguous
    if not (flat.base is x or flat.base is x.base or flat is x):
        raise ValueError("numerical_grad needs a contiguous array")
    for i in range(flat.size) if indices is None else indices:
        old = flat[i].item()
        flat[i] = old + eps
        plus = float(f())
        flat[i] = old - eps
        minus = float(f())
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic, numeric):
    """||a - n|| / (||a|| + ||n||) over the entries of `numeric` that are not NaN."""
    a, n = to_numpy(analytic).astype(np.float64), np.asarray(numeric)
    mask = ~np.isnan(n)
    scale = np.linalg.norm(a[mask]) + np.linalg.norm(n[mask])
    return float(np.linalg.norm((a - n)[mask]) / max(scale, 1e-30))


def assert_grad_close(analytic, numeric, name, tol=TOLERANCE):
    """Raise GradientCheckError unless relative_error(analytic, numeric) < tol; returns the error."""
    a, n = to_numpy(analytic).astype(np.float64), np.asarray(numeric)
    if a.shape != n.shape:
        raise GradientCheckError(f"{name}: gradient shape {a.shape}, expected {n.shape}")
    rel = relative_error(a, n)
    if not rel < tol:
        gap = np.where(np.isnan(n), -1.0, np.abs(a - n)).ravel()
        worst = np.argsort(gap)[::-1][:5]
        lines = [
            f"  at {tuple(int(i) for i in np.unravel_index(k, a.shape))}: "
            f"analytic {a.ravel()[k]:.10g}, numeric {n.ravel()[k]:.10g}"
            for k in worst
        ]
        raise GradientCheckError(f"{name}: relative error {rel:.3g} >= {tol} (shape {a.shape})\n" + "\n".join(lines))
    return rel


def check_layer(layer, x, rng=None, check_input=True, tol=TOLERANCE, eps=1e-6, name=None):
    """Check layer.backward on input x (float64) and on every parameter in layer.params, for a random upstream
    gradient. Returns {"input": error, param name: error, ...}; raises GradientCheckError naming the worst entries."""
    if x.dtype != np.float64:
        raise TypeError(f"check_layer needs a float64 input (float32 differences drown in rounding), got {x.dtype}")
    xp = get_array_module(x)
    rng = np.random.default_rng(0) if rng is None else rng
    name = name or type(layer).__name__
    out = layer.forward(x)
    upstream = xp.asarray(rng.standard_normal(out.shape))
    dx = layer.backward(upstream)
    grads = {p: param.grad.copy() for p, param in layer.params.items()}

    def loss():
        return (layer.forward(x) * upstream).sum()

    errors = {}
    if check_input:
        if dx is None or dx.shape != x.shape or dx.dtype != x.dtype:
            got = None if dx is None else (dx.shape, dx.dtype)
            raise GradientCheckError(f"{name} input: backward returned {got}, expected {(x.shape, x.dtype)}")
        errors["input"] = assert_grad_close(dx, numerical_grad(loss, x, eps), f"{name} input", tol)
    for p, param in layer.params.items():
        errors[p] = assert_grad_close(grads[p], numerical_grad(loss, param.data, eps), f"{name} {p}", tol)
    return errors


def check_loss(model, x, y, rng=None, picks=12, tol=TOLERANCE, name="LeNet5"):
    """Check the whole model: d(softmax cross-entropy)/d(parameter) on `picks` random entries of every parameter."""
    from .layers import SoftmaxCrossEntropy

    rng = np.random.default_rng(0) if rng is None else rng
    ce = SoftmaxCrossEntropy()
    ce.forward(model.forward(x), y)
    model.backward(ce.backward())
    errors = {}
    for p, param in model.named_parameters():
        chosen = rng.choice(param.data.size, size=min(picks, param.data.size), replace=False)
        numeric = numerical_grad(lambda: ce.forward(model.forward(x), y), param.data, indices=chosen)
        errors[p] = assert_grad_close(param.grad, numeric, f"{name} {p}", tol)
    return errors


# -- python -m lenet.gradcheck ---------------------------------------------------------------------------------
def _cases(rng):
    """(name, layer, x, check_input) for every layer of lenet, on small float64 inputs."""
    from .layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sigmoid, Tanh

    def normal(*shape, scale=1.0):
        return rng.standard_normal(shape) * scale

    def distinct(*shape):  # well-spaced values: max pooling away from ties
        return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01

    away_from_zero = normal(3, 40)
    away_from_zero[np.abs(away_from_zero) < 0.05] = 0.5  # ReLU away from its kink
    yield "Conv2d 5x5 pad 2", Conv2d(normal(3, 1, 5, 5), normal(3), padding=2), normal(2, 1, 8, 8), True
    yield "Conv2d 3x3 stride 2", Conv2d(normal(4, 2, 3, 3), normal(4), stride=2, padding=1), normal(2, 2, 9, 8), True
    yield "Conv2d 6->16 (C3)", Conv2d(normal(16, 6, 5, 5, scale=0.3), normal(16)), normal(2, 6, 9, 9), True
    yield "AvgPool2d 2x2", AvgPool2d(2), normal(2, 3, 8, 8), True
    yield "AvgPool2d 3x3 stride 2", AvgPool2d(3, 2), normal(2, 3, 9, 7), True
    yield "MaxPool2d 2x2", MaxPool2d(2), distinct(2, 3, 8, 8), True
    yield "MaxPool2d 3x3 stride 2", MaxPool2d(3, 2), distinct(2, 3, 9, 7), True
    yield "Sigmoid", Sigmoid(), normal(3, 2, 4, 5, scale=3), True
    yield "Tanh", Tanh(), normal(3, 2, 4, 5, scale=3), True
    yield "ReLU", ReLU(), away_from_zero, True
    yield "Linear", Linear(normal(7, 5), normal(7)), normal(4, 5), True
    yield "Flatten", Flatten(), normal(2, 3, 4, 5), True


def main(argv=None):
    """Print the relative error of every gradient of every layer and of the LeNet-5 loss; exit 1 if any fails."""
    from .layers import SoftmaxCrossEntropy
    from .model import LeNet5

    rng = np.random.default_rng(0)
    rows, failed = [], []

    def record(name, run):
        try:
            rows.extend((name, p, e, e < TOLERANCE) for p, e in run().items())
        except GradientCheckError as e:
            failed.append(str(e))
            rows.append((name, "", float("nan"), False))

    for name, layer, x, check_input in _cases(rng):
        record(name, lambda layer=layer, x=x, c=check_input: check_layer(layer, x, rng, check_input=c))
    labels = np.arange(10) % 10
    logits = np.random.default_rng(1).standard_normal((10, 10))
    ce = SoftmaxCrossEntropy()
    record("SoftmaxCrossEntropy", lambda: _check_softmax(ce, logits, labels))
    for act, pool in (("sigmoid", "avg"), ("tanh", "avg"), ("relu", "max")):
        model = LeNet5(act, pool, dtype="float64", seed=3)
        images = rng.permutation(3 * 784).reshape(3, 1, 28, 28) / (3 * 784)  # distinct pixels: no pooling ties
        record(f"LeNet5 {act}/{pool} loss", lambda m=model, x=images: check_loss(m, x, labels[:3], rng))
    width = max(len(r[0]) for r in rows)
    print(f"{'layer':<{width}}  {'gradient':<10} {'relative error':>14}")
    for name, p, e, ok in rows:
        print(f"{name:<{width}}  {p:<10} {e:>14.2e}{'' if ok else '   FAILED'}")
    for message in failed:
        print(message, file=sys.stderr)
    worst = max(r[2] for r in rows if r[2] == r[2]) if rows else float("nan")
    print(
        f"{len(rows)} gradients checked, worst relative error {worst:.2e} (tolerance {TOLERANCE:g}): "
        f"{'all passed' if not failed else f'{len(failed)} FAILED'}"
    )
    return 1 if failed else 0


def _check_softmax(ce, logits, labels):
    ce.forward(logits, labels)
    return {
        "logits": assert_grad_close(
            ce.backward(), numerical_grad(lambda: ce.forward(logits, labels), logits), "SoftmaxCrossEntropy"
        )
    }


if __name__ == "__main__":
    sys.exit(main())
