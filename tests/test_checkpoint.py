import json
import os
import sys
import zipfile

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import lenet
from lenet.checkpoint import META_KEY, load_checkpoint, model_from_checkpoint, save_checkpoint
from lenet.errors import LenetError
from lenet.files import atomic_write
from lenet.layers import SoftmaxCrossEntropy
from lenet.model import LeNet5
from lenet.optim import SGD, Adam

# PyTorch's state dict of the same model: nn.Conv2d / nn.Linear attributes c1, c3, f5, f6, f7.
TORCH_SHAPES = {
    "c1.weight": (6, 1, 5, 5),
    "c1.bias": (6,),
    "c3.weight": (16, 6, 5, 5),
    "c3.bias": (16,),
    "f5.weight": (120, 400),
    "f5.bias": (120,),
    "f6.weight": (84, 120),
    "f6.bias": (84,),
    "f7.weight": (10, 84),
    "f7.bias": (10,),
}


@pytest.fixture(autouse=True)
def one_blas_thread():
    """On a busy machine OpenBLAS's spinning threads made these small steps 100x slower; results are the same."""
    with threadpool_limits(1, user_api="blas"):
        yield


def random_model(activation="sigmoid", pool="avg", dtype="float32", seed=7):
    """A model whose every weight, biases included, differs from a fresh LeNet5's."""
    model = LeNet5(activation, pool, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data[...] += rng.normal(0, 0.1, size=p.data.shape).astype(p.data.dtype)
    return model


def images(n=8, dtype="float32", seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28)).astype(dtype)


def leftovers(folder, keep):
    """Files in `folder` other than `keep` (an interrupted atomic write must leave none)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ---------------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    "activation, pool, dtype", [("sigmoid", "avg", "float32"), ("relu", "max", "float64"), ("tanh", "avg", "float32")]
)
def test_round_trip_gives_the_same_logits_bit_for_bit(tmp_path, activation, pool, dtype):
    model = random_model(activation, pool, dtype)
    path = tmp_path / "model.npz"
    meta = {"epoch": 3, "val_acc": 0.8125, "dataset": "fashion-mnist", "class_names": ["a", "b"]}
    save_checkpoint(path, model, meta)

    loaded, loaded_meta = model_from_checkpoint(path)
    assert (loaded.activation, loaded.pool, loaded.dtype) == (activation, pool, np.dtype(dtype))
    x = images(dtype=dtype)
    expected, got = model.forward(x), loaded.forward(x)
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected), f"max |difference| {np.abs(got - expected).max()}"
    for key, value in meta.items():
        assert loaded_meta[key] == value
    assert loaded_meta["lenet_version"] == lenet.__version__
    assert loaded_meta["architecture"] == {"activation": activation, "pool": pool}
    assert loaded_meta["dtype"] == dtype


def test_a_fresh_model_differs_so_the_round_trip_test_means_something(tmp_path):
    x = images()
    assert not np.array_equal(LeNet5().forward(x), random_model().forward(x))


def test_file_is_a_plain_npz_with_pytorch_names(tmp_path):
    model = random_model()
    path = tmp_path / "model.npz"
    save_checkpoint(path, model, {"epoch": 1})
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop(META_KEY)))
    assert {k: v.shape for k, v in arrays.items()} == TORCH_SHAPES
    for name, p in model.named_parameters():
        assert arrays[name].dtype == np.float32
        assert np.array_equal(arrays[name], p.data), name
    assert meta["epoch"] == 1


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.01)],
    ids=["sgd-momentum", "adam"],
)
def test_optimizer_state_round_trip_continues_the_same_steps(tmp_path, make_optimizer):
    """Save after two steps, load into a new model and optimizer: a third step matches the original's."""
    x, y = images(16, seed=1), np.arange(16) % 10
    loss_fn = SoftmaxCrossEntropy()

    def step(model, optimizer):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()

    model = random_model()
    optimizer = make_optimizer(model.parameters())
    step(model, optimizer)
    step(model, optimizer)
    path = tmp_path / "last.npz"
    save_checkpoint(path, model, {"epoch": 2}, optimizer.state_dict())

    state, meta, optimizer_state = load_checkpoint(path)
    assert meta["epoch"] == 2
    assert set(state) == set(TORCH_SHAPES)  # optimizer buffers are kept apart from the weights
    assert set(optimizer_state) == set(optimizer.state_dict())
    assert int(optimizer_state["steps"]) == 2
    twin = LeNet5()
    twin.load_state_dict(state)
    twin_optimizer = make_optimizer(twin.parameters())
    twin_optimizer.load_state_dict(optimizer_state)

    step(model, optimizer)
    step(twin, twin_optimizer)
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert np.array_equal(p.data, q.data), name


