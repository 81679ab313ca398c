"""The data sets as a PyTorch user knows them: torchvision.datasets.FashionMNIST and MNIST, over lenet's files."""

import operator
from pathlib import Path

import numpy as np

from ..errors import LenetError
from .sets import dataset_folders, describe_folder, get_dataset_info, load_dataset, missing_files


class IDXDataset:
    """A map-style data set over one split, read with `load_dataset`: a torch DataLoader takes it as it is.

    As torchvision's: `.data` uint8 (N, H, W), the pixels as stored; `.targets` int64 (N,); `.classes` the
    class names, indexed by label; `ds[i]` is (image, label) with image float32 (1, H, W) in [0, 1], the
    same numbers `load_dataset` gives (or `transform(image)`), and label an int (or `target_transform(label)`).
    Arrays rather than PIL images and tensors, since lenet does not import torch; DataLoader's default
    collate turns them into tensors.

    root None: the search of lenet/data/sets.py's docstring, downloading into the cache if need be. root given:
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
            f"    Root location: {self.root if self.root is not None else '(searched, see lenet.data.sets)'}",
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
    candidates = [root, *dataset_folders(info, root)]
    for folder in candidates:
        if not missing_files(info, folder):
            return folder
    if not download:
        looked = "; ".join(describe_folder(info, folder) for folder in candidates)
        raise LenetError(
            f"{info.name} data is not in {root} (looked in: {looked}); pass download=True to download it there"
        )
    return root
