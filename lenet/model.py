"""LeNet-5 for 28x28 grey images, built from the layers in layers.py.

    C1  conv 1->6, 5x5, padding 2   (N, 6, 28, 28)
        activation, 2x2 pool        (N, 6, 14, 14)
    C3  conv 6->16, 5x5             (N, 16, 10, 10)
        activation, 2x2 pool        (N, 16, 5, 5)
        flatten                     (N, 400)
    F5  linear 400->120, activation
    F6  linear 120->84, activation
    F7  linear 84->10               (N, 10) logits

The tutorial this project grew from leaves F5 and F6 linear, which collapses F5-F7 into one affine map;
we follow LeNet-5 and put the activation after them. Parameter names and layouts are PyTorch's for the
same model (c1.weight (6, 1, 5, 5), ..., f7.bias (10,)), so weights move between the two unchanged.
"""

import numpy as np

from .backend import backend_name, get_array_module, get_backend, to_numpy
from .errors import LenetError
from .layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sigmoid, Tanh

# The one table of activations and poolings by name (the speed wing maps these layers to its own forms).
ACTIVATIONS = {"sigmoid": Sigmoid, "relu": ReLU, "tanh": Tanh}
POOLS = {"avg": AvgPool2d, "max": MaxPool2d}
DTYPES = ("float32", "float64")
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10

# (name, kind, shape of weight): the learnable layers in order.
_LEARNABLE = (
    ("c1", "conv", (6, 1, 5, 5)),
    ("c3", "conv", (16, 6, 5, 5)),
    ("f5", "linear", (120, 400)),
    ("f6", "linear", (84, 120)),
    ("f7", "linear", (10, 84)),
)


def init_weights(activation="sigmoid", seed=0):
    """Fresh float64 NumPy weights under PyTorch's names.

    Glorot-uniform for sigmoid and tanh (keeps the variance of activations and gradients near 1 through
    saturating units), He-normal for ReLU; biases zero.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name, _, shape in _LEARNABLE:
        receptive = int(np.prod(shape[2:])) if len(shape) == 4 else 1
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
        if activation == "relu":
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        else:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-limit, limit, size=shape)
        weights[f"{name}.weight"] = w
        weights[f"{name}.bias"] = np.zeros(shape[0])
    return weights


class LeNet5:
    """LeNet-5 with hand-written backward passes: the textbook stack of layers.py, each convolution stage three
    layers (Conv2d, activation, AvgPool2d/MaxPool2d).

    model = LeNet5(activation="sigmoid", pool="avg", backend="numpy", dtype="float32", seed=0)
    logits = model.forward(x)          # x (N, 1, 28, 28) -> (N, 10)
    dx = model.backward(dlogits)       # fills every parameter's .grad; dx is None unless input_grad=True

    With input_grad=True the first convolution also computes dL/dx, the gradient with respect to the images
    (for saliency maps); training needs none, so by default it is skipped.

    The speed wing computes the same numbers faster from outside: lenet.fast.fuse(model) is a twin that runs each
    stage as one fused layer on this model's own parameters. This class knows nothing of it.
    """

    def __init__(self, activation="sigmoid", pool="avg", backend="numpy", dtype="float32", seed=0, input_grad=False):
        if activation not in ACTIVATIONS:
            raise LenetError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        if pool not in POOLS:
            raise LenetError(f"unknown pooling {pool!r}; choose one of: {', '.join(POOLS)}")
        if str(dtype) not in DTYPES:
            raise LenetError(f"unsupported dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
        self.activation, self.pool, self.input_grad = activation, pool, bool(input_grad)
        self.xp = get_backend(backend)
        self.dtype = np.dtype(dtype)
        w = {k: self.xp.asarray(v, dtype=self.dtype) for k, v in init_weights(activation, seed).items()}
        act, pool = ACTIVATIONS[activation], POOLS[pool]
        self.c1 = Conv2d(w["c1.weight"], w["c1.bias"], padding=2, input_grad=self.input_grad)
        self.c3 = Conv2d(w["c3.weight"], w["c3.bias"])
        self.f5 = Linear(w["f5.weight"], w["f5.bias"])
        self.f6 = Linear(w["f6.weight"], w["f6.bias"])
        self.f7 = Linear(w["f7.weight"], w["f7.bias"])
        self.layers = [
            ("c1", self.c1), ("act1", act()), ("s2", pool(2)),
            ("c3", self.c3), ("act3", act()), ("s4", pool(2)),
            ("flatten", Flatten()),
            ("f5", self.f5), ("act5", act()),
            ("f6", self.f6), ("act6", act()),
            ("f7", self.f7),
        ]  # fmt: skip

    @property
    def backend(self):
        return backend_name(self.xp)

    def config(self):
        """The options that rebuild this architecture (stored in checkpoints)."""
        return {"activation": self.activation, "pool": self.pool}

    # -- forward and backward -------------------------------------------------------------------
    def check_input(self, x):
        if get_array_module(x) is not self.xp:
            raise LenetError(f"input is a {type(x).__module__} array but the model lives on {self.backend}")
        if x.ndim != 4 or tuple(x.shape[1:]) != INPUT_SHAPE:
            raise LenetError(f"input must have shape (N, 1, 28, 28), got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise LenetError(f"input dtype {x.dtype} does not match the model's {self.dtype}")

    def forward(self, x):
        """(N, 1, 28, 28) -> logits (N, 10)."""
        self.check_input(x)
        for _, layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dlogits):
        """dL/dlogits (N, 10) -> fills .grad of every parameter; returns dL/dx (N, 1, 28, 28) or None (input_grad)."""
        d = dlogits
        for _, layer in reversed(self.layers):
            d = layer.backward(d)
        return d

    # -- parameters -----------------------------------------------------------------------------
    def named_parameters(self):
        """[(name, Parameter)] in PyTorch's order: c1.weight, c1.bias, ..., f7.bias."""
        return [(f"{name}.{p}", param) for name, _, _ in _LEARNABLE for p, param in getattr(self, name).params.items()]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_params(self):
        return sum(int(p.data.size) for p in self.parameters())

    def state_dict(self):
        """{name: NumPy array} with PyTorch's names and layouts (host copies)."""
        return {name: to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy weights in; refuses missing or extra keys and wrong shapes, naming them."""
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state]
        extra = [k for k in state if k not in params]
        if missing or extra:
            parts = ([f"missing keys: {', '.join(missing)}"] if missing else []) + (
                [f"unexpected keys: {', '.join(extra)}"] if extra else []
            )
            raise LenetError("state dict does not fit LeNet5: " + "; ".join(parts))
        for name, param in params.items():
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise LenetError(
                    f"state dict does not fit LeNet5: {name} has shape {tuple(value.shape)}, "
                    f"expected {tuple(param.shape)}"
                )
        for name, param in params.items():
            param.data[...] = self.xp.asarray(state[name], dtype=self.dtype)

    # -- description ----------------------------------------------------------------------------
    def summary(self, batch_size=-1):
        """A torchsummary-style table: each layer's output shape and parameter count, and the total."""
        line = "-" * 64
        rows = [line, f"{'Layer (type)':>25}  {'Output Shape':>20} {'Param #':>15}", "=" * 64]
        shape = (1, *INPUT_SHAPE)
        for name, layer in self.layers:
            shape = layer.output_shape(shape)
            label, shown = f"{type(layer).__name__}-{name}", str([batch_size, *shape[1:]])
            rows.append(f"{label:>25}  {shown:>20} {layer.num_params():>15,}")
        rows += [
            "=" * 64,
            f"Total params: {self.num_params():,}",
            f"Trainable params: {self.num_params():,}",
            "Non-trainable params: 0",
            line,
        ]
        return "\n".join(rows)