# ---------------------------------------------------------------------------------------------------------
# Refusals: one clear LenetError each


def write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def lenet_arrays(change=None):
    """The arrays of a lenet checkpoint, with one entry changed (None: removed) by `change`."""
    arrays = dict(random_model().state_dict())
    arrays[META_KEY] = np.array(json.dumps({"architecture": {"activation": "sigmoid", "pool": "avg"}}))
    for key, value in (change or {}).items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return arrays


def make_zip_of_text(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "not an array")


BAD_FILES = {
    "missing": (lambda p: None, "no such file"),
    "directory": (lambda p: p.mkdir(), "not a file"),
    "csv": (lambda p: p.write_text("epoch,train_loss\n1,0.5\n"), "not an .npz file"),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not an .npz file"),
    "empty": (lambda p: p.write_bytes(b""), "not an .npz file"),
    "zip of text": (make_zip_of_text, "not a lenet checkpoint"),
    "no metadata": (lambda p: write_npz(p, random_model().state_dict()), "no lenet_meta"),
    "metadata not JSON": (lambda p: write_npz(p, lenet_arrays({META_KEY: np.array("{oops")})), "not valid JSON"),
    "metadata not an object": (lambda p: write_npz(p, lenet_arrays({META_KEY: np.array("[1, 2]")})), "not an object"),
    "strings for weights": (
        lambda p: write_npz(p, lenet_arrays({"c3.bias": np.array(["x"] * 16)})),
        "not numbers: c3.bias",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_refuses_what_is_not_a_lenet_checkpoint(tmp_path, case):
    make, message = BAD_FILES[case]
    path = tmp_path / "model.npz"
    make(path)
    with pytest.raises(LenetError, match=message) as info:
        model_from_checkpoint(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"c1.weight": np.zeros((6, 1, 3, 3), np.float32)},
            r"c1\.weight has shape \(6, 1, 3, 3\), expected \(6, 1, 5, 5\)",
        ),
        ({"f7.bias": None}, r"missing keys: f7\.bias"),
        ({"f8.weight": np.zeros(3, np.float32)}, r"unexpected keys: f8\.weight"),
        ({META_KEY: np.array(json.dumps({"epoch": 1}))}, "no architecture"),
        ({META_KEY: np.array(json.dumps({"architecture": {"activation": "swish", "pool": "avg"}}))}, "swish"),
        ({META_KEY: np.array(json.dumps({"architecture": {"activation": "relu", "depth": 3}}))}, "depth"),
    ],
)
def test_refuses_a_lenet_checkpoint_that_does_not_fit_naming_what(tmp_path, change, message):
    path = tmp_path / "model.npz"
    write_npz(path, lenet_arrays(change))
    with pytest.raises(LenetError, match=message):
        model_from_checkpoint(path)


def test_the_unchanged_arrays_of_the_refusal_tests_do_load(tmp_path):
    path = tmp_path / "model.npz"
    write_npz(path, lenet_arrays())
    model, _ = model_from_checkpoint(path)
    assert np.array_equal(model.forward(images()), random_model().forward(images()))


# ---------------------------------------------------------------------------------------------------------
# Atomic writes


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best_model.npz"
    old = random_model(seed=1)
    save_checkpoint(path, old, {"epoch": 1})

    def savez_then_ctrl_c(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", savez_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, random_model(seed=2), {"epoch": 2})
    monkeypatch.undo()

    model, meta = model_from_checkpoint(path)
    assert meta["epoch"] == 1
    assert np.array_equal(model.forward(images()), old.forward(images()))
    assert leftovers(tmp_path, {path.name}) == []


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_write(path, "w") as f:
        f.write("new, but only half")
        raise RuntimeError("disk on fire")
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path, {path.name}) == []


def test_atomic_write_replaces_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "history.csv"
    for text in ("first\n", "second\n"):
        with atomic_write(path, "w") as f:
            f.write(text)
        assert path.read_text() == text
    assert leftovers(path.parent, {path.name}) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "model.npz", random_model(), {})
    finally:
        os.umask(old)
    assert (tmp_path / "model.npz").stat().st_mode & 0o777 == mode
