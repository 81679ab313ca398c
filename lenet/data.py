"""The data: IDX files, the Fashion-MNIST and MNIST data sets, a train/validation split, mini-batches.

Shapes: N examples, H/W image height and width. `load_dataset` gives images as float32 (N, 1, H, W)
scaled to [0, 1] (H = W = 28 for both data sets) and labels as int64 (N,), as NumPy arrays: the caller
moves them to the GPU once, and `iterate_batches` then slices them where they live.

Where the files are looked for; the first folder that holds all four files wins:
  1. `data_dir` (--data-dir) when given: the only place looked, and missing files are downloaded into it;
  2. $LENET_DATA/<name>;
  3. ./data/<name>;
  4. the system's copy, /usr/share/datasets/fashion-mnist for Fashion-MNIST (Debian's dataset-fashion-mnist);
  5. the download cache, $XDG_CACHE_HOME/lenet/<name> (by default ~/.cache/lenet/<name>).
If none has them they are downloaded into the cache from the mirrors torchvision uses. A file may sit
there gzipped (name.gz) or raw (name without .gz). Every file is checked against the SHA-256 of its
decompressed bytes when it is downloaded and again whenever it is loaded.
"""

import dataclasses
import gzip
import hashlib
import http.client
import math
import operator
import os
import sys
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
DOWNLOAD_TIMEOUT_S = 30
DOWNLOAD_CHUNK_BYTES = 1 << 16


# ---------------------------------------------------------------------------------------------------------
# IDX files


def read_idx(path):
    """Read an IDX file, raw or gzip-compressed, into a NumPy array of the shape its header declares."""
    path = Path(path)
    return parse_idx(_read_file(path), source=path)


