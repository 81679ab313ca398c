"""LeNet5 as a whole: gradient check of the loss, shapes, state dicts, bad input, training sanity."""

import numpy as np
import pytest

from lenet import LeNet5, LenetError
from lenet.backend import get_backend, to_numpy
from lenet.gradcheck import assert_grad_close, numerical_grad
from lenet.layers import SoftmaxCrossEntropy
from lenet.optim import Adam

ARCHS = [("sigmoid", "avg"), ("tanh", "avg"), ("relu", "max"), ("sigmoid", "max")]


def images_and_labels(rng, n, pool, xp):
    """n float64 images and labels for a gradient check; for max pooling distinct, well-spaced pixels, which keep
    it away from ties (its kinks)."""
    if pool == "max":
        x = rng.permutation(n * 784).reshape(n, 1, 28, 28) / (n * 784)
    else:
        x = rng.random((n, 1, 28, 28))
    return xp.asarray(x), xp.asarray(rng.integers(0, 10, n))


def test_summary_counts_61706_parameters():
    model = LeNet5()
    text = model.summary()
    assert model.num_params() == 61_706
    assert "Total params: 61,706" in text
    assert "[-1, 6, 28, 28]" in text and "[-1, 16, 5, 5]" in text and "[-1, 10]" in text
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        "c1.weight": (6, 1, 5, 5), "c1.bias": (6,), "c3.weight": (16, 6, 5, 5), "c3.bias": (16,),
        "f5.weight": (120, 400), "f5.bias": (120,), "f6.weight": (84, 120), "f6.bias": (84,),
        "f7.weight": (10, 84), "f7.bias": (10,),
    }  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_forward_backward_shapes_and_dtype(xp, dtype, arch):
    model = LeNet5(*arch, backend="numpy" if xp is np else "cupy", dtype=dtype)
    x = xp.asarray(np.random.default_rng(0).random((5, 1, 28, 28)), dtype=dtype)
    logits = model.forward(x)
    assert logits.shape == (5, 10) and logits.dtype == dtype
    ce = SoftmaxCrossEntropy()
    ce.forward(logits, xp.arange(5))
    assert model.backward(ce.backward()) is None  # the images get no gradient
    for name, p in model.named_parameters():
        assert p.grad.shape == p.shape and p.grad.dtype == dtype, name


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_whole_model_loss_gradient(xp, arch):
    """Central differences on 12 random entries of every parameter, random labels, float64."""
    rng = np.random.default_rng(7)
    model = LeNet5(*arch, backend="numpy" if xp is np else "cupy", dtype="float64", seed=3)
    x, y = images_and_labels(rng, 3, arch[1], xp)
    ce = SoftmaxCrossEntropy()
    ce.forward(model.forward(x), y)
    model.backward(ce.backward())
    for name, p in model.named_parameters():
        picks = rng.choice(p.data.size, size=min(12, p.data.size), replace=False)
        numeric = numerical_grad(lambda: ce.forward(model.forward(x), y), p.data, indices=picks)
        assert_grad_close(p.grad, numeric, f"LeNet5{arch} {name}")


def test_state_dict_round_trip_gives_same_logits(xp):
    backend = "numpy" if xp is np else "cupy"
    a, b = LeNet5(backend=backend, seed=1), LeNet5(backend=backend, seed=2)
    x = xp.asarray(np.random.default_rng(0).random((4, 1, 28, 28)), dtype="float32")
    assert not np.allclose(to_numpy(a.forward(x)), to_numpy(b.forward(x)))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(to_numpy(a.forward(x)), to_numpy(b.forward(x)))


