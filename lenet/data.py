"""The data: IDX files, the Fashion-MNIST and MNIST data sets, a train/validation split, mini-batches.

Shapes: N examples, H/W image height and width. `load_dataset` gives images as float32 (N, 1, H, W)
scaled to [0, 1] (H = W = 28 for both data sets) and labels as int64 (N,), as NumPy arrays: the caller
moves them to the GPU once, and `iterate_batches` then slices them where they live.

Where the files are looked for; the first folder that holds all four files wins:
  1. `data_dir` (--data-dir) when given: the only place looked, and missing files are downloaded into it;
  2. $LENET_DATA/<name>, then $LENET_DATA/<TorchName>/raw;
  3. ./data/<name>, then ./data/<TorchName>/raw;
  4. the system's copy, /usr/share/datasets/fashion-mnist for Fashion-MNIST (Debian's dataset-fashion-mnist);
  5. the download cache, $XDG_CACHE_HOME/lenet/<name> (by default ~/.cache/lenet/<name>).
<TorchName> is torchvision's name for the data set (FashionMNIST, MNIST): `datasets.FashionMNIST(root="data",
download=True)`, as in the PyTorch quickstart, leaves the files in ./data/FashionMNIST/raw, and they are used
from there rather than downloaded again. If none has them they are downloaded into the cache from the
mirrors torchvision uses. A file may sit there gzipped (name.gz) or raw (name without .gz). Every file is
checked against the SHA-256 of its decompressed bytes when it is downloaded and again whenever it is loaded.

`FashionMNIST` and `MNIST` at the end of this module are the same data as map-style data sets, the way
torchvision offers them, for a PyTorch user's DataLoader.

Whatever a file or a server claims, memory and time stay bounded: files are read and downloads written as
streams, decompressed and hashed in chunks, held to the published sizes of the files (or to the size an
IDX header declares, up to MAX_IDX_BYTES), and a download has DOWNLOAD_DEADLINE_S per file.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import io
import math
import operator
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backend import get_array_module
from .errors import LenetError
from .files import atomic_write

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
DOWNLOAD_TIMEOUT_S = 30  # for connecting and for each read
DOWNLOAD_DEADLINE_S = 900  # for a whole file, however the server paces it
DOWNLOAD_CHUNK_BYTES = 1 << 16


# ---------------------------------------------------------------------------------------------------------
# IDX files


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
            if on_disk > _gzip_bound(limit):
                raise LenetError(
                    f"{path}: {on_disk} bytes of gzip, more than any gzip stream of the {limit} bytes "
                    f"{'this file has' if size is not None else 'lenet reads from an IDX file'} can take"
                )
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _read_idx_stream(stream, path, size, sha256)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # a cut stream is an EOFError
            raise LenetError(f"{path}: corrupt gzip stream: {_one_line(e)}") from None
        except OSError as e:
            raise LenetError(f"{path}: cannot read it: {_one_line(e.strerror or e)}") from None


def _gzip_bound(size):
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
        _check_digest(digest.hexdigest(), sha256, source)
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


def _check_digest(actual, expected, source):
    if actual != expected:
        raise LenetError(
            f"{source}: SHA-256 of the decompressed data is {actual}, expected {expected} "
            "(a damaged file, or another data set's)"
        )


# ---------------------------------------------------------------------------------------------------------
# The data sets


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What lenet knows of a data set: its classes, its files and their checksums, where to get them.

    Tests build their own, with small files, their hashes and a mirror on 127.0.0.1.
    """

    name: str
    class_names: tuple
    sha256: dict  # file name as published (*.gz) -> SHA-256 of its DECOMPRESSED bytes
    mirrors: tuple  # base URLs, tried in order; a file's URL is mirror + file name
    system_dirs: tuple = ()  # folders where an operating system package installs the files
    hint: str = "pass --data-dir DIR, a folder with the four files"
    # Sizes of the published files: reading and downloading are held to them. Without them, a file may be
    # as large as its IDX header declares, up to MAX_IDX_BYTES.
    sizes: dict = None  # file name (*.gz) -> bytes of its decompressed IDX file, header included
    download_sizes: dict = None  # file name (*.gz) -> bytes of the .gz file as the mirrors serve it
    image_shape: tuple = (28, 28)  # (H, W) of every image; load_dataset refuses others
    torchvision_name: str = ""  # torchvision's class and folder name: its files sit in <root>/<this>/raw


