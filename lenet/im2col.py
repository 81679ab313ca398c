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


def batch_last(x, pad=0, out=None):
    """(N, C, H, W) -> (C, H+2p, W+2p, N) memory, zero-padded. No copy if x is a batch-last view and pad is 0.

    With `out` (C, H+2p, W+2p, N) whose border is already zero, only the interior is written (a layer that
    keeps its padded input from call to call zeroes the border once).
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if pad == 0 and out is None:
        return xp.ascontiguousarray(x.transpose(1, 2, 3, 0))
    if out is None:
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
    # The ndarray constructor makes the same view as as_strided in a quarter of the time (~1.5 against 6 us).
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


def col2im_stride2(cols, out_shape, kh, kw):
    """col2im for windows at stride 2 with KH and KW even: cols (C*KH*KW, OH*OW*N) -> (C, H, W, N), summed.

    out_shape is (C, H, W, N). The input split by the parity of rows and columns, (C, 2, 2, H/2, W/2, N):
    input row 2*Y + a is row i = 2*ii + a of the window over output row Y - ii, so each of the KH/2 * KW/2
    pairs (ii, jj) is ONE += of whole runs of OW*N numbers, where a plain loop at stride 2 makes KH*KW +=
    over runs of N (measured at batch 128 for C3: 0.46 ms against 0.79 ms).
    """
    xp = get_array_module(cols)
    c, h, w, n = out_shape
    oh, ow = (h - kh) // 2 + 1, (w - kw) // 2 + 1
    planes = xp.zeros((c, 2, 2, (h + 1) // 2, (w + 1) // 2, n), dtype=cols.dtype)  # [c, a, b, Y, X, n]
    cols = cols.reshape(c, kh // 2, 2, kw // 2, 2, oh, ow, n)  # window row i = (ii, a), column j = (jj, b)
    for ii in range(kh // 2):
        for jj in range(kw // 2):
            planes[:, :, :, ii : ii + oh, jj : jj + ow, :] += cols[:, ii, :, jj, :]
    # Interleave the planes back: [c, Y, a, X, b, n] is (C, H, W, N) (one more row or column if H or W is odd).
    out = planes.transpose(0, 3, 1, 4, 2, 5).reshape(c, 2 * planes.shape[3], 2 * planes.shape[4], n)
    return out[:, :h, :w, :]
