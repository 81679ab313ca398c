"""Weights the PyTorch way: load_weights, the round trip with torch, and checkpoints in the safetensors format."""

import importlib.util
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import random_model, torch_lenet

import lenet
from lenet import safetensors_io
from lenet.checkpoint import META_KEY, load_checkpoint, model_from_checkpoint, save_checkpoint
from lenet.errors import LenetError
from lenet.layers import SoftmaxCrossEntropy
from lenet.model import LeNet5
from lenet.optim import Adam

pytestmark = pytest.mark.usefixtures("one_blas_thread")

CHECKPOINTS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "checkpoints.md"
WEIGHT_NAMES = [f"{layer}.{p}" for layer in ("c1", "c3", "f5", "f6", "f7") for p in ("weight", "bias")]

torch_or_skip = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="PyTorch is needed for the round trip (pip install torch)"
)
needs_safetensors = pytest.mark.skipif(
    importlib.util.find_spec("safetensors") is None, reason="pip install 'lenet[safetensors]' for these tests"
)


def images(n=8, seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def trained_optimizer(model):
    """An Adam optimizer with buffers, as the last checkpoint of a run stores it."""
    optimizer = Adam(model.parameters(), lr=0.01)
    backprop(model)
    optimizer.step()
    return optimizer


def backprop(model):
    """Fill the gradients of every parameter from one small batch."""
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(images(4).astype(model.dtype)), np.arange(4))
    model.backward(loss.backward())


# ---------------------------------------------------------------------------------------------------------
# load_weights: the plain state dict


@needs_safetensors
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_load_weights_is_the_plain_state_dict(tmp_path, suffix):
    model = random_model()
    path = tmp_path / f"last{suffix}"
    save_checkpoint(path, model, {"epoch": 2}, trained_optimizer(model).state_dict())
    weights = lenet.load_weights(path)
    assert set(weights) == set(WEIGHT_NAMES)  # no metadata, no optimizer buffers
    for name, value in model.state_dict().items():
        assert isinstance(weights[name], np.ndarray) and weights[name].dtype == np.float32
        assert np.array_equal(weights[name], value), name
    twin = LeNet5()
    twin.load_state_dict(weights)
    assert np.array_equal(twin.forward(images()), model.forward(images()))


def test_the_npz_file_itself_is_not_a_state_dict(tmp_path):
    """What the checkpoint docstring used to claim: np.load(path) holds more than the weights."""
    path = tmp_path / "best_model.npz"
    save_checkpoint(path, random_model(), {"epoch": 1})
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == set(WEIGHT_NAMES) | {META_KEY}
    assert set(lenet.load_weights(path)) == set(WEIGHT_NAMES)


# ---------------------------------------------------------------------------------------------------------
# The round trip with PyTorch


def assert_logits_close(ours, theirs):
    """Equal to float32 rounding: both sum the same products in different orders."""
    scale = np.abs(ours).max()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * scale)


@torch_or_skip
@pytest.mark.parametrize("activation, pool", [("sigmoid", "avg"), ("relu", "max")])
def test_lenet_to_torch(tmp_path, activation, pool):
    import torch

    model = random_model(activation, pool)
    path = tmp_path / "best_model.npz"
    save_checkpoint(path, model, {"epoch": 1})

    net = torch_lenet(activation, pool)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in lenet.load_weights(path).items()})  # strict

    x = images()
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    ours = model.forward(x)
    assert_logits_close(ours, theirs)
    # A fresh torch net (its own random weights) is far off: the check above means something.
    with torch.no_grad():
        fresh = torch_lenet(activation, pool)(torch.from_numpy(x)).numpy()
    assert np.abs(fresh - ours).max() > 100 * 1e-5 * np.abs(ours).max()


@torch_or_skip
@pytest.mark.parametrize("activation, pool", [("sigmoid", "avg"), ("relu", "max")])
def test_torch_to_lenet(activation, pool):
    import torch

    torch.manual_seed(0)
    net = torch_lenet(activation, pool)
    model = LeNet5(activation, pool)
    model.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})

    for name, value in net.state_dict().items():  # the same bits, not just close
        assert np.array_equal(model.state_dict()[name], value.numpy()), name
    x = images(seed=1)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    assert_logits_close(model.forward(x), theirs)


def round_trip_code():
    """The Python block of docs/checkpoints.md's section "To PyTorch and back" that uses load_weights."""
    text = CHECKPOINTS_PAGE.read_text(encoding="utf-8")
    section = text.split("## To PyTorch and back", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "load_weights" in b]
    assert len(blocks) == 1, "the section should have one Python block with the round trip"
    return blocks[0]


@torch_or_skip
def test_the_docs_round_trip_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = random_model()
    save_checkpoint(tmp_path / "runs" / "fashion-mnist" / "best_model.npz", model, {"epoch": 1})
    namespace = {}
    exec(compile(round_trip_code(), str(CHECKPOINTS_PAGE), "exec"), namespace)
    # The block's own names: the torch net from lenet's weights, and the lenet model back from the torch net.
    net, back = namespace["net"], namespace["model"]
    import torch

    x = images()
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    assert_logits_close(model.forward(x), theirs)
    assert np.array_equal(back.forward(x), model.forward(x))


# ---------------------------------------------------------------------------------------------------------
# safetensors checkpoints


@needs_safetensors
@pytest.mark.parametrize("activation, pool, dtype", [("sigmoid", "avg", "float32"), ("relu", "max", "float64")])
def test_safetensors_round_trip(tmp_path, activation, pool, dtype):
    model = random_model(activation, pool, dtype)
    optimizer = trained_optimizer(model)
    meta = {"epoch": 3, "val_acc": 0.8125, "dataset": "fashion-mnist", "history": [[1, 0.5, 0.75, 0.5, 0.7, 1.5]]}
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, meta, optimizer.state_dict())

    loaded, loaded_meta = model_from_checkpoint(path)
    assert (loaded.activation, loaded.pool, loaded.dtype) == (activation, pool, np.dtype(dtype))
    x = images().astype(dtype)
    assert np.array_equal(loaded.forward(x), model.forward(x))  # bit for bit
    assert {k: loaded_meta[k] for k in meta} == meta
    assert loaded_meta["lenet_version"] == lenet.__version__

    _, _, optimizer_state = load_checkpoint(path)
    expected = optimizer.state_dict()
    assert set(optimizer_state) == set(expected) and int(optimizer_state["steps"]) == 1
    for key, value in expected.items():
        assert np.shape(optimizer_state[key]) == np.shape(value), key  # 0-d stays 0-d
        assert np.array_equal(optimizer_state[key], value), key
    twin = Adam(loaded.parameters(), lr=1.0)
    twin.load_state_dict(optimizer_state)
    backprop(model), backprop(loaded)
    optimizer.step()
    twin.step()  # a step from the loaded state is the step the original takes
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert np.array_equal(p.data, q.data), name


@needs_safetensors
def test_safetensors_file_holds_the_metadata_in_its_header(tmp_path):
    path = tmp_path / "best_model.safetensors"
    save_checkpoint(path, random_model(), {"epoch": 4, "class_names": ["T-shirt/top", "Trouser"]})
    import safetensors

    with safetensors.safe_open(path, framework="numpy") as f:
        header_meta = f.metadata()
    assert header_meta["format"] == "pt"
    meta = json.loads(header_meta[META_KEY])
    assert meta["epoch"] == 4 and meta["class_names"] == ["T-shirt/top", "Trouser"]
    assert meta["architecture"] == {"activation": "sigmoid", "pool": "avg"}
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a zip under another name


@needs_safetensors
def test_safetensors_file_is_what_hugging_face_and_torch_load(tmp_path):
    model = random_model()
    path = tmp_path / "best_model.safetensors"
    save_checkpoint(path, model, {"epoch": 1})
    import safetensors.numpy

    plain = safetensors.numpy.load_file(path)  # the package's own reader: the plain state dict
    assert set(plain) == set(WEIGHT_NAMES)
    for name, value in model.state_dict().items():
        assert np.array_equal(plain[name], value), name
    torch = pytest.importorskip("torch", reason="PyTorch loads the file through safetensors.torch")
    from safetensors.torch import load_file

    net = torch_lenet("sigmoid", "avg")
    net.load_state_dict(load_file(path))  # strict: exactly the torch module's keys and shapes
    with torch.no_grad():
        theirs = net(torch.from_numpy(images())).numpy()
    assert_logits_close(model.forward(images()), theirs)


@needs_safetensors
@pytest.mark.parametrize(
    "path, format, message",
    [
        ("model.npz", "safetensors", "must end in .safetensors"),
        ("model.safetensors", "npz", "must not end in .safetensors"),
        ("model.npz", "onnx", "unknown checkpoint format 'onnx'; choose one of: npz, safetensors"),
    ],
)
def test_format_must_agree_with_the_extension(tmp_path, path, format, message):
    with pytest.raises(LenetError, match=re.escape(message)):
        save_checkpoint(tmp_path / path, random_model(), {}, format=format)
    assert list(tmp_path.iterdir()) == []


@needs_safetensors
def test_format_given_explicitly(tmp_path):
    save_checkpoint(tmp_path / "a.safetensors", random_model(), {}, format="safetensors")
    save_checkpoint(tmp_path / "a.ckpt", random_model(), {}, format="npz")
    assert set(lenet.load_weights(tmp_path / "a.safetensors")) == set(WEIGHT_NAMES)
    assert set(lenet.load_weights(tmp_path / "a.ckpt")) == set(WEIGHT_NAMES)


