"""The fused twin of a LeNet5: the same network on the same parameters, each convolution stage one fused layer.

    twin = fuse(model)        # model: the textbook lenet.model.LeNet5, left as it is
    twin.forward(x)           # the numbers of model.forward(x), computed faster

What it must equal: the model it is made from, forward and backward, up to the rounding of the fused stage's other
order of arithmetic (tests/test_fast.py: 1e-10 in float64). The twin computes with the model's own Parameter objects,
so an optimizer made on model.parameters() trains both, and the model's state dict and checkpoints are the twin's.
Each layer of the twin is its own object with its own caches, so the two can run one after the other.

- C1 and C3, each Conv2d -> activation -> 2x2 pooling in the model, become one convpool.ConvPool;
- F5 becomes convpool.BatchLastLinear, which hands ConvPool its gradient in the memory order ConvPool reads fastest;
- every other layer is a copy of the model's (its own cache, the same Parameter objects).
"""

import copy

from ..model import LeNet5
from .convpool import BatchLastLinear, ConvPool

STAGES = (("c1", "act1", "s2"), ("c3", "act3", "s4"))  # the model's layers that each ConvPool computes


class FusedLeNet5(LeNet5):
    """The fused twin of `model` (see the module docstring); a LeNet5 in everything but its layers."""

    def __init__(self, model):
        vars(self).update(vars(model))  # the options, backend, dtype and input_grad; the layers are replaced below
        own = {name: copy.copy(layer) for name, layer in model.layers}  # own caches, the same Parameter objects
        # Each stage under its three names ("c1+act1+s2"), computed from its convolution's parameters.
        fused = {"+".join(stage): ConvPool(own[stage[0]], self.activation, self.pool) for stage in STAGES}
        own["f5"] = BatchLastLinear(own["f5"])
        parts = {name for stage in STAGES for name in stage}
        self.layers = [*fused.items(), *((name, layer) for name, layer in own.items() if name not in parts)]
        self.c1, self.c3 = fused.values()
        self.f5, self.f6, self.f7 = own["f5"], own["f6"], own["f7"]

    def replica(self):
        """A twin with Parameter objects of its own on this twin's weight arrays: its own gradients and caches, the
        same weights, so that another thread can run a chunk of the batch (parallel.py); an optimizer step on this
        twin's parameters, in place, updates both."""
        return fused_on({name: p.data for name, p in self.named_parameters()}, **settings(self), backend=self.backend)


def fuse(model):
    """The fused twin of a LeNet5 `model`, on the model's own parameters."""
    return FusedLeNet5(model)


def settings(model):
    """What rebuilds `model`'s network but its weights: fused_on's keyword arguments (what a worker process is sent)."""
    return {**model.config(), "dtype": model.dtype.name, "input_grad": model.input_grad}


def fused_on(arrays, activation, pool, dtype, input_grad=False, backend="numpy"):
    """The fused twin of a LeNet5 whose parameters hold `arrays` ({name: array}, used as they are, not copied)."""
    model = LeNet5(activation, pool, backend, dtype, input_grad=input_grad)
    for name, p in model.named_parameters():
        p.data = arrays[name]
    return fuse(model)
