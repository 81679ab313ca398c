"""A local web page where you draw and watch LeNet-5 answer: the server and its JSON API.

The standard library's ThreadingHTTPServer serves the page's own files (lenet/static/: plain HTML, CSS
and JavaScript, no framework, nothing from the internet) and a small JSON API that the page and the
tests call:

    GET  /api/info                   the checkpoint: name, data set, epoch, validation accuracy, class names
    GET  /api/test-image[?index=N]   a test image (random without an index): index, label, 784 pixels
    POST /api/predict                {"pixels": [784 numbers in [0, 1]]} as the network sees them, or
                                     {"image": "<base64 PNG/JPEG or data: URL>"}, made 28x28 like the data set
                                     -> the 784 input pixels, the 10 probabilities, the C1 and C3 maps, saliency

Every request is checked: a body is at most MAX_BODY bytes (413 otherwise, unread); malformed JSON,
wrong lengths, numbers that are not finite or outside [0, 1], images that do not decode are 400 with
a one-line reason. Only the files in the static folder are served; any other path is 404.
One lock serialises the model: its layers keep caches and scratch arrays from call to call.
"""

import base64
import binascii
import json
import math
import random
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from . import __version__
from . import visualize as vis
from .backend import to_numpy
from .errors import LenetError

MAX_BODY = 8 * 1024 * 1024  # bytes: a phone photo as base64 fits, a runaway upload does not
NUM_PIXELS = vis.SIZE * vis.SIZE
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".js": "text/javascript"}


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


def project_url():
    """The project's address from the installed package's metadata ([project.urls] in pyproject.toml), or None."""
    try:
        meta = metadata("lenet")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return None
    for entry in meta.get_all("Project-URL") or []:
        return entry.partition(",")[2].strip() or None
    return meta.get("Home-page")


def _rounded(a, digits=4):
    """A flat list of floats with a few digits: maps are drawn as colours, so more would only cost bytes."""
    return [round(float(v), digits) for v in np.asarray(a, dtype=np.float64).ravel()]


class Inspector:
    """The model, its checkpoint's description and the test images, and what the API computes with them."""

    def __init__(self, model, meta, checkpoint_name, test_images=None, test_labels=None):
        self.model, self.meta = model, meta
        self.class_names = list(meta.get("class_names") or [str(i) for i in range(10)])
        self.box, self.centring = vis.preprocessing_for(meta.get("dataset"))
        self.test_images, self.test_labels = test_images, test_labels
        self.checkpoint_name = checkpoint_name
        self.lock = threading.Lock()

    def info(self):
        meta = self.meta
        return {
            "checkpoint": self.checkpoint_name,
            "dataset": meta.get("dataset"),
            "epoch": meta.get("epoch"),
            "val_acc": meta.get("val_acc"),
            "architecture": meta.get("architecture"),
            "class_names": self.class_names,
            "test_images": 0 if self.test_images is None else len(self.test_images),
            "lenet_version": __version__,
            "project_url": project_url(),
        }

    def test_image(self, index=None):
        if self.test_images is None:
            raise LenetError("this server was started without the test set")
        n = len(self.test_images)
        if index is None:
            index = random.randrange(n)
        if not 0 <= index < n:
            raise LenetError(f"index {index} is out of range: the test set has {n} images")
        label = int(self.test_labels[index])
        return {
            "index": index,
            "label": label,
            "label_name": self.class_names[label],
            "pixels": [float(v) for v in self.test_images[index].ravel()],  # exact: float32 -> double
        }

    def predict(self, request):
        """A parsed JSON request -> the response (see the module docstring)."""
        if not isinstance(request, dict):
            raise LenetError("the request must be a JSON object with a 'pixels' or an 'image' member")
        if ("pixels" in request) == ("image" in request):
            raise LenetError("give exactly one of 'pixels' (784 numbers) and 'image' (base64)")
        if "pixels" in request:
            x = pixels_from_json(request["pixels"])
        else:
            grey = vis.decode_image(image_bytes(request["image"]), source="the image")
            x = vis.to_dataset_image(grey, self.box, self.centring)
        return self.inspect(x)

    def inspect(self, x):
        """(28, 28) in [0, 1] -> probabilities, the maps of C1 and C3 after their activation, saliency."""
        model = self.model
        batch = x[None, None].astype(model.dtype)
        with self.lock:
            grad, logits = vis.saliency(model, batch)  # forward, then backward of the predicted logit
            outputs = vis.layer_outputs(model, batch)
        probs = vis.softmax(to_numpy(logits).astype(np.float64))[0]
        c1, c3 = outputs.get("act1", outputs.get("c1"))[0], outputs.get("act3", outputs.get("c3"))[0]
        predicted = int(probs.argmax())
        return {
            "input": _rounded(x),
            "probabilities": [float(p) for p in probs],
            "predicted": predicted,
            "predicted_name": self.class_names[predicted],
            "c1": {"shape": list(c1.shape), "values": _rounded(c1)},
            "c3": {"shape": list(c3.shape), "values": _rounded(c3)},
            "saliency": _rounded(grad[0], 6),
        }


