"""The fused convolution stage: Conv2d (stride 1) -> activation -> 2x2 pooling as one layer, computed on 2x2 blocks
of output pixels. lenet.fast.fuse(model) runs a LeNet5's C1 and C3 stages through it.

It must equal the textbook chain of lenet/layers.py, `Conv2d -> Sigmoid/Tanh/ReLU -> AvgPool2d(2)/MaxPool2d(2)`,
numbers and gradients alike: tests/test_fast.py holds it to that (1e-11 in float64) for every activation and pooling.
Why it is faster is arithmetic rearranged, not different arithmetic (docs/backprop.md, "The fused stage", derives it;
`python benchmarks/layers.py` measures it):

- Each column of its im2col matrix is the (KH+1)x(KW+1) input patch under one 2x2 block of outputs (windows at
  stride 2), and the block weights (4F, C*(KH+1)*(KW+1)) hold every filter four times, shifted to the block's four
  positions (dy, dx), zeros elsewhere. The product has rows (dy, dx, F) and columns (OH/2, OW/2, N).
- So 2x2 pooling is a sum (or maximum) of four contiguous row slabs, and its backward a broadcast; im2col copies
  36/(4*25) = 0.36 times as many numbers, and col2im over these stride-2 windows is 9 `+=` over long runs
  (col2im_stride2), where a plain col2im at stride 2 makes 36 over short runs.
- The products have 4F rows (24 instead of 6 for C1), a shape BLAS runs much faster per multiply-add, for 36/25 =
  1.44 times as many multiply-adds. The bias rides in the product: the columns end with a row of ones.
- The stage keeps its big arrays (padded input, columns, product, its gradient) from call to call and runs the
  activation in place on the product: fresh arrays each step landed on memory that was cold in the caches.
"""

import numpy as np

from ..backend import get_array_module, matmul
from ..im2col import windows
from ..layers import AvgPool2d, Layer, MaxPool2d, ReLU, Sigmoid, Tanh
from ..model import ACTIVATIONS, POOLS


# -- activations written into a given array (the formulas of layers.Sigmoid, Tanh, ReLU) ---------------------------
class _SigmoidInPlace:
    """y = 1 / (1 + exp(-x)); dx = dout * y * (1 - y). Written with out= so y can overwrite x."""

    input_scale, out_scale, out_shift = 1, 1, 0

    def forward(self, x, out):
        xp = get_array_module(x)
        y = xp.negative(x, out=out)
        with np.errstate(over="ignore"):
            xp.exp(y, out=y)
        y += 1
        xp.reciprocal(y, out=y)
        self.y = y
        return y

    def backward(self, dout, out):
        dx = get_array_module(dout).subtract(1, self.y, out=out)
        dx *= self.y
        dx *= dout
        return dx


class _TanhInPlace:
    """y = tanh(x); dx = dout * (1 - y^2)."""

    # What ConvPool does around the activation: the product it is given is (block weights * input_scale) @ columns,
    # and y = out_scale * activation + out_shift after pooling. Pooling commutes with an increasing affine map.
    input_scale, out_scale, out_shift = 1, 1, 0

    def forward(self, x, out):
        self.y = get_array_module(x).tanh(x, out=out)
        return self.y

    def backward(self, dout, out):
        dx = get_array_module(dout).multiply(self.y, self.y, out=out)
        dx -= 1
        dx *= -dout
        return dx


class _ReLUInPlace:
    """y = x * (x > 0); dx = dout * (x > 0)."""

    input_scale, out_scale, out_shift = 1, 1, 0

    def forward(self, x, out):
        self.mask = x > 0
        return get_array_module(x).multiply(x, self.mask, out=out)

    def backward(self, dout, out):
        return get_array_module(dout).multiply(dout, self.mask, out=out)


class _SigmoidViaTanh(_TanhInPlace):
    """sigmoid(x) = 0.5 + 0.5 * tanh(x / 2), the NumPy form: one tanh pass where 1 / (1 + exp(-x)) takes four (negate,
    exp, add, reciprocal), and NumPy's float32 tanh is itself cheaper than its exp.

    The halving rides in the block weights (a power of two: the product is exactly x / 2), and 0.5 * t + 0.5 is
    applied to the pooled quarter-size output, not to every pixel. Backward is tanh's, 1 - t^2, with the two halvings
    put back on the small arrays: the pooled gradient (out_scale) and the weight gradients (input_scale).
    """

    input_scale, out_scale, out_shift = 0.5, 0.5, 0.5