def header_file(header, data=b"", length=None):
    """A safetensors file's bytes: the header (a dict as JSON, or raw bytes) with its length, then `data`."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def lenet_file(metadata=None, tensors=None):
    """The bytes of a lenet safetensors checkpoint, with its __metadata__ and tensors replaced where given."""
    import safetensors.numpy

    state = random_model().state_dict() if tensors is None else tensors
    meta = {"format": "pt", META_KEY: json.dumps({"architecture": {"activation": "sigmoid", "pool": "avg"}})}
    return safetensors.numpy.save(state, metadata=meta if metadata is None else metadata)


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD_FILES = {
    "missing": (None, "no such file"),
    "empty": (b"", "only 0 bytes long"),
    "shorter than the length": (b"\x10\x00\x00", "only 3 bytes long"),
    "an npz under the name": (b"PK\x03\x04" + bytes(60), "its header claims"),
    "huge header length": (header_file({}, length=2**63), "claims 9,223,372,036,854,775,808 bytes, more than the"),
    "header past the end": (header_file({"a": ENTRY}, bytes(8), length=1000), "but only"),
    "header not JSON": (header_file(b"{not json"), "header is not JSON"),
    "header not UTF-8": (header_file(b'{"\xff": 1}'), "header is not JSON"),
    "deeply nested header": (header_file(b"[" * 100_000 + b"]" * 100_000), "header is not JSON"),
    "header a list": (header_file([1, 2]), "header is a JSON list"),
    "metadata not strings": (header_file({"__metadata__": {"epoch": 3}}), "__metadata__ must map names to strings"),
    "entry without offsets": (header_file({"a": {"dtype": "F32", "shape": [2]}}), "no dtype, shape and data_offsets"),
    "bfloat16": (header_file({"a": dict(ENTRY, dtype="BF16")}, bytes(8)), "element type 'BF16'"),
    "shape overflows": (
        header_file({"a": dict(ENTRY, shape=[2**32, 2**32])}, bytes(8)),
        "not a valid safetensors file",
    ),
    "offsets past the data": (
        header_file({"a": dict(ENTRY, data_offsets=[0, 8_000_000])}, bytes(8)),
        "not a valid safetensors file",
    ),
    "data cut short": (lambda: lenet_file()[:-4], "not a valid safetensors file"),
    "no lenet metadata": (lambda: lenet_file(metadata={"format": "pt"}), r"not a lenet checkpoint \(no lenet_meta"),
    "metadata not JSON": (lambda: lenet_file(metadata={META_KEY: "{oops"}), "not valid JSON"),
    "metadata not an object": (lambda: lenet_file(metadata={META_KEY: "[1, 2]"}), "not an object"),
    "weights that do not fit": (
        lambda: lenet_file(tensors={**random_model().state_dict(), "c1.bias": np.zeros(7, np.float32)}),
        r"c1\.bias has shape \(7,\), expected \(6,\)",
    ),
}


@needs_safetensors
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_refuses_what_is_not_a_lenet_safetensors_checkpoint(tmp_path, case):
    data, message = BAD_FILES[case]
    path = tmp_path / "model.safetensors"
    if data is not None:
        path.write_bytes(data() if callable(data) else data)
    with pytest.raises(LenetError, match=message) as info:
        model_from_checkpoint(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 1000


@needs_safetensors
def test_a_folder_is_refused(tmp_path):
    (tmp_path / "model.safetensors").mkdir()
    with pytest.raises(LenetError, match="not a file"):
        lenet.load_weights(tmp_path / "model.safetensors")


@needs_safetensors
def test_a_file_larger_than_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, random_model(), {})
    monkeypatch.setattr(safetensors_io, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(LenetError, match="more than the"):
        lenet.load_weights(path)


@needs_safetensors
def test_a_header_larger_than_the_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, random_model(), {"history": [[1, 0.5, 0.5, 0.5, 0.5, 1.0]] * 100})
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    monkeypatch.setattr(safetensors_io, "MAX_HEADER_BYTES", length - 1)
    with pytest.raises(LenetError, match=f"header claims {length:,} bytes, more than the {length - 1:,} allowed"):
        lenet.load_weights(path)
    monkeypatch.setattr(safetensors_io, "MAX_HEADER_BYTES", length)
    assert set(lenet.load_weights(path)) == set(WEIGHT_NAMES)


@needs_safetensors
def test_without_the_package_it_says_what_to_install(tmp_path, monkeypatch):
    checkpoint = lenet_file()
    monkeypatch.setitem(sys.modules, "safetensors", None)  # `import safetensors` raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(LenetError, match=re.escape("pip install 'lenet[safetensors]'")):
        save_checkpoint(tmp_path / "model.safetensors", random_model(), {})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "model.safetensors").write_bytes(checkpoint)
    with pytest.raises(LenetError, match=re.escape("pip install 'lenet[safetensors]'")):
        lenet.load_weights(tmp_path / "model.safetensors")
    save_checkpoint(tmp_path / "model.npz", random_model(), {})  # .npz needs no package
    assert set(lenet.load_weights(tmp_path / "model.npz")) == set(WEIGHT_NAMES)
