"""safetensors files, the format the Hugging Face ecosystem loads, read and written with the `safetensors` package.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and
byte range, and an optional `__metadata__` object of string values), then the tensors' bytes. Nothing in
it is code, so loading it runs nothing, as with lenet's .npz files.

The package is optional (pip install 'lenet[safetensors]') and imported only when a safetensors file is
read or written; without it that is a LenetError that says what to install. Before the package sees a
file, its size and its header's are checked against limits far above any LeNet-5's, and the header is
parsed here, so a crafted file costs bounded memory and ends in one LenetError line, never a traceback.
"""

import json
import struct
from pathlib import Path

import numpy as np

from .errors import LenetError, one_line
from .files import atomic_write

# A LeNet-5 checkpoint with Adam's two buffers in float64 is under 2 MB, its header a few KB.
MAX_FILE_BYTES = 256 << 20
MAX_HEADER_BYTES = 16 << 20
HEADER_LENGTH_BYTES = 8
# The element types lenet reads: the numeric ones numpy has (no bfloat16, no float8, no complex).
DTYPES = ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64")


def _safetensors_numpy():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as e:
        raise LenetError(
            f"safetensors files need the safetensors package ({e}); pip install 'lenet[safetensors]'"
        ) from None
    return safetensors


def write_safetensors(path, tensors, metadata):
    """Write {name: array} and metadata {str: str} to `path` as a safetensors file, atomically."""
    safetensors = _safetensors_numpy()
    tensors = {
        name: np.asarray(value, order="C") for name, value in tensors.items()
    }  # not ascontiguousarray: 0-d stays 0-d
    data = safetensors.numpy.save(tensors, metadata=metadata)
    with atomic_write(path) as f:
        f.write(data)


def read_safetensors(path, what="file"):
    """Read a safetensors file: ({name: writable NumPy array}, metadata {str: str}).

    `what` names the file in error messages ("checkpoint" gives "checkpoint PATH: ...").
    """
    path = Path(path)
    source = f"{what} {path}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise LenetError(f"{source}: no such file") from None
    except OSError as e:
        raise LenetError(f"{source}: cannot read it: {e.strerror or e}") from None
    if not path.is_file():
        raise LenetError(f"{source}: not a file")
    if size > MAX_FILE_BYTES:
        raise LenetError(f"{source}: {size:,} bytes, more than the {MAX_FILE_BYTES:,} a lenet safetensors file may be")
    safetensors = _safetensors_numpy()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat
    except OSError as e:
        raise LenetError(f"{source}: cannot read it: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise LenetError(f"{source}: more than the {MAX_FILE_BYTES:,} bytes a lenet safetensors file may be")
    header = _parse_header(data, source)
    metadata = header.pop("__metadata__", None) or {}
    try:
        tensors = safetensors.numpy.load(data)
    except safetensors.SafetensorError as e:
        raise LenetError(f"{source}: not a valid safetensors file ({one_line(e)})") from None
    # The package's arrays are read-only views of `data`; an optimizer updates its buffers in place.
    return {name: np.array(value) for name, value in tensors.items()}, metadata


def _parse_header(data, source):
    """The JSON header of the safetensors bytes `data`, its size bounded and its fields checked."""
    if len(data) < HEADER_LENGTH_BYTES:
        raise LenetError(f"{source}: not a safetensors file: only {len(data)} bytes long")
    (length,) = struct.unpack("<Q", data[:HEADER_LENGTH_BYTES])
    if length > MAX_HEADER_BYTES:
        raise LenetError(
            f"{source}: not a lenet safetensors file: its header claims {length:,} bytes, "
            f"more than the {MAX_HEADER_BYTES:,} allowed"
        )
    if length > len(data) - HEADER_LENGTH_BYTES:
        raise LenetError(
            f"{source}: not a safetensors file, or a truncated one: its header claims {length:,} bytes, "
            f"but only {len(data) - HEADER_LENGTH_BYTES:,} follow"
        )
    try:
        header = json.loads(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting: RecursionError
        raise LenetError(f"{source}: not a safetensors file: its header is not JSON ({one_line(e)[:200]})") from None
    if not isinstance(header, dict):
        raise LenetError(f"{source}: not a safetensors file: its header is a JSON {type(header).__name__}")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise LenetError(f"{source}: its __metadata__ must map names to strings")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise LenetError(f"{source}: tensor {name!r} has no dtype, shape and data_offsets")
        if entry["dtype"] not in DTYPES:
            raise LenetError(
                f"{source}: tensor {name!r} has element type {entry['dtype']!r}; lenet reads {', '.join(DTYPES)}"
            )
    return header
