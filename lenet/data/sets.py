"""The data sets: what lenet knows of each (classes, files, checksums, mirrors), where their files are looked for,
and loading them.

Where the files are looked for; the first folder that holds all four files wins:
  1. `data_dir` (--data-dir) when given: the only place looked, and missing files are downloaded into it;
  2. $LENET_DATA/<name>, then $LENET_DATA/<TorchName>/raw;
  3. ./data/<name>, then ./data/<TorchName>/raw;
  4. the system's copy, /usr/share/datasets/fashion-mnist for Fashion-MNIST (Debian's dataset-fashion-mnist);
  5. the download cache, $XDG_CACHE_HOME/lenet/<name> (by default ~/.cache/lenet/<name>).
<TorchName> is torchvision's name for the data set (FashionMNIST, MNIST): `datasets.FashionMNIST(root="data",
download=True)`, as in the PyTorch quickstart, leaves the files in ./data/FashionMNIST/raw, and they are used
from there rather than downloaded again. If none has them they are downloaded into the cache from the
mirrors torchvision uses (download.py). A file may sit there gzipped (name.gz) or raw (name without .gz). Every
file is checked against the SHA-256 of its decompressed bytes when it is downloaded and again whenever it is loaded.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np

from ..errors import LenetError
from .download import download_file
from .idx import MAX_IDX_BYTES, gzip_bound, read_idx


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
        places = [folder for root in roots for folder in dataset_folders(info, root)]
        places.extend(Path(folder) for folder in info.system_dirs)
    if target not in places:
        places.append(target)

    for folder in places:
        if not missing_files(info, folder):
            return folder

    looked = "; ".join(describe_folder(info, folder) for folder in places)
    if not download:
        reason = "downloading is turned off"
    else:
        try:
            download_dataset(info, target)
            return target
        except LenetError as e:
            reason = f"the download into {target} failed: {e}"
    raise LenetError(f"{info.name} data not found (looked in: {looked}) and {reason}; to get the files: {info.hint}")


def dataset_folders(info, root):
    """Where the files of `info` may sit under `root`: lenet's <root>/<name>, torchvision's <root>/<TorchName>/raw."""
    folders = [root / info.name]
    if info.torchvision_name:
        folders.append(root / info.torchvision_name / "raw")
    return folders


def missing_files(info, folder):
    return [name for name in info.sha256 if find_file(folder, name) is None]


def describe_folder(info, folder):
    if not folder.is_dir():
        return f"{folder} (no such folder)"
    missing = missing_files(info, folder)
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
    return gzip_bound((info.sizes or {}).get(name) or MAX_IDX_BYTES)


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