def test_state_dict_is_a_copy():
    model = LeNet5()
    state = model.state_dict()
    state["c1.weight"][...] = 0
    assert np.abs(model.state_dict()["c1.weight"]).sum() > 0


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s.pop("f6.bias"), "missing keys: f6.bias"),
        (lambda s: s.update({"f8.weight": np.zeros(3)}), "unexpected keys: f8.weight"),
        (lambda s: s.update({"c3.weight": np.zeros((16, 6, 3, 3))}), "c3.weight has shape (16, 6, 3, 3)"),
    ],
)
def test_bad_state_dict_is_refused_by_name(change, message):
    model = LeNet5()
    before = model.state_dict()
    state = model.state_dict()
    change(state)
    with pytest.raises(LenetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():  # nothing half-loaded
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize(
    "x,message",
    [
        (np.zeros((2, 28, 28), np.float32), r"shape \(N, 1, 28, 28\)"),
        (np.zeros((2, 3, 28, 28), np.float32), r"got \(2, 3, 28, 28\)"),
        (np.zeros((2, 1, 32, 32), np.float32), r"got \(2, 1, 32, 32\)"),
        (np.zeros((2, 1, 28, 28), np.float64), "dtype float64 does not match the model's float32"),
        (np.zeros((2, 1, 28, 28), np.uint8), "dtype uint8"),
    ],
)
def test_bad_input_is_refused(x, message):
    with pytest.raises(LenetError, match=message):
        LeNet5().forward(x)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"backend": "jax"}, "unknown backend 'jax'"),
        ({"activation": "gelu"}, "unknown activation 'gelu'"),
        ({"pool": "min"}, "unknown pooling 'min'"),
        ({"dtype": "float16"}, "unsupported dtype"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(LenetError, match=message):
        LeNet5(**kwargs)


def test_cupy_request_without_gpu_says_what_is_missing():
    from lenet.backend import cupy_available

    if cupy_available():
        pytest.skip("a GPU is present here")
    with pytest.raises(LenetError, match="--backend cupy is not available: CuPy"):
        get_backend("cupy")


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = LeNet5(seed=5).state_dict(), LeNet5(seed=5).state_dict(), LeNet5(seed=6).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["f5.weight"], c["f5.weight"])


def test_memorizes_64_examples(xp):
    """A sanity check of the whole training path: 64 fixed examples, 100% training accuracy."""
    rng = np.random.default_rng(0)
    try:
        from lenet.data import load_dataset

        images, labels, _ = load_dataset("fashion-mnist", "test", download=False)
        idx = rng.choice(len(labels), 64, replace=False)
        x, y = images[idx], labels[idx]
    except (ImportError, LenetError) as e:
        pytest.skip(f"real Fashion-MNIST not available: {e}")
    model = LeNet5(backend="numpy" if xp is np else "cupy", seed=0)
    opt = Adam(model.parameters(), lr=3e-3)
    ce = SoftmaxCrossEntropy()
    x, y = xp.asarray(x), xp.asarray(y)
    for _ in range(300):
        ce.forward(model.forward(x), y)
        model.backward(ce.backward())
        opt.step()
    accuracy = float((model.forward(x).argmax(axis=1) == y).mean())
    assert accuracy == 1.0


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_input_gradient_when_asked(xp, arch):
    """input_grad=True: backward returns dL/dx, checked by central differences on 20 pixels (float64)."""
    rng = np.random.default_rng(11)
    model = LeNet5(*arch, backend="numpy" if xp is np else "cupy", dtype="float64", seed=2, input_grad=True)
    x, y = images_and_labels(rng, 2, arch[1], xp)
    ce = SoftmaxCrossEntropy()
    ce.forward(model.forward(x), y)
    dx = model.backward(ce.backward())
    assert dx.shape == x.shape and dx.dtype == x.dtype
    picks = rng.choice(x.size, size=20, replace=False)
    # The pixels' gradients are small (about 1e-5): a wider step keeps the differences above rounding noise.
    numeric = numerical_grad(lambda: ce.forward(model.forward(x), y), x, eps=1e-4, indices=picks)
    assert_grad_close(dx, numeric, f"LeNet5{arch} dL/dx")


def test_the_model_is_the_textbook_stack_and_loads_nothing_of_the_speed_wing():
    """LeNet5 is layers.py's layers in a list; making one imports nothing of lenet.fast, which wraps it from outside."""
    import subprocess
    import sys

    kinds = [type(layer).__name__ for _, layer in LeNet5("relu", "max").layers]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                     "Linear", "ReLU", "Linear", "ReLU", "Linear"]  # fmt: skip
    code = "import sys; from lenet import LeNet5; LeNet5(); print([m for m in sys.modules if 'lenet.fast' in m])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gradcheck_command_checks_every_layer_and_passes(capsys):
    """python -m lenet.gradcheck: the same checker, every layer of layers.py and the LeNet-5 loss."""
    from lenet import gradcheck

    assert gradcheck.main() == 0
    out = capsys.readouterr().out
    for name in ("Conv2d", "AvgPool2d", "MaxPool2d", "Sigmoid", "Tanh", "ReLU", "Linear", "Flatten",
                 "SoftmaxCrossEntropy", "LeNet5 sigmoid/avg loss", "LeNet5 relu/max loss"):  # fmt: skip
        assert name in out, name
    assert "all passed" in out.splitlines()[-1] and "FAILED" not in out
