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


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No test reads the user's cache, $LENET_DATA, ./data of the repository, or goes through a proxy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("LENET_DATA", raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd
