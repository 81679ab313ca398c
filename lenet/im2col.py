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
    shape, strides = (c, kh, kw, oh, ow, n), (sc, sh, sw, sh * stride, sw * stride, sn)
    if xp is not np:
        return xp.lib.stride_tricks.as_strided(xb, shape, strides)
    # The ndarray constructor makes the same view as as_strided at a fraction of its cost (benchmarks/layers.py).
    win = np.ndarray(shape, xb.dtype, buffer=xb, strides=strides)
    win.flags.writeable = False  # windows overlap: writing through them is a bug
    return win


def im2col(x, kh, kw, stride=1, pad=0):
    """(N, C, H, W) -> cols (C*KH*KW, OH*OW*N): column (oh, ow, n) is the receptive field of that output."""
    win = windows(batch_last(x, pad), kh, kw, stride)  # (C, KH, KW, OH, OW, N), a view
    c, _, _, oh, ow, n = win.shape
    return win.reshape(c * kh * kw, oh * ow * n)  # the one copy


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """The adjoint of im2col: cols (C*KH*KW, OH*OW*N) -> (N, C, H, W), overlapping windows summed.

    One += per kernel position (np.add.at would be several times slower), each over runs of OW*N numbers.
    The result is an (N, C, H, W) view of (C, H, W, N) memory.
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    oh, ow = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    out = xp.zeros((c, h + 2 * pad, w + 2 * pad, n), dtype=cols.dtype)  # (C, H+2p, W+2p, N)
    cols = cols.reshape(c, kh, kw, oh, ow, n)
    for i in range(kh):
        for j in range(kw):
            out[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :] += cols[:, i, j]
    return out[:, pad : pad + h, pad : pad + w, :].transpose(3, 0, 1, 2)
