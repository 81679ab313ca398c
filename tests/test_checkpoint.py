import gc
import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import random_model

import lenet
from lenet.checkpoint import META_KEY, load_checkpoint, model_from_checkpoint, save_checkpoint
from lenet.errors import LenetError
from lenet.files import atomic_write
from lenet.layers import SoftmaxCrossEntropy
from lenet.model import LeNet5
from lenet.optim import SGD, Adam

REPO = Path(__file__).resolve().parents[1]

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


pytestmark = pytest.mark.usefixtures("one_blas_thread")


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
    meta = {"epoch": 3, "val_acc": 0.8125, "dataset": "fashion-mnist", "class_names": list("abcdefghij")}
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
        "entry c3.bias holds <U1, not numbers",
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
        ({"f8.weight": np.zeros(3, np.float32)}, r"unexpected entry 'f8\.weight\.npy'"),
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


def test_interrupted_save_leaves_the_previous_checkpoint_and_no_open_zip(tmp_path, monkeypatch):
    path = tmp_path / "best_model.npz"
    old = random_model(seed=1)
    save_checkpoint(path, old, {"epoch": 1})
    write_array = np.lib.format.write_array
    written = []

    def third_array_then_ctrl_c(f, array, **kwargs):
        if len(written) == 2:
            f.write(b"half an array")
            raise KeyboardInterrupt
        written.append(array)
        write_array(f, array, **kwargs)

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(np.lib.format, "write_array", third_array_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, random_model(seed=2), {"epoch": 2})
    gc.collect()  # a zip left open (numpy 1.x's savez did) would complain here, with its file closed under it
    monkeypatch.undo()

    assert len(written) == 2 and unraisable == []
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


def test_atomic_write_interrupted_as_its_temporary_is_created_leaves_none(tmp_path, monkeypatch):
    """A Ctrl-C or SIGTERM raised the moment os.open returns (a busy disk can hold it long) removes the temporary; a
    temporary of the same name that another writer made is left to it."""
    path = tmp_path / "last.npz"
    path.write_text("old\n")
    real_open = os.open

    def open_then_interrupted(*args, **kwargs):
        real_open(*args, **kwargs)  # the file exists, and the signal's handler raises before its fd is kept
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_write(path, "w"):
        pytest.fail("the body ran")
    monkeypatch.setattr(os, "open", real_open)
    assert path.read_text() == "old\n" and leftovers(tmp_path, {path.name}) == []

    monkeypatch.setattr("lenet.files.secrets.token_hex", lambda n: "ab" * n)
    theirs = tmp_path / f".last.npz.{'ab' * 6}.tmp"
    theirs.write_text("another writer's")
    with pytest.raises(FileExistsError), atomic_write(path, "w"):
        pytest.fail("the body ran")
    assert theirs.read_text() == "another writer's"


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


# ---------------------------------------------------------------------------------------------------------
# Crafted checkpoints: each class of hostile file is one LenetError, found before anything big is read


def npy_bytes(array):
    out = io.BytesIO()
    np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)
    return out.getvalue()


def npy_with_header(header, data=b"", version=(1, 0)):
    """A .npy file with the header text given (padded as numpy pads it) and raw data after it."""
    header = header.encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    size = struct.pack("<H", len(header)) if version[0] == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes(version) + size + header + data


def zip_entry(name, data, **fields):
    """An entry for build_zip: data as it sits in the zip (already compressed if method is 8)."""
    entry = {"name": name, "data": data, "method": 0, "flags": 0, "version": 20, "crc": zlib.crc32(data)}
    entry["file_size"] = len(data)
    entry.update(fields)
    return entry


def build_zip(entries, directory_size=None):
    """The bytes of a zip archive, written field by field so that any field can be what a test needs."""
    local, central = b"", b""
    for e in entries:
        name = e["name"].encode()
        offset = len(local)
        local += struct.pack(
            "<4s2B4HL2L2H", b"PK\x03\x04", e["version"], 0, e["flags"], e["method"], 0, 0x21,
            e["crc"], len(e["data"]), e["file_size"], len(name), 0,
        ) + name + e["data"]  # fmt: skip
        central += struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, e["version"], 0, e["flags"], e["method"], 0, 0x21,
            e["crc"], len(e["data"]), e["file_size"], len(name), 0, 0, 0, 0, 0o644 << 16, offset,
        ) + name  # fmt: skip
    size = len(central) if directory_size is None else directory_size
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), size, len(local), 0)
    return local + central + end


