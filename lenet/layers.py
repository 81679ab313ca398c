"""Layers with hand-written forward and backward passes.

Shapes: N batch, C channels (F filters out), H/W height and width, KH/KW kernel, OH/OW output.

Every layer is a small class: `forward(x)` caches what `backward` needs; `backward(dout)` returns
dL/dx and stores the gradients of its parameters in `param.grad` (overwritten, not accumulated, so
there is nothing to zero between steps). `dout` is never modified in place. Every layer keeps the
dtype of its input and works on NumPy and CuPy arrays alike (`xp = get_array_module(x)`).
"""

from .backend import get_array_module
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
        n = x.shape[0]
        f, _, kh, kw = self.weight.shape
        _, _, oh, ow = self.output_shape(x.shape)
        cols = im2col(x, kh, kw, self.stride, self.padding)  # (N*OH*OW, C*KH*KW)
        out = cols @ self.weight.data.reshape(f, -1).T  # (N*OH*OW, F)
        out += self.bias.data
        self.cache = (x.shape, cols)
        # (N, OH, OW, F) memory seen as (N, F, OH, OW): no transpose copy on the way out.
        return out.reshape(n, oh, ow, f).transpose(0, 3, 1, 2)

    def backward(self, dout):
        x_shape, cols = self.cache
        f, _, kh, kw = self.weight.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, f)  # (N*OH*OW, F); a view when dout came from forward
        self.weight.grad = (dout.T @ cols).reshape(self.weight.shape)  # (F, C*KH*KW) -> (F, C, KH, KW)
        self.bias.grad = dout.sum(axis=0)
        if not self.input_grad:
            return None
        dcols = dout @ self.weight.data.reshape(f, -1)  # (N*OH*OW, C*KH*KW)
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
        out = x @ self.weight.data.T
        out += self.bias.data
        return out

    def backward(self, dout):
        self.weight.grad = dout.T @ self.x  # (out, in)
        self.bias.grad = dout.sum(axis=0)
        return dout @ self.weight.data  # (N, in)


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
    """y = 1 / (1 + exp(-x)), computed as 0.5 + 0.5 tanh(x / 2): one transcendental, no overflow."""

    def output_shape(self, shape):
        return shape

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.tanh(x * x.dtype.type(0.5))
        y *= 0.5
        y += 0.5
        self.y = y
        return y

    def backward(self, dout):
        dx = 1 - self.y  # dy/dx = y (1 - y), from the cached output
        dx *= self.y
        dx *= dout
        return dx


class Tanh(Layer):
    def output_shape(self, shape):
        return shape

    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, dout):
        dx = self.y * self.y  # dy/dx = 1 - y^2
        dx -= 1
        dx *= -dout
        return dx


class ReLU(Layer):
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
        """For non-overlapping pooling that covers x exactly: the (N, C, OH, k, OW, k) view, else None."""
        n, c, h, w = x.shape
        if self.s != self.k or h % self.k or w % self.k:
            return None
        return x.reshape(n, c, h // self.k, self.k, w // self.k, self.k)

    def _window_cols(self, x):
        """Every window as a row: (N*C*OH*OW, KH*KW). Pooling is im2col with each channel its own image."""
        n, c, h, w = x.shape
        return im2col(x.reshape(n * c, 1, h, w), self.k, self.k, self.s)

    def _scatter(self, dcols, x_shape):
        n, c, h, w = x_shape
        return col2im(dcols, (n * c, 1, h, w), self.k, self.k, self.s).reshape(x_shape)


class AvgPool2d(_Pool2d):
    """Average over each KxK window. x (N, C, H, W) -> (N, C, OH, OW)."""

    def forward(self, x):
        self.x_shape = x.shape
        tiles = self._tiles(x)
        if tiles is not None:
            return tiles.mean(axis=(3, 5))
        out_shape = self.output_shape(x.shape)
        return self._window_cols(x).mean(axis=1).reshape(out_shape)

    def backward(self, dout):
        xp = get_array_module(dout)
        n, c, oh, ow = dout.shape
        k = self.k
        share = dout * dout.dtype.type(1.0 / (k * k))  # each input of a window gets 1/k^2 of its gradient
        if self.s == k and self.x_shape[2] == oh * k and self.x_shape[3] == ow * k:
            tiles = xp.broadcast_to(share[:, :, :, None, :, None], (n, c, oh, k, ow, k))
            return tiles.reshape(self.x_shape)
        dcols = xp.broadcast_to(share.reshape(-1, 1), (n * c * oh * ow, k * k))
        return self._scatter(dcols, self.x_shape)


class MaxPool2d(_Pool2d):
    """Maximum over each KxK window; the gradient goes to the first maximum, as in PyTorch."""

    def forward(self, x):
        xp = get_array_module(x)
        self.x_shape = x.shape
        cols = self._window_cols(x)  # (N*C*OH*OW, K*K)
        self.argmax = cols.argmax(axis=1)
        out = xp.take_along_axis(cols, self.argmax[:, None], axis=1)
        return out.reshape(self.output_shape(x.shape))

    def backward(self, dout):
        xp = get_array_module(dout)
        dcols = xp.zeros((dout.size, self.k * self.k), dtype=dout.dtype)
        xp.put_along_axis(dcols, self.argmax[:, None], dout.reshape(-1, 1), axis=1)
        return self._scatter(dcols, self.x_shape)


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    forward(logits (N, K), labels (N,)) -> loss, a 0-d array (stays on the device; float() it at the edge).
    backward() -> dL/dlogits (N, K) = (softmax - onehot) / N.
    """

    def forward(self, logits, labels):
        xp = get_array_module(logits)
        n = logits.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)  # exp cannot overflow
        log_z = xp.log(xp.exp(shifted).sum(axis=1))
        rows = xp.arange(n)
        self.probs = xp.exp(shifted - log_z[:, None])
        self.labels = labels
        return (log_z - shifted[rows, labels]).mean()

    def backward(self):
        xp = get_array_module(self.probs)
        n = self.probs.shape[0]
        d = self.probs.copy()
        d[xp.arange(n), self.labels] -= 1
        d *= d.dtype.type(1.0 / n)
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
