"""The IDX file format of MNIST and Fashion-MNIST, read as a stream whatever a file claims.

Layout: two zero bytes, the element type code, the number of dimensions D, then D big-endian uint32 sizes, then
the numbers, big-endian. A file may be gzipped (told by its magic, not its name). `read_idx` never reads a file
whole: its header is checked first, then its data is read, decompressed and hashed in chunks straight into the
array, held to the size its header declares (at most MAX_IDX_BYTES) or the published size of the file.
"""

import gzip
import hashlib
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import LenetError, one_line

# IDX element type codes (the third byte of the magic number); IDX stores numbers big-endian.
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
# Limits on what a file may claim about itself, checked before anything of that size is allocated or read.
# The largest file of either data set (the training images) is 47,040,016 bytes decompressed; a file whose
# size is published is held to that size exactly (DatasetInfo.sizes), any other IDX file to MAX_IDX_BYTES.
MAX_IDX_DIMS = 4
MAX_IDX_BYTES = 256 << 20
IDX_READ_CHUNK_BYTES = 1 << 20  # what a gzip stream is decompressed and hashed in
MAX_TRAILING_COUNT_BYTES = 1 << 20  # how far data after the declared end is counted before giving up


def read_idx(path, size=None, sha256=None):
    """Read an IDX file, raw or gzip-compressed, into a NumPy array of the shape its header declares.

    The file is read as a stream, never whole: its header is checked first (at most MAX_IDX_BYTES, or
    exactly `size` bytes decompressed when given), then its data is read, decompressed and hashed in
    chunks straight into the array. With `sha256` the SHA-256 of the decompressed bytes must match.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise LenetError(f"{path}: no such file") from None
    except OSError as e:
        raise LenetError(f"{path}: cannot read it: {e.strerror or e}") from None
    with f:
        try:
            on_disk = os.fstat(f.fileno()).st_size
            gzipped = f.read(2) == GZIP_MAGIC  # told by the magic, not the name
            f.seek(0)
            if not gzipped:
                return _read_idx_stream(f, path, size, sha256, on_disk=on_disk)
            limit = MAX_IDX_BYTES if size is None else size
            if on_disk > gzip_bound(limit):
                raise LenetError(
                    f"{path}: {on_disk} bytes of gzip, more than any gzip stream of the {limit} bytes "
                    f"{'this file has' if size is not None else 'lenet reads from an IDX file'} can take"
                )
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _read_idx_stream(stream, path, size, sha256)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # a cut stream is an EOFError
            raise LenetError(f"{path}: corrupt gzip stream: {one_line(e)}") from None
        except OSError as e:
            raise LenetError(f"{path}: cannot read it: {one_line(e.strerror or e)}") from None


def gzip_bound(size):
    """The most bytes a gzip stream of `size` decompressed bytes can take (stored blocks, generous headers)."""
    return size + size // 256 + (64 << 10)


def _read_idx_stream(f, source, size, sha256, on_disk=None):
    """The array of the IDX file read from the binary stream `f` (on_disk: its size, for a raw file)."""
    digest = hashlib.sha256()

    def read_header(n):
        data = f.read(n)
        digest.update(data)
        return data

    dtype, shape, header_bytes, total = _read_idx_header(read_header, source)
    if size is not None and total != size:
        raise LenetError(
            f"{source}: the IDX header declares shape {shape} of {dtype.name}, {total} bytes, "
            f"but the published file is {size} bytes (a damaged file, or another data set's)"
        )
    expected = total - header_bytes
    if on_disk is not None:  # a raw file: its size alone tells truncation or trailing data
        _check_data_length(source, shape, expected, on_disk - header_bytes)
    array = np.empty(math.prod(shape), dtype=dtype)
    view = memoryview(array.view(np.uint8))
    done = 0
    while done < expected:
        n = f.readinto(view[done : done + IDX_READ_CHUNK_BYTES])
        if not n:
            break
        digest.update(view[done : done + n])
        done += n
    if on_disk is None:
        found = done + (_count_rest(f) if done == expected else 0)
        _check_data_length(source, shape, expected, found, counted_to=MAX_TRAILING_COUNT_BYTES)
    if sha256 is not None:
        check_digest(digest.hexdigest(), sha256, source)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)  # machine byte order


def _read_idx_header(read, source):
    """(dtype, shape, header bytes, total bytes) of an IDX header, read by `read(n)`; LenetError if malformed.

    Layout: two zero bytes, the element type code, the number of dimensions D, then D big-endian uint32
    sizes. The total is checked against MAX_IDX_BYTES here, before anyone allocates it.
    """
    head = read(4)
    if len(head) < 4:
        raise LenetError(f"{source}: not an IDX file: only {len(head)} bytes long")
    if head[0] != 0 or head[1] != 0:
        raise LenetError(f"{source}: not an IDX file: its magic number starts with {head[:2].hex()}, not 0000")
    type_code, ndim = head[2], head[3]
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{code:02x} ({dtype.name})" for code, dtype in IDX_TYPES.items())
        raise LenetError(f"{source}: unknown IDX element type code 0x{type_code:02x}; known codes: {known}")
    if ndim == 0:
        raise LenetError(f"{source}: the IDX header declares 0 dimensions")
    if ndim > MAX_IDX_DIMS:
        raise LenetError(f"{source}: the IDX header declares {ndim} dimensions; lenet reads 1 to {MAX_IDX_DIMS}")
    sizes = read(4 * ndim)
    header_bytes = 4 + 4 * ndim
    if len(sizes) < 4 * ndim:
        raise LenetError(
            f"{source}: truncated: the IDX header declares {ndim} dimensions, "
            f"but the file ends after {4 + len(sizes)} bytes"
        )
    shape = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    dtype = IDX_TYPES[type_code]
    if 0 in shape:
        raise LenetError(f"{source}: the IDX header declares shape {shape}: a zero dimension, no data")
    total = header_bytes + math.prod(shape) * dtype.itemsize  # Python integers: no overflow
    if total > MAX_IDX_BYTES:
        raise LenetError(
            f"{source}: the IDX header declares shape {shape} of {dtype.name}, {total} bytes, "
            f"more than the {MAX_IDX_BYTES} bytes lenet reads from an IDX file"
        )
    return dtype, shape, header_bytes, total


def _count_rest(f):
    """How many bytes are left in stream `f`, counted up to just past MAX_TRAILING_COUNT_BYTES, none kept."""
    count = 0
    while count <= MAX_TRAILING_COUNT_BYTES and (chunk := f.read(IDX_READ_CHUNK_BYTES)):
        count += len(chunk)
    return count


def _check_data_length(source, shape, expected, found, counted_to=None):
    """LenetError unless found == expected; counted_to: where the count of trailing bytes stopped, if it did."""
    if found < expected:
        raise LenetError(f"{source}: truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        trailing = found - expected
        counted = f"more than {counted_to}" if counted_to is not None and trailing > counted_to else trailing
        raise LenetError(
            f"{source}: {counted} trailing bytes after the {expected} bytes of data "
            f"that the header declares (shape {shape})"
        )


def parse_idx(data, source="<bytes>"):
    """Parse the decompressed bytes of an IDX file held in memory; `source` names the file in error messages.

    The same checks as read_idx: a malformed header is a LenetError, never a ValueError or MemoryError.
    """
    dtype, shape, header_bytes, total = _read_idx_header(io.BytesIO(data).read, source)
    _check_data_length(source, shape, total - header_bytes, len(data) - header_bytes)
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_bytes).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in the machine's byte order


def check_digest(actual, expected, source):
    if actual != expected:
        raise LenetError(
            f"{source}: SHA-256 of the decompressed data is {actual}, expected {expected} "
            "(a damaged file, or another data set's)"
        )
