import numpy as np
import pytest

from lenet.backend import cupy_available, cupy_unavailable_reason, get_backend

BACKENDS = ["numpy", "cupy"]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module of each backend; the CuPy case skips with the reason where no GPU answers."""
    if request.param == "cupy" and not cupy_available():
        pytest.skip(cupy_unavailable_reason())
    return get_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
