"""The data: IDX files, the Fashion-MNIST and MNIST data sets, a train/validation split, mini-batches.

Shapes: N examples, H/W image height and width. `load_dataset` gives images as float32 (N, 1, H, W)
scaled to [0, 1] (H = W = 28 for both data sets) and labels as int64 (N,), as NumPy arrays: the caller
moves them to the GPU once, and `iterate_batches` then slices them where they live.

One module a job, read in this order:
- sets.py: the data sets (classes, files, checksums, mirrors), where their files are looked for, loading them;
- batches.py: the train/validation split, mini-batches and augmentation;
- idx.py: the IDX file format, read as a stream whatever a file claims;
- download.py: fetching a file over HTTP with a deadline, checked against its checksum before it lands;
- map_style.py: `FashionMNIST` and `MNIST`, the same data as map-style data sets for a PyTorch user's DataLoader.

Whatever a file or a server claims, memory and time stay bounded: files are read and downloads written as
streams, decompressed and hashed in chunks, held to the published sizes of the files (or to the size an
IDX header declares, up to MAX_IDX_BYTES), and a download has DOWNLOAD_DEADLINE_S per file.
"""

from .batches import (
    AUGMENT_MIRROR,
    affine_warp,
    augment,
    iterate_batches,
    num_batches,
    random_affine,
    random_affine_matrices,
    train_val_split,
)
from .download import DOWNLOAD_DEADLINE_S, download_file
from .idx import IDX_TYPES, MAX_IDX_BYTES, parse_idx, read_idx
from .map_style import MNIST, FashionMNIST, IDXDataset
from .sets import (
    DATASETS,
    SPLIT_FILES,
    DatasetInfo,
    default_cache_dir,
    download_dataset,
    find_dataset,
    find_file,
    get_dataset_info,
    load_dataset,
)

__all__ = [
    "AUGMENT_MIRROR",
    "DATASETS",
    "DOWNLOAD_DEADLINE_S",
    "IDX_TYPES",
    "MAX_IDX_BYTES",
    "MNIST",
    "SPLIT_FILES",
    "DatasetInfo",
    "FashionMNIST",
    "IDXDataset",
    "affine_warp",
    "augment",
    "default_cache_dir",
    "download_dataset",
    "download_file",
    "find_dataset",
    "find_file",
    "get_dataset_info",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "parse_idx",
    "random_affine",
    "random_affine_matrices",
    "read_idx",
    "train_val_split",
]
