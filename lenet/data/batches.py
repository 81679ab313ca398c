"""A train/validation split, mini-batches and augmentation: what the trainer does with a loaded data set.

images (N, C, H, W) and labels (N,) are NumPy or CuPy arrays: the batches and the augmented copies stay where the
arrays live; the random draws come from a host np.random.Generator, so that a seed gives the same numbers on
either backend.
"""

import operator

import numpy as np

from ..backend import get_array_module
from ..errors import LenetError


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

    One pixel, not two: with two-pixel shifts LeNet-5 underfits (docs/results.md).
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
