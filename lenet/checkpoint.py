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

A checkpoint is a file from anywhere, so loading checks before it reads: the zip's directory first (the
entry names LeNet-5 has, plain zip features, sizes a LeNet-5 can need), then each .npy header (dtype and
shape against the architecture), and only then the data; the metadata JSON is bounded in size, nesting
and digits, and the fields that are used are checked for type and range. Anything else is one LenetError.
"""

import dataclasses
import functools
import json
import math
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from . import __version__
from .data import DATASETS
from .errors import LenetError
from .files import atomic_write
from .model import ACTIVATIONS, DTYPES, NUM_CLASSES, POOLS, LeNet5
from .optim import OPTIMIZERS

META_KEY = "lenet_meta"
OPTIMIZER_PREFIX = "optimizer/"

# What a LeNet-5 checkpoint can need, with room to spare: 61,706 float64 weights are 494 KB, Adam's two
# moments as much again each, the metadata JSON a few KB plus about 110 characters per epoch of history.
MAX_CHECKPOINT_BYTES = 32 << 20
MAX_ZIP_DIRECTORY_BYTES = 64 << 10  # a real one is about 3 KB: 33 entries of about 90 bytes
ZIP_FLAGS_READ = 0x0806  # deflate options (bits 1-2), UTF-8 names (bit 11) ...
ZIP_FLAGS_READ |= 0x0008  # ... and sizes after the data (bit 3, written when streaming); no encryption
MAX_NPY_HEADER_BYTES = 4096  # numpy writes 128 bytes or so
MAX_META_CHARS = 1 << 20  # of JSON, stored as UTF-32 (4 bytes a character)
MAX_META_DEPTH = 8  # nesting of JSON objects and lists; lenet's own metadata goes 3 deep
MAX_JSON_INT_DIGITS = 40  # the 128-bit numbers of a PCG64 state have up to 39
MAX_CLASS_NAME_CHARS = 200
MAX_STORED_THREADS = 1024


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
        np.savez(f, **arrays)


def load_checkpoint(path):
    """Read a lenet checkpoint: (state_dict, meta, optimizer_state). Refuses what is not one, clearly.

    Nothing is decompressed or allocated beyond what a LeNet-5 checkpoint can hold: see the module's
    docstring for the order of the checks.
    """
    path = Path(path)
    if checkpoint_format(path) == "safetensors":
        return _load_safetensors(path)
    if not path.exists():
        raise LenetError(f"checkpoint {path}: no such file")
    if not path.is_file():
        raise LenetError(f"checkpoint {path}: not a file")
    try:
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise LenetError(
                f"checkpoint {path}: {size} bytes, more than the {MAX_CHECKPOINT_BYTES} a LeNet-5 checkpoint can need"
            )
        if not zipfile.is_zipfile(path):
            raise LenetError(f"checkpoint {path}: not a lenet checkpoint (not an .npz file)")
        with open(path, "rb") as f:
            directory = _zip_directory_bytes(f, size)
        if directory is not None and directory > MAX_ZIP_DIRECTORY_BYTES:
            raise LenetError(
                f"checkpoint {path}: its zip directory is {directory} bytes, more than the "
                f"{MAX_ZIP_DIRECTORY_BYTES} a LeNet-5 checkpoint can need"
            )
        with zipfile.ZipFile(path) as zf:
            entries = _check_zip_directory(zf.infolist(), path)
            if META_KEY not in entries:
                raise LenetError(f"checkpoint {path}: not a lenet checkpoint (no {META_KEY} entry)")
            arrays = {key: _read_npy(zf, info, kind, shape, path) for key, (info, kind, shape) in entries.items()}
    except LenetError:
        raise
    except _UNREADABLE as e:
        raise LenetError(
            f"checkpoint {path}: not a lenet checkpoint (not a readable .npz file: {_one_line(e)})"
        ) from None
    meta = _parse_meta(arrays.pop(META_KEY).item(), path)
    _check_meta(meta, path)
    optimizer_state = {
        k[len(OPTIMIZER_PREFIX) :]: arrays.pop(k) for k in list(arrays) if k.startswith(OPTIMIZER_PREFIX)
    }
    return arrays, meta, optimizer_state


# What reading a hostile zip or .npy header can raise besides LenetError: zipfile's BadZipFile and
# NotImplementedError (it refuses a "version needed to extract" above 6.3, the newest zip format, as it reads
# the directory: "zip file version 9.9"), RuntimeError (encryption), and numpy's
# header parser's ValueError, SyntaxError and tokenize.TokenError (an unterminated header).
_UNREADABLE = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    OSError,
    EOFError,
    zlib.error,
    struct.error,
    ValueError,
    SyntaxError,
    TypeError,
    tokenize.TokenError,
)


def _zip_directory_bytes(f, size):
    """The size of the central directory that the end record of the zip in `f` declares (as zipfile
    finds that record); None if there is none. zipfile reads the whole directory into memory at once."""
    tail_bytes = min(size, 22 + 0xFFFF)  # the end record, and a comment of at most 64 KiB before the end
    f.seek(size - tail_bytes)
    tail = f.read(tail_bytes)
    if tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\x00\x00":
        record = tail[-22:]
    else:
        start = tail.rfind(b"PK\x05\x06")
        if start < 0 or len(tail) - start < 22:
            return None
        record = tail[start : start + 22]
    return struct.unpack("<I", record[12:16])[0]  # 0xFFFFFFFF for zip64, which no LeNet checkpoint needs


@functools.cache
def _parameter_shapes():
    """[(name, shape)] of LeNet-5's parameters in order (the optimizer's state arrays follow that order)."""
    return [(name, tuple(p.shape)) for name, p in LeNet5(dtype="float64").named_parameters()]


@functools.cache
def _known_entries():
    """{entry name in the zip: (key, kind, shape)} of everything a lenet checkpoint may hold."""
    entries = {f"{name}.npy": (name, "float", shape) for name, shape in _parameter_shapes()}
    entries[f"{META_KEY}.npy"] = (META_KEY, "text", ())
    entries[f"{OPTIMIZER_PREFIX}steps.npy"] = (f"{OPTIMIZER_PREFIX}steps", "integer", ())
    entries[f"{OPTIMIZER_PREFIX}lr.npy"] = (f"{OPTIMIZER_PREFIX}lr", "float", ())
    for state in sorted({name for optimizer in OPTIMIZERS.values() for name in optimizer.state_names}):
        for i, (_, shape) in enumerate(_parameter_shapes()):
            key = f"{OPTIMIZER_PREFIX}{state}.{i}"
            entries[f"{key}.npy"] = (key, "float", shape)
    return entries


def _max_entry_bytes(kind, shape):
    data = 4 * MAX_META_CHARS if kind == "text" else 8 * math.prod(shape)
    return MAX_NPY_HEADER_BYTES + data


def _check_zip_directory(infos, path):
    """{key: (ZipInfo, kind, shape)} of the entries, each checked from the directory alone."""
    known = _known_entries()
    entries = {}
    for info in infos:
        name = info.filename
        where = f"checkpoint {path}: entry {_short(name)}"
        if name not in known:
            weights = ", ".join(name for name, _ in _parameter_shapes())
            raise LenetError(
                f"checkpoint {path}: not a lenet checkpoint: unexpected entry {_short(name)} "
                f"(a lenet checkpoint holds .npy entries {weights}, {META_KEY} and {OPTIMIZER_PREFIX}...)"
            )
        key, kind, shape = known[name]
        if key in entries:
            raise LenetError(f"{where} appears twice")
        if info.flag_bits & 0x41:
            raise LenetError(f"{where} is encrypted (zip flags 0x{info.flag_bits:04x})")
        if info.flag_bits & ~ZIP_FLAGS_READ:
            raise LenetError(f"{where} has zip flags 0x{info.flag_bits:04x} that lenet does not read")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise LenetError(
                f"{where} uses compression method {info.compress_type}; lenet reads stored (0) and deflated (8)"
            )
        limit = _max_entry_bytes(kind, shape)
        if info.file_size > limit:
            raise LenetError(
                f"{where} declares {info.file_size} bytes uncompressed, more than the {limit} "
                f"that {key} can need in a LeNet-5 checkpoint"
            )
        entries[key] = (info, kind, shape)
    return entries


def _read_npy(zf, info, kind, shape, path):
    """The array in .npy entry `info`, its header checked against (kind, shape) before its data is read."""
    key = info.filename.removesuffix(".npy")
    where = f"checkpoint {path}: entry {key}"
    with zf.open(info) as f:
        version = npy_format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise LenetError(f"{where}: .npy format version {version[0]}.{version[1]}; lenet reads 1.0 and 2.0")
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        try:
            found_shape, fortran_order, dtype = read_header(f, max_header_size=MAX_NPY_HEADER_BYTES)
        except MemoryError:  # the parser's own stack for a header nested too deep: the header is at most 4 KiB
            raise LenetError(f"{where}: its .npy header is nested too deeply") from None
        if kind == "text":
            fits = dtype.kind == "U" and dtype.itemsize <= 4 * MAX_META_CHARS
            wanted = f"a string of at most {MAX_META_CHARS} characters"
        elif kind == "integer":
            fits = dtype.kind in "iu" and dtype.itemsize <= 8
            wanted = "an integer"
        else:
            fits = dtype.kind == "f" and dtype.itemsize in (4, 8)
            wanted = "numbers (float32 or float64)"
        if not fits:
            raise LenetError(f"{where} holds {dtype.str}, not {wanted}")
        if found_shape != shape:
            raise LenetError(f"{where} has shape {_short(found_shape)}, expected {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        data = f.read(nbytes)
        if len(data) < nbytes:
            raise LenetError(f"{where}: truncated: expected {nbytes} bytes of data, found {len(data)}")
        if f.read(1):
            raise LenetError(f"{where}: data after the {nbytes} bytes that its header declares")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return array.copy()  # writable, as np.load gives


class _TooManyDigits(Exception):
    def __init__(self, digits):
        self.digits = digits


def _bounded_int(text):
    if len(text) > MAX_JSON_INT_DIGITS + 1:  # a sign, then the digits
        raise _TooManyDigits(len(text.lstrip("-")))
    return int(text)


def _parse_meta(text, path):
    """The metadata object from its JSON text, bounded in digits and nesting."""
    try:
        meta = json.loads(text, parse_int=_bounded_int)
    except _TooManyDigits as e:
        raise LenetError(
            f"checkpoint {path}: its metadata holds an integer of {e.digits} digits, more than {MAX_JSON_INT_DIGITS}"
        ) from None
    except RecursionError:
        raise LenetError(f"checkpoint {path}: its metadata is nested more than {MAX_META_DEPTH} deep") from None
    except json.JSONDecodeError as e:
        raise LenetError(f"checkpoint {path}: its metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise LenetError(f"checkpoint {path}: its metadata is a JSON {type(meta).__name__}, not an object")
    stack = [(meta, 1)]
    while stack:  # not recursive: the depth is what is being checked
        value, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            raise LenetError(f"checkpoint {path}: its metadata is nested more than {MAX_META_DEPTH} deep")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return meta


def _check_meta(meta, path):
    """Type and range of each metadata field that lenet uses, where present."""

    def refuse(field, wanted):
        raise LenetError(f"checkpoint {path}: metadata field {field} must be {wanted}, not {_short(_get(meta, field))}")

    if "lenet_version" in meta and not isinstance(meta["lenet_version"], str):
        refuse("lenet_version", "a string")
    if "architecture" in meta:
        arch = meta["architecture"]
        if not isinstance(arch, dict):
            refuse("architecture", "an object")
        unknown = [k for k in arch if k not in ("activation", "pool", "seed")]
        if unknown:
            raise LenetError(
                f"checkpoint {path}: unknown architecture options {', '.join(map(_short, unknown))} "
                "(lenet's are activation, pool and seed)"
            )
        if "activation" in arch and (not isinstance(arch["activation"], str) or arch["activation"] not in ACTIVATIONS):
            refuse("architecture.activation", f"one of {', '.join(ACTIVATIONS)}")
        if "pool" in arch and (not isinstance(arch["pool"], str) or arch["pool"] not in POOLS):
            refuse("architecture.pool", f"one of {', '.join(POOLS)}")
        if "seed" in arch and not _is_int(arch["seed"], 0):
            refuse("architecture.seed", "a whole number >= 0")
    if "dtype" in meta and (not isinstance(meta["dtype"], str) or meta["dtype"] not in DTYPES):
        refuse("dtype", f"one of {', '.join(DTYPES)}")
    if "dataset" in meta and (not isinstance(meta["dataset"], str) or meta["dataset"] not in DATASETS):
        refuse("dataset", f"one of {', '.join(DATASETS)}")
    if "class_names" in meta:
        names = meta["class_names"]
        if not (
            isinstance(names, list)
            and len(names) == NUM_CLASSES
            and all(isinstance(n, str) and len(n) <= MAX_CLASS_NAME_CHARS for n in names)
        ):
            refuse("class_names", f"a list of {NUM_CLASSES} strings")
    if "epoch" in meta and not _is_int(meta["epoch"], 1):
        refuse("epoch", "a whole number >= 1")
    if "val_acc" in meta and not _is_fraction(meta["val_acc"]):
        refuse("val_acc", "a number from 0 to 1")


def _is_int(value, low=None, high=None):
    """An int (not a bool, which Python counts as one) within [low, high]."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_fraction(value):
    return _is_number(value) and 0 <= value <= 1


