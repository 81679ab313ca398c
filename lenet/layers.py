"""Layers with hand-written forward and backward passes.

Shapes: N batch, C channels (F filters out), H/W height and width, KH/KW kernel, OH/OW output.

Every layer is a small class: `forward(x)` caches what `backward` needs; `backward(dout)` returns
dL/dx and stores the gradients of its parameters in `param.grad` (overwritten, not accumulated, so
there is nothing to zero between steps). `dout` is never modified in place. Every layer keeps the
dtype of its input and works on NumPy and CuPy arrays alike (`xp = get_array_module(x)`).
"""

import numpy as np

from .backend import get_array_module, matmul
from .im2col import col2im, im2col, output_size


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

    forward:  cols = im2col(x);  out = W.reshape(F, C*KH*KW) @ cols + b
    backward: dW = dout @ cols^T;  db = sum of dout over the columns;  dx = col2im(W^T @ dout)
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
        out = matmul(x, self.weight.data.T)  # x W^T  (N, out)
        out += self.bias.data
        return out

    def backward(self, dout):
        self.weight.grad = matmul(dout.T, self.x)  # dL/dW = dout^T x  (out, in)
        self.bias.grad = dout.sum(axis=0)  # dL/db = sum of dout over the batch  (out,)
        return matmul(dout, self.weight.data)  # dL/dx = dout W  (N, in)


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
    """y = 1 / (1 + exp(-x));  dy/dx = y (1 - y), so backward needs only the cached output.

    Where exp(-x) overflows to inf (x < -88 in float32) y is exactly 0, as it should be: the overflow is expected.
    """

    def output_shape(self, shape):
        return shape

    def forward(self, x):
        xp = get_array_module(x)
        with np.errstate(over="ignore"):
            self.y = 1 / (1 + xp.exp(-x))
        return self.y

    def backward(self, dout):
        return dout * (self.y * (1 - self.y))


class Tanh(Layer):
    """y = tanh(x);  dy/dx = 1 - y^2."""

    def output_shape(self, shape):
        return shape

    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, dout):
        return dout * (1 - self.y * self.y)


class ReLU(Layer):
    """y = max(x, 0);  dy/dx = 1 where x > 0, else 0 (PyTorch's choice at x = 0)."""

    def output_shape(self, shape):
        return shape

    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


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
        # loss = log(sum exp) - shifted logit of the label, picked with a one-hot mask (elementwise work, which
        # also keeps the step free of host-to-device index copies on CuPy).
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
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Parameter",
    "ReLU",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
]
