"""Checkpoints as .npz files that load without pickle.

The weights sit under PyTorch's names (c1.weight, ..., f7.bias), so `np.load(path)` is a state dict
that torch's `load_state_dict` takes after `torch.from_numpy`. Everything else is JSON in the 0-d
string array `lenet_meta`: architecture options, data set and class names, epoch, validation accuracy,
lenet version, and for the last checkpoint the history, RNG state and optimizer settings.
Optimizer buffers sit under `optimizer/<name>`. Files are written atomically.
"""

import json
import zipfile
from pathlib import Path

import numpy as np

from . import __version__
from .errors import LenetError
from .files import atomic_write
from .model import LeNet5

META_KEY = "lenet_meta"
OPTIMIZER_PREFIX = "optimizer/"


def save_checkpoint(path, model, meta, optimizer_state=None):
    """Write weights, metadata and (optionally) optimizer state to `path` atomically."""
    meta = {"lenet_version": __version__, "architecture": model.config(), "dtype": str(model.dtype), **meta}
    arrays = dict(model.state_dict())
    arrays[META_KEY] = np.array(json.dumps(meta))
    for key, value in (optimizer_state or {}).items():
        arrays[OPTIMIZER_PREFIX + key] = np.asarray(value)
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_checkpoint(path):
    """Read a lenet checkpoint: (state_dict, meta, optimizer_state). Refuses what is not one, clearly."""
    path = Path(path)
    if not path.exists():
        raise LenetError(f"checkpoint {path}: no such file")
    if not path.is_file():
        raise LenetError(f"checkpoint {path}: not a file")
    if not zipfile.is_zipfile(path):
        raise LenetError(f"checkpoint {path}: not a lenet checkpoint (not an .npz file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise LenetError(f"checkpoint {path}: not a lenet checkpoint (not a readable .npz file: {e})") from None
    if META_KEY not in arrays:
        raise LenetError(f"checkpoint {path}: not a lenet checkpoint (no {META_KEY} entry)")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
    except json.JSONDecodeError as e:
        raise LenetError(f"checkpoint {path}: its metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise LenetError(f"checkpoint {path}: its metadata is a JSON {type(meta).__name__}, not an object")
    not_numbers = [k for k, v in arrays.items() if v.dtype.kind not in "biuf"]
    if not_numbers:
        raise LenetError(f"checkpoint {path}: entries that are not numbers: {', '.join(not_numbers)}")
    optimizer_state = {
        k[len(OPTIMIZER_PREFIX) :]: arrays.pop(k) for k in list(arrays) if k.startswith(OPTIMIZER_PREFIX)
    }
    return arrays, meta, optimizer_state


def model_from_checkpoint(path, backend="numpy", dtype=None, input_grad=False):
    """Rebuild the model a checkpoint describes and load its weights: (model, meta).

    input_grad=True makes backward return dL/dx too (for saliency maps; see LeNet5).
    """
    state, meta, _ = load_checkpoint(path)
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise LenetError(f"checkpoint {path}: metadata has no architecture")
    try:
        model = LeNet5(**arch, backend=backend, dtype=dtype or meta.get("dtype", "float32"), input_grad=input_grad)
    except TypeError as e:
        raise LenetError(f"checkpoint {path}: unknown architecture options {arch} ({e})") from None
    try:
        model.load_state_dict(state)
    except LenetError as e:
        raise LenetError(f"checkpoint {path}: {e}") from None
    return model, meta
