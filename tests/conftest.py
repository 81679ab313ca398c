import contextlib
import http.server
import os
import socket
import threading

import numpy as np
import pytest
from helpers import MISSING_DATA

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


# -- the environment for the command lines as subprocesses (test_train, test_runs, test_cli, test_packaging) ------
@pytest.fixture(scope="session")
def offline_env():
    """The environment for the commands: one BLAS thread, every download through a proxy that refuses at once (a
    port bound, never listening), and none of the caller's settings that change what the tests look at: no
    PYTHONUNBUFFERED or TQDM_DISABLE (what test_cli checks), LENET_DATA, PYTHONPATH or VIRTUAL_ENV (test_packaging
    runs another environment). Shared by the session: copy it to change it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
        for name in ("http_proxy", "https_proxy"):
            env[name] = env[name.upper()] = f"http://127.0.0.1:{s.getsockname()[1]}"
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        for name in ("PYTHONUNBUFFERED", "TQDM_DISABLE", "LENET_DATA", "PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(name, None)
        yield env


# -- one line for the GPU cases this machine cannot run ----------------------------------------------------------
def _skipped_for_want_of_a_gpu(report):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ") == cupy_unavailable_reason()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # around pytest's own summary, which prints the skips
def pytest_terminal_summary(terminalreporter):
    """Without a GPU the CuPy cases skip by the dozen, each with the same reason: the short summary lists the other
    skips as pytest does, and these as one line (the count in the last line still includes them)."""
    skipped = terminalreporter.stats.get("skipped", [])
    gpu = [r for r in skipped if _skipped_for_want_of_a_gpu(r)]
    if gpu:
        terminalreporter.stats["skipped"] = [r for r in skipped if r not in gpu]
    yield
    if gpu:
        terminalreporter.stats["skipped"] = skipped
        terminalreporter.write_line(
            f"SKIPPED {len(gpu)} GPU cases: {cupy_unavailable_reason()} (they run where CuPy finds an NVIDIA GPU)"
        )


# -- one BLAS thread (test_checkpoint, test_weights, test_fast, test_parallel) ----------------------------------
@pytest.fixture
def one_blas_thread():
    """BLAS at one thread per call, as tune_process makes it for train.py: OpenBLAS's spinning threads made small steps
    100x slower on a busy machine, and worker threads beside them more so. Results are the same.

    A module asks for it with `pytestmark = pytest.mark.usefixtures("one_blas_thread")`."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


# -- fit() in process (test_train, test_records) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_fit():
    """fit(config) that loads the training images once (the first 1000) and draws no pictures; returns the history
    and what it logged. The in-process runs of the modules that ask for it, on a one-thread BLAS."""
    from threadpoolctl import threadpool_limits

    import lenet.runfiles
    import lenet.trainer
    from lenet.data import load_dataset
    from lenet.fast import FastRunner
    from lenet.trainer import PlainRunner, fit

    if MISSING_DATA:
        pytest.skip(MISSING_DATA)
    images, labels, class_names = load_dataset("fashion-mnist", "train")
    cached = images[:1000].copy(), labels[:1000].copy(), class_names

    def load_cached(dataset, split, data_dir=None, download=True):
        assert (dataset, split) == ("fashion-mnist", "train")
        return cached

    with pytest.MonkeyPatch.context() as mp, threadpool_limits(1, user_api="blas"):
        mp.setattr(lenet.trainer, "load_dataset", load_cached)
        mp.setattr(lenet.trainer, "plot_images", lambda *args, **kwargs: None)
        mp.setattr(lenet.runfiles, "plot_history", lambda *args, **kwargs: None)

        def run(config, resume=False):
            assert config.limit is None or config.limit <= 1000
            config.resume = resume
            logged = []
            history = fit(config, runner=PlainRunner if config.textbook else FastRunner.for_config, log=logged.append)
            return history, logged

        yield run


# -- a run folder with epoch records (test_demo_views, test_demo_page) -------------------------------------------
@pytest.fixture(scope="module")
def epoch_run(tmp_path_factory):
    """A run folder of epochs 0-3 written by hand as docs/training.md says (epoch e: LeNet5(seed=e)), and its
    best_model.npz (epoch 3's weights)."""
    from demo_helpers import write_run

    folder = tmp_path_factory.mktemp("run")
    write_run(folder, epochs=3)
    return folder
