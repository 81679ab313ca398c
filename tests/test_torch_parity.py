"""Agreement with PyTorch in float64: same weights, same batch -> same logits, loss, gradients and optimizer steps."""

import numpy as np
import pytest
from helpers import torch_lenet

from lenet import LeNet5
from lenet.backend import to_numpy
from lenet.layers import SoftmaxCrossEntropy
from lenet.optim import SGD, Adam

torch = pytest.importorskip("torch", reason="PyTorch is needed for the parity tests (pip install torch)")
F = torch.nn.functional

ARCHS = [("sigmoid", "avg"), ("tanh", "avg"), ("relu", "max"), ("relu", "avg")]


def make_pair(xp, arch, seed=0):
    ours = LeNet5(*arch, backend="numpy" if xp is np else "cupy", dtype="float64", seed=seed)
    theirs = torch_lenet(*arch).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28)), rng.integers(0, 10, n)


def rel_err(a, b):
    a, b = to_numpy(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_logits_loss_and_gradients_match_pytorch(xp, arch):
    ours, theirs = make_pair(xp, arch)
    x, y = batch()
    ce = SoftmaxCrossEntropy()
    logits = ours.forward(xp.asarray(x))
    loss = ce.forward(logits, xp.asarray(y))
    ours.backward(ce.backward())

    t_logits = theirs(torch.from_numpy(x))
    t_loss = F.cross_entropy(t_logits, torch.from_numpy(y))
    t_loss.backward()

    assert rel_err(logits, t_logits.detach().numpy()) < 1e-10
    assert abs(float(loss) - t_loss.item()) <= 1e-10 * abs(t_loss.item())
    t_grads = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, t_grads[name]) < 1e-10, name


def run_steps(xp, make_ours, make_theirs, steps=3):
    ours, theirs = make_pair(xp, ("sigmoid", "avg"))
    opt, t_opt = make_ours(ours.parameters()), make_theirs(theirs.parameters())
    ce = SoftmaxCrossEntropy()
    for step in range(steps):
        x, y = batch(seed=step)
        ce.forward(ours.forward(xp.asarray(x)), xp.asarray(y))
        ours.backward(ce.backward())
        opt.step()
        t_opt.zero_grad()
        F.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        t_opt.step()
    t_state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert rel_err(value, t_state[name].numpy()) < 1e-10, name


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_match_torch_optim(xp, nesterov):
    run_steps(
        xp,
        lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-3),
    )


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_steps_match_torch_optim(xp, weight_decay):
    run_steps(
        xp,
        lambda p: Adam(p, lr=1e-2, weight_decay=weight_decay),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=weight_decay),
    )
