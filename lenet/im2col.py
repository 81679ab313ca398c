"""im2col and col2im: convolution as one matrix product.

Shapes: N batch, C channels, H/W input height and width, KH/KW kernel, OH/OW output,
with OH = (H + 2*pad - KH) // stride + 1 (and the same for OW).

im2col turns every receptive field into one row, so a convolution with F filters is
cols (N*OH*OW, C*KH*KW) @ W.reshape(F, C*KH*KW).T. The column order (C, KH, KW) is the order of
PyTorch's weight layout, so the weights reshape without a copy. col2im is its adjoint: it sums the
rows back onto the input positions they came from (overlapping windows add up).
"""

from .backend import get_array_module


def output_size(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def windows(x, kh, kw, stride=1):
    """A strided view (N, C, OH, OW, KH, KW) of every KHxKW window of x (N, C, H, W); no copy."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    sn, sc, sh, sw = x.strides
    return xp.lib.stride_tricks.as_strided(
        x, (n, c, oh, ow, kh, kw), (sn, sc, sh * stride, sw * stride, sh, sw), writeable=False
    )


def pad_images(x, pad):
    """Zero-pad the two spatial axes of (N, C, H, W); keeps the dtype."""
    if pad == 0:
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    out = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    out[:, :, pad : pad + h, pad : pad + w] = x
    return out


def im2col(x, kh, kw, stride=1, pad=0):
    """(N, C, H, W) -> cols (N*OH*OW, C*KH*KW), one row per output position (n, oh, ow)."""
    n, c, _, _ = x.shape
    win = windows(pad_images(x, pad), kh, kw, stride)  # (N, C, OH, OW, KH, KW), a view
    oh, ow = win.shape[2:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)  # the one copy


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """The adjoint of im2col: cols (N*OH*OW, C*KH*KW) -> (N, C, H, W), overlapping windows summed.

    Accumulates with += over the KH*KW kernel positions (np.add.at would be several times slower).
    The sum is built in (N, H, W, C) memory so each += writes whole channel runs; the result is a
    (N, C, H, W) view of it.
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    oh, ow = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    cols = cols.reshape(n, oh, ow, c, kh, kw)
    hp, wp = h + 2 * pad, w + 2 * pad
    out = xp.zeros((n, hp, wp, c), dtype=cols.dtype)  # (N, H+2p, W+2p, C)
    for i in range(kh):
        for j in range(kw):
            out[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :] += cols[:, :, :, :, i, j]
    return out.transpose(0, 3, 1, 2)[:, :, pad : pad + h, pad : pad + w]
