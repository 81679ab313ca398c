"""Optimizers that update parameters in place, with PyTorch's update rules (torch.optim.SGD and Adam).

opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
opt.step()          # after model.backward(...) has filled every param.grad

Each step works on all parameters at once: the gradients are copied into one flat array and the optimizer's
state (velocity, moments) lives in flat arrays too, so a step is a dozen array operations on all 61,706 numbers
instead of a dozen per parameter array (ten of them). State dicts still hold one array per parameter.
"""

import math

from .backend import get_array_module, to_numpy
from .errors import LenetError


def flatten(arrays, out=None):
    """One flat array of `arrays`, one after another (written into `out` if given)."""
    if out is None:
        out = get_array_module(arrays[0]).empty(sum(a.size for a in arrays), dtype=arrays[0].dtype)
    # Each piece copied into its view of `out`: the same as concatenating, without a list of pieces on the side.
    for piece, a in zip(unflatten(out, [a.shape for a in arrays]), arrays, strict=True):
        piece[...] = a
    return out


def unflatten(flat, shapes):
    """The views of a flat array as arrays of `shapes`, one after another."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


class Optimizer:
    state_names = ()  # the flat state arrays, e.g. ("m", "v"); None until the first step needs them

    def __init__(self, params, lr):
        if not lr > 0:
            raise LenetError(f"learning rate must be positive, got {lr}")
        self.params = list(params)
        if not self.params:
            raise LenetError("the optimizer got no parameters")
        self.lr = lr
        self.steps = 0
        self.xp = get_array_module(self.params[0].data)
        self.state = dict.fromkeys(self.state_names)

    def unflat(self, flat):
        """The per-parameter views of a flat array."""
        return unflatten(flat, [p.shape for p in self.params])

    def apply(self, update):
        """p -= update, for every parameter, from a flat update."""
        for p, u in zip(self.params, self.unflat(update), strict=True):
            p.data -= u

    def step(self):
        """One update from every param.grad; L2 weight decay (both optimizers have it) is added here."""
        self.steps += 1
        g = flatten([p.grad for p in self.params])
        if self.weight_decay:
            g += self.weight_decay * flatten([p.data for p in self.params])
        self.update(g)

    # Optimizer state as {name.i: NumPy array, one per parameter} (for checkpoints) and back.
    def state_dict(self):
        out = {"steps": self.steps, "lr": self.lr}
        for name, flat in self.state.items():
            if flat is not None:
                out.update({f"{name}.{i}": to_numpy(b) for i, b in enumerate(self.unflat(flat))})
        return out

    def load_state_dict(self, state):
        self.steps, self.lr = int(state["steps"]), float(state["lr"])
        for name in self.state:
            values = [state.get(f"{name}.{i}") for i in range(len(self.params))]
            if any(v is None for v in values):
                self.state[name] = None
            else:
                dtype = self.params[0].data.dtype
                self.state[name] = flatten([self.xp.asarray(v, dtype=dtype) for v in values])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    g = grad + weight_decay * p;  v = momentum * v + g (v = g on the first step);
    p -= lr * (g + momentum * v if nesterov else v)
    """

    state_names = ("velocity",)

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise LenetError("momentum and weight decay must be >= 0")
        if nesterov and momentum == 0:
            raise LenetError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def update(self, g):
        if self.momentum:
            v = self.state["velocity"]
            if v is None:
                v = self.state["velocity"] = g.copy()
            else:
                v *= self.momentum
                v += g
            g = g + self.momentum * v if self.nesterov else v
        self.apply(self.lr * g)


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction and optional L2 weight decay, as torch.optim.Adam."""

    state_names = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def update(self, g):
        xp = self.xp
        if self.state["m"] is None:
            self.state["m"], self.state["v"] = xp.zeros_like(g), xp.zeros_like(g)
        m, v, t = self.state["m"], self.state["v"], self.steps
        # The step size folds in the first moment's bias correction; v_scale is sqrt of the second's.
        step_size, v_scale = self.lr / (1 - self.beta1**t), (1 - self.beta2**t) ** 0.5
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        g *= g
        v += (1 - self.beta2) * g
        denom = xp.sqrt(v)
        denom /= v_scale
        denom += self.eps
        update = xp.divide(m, denom, out=denom)
        update *= step_size
        self.apply(update)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
