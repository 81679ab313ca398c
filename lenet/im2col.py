"""im2col and col2im: convolution as one matrix product.

Shapes: N batch, C channels, H/W input height and width, KH/KW kernel, OH/OW output,
with OH = (H + 2*pad - KH) // stride + 1 (and the same for OW).

im2col lays every receptive field out as one COLUMN: cols has shape (C*KH*KW, OH*OW*N), rows in the
order (C, KH, KW) of PyTorch's weight layout, columns in the order (OH, OW, N). A convolution with F
filters is then one matrix product, W.reshape(F, C*KH*KW) @ cols -> (F, OH*OW*N).

Why the batch is the LAST axis of memory: the copies that im2col and col2im make then move runs of
OW*N contiguous numbers (thousands) instead of runs of OW (ten or so), and NumPy's cost per run, not per
number, dominates short runs. Layers therefore keep activations in (C, H, W, N) memory and hand them on
as (N, C, H, W) views (`x.transpose(3, 0, 1, 2)`); no transpose is copied between layers.

Conv2d builds the columns in blocks of output rows (`row_blocks`), each block small enough to stay in
the processor's cache while its matrix product reads it: at batch 128 that halved the time of the first
convolution's im2col and product together (2.6 ms -> 1.3 ms on the 2-core machine this was written on).
"""

import numpy as np

from .backend import get_array_module


def output_size(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def batch_last(x, pad=0):
    """(N, C, H, W) -> (C, H+2p, W+2p, N) memory, zero-padded. No copy if x is a batch-last view and pad is 0."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if pad == 0:
        return xp.ascontiguousarray(x.transpose(1, 2, 3, 0))
    out = xp.zeros((c, h + 2 * pad, w + 2 * pad, n), dtype=x.dtype)
    out[:, pad : pad + h, pad : pad + w, :] = x.transpose(1, 2, 3, 0)
    return out


def windows(xb, kh, kw, stride=1):
    """A strided view (C, KH, KW, OH, OW, N) of every KHxKW window of xb (C, H, W, N); no copy."""
    xp = get_array_module(xb)
    c, h, w, n = xb.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    sc, sh, sw, sn = xb.strides
    read_only = {"writeable": False} if xp is np else {}  # windows overlap: writing through them is a bug
    return xp.lib.stride_tricks.as_strided(
        xb, (c, kh, kw, oh, ow, n), (sc, sh, sw, sh * stride, sw * stride, sn), **read_only
    )


def im2col(x, kh, kw, stride=1, pad=0):
    """(N, C, H, W) -> cols (C*KH*KW, OH*OW*N): column (oh, ow, n) is the receptive field of that output."""
    win = windows(batch_last(x, pad), kh, kw, stride)  # (C, KH, KW, OH, OW, N), a view
    c, _, _, oh, ow, n = win.shape
    return win.reshape(c * kh * kw, oh * ow * n)  # the one copy


# The cache a block of columns should fit in (the L2 cache of one core is 1 MiB on the machines here).
BLOCK_BYTES = 1 << 20


def row_blocks(oh, bytes_per_row, budget=BLOCK_BYTES):
    """[(r0, r1)] blocks of output rows whose columns take at most `budget` bytes (at least one row each)."""
    step = max(1, int(budget // max(1, bytes_per_row)))
    return [(r, min(oh, r + step)) for r in range(0, oh, step)]


def col2im_rows(out, cols, r0, r1, kh, kw, stride=1):
    """Add the columns of output rows r0..r1, cols (C*KH*KW, (r1-r0)*OW*N), into out (C, H+2p, W+2p, N)."""
    c = out.shape[0]
    n = out.shape[3]
    rows = r1 - r0
    cols = cols.reshape(c, kh, kw, rows, -1, n)
    ow = cols.shape[4]
    for i in range(kh):
        top = r0 * stride + i
        for j in range(kw):
            out[:, top : top + stride * rows : stride, j : j + stride * ow : stride, :] += cols[:, i, j]


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """The adjoint of im2col: cols (C*KH*KW, OH*OW*N) -> (N, C, H, W), overlapping windows summed.

    One += per kernel position (np.add.at would be several times slower), each over runs of OW*N numbers.
    The result is an (N, C, H, W) view of (C, H, W, N) memory.
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    out = xp.zeros((c, h + 2 * pad, w + 2 * pad, n), dtype=cols.dtype)  # (C, H+2p, W+2p, N)
    col2im_rows(out, cols, 0, output_size(h, kh, stride, pad), kh, kw, stride)
    return out[:, pad : pad + h, pad : pad + w, :].transpose(3, 0, 1, 2)
