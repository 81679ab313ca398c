import dataclasses
import gzip
import hashlib
import os
import re
import socket
import threading
import time
import tracemalloc

import numpy as np
import pytest
from helpers import FILE_NAMES, SYSTEM_FASHION, dataset_arrays, idx_bytes

import lenet.data.download
from lenet.backend import to_numpy
from lenet.data import (
    DATASETS,
    DatasetInfo,
    find_dataset,
    iterate_batches,
    load_dataset,
    num_batches,
    parse_idx,
    read_idx,
    train_val_split,
)
from lenet.errors import LenetError

# ---------------------------------------------------------------------------------------------------------
# Helpers: small IDX files and data sets of our own


def tiny_arrays(seed=0, n_train=10, n_test=6, size=4):
    """The four arrays of a tiny data set, keyed by file name: uint8 images (N, size, size), labels 0..2."""
    return dataset_arrays(seed, n_train, n_test, size, classes=3)


def tiny_files(arrays):
    """Decompressed IDX bytes keyed by file name."""
    return {name: idx_bytes(array) for name, array in arrays.items()}


def tiny_info(files, mirrors=(), system_dirs=(), image_shape=(4, 4), **known):
    """The DatasetInfo of `files`; `known` may add sizes= and download_sizes= (None: not known)."""
    return DatasetInfo(
        name="tiny",
        class_names=("zero", "one", "two"),
        sha256={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        mirrors=tuple(mirrors),
        system_dirs=tuple(str(folder) for folder in system_dirs),
        hint="pass --data-dir DIR",
        image_shape=image_shape,
        **known,
    )


def write_files(folder, files, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if compress:
            (folder / name).write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(data)
    return folder


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: no user cache, no proxy, a cwd of its own


# ---------------------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array, type_code",
    [
        (np.array([3, 0, 9, 255, 1], dtype=np.uint8), 0x08),  # labels (N,)
        (np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4), 0x08),  # images (N, H, W)
        (np.array([[-300, 258], [1, -1]], dtype=np.int16), 0x0B),  # multi-byte: big-endian on disk
        (np.array([1.5, -2.25e10, 0.0], dtype=np.float32), 0x0D),
    ],
)
def test_read_idx_round_trip(tmp_path, array, type_code, compress):
    data = idx_bytes(array, type_code)
    # Named the wrong way round on purpose: gzip is told by its magic bytes, not by the name.
    path = tmp_path / ("labels.idx" if compress else "labels.gz")
    path.write_bytes(gzip.compress(data) if compress else data)
    result = read_idx(path)
    assert result.shape == array.shape
    assert result.dtype == array.dtype  # native byte order
    np.testing.assert_array_equal(result, array)
    result[...] = 0  # writable, not a view of read-only bytes


def _valid():
    return idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 2, 2))


CORRUPTIONS = {
    "bad magic": (lambda: b"\x01" + _valid()[1:], "not an IDX file"),
    "gzip magic inside gzip": (lambda: gzip.compress(gzip.compress(_valid())), "not an IDX file"),
    "unknown type code": (
        lambda: _valid()[:2] + b"\x07" + _valid()[3:],
        "unknown IDX element type code 0x07",
    ),
    "zero dims": (lambda: b"\x00\x00\x08\x00", "0 dimensions"),
    "too short": (lambda: b"\x00\x00", "only 2 bytes"),
    "header cut short": (lambda: _valid()[:9], "declares 3 dimensions"),
    "truncated payload": (lambda: _valid()[:-1], "truncated: expected 12 bytes of data, found 11"),
    "trailing bytes": (lambda: _valid() + b"\x00\x00", "2 trailing bytes after the 12 bytes"),
    "gzip cut short": (lambda: gzip.compress(_valid())[:-10], "corrupt gzip stream"),
    "gzip bit flip": (lambda: _flip_middle(gzip.compress(_valid(), mtime=0)), "corrupt gzip stream"),
    # Headers that claim what no memory holds: refused from the header, before any allocation.
    "5 dimensions": (lambda: bytes([0, 0, 8, 5]) + b"\x00\x00\x00\x01" * 5 + b"\x00", "declares 5 dimensions"),
    "255 dimensions": (lambda: bytes([0, 0, 8, 255]) + b"\xff" * 1020, "declares 255 dimensions"),
    "zero beside huge": (
        lambda: bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big") * 2,
        "a zero dimension",
    ),
    "product beyond 64 bits": (
        lambda: bytes([0, 0, 0x0E, 4]) + (2**32 - 1).to_bytes(4, "big") * 4 + b"\x00" * 8,
        "more than the 268435456 bytes lenet reads",
    ),
    "4 GiB declared": (
        lambda: gzip.compress(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (4096, 1024, 1024))),
        "4294967312 bytes, more than",
    ),
}


