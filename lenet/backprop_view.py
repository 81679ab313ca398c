"""The backward pass of one image, layer by layer, for the demo's page; and one SGD step on a private copy.

`backward_pass` runs the textbook model's own layers: forward through model.layers, the cross-entropy loss
against a target class, then each layer's backward from F7 back to C1, the loop of LeNet5.backward, keeping what
every step hands on: dL/d(output) of each layer, dL/dx of the image, and every parameter's .grad. Nothing is
computed twice or another way, so the page shows exactly the numbers training uses.

`PrivateWeights` keeps, for each page session, a copy of the served model that SGD steps may change: the served
model, and the checkpoint it came from, never change. Copies are bounded in number (the least recently used goes).
"""

import secrets
from collections import OrderedDict

import numpy as np

from .backend import to_numpy
from .errors import LenetError
from .layers import SoftmaxCrossEntropy
from .model import LeNet5
from .optim import SGD
from .wire import pack, scale

LEARNABLE = ("c1", "c3", "f5", "f6", "f7")
MAX_SESSIONS = 16  # private copies kept at once: about 1 MB each (weights, gradients, a batch of one's caches)
MAX_LR = 10.0


def backward_pass(model, x, target):
    """One image through the model and back: x (28, 28) in [0, 1], target a class index (None: the predicted one).

    Returns {"outputs": {layer: its output}, "output_grads": {layer: dL/d(its output)}, "input_grad": dL/dx or
    None (a model without input_grad), "loss", "probabilities" (10,), "target"}; host NumPy copies, batch axis kept.
    Fills every parameter's .grad, as training's backward pass does.
    """
    xp = model.xp
    a = xp.asarray(x, dtype=model.dtype)[None, None]  # (1, 1, 28, 28)
    model.check_input(a)
    outputs = {"input": to_numpy(a).copy()}
    for name, layer in model.layers:
        a = layer.forward(a)
        outputs[name] = to_numpy(a).copy()
    if target is None:
        target = int(a.argmax())  # the predicted class, from this forward pass
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(a, xp.asarray([target]))
    probabilities = to_numpy(loss_fn.probs)[0].copy()
    d = loss_fn.backward()  # dL/dlogits = softmax - onehot  (1, 10)
    output_grads = {}
    for name, layer in reversed(model.layers):  # LeNet5.backward's loop, keeping each step
        output_grads[name] = to_numpy(d).copy()
        d = layer.backward(d)
    return {
        "outputs": outputs,
        "output_grads": output_grads,
        "input_grad": None if d is None else to_numpy(d).copy(),
        "loss": float(loss),
        "probabilities": probabilities,
        "target": target,
    }


def norm(a):
    """The L2 norm of a float64 array, summed by NumPy: np.linalg.norm calls BLAS, whose threads, where nothing
    holds them to one (a server started in another program), spin for milliseconds on a busy machine."""
    return float(np.sqrt(np.square(a).sum()))


def gradient_sizes(model, output_grads):
    """Per learnable layer, F7 first: the size of dL/dW (norm, mean |.|), of the weight, and of dL/d(output)."""
    sizes = []
    for name in reversed(LEARNABLE):
        layer = getattr(model, name)
        w, g = to_numpy(layer.weight.data).astype(np.float64), to_numpy(layer.weight.grad).astype(np.float64)
        d = output_grads[name].astype(np.float64)
        sizes.append(
            {
                "layer": name,
                "grad_norm": norm(g),
                "grad_mean_abs": float(np.abs(g).mean()),
                "weight_norm": norm(w),
                "output_grad_mean_abs": float(np.abs(d).mean()),
            }
        )
    return sizes


