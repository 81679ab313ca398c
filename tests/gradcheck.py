"""Numerical gradient checking: central differences in float64 against a hand-written backward."""

import numpy as np

from lenet.backend import to_numpy


def numerical_grad(f, x, eps=1e-6, indices=None):
    """Central-difference gradient of the scalar f() with respect to the array x (changed in place, restored).

    With `indices` (flat positions), only those entries are computed; the rest are NaN.
    """
    grad = np.full(x.shape, np.nan)
    flat = x.reshape(-1)  # a view: x must be contiguous
    assert flat.base is x or flat.base is x.base or flat is x, "x must be contiguous"
    for i in range(flat.size) if indices is None else indices:
        old = flat[i].item()
        flat[i] = old + eps
        plus = float(f())
        flat[i] = old - eps
        minus = float(f())
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric, name, tol=1e-6):
    """Relative error ||a - n|| / (||a|| + ||n||) below tol over the entries computed; says where it fails."""
    a = to_numpy(analytic).astype(np.float64)
    n = np.asarray(numeric)
    assert a.shape == n.shape, f"{name}: gradient shape {a.shape}, expected {n.shape}"
    mask = ~np.isnan(n)
    diff = np.abs(a - n)[mask]
    scale = np.linalg.norm(a[mask]) + np.linalg.norm(n[mask])
    rel = np.linalg.norm(diff) / max(scale, 1e-30)
    if not rel < tol:
        worst = np.argsort(np.where(mask, np.abs(a - n), -1).ravel())[::-1][:5]
        lines = [
            f"  at {np.unravel_index(k, a.shape)}: analytic {a.ravel()[k]:.10g}, numeric {n.ravel()[k]:.10g}"
            for k in worst
        ]
        raise AssertionError(f"{name}: relative error {rel:.3g} >= {tol} (shape {a.shape})\n" + "\n".join(lines))
    return rel