def _flip_middle(data):
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_read_idx_refuses_corrupt_files(tmp_path, corruption):
    make, expected = CORRUPTIONS[corruption]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(make())
    with pytest.raises(LenetError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("corruption", [name for name in CORRUPTIONS if "gzip" not in name and "GiB" not in name])
def test_parse_idx_refuses_the_same_corruptions(corruption):
    make, expected = CORRUPTIONS[corruption]
    with pytest.raises(LenetError, match="^labels: .*" + re.escape(expected)):
        parse_idx(make(), source="labels")


def gzip_members(*parts):
    """One gzip file of several members (gzip allows that): a bomb can repeat a tiny member of zeros."""
    return b"".join(gzip.compress(part, mtime=0) for part in parts)


def test_gzip_bomb_after_a_valid_header_is_refused_with_little_memory(tmp_path):
    """4 MiB of gzip that unpacks to 4 GiB: a valid small IDX file, then 4096 members of 1 MiB of zeros."""
    zeros = gzip.compress(bytes(1 << 20), mtime=0)  # 1 KiB of gzip each
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with open(path, "wb") as f:
        f.write(gzip.compress(_valid(), mtime=0))
        for _ in range(4096):
            f.write(zeros)
    assert path.stat().st_size < 5 << 20
    tracemalloc.start()
    try:
        with pytest.raises(LenetError, match="more than 1048576 trailing bytes after the 12 bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak} bytes"


def test_files_that_claim_too_much_are_refused_from_their_size_or_header(tmp_path):
    """Sparse files: 100 GiB on paper, a few blocks on disk; refused before they are read."""
    tracemalloc.start()
    try:
        raw = tmp_path / "train-images-idx3-ubyte"
        with open(raw, "wb") as f:
            f.write(_valid())
            f.truncate(100 << 30)
        with pytest.raises(LenetError, match=f"{(100 << 30) - 28} trailing bytes after the 12 bytes"):
            read_idx(raw)
        huge = tmp_path / "huge-idx3-ubyte"  # a header that declares the 100 GiB
        with open(huge, "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (102400, 1024, 1024)))
            f.truncate(16 + (100 << 30))
        with pytest.raises(LenetError, match="107374182416 bytes, more than the 268435456 bytes"):
            read_idx(huge)
        gz = tmp_path / "t10k-images-idx3-ubyte.gz"  # gzip magic, then 1 GiB: more than any gzip of 256 MiB
        with open(gz, "wb") as f:
            f.write(gzip.compress(_valid(), mtime=0))
            f.truncate(1 << 30)
        with pytest.raises(LenetError, match="1073741824 bytes of gzip, more than any gzip stream"):
            read_idx(gz)
        with pytest.raises(LenetError, match="more than any gzip stream of the 28 bytes this file has"):
            read_idx(gz, size=28)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes"


def test_read_idx_holds_a_file_to_its_published_size_and_checksum(tmp_path):
    path = tmp_path / "labels.gz"
    data = _valid()
    path.write_bytes(gzip.compress(data, mtime=0))
    sha = hashlib.sha256(data).hexdigest()
    np.testing.assert_array_equal(read_idx(path, size=len(data), sha256=sha), np.arange(12).reshape(3, 2, 2))
    published = r"declares shape \(3, 2, 2\) of uint8, 28 bytes, but the published file is 40"
    with pytest.raises(LenetError, match=published):
        read_idx(path, size=40, sha256=sha)
    with pytest.raises(LenetError, match=f"SHA-256 of the decompressed data is {sha}, expected 0{{64}}"):
        read_idx(path, size=len(data), sha256="0" * 64)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(LenetError, match="no such file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Finding and loading files on disk


def test_load_dataset_from_gzip_and_raw_files(tmp_path):
    arrays = tiny_arrays()
    files = tiny_files(arrays)
    info = tiny_info(files)
    for compress in (True, False):
        folder = write_files(tmp_path / f"data-{compress}", files, compress=compress)
        images, labels, class_names = load_dataset(info, "test", data_dir=folder, download=False)
        assert images.shape == (6, 1, 4, 4) and images.dtype == np.float32
        assert labels.shape == (6,) and labels.dtype == np.int64
        np.testing.assert_array_equal(images[:, 0], arrays["t10k-images-idx3-ubyte.gz"] / np.float32(255))
        np.testing.assert_array_equal(labels, arrays["t10k-labels-idx1-ubyte.gz"])
        assert class_names == ("zero", "one", "two")
        train_images, _, _ = load_dataset(info, "train", data_dir=folder, download=False)
        assert train_images.shape == (10, 1, 4, 4)


def test_load_dataset_refuses_a_file_with_the_wrong_checksum(tmp_path):
    files = tiny_files(tiny_arrays())
    info = tiny_info(files)
    files["t10k-labels-idx1-ubyte.gz"] = idx_bytes(np.array([0, 1, 2, 0, 1, 1], dtype=np.uint8))
    folder = write_files(tmp_path / "data", files)
    with pytest.raises(LenetError) as error:
        load_dataset(info, "test", data_dir=folder, download=False)
    message = str(error.value)
    assert str(folder / "t10k-labels-idx1-ubyte.gz") in message
    assert info.sha256["t10k-labels-idx1-ubyte.gz"] in message  # expected
    assert hashlib.sha256(files["t10k-labels-idx1-ubyte.gz"]).hexdigest() in message  # actual


@pytest.mark.parametrize(
    "images, labels, expected",
    [
        (np.zeros((6, 4, 4), np.uint8), np.zeros(5, np.uint8), "6 images but"),
        (np.zeros((6, 4, 4), np.uint8), np.array([0, 1, 2, 3, 0, 0], np.uint8), "labels must lie in 0..2"),
        (np.zeros((6, 16), np.uint8), np.zeros(6, np.uint8), "shape (N, H, W)"),
        (np.zeros((6, 4, 4), np.uint8), np.zeros((6, 1), np.uint8), "shape (N,)"),
    ],
)
def test_load_dataset_refuses_inconsistent_files(tmp_path, images, labels, expected):
    files = tiny_files(tiny_arrays())
    files["t10k-images-idx3-ubyte.gz"] = idx_bytes(images)
    files["t10k-labels-idx1-ubyte.gz"] = idx_bytes(labels)
    info = tiny_info(files)
    folder = write_files(tmp_path / "data", files)
    with pytest.raises(LenetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(info, "test", data_dir=folder, download=False)


def test_load_dataset_refuses_images_of_the_wrong_size(tmp_path):
    files = tiny_files(tiny_arrays())
    folder = write_files(tmp_path / "data", files)
    with pytest.raises(LenetError) as error:
        load_dataset(tiny_info(files, image_shape=(28, 28)), "test", data_dir=folder, download=False)
    assert str(error.value) == f"{folder / 't10k-images-idx3-ubyte.gz'}: images of 4x4 pixels; tiny has 28x28"


def test_a_bomb_in_the_data_folder_is_refused_from_its_header(tmp_path, isolated):
    """./data/<name> is looked in with no flag at all: a file there is held to the published sizes."""
    files = tiny_files(tiny_arrays())
    info = tiny_info(files, sizes={name: len(data) for name, data in files.items()})
    folder = write_files(isolated / "data" / "tiny", files)
    name = "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (10, 4096, 4096))  # 160 MiB declared
    (folder / name).write_bytes(gzip_members(header, *[bytes(1 << 20)] * 32))  # under the gzip size cap
    tracemalloc.start()
    try:
        with pytest.raises(LenetError) as error:
            load_dataset(info, "train", download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value).startswith(f"{folder / name}: the IDX header declares shape (10, 4096, 4096) of uint8")
    assert f"but the published file is {len(files[name])} bytes" in str(error.value)
    assert peak < 4 << 20, f"peak {peak} bytes"
    (folder / name).write_bytes(gzip.compress(files[name], mtime=0))
    assert load_dataset(info, "train", download=False)[0].shape == (10, 1, 4, 4)


@pytest.mark.parametrize("declared", [60000, 100000])
def test_a_4_gib_bomb_named_as_fashion_mnist_is_refused_with_memory_bounded(tmp_path, declared):
    """4 MiB of gzip unpacking to 4 GiB, with the header of the real training images or a larger one."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in FILE_NAMES[1:]:
        (folder / name).write_bytes(b"")  # present, so the folder is chosen; never read: the images fail first
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (declared, 28, 28))
    zeros = gzip.compress(bytes(1 << 20), mtime=0)
    (folder / FILE_NAMES[0]).write_bytes(gzip.compress(header, mtime=0) + zeros * 4096)
    tracemalloc.start()
    try:
        with pytest.raises(LenetError) as error:
            load_dataset("fashion-mnist", "train", data_dir=folder, download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if declared == 60000:  # the real images' size: read (47 MB of zeros), then the rest is refused
        assert "more than 1048576 trailing bytes after the 47040000 bytes of data" in str(error.value)
        assert peak < 47040000 + (16 << 20), f"peak {peak} bytes"
    else:
        assert "but the published file is 47040016 bytes" in str(error.value)
        assert peak < 1 << 20, f"peak {peak} bytes"


def test_the_published_data_sets_know_the_size_of_every_file():
    for info in DATASETS.values():
        assert set(info.sizes) == set(info.download_sizes) == set(info.sha256) == set(FILE_NAMES), info.name
        assert info.image_shape == (28, 28)


def test_unknown_names_are_refused():
    with pytest.raises(LenetError, match="unknown data set 'cifar'.*fashion-mnist, mnist"):
        find_dataset("cifar")
    with pytest.raises(LenetError, match="unknown split 'val'.*train, test"):
        load_dataset("fashion-mnist", "val")


def test_search_order(tmp_path, monkeypatch, isolated):
    files = tiny_files(tiny_arrays())
    system = write_files(tmp_path / "system", files)
    info = tiny_info(files, system_dirs=[system])
    explicit = write_files(tmp_path / "explicit", files)
    env_root = tmp_path / "env"
    write_files(env_root / "tiny", files)
    monkeypatch.setenv("LENET_DATA", str(env_root))
    write_files(isolated / "data" / "tiny", files)
    cache = write_files(tmp_path / "xdg-cache" / "lenet" / "tiny", files)

    assert find_dataset(info, data_dir=explicit, download=False) == explicit
    assert find_dataset(info, download=False) == env_root / "tiny"
    monkeypatch.delenv("LENET_DATA")
    assert find_dataset(info, download=False) == isolated / "data" / "tiny"
    (isolated / "data" / "tiny" / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete folder does not count
    assert find_dataset(info, download=False) == system
    assert find_dataset(dataclasses.replace(info, system_dirs=()), download=False) == cache


def test_explicit_data_dir_is_the_only_place_looked(tmp_path, monkeypatch, isolated):
    files = tiny_files(tiny_arrays())
    info = tiny_info(files)
    write_files(isolated / "data" / "tiny", files)
    partial = write_files(tmp_path / "partial", {FILE_NAMES[0]: files[FILE_NAMES[0]]})
    with pytest.raises(LenetError) as error:
        find_dataset(info, data_dir=partial, download=False)
    message = str(error.value)
    assert f"{partial} (missing {', '.join(FILE_NAMES[1:])})" in message
    assert str(isolated / "data") not in message
    assert "downloading is turned off" in message and "pass --data-dir DIR" in message


# ---------------------------------------------------------------------------------------------------------
# Downloading, for real, from a server on 127.0.0.1
# (the server fixture is in conftest.py)


def serve(server, prefix, files, lengths=None):
    """Serve gzipped `files` under /prefix/; lengths overrides the Content-Length of some."""
    for name, data in files.items():
        body = gzip.compress(data, mtime=0)
        server.routes[f"/{prefix}/{name}"] = (body, (lengths or {}).get(name, len(body)))
    return f"{server.url}{prefix}/"


def test_download_tries_mirrors_in_order_and_verifies(server, tmp_path):
    arrays = tiny_arrays()
    files = tiny_files(arrays)
    info = tiny_info(files, mirrors=[f"{server.url}missing/", serve(server, "good", files)])
    cache = tmp_path / "cache"
    assert find_dataset(info, cache_dir=cache) == cache
    assert sorted(os.listdir(cache)) == sorted(FILE_NAMES)  # no temporary files left over
    images, labels, _ = load_dataset(info, "train", cache_dir=cache)
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte.gz"])
    assert images.shape == (10, 1, 4, 4)
    # Found in the cache now: the mirrors are not asked again.
    server.routes.clear()
    assert find_dataset(info, cache_dir=cache) == cache


def test_download_goes_into_data_dir_and_fetches_only_missing_files(server, tmp_path):
    files = tiny_files(tiny_arrays())
    folder = write_files(tmp_path / "data", {name: files[name] for name in FILE_NAMES[:3]}, compress=False)
    info = tiny_info(files, mirrors=[serve(server, "good", {FILE_NAMES[3]: files[FILE_NAMES[3]]})])
    assert find_dataset(info, data_dir=folder) == folder
    assert (folder / FILE_NAMES[3]).is_file()
    assert load_dataset(info, "test", data_dir=folder)[0].shape == (6, 1, 4, 4)


def test_download_with_wrong_checksum_leaves_nothing(server, tmp_path):
    files = tiny_files(tiny_arrays())
    info = tiny_info(files, mirrors=[])
    wrong = dict(files)
    wrong[FILE_NAMES[1]] = idx_bytes(np.zeros(10, dtype=np.uint8))
    info = dataclasses.replace(info, mirrors=(serve(server, "wrong", wrong),))
    cache = tmp_path / "cache"
    with pytest.raises(LenetError) as error:
        find_dataset(info, cache_dir=cache)
    message = str(error.value)
    assert info.sha256[FILE_NAMES[1]] in message
    assert hashlib.sha256(wrong[FILE_NAMES[1]]).hexdigest() in message
    assert "\n" not in message
    # The good first file landed; the bad one did not, nor any temporary file.
    assert os.listdir(cache) == [FILE_NAMES[0]]


@pytest.mark.parametrize("how", ["short body", "gzip cut short"])
def test_truncated_download_is_refused(server, tmp_path, how):
    files = tiny_files(tiny_arrays())
    name = FILE_NAMES[0]
    if how == "short body":  # the server announces more bytes than it sends, then hangs up
        body = gzip.compress(files[name], mtime=0)
        base = serve(server, "cut", files, lengths={name: len(body) + 100})
        expected = f"truncated download: received {len(body)} of {len(body) + 100} bytes"
    else:  # a complete HTTP response whose gzip stream is cut short
        base = serve(server, "cut", files)
        body, _ = server.routes[f"/cut/{name}"]
        server.routes[f"/cut/{name}"] = (body[:-20], len(body) - 20)
        expected = "corrupt gzip stream"
    info = tiny_info(files, mirrors=[base])
    cache = tmp_path / "cache"
    with pytest.raises(LenetError, match=expected):
        find_dataset(info, cache_dir=cache)
    assert not cache.exists()


def endless_body(handler):
    """200 with no Content-Length, then zeros until the client hangs up."""
    handler.send_response(200)
    handler.end_headers()
    chunk = bytes(1 << 16)
    while True:
        handler.wfile.write(chunk)


def trickle(header_first, outcome):
    """A server that sends a byte every 50 ms (for 10 s at most): in the body, or in its headers.

    outcome["end"] says how it ended: "finished" (all sent) or "hung up on" (the client cut it off).
    """

    def route(handler):
        try:
            handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
            handler.wfile.write(b"Content-Length: 200\r\n\r\n" if header_first else b"X-Slow: ")
            for _ in range(200):
                handler.wfile.write(b"a")
                handler.wfile.flush()
                time.sleep(0.05)
            outcome["end"] = "finished"
        except OSError:
            outcome["end"] = "hung up on"
        finally:
            outcome["done"].set()

    return route


def sized_info(files, mirror):
    """tiny_info with the published sizes of `files` (served gzipped by `serve`) known."""
    return tiny_info(
        files,
        mirrors=[mirror],
        sizes={name: len(data) for name, data in files.items()},
        download_sizes={name: len(gzip.compress(data, mtime=0)) for name, data in files.items()},
    )


def test_download_with_known_sizes_lands_the_files(server, tmp_path):
    arrays = tiny_arrays()
    files = tiny_files(arrays)
    info = sized_info(files, serve(server, "good", files))
    cache = tmp_path / "cache"
    assert find_dataset(info, cache_dir=cache) == cache
    assert sorted(os.listdir(cache)) == sorted(FILE_NAMES)
    for name in FILE_NAMES:
        assert (cache / name).read_bytes() == gzip.compress(files[name], mtime=0)
    np.testing.assert_array_equal(load_dataset(info, "test", cache_dir=cache)[1], arrays[FILE_NAMES[3]])


@pytest.mark.parametrize("how", ["endless body", "announced too long", "unpacks too far", "gzip bomb"])
def test_download_that_sends_too_much_is_cut_off(server, tmp_path, how):
    files = tiny_files(tiny_arrays())
    base = serve(server, "big", files)
    name = FILE_NAMES[0]
    info = sized_info(files, base)
    cap = len(gzip.compress(files[name], mtime=0)) * 9 // 8 + (64 << 10)
    if how == "endless body":  # decompressed size not known: the cap on the body is what stops it
        info = dataclasses.replace(info, sizes=None)
        server.routes[f"/big/{name}"] = endless_body
        expected = f"the body goes on past {cap} bytes"
    elif how == "announced too long":
        server.routes[f"/big/{name}"] = (b"", 1 << 40)
        expected = f"the server announces {1 << 40} bytes, more than the {cap} expected"
    else:  # more decompressed data than the file has: one byte more, or 60 MiB from 60 KiB
        zeros = gzip.compress(bytes(1 << 20), mtime=0)
        extra = gzip.compress(b"\x00", mtime=0) if how == "unpacks too far" else zeros * 60
        body = gzip.compress(files[name], mtime=0) + extra
        assert len(body) < cap
        server.routes[f"/big/{name}"] = (body, len(body))
        expected = f"the data unpacks to more than the {len(files[name])} bytes expected"
    cache = tmp_path / "cache"
    tracemalloc.start()
    try:
        with pytest.raises(LenetError, match=re.escape(expected)) as error:
            find_dataset(info, cache_dir=cache)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(error.value)
    assert not cache.exists()  # no file, no temporary file, not even the folder made for them
    assert peak < 8 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize("header_first", [True, False], ids=["trickling body", "trickling headers"])
def test_download_that_trickles_is_given_up_at_the_deadline(server, tmp_path, monkeypatch, header_first):
    """A byte every 50 ms never trips the per-read timeout; the deadline for the whole file ends it."""
    monkeypatch.setattr(lenet.data.download, "DOWNLOAD_DEADLINE_S", 0.5)
    files = tiny_files(tiny_arrays())
    info = sized_info(files, serve(server, "slow", files))
    outcome = {"done": threading.Event()}
    server.routes[f"/slow/{FILE_NAMES[0]}"] = trickle(header_first, outcome)
    cache = tmp_path / "cache"
    with pytest.raises(LenetError, match="not finished after 0.5 s") as error:
        find_dataset(info, cache_dir=cache)
    assert f"{server.url}slow/{FILE_NAMES[0]}" in str(error.value)
    assert not cache.exists()
    assert outcome["done"].wait(30)
    assert outcome["end"] == "hung up on"  # the connection was cut, not waited out


def test_download_from_a_server_that_is_gone(tmp_path, isolated):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    files = tiny_files(tiny_arrays())
    system = tmp_path / "system"
    info = tiny_info(files, mirrors=[f"http://127.0.0.1:{port}/"], system_dirs=[system])
    with pytest.raises(LenetError) as error:
        find_dataset(info)
    message = str(error.value)
    assert "\n" not in message
    for folder in (isolated / "data" / "tiny", system, tmp_path / "xdg-cache" / "lenet" / "tiny"):
        assert f"{folder} (no such folder)" in message
    assert f"http://127.0.0.1:{port}/{FILE_NAMES[0]}" in message
    assert "refused" in message.lower()
    assert message.endswith("to get the files: pass --data-dir DIR")


# ---------------------------------------------------------------------------------------------------------
# The real Fashion-MNIST, where Debian's dataset-fashion-mnist is installed


@pytest.mark.skipif(
    not SYSTEM_FASHION.is_dir(),
    reason=f"{SYSTEM_FASHION} is missing (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_test_split():
    images, labels, class_names = load_dataset("fashion-mnist", "test", download=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    assert class_names[0] == "T-shirt/top" and class_names[9] == "Ankle boot"
    # The checksum is really checked: a wrong one is refused.
    info = DATASETS["fashion-mnist"]
    wrong = dataclasses.replace(info, sha256={**info.sha256, "t10k-labels-idx1-ubyte.gz": "0" * 64})
    with pytest.raises(LenetError, match="0{64}"):
        load_dataset(wrong, "test", download=False)


# ---------------------------------------------------------------------------------------------------------
# train_val_split


def test_train_val_split():
    train_idx, val_idx = train_val_split(1003, 0.2, seed=7)
    assert len(val_idx) == round(1003 * 0.2) == 201 and len(train_idx) == 802
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(1003))
    again = train_val_split(1003, 0.2, seed=7)
    np.testing.assert_array_equal(again[1], val_idx)
    np.testing.assert_array_equal(again[0], train_idx)
    assert not np.array_equal(train_val_split(1003, 0.2, seed=8)[1], val_idx)
    assert not np.array_equal(val_idx, np.arange(201))  # a random pick, not the first examples


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan")])
def test_train_val_split_refuses_bad_fractions(fraction):
    with pytest.raises(LenetError, match="validation fraction"):
        train_val_split(100, fraction)


def test_train_val_split_refuses_an_empty_side():
    with pytest.raises(LenetError, match="no validation"):
        train_val_split(3, 0.1)


# ---------------------------------------------------------------------------------------------------------
# iterate_batches


def _numbered(xp, n):
    """images (n, 1, 2, 2) whose every pixel is the example's index, and labels = the index."""
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    return xp.asarray(images), xp.asarray(np.arange(n))


def _epoch(xp, images, labels, batch_size, rng):
    batches = [(to_numpy(xb), to_numpy(yb)) for xb, yb in iterate_batches(images, labels, batch_size, rng)]
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)  # labels stay with their images
        np.testing.assert_array_equal(xb[:, 0, 1, 1], yb)
    return batches


def test_iterate_batches_shuffled(xp):
    images, labels = _numbered(xp, 10)
    rng = np.random.default_rng(3)
    first = _epoch(xp, images, labels, 4, rng)
    assert [len(yb) for _, yb in first] == [4, 4, 2]  # the last partial batch too
    order1 = np.concatenate([yb for _, yb in first])
    np.testing.assert_array_equal(np.sort(order1), np.arange(10))  # every example exactly once
    assert not np.array_equal(order1, np.arange(10))
    order2 = np.concatenate([yb for _, yb in _epoch(xp, images, labels, 4, rng)])
    np.testing.assert_array_equal(np.sort(order2), np.arange(10))
    assert not np.array_equal(order1, order2)  # a new order each epoch
    replay = _epoch(xp, images, labels, 4, np.random.default_rng(3))
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in replay]), order1)  # same seed, same order


def test_iterate_batches_in_order(xp):
    images, labels = _numbered(xp, 7)
    batches = _epoch(xp, images, labels, 3, None)
    assert [yb.tolist() for _, yb in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    xb, _ = next(iterate_batches(images, labels, 3))
    assert xb.base is images or xb.base is images.base  # a view, not a copy


def test_iterate_batches_refuses_bad_arguments():
    images, labels = _numbered(np, 5)
    with pytest.raises(LenetError, match="batch size"):
        iterate_batches(images, labels, 0)  # refused at the call, before any batch is taken
    with pytest.raises(LenetError, match="5 images but 4 labels"):
        iterate_batches(images, labels[:4], 2)


def test_num_batches():
    assert [num_batches(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert num_batches(10, 4) == len(list(iterate_batches(*_numbered(np, 10), 4)))
    with pytest.raises(LenetError):
        num_batches(10, 0)


def test_download_into_a_folder_that_cannot_be_written(server, tmp_path):
    files = tiny_files(tiny_arrays())
    info = tiny_info(files, mirrors=[serve(server, "good", files)])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(LenetError, match="cannot write it") as error:
        find_dataset(info, cache_dir=blocker / "cache")
    assert "\n" not in str(error.value)


def test_augment_shifts_and_mirrors_each_image(xp):
    from lenet.data import augment

    rng = np.random.default_rng(3)
    images = rng.random((64, 1, 6, 7)).astype(np.float32)
    out = to_numpy(augment(xp.asarray(images), np.random.default_rng(9), max_shift=2))
    assert out.shape == images.shape and out.dtype == np.float32
    # Replay the draws and check every image against its own shift and mirror, done the slow way.
    draws = np.random.default_rng(9)
    dy, dx, mirror = draws.integers(-2, 3, 64), draws.integers(-2, 3, 64), draws.random(64) < 0.5
    assert mirror.any() and (~mirror).any() and (dy != 0).any()
    for i in range(64):
        src = images[i, 0, :, ::-1] if mirror[i] else images[i, 0]
        expected = np.zeros_like(src)
        h, w = src.shape
        for r in range(h):
            for c in range(w):
                if 0 <= r - dy[i] < h and 0 <= c - dx[i] < w:
                    expected[r, c] = src[r - dy[i], c - dx[i]]
        np.testing.assert_array_equal(out[i, 0], expected)


def test_augment_without_shift_or_flip_is_the_identity(xp):
    from lenet.data import augment

    images = np.random.default_rng(0).random((5, 1, 4, 4)).astype(np.float32)
    out = augment(xp.asarray(images), np.random.default_rng(0), max_shift=0, flip=False)
    np.testing.assert_array_equal(to_numpy(out), images)
