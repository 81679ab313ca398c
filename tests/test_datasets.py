"""The data the PyTorch way: torchvision's folders, map-style data sets, and augmentation that suits the data set."""

import dataclasses
import gzip
import hashlib

import numpy as np
import pytest
from helpers import FILE_NAMES, SYSTEM_FASHION, dataset_arrays, idx_bytes

from lenet.backend import to_numpy
from lenet.data import (
    AUGMENT_MIRROR,
    DATASETS,
    MNIST,
    FashionMNIST,
    affine_warp,
    augment,
    find_dataset,
    load_dataset,
    random_affine,
    random_affine_matrices,
)
from lenet.errors import LenetError

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: no user cache, no proxy, a cwd of its own


# ---------------------------------------------------------------------------------------------------------
# Helpers: small IDX files of our own, under the real data sets' names with their checksums swapped


def small_arrays(seed=0, n_train=10, n_test=6, size=28):
    """The four arrays of a small data set, keyed by published file name: uint8 images, labels 0..9."""
    return dataset_arrays(seed, n_train, n_test, size)


def write_files(folder, arrays, compress=True):
    """The IDX files of `arrays` in `folder`, gzipped (name.gz) or raw (the name without .gz)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if compress:
            (folder / name).write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(data)
    return folder


def as_real(monkeypatch, dataset, arrays, mirrors=()):
    """Make DATASETS[dataset] accept our small files: their checksums, no system folder, our mirrors."""
    sha256 = {name: hashlib.sha256(idx_bytes(array)).hexdigest() for name, array in arrays.items()}
    info = dataclasses.replace(
        DATASETS[dataset], sha256=sha256, system_dirs=(), mirrors=tuple(mirrors), sizes=None, download_sizes=None
    )
    monkeypatch.setitem(DATASETS, dataset, info)
    return info


# ---------------------------------------------------------------------------------------------------------
# torchvision's folders: <root>/FashionMNIST/raw and <root>/MNIST/raw


@pytest.mark.parametrize("dataset, torch_name", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_the_pytorch_quickstarts_files_are_found_in_data(monkeypatch, isolated, dataset, torch_name):
    arrays = small_arrays()
    as_real(monkeypatch, dataset, arrays)
    # torchvision keeps the .gz it downloaded and the file it extracted: leave both, as it does.
    raw = write_files(isolated / "data" / torch_name / "raw", arrays)
    write_files(raw, arrays, compress=False)
    assert find_dataset(dataset, download=False) == raw  # no mirror: found, not downloaded
    images, labels, _ = load_dataset(dataset, "test", download=False)
    np.testing.assert_array_equal(labels, arrays["t10k-labels-idx1-ubyte.gz"])
    np.testing.assert_array_equal(images[:, 0], arrays["t10k-images-idx3-ubyte.gz"] / np.float32(255))


def test_torchvision_folder_order(tmp_path, monkeypatch, isolated):
    """lenet's <root>/<name> before torchvision's <root>/<TorchName>/raw, $LENET_DATA before ./data."""
    arrays = small_arrays()
    as_real(monkeypatch, "fashion-mnist", arrays)
    env = tmp_path / "env"
    monkeypatch.setenv("LENET_DATA", str(env))
    folders = [
        env / "fashion-mnist",
        env / "FashionMNIST" / "raw",
        isolated / "data" / "fashion-mnist",
        isolated / "data" / "FashionMNIST" / "raw",
    ]
    for folder in folders:
        write_files(folder, arrays, compress=False)
    for folder in folders:
        assert find_dataset("fashion-mnist", download=False) == folder
        (folder / "t10k-labels-idx1-ubyte").unlink()  # an incomplete folder does not count
    with pytest.raises(LenetError) as error:
        find_dataset("fashion-mnist", download=False)
    message = str(error.value)
    for folder in folders:
        assert f"{folder} (missing t10k-labels-idx1-ubyte.gz)" in message


def test_torchvision_folder_of_the_other_data_set_does_not_count(monkeypatch, isolated):
    arrays = small_arrays()
    as_real(monkeypatch, "mnist", arrays)
    write_files(isolated / "data" / "FashionMNIST" / "raw", arrays)
    with pytest.raises(LenetError, match="downloading is turned off") as error:
        find_dataset("mnist", download=False)
    assert str(isolated / "data" / "MNIST" / "raw") in str(error.value)


# ---------------------------------------------------------------------------------------------------------
# FashionMNIST and MNIST: map-style data sets


def test_dataset_has_torchvisions_attributes(tmp_path, monkeypatch):
    arrays = small_arrays()
    as_real(monkeypatch, "fashion-mnist", arrays)
    root = write_files(tmp_path / "root", arrays)
    train = FashionMNIST(root=root, download=False)
    assert len(train) == 10
    assert train.data.dtype == np.uint8 and train.data.shape == (10, 28, 28)
    np.testing.assert_array_equal(train.data, arrays["train-images-idx3-ubyte.gz"])  # the stored bytes, exactly
    assert train.targets.dtype == np.int64 and train.targets.shape == (10,)
    np.testing.assert_array_equal(train.targets, arrays["train-labels-idx1-ubyte.gz"])
    assert train.classes == list(DATASETS["fashion-mnist"].class_names) and train.classes[9] == "Ankle boot"
    assert train.class_to_idx["Trouser"] == 1
    assert "Number of datapoints: 10" in repr(train) and "Split: Train" in repr(train)

    test = FashionMNIST(root=root, train=False, download=False)
    assert len(test) == 6
    np.testing.assert_array_equal(test.targets, arrays["t10k-labels-idx1-ubyte.gz"])
    images, labels, _ = load_dataset("fashion-mnist", "test", data_dir=root, download=False)
    for i in range(len(test)):
        image, label = test[i]
        assert image.dtype == np.float32 and image.shape == (1, 28, 28)
        np.testing.assert_array_equal(image, images[i])  # the numbers load_dataset gives, bit for bit
        assert type(label) is int and label == labels[i]
    np.testing.assert_array_equal(test[-1][0], images[-1])
    with pytest.raises(IndexError):
        test[6]
    with pytest.raises(TypeError):
        test[0:2]


def test_dataset_transforms(tmp_path, monkeypatch):
    arrays = small_arrays()
    as_real(monkeypatch, "mnist", arrays)
    root = write_files(tmp_path / "root", arrays)
    ds = MNIST(root=root, train=False, download=False, transform=lambda x: 1 - x, target_transform=lambda y: -y)
    image, label = ds[2]
    np.testing.assert_array_equal(image, 1 - arrays["t10k-images-idx3-ubyte.gz"][2][None] / np.float32(255))
    assert label == -int(arrays["t10k-labels-idx1-ubyte.gz"][2])
    assert ds.classes == [str(d) for d in range(10)]


@pytest.mark.parametrize("layout", [".", "fashion-mnist", "FashionMNIST/raw"])
def test_dataset_root_may_hold_the_files_itself_or_in_either_named_folder(tmp_path, monkeypatch, layout):
    arrays = small_arrays()
    as_real(monkeypatch, "fashion-mnist", arrays)
    write_files(tmp_path / "root" / layout, arrays, compress=layout != ".")
    ds = FashionMNIST(root=tmp_path / "root", train=False, download=False)
    np.testing.assert_array_equal(ds.targets, arrays["t10k-labels-idx1-ubyte.gz"])


def test_dataset_root_without_the_files_says_so(tmp_path, monkeypatch, isolated):
    arrays = small_arrays()
    as_real(monkeypatch, "fashion-mnist", arrays)
    write_files(isolated / "data" / "fashion-mnist", arrays)  # the search would find these: a given root does not
    root = tmp_path / "empty"
    with pytest.raises(LenetError) as error:
        FashionMNIST(root=root, download=False)
    message = str(error.value)
    assert f"fashion-mnist data is not in {root}" in message
    assert f"{root / 'FashionMNIST' / 'raw'} (no such folder)" in message
    assert "download=True" in message and "\n" not in message
    assert not root.exists()


def test_dataset_downloads_into_root(tmp_path, monkeypatch, server):
    arrays = small_arrays()
    for name, array in arrays.items():
        body = gzip.compress(idx_bytes(array), mtime=0)
        server.routes[f"/m/{name}"] = (body, len(body))
    as_real(monkeypatch, "fashion-mnist", arrays, mirrors=[f"{server.url}m/"])
    root = tmp_path / "root"
    ds = FashionMNIST(root=root)
    assert sorted(p.name for p in root.iterdir()) == sorted(FILE_NAMES)
    np.testing.assert_array_equal(ds.data, arrays["train-images-idx3-ubyte.gz"])
    server.routes.clear()  # found there now: not downloaded again
    assert len(FashionMNIST(root=root, train=False)) == 6


def test_dataset_without_root_searches(monkeypatch, isolated):
    arrays = small_arrays()
    as_real(monkeypatch, "fashion-mnist", arrays)
    write_files(isolated / "data" / "FashionMNIST" / "raw", arrays)
    ds = FashionMNIST(train=False, download=False)
    np.testing.assert_array_equal(ds.targets, arrays["t10k-labels-idx1-ubyte.gz"])
    assert "Root location: (searched" in repr(ds)


def test_dataset_checks_checksums(tmp_path, monkeypatch):
    arrays = small_arrays()
    as_real(monkeypatch, "fashion-mnist", arrays)
    changed = dict(arrays, **{"t10k-labels-idx1-ubyte.gz": (arrays["t10k-labels-idx1-ubyte.gz"] + 1) % 10})
    root = write_files(tmp_path / "root", changed)
    with pytest.raises(LenetError, match="SHA-256"):
        FashionMNIST(root=root, train=False, download=False)


def test_a_torch_dataloader_takes_the_dataset(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch", reason="PyTorch is needed to test DataLoader (pip install torch)")
    arrays = small_arrays(n_train=10)
    as_real(monkeypatch, "fashion-mnist", arrays)
    ds = FashionMNIST(root=write_files(tmp_path / "root", arrays), download=False)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == (4, 1, 28, 28)
    assert y.dtype == torch.int64 and tuple(y.shape) == (4,)
    np.testing.assert_array_equal(x.numpy()[:, 0], arrays["train-images-idx3-ubyte.gz"][:4] / np.float32(255))
    np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), arrays["train-labels-idx1-ubyte.gz"])
    # Shuffled, every example still comes once, with its own label.
    shuffled = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = sorted(
        (int(label), bytes(np.rint(image.numpy() * 255).astype(np.uint8)))
        for xb, yb in shuffled
        for image, label in zip(xb, yb, strict=True)
    )
    expected = sorted(
        (int(label), bytes(image[None]))
        for image, label in zip(arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"], strict=True)
    )
    assert seen == expected


@pytest.mark.skipif(
    not SYSTEM_FASHION.is_dir(),
    reason=f"{SYSTEM_FASHION} is missing (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_datasets():
    train, test = FashionMNIST(download=False), FashionMNIST(root=SYSTEM_FASHION, train=False, download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.data.shape == (60000, 28, 28) and train.data.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train.targets), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(test.targets), np.full(10, 1000))
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot" and len(train.classes) == 10
    image, label = test[0]
    images, labels, _ = load_dataset("fashion-mnist", "test", download=False)
    np.testing.assert_array_equal(image, images[0])
    assert label == labels[0] == 9  # the first test image is an ankle boot
    assert image.min() == 0.0 and 0.9 < image.max() <= 1.0


# ---------------------------------------------------------------------------------------------------------
# Augmentation that suits the data set


def augment_before(images, rng, max_shift=1, flip=True):
    """`augment` as it was before mirrors became a per-data-set choice (NumPy only): runs must reproduce it."""
    n, c, h, w = images.shape
    dy = rng.integers(-max_shift, max_shift + 1, n)
    dx = rng.integers(-max_shift, max_shift + 1, n)
    mirror = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    p = max_shift
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=images.dtype)
    padded[:, :, p : p + h, p : p + w] = images
    rows = np.arange(h)[None, :] + p - dy[:, None]
    cols = np.arange(w)[None, :] - dx[:, None]
    cols = np.where(mirror[:, None], w - 1 - cols, cols) + p
    batch = np.arange(n)[:, None, None, None]
    channel = np.arange(c)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def test_default_augment_is_unchanged_bit_for_bit(xp):
    images = np.random.default_rng(0).random((50, 1, 28, 28)).astype(np.float32)
    ours, theirs = np.random.default_rng(5), np.random.default_rng(5)
    out = to_numpy(augment(xp.asarray(images), ours))
    assert np.array_equal(out, augment_before(images, theirs))
    assert ours.bit_generator.state == theirs.bit_generator.state  # the next epoch's shuffle is the same too


def test_mirrors_only_where_the_data_set_allows():
    assert set(AUGMENT_MIRROR) == set(DATASETS)
    assert AUGMENT_MIRROR["fashion-mnist"] is True and AUGMENT_MIRROR["mnist"] is False
    images = np.random.default_rng(0).random((200, 1, 6, 6)).astype(np.float32)
    plain = augment(images, np.random.default_rng(1), max_shift=0, flip=AUGMENT_MIRROR["mnist"])
    np.testing.assert_array_equal(plain, images)  # no digit is mirrored
    mirrored = augment(images, np.random.default_rng(1), max_shift=0, flip=AUGMENT_MIRROR["fashion-mnist"])
    flipped = (mirrored == images[..., ::-1]).all(axis=(1, 2, 3))
    assert 50 < flipped.sum() < 150 and ((mirrored == images).all(axis=(1, 2, 3)) | flipped).all()


def test_turning_mirrors_off_keeps_the_shifts_and_the_draws():
    images = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
    on, off = np.random.default_rng(2), np.random.default_rng(2)
    with_mirrors, without = augment(images, on, flip=True), augment(images, off, flip=False)
    assert on.bit_generator.state == off.bit_generator.state
    coins = np.random.default_rng(2)
    coins.integers(-1, 2, 64), coins.integers(-1, 2, 64)
    mirrored = coins.random(64) < 0.5
    np.testing.assert_array_equal(without[~mirrored], with_mirrors[~mirrored])
    # A mirrored image is mirrored, then shifted: mirroring the input first undoes it and leaves the same shift.
    twice = augment(np.ascontiguousarray(images[..., ::-1]), np.random.default_rng(2), flip=True)
    np.testing.assert_array_equal(without[mirrored], twice[mirrored])
    assert not np.array_equal(without[mirrored], with_mirrors[mirrored])


def slow_warp(image, inverse):
    """Bilinear resampling of one (H, W) image, pixel by pixel, in float64: zeros outside."""
    h, w = image.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2

    def pixel(r, c):
        return image[r, c] if 0 <= r < h and 0 <= c < w else 0.0

    out = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            x, y = inverse @ np.array([c - cx, r - cy]) + np.array([cx, cy])
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - x0, y - y0
            out[r, c] = (1 - fy) * ((1 - fx) * pixel(y0, x0) + fx * pixel(y0, x0 + 1)) + fy * (
                (1 - fx) * pixel(y0 + 1, x0) + fx * pixel(y0 + 1, x0 + 1)
            )
    return out


def test_affine_warp_against_a_pixel_by_pixel_loop(xp):
    rng = np.random.default_rng(0)
    images = rng.random((6, 2, 9, 8))
    inverse = random_affine_matrices(rng, 6, max_rotation=40, scale=(0.6, 1.5), max_shear=0.4)
    out = to_numpy(affine_warp(xp.asarray(images), inverse))
    assert out.dtype == np.float64
    for i in range(6):
        for ch in range(2):
            np.testing.assert_allclose(out[i, ch], slow_warp(images[i, ch], inverse[i]), rtol=0, atol=1e-12)


def test_affine_warp_exact_cases(xp):
    images = np.random.default_rng(0).random((3, 2, 7, 7)).astype(np.float32)
    x = xp.asarray(images)
    identity = np.tile(np.eye(2), (3, 1, 1))
    assert np.array_equal(to_numpy(affine_warp(x, identity)), images)
    quarter_turn = np.tile(np.array([[0.0, 1.0], [-1.0, 0.0]]), (3, 1, 1))  # reads (x, y) from (y, -x)
    assert np.array_equal(to_numpy(affine_warp(x, quarter_turn)), np.rot90(images, -1, axes=(2, 3)))
    mirror = np.tile(np.diag([-1.0, 1.0]), (3, 1, 1))
    assert np.array_equal(to_numpy(affine_warp(x, mirror)), images[..., ::-1])
    far_away = np.tile(np.eye(2) * 100, (3, 1, 1))  # every pixel but the centre reads far outside: zeros
    out = to_numpy(affine_warp(x, far_away))
    assert np.array_equal(out[:, :, 3, 3], images[:, :, 3, 3]) and np.count_nonzero(out) == 3 * 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_affine_keeps_dtype_and_is_deterministic(xp, dtype):
    images = xp.asarray(np.random.default_rng(0).random((20, 1, 28, 28)).astype(dtype))
    first = random_affine(images, np.random.default_rng(4))
    assert first.dtype == images.dtype and first.shape == images.shape
    assert type(first) is type(images)
    again = random_affine(images, np.random.default_rng(4), chunk=3)  # chunks do not change the draws
    assert np.array_equal(to_numpy(first), to_numpy(again))
    assert not np.array_equal(to_numpy(first), to_numpy(random_affine(images, np.random.default_rng(5))))


def test_random_affine_draws_small_distortions_one_per_image():
    inverse = random_affine_matrices(np.random.default_rng(0), 1000, max_rotation=10, scale=(0.9, 1.1), max_shear=0.1)
    forward = np.linalg.inv(inverse)  # zoom * rotation @ [[1, shear], [0, 1]]
    zoom = np.hypot(forward[:, 0, 0], forward[:, 1, 0])
    angle = np.degrees(np.arctan2(forward[:, 1, 0], forward[:, 0, 0]))
    shear = (forward[:, 0, 0] * forward[:, 0, 1] + forward[:, 1, 0] * forward[:, 1, 1]) / zoom**2
    for values, low, high in ((zoom, 0.9, 1.1), (angle, -10, 10), (shear, -0.1, 0.1)):
        assert low <= values.min() < low + 0.05 * (high - low)  # spread over the whole range...
        assert high - 0.05 * (high - low) < values.max() <= high  # ...and no further
    assert len(np.unique(angle)) == 1000
    # The same image, distorted 8 times: 8 different results.
    image = np.random.default_rng(1).random((1, 1, 28, 28)).astype(np.float32)
    out = random_affine(np.repeat(image, 8, axis=0), np.random.default_rng(2))
    assert len({out[i].tobytes() for i in range(8)}) == 8
    assert np.abs(out - image).mean() < np.abs(image - image[..., ::-1]).mean()  # small: closer than a mirror


def test_augment_with_affine_adds_its_draws_after_the_shifts(xp):
    images = xp.asarray(np.random.default_rng(0).random((16, 1, 28, 28)).astype(np.float32))
    out = augment(images, np.random.default_rng(3), flip=False, affine=True)
    rng = np.random.default_rng(3)
    expected = random_affine(augment(images, rng, flip=False), rng)
    assert np.array_equal(to_numpy(out), to_numpy(expected))
    assert not np.array_equal(to_numpy(out), to_numpy(augment(images, np.random.default_rng(3), flip=False)))