IN_PLACE = {Sigmoid: _SigmoidInPlace, Tanh: _TanhInPlace, ReLU: _ReLUInPlace}  # the core's layer -> its form here


# -- 2x2 pooling over stacked windows: a (4, ...) array whose slabs are the four block positions ---------------------
class _StackedAvg:
    """The mean of the four slabs (AvgPool2d(2)); backward gives each position a quarter of the gradient."""

    def forward(self, a, scale=1):
        """The mean times `scale`."""
        out = a[0] + a[1]
        for slab in a[2:]:
            out += slab
        out *= out.dtype.type(0.25 * scale)
        return out

    def backward(self, dout, scale=1):
        return (dout * dout.dtype.type(0.25 * scale))[None]  # (1, ...): broadcasts over the four positions


class _StackedMax:
    """The maximum of the four slabs (MaxPool2d(2)); the whole gradient goes to the first maximum, as in PyTorch."""

    def forward(self, a, scale=1):
        """The maximum times `scale` (> 0)."""
        xp = get_array_module(a)
        self.winner = a.argmax(axis=0)
        out = xp.take_along_axis(a, self.winner[None], axis=0)[0]
        if scale != 1:
            out *= out.dtype.type(scale)
        return out

    def backward(self, dout, scale=1):
        xp = get_array_module(dout)
        if scale != 1:
            dout = dout * dout.dtype.type(scale)
        positions = xp.arange(4).reshape((-1,) + (1,) * dout.ndim)
        return (positions == self.winner[None]) * dout


STACKED = {AvgPool2d: _StackedAvg, MaxPool2d: _StackedMax}  # the core's layer -> its form here