def pixels_from_json(pixels):
    """784 numbers in [0, 1] (a flat list, or 28 lists of 28) -> (28, 28) float64."""
    if not isinstance(pixels, list):
        raise LenetError(f"'pixels' must be a list of {NUM_PIXELS} numbers, not a JSON {type(pixels).__name__}")
    if pixels and all(isinstance(row, list) for row in pixels):
        pixels = [v for row in pixels for v in row]
    if len(pixels) != NUM_PIXELS:
        raise LenetError(f"'pixels' must hold {NUM_PIXELS} numbers (28 x 28), got {len(pixels)}")
    for v in pixels:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise LenetError(f"'pixels' must hold numbers only, found {json.dumps(v)[:40]}")
        if not math.isfinite(v):
            raise LenetError("'pixels' holds a number that is not finite (NaN or infinity)")
        if not 0 <= v <= 1:
            raise LenetError(f"'pixels' must lie in [0, 1], found {v}")
    return np.asarray(pixels, dtype=np.float64).reshape(vis.SIZE, vis.SIZE)


def image_bytes(image):
    """'data:image/png;base64,....' or plain base64 -> bytes."""
    if not isinstance(image, str):
        raise LenetError(f"'image' must be a base64 string, not a JSON {type(image).__name__}")
    if image.startswith("data:"):
        header, _, image = image.partition(",")
        if not header.endswith(";base64"):
            raise LenetError("'image' is a data: URL that is not base64")
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as e:
        raise LenetError(f"'image' is not valid base64 ({e})") from None


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
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _error(self, status, reason, close=False):
        if close:
            self.close_connection = True
        self._json(status, {"error": " ".join(str(reason).split())})

    def do_GET(self):
        url = urlsplit(self.path)
        inspector = self.server.inspector
        if url.path in self.server.files:
            body, content_type = self.server.files[url.path]
            return self._send(HTTPStatus.OK, body, content_type)
        try:
            if url.path == "/api/info":
                return self._json(HTTPStatus.OK, inspector.info())
            if url.path == "/api/test-image":
                query = parse_qs(url.query)
                index = query.get("index", [None])[-1]
                if index is not None:
                    try:
                        index = int(index)
                    except ValueError:
                        raise LenetError(f"index must be a whole number, not {index[:20]!r}") from None
                return self._json(HTTPStatus.OK, inspector.test_image(index))
        except LenetError as e:
            return self._error(HTTPStatus.BAD_REQUEST, e)
        self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path[:100]}")

    do_HEAD = do_GET

    def do_POST(self):
        url = urlsplit(self.path)
        if url.path != "/api/predict":
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
        try:
            try:
                request = json.loads(body, parse_constant=_reject_constant)
            except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
                raise LenetError(f"the body is not valid JSON ({e})") from None
            response = self.server.inspector.predict(request)
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
            raise LenetError(f"cannot listen on {address[0]}:{address[1]}: {e.strerror or e}") from None

    @property
    def url(self):
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"