def parse_idx(data, source="<bytes>"):
    """Parse the decompressed bytes of an IDX file; `source` names the file in error messages.

    Layout: two zero bytes, the element type code, the number of dimensions D, then D big-endian uint32
    sizes, then exactly prod(sizes) big-endian elements.
    """
    if len(data) < 4:
        raise LenetError(f"{source}: not an IDX file: only {len(data)} bytes long")
    if data[0] != 0 or data[1] != 0:
        raise LenetError(f"{source}: not an IDX file: its magic number starts with {data[:2].hex()}, not 0000")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{code:02x} ({dtype.name})" for code, dtype in IDX_TYPES.items())
        raise LenetError(f"{source}: unknown IDX element type code 0x{type_code:02x}; known codes: {known}")
    if ndim == 0:
        raise LenetError(f"{source}: the IDX header declares 0 dimensions")
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise LenetError(
            f"{source}: truncated: the IDX header declares {ndim} dimensions, but the file ends after {len(data)} bytes"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[type_code]
    count = math.prod(shape)
    expected, found = count * dtype.itemsize, len(data) - header_bytes
    if found < expected:
        raise LenetError(f"{source}: truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        raise LenetError(
            f"{source}: {found - expected} trailing bytes after the {expected} bytes of data "
            f"that the header declares (shape {shape})"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header_bytes).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in the machine's byte order


def _read_file(path):
    """The bytes of the file at `path`, decompressed if they are gzip (told by the magic, not the name)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LenetError(f"{path}: no such file") from None
    except OSError as e:
        raise LenetError(f"{path}: cannot read it: {e.strerror or e}") from None
    return _gunzip_if_gzip(data, source=path)


def _gunzip_if_gzip(data, source):
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut stream an EOFError
        raise LenetError(f"{source}: corrupt gzip stream: {_one_line(e)}") from None


def _check_sha256(data, expected, source):
    actual = hashlib.sha256(data).hexdigest()
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


# The file names of each split, as published (the folder may hold them gzipped or not).
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
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
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        hint="apt-get install dataset-fashion-mnist, or pass --data-dir DIR, a folder with the four files",
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
        places = []
        if os.environ.get("LENET_DATA"):
            places.append(Path(os.environ["LENET_DATA"]).expanduser() / info.name)
        places.append(Path.cwd() / "data" / info.name)
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
            download_file([mirror + name for mirror in info.mirrors], Path(folder) / name, sha256)


def download_file(urls, dest, sha256):
    """Fetch the first of `urls` whose content checks out against `sha256` and write it to `dest`.

    The download is held in memory (26 MB at most here) and checked before anything is written, and the
    write is atomic, so a broken or interrupted download never lands at `dest`.
    """
    errors = []
    for url in urls:
        try:
            data = _fetch(url, desc=dest.name)
            _check_sha256(_gunzip_if_gzip(data, source=url), sha256, source=url)
        except LenetError as e:
            errors.append(str(e))
            continue
        try:
            with atomic_write(dest, "wb") as f:
                f.write(data)
        except OSError as e:  # a read-only cache, a full disk
            raise LenetError(f"{dest}: cannot write it: {_one_line(e)}") from None
        return
    raise LenetError(f"{dest.name}: " + ("; ".join(errors) or "no mirror to download it from"))


def _fetch(url, desc):
    """The body of `url`, with a progress bar on stderr; LenetError for any failure or short body."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            chunks = []
            with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:
                while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response body open
        raise LenetError(f"{url}: HTTP {e.code} {_one_line(e.reason)}") from None
    except urllib.error.URLError as e:
        raise LenetError(f"{url}: {_one_line(e.reason)}") from None
    except (OSError, http.client.HTTPException) as e:  # a timeout or a dropped connection mid-body
        raise LenetError(f"{url}: {type(e).__name__}: {_one_line(e)}") from None
    data = b"".join(chunks)
    # http.client returns a short body without complaint when the server closes early: check it here.
    if total is not None and len(data) != total:
        raise LenetError(f"{url}: truncated download: received {len(data)} of {total} bytes")
    return data


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
    if len(images) != len(labels):
        raise LenetError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    num_classes = len(info.class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise LenetError(
            f"{labels_path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    images = images.astype(np.float32)[:, None] / np.float32(255)  # (N, 1, H, W)
    return images, labels.astype(np.int64), info.class_names


def _load_checked(info, folder, name):
    path = find_file(folder, name)
    if path is None:  # it vanished since find_dataset saw it
        raise LenetError(f"{Path(folder) / name}: no such file")
    data = _read_file(path)
    _check_sha256(data, info.sha256[name], source=path)
    return parse_idx(data, source=path), path


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


def augment(images, rng, max_shift=1, flip=True):
    """A randomly shifted (up to max_shift pixels each way, zeros shifted in) and mirrored copy of images.

    One pixel, not two: with 2 LeNet-5 underfits (measured: test accuracy 0.909 with 2, 0.913 with 1).

    images (N, C, H, W) on either backend; the random draws come from the host Generator `rng` (one
    shift and one coin per image) and move to the device once, so a seed gives the same result on both.
    Fashion-MNIST's classes are left-right symmetric, so a mirror image is still an example of its class.
    """
    xp = get_array_module(images)
    n, c, h, w = images.shape
    dy = xp.asarray(rng.integers(-max_shift, max_shift + 1, n))
    dx = xp.asarray(rng.integers(-max_shift, max_shift + 1, n))
    mirror = xp.asarray(rng.random(n) < 0.5) if flip else xp.zeros(n, dtype=bool)
    p = max_shift
    padded = xp.zeros((n, c, h + 2 * p, w + 2 * p), dtype=images.dtype)
    padded[:, :, p : p + h, p : p + w] = images
    rows = xp.arange(h)[None, :] + p - dy[:, None]  # (N, H): output row r reads padded row r + p - dy
    cols = xp.arange(w)[None, :] - dx[:, None]  # (N, W): the column of the shifted image, then mirrored
    cols = xp.where(mirror[:, None], w - 1 - cols, cols) + p
    batch = xp.arange(n)[:, None, None, None]
    channel = xp.arange(c)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
