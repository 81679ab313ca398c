"""Checkpoints as .npz files (or .safetensors files) that load without pickle.

The weights sit under PyTorch's names and layouts (c1.weight, ..., f7.bias). `load_weights(path)` gives
them as a plain state dict {name: NumPy array}, which torch's `load_state_dict` takes after
`torch.from_numpy`; `np.load(path)` is not one, because the file holds more than the weights. Everything
else is JSON in the 0-d string array `lenet_meta`: architecture options, data set and class names, epoch,
validation accuracy, lenet version, and for the last checkpoint the history, RNG state and optimizer
settings. Optimizer buffers sit under `optimizer/<name>`. Files are written atomically.

A path ending in .safetensors is a safetensors file instead (lenet/safetensors_io.py; the optional
`safetensors` package): the same tensors under the same names, and the same JSON as one string,
`lenet_meta`, in the header's `__metadata__`. Reading tells the two formats apart by the extension.

A checkpoint is a file from anywhere, so loading checks before it reads (lenet/checkpoint_checks.py):
anything that is not a lenet checkpoint is one LenetError.
"""

import json
import zipfile
from pathlib import Path

import numpy as np

from .checkpoint_checks import META_KEY, OPTIMIZER_PREFIX, check_meta, parse_meta, read_npz
from .errors import LenetError
from .files import atomic_write
from .model import LeNet5
from .version import __version__

CHECKPOINT_FORMATS = {"npz": ".npz", "safetensors": ".safetensors"}  # format -> the file extension it is read by


def save_checkpoint(path, model, meta, optimizer_state=None, format=None):
    """Write weights, metadata and (optionally) optimizer state to `path` atomically.

    format: "npz" or "safetensors"; None takes it from the path (.safetensors, else npz).
    """
    meta = {"lenet_version": __version__, "architecture": model.config(), "dtype": str(model.dtype), **meta}
    arrays = dict(model.state_dict())
    arrays[META_KEY] = np.array(json.dumps(meta))
    for key, value in (optimizer_state or {}).items():
        arrays[OPTIMIZER_PREFIX + key] = np.asarray(value)
    if checkpoint_format(path, format) == "safetensors":
        return _save_safetensors(path, arrays)
    with atomic_write(path) as f:
        _write_npz(f, arrays)


def _write_npz(f, arrays):
    """What np.savez writes (one stored .npy member per array, read back by np.load), with the zip closed by a
    `with`: numpy 1.x's savez leaves it open when Ctrl-C or SIGTERM lands mid-write, and the orphan's __del__
    then prints a traceback at exit, after the temporary file under it is gone."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def load_checkpoint(path):
    """Read a lenet checkpoint: (state_dict, meta, optimizer_state). Refuses what is not one, clearly.

    Nothing is decompressed or allocated beyond what a LeNet-5 checkpoint can hold (lenet/checkpoint_checks.py).
    """
    path = Path(path)
    if checkpoint_format(path) == "safetensors":
        arrays, meta_text = _read_safetensors(path)
    else:
        arrays = read_npz(path)
        meta_text = arrays.pop(META_KEY).item()
    meta = parse_meta(meta_text, path)
    check_meta(meta, path)
    optimizer_state = {
        k[len(OPTIMIZER_PREFIX) :]: arrays.pop(k) for k in list(arrays) if k.startswith(OPTIMIZER_PREFIX)
    }
    return arrays, meta, optimizer_state


def model_from_checkpoint(path, backend="numpy", dtype=None, **options):
    """Rebuild the model a checkpoint describes and load its weights: (model, meta).

    options go to LeNet5 (input_grad): how to compute, which a checkpoint does not fix."""
    state, meta, _ = load_checkpoint(path)
    return model_from_state(state, meta, path, backend, dtype, **options)


def model_from_state(state, meta, path, backend="numpy", dtype=None, **options):
    """model_from_checkpoint for a checkpoint already read (load_checkpoint's state and meta; path for messages)."""
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise LenetError(f"checkpoint {path}: metadata has no architecture")
    try:
        model = LeNet5(**arch, backend=backend, dtype=dtype or meta.get("dtype", "float32"), **options)
    except TypeError as e:
        raise LenetError(f"checkpoint {path}: unknown architecture options {arch} ({e})") from None
    try:
        model.load_state_dict(state)
    except LenetError as e:
        raise LenetError(f"checkpoint {path}: {e}") from None
    return model, meta


def load_weights(path):
    """The weights of a lenet checkpoint (.npz or .safetensors) as a plain state dict {name: NumPy array}.

    PyTorch's names and layouts, without the metadata and the optimizer's buffers: what
    `LeNet5.load_state_dict` and, after `torch.from_numpy`, torch's `load_state_dict` take.
    """
    state, _, _ = load_checkpoint(path)
    return state


def checkpoint_format(path, format=None):
    """The format a checkpoint at `path` is written in: `format` if given, else by the extension.

    A safetensors file must end in .safetensors and only it may, since reading goes by the extension.
    """
    by_extension = "safetensors" if Path(path).suffix == ".safetensors" else "npz"
    if format is None:
        return by_extension
    if format not in CHECKPOINT_FORMATS:
        raise LenetError(f"unknown checkpoint format {format!r}; choose one of: {', '.join(CHECKPOINT_FORMATS)}")
    if (format == "safetensors") != (by_extension == "safetensors"):
        raise LenetError(
            f"checkpoint {path}: a {format} checkpoint must "
            f"{'end in .safetensors' if format == 'safetensors' else 'not end in .safetensors'}, "
            "since it is read back by its extension"
        )
    return format


def _save_safetensors(path, arrays):
    from .safetensors_io import write_safetensors

    arrays = dict(arrays)
    # "format": "pt" says the layouts are PyTorch's, which Hugging Face's loaders look for.
    metadata = {"format": "pt", META_KEY: str(arrays.pop(META_KEY))}
    write_safetensors(path, arrays, metadata)


def _read_safetensors(path):
    """The arrays of a .safetensors checkpoint and its metadata's JSON text."""
    from .safetensors_io import read_safetensors

    arrays, metadata = read_safetensors(path, what="checkpoint")
    if META_KEY not in metadata:
        raise LenetError(f"checkpoint {path}: not a lenet checkpoint (no {META_KEY} in its __metadata__)")
    return arrays, metadata[META_KEY]
