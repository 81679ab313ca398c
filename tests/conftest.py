import contextlib
import http.server
import threading

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


# -- a server on 127.0.0.1, for the downloads (test_data.py, test_datasets.py) ---------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.routes: path -> (body, the Content-Length to announce); 404 for anything else."""

    def do_GET(self):
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if callable(route):  # a misbehaving server: the route writes the response itself
            with contextlib.suppress(OSError):  # the client hung up, as it should
                route(self)
            return
        body, length = route
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes = {}
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    # A short poll interval: shutdown() waits up to one interval.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()
