"""A local web page where you draw and watch LeNet-5 answer, forward and backward: the server and its JSON API.

The standard library's ThreadingHTTPServer serves the page's own files (lenet/static/: plain HTML, CSS and
JavaScript, no framework, nothing from the internet) and a small JSON API that the page and the tests call. What each
call computes is lenet/inspector.py's; arrays travel packed (lenet/wire.py: {"shape", "dtype", "data": base64 of the
little-endian bytes}), exactly as lenet computed them. An image is {"pixels": [784 numbers in [0, 1]]} as the
network sees them, or {"image": "<base64 PNG/JPEG or data: URL>"}, made 28x28 like the data set.

    GET  /api/info                   the checkpoint: name, data set and how its images look, epoch, class names
    GET  /api/test-image[?index=N]   a test image (random without an index): index, label, 784 pixels
    POST /api/predict                an image -> the exact input pixels, the 10 probabilities, C1 and C3 maps, saliency
    POST /api/backward               an image, "target" (a class; default the predicted one), "session" (private
                                     weights, default the served ones) -> the loss, dL/d(output) of every layer from F7
                                     back to C1, dL/dx, every weight and its gradient, the gradient sizes per layer
    POST /api/sgd-step               the same and "lr" (0 < lr <= 10) -> one SGD step on the session's private copy of
                                     the weights (a new session without one): probabilities before and after, the
                                     backward view at the new weights
    POST /api/sgd-reset              {"session"} -> the private copy is dropped
    POST /api/im2col                 an image, "layer" (c1 or c3), "batch" (1..65536, for the shapes), "target",
                                     "session" -> the im2col matrix, where each entry comes from, W, the product, and
                                     backward's dcols, col2im's sum and how many windows cover each cell
    GET  /api/epochs                 the served run folder's epoch records (lenet/records.py), or why there are none
    GET  /api/epoch?epoch=N[&index=I]  the weights of epoch N: filters, test image I's maps, saliency, probabilities,
                                     and the epoch's records (confusion matrix, per-layer figures)

Every request is checked: a body is at most MAX_BODY bytes (413 otherwise, unread); malformed JSON, unknown fields,
wrong lengths, numbers that are not finite or out of range, images that do not decode are 400 with a one-line
reason. Only the files in the static folder are served; any other path is 404. The run folder is fixed at start-up
and requests name epochs by number, so no request reaches outside it. Each answer carries a Server-Timing header:
the milliseconds the server computed ("compute") and waited for another request's turn with the model ("lock"),
and the CPU time of the thread that answered ("cpu", steadier on a busy machine).
"""

import errno
import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .errors import LenetError
from .version import __version__
from .wire import query_int

MAX_BODY = 8 * 1024 * 1024  # bytes: a phone photo as base64 fits, a runaway upload does not
MAX_QUERY = 200  # characters of a GET's query: the API's take a number or two
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".js": "text/javascript"}

# The API's calls: path -> the Inspector method that answers it.
POST_ROUTES = {
    "/api/predict": "predict",
    "/api/backward": "backward",
    "/api/sgd-step": "sgd_step",
    "/api/sgd-reset": "sgd_reset",
    "/api/im2col": "im2col",
}


def static_files():
    """{url path: (bytes, content type)} for the page's own files, read once at start-up."""
    folder = resources.files("lenet") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    if "/static/index.html" not in files:
        raise LenetError(f"the page's files are missing from {folder}")
    files["/"] = files["/static/index.html"]
    return files


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


class Handler(BaseHTTPRequestHandler):
    """One request; the server object carries the Inspector and the static files."""

    server_version = f"lenet-demo/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request, so a silent one does not hold a thread

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status, body, content_type, extra_headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in extra_headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, obj):
        body = json.dumps(obj, allow_nan=False).encode()
        waited = self.server.inspector.lock.take_waited() * 1000
        spent = (time.perf_counter() - self.started) * 1000 - waited
        cpu = (time.thread_time() - self.started_cpu) * 1000
        timing = f"compute;dur={spent:.2f}, lock;dur={waited:.2f}, cpu;dur={cpu:.2f}"
        self._send(status, body, "application/json", [("Server-Timing", timing)])

    def _error(self, status, reason, close=False):
        if close:
            self.close_connection = True
        self._json(status, {"error": " ".join(str(reason).split())})

    def do_GET(self):
        self.started, self.started_cpu = time.perf_counter(), time.thread_time()
        url = urlsplit(self.path)
        inspector = self.server.inspector
        if url.path in self.server.files:
            body, content_type = self.server.files[url.path]
            return self._send(HTTPStatus.OK, body, content_type)
        try:
            if len(url.query) > MAX_QUERY:
                raise LenetError(f"the query is {len(url.query)} characters; at most {MAX_QUERY}")
            query = parse_qs(url.query)
            if url.path == "/api/info":
                return self._json(HTTPStatus.OK, inspector.info())
            if url.path == "/api/test-image":
                return self._json(HTTPStatus.OK, inspector.test_image(query_int(query, "index", -(2**31), 2**31)))
            if url.path == "/api/epochs":
                return self._json(HTTPStatus.OK, inspector.epoch_status())
            if url.path == "/api/epoch":
                epoch = query_int(query, "epoch", 0, 10**6)
                if epoch is None:
                    raise LenetError("give the epoch: /api/epoch?epoch=N")
                return self._json(HTTPStatus.OK, inspector.epoch(epoch, query_int(query, "index", 0, 10**6, 0)))
        except LenetError as e:
            return self._error(HTTPStatus.BAD_REQUEST, e)
        self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path[:100]}")

    do_HEAD = do_GET

    def do_POST(self):
        self.started, self.started_cpu = time.perf_counter(), time.thread_time()
        url = urlsplit(self.path)
        if url.path not in POST_ROUTES:
            return self._error(HTTPStatus.NOT_FOUND, f"no such API: {url.path[:100]}", close=True)
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            return self._error(HTTPStatus.BAD_REQUEST, "send the body with a Content-Length, not chunked", close=True)
        if length is None:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required", close=True)
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, "Content-Length is not a whole number >= 0", close=True)
        if length > MAX_BODY:
            # Not read: closing the connection is cheaper than swallowing a body we will not use.
            return self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {length} bytes; at most {MAX_BODY}", close=True
            )
        try:
            body = self.rfile.read(length)
        except OSError:  # the client went quiet past the timeout, or away
            self.close_connection = True
            return
        if len(body) < length:
            return self._error(HTTPStatus.BAD_REQUEST, "the body is shorter than its Content-Length", close=True)
        self.started, self.started_cpu = time.perf_counter(), time.thread_time()  # from here: not the upload
        try:
            try:
                request = json.loads(body, parse_constant=_reject_constant)
            except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
                raise LenetError(f"the body is not valid JSON ({e})") from None
            response = getattr(self.server.inspector, POST_ROUTES[url.path])(request)
        except LenetError as e:
            return self._error(HTTPStatus.BAD_REQUEST, e)
        self._json(HTTPStatus.OK, response)


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C does not wait for open connections
    allow_reuse_address = True

    def __init__(self, address, inspector, verbose=False):
        self.inspector, self.verbose = inspector, verbose
        self.files = static_files()
        try:
            super().__init__(address, Handler)
        except OSError as e:
            hint = "; choose another with --port N, or --port 0 for any free one" if e.errno == errno.EADDRINUSE else ""
            raise LenetError(f"cannot listen on {address[0]}:{address[1]}: {e.strerror or e}{hint}") from None

    @property
    def url(self):
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"
