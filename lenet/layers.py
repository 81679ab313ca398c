"""Layers with hand-written forward and backward passes.

Shapes: N batch, C channels (F filters out), H/W height and width, KH/KW kernel, OH/OW output.

Every layer is a small class: `forward(x)` caches what `backward` needs; `backward(dout)` returns
dL/dx and stores the gradients of its parameters in `param.grad` (overwritten, not accumulated, so
there is nothing to zero between steps). `dout` is never modified in place. Every layer keeps the
dtype of its input and works on NumPy and CuPy arrays alike (`xp = get_array_module(x)`).
"""

import numpy as np

from .backend import get_array_module, matmul
from .im2col import batch_last, col2im, col2im_stride2, im2col, output_size, windows


class Parameter:
    """A trainable array and the gradient the last backward pass gave it."""

    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape


class Layer:
    params = {}  # name -> Parameter; layers with parameters set their own

    def __call__(self, x):
        return self.forward(x)

    def output_shape(self, shape):
        """Shape of the output for an input of `shape` (batch size included)."""
        raise NotImplementedError

    def num_params(self):
        return sum(int(p.data.size) for p in self.params.values())


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as in PyTorch) via im2col and one matrix product.

    weight (F, C, KH, KW), bias (F,). x (N, C, H, W) -> (N, F, OH, OW).
    With input_grad=False, backward skips dL/dx (for a first layer, whose input is the images).
    LeNet5 runs its convolutions through ConvPool below (the same arithmetic, arranged for speed); this
    is the textbook form, and ConvPool is tested against it.
    """

    def __init__(self, weight, bias, stride=1, padding=0, input_grad=True):
        self.weight, self.bias = Parameter(weight), Parameter(bias)
        self.params = {"weight": self.weight, "bias": self.bias}
        self.stride, self.padding, self.input_grad = stride, padding, input_grad

    def output_shape(self, shape):
        n, _, h, w = shape
        f, _, kh, kw = self.weight.shape
        return (n, f, output_size(h, kh, self.stride, self.padding), output_size(w, kw, self.stride, self.padding))

    def forward(self, x):
        f, _, kh, kw = self.weight.shape
        n, _, oh, ow = self.output_shape(x.shape)
        cols = im2col(x, kh, kw, self.stride, self.padding)  # (C*KH*KW, OH*OW*N)
        out = matmul(self.weight.data.reshape(f, -1), cols)  # (F, OH*OW*N)
        out += self.bias.data[:, None]
        self.cache = (x.shape, cols)
        # (F, OH, OW, N) memory seen as (N, F, OH, OW): no transpose copy on the way out.
        return out.reshape(f, oh, ow, n).transpose(3, 0, 1, 2)

    def backward(self, dout):
        x_shape, cols = self.cache
        f, _, kh, kw = self.weight.shape
        dout = dout.transpose(1, 2, 3, 0).reshape(f, -1)  # (F, OH*OW*N); a view when dout is batch-last
        self.weight.grad = matmul(dout, cols.T).reshape(self.weight.shape)
        self.bias.grad = dout.sum(axis=1)
        if not self.input_grad:
            return None
        dcols = matmul(self.weight.data.reshape(f, -1).T, dout)  # (C*KH*KW, OH*OW*N)
        return col2im(dcols, x_shape, kh, kw, self.stride, self.padding)


class Linear(Layer):
    """Affine map y = x W^T + b with PyTorch's layout: weight (out, in), bias (out,). x (N, in) -> (N, out)."""

    def __init__(self, weight, bias):
        self.weight, self.bias = Parameter(weight), Parameter(bias)
        self.params = {"weight": self.weight, "bias": self.bias}

    def output_shape(self, shape):
        return (shape[0], self.weight.shape[0])

    def forward(self, x):
        self.x = x
        out = matmul(x, self.weight.data.T)
        out += self.bias.data
        return out

    def backward(self, dout):
        self.weight.grad = matmul(dout.T, self.x)  # (out, in)
        self.bias.grad = dout.sum(axis=0)
        if self.x.flags.f_contiguous and not self.x.flags.c_contiguous:
            # x is a batch-last view (F5's input from ConvPool): give dx the same memory order, so the layer
            # below reads it without a transposing copy.
            return matmul(self.weight.data.T, dout.T).T  # (N, in) view of (in, N) memory
        return matmul(dout, self.weight.data)  # (N, in)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in PyTorch's (C, H, W) order, so Linear weights match torch's."""

    def output_shape(self, shape):
        size = 1
        for d in shape[1:]:
            size *= d
        return (shape[0], size)

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(self.x_shape)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)). Where exp(-x) overflows to inf (x < -88 in float32) y is exactly 0, as it should be.

    exp is the cheaper transcendental here (measured: about 1.4x faster than tanh in float32).
    """

    def output_shape(self, shape):
        return shape

    def forward(self, x, out=None):
        """y = sigmoid(x), written into `out` if given (which may be x itself: ConvPool overwrites its product)."""
        xp = get_array_module(x)
        y = xp.negative(x, out=out)  # same memory layout as x (ufuncs keep it)
        with np.errstate(over="ignore"):
            xp.exp(y, out=y)
        y += 1
        xp.reciprocal(y, out=y)
        self.y = y
        return y

    def backward(self, dout, out=None):
        dx = get_array_module(dout).subtract(1, self.y, out=out)  # dy/dx = y (1 - y), from the cached output
        dx *= self.y
        dx *= dout
        return dx


class Tanh(Layer):
    def output_shape(self, shape):
        return shape

    def forward(self, x, out=None):
        self.y = get_array_module(x).tanh(x, out=out)
        return self.y

    def backward(self, dout, out=None):
        dx = get_array_module(dout).multiply(self.y, self.y, out=out)  # dy/dx = 1 - y^2
        dx -= 1
        dx *= -dout
        return dx


class ReLU(Layer):
    def output_shape(self, shape):
        return shape

    def forward(self, x, out=None):
        self.mask = x > 0
        return get_array_module(x).multiply(x, self.mask, out=out)

    def backward(self, dout, out=None):
        return get_array_module(dout).multiply(dout, self.mask, out=out)


class _Pool2d(Layer):
    """Shared shape logic of the pooling layers: kernel k, stride s (default k), no padding."""

    def __init__(self, kernel_size=2, stride=None):
        self.k = kernel_size
        self.s = kernel_size if stride is None else stride

    def output_shape(self, shape):
        n, c, h, w = shape
        return (n, c, output_size(h, self.k, self.s, 0), output_size(w, self.k, self.s, 0))

    def _tiles(self, x):
        """For non-overlapping windows that cover x exactly: the (N, C, OH, k, OW, k) view of x, else None."""
        n, c, h, w = x.shape
        if self.k == 1 or self.s != self.k or h % self.k or w % self.k:
            return None
        return x.reshape(n, c, h // self.k, self.k, w // self.k, self.k)

    # The general path: pooling is im2col with each channel its own image. Columns come in (OH, OW, N*C) order.
    def _window_cols(self, x):
        """Every window as a column: (KH*KW, OH*OW*N*C)."""
        n, c, h, w = x.shape
        return im2col(x.reshape(n * c, 1, h, w), self.k, self.k, self.s)

    def _from_columns(self, values, x_shape):
        """(OH*OW*N*C,) in column order -> (N, C, OH, OW)."""
        n, c, oh, ow = self.output_shape(x_shape)
        return values.reshape(oh, ow, n, c).transpose(2, 3, 0, 1)

    def _to_columns(self, dout):
        """(N, C, OH, OW) -> (1, OH*OW*N*C) in column order."""
        return dout.transpose(2, 3, 0, 1).reshape(1, -1)

    def _scatter(self, dcols, x_shape):
        n, c, h, w = x_shape
        return col2im(dcols, (n * c, 1, h, w), self.k, self.k, self.s).reshape(x_shape)

    # Stacked windows: a (K*K, ...) array whose K*K slabs are the window positions in row-major order (ConvPool
    # computes its convolution that way), pooled over the first axis. backward_stacked(dout) takes the pooled
    # gradient (...) and returns one that broadcasts against the stack.


class AvgPool2d(_Pool2d):
    """Average over each KxK window. x (N, C, H, W) -> (N, C, OH, OW).

    Non-overlapping windows (the usual 2x2, stride 2) take a fast path: k*k strided slices added up, which
    is several times faster than a mean over two axes of a reshaped array, and keeps x's memory layout.
    """

    def forward(self, x):
        self.x = x
        tiles = self._tiles(x)
        if tiles is None:
            return self._from_columns(self._window_cols(x).mean(axis=0), x.shape)
        rows = tiles[:, :, :, 0]  # (N, C, OH, OW, k): sum the k rows of each window, then its k columns
        for i in range(1, self.k):
            rows = rows + tiles[:, :, :, i]
        out = rows[..., 0]
        for j in range(1, self.k):
            out = out + rows[..., j]
        out *= out.dtype.type(1.0 / (self.k * self.k))
        return out

    def backward(self, dout):
        xp = get_array_module(dout)
        k = self.k
        share = dout * dout.dtype.type(1.0 / (k * k))  # each input of a window gets 1/k^2 of its gradient
        dx = xp.empty_like(self.x)  # x's memory layout, so the layer below reads it in order
        tiles = self._tiles(dx)
        if tiles is None:
            share = self._to_columns(share)
            return self._scatter(xp.broadcast_to(share, (k * k, share.size)), self.x.shape)
        for i in range(k):
            for j in range(k):
                tiles[:, :, :, i, :, j] = share
        return dx

    def forward_stacked(self, a):
        out = a[0] + a[1]
        for slab in a[2:]:
            out += slab
        out *= out.dtype.type(1.0 / (self.k * self.k))
        return out

    def backward_stacked(self, dout):
        return (dout * dout.dtype.type(1.0 / (self.k * self.k)))[None]  # the same share for every position


class MaxPool2d(_Pool2d):
    """Maximum over each KxK window; the gradient goes to the first maximum (row-major), as in PyTorch.

    Non-overlapping windows take a fast path over the k*k strided slices, remembering which slice won;
    other windows go through im2col and argmax.
    """

    def forward(self, x):
        xp = get_array_module(x)
        self.x = x
        tiles = self._tiles(x)
        if tiles is None:
            cols = self._window_cols(x)  # (K*K, OH*OW*N*C)
            self.argmax = cols.argmax(axis=0)  # the first maximum of each window
            return self._from_columns(xp.take_along_axis(cols, self.argmax[None, :], axis=0), x.shape)
        out = xp.copy(tiles[:, :, :, 0, :, 0], order="K")
        self.winner = xp.zeros(out.shape, dtype=np.int8)  # which window position holds the maximum
        for pos in range(1, self.k * self.k):
            candidate = tiles[:, :, :, pos // self.k, :, pos % self.k]
            bigger = candidate > out  # strictly: on a tie the earlier position keeps it
            xp.copyto(out, candidate, where=bigger)
            self.winner = xp.where(bigger, np.int8(pos), self.winner)
        return out

    def backward(self, dout):
        xp = get_array_module(dout)
        dx = xp.empty_like(self.x)  # x's memory layout
        tiles = self._tiles(dx)
        if tiles is None:
            positions = xp.arange(self.k * self.k)[:, None]
            dcols = (positions == self.argmax[None, :]) * self._to_columns(dout)  # (K*K, OH*OW*N*C)
            return self._scatter(dcols, self.x.shape)
        for pos in range(self.k * self.k):
            tiles[:, :, :, pos // self.k, :, pos % self.k] = dout * (self.winner == pos)
        return dx

    def forward_stacked(self, a):
        xp = get_array_module(a)
        self.stacked_winner = a.argmax(axis=0)  # the first maximum, as forward takes it
        return xp.take_along_axis(a, self.stacked_winner[None], axis=0)[0]

    def backward_stacked(self, dout):
        xp = get_array_module(dout)
        positions = xp.arange(self.k * self.k).reshape((-1,) + (1,) * dout.ndim)
        return (positions == self.stacked_winner[None]) * dout  # the whole gradient to the winner


class ConvPool(Layer):
    """Conv2d (stride 1), an activation and 2x2 pooling (stride 2) in one layer, the convolution computed
    on 2x2 blocks of output pixels. LeNet5's C1 and C3 stages run through it.

    weight (F, C, KH, KW) and bias (F,) in PyTorch's layout, KH and KW odd; `activation` a layer instance
    (Sigmoid(), Tanh(), ReLU()); pool "avg" or "max". x (N, C, H, W) -> (N, F, OH//2, OW//2), the same
    numbers as Conv2d -> activation -> AvgPool2d(2) or MaxPool2d(2).

    Each column of the im2col matrix is the (KH+1)x(KW+1) input patch under one 2x2 block of outputs
    (windows at stride 2), and the block weights (4F, C*(KH+1)*(KW+1)) hold every filter four times,
    shifted to the block positions (dy, dx), zeros elsewhere. The product has rows (dy, dx, F) and columns
    (OH/2, OW/2, N). Against Conv2d's layout (measured at batch 128, one core, 5x5 kernels):
      - pooling is a sum (or maximum) of four contiguous row slabs, no strided gathers, and its backward
        is a broadcast inside the activation's backward;
      - there are 36/(4*25) = 0.36 times as many column entries to copy, and col2im makes 9 += not 25;
      - the products have 4F rows, 24 instead of 6 for C1, which BLAS runs 2.5x faster per multiply-add
        (59 against 22 GFLOP/s), though there are 36/25 = 1.44 times as many multiply-adds.
    The bias rides in the product: the columns end with a row of ones, the block weights with the biases.
    """

    def __init__(self, weight, bias, activation, pool="avg", padding=0, input_grad=True):
        f, _, kh, kw = weight.shape
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"ConvPool needs odd kernel sizes, got {kh}x{kw}")
        self.conv = Conv2d(weight, bias, padding=padding, input_grad=input_grad)  # the parameters and shapes
        self.weight, self.bias, self.params = self.conv.weight, self.conv.bias, self.conv.params
        self.activation = activation
        self.pool = {"avg": AvgPool2d, "max": MaxPool2d}[pool](2)
        self.padding, self.input_grad = padding, input_grad
        self._buffers = {}

    def parts(self):
        """The layers this one computes, in order (for summaries)."""
        return [self.conv, self.activation, self.pool]

    def output_shape(self, shape):
        return self.pool.output_shape(self.conv.output_shape(shape))

    def _block_weights(self):
        """(4F, C*(KH+1)*(KW+1) + 1): row (dy*2 + dx)*F + f is filter f shifted by (dy, dx), then its bias."""
        xp = get_array_module(self.weight.data)
        f, c, kh, kw = self.weight.shape
        wb = xp.zeros((4, f, c * (kh + 1) * (kw + 1) + 1), dtype=self.weight.data.dtype)
        grid = wb[:, :, :-1].reshape(2, 2, f, c, kh + 1, kw + 1)  # a view: (dy, dx, F, C, KH+1, KW+1)
        for dy in range(2):
            for dx in range(2):
                grid[dy, dx, :, :, dy : dy + kh, dx : dx + kw] = self.weight.data
        wb[:, :, -1] = self.bias.data
        return wb.reshape(4 * f, -1)

    def _columns(self, x):
        """x (N, C, H, W) -> (C*(KH+1)*(KW+1) + 1, OH/2*OW/2*N): each block's input patch, then a row of ones."""
        xp = get_array_module(x)
        n, c, h, w = x.shape
        _, _, kh, kw = self.weight.shape
        p = self.padding
        if p:  # (C, H+2p, W+2p, N): the border is zeroed once, when the array is made
            xb = batch_last(x, p, out=self._scratch("padded", (c, h + 2 * p, w + 2 * p, n), x.dtype, xp, zeros=True))
        else:
            xb = batch_last(x)  # no copy if x is a batch-last view
        win = windows(xb, kh + 1, kw + 1, stride=2)  # (C, KH+1, KW+1, OH/2, OW/2, N), a view
        k = c * (kh + 1) * (kw + 1)
        cols = self._scratch("cols", (k + 1, win[0, 0, 0].size), x.dtype, xp)
        cols[:k].reshape(win.shape)[...] = win  # the one copy
        cols[k] = 1
        return cols, xb.shape

    def _scratch(self, name, shape, dtype, xp, zeros=False):
        """An array this layer keeps from call to call, made again only when the shape changes.

        The columns, the padded input and the products are a step's biggest arrays. Fresh ones each step
        landed on memory that the previous step's cache still held, cold in the processor caches; reusing
        them (and running the activation in place) made training steps 5-12% and inference 8-20% faster
        (batch 32 and 128, one core, measured side by side). The next forward overwrites them, as any
        layer's next forward replaces its cache.
        """
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
        a = self.activation.forward(z, out=z)  # in place: the product is this layer's own scratch array
        out = self.pool.forward_stacked(a)  # (F, OH/2*OW/2*N)
        self.cache = (x.shape, padded_shape, cols, wb)
        return out.reshape(f, oh, ow, n).transpose(3, 0, 1, 2)  # (N, F, OH/2, OW/2) view of batch-last memory

    def backward(self, dout):
        xp = get_array_module(dout)
        x_shape, padded_shape, cols, wb = self.cache
        f, _, kh, kw = self.weight.shape
        dout = dout.transpose(1, 2, 3, 0).reshape(f, -1)  # (F, OH/2*OW/2*N); a view when batch-last
        da = self.pool.backward_stacked(dout)  # (4, F, P), or (1, F, P) that broadcasts over the four
        dz = self.activation.backward(da, out=self._scratch("dz", (4, f, cols.shape[1]), da.dtype, xp))
        dz = dz.reshape(4 * f, -1)  # (4F, P)
        dwb = matmul(dz, cols.T)  # (4F, C*(KH+1)*(KW+1) + 1)
        grid = dwb[:, :-1].reshape(2, 2, f, -1, kh + 1, kw + 1)  # each filter's four shifted copies
        dw = grid[0, 0, :, :, :kh, :kw] + grid[0, 1, :, :, :kh, 1:]
        dw += grid[1, 0, :, :, 1:, :kw]
        dw += grid[1, 1, :, :, 1:, 1:]
        self.weight.grad = dw
        self.bias.grad = dwb[:, -1].reshape(4, f).sum(axis=0)
        if not self.input_grad:
            return None
        dcols = matmul(wb[:, :-1].T, dz, out=cols[:-1])  # the columns are used up: their memory takes dcols
        dxb = col2im_stride2(dcols, padded_shape, kh + 1, kw + 1)  # (C, H+2p, W+2p, N)
        p, (_, _, h, w) = self.padding, x_shape
        return dxb[:, p : p + h, p : p + w, :].transpose(3, 0, 1, 2)


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    forward(logits (N, K), labels (N,)) -> loss, a 0-d array (stays on the device; float() it at the edge).
    backward() -> dL/dlogits (N, K) = (softmax - onehot) / N.
    """

    def forward(self, logits, labels):
        xp = get_array_module(logits)
        shifted = logits - logits.max(axis=1, keepdims=True)  # exp cannot overflow
        e = xp.exp(shifted)
        z = e.sum(axis=1, keepdims=True)
        self.probs = e / z
        # A one-hot mask rather than fancy indexing (shifted[arange(n), labels]): CuPy's fancy indexing may move
        # index data from the host, which a CUDA graph cannot record; the mask is elementwise work.
        self.onehot = labels[:, None] == xp.arange(logits.shape[1])  # (N, K) bool
        return (xp.log(z[:, 0]) - xp.where(self.onehot, shifted, shifted.dtype.type(0)).sum(axis=1)).mean()

    def backward(self):
        d = self.probs - self.onehot  # the label's probability minus 1, the others as they are
        d *= d.dtype.type(1.0 / d.shape[0])
        return d

    __call__ = forward


__all__ = [
    "AvgPool2d",
    "Conv2d",
    "ConvPool",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Parameter",
    "ReLU",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
]
