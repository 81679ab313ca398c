import numpy as np
import pytest

from lenet.backend import to_numpy
from lenet.im2col import col2im, im2col


@pytest.mark.parametrize(
    "shape,k,stride,pad", [((2, 3, 7, 7), 3, 1, 0), ((2, 1, 8, 6), 5, 1, 2), ((3, 2, 9, 8), 3, 2, 1)]
)
def test_im2col_and_col2im_are_adjoint(xp, rng, shape, k, stride, pad):
    x = rng.standard_normal(shape)
    cols = im2col(xp.asarray(x), k, k, stride, pad)
    c = rng.standard_normal(cols.shape)
    lhs = float((cols * xp.asarray(c)).sum())  # <im2col(x), c>
    rhs = float((xp.asarray(x) * col2im(xp.asarray(c), shape, k, k, stride, pad)).sum())  # <x, col2im(c)>
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_im2col_rows_are_receptive_fields(xp, rng):
    x = rng.standard_normal((2, 3, 6, 5))
    cols = to_numpy(im2col(xp.asarray(x), 3, 2, stride=1, pad=1))
    xp_ = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    oh, ow = 6, 6
    assert cols.shape == (3 * 3 * 2, 2 * oh * ow)
    column = (4 * ow + 2) * 2 + 1  # columns in (OH, OW, N) order: oh=4, ow=2, n=1 of N=2
    np.testing.assert_array_equal(cols[:, column], xp_[1, :, 4:7, 2:4].ravel())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_im2col_keeps_dtype(xp, dtype):
    x = xp.ones((1, 2, 5, 5), dtype=dtype)
    cols = im2col(x, 3, 3, 1, 1)
    assert cols.dtype == dtype
    assert col2im(cols, x.shape, 3, 3, 1, 1).dtype == dtype


def test_col2im_sums_overlapping_windows(xp):
    cols = im2col(xp.ones((1, 1, 4, 4)), 3, 3)
    counts = to_numpy(col2im(xp.ones_like(cols), (1, 1, 4, 4), 3, 3))[0, 0]
    np.testing.assert_array_equal(counts, [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])