def good_entries(meta=None, **arrays):
    """The entries of a valid lenet checkpoint (random weights), with `meta` and extra or changed arrays."""
    meta = {"architecture": {"activation": "sigmoid", "pool": "avg"}, "epoch": 1} if meta is None else meta
    values = {**random_model().state_dict(), META_KEY: np.array(json.dumps(meta)), **arrays}
    return [
        zip_entry(f"{key}.npy", data if isinstance(data, bytes) else npy_bytes(data)) for key, data in values.items()
    ]


def with_entry(name, **fields):
    """good_entries with the fields of entry `name` changed."""
    entries = good_entries()
    for e in entries:
        if e["name"] == name:
            e.update(fields)
    return build_zip(entries)


def deflated_zeros(size):
    """A raw deflate stream that inflates to `size` zero bytes (a multiple of 1 MiB), built in a few ms."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)  # each repeat inflates to 1 MiB more
    return block * (size >> 20) + c.flush()


def three_2gib_bombs():
    stream = deflated_zeros(2 << 30)  # about 2 MB
    entries = good_entries()
    for e in entries[:3]:
        e.update(data=stream, method=zipfile.ZIP_DEFLATED, file_size=2 << 30, crc=0)
    return build_zip(entries)


def meta_zip(meta_text):
    return build_zip(good_entries(**{META_KEY: npy_bytes(np.array(meta_text))}))


def meta_with(**fields):
    return meta_zip(json.dumps({"architecture": {"activation": "sigmoid", "pool": "avg"}, **fields}))


def arch_with(**fields):
    return meta_zip(json.dumps({"architecture": {"activation": "sigmoid", "pool": "avg", **fields}}))


def sparse_file(path, size):
    with open(path, "wb") as f:
        f.write(build_zip(good_entries()))
        f.truncate(size)


F4_6 = "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }"

CRAFTED = {
    # the zip's directory
    "entry that is not a .npy": (lambda: build_zip(good_entries()[1:] + [zip_entry("c1.weight", b"x")]),
                                 "unexpected entry 'c1.weight'"),
    "entry with a path": (lambda: build_zip(good_entries() + [zip_entry("../c1.bias.npy", b"x")]), "unexpected entry"),
    "entry named twice": (lambda: build_zip(good_entries() + good_entries()[:1]), "'c1.weight.npy' appears twice"),
    "unknown optimizer entry": (lambda: build_zip(good_entries(**{"optimizer/w.0": np.zeros(3)})), "unexpected entry"),
    "compression method 99": (lambda: with_entry("c1.bias.npy", method=99), "compression method 99"),
    "compression method 12 (bzip2)": (lambda: with_entry("f7.bias.npy", method=12), "compression method 12"),
    "encryption bit": (lambda: with_entry("c1.bias.npy", flags=0x1), "is encrypted (zip flags 0x0001)"),
    "strong encryption bit": (lambda: with_entry("c3.bias.npy", flags=0x41), "is encrypted (zip flags 0x0041)"),
    "patched-data flag": (lambda: with_entry("c3.bias.npy", flags=0x20), "zip flags 0x0020 that lenet does not read"),
    "version needed 9.9": (lambda: with_entry("c1.bias.npy", version=99), "zip file version 9.9"),
    "version needed 6.4": (lambda: with_entry("c1.bias.npy", version=64), "zip file version 6.4"),
    "three deflated 2 GiB entries": (three_2gib_bombs, "declares 2147483648 bytes uncompressed, more than the"),
    "meta declares 1 GiB": (lambda: with_entry("lenet_meta.npy", file_size=1 << 30), "that lenet_meta can need"),
    "bad CRC": (lambda: with_entry("c1.bias.npy", crc=1), "Bad CRC-32"),
    "zip directory of 1 GiB": (lambda: build_zip(good_entries(), directory_size=1 << 30),
                               "its zip directory is 1073741824 bytes"),
    "zip cut in half": (lambda: build_zip(good_entries())[:100000], "not an .npz file"),
    # the .npy headers and data
    "not a .npy": (lambda: with_entry("c1.bias.npy", data=b"hello", crc=zlib.crc32(b"hello"), file_size=5),
                   "not a readable .npz file"),
    "npy version 3.0": (lambda: build_zip(good_entries(**{"c1.bias": npy_with_header(F4_6, bytes(24), (3, 0))})),
                        "format version 3.0"),
    "npy version 9.9": (lambda: build_zip(good_entries(**{"c1.bias": npy_with_header(F4_6, bytes(24), (9, 9))})),
                        "format version 9.9"),
    "npy shape (10**12,)": (
        lambda: build_zip(good_entries(**{"c1.bias": npy_with_header(F4_6.replace("(6,)", "(10**12,)"))})),
        "not a readable .npz file",
    ),
    "npy shape 10**12 written out": (
        lambda: build_zip(good_entries(**{"c1.bias": npy_with_header(F4_6.replace("(6,)", f"({10**12},)"))})),
        "entry c1.bias has shape (1000000000000,), expected (6,)",
    ),
    "npy header unterminated": (
        lambda: build_zip(good_entries(**{"c1.bias": npy_with_header("{'descr': '<f4', 'fortran_order': Fal")})),
        "not a readable .npz file",
    ),
    "npy header unterminated string": (
        lambda: build_zip(good_entries(**{"c1.bias": npy_with_header("{'descr': '<f4")})), "not a readable .npz file"
    ),
    "npy header not a dict": (lambda: build_zip(good_entries(**{"c1.bias": npy_with_header("[1, 2]")})),
                              "not a readable .npz file"),
    "npy header of 60,000 bytes": (
        lambda: build_zip(good_entries(**{META_KEY: npy_with_header("{'descr': '<U2', 'fortran_order': False, "
                                                                    "'shape': (), }" + " " * 60000, bytes(8))})),
        "not a readable .npz file",
    ),
    "npy header of 60,000 bytes for 24 bytes of data": (
        lambda: build_zip(good_entries(**{"c1.bias": npy_with_header(F4_6 + " " * 60000)})),
        "entry 'c1.bias.npy' declares 60096 bytes uncompressed, more than the 4144",
    ),
    "npy object dtype": (lambda: build_zip(good_entries(**{"c1.bias": npy_with_header(F4_6.replace("<f4", "|O"))})),
                         "entry c1.bias holds |O, not numbers"),
    "npy float16 weights": (lambda: build_zip(good_entries(**{"c1.bias": np.zeros(6, np.float16)})),
                            "entry c1.bias holds <f2, not numbers"),
    "npy data cut short": (lambda: build_zip(good_entries(**{"c1.bias": npy_with_header(F4_6, bytes(20))})),
                           "entry c1.bias: truncated: expected 24 bytes of data, found 20"),
    "npy data too long": (lambda: build_zip(good_entries(**{"c1.bias": npy_with_header(F4_6, bytes(28))})),
                          "entry c1.bias: data after the 24 bytes"),
    "meta as numbers": (lambda: build_zip(good_entries(**{META_KEY: np.zeros(())})), "entry lenet_meta holds <f8"),
    "meta declares 10**8 characters": (
        lambda: build_zip(good_entries(**{META_KEY: npy_with_header("{'descr': '<U100000000', 'fortran_order': "
                                                                    "False, 'shape': (), }")})),
        "holds <U100000000, not a string of at most 1048576 characters",
    ),
    "optimizer state of the wrong shape": (lambda: build_zip(good_entries(**{"optimizer/m.0": np.zeros(3)})),
                                           "entry optimizer/m.0 has shape (3,), expected (6, 1, 5, 5)"),
    "optimizer steps as a float": (lambda: build_zip(good_entries(**{"optimizer/steps": np.array(2.5)})),
                                   "entry optimizer/steps holds <f8, not an integer"),
    # the metadata JSON
    "meta nested 100,000 deep": (lambda: meta_zip('{"a": ' + "[" * 100000 + "]" * 100000 + "}"), "nested more than 8"),
    "meta nested 20 deep": (lambda: meta_zip('{"a": ' + "[" * 20 + "]" * 20 + "}"), "nested more than 8 deep"),
    "5,000-digit integer": (lambda: meta_zip('{"epoch": ' + "9" * 5000 + "}"), "an integer of 5000 digits"),
    "41-digit integer": (lambda: meta_zip('{"epoch": -' + "9" * 41 + "}"), "an integer of 41 digits"),
    "architecture.seed -1": (lambda: arch_with(seed=-1), "architecture.seed must be a whole number >= 0, not -1"),
    "architecture.seed 1.5": (lambda: arch_with(seed=1.5), "architecture.seed must be a whole number >= 0, not 1.5"),
    "architecture a list": (lambda: meta_with(architecture=["sigmoid"]), "architecture must be an object"),
    "architecture.activation a number": (lambda: arch_with(activation=3), "architecture.activation must be one of"),
    "architecture.pool unknown": (lambda: arch_with(pool="min"), "architecture.pool must be one of avg, max, not"),
    "architecture option unknown": (lambda: arch_with(input_grad=True), "unknown architecture options 'input_grad'"),
    "dataset as a list": (lambda: meta_with(dataset=["fashion-mnist"]), "dataset must be one of fashion-mnist, mnist"),
    "dataset unknown": (lambda: meta_with(dataset="cifar"), "dataset must be one of fashion-mnist, mnist, not 'cifar'"),
    "class_names of 9": (lambda: meta_with(class_names=list("abcdefghi")), "class_names must be a list of 10 strings"),
    "class_names numbers": (lambda: meta_with(class_names=list(range(10))), "class_names must be a list of 10"),
    "epoch 1.5": (lambda: meta_with(epoch=1.5), "epoch must be a whole number >= 0, not 1.5"),
    "epoch -1": (lambda: meta_with(epoch=-1), "epoch must be a whole number >= 0, not -1"),
    "epoch a string": (lambda: meta_with(epoch="3"), "epoch must be a whole number >= 0, not '3'"),
    "epoch true": (lambda: meta_with(epoch=True), "epoch must be a whole number >= 0, not True"),
    "epoch a dict": (lambda: meta_with(epoch={"n": 1}), "epoch must be a whole number >= 0, not {'n': 1}"),
    "val_acc null after epoch 3": (lambda: meta_with(epoch=3, val_acc=None), "val_acc must be a number from 0 to 1"),
    "val_acc a string": (lambda: meta_with(val_acc="0.9"), "val_acc must be a number from 0 to 1, not '0.9'"),
    "val_acc 1.5": (lambda: meta_with(val_acc=1.5), "val_acc must be a number from 0 to 1, not 1.5"),
    "val_acc NaN": (lambda: meta_zip('{"val_acc": NaN}'), "val_acc must be a number from 0 to 1, not nan"),
    "dtype float16": (lambda: meta_with(dtype="float16"), "dtype must be one of float32, float64, not 'float16'"),
    "lenet_version a number": (lambda: meta_with(lenet_version=1), "lenet_version must be a string, not 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_checkpoints_are_refused_in_one_line_with_little_memory(tmp_path, case):
    make, expected = CRAFTED[case]
    path = tmp_path / "model.npz"
    path.write_bytes(make())
    tracemalloc.start()
    try:
        with pytest.raises(LenetError) as info:
            model_from_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(f"checkpoint {path}: "), message
    assert expected in message, message
    assert "\n" not in message and len(message) < 500, message
    assert peak < 16 << 20, f"peak {peak} bytes"


def test_a_checkpoint_larger_than_any_lenet_one_is_refused_from_its_size(tmp_path):
    path = tmp_path / "model.npz"
    sparse_file(path, 64 << 20)
    with pytest.raises(LenetError, match="67108864 bytes, more than the 33554432 a LeNet-5 checkpoint can need"):
        load_checkpoint(path)


def test_the_crafted_files_differ_from_a_good_one_only_where_meant(tmp_path):
    """The builders make loadable checkpoints when nothing is changed, so each refusal above is its change's."""
    path = tmp_path / "model.npz"
    for data in (build_zip(good_entries()), with_entry("c1.bias.npy"), meta_with(), arch_with(seed=3)):
        path.write_bytes(data)
        model, meta = model_from_checkpoint(path)
        assert np.array_equal(model.forward(images()), random_model().forward(images()))
    path.write_bytes(meta_zip('{"architecture": {"activation": "relu", "pool": "max"}, "n": ' + "9" * 39 + "}"))
    assert load_checkpoint(path)[1]["n"] == int("9" * 39)  # 39 digits, as a PCG64 state has, are fine
    deflated = good_entries()
    for e in deflated:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        e.update(data=c.compress(e["data"]) + c.flush(), method=zipfile.ZIP_DEFLATED)
    path.write_bytes(build_zip(deflated))
    assert np.array_equal(model_from_checkpoint(path)[0].forward(images()), random_model().forward(images()))
    np.savez_compressed(path, **random_model().state_dict(), lenet_meta=np.array(json.dumps({"epoch": 1})))
    assert set(load_checkpoint(path)[0]) == set(TORCH_SHAPES)  # numpy's own compressed form


# ---------------------------------------------------------------------------------------------------------
# End to end: test.py under a memory cap far below what the crafted files claim


def capped_memory():
    """preexec_fn: 2 GiB of address space, a third of what the three 2 GiB entries would take."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS")
def test_test_py_refuses_a_checkpoint_bomb_in_one_line_under_a_memory_cap(tmp_path):
    case = "three deflated 2 GiB entries"
    path = tmp_path / "model.npz"
    path.write_bytes(CRAFTED[case][0]())
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "test.py"), "--checkpoint", str(path), "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=capped_memory,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"test.py: error: checkpoint {path}: "), result.stderr
    assert CRAFTED[case][1] in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