def col2im_stride2(cols, out_shape, kh, kw):
    """im2col.col2im for windows at stride 2 with KH and KW even: cols (C*KH*KW, OH*OW*N) -> (C, H, W, N), summed.

    Equals col2im over the same windows (tests/test_fast.py checks it by the adjoint identity). The input is split by
    the parity of rows and columns, (C, 2, 2, H/2, W/2, N): input row 2*Y + a is row i = 2*ii + a of the window over
    output row Y - ii, so each of the KH/2 * KW/2 pairs (ii, jj) is ONE += of whole runs of OW*N numbers, where a plain
    loop at stride 2 makes KH*KW += over runs of N.
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


class ConvPool(Layer):
    """Conv2d (stride 1), an activation and 2x2 pooling (stride 2) in one layer, on 2x2 blocks of output pixels.

    conv: the layers.Conv2d it computes, whose parameters (the same Parameter objects), padding and input_grad it
    uses, KH and KW odd; activation and pool: names in model.ACTIVATIONS and model.POOLS. x (N, C, H, W) ->
    (N, F, OH//2, OW//2): the numbers of conv -> ACTIVATIONS[activation]() -> POOLS[pool](2).
    """

    def __init__(self, conv, activation="sigmoid", pool="avg"):
        f, _, kh, kw = conv.weight.shape
        if kh % 2 == 0 or kw % 2 == 0 or conv.stride != 1:
            raise ValueError(f"ConvPool needs odd kernel sizes and stride 1, got {kh}x{kw} at stride {conv.stride}")
        self.conv = conv  # its parameters and shapes; its forward and backward are not run
        self.weight, self.bias, self.params, self.padding = conv.weight, conv.bias, conv.params, conv.padding
        numpy_sigmoid = activation == "sigmoid" and get_array_module(conv.weight.data) is np  # CuPy keeps exp
        self.activation = (_SigmoidViaTanh if numpy_sigmoid else IN_PLACE[ACTIVATIONS[activation]])()
        self.pool = STACKED[POOLS[pool]]()
        self._buffers = {}

    @property
    def input_grad(self):
        return self.conv.input_grad

    def output_shape(self, shape):
        return (shape[0], self.weight.shape[0], *(s // 2 for s in self.conv.output_shape(shape)[2:]))

    def _block_weights(self):
        """(4F, C*(KH+1)*(KW+1) + 1): row (dy*2 + dx)*F + f is filter f shifted by (dy, dx), then its bias; all times
        the activation's input_scale."""
        xp = get_array_module(self.weight.data)
        f, c, kh, kw = self.weight.shape
        wb = xp.zeros((4, f, c * (kh + 1) * (kw + 1) + 1), dtype=self.weight.data.dtype)
        grid = wb[:, :, :-1].reshape(2, 2, f, c, kh + 1, kw + 1)  # a view: (dy, dx, F, C, KH+1, KW+1)
        for dy in range(2):
            for dx in range(2):
                grid[dy, dx, :, :, dy : dy + kh, dx : dx + kw] = self.weight.data
        wb[:, :, -1] = self.bias.data
        if self.activation.input_scale != 1:
            wb *= wb.dtype.type(self.activation.input_scale)
        return wb.reshape(4 * f, -1)

    def _columns(self, x):
        """x (N, C, H, W) -> (C*(KH+1)*(KW+1) + 1, OH/2*OW/2*N): each block's input patch, then a row of ones."""
        xp = get_array_module(x)
        n, c, h, w = x.shape
        _, _, kh, kw = self.weight.shape
        p = self.padding
        if xp is np and h % 2 == w % 2 == p % 2 == 0:
            return self._columns_from_parity_planes(x)
        if p:  # (C, H+2p, W+2p, N): the border is zeroed once, when the array is made
            xb = self._scratch("padded", (c, h + 2 * p, w + 2 * p, n), x.dtype, xp, zeros=True)
            xb[:, p : p + h, p : p + w, :] = x.transpose(1, 2, 3, 0)
        else:
            xb = xp.ascontiguousarray(x.transpose(1, 2, 3, 0))  # no copy if x is a batch-last view
        win = windows(xb, kh + 1, kw + 1, stride=2)  # (C, KH+1, KW+1, OH/2, OW/2, N), a view
        k = c * (kh + 1) * (kw + 1)
        cols = self._scratch("cols", (k + 1, win[0, 0, 0].size), x.dtype, xp)
        cols[:k].reshape(win.shape)[...] = win  # the one copy
        cols[k] = 1
        return cols, xb.shape

    def _columns_from_parity_planes(self, x):
        """The same columns as _columns, copied in runs of OW/2*N numbers instead of N (NumPy, H, W and padding even).

        The padded input is stored as its four parity planes, (C, 2, 2, (H+2p)/2, (W+2p)/2, N): padded row 2*Y + a is
        row Y of plane a. Window row i = 2*ii + a of block row Y is then plane row Y + ii, so for each (c, i, j, Y)
        the block columns (X, n) are one contiguous run of the planes, where in (C, H, W, N) memory they sit at
        stride 2 and the copy moves runs of N.
        """
        n, c, h, w = x.shape
        _, _, kh, kw = self.weight.shape
        p, hp, wp = self.padding, h + 2 * self.padding, w + 2 * self.padding
        ob_h, ob_w = (hp - kh - 1) // 2 + 1, (wp - kw - 1) // 2 + 1  # block rows and columns
        planes = self._scratch("planes", (c, 2, 2, hp // 2, wp // 2, n), x.dtype, np, zeros=True)  # [c, a, b, Y, X, n]
        # Input row h sits at padded row h + p = 2 * (h // 2 + p // 2) + h % 2 (p even); the border stays zero.
        q = p // 2
        parity = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(1, 3, 5, 2, 4, 0)  # a view: [c, a, b, Y, X, n]
        planes[:, :, :, q : q + h // 2, q : q + w // 2, :] = parity
        sc, sa, sb, sy, sx, sn = planes.strides
        shape = (c, (kh + 1) // 2, 2, (kw + 1) // 2, 2, ob_h, ob_w, n)  # [c, ii, a, jj, b, Y, X, n]: rows (c, i, j)
        win = np.ndarray(shape, x.dtype, buffer=planes, strides=(sc, sy, sa, sx, sb, sy, sx, sn))
        k = c * (kh + 1) * (kw + 1)
        cols = self._scratch("cols", (k + 1, ob_h * ob_w * n), x.dtype, np)
        cols[:k].reshape(shape)[...] = win  # the one copy
        cols[k] = 1
        return cols, (c, hp, wp, n)

    def _scratch(self, name, shape, dtype, xp, zeros=False):
        """An array this layer keeps from call to call, made again only when the shape changes. The next forward
        overwrites it, as any layer's next forward replaces its cache."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buffers[name] = (xp.zeros if zeros else xp.empty)(shape, dtype=dtype)
        return buf

    def forward(self, x):
        xp = get_array_module(x)
        n, f, oh, ow = self.output_shape(x.shape)
        cols, padded_shape = self._columns(x)
        wb = self._block_weights()
        z = self._scratch("product", (4 * f, cols.shape[1]), x.dtype, xp)
        matmul(wb, cols, out=z)
        z = z.reshape(4, f, -1)  # (4, F, OH/2*OW/2*N): the four pixels (dy, dx) of each block
        act = self.activation
        a = act.forward(z, out=z)  # in place: the product is this layer's own scratch array
        out = self.pool.forward(a, act.out_scale)  # (F, OH/2*OW/2*N), a fresh array
        if act.out_shift:
            out += out.dtype.type(act.out_shift)
        self.cache = (x.shape, padded_shape, cols, wb)
        return out.reshape(f, oh, ow, n).transpose(3, 0, 1, 2)  # (N, F, OH/2, OW/2) view of batch-last memory

    def backward(self, dout):
        xp = get_array_module(dout)
        x_shape, padded_shape, cols, wb = self.cache
        f, _, kh, kw = self.weight.shape
        dout = dout.transpose(1, 2, 3, 0).reshape(f, -1)  # (F, OH/2*OW/2*N); a view when batch-last
        act = self.activation
        da = self.pool.backward(dout, act.out_scale)  # (4, F, P), or (1, F, P) that broadcasts over the four
        dz = act.backward(da, out=self._scratch("dz", (4, f, cols.shape[1]), da.dtype, xp))
        dz = dz.reshape(4 * f, -1)  # (4F, P): the gradient of the product, which is input_scale * the convolution
        dwb = matmul(dz, cols.T)  # (4F, C*(KH+1)*(KW+1) + 1)
        grid = dwb[:, :-1].reshape(2, 2, f, -1, kh + 1, kw + 1)  # each filter's four shifted copies
        dw = grid[0, 0, :, :, :kh, :kw] + grid[0, 1, :, :, :kh, 1:]
        dw += grid[1, 0, :, :, 1:, :kw]
        dw += grid[1, 1, :, :, 1:, 1:]
        db = dwb[:, -1].reshape(4, f).sum(axis=0)
        if act.input_scale != 1:
            dw *= dw.dtype.type(act.input_scale)
            db *= db.dtype.type(act.input_scale)
        self.weight.grad, self.bias.grad = dw, db
        if not self.input_grad:
            return None
        dcols = matmul(wb[:, :-1].T, dz, out=cols[:-1])  # the columns are used up: their memory takes dcols
        dxb = col2im_stride2(dcols, padded_shape, kh + 1, kw + 1)  # (C, H+2p, W+2p, N)
        p, (_, _, h, w) = self.padding, x_shape
        return dxb[:, p : p + h, p : p + w, :].transpose(3, 0, 1, 2)


class BatchLastLinear(Layer):
    """A layers.Linear whose input gradient keeps the input's memory order.

    F5's input is a batch-last view of ConvPool's output ((N, 400) seen from (400, N) memory); computing dx as
    (W^T dout^T)^T gives it the same order, so ConvPool's backward reads it without a transposing copy. The same
    numbers as the Linear, up to the rounding of a differently ordered matrix product. `linear` does the forward
    pass and keeps its input; its parameters are this layer's.
    """

    def __init__(self, linear):
        self.linear, self.weight, self.bias, self.params = linear, linear.weight, linear.bias, linear.params

    def output_shape(self, shape):
        return self.linear.output_shape(shape)

    def forward(self, x):
        return self.linear.forward(x)

    def backward(self, dout):
        x = self.linear.x
        if not (x.flags.f_contiguous and not x.flags.c_contiguous):
            return self.linear.backward(dout)
        self.weight.grad = matmul(dout.T, x)  # (out, in)
        self.bias.grad = dout.sum(axis=0)
        return matmul(self.weight.data.T, dout.T).T  # (N, in) view of (in, N) memory
