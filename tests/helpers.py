"""Plain helpers that several test modules share (fixtures are in conftest.py). A test module imports from here,
never from another test module."""

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lenet.data import IDX_TYPES, SPLIT_FILES, find_dataset
from lenet.errors import LenetError
from lenet.fast.processes import available as processes_available
from lenet.model import LeNet5
from lenet.records import epoch_weights, read_records, records_folder

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT_S = 120
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FILE_NAMES = [name for split in SPLIT_FILES.values() for name in split]  # a data set's four IDX files


def _fashion_mnist_missing():
    try:
        find_dataset("fashion-mnist", download=False)
    except LenetError as e:
        return f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): {e}"
    return None


MISSING_DATA = _fashion_mnist_missing()  # the real data set, or why the tests that need it skip
needs_data = pytest.mark.skipif(MISSING_DATA is not None, reason=MISSING_DATA or "")
needs_processes = pytest.mark.skipif(not processes_available(), reason="worker processes need Linux (memfd_create)")


def run_script(script, args, env):
    """A top-level script of the checkout (train.py, test.py) run with `args` in `env`: its CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def without_busy_notice(stderr):
    """stderr less the one line train.py may print when other programs use the CPU beside its workers (on a shared
    machine, as under a test suite, it may come at any run): what a test of the other messages reads."""
    notice = ": warning: other programs are using the CPU"
    return "".join(line for line in stderr.splitlines(keepends=True) if notice not in line)


def one_line_error(result, script):
    """Check the promise of the command lines for bad input; returns the message."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    return lines[0]


def idx_bytes(array, type_code=0x08):
    """The bytes of an IDX file holding `array` (type_code: the IDX element type, 0x08 unsigned bytes)."""
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(IDX_TYPES[type_code]).tobytes()


def random_model(activation="sigmoid", pool="avg", dtype="float32", seed=7):
    """A model whose every weight, biases included, differs from a fresh LeNet5's."""
    model = LeNet5(activation, pool, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data[...] += rng.normal(0, 0.1, size=p.data.shape).astype(p.data.dtype)
    return model


@functools.cache
def _torch_lenet_module():
    spec = importlib.util.spec_from_file_location("torch_lenet", REPO / "benchmarks" / "torch_lenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_lenet(activation="sigmoid", pool="avg"):
    """PyTorch's LeNet-5, benchmarks/torch_lenet.py's TorchLeNet5 (its one definition), with lenet's parameter names.
    Imports torch: call it only where torch is installed."""
    return _torch_lenet_module().TorchLeNet5(activation, pool)


def assert_records_match_last(out):
    """docs/training.md's rule after any run, finished or stopped: the epoch records in `out` hold exactly the epochs
    0..E of last.npz (none without it: epoch 0 at most), each with its weights, the last equal to last.npz's, no
    temporaries. Returns the records."""
    from lenet.checkpoint import load_checkpoint

    last = load_checkpoint(Path(out) / "last.npz") if (Path(out) / "last.npz").exists() else None
    saved = last[1]["epoch"] if last else 0
    records = read_records(out)
    if records is None:  # stopped before epoch 0 was recorded
        assert saved == 0 and not records_folder(out).exists()
        return None
    assert [r["epoch"] for r in records["epochs"]] == list(range(saved + 1)), (saved, records["epochs"])
    files = sorted(p.name for p in records_folder(out).iterdir())
    assert files == [f"epoch_{e:04d}.npz" for e in range(saved + 1)] + ["records.json"], files
    if last:
        kept = epoch_weights(out, saved)
        assert all(np.array_equal(kept[name], value) for name, value in last[0].items())
    return records


def dataset_arrays(seed=0, n_train=10, n_test=6, size=28, classes=10):
    """The four arrays of a small made-up data set, keyed by the published file names: uint8 images (N, size, size),
    labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = SPLIT_FILES[split]
        arrays[images_name] = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        arrays[labels_name] = rng.integers(0, classes, size=n, dtype=np.uint8)
    return arrays