# The file names of each split, as published (the folder may hold them gzipped or not).
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Both data sets have 60,000 training and 10,000 test images of 28x28 pixels: the same decompressed sizes.
IDX_SIZES = {
    "train-images-idx3-ubyte.gz": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte.gz": 8 + 60000,
    "t10k-images-idx3-ubyte.gz": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte.gz": 8 + 10000,
}

DATASETS = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        # An S3 website endpoint, which serves plain HTTP only: the checksums above are what vouch for the files.
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        hint="apt-get install dataset-fashion-mnist, or pass --data-dir DIR, a folder with the four files",
        torchvision_name="FashionMNIST",
        sizes=IDX_SIZES,
        # As published (each gzip header holds the file's name; Debian's copies are 24 bytes shorter).
        download_sizes={
            "train-images-idx3-ubyte.gz": 26421880,
            "train-labels-idx1-ubyte.gz": 29515,
            "t10k-images-idx3-ubyte.gz": 4422102,
            "t10k-labels-idx1-ubyte.gz": 5148,
        },
    ),
    "mnist": DatasetInfo(
        name="mnist",
        class_names=tuple(str(digit) for digit in range(10)),
        sha256={
            "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        # PyTorch's own copy first: the original site has answered 403 and 404 for years at a time.
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        torchvision_name="MNIST",
        sizes=IDX_SIZES,
        download_sizes={
            "train-images-idx3-ubyte.gz": 9912422,
            "train-labels-idx1-ubyte.gz": 28881,
            "t10k-images-idx3-ubyte.gz": 1648877,
            "t10k-labels-idx1-ubyte.gz": 4542,
        },
    ),
}


