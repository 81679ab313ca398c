"""What a checkpoint must be before lenet reads it: a checkpoint is a file from anywhere.

An .npz is checked before it is read: the zip's directory first (the entry names LeNet-5 has, plain zip features,
sizes a LeNet-5 can need), then each .npy header (dtype and shape against the architecture), and only then the data.
The metadata JSON (of either format) is bounded in size, nesting and digits, and the fields that are used are checked
for type and range. Anything else is one LenetError. lenet/checkpoint.py reads and writes the format through these
checks; lenet/resume.py checks what --resume takes from a last.npz on top of them.
"""

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

from .data import DATASETS
from .errors import LenetError, one_line, short
from .model import ACTIVATIONS, DTYPES, NUM_CLASSES, POOLS, LeNet5
from .optim import OPTIMIZERS

# The entries of a checkpoint besides the weights: the metadata JSON, and the optimizer's state under a prefix.
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


def read_npz(path):
    """The arrays of the .npz checkpoint at `path` by entry name, the metadata's text under META_KEY among them.

    Nothing is decompressed or allocated beyond what a LeNet-5 checkpoint can hold: see the module's docstring
    for the order of the checks.
    """
    path = Path(path)
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
            f"checkpoint {path}: not a lenet checkpoint (not a readable .npz file: {one_line(e)})"
        ) from None
    return arrays


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
def parameter_shapes():
    """[(name, shape)] of LeNet-5's parameters in order (the optimizer's state arrays follow that order)."""
    return [(name, tuple(p.shape)) for name, p in LeNet5(dtype="float64").named_parameters()]


@functools.cache
def _known_entries():
    """{entry name in the zip: (key, kind, shape)} of everything a lenet checkpoint may hold."""
    entries = {f"{name}.npy": (name, "float", shape) for name, shape in parameter_shapes()}
    entries[f"{META_KEY}.npy"] = (META_KEY, "text", ())
    entries[f"{OPTIMIZER_PREFIX}steps.npy"] = (f"{OPTIMIZER_PREFIX}steps", "integer", ())
    entries[f"{OPTIMIZER_PREFIX}lr.npy"] = (f"{OPTIMIZER_PREFIX}lr", "float", ())
    for state in sorted({name for optimizer in OPTIMIZERS.values() for name in optimizer.state_names}):
        for i, (_, shape) in enumerate(parameter_shapes()):
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
        where = f"checkpoint {path}: entry {short(name)}"
        if name not in known:
            weights = ", ".join(name for name, _ in parameter_shapes())
            raise LenetError(
                f"checkpoint {path}: not a lenet checkpoint: unexpected entry {short(name)} "
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
            raise LenetError(f"{where} has shape {short(found_shape)}, expected {shape}")
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


def parse_meta(text, path):
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
    if nested_deeper_than(meta, MAX_META_DEPTH):
        raise LenetError(f"checkpoint {path}: its metadata is nested more than {MAX_META_DEPTH} deep")
    return meta


def nested_deeper_than(data, limit):
    """Whether parsed JSON nests objects and lists more than `limit` deep (a top-level object is 1 deep)."""
    stack = [(data, 1)]
    while stack:  # not recursive: the depth is what is being checked
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def check_meta(meta, path):
    """Type and range of each metadata field that lenet uses, where present."""

    def refuse(field, wanted):
        raise LenetError(f"checkpoint {path}: metadata field {field} must be {wanted}, not {short(_get(meta, field))}")

    if "lenet_version" in meta and not isinstance(meta["lenet_version"], str):
        refuse("lenet_version", "a string")
    if "architecture" in meta:
        arch = meta["architecture"]
        if not isinstance(arch, dict):
            refuse("architecture", "an object")
        unknown = [k for k in arch if k not in ("activation", "pool", "seed")]
        if unknown:
            raise LenetError(
                f"checkpoint {path}: unknown architecture options {', '.join(map(short, unknown))} "
                "(lenet's are activation, pool and seed)"
            )
        if "activation" in arch and (not isinstance(arch["activation"], str) or arch["activation"] not in ACTIVATIONS):
            refuse("architecture.activation", f"one of {', '.join(ACTIVATIONS)}")
        if "pool" in arch and (not isinstance(arch["pool"], str) or arch["pool"] not in POOLS):
            refuse("architecture.pool", f"one of {', '.join(POOLS)}")
        if "seed" in arch and not is_int(arch["seed"], 0):
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
    # Epoch 0 is the initialization, which the epoch records keep (lenet/records.py): not yet validated, so val_acc null
    if "epoch" in meta and not is_int(meta["epoch"], 0):
        refuse("epoch", "a whole number >= 0")
    if "val_acc" in meta and not (is_fraction(meta["val_acc"]) or meta["val_acc"] is None and meta.get("epoch") == 0):
        refuse("val_acc", "a number from 0 to 1")


def is_int(value, low=None, high=None):
    """An int (not a bool, which Python counts as one) within [low, high]."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )


def is_number(value, low=None, high=None):
    """A finite int or float (not a bool) within [low, high]."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )


def is_fraction(value):
    return is_number(value, 0, 1)


def _get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree
