"""Fetching a data set's file over HTTP, hardened: whatever the server does, time and memory stay bounded.

Each body is streamed into a temporary file and hashed (decompressed) as it arrives; it lands at its name only
once its SHA-256 matches. A per-read timeout cannot bound a server that sends a byte just before each timeout, so
a whole file also has a deadline (DOWNLOAD_DEADLINE_S), which cuts the connection's socket when it passes.
"""

import contextlib
import hashlib
import http.client
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

from ..errors import LenetError, one_line
from ..files import atomic_write
from .idx import GZIP_MAGIC, IDX_READ_CHUNK_BYTES, MAX_IDX_BYTES, check_digest, gzip_bound

DOWNLOAD_TIMEOUT_S = 30  # for connecting and for each read
DOWNLOAD_DEADLINE_S = 900  # for a whole file, however the server paces it
DOWNLOAD_CHUNK_BYTES = 1 << 16


def download_file(urls, dest, sha256, max_bytes=None, size=None):
    """Fetch the first of `urls` whose content checks out against `sha256` and write it to `dest`.

    Each body is streamed into a temporary file beside `dest` and hashed (decompressed) as it arrives; at
    most `max_bytes` are taken (default: any gzip of an IDX file lenet reads), the decompressed data must
    be `size` bytes when given, and a whole file gets DOWNLOAD_DEADLINE_S however slowly the server sends
    it. The temporary file is renamed to `dest` only once its SHA-256 matches, so a broken, endless or
    interrupted download never lands there.
    """
    dest = Path(dest)
    max_bytes = gzip_bound(MAX_IDX_BYTES) if max_bytes is None else max_bytes
    created = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]
    errors = []
    for url in urls:
        try:
            _download(url, dest, sha256, max_bytes, size)
            return
        except LenetError as e:
            errors.append(str(e))
        except OSError as e:  # writing: a read-only cache, a full disk (network errors are LenetErrors)
            raise LenetError(f"{dest}: cannot write it: {one_line(e)}") from None
    for folder in created:  # deepest first; only the empty folders this call made
        with contextlib.suppress(OSError):
            folder.rmdir()
    raise LenetError(f"{dest.name}: " + ("; ".join(errors) or "no mirror to download it from"))


def _download(url, dest, sha256, max_bytes, size):
    """Stream `url` into `dest` through a temporary file; LenetError for any failure of the server or data."""
    with _Deadline(DOWNLOAD_DEADLINE_S, url) as deadline:
        response = deadline.call(lambda: _open_url(url, deadline))
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise LenetError(f"{url}: the server announces {total} bytes, more than the {max_bytes} expected")
            digest = _DecompressedDigest(url, size if size is not None else MAX_IDX_BYTES)
            received = 0
            with (
                atomic_write(dest, "wb") as f,
                tqdm(total=total, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar,
            ):
                while chunk := deadline.call(lambda: response.read1(DOWNLOAD_CHUNK_BYTES)):
                    received += len(chunk)
                    if received > max_bytes:
                        raise LenetError(f"{url}: the body goes on past {max_bytes} bytes, more than expected")
                    digest.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
                    deadline.check(received, total)
                deadline.check(received, total)  # an end of the body can be the deadline's cut
                # http.client returns a short body without complaint when the server closes early: check it here.
                if total is not None and received != total:
                    raise LenetError(f"{url}: truncated download: received {received} of {total} bytes")
                check_digest(digest.hexdigest(), sha256, source=url)  # else the temporary file goes


def _open_url(url, deadline):
    """The HTTP response for `url`, through an opener whose connections `deadline` can cut."""
    opener = urllib.request.build_opener(_DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline))
    return opener.open(url, timeout=max(0.001, min(DOWNLOAD_TIMEOUT_S, deadline.left())))


class _Deadline:
    """An overall time limit for one download, whatever the server does.

    A per-read socket timeout cannot bound a server that sends one byte just before each timeout, in the
    body or in its headers. So a timer shuts the connection's socket down when the time is up: the read
    blocked on it returns at once, and `call` turns what follows into one LenetError that says why.
    """

    def __init__(self, seconds, url):
        self.seconds, self.url = seconds, url
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()

    def left(self):
        return self.end - time.monotonic()

    def _expire(self):
        self.expired = True
        for sock in list(self._sockets):
            self._cut(sock)

    @staticmethod
    def _cut(sock):
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, under any TLS layer

    def watch(self, http_class):
        """A factory of http_class connections whose sockets this deadline can cut once connected."""

        def make(*args, **kwargs):
            conn = http_class(*args, **kwargs)
            connect = conn.connect

            def connect_and_watch():
                connect()
                self._sockets.append(conn.sock)
                if self.expired:  # the timer fired while connecting
                    self._cut(conn.sock)

            conn.connect = connect_and_watch
            return conn

        return make

    def check(self, received=0, total=None):
        if self.expired or time.monotonic() > self.end:
            of = f" of {total}" if total is not None else ""
            raise LenetError(
                f"{self.url}: not finished after {self.seconds} s (received {received}{of} bytes); "
                "the server is too slow or stalled"
            )

    def call(self, read):
        """read(), with a network failure (or the cut of an expired deadline) as one LenetError."""
        try:
            return read()
        except urllib.error.HTTPError as e:
            e.close()  # it holds the response body open
            raise LenetError(f"{self.url}: HTTP {e.code} {one_line(e.reason)}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            self.check()
            reason = e.reason if isinstance(e, urllib.error.URLError) else f"{type(e).__name__}: {e}"
            raise LenetError(f"{self.url}: {one_line(reason)}") from None


class _DeadlineMixin:
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(self.deadline.watch(http_class), req, **kwargs)


class _DeadlineHTTPHandler(_DeadlineMixin, urllib.request.HTTPHandler):
    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline


class _DeadlineHTTPSHandler(_DeadlineMixin, urllib.request.HTTPSHandler):
    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline


class _DecompressedDigest:
    """The SHA-256 of the decompressed bytes of a body fed piece by piece, as hashlib's update/hexdigest.

    A gzip body (told by its magic) is decompressed in bounded pieces and never kept; more than `limit`
    decompressed bytes is refused as soon as it is seen. A body that is not gzip is hashed as it is.
    """

    def __init__(self, source, limit):
        self.source, self.limit = source, limit
        self._sha = hashlib.sha256()
        self._head = b""  # the first bytes, until there are two to tell gzip by
        self._gzipped = None
        self._member = None
        self._size = 0

    def update(self, data):
        if self._gzipped is None:
            self._head += data
            if len(self._head) < len(GZIP_MAGIC):
                return
            data, self._head = self._head, b""
            self._gzipped = data.startswith(GZIP_MAGIC)
        if not self._gzipped:
            self._add(data)
            return
        try:
            while data:  # a gzip file may hold several members, one after the other
                if self._member is None or self._member.eof:
                    self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._add(self._member.decompress(data, IDX_READ_CHUNK_BYTES))
                data = self._member.unused_data if self._member.eof else self._member.unconsumed_tail
        except zlib.error as e:
            raise LenetError(f"{self.source}: corrupt gzip stream: {one_line(e)}") from None

    def _add(self, data):
        self._size += len(data)
        if self._size > self.limit:
            raise LenetError(f"{self.source}: the data unpacks to more than the {self.limit} bytes expected")
        self._sha.update(data)

    def hexdigest(self):
        if self._gzipped is None:  # fewer than two bytes in all
            self._add(self._head)
        elif self._gzipped and not self._member.eof:
            raise LenetError(f"{self.source}: corrupt gzip stream: it ends before the end of its compressed data")
        return self._sha.hexdigest()