def get_dataset_info(dataset):
    """The DatasetInfo for a data set name (a DatasetInfo passes through unchanged)."""
    if isinstance(dataset, DatasetInfo):
        return dataset
    if dataset not in DATASETS:
        raise LenetError(f"unknown data set {dataset!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def default_cache_dir(name):
    """$XDG_CACHE_HOME/lenet/<name>, or ~/.cache/lenet/<name> when XDG_CACHE_HOME is unset."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "lenet" / name


def find_file(folder, name):
    """The path of file `name` (*.gz) in `folder`, gzipped or raw (name without .gz); None if neither."""
    for candidate in (name, name.removesuffix(".gz")):
        path = Path(folder) / candidate
        if path.is_file():
            return path
    return None


def find_dataset(dataset="fashion-mnist", data_dir=None, download=True, cache_dir=None):
    """The folder that holds all files of `dataset` (a name or a DatasetInfo), downloading them if need be.

    Looks in the order of this module's docstring. Downloads go into `cache_dir`, by default `data_dir` if
    given, else the user's cache. Raises LenetError, one line, that lists where it looked and why the
    download failed. The files' checksums are checked when they are loaded, not here.
    """
    info = get_dataset_info(dataset)
    target = Path(cache_dir or data_dir or default_cache_dir(info.name)).expanduser()
    if data_dir is not None:
        # An explicit folder is the only one looked at: falling back elsewhere would hide a typo in it.
        places = [Path(data_dir).expanduser()]
    else:
        roots = [Path(os.environ["LENET_DATA"]).expanduser()] if os.environ.get("LENET_DATA") else []
        roots.append(Path.cwd() / "data")
        places = [folder for root in roots for folder in _dataset_folders(info, root)]
        places.extend(Path(folder) for folder in info.system_dirs)
    if target not in places:
        places.append(target)

    for folder in places:
        if not _missing_files(info, folder):
            return folder

    looked = "; ".join(_describe_folder(info, folder) for folder in places)
    if not download:
        reason = "downloading is turned off"
    else:
        try:
            download_dataset(info, target)
            return target
        except LenetError as e:
            reason = f"the download into {target} failed: {e}"
    raise LenetError(f"{info.name} data not found (looked in: {looked}) and {reason}; to get the files: {info.hint}")


def _missing_files(info, folder):
    return [name for name in info.sha256 if find_file(folder, name) is None]


def _describe_folder(info, folder):
    if not folder.is_dir():
        return f"{folder} (no such folder)"
    missing = _missing_files(info, folder)
    if len(missing) == len(info.sha256):
        return f"{folder} (none of the files)"
    return f"{folder} (missing {', '.join(missing)})"


def download_dataset(info, folder):
    """Download the files of `info` that `folder` lacks, each from the first mirror that gives good data."""
    for name, sha256 in info.sha256.items():
        if find_file(folder, name) is None:
            size = (info.sizes or {}).get(name)
            download_file(
                [mirror + name for mirror in info.mirrors],
                Path(folder) / name,
                sha256,
                max_bytes=_download_cap(info, name),
                size=size,
            )


def _download_cap(info, name):
    """The most bytes to take from a server for file `name`: the published size with some slack for a
    mirror that recompressed it, else the most that any gzip stream of the file's content can take."""
    published = (info.download_sizes or {}).get(name)
    if published is not None:
        return published + published // 8 + (64 << 10)
    return _gzip_bound((info.sizes or {}).get(name) or MAX_IDX_BYTES)


def download_file(urls, dest, sha256, max_bytes=None, size=None):
    """Fetch the first of `urls` whose content checks out against `sha256` and write it to `dest`.

    Each body is streamed into a temporary file beside `dest` and hashed (decompressed) as it arrives; at
    most `max_bytes` are taken (default: any gzip of an IDX file lenet reads), the decompressed data must
    be `size` bytes when given, and a whole file gets DOWNLOAD_DEADLINE_S however slowly the server sends
    it. The temporary file is renamed to `dest` only once its SHA-256 matches, so a broken, endless or
    interrupted download never lands there.
    """
    dest = Path(dest)
    max_bytes = _gzip_bound(MAX_IDX_BYTES) if max_bytes is None else max_bytes
    created = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]
    errors = []
    for url in urls:
        try:
            _download(url, dest, sha256, max_bytes, size)
            return
        except LenetError as e:
            errors.append(str(e))
        except OSError as e:  # writing: a read-only cache, a full disk (network errors are LenetErrors)
            raise LenetError(f"{dest}: cannot write it: {_one_line(e)}") from None
    for folder in created:  # deepest first; only the empty folders this call made
        with contextlib.suppress(OSError):
            folder.rmdir()
    raise LenetError(f"{dest.name}: " + ("; ".join(errors) or "no mirror to download it from"))


def _download(url, dest, sha256, max_bytes, size):
    """Stream `url` into `dest` through a temporary file; LenetError for any failure of the server or data."""
    with _Deadline(DOWNLOAD_DEADLINE_S, url) as deadline:
        response = deadline.call(lambda: _open_url(url, deadline))
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise LenetError(f"{url}: the server announces {total} bytes, more than the {max_bytes} expected")
            digest = _DecompressedDigest(url, size if size is not None else MAX_IDX_BYTES)
            received = 0
            with (
                atomic_write(dest, "wb") as f,
                tqdm(total=total, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar,
            ):
                while chunk := deadline.call(lambda: response.read1(DOWNLOAD_CHUNK_BYTES)):
                    received += len(chunk)
                    if received > max_bytes:
                        raise LenetError(f"{url}: the body goes on past {max_bytes} bytes, more than expected")
                    digest.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
                    deadline.check(received, total)
                deadline.check(received, total)  # an end of the body can be the deadline's cut
                # http.client returns a short body without complaint when the server closes early: check it here.
                if total is not None and received != total:
                    raise LenetError(f"{url}: truncated download: received {received} of {total} bytes")
                _check_digest(digest.hexdigest(), sha256, source=url)  # else the temporary file goes


def _open_url(url, deadline):
    """The HTTP response for `url`, through an opener whose connections `deadline` can cut."""
    opener = urllib.request.build_opener(_DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline))
    return opener.open(url, timeout=max(0.001, min(DOWNLOAD_TIMEOUT_S, deadline.left())))