def _get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _short(value, limit=60):
    """repr(value), cut to `limit` characters: a field can hold a megabyte."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(message):
    return " ".join(str(message).split())


# ---------------------------------------------------------------------------------------------------------
# The state that --resume continues from (last.npz), checked against a schema

RESUME_FIELDS = ("train_config", "epoch", "history", "best_val_acc", "rng_state")


def _one_of(choices):
    return f"one of {', '.join(choices)}", lambda v: v in choices


def _train_config_ranges():
    """{TrainConfig field: (what it must be, test)} for the values beyond their type; the types come from
    the dataclass itself (check_resume_state). Imported here, not at the top: the trainer imports this module."""
    from .backend import BACKENDS
    from .trainer import AUGMENTATIONS, SCHEDULES

    at_least = lambda low: (f"a whole number >= {low}", lambda v: v >= low)  # noqa: E731
    return {
        "dataset": _one_of(DATASETS),
        "data_dir": ("a path", lambda v: "\x00" not in v),
        "backend": _one_of(BACKENDS),
        "epochs": at_least(1),
        "batch_size": at_least(1),
        "optimizer": _one_of(OPTIMIZERS),
        "lr": ("a positive number", lambda v: math.isfinite(v) and v > 0),
        "momentum": ("a number >= 0", lambda v: math.isfinite(v) and v >= 0),
        "weight_decay": ("a number >= 0", lambda v: math.isfinite(v) and v >= 0),
        "schedule": _one_of(SCHEDULES),
        "activation": _one_of(ACTIVATIONS),
        "pool": _one_of(POOLS),
        "dtype": _one_of(DTYPES),
        "seed": at_least(0),
        "val_fraction": ("a number between 0 and 1", lambda v: 0 < v < 1),
        "augment": _one_of(AUGMENTATIONS),
        "textbook": ("true or false", lambda v: True),
        "limit": at_least(2),
        "threads": (f"a whole number from 1 to {MAX_STORED_THREADS}", lambda v: 1 <= v <= MAX_STORED_THREADS),
        "cuda_graphs": ("true or false", lambda v: True),
        "out": ("a path", lambda v: "\x00" not in v),
        "progress": ("true or false", lambda v: True),
        "resume": ("true or false", lambda v: True),
        "overwrite": ("true or false", lambda v: True),
        "format": _one_of(CHECKPOINT_FORMATS),
    }


def _has_type(value, annotation):
    """Whether a JSON value fits a dataclass field's type: int is not bool, and a float may be written 1."""
    if isinstance(annotation, str):  # postponed annotations (from __future__ import annotations)
        annotation = {"bool": bool, "int": int, "float": float, "str": str}.get(annotation, annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True  # a type this schema does not know: TrainConfig.check() is left to judge it


def _passes(test, value):
    try:
        return bool(test(value))
    except (TypeError, ValueError):  # a value of a type the test was not written for
        return False


def check_resume_state(meta, optimizer_state, path):
    """Check everything that --resume takes from last.npz (trainer._resume and fit) against a schema.

    meta and optimizer_state as load_checkpoint returns them (load_checkpoint has checked the fields it
    knows: epoch, val_acc, architecture, ...). Raises LenetError naming the first field that is missing,
    of the wrong type, out of range or of the wrong shape; returns None when all is well.
    """
    from .trainer import TrainConfig

    def refuse(field, wanted, value):
        raise LenetError(f"{path} is not a resumable checkpoint: {field} must be {wanted}, not {_short(value)}")

    missing = [k for k in RESUME_FIELDS if k not in meta]
    missing += [] if "steps" in optimizer_state else ["optimizer state"]
    if missing:
        raise LenetError(f"{path} is not a resumable checkpoint (missing: {', '.join(missing)})")

    config = meta["train_config"]
    if not isinstance(config, dict):
        refuse("train_config", "an object", config)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    ranges = _train_config_ranges()
    for key, value in config.items():
        field = fields.get(key)
        if field is None:
            raise LenetError(f"{path} is not a resumable checkpoint: train_config.{_short(key)} is not an option")
        wanted, in_range = ranges.get(key, ("a " + getattr(field.type, "__name__", str(field.type)), None))
        if value is None and field.default is None:
            continue
        if key == "augment" and isinstance(value, bool):
            continue  # runs saved before the modes stored true/false, which TrainConfig reads as "shift"/"none"
        if not _has_type(value, field.type) or (in_range is not None and not _passes(in_range, value)):
            refuse(f"train_config.{key}", wanted + (" or null" if field.default is None else ""), value)

    epoch = meta["epoch"]
    if not _is_int(epoch, 1):
        refuse("epoch", "a whole number >= 1", epoch)
    history = meta["history"]
    if not isinstance(history, list) or not 1 <= len(history) <= epoch:
        refuse("history", f"a list of 1 to {epoch} rows (one per epoch)", history)
    previous = 0
    for i, row in enumerate(history):
        if not (isinstance(row, list) and len(row) == 6 and all(_is_number(v) for v in row)):
            refuse(f"history[{i}]", "6 finite numbers (epoch, train_loss, train_acc, val_loss, val_acc, seconds)", row)
        if not _is_int(row[0], previous + 1) or not (_is_fraction(row[2]) and _is_fraction(row[4])):
            refuse(f"history[{i}]", f"a row of an epoch after {previous}, with accuracies from 0 to 1", row)
        previous = row[0]
    if previous != epoch:
        refuse("history", f"rows up to epoch {epoch}", f"rows up to epoch {previous}")
    if not _is_fraction(meta["best_val_acc"]):
        refuse("best_val_acc", "a number from 0 to 1", meta["best_val_acc"])
    _check_pcg64_state(meta["rng_state"], refuse)
    _check_optimizer_state(optimizer_state, config.get("optimizer", "adam"), refuse)


def _check_pcg64_state(state, refuse):
    """The state dict of NumPy's PCG64, as bit_generator.state gives it."""
    below = lambda bits: lambda v: _is_int(v, 0, 2**bits - 1)  # noqa: E731
    schema = {
        "bit_generator": ("'PCG64'", lambda v: v == "PCG64"),
        "state": ("an object with state and inc", lambda v: isinstance(v, dict) and set(v) == {"state", "inc"}),
        "has_uint32": ("0 or 1", lambda v: _is_int(v, 0, 1)),
        "uinteger": ("a whole number below 2**32", below(32)),
    }
    if not isinstance(state, dict) or set(state) != set(schema):
        refuse("rng_state", f"an object with {', '.join(schema)}", state)
    for key, (wanted, fits) in schema.items():
        if not fits(state[key]):
            refuse(f"rng_state.{key}", wanted, state[key])
    for key in ("state", "inc"):
        if not below(128)(state["state"][key]):
            refuse(f"rng_state.state.{key}", "a whole number below 2**128", state["state"][key])
    if state["state"]["inc"] % 2 == 0:  # PCG64's increment is odd by construction
        refuse("rng_state.state.inc", "an odd number", state["state"]["inc"])
    try:
        np.random.PCG64().state = state
    except (ValueError, TypeError, OverflowError) as e:
        refuse("rng_state", f"a state NumPy's PCG64 takes ({_one_line(e)})", state)


def _check_optimizer_state(state, optimizer, refuse):
    """steps, lr and the state arrays of `optimizer`, one per parameter and of its shape, or none of them."""
    steps = state["steps"]
    if not (np.ndim(steps) == 0 and np.asarray(steps).dtype.kind in "iu" and int(steps) >= 0):
        refuse(f"{OPTIMIZER_PREFIX}steps", "a whole number >= 0", steps)
    lr = state.get("lr")
    if lr is None or not (np.ndim(lr) == 0 and np.asarray(lr).dtype.kind in "fiu" and _is_number(float(lr)) and lr > 0):
        refuse(f"{OPTIMIZER_PREFIX}lr", "a positive number", lr)
    names = OPTIMIZERS[optimizer].state_names if optimizer in OPTIMIZERS else ()
    shapes = [shape for _, shape in _parameter_shapes()]
    expected = {f"{name}.{i}": shape for name in names for i, shape in enumerate(shapes)}
    for key, value in state.items():
        if key in ("steps", "lr"):
            continue
        if key not in expected:
            refuse(f"{OPTIMIZER_PREFIX}{key}", f"absent: it is no part of {optimizer}'s state", "present")
        if not (isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.shape == expected[key]):
            shown = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else value
            refuse(f"{OPTIMIZER_PREFIX}{key}", f"a float array of shape {expected[key]}", shown)
    for name in names:
        present = [i for i in range(len(shapes)) if f"{name}.{i}" in state]
        if present and len(present) != len(shapes):
            absent = sorted(set(range(len(shapes))) - set(present))
            refuse(
                f"{OPTIMIZER_PREFIX}{name}.*", f"one array per parameter (0 to {len(shapes) - 1})", f"missing {absent}"
            )


def model_from_checkpoint(path, backend="numpy", dtype=None, **options):
    """Rebuild the model a checkpoint describes and load its weights: (model, meta).

    options go to LeNet5 (fused, input_grad): how to compute, which a checkpoint does not fix."""
    state, meta, _ = load_checkpoint(path)
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


# ---------------------------------------------------------------------------------------------------------
# The safetensors format

CHECKPOINT_FORMATS = {"npz": ".npz", "safetensors": ".safetensors"}  # format -> the file extension it is read by


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


def _load_safetensors(path):
    """load_checkpoint for a .safetensors file: (state_dict, meta, optimizer_state)."""
    from .safetensors_io import read_safetensors

    arrays, metadata = read_safetensors(path, what="checkpoint")
    if META_KEY not in metadata:
        raise LenetError(f"checkpoint {path}: not a lenet checkpoint (no {META_KEY} in its __metadata__)")
    meta = _parse_meta(metadata[META_KEY], path)  # the same checks as an .npz checkpoint's metadata
    _check_meta(meta, path)
    optimizer_state = {
        k[len(OPTIMIZER_PREFIX) :]: arrays.pop(k) for k in list(arrays) if k.startswith(OPTIMIZER_PREFIX)
    }
    return arrays, meta, optimizer_state
