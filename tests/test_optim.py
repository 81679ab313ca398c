"""The optimizers without PyTorch: plain SGD by hand, bad settings, state dicts that continue exactly.
(Their agreement with torch.optim is in test_torch_parity.py.)"""

import numpy as np
import pytest

from lenet import LenetError
from lenet.backend import to_numpy
from lenet.layers import Parameter
from lenet.optim import SGD, Adam


def make_params(xp, rng):
    params = [Parameter(xp.asarray(rng.standard_normal(shape))) for shape in [(3, 2), (4,), (2, 1, 2, 2)]]
    for p in params:
        p.grad = xp.asarray(rng.standard_normal(p.shape))
    return params


def test_plain_sgd_is_p_minus_lr_grad(xp, rng):
    params = make_params(xp, rng)
    before = [to_numpy(p.data).copy() for p in params]
    SGD(params, lr=0.5).step()
    for p, old in zip(params, before, strict=True):
        np.testing.assert_allclose(to_numpy(p.data), old - 0.5 * to_numpy(p.grad), rtol=1e-15)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda ps: SGD(ps, lr=0.0), "learning rate must be positive"),
        (lambda ps: SGD([], lr=0.1), "no parameters"),
        (lambda ps: SGD(ps, lr=0.1, nesterov=True), "Nesterov momentum needs momentum > 0"),
        (lambda ps: Adam(ps, lr=-1.0), "learning rate must be positive"),
    ],
)
def test_bad_settings_are_refused(xp, rng, make, message):
    with pytest.raises(LenetError, match=message):
        make(make_params(xp, rng))


@pytest.mark.parametrize(
    "make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.01)], ids=["sgd", "adam"]
)
def test_state_dict_continues_exactly(xp, rng, make):
    """Two steps, then a fresh optimizer loaded from the state dict takes the same third step."""
    params = make_params(xp, rng)
    twin = [Parameter(p.data.copy()) for p in params]
    opt = make(params)
    opt.step()
    opt.step()
    for t, p in zip(twin, params, strict=True):
        t.data[...] = p.data
        t.grad = p.grad
    state = opt.state_dict()
    assert all(isinstance(v, np.ndarray) for k, v in state.items() if k not in ("steps", "lr"))
    other = make(twin)
    other.load_state_dict(state)
    opt.step()
    other.step()
    for p, t in zip(params, twin, strict=True):
        np.testing.assert_array_equal(to_numpy(p.data), to_numpy(t.data))