class _Deadline:
    """An overall time limit for one download, whatever the server does.

    A per-read socket timeout cannot bound a server that sends one byte just before each timeout, in the
    body or in its headers. So a timer shuts the connection's socket down when the time is up: the read
    blocked on it returns at once, and `call` turns what follows into one LenetError that says why.
    """

    def __init__(self, seconds, url):
        self.seconds, self.url = seconds, url
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()

    def left(self):
        return self.end - time.monotonic()

    def _expire(self):
        self.expired = True
        for sock in list(self._sockets):
            self._cut(sock)

    @staticmethod
    def _cut(sock):
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, under any TLS layer

    def watch(self, http_class):
        """A factory of http_class connections whose sockets this deadline can cut once connected."""

        def make(*args, **kwargs):
            conn = http_class(*args, **kwargs)
            connect = conn.connect

            def connect_and_watch():
                connect()
                self._sockets.append(conn.sock)
                if self.expired:  # the timer fired while connecting
                    self._cut(conn.sock)

            conn.connect = connect_and_watch
            return conn

        return make

    def check(self, received=0, total=None):
        if self.expired or time.monotonic() > self.end:
            of = f" of {total}" if total is not None else ""
            raise LenetError(
                f"{self.url}: not finished after {self.seconds} s (received {received}{of} bytes); "
                "the server is too slow or stalled"
            )

    def call(self, read):
        """read(), with a network failure (or the cut of an expired deadline) as one LenetError."""
        try:
            return read()
        except urllib.error.HTTPError as e:
            e.close()  # it holds the response body open
            raise LenetError(f"{self.url}: HTTP {e.code} {_one_line(e.reason)}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            self.check()
            reason = e.reason if isinstance(e, urllib.error.URLError) else f"{type(e).__name__}: {e}"
            raise LenetError(f"{self.url}: {_one_line(reason)}") from None


class _DeadlineMixin:
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(self.deadline.watch(http_class), req, **kwargs)


class _DeadlineHTTPHandler(_DeadlineMixin, urllib.request.HTTPHandler):
    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline


class _DeadlineHTTPSHandler(_DeadlineMixin, urllib.request.HTTPSHandler):
    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline


class _DecompressedDigest:
    """The SHA-256 of the decompressed bytes of a body fed piece by piece, as hashlib's update/hexdigest.

    A gzip body (told by its magic) is decompressed in bounded pieces and never kept; more than `limit`
    decompressed bytes is refused as soon as it is seen. A body that is not gzip is hashed as it is.
    """

    def __init__(self, source, limit):
        self.source, self.limit = source, limit
        self._sha = hashlib.sha256()
        self._head = b""  # the first bytes, until there are two to tell gzip by
        self._gzipped = None
        self._member = None
        self._size = 0

    def update(self, data):
        if self._gzipped is None:
            self._head += data
            if len(self._head) < len(GZIP_MAGIC):
                return
            data, self._head = self._head, b""
            self._gzipped = data.startswith(GZIP_MAGIC)
        if not self._gzipped:
            self._add(data)
            return
        try:
            while data:  # a gzip file may hold several members, one after the other
                if self._member is None or self._member.eof:
                    self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._add(self._member.decompress(data, IDX_READ_CHUNK_BYTES))
                data = self._member.unused_data if self._member.eof else self._member.unconsumed_tail
        except zlib.error as e:
            raise LenetError(f"{self.source}: corrupt gzip stream: {_one_line(e)}") from None

    def _add(self, data):
        self._size += len(data)
        if self._size > self.limit:
            raise LenetError(f"{self.source}: the data unpacks to more than the {self.limit} bytes expected")
        self._sha.update(data)

    def hexdigest(self):
        if self._gzipped is None:  # fewer than two bytes in all
            self._add(self._head)
        elif self._gzipped and not self._member.eof:
            raise LenetError(f"{self.source}: corrupt gzip stream: it ends before the end of its compressed data")
        return self._sha.hexdigest()


def _one_line(message):
    return " ".join(str(message).split())


def load_dataset(dataset="fashion-mnist", split="train", data_dir=None, download=True, cache_dir=None):
    """Load one split of a data set, every file checked against its SHA-256.

    Returns (images, labels, class_names): images float32 (N, 1, H, W) in [0, 1], labels int64 (N,),
    class_names a tuple of strings indexed by label.
    """
    info = get_dataset_info(dataset)
    if split not in SPLIT_FILES:
        raise LenetError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_FILES)}")
    folder = find_dataset(info, data_dir=data_dir, download=download, cache_dir=cache_dir)
    images_name, labels_name = SPLIT_FILES[split]
    images, images_path = _load_checked(info, folder, images_name)
    labels, labels_path = _load_checked(info, folder, labels_name)

    if images.ndim != 3 or images.dtype != np.uint8:
        raise LenetError(
            f"{images_path}: expected uint8 images of shape (N, H, W), found {images.dtype} of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise LenetError(
            f"{labels_path}: expected integer labels of shape (N,), found {labels.dtype} of shape {labels.shape}"
        )
    if info.image_shape is not None and images.shape[1:] != tuple(info.image_shape):
        h, w = info.image_shape
        raise LenetError(
            f"{images_path}: images of {images.shape[1]}x{images.shape[2]} pixels; {info.name} has {h}x{w}"
        )
    if len(images) != len(labels):
        raise LenetError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    num_classes = len(info.class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise LenetError(
            f"{labels_path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    images = images.astype(np.float32)[:, None]  # (N, 1, H, W)
    images /= np.float32(255)  # in place: the float32 copy is the largest thing loading makes
    return images, labels.astype(np.int64), info.class_names


def _load_checked(info, folder, name):
    path = find_file(folder, name)
    if path is None:  # it vanished since find_dataset saw it
        raise LenetError(f"{Path(folder) / name}: no such file")
    return read_idx(path, size=(info.sizes or {}).get(name), sha256=info.sha256[name]), path


# ---------------------------------------------------------------------------------------------------------
# Splits and mini-batches


def train_val_split(n, val_fraction=0.2, seed=0):
    """Split range(n) at random into (train_idx, val_idx), sorted int64 arrays.

    The validation part has round(n * val_fraction) examples. The same seed gives the same split,
    whatever else has drawn random numbers.
    """
    if not 0 < val_fraction < 1:  # also refuses NaN
        raise LenetError(f"the validation fraction must lie strictly between 0 and 1, not {val_fraction}")
    num_val = round(n * val_fraction)
    if num_val == 0 or num_val == n:
        raise LenetError(
            f"a validation fraction of {val_fraction} of {n} examples leaves "
            f"{'no validation' if num_val == 0 else 'no training'} examples"
        )
    order = np.random.default_rng(seed).permutation(n)
    # Sorted, so that reading the examples in index order walks memory in order.
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def num_batches(n, batch_size):
    """How many mini-batches `iterate_batches` yields for n examples (the last one may be partial)."""
    batch_size = _check_batch_size(batch_size)
    return -(-n // batch_size)


def iterate_batches(images, labels, batch_size, rng=None):
    """Yield (xb, yb) mini-batches of up to batch_size examples, the last partial batch included.

    images (N, ...) and labels (N,) are NumPy or CuPy arrays; the batches stay where the arrays live.
    With a np.random.Generator `rng`, each call is one epoch in a new random order: the permutation is
    drawn on the host (so a seed gives the same order on either backend) and moved to the device once.
    Without `rng` the batches are contiguous slices in order (views, no copies).
    """
    batch_size = _check_batch_size(batch_size)
    n = len(images)
    if len(labels) != n:
        raise LenetError(f"{n} images but {len(labels)} labels")
    xp = get_array_module(images)
    if get_array_module(labels) is not xp:
        raise TypeError("images and labels must live on the same backend")
    order = None if rng is None else xp.asarray(rng.permutation(n))
    # The checks and the draw above run at the call; the generator below runs as the batches are taken.
    return _batches(xp, images, labels, batch_size, order)


def _batches(xp, images, labels, batch_size, order):
    for start in range(0, len(images), batch_size):
        if order is None:
            yield images[start : start + batch_size], labels[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield xp.take(images, idx, axis=0), xp.take(labels, idx, axis=0)


def _check_batch_size(batch_size):
    batch_size = operator.index(batch_size)  # TypeError for 2.5 or "32"
    if batch_size < 1:
        raise LenetError(f"the batch size must be at least 1, not {batch_size}")
    return batch_size


# ---------------------------------------------------------------------------------------------------------
# Augmentation


# Whether a mirror image is still an example of its class, for every class of the data set: Fashion-MNIST's
# clothes are left-right symmetric; a mirrored 2, 3 or 7 is no digit.
AUGMENT_MIRROR = {"fashion-mnist": True, "mnist": False}


def augment(images, rng, max_shift=1, flip=True, affine=False):
    """A randomly shifted (up to max_shift pixels each way, zeros shifted in), mirrored and distorted copy of images.

    One pixel, not two: with two-pixel shifts LeNet-5 underfits (README, "Results on Fashion-MNIST").
    `flip` mirrors half of the images left-right: only for data sets whose classes all stay themselves in a
    mirror (AUGMENT_MIRROR). `affine` adds a small random rotation, scaling and shear (`random_affine`).

    images (N, C, H, W) on either backend; the random draws come from the host Generator `rng` (one
    shift and one coin per image, then with `affine` three numbers per image) and move to the device once,
    so a seed gives the same result on both. The coins are drawn even when `flip` is off, so that turning
    mirrors off changes the mirrors only, not the shifts or the next epoch's order.
    """
    xp = get_array_module(images)
    n, c, h, w = images.shape
    dy = xp.asarray(rng.integers(-max_shift, max_shift + 1, n))
    dx = xp.asarray(rng.integers(-max_shift, max_shift + 1, n))
    coins = rng.random(n) < 0.5
    mirror = xp.asarray(coins) if flip else xp.zeros(n, dtype=bool)
    p = max_shift
    padded = xp.zeros((n, c, h + 2 * p, w + 2 * p), dtype=images.dtype)
    padded[:, :, p : p + h, p : p + w] = images
    rows = xp.arange(h)[None, :] + p - dy[:, None]  # (N, H): output row r reads padded row r + p - dy
    cols = xp.arange(w)[None, :] - dx[:, None]  # (N, W): the column of the shifted image, then mirrored
    cols = xp.where(mirror[:, None], w - 1 - cols, cols) + p
    batch = xp.arange(n)[:, None, None, None]
    channel = xp.arange(c)[None, :, None, None]
    out = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    return random_affine(out, rng) if affine else out


def random_affine(images, rng, max_rotation=10.0, scale=(0.9, 1.1), max_shear=0.1, chunk=2048):
    """images (N, C, H, W) each rotated, scaled and sheared about its centre by a small random amount of its own.

    The distortions of LeNet-5's paper, which made its best MNIST results: a handwritten digit stays the same
    digit when it is drawn a little tilted, larger, smaller or slanted. Rotation up to `max_rotation` degrees
    either way, a scale factor drawn from `scale`, a horizontal shear up to `max_shear` either way (x moves by
    shear * y), all uniform. The draws come from the host Generator `rng`: all N angles, then all N scales,
    then all N shears, whatever `chunk` is, so an rng state gives one result on either backend.
    """
    inverse = random_affine_matrices(rng, len(images), max_rotation, scale, max_shear)
    return affine_warp(images, inverse, chunk=chunk)


def random_affine_matrices(rng, n, max_rotation=10.0, scale=(0.9, 1.1), max_shear=0.1):
    """n random distortions as the 2x2 matrices (n, 2, 2) float64 that map an OUTPUT pixel back to the input.

    Coordinates are (x, y) = (column, row) offsets from the image centre. The forward map is
    zoom * rotation @ shear; `affine_warp` needs its inverse, because it asks, for each output pixel,
    where in the input that pixel comes from.
    """
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation, n))
    zoom = rng.uniform(scale[0], scale[1], n)
    shear = rng.uniform(-max_shear, max_shear, n)
    cos, sin, one, zero = np.cos(angle), np.sin(angle), np.ones(n), np.zeros(n)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    shearing = np.stack([np.stack([one, shear], -1), np.stack([zero, one], -1)], -2)  # (n, 2, 2)
    forward = zoom[:, None, None] * (rotation @ shearing)
    return np.linalg.inv(forward)


def affine_warp(images, inverse, chunk=2048):
    """images (N, C, H, W) resampled through the per-image matrices `inverse` (N, 2, 2), bilinearly.

    Output pixel (row r, column c), as the offset (x, y) = (c - cx, r - cy) from the centre (cx, cy),
    reads the input at centre + inverse @ (x, y), between the four nearest pixels; outside the image
    is zero, as in `augment`'s shifts. The identity matrix gives the images back exactly. The same
    array module and dtype as `images`; the arithmetic runs in float32, or float64 for float64 images.
    `chunk` images at a time bounds the memory of the index and weight arrays.
    """
    xp = get_array_module(images)
    n, c, h, w = images.shape
    if tuple(inverse.shape) != (n, 2, 2):
        raise ValueError(f"inverse has shape {tuple(inverse.shape)}, expected ({n}, 2, 2)")
    ftype = np.result_type(images.dtype, np.float32)
    inverse = xp.asarray(inverse, dtype=ftype)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y_out = xp.arange(h, dtype=ftype)[None, :, None] - cy  # (1, H, 1)
    x_out = xp.arange(w, dtype=ftype)[None, None, :] - cx  # (1, 1, W)
    out = xp.empty_like(images)
    for start in range(0, n, chunk):
        part, m = images[start : start + chunk], inverse[start : start + chunk]
        k = len(part)
        # Where each output pixel reads, (k, H, W). More than a pixel outside there are only zeros: clipping
        # there keeps the indices inside a 1-pixel frame of zeros without changing any value.
        x_in = m[:, 0, 0, None, None] * x_out + m[:, 0, 1, None, None] * y_out + cx
        y_in = m[:, 1, 0, None, None] * x_out + m[:, 1, 1, None, None] * y_out + cy
        x_in, y_in = xp.clip(x_in, -1, w), xp.clip(y_in, -1, h)
        x0, y0 = xp.floor(x_in), xp.floor(y_in)
        wx, wy = (x_in - x0)[:, None], (y_in - y0)[:, None]  # (k, 1, H, W): the weights of the right/lower pixels
        col, row = x0.astype(np.int64)[:, None] + 1, y0.astype(np.int64)[:, None] + 1  # +1: into the frame
        framed = xp.zeros((k, c, h + 3, w + 3), dtype=ftype)  # 1 pixel of zeros before, 2 after (for x0 + 1 = w + 1)
        framed[:, :, 1 : h + 1, 1 : w + 1] = part
        batch = xp.arange(k)[:, None, None, None]
        channel = xp.arange(c)[None, :, None, None]
        top = (1 - wx) * framed[batch, channel, row, col] + wx * framed[batch, channel, row, col + 1]
        bottom = (1 - wx) * framed[batch, channel, row + 1, col] + wx * framed[batch, channel, row + 1, col + 1]
        out[start : start + k] = (1 - wy) * top + wy * bottom  # (k, C, H, W)
    return out


# ---------------------------------------------------------------------------------------------------------
# The data sets as a PyTorch user knows them (torchvision.datasets.FashionMNIST and MNIST)


def _dataset_folders(info, root):
    """Where the files of `info` may sit under `root`: lenet's <root>/<name>, torchvision's <root>/<TorchName>/raw."""
    folders = [root / info.name]
    if info.torchvision_name:
        folders.append(root / info.torchvision_name / "raw")
    return folders


class IDXDataset:
    """A map-style data set over one split, read with `load_dataset`: a torch DataLoader takes it as it is.

    As torchvision's: `.data` uint8 (N, H, W), the pixels as stored; `.targets` int64 (N,); `.classes` the
    class names, indexed by label; `ds[i]` is (image, label) with image float32 (1, H, W) in [0, 1], the
    same numbers `load_dataset` gives (or `transform(image)`), and label an int (or `target_transform(label)`).
    Arrays rather than PIL images and tensors, since lenet does not import torch; DataLoader's default
    collate turns them into tensors.

    root None: the search of this module's docstring, downloading into the cache if need be. root given:
    the files in root, root/<name> or root/<TorchName>/raw; if none has them all, they are downloaded
    into root (download=True) or it is a LenetError saying they are not there.
    """

    dataset = None  # the key in DATASETS, set by each subclass

    def __init__(self, root=None, train=True, download=True, transform=None, target_transform=None):
        info = get_dataset_info(self.dataset)
        self.root = None if root is None else Path(root).expanduser()
        self.train = bool(train)
        self.transform, self.target_transform = transform, target_transform
        folder = None if self.root is None else _folder_in_root(info, self.root, download)
        images, labels, class_names = load_dataset(
            info, "train" if self.train else "test", data_dir=folder, download=download
        )
        # Back to the stored bytes: k / 255 in float32, times 255, rounds to k exactly for every k in 0..255.
        images *= np.float32(255)
        self.data = np.rint(images[:, 0], out=images[:, 0]).astype(np.uint8)  # (N, H, W)
        self.targets = labels  # (N,) int64
        self.classes = list(class_names)

    @property
    def class_to_idx(self):
        return {name: i for i, name in enumerate(self.classes)}

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        index = operator.index(index)  # one example per call, as torchvision's; a slice is a TypeError
        image = self.data[index][None].astype(np.float32) / np.float32(255)  # (1, H, W), as load_dataset scales
        label = int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __repr__(self):
        lines = [
            f"Dataset {type(self).__name__}",
            f"    Number of datapoints: {len(self)}",
            f"    Root location: {self.root if self.root is not None else '(searched, see lenet.data)'}",
            f"    Split: {'Train' if self.train else 'Test'}",
        ]
        return "\n".join(lines)


class FashionMNIST(IDXDataset):
    """Fashion-MNIST, 60,000 training and 10,000 test images of 10 kinds of clothes (see IDXDataset)."""

    dataset = "fashion-mnist"


class MNIST(IDXDataset):
    """MNIST, 60,000 training and 10,000 test images of handwritten digits (see IDXDataset)."""

    dataset = "mnist"


def _folder_in_root(info, root, download):
    """The folder under a data set's `root` that holds all of info's files; else root, to download into."""
    candidates = [root, *_dataset_folders(info, root)]
    for folder in candidates:
        if not _missing_files(info, folder):
            return folder
    if not download:
        looked = "; ".join(_describe_folder(info, folder) for folder in candidates)
        raise LenetError(
            f"{info.name} data is not in {root} (looked in: {looked}); pass download=True to download it there"
        )
    return root