def backward_view(model, x, target, class_names, result=None, weights=True):
    """The JSON answer of /api/backward for image x and a target class (None: the predicted one).

    result: backward_pass(model, x, target) if it has just been run (the model's .grad must still be its own).
    weights: whether to send the weights too (a page that has them already drawn asks without: half the bytes).
    """
    if result is None:
        result = backward_pass(model, x, target)
    target = result["target"]
    probs = result["probabilities"]
    output_grads = result["output_grads"]
    layers = [
        {
            "name": name,
            "kind": type(layer).__name__,
            "grad": pack(output_grads[name][0]),
            "scale": scale(output_grads[name]),
        }
        for name, layer in reversed(model.layers)
    ]
    params = {}
    for name in LEARNABLE:
        layer = getattr(model, name)
        weight, bias = to_numpy(layer.weight.data), to_numpy(layer.bias.data)  # host copies: cheap on NumPy
        weight_grad, bias_grad = to_numpy(layer.weight.grad), to_numpy(layer.bias.grad)
        params[name] = {
            "weight_grad": pack(weight_grad),
            "bias_grad": pack(bias_grad),
            "grad_scale": scale(weight_grad),
        }
        if weights:
            params[name].update(weight=pack(weight), bias=pack(bias), weight_scale=scale(weight))
    input_grad = result["input_grad"]
    predicted = int(probs.argmax())
    return {
        "target": int(target),
        "target_name": class_names[target],
        "loss": result["loss"],
        "probabilities": [float(p) for p in probs],
        "predicted": predicted,
        "predicted_name": class_names[predicted],
        "activation": model.activation,
        "layers": layers,
        "input_grad": None if input_grad is None else {"grad": pack(input_grad[0, 0]), "scale": scale(input_grad)},
        "params": params,
        "sizes": gradient_sizes(model, output_grads),
    }


class PrivateWeights:
    """Copies of the served model, one per page session, that SGD steps change; the served model never does.

    get(None) is the served model. At most `limit` copies are kept: a new one pushes out the least recently used,
    whose page is told, in one line, to start again.
    """

    def __init__(self, served, limit=MAX_SESSIONS):
        self.served, self.limit = served, limit
        self.copies = OrderedDict()  # token -> [model, steps]

    def get(self, token):
        """(model, steps) of a session; (the served model, 0) for None."""
        if token is None:
            return self.served, 0
        if token not in self.copies:
            raise LenetError(
                f"this page's private weights are gone (the server keeps the {self.limit} most recent copies, "
                "and none after a restart): reset to start again from the served checkpoint"
            )
        self.copies.move_to_end(token)
        model, steps = self.copies[token]
        return model, steps

    def new_copy(self):
        """A fresh private copy of the served weights: (token, model)."""
        served = self.served
        model = LeNet5(served.activation, served.pool, served.backend, served.dtype, input_grad=True)
        model.load_state_dict(served.state_dict())
        token = secrets.token_urlsafe(12)
        self.copies[token] = [model, 0]
        while len(self.copies) > self.limit:
            self.copies.popitem(last=False)
        return token, model

    def sgd_step(self, token, x, target, lr):
        """One plain SGD step (p -= lr * dL/dp) on a session's copy for image x and `target` (a new copy for None;
        the predicted class for a target of None).

        Returns (token, steps, target, before, after): before and after are backward_pass results of the same
        image on the weights before and after the step. A step that leaves a weight or the loss not finite is undone.
        """
        if token is None:
            token, model = self.new_copy()
        else:
            model, _ = self.get(token)
        kept = [p.data.copy() for p in model.parameters()]
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught below, by value
            before = backward_pass(model, x, target)  # fills .grad: the step's gradient
            target = before["target"]
            SGD(model.parameters(), lr=lr).step()  # lenet's optimizer, momentum 0: p -= lr * grad
            after = backward_pass(model, x, target)
        finite = all(bool(model.xp.isfinite(p.data).all()) for p in model.parameters())
        if not (finite and np.isfinite(before["loss"]) and np.isfinite(after["loss"])):
            for p, data in zip(model.parameters(), kept, strict=True):
                p.data[...] = data
            raise LenetError(f"a step with learning rate {lr} makes the weights or the loss overflow: try a lower one")
        self.copies[token][1] += 1
        return token, self.copies[token][1], target, before, after

    def reset(self, token):
        """Forget a session's copy; whether there was one."""
        return self.copies.pop(token, None) is not None
