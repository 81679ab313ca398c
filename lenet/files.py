"""Atomic file writes: a temporary file in the same folder, then a rename.

An interrupted run (Ctrl-C, a crash, a full disk) leaves either the old file or the new one,
never half of one, because os.replace is atomic on POSIX and Windows within one file system.
"""

import contextlib
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success rename it over `path`.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # Not tempfile.mkstemp: its 0600 mode would survive the rename, and the file should get the
    # permissions the umask gives any new file, as open(path, "w") would.
    fd = None
    try:
        # Inside the try: a Ctrl-C or SIGTERM that arrives while the file is being created (a busy disk can hold
        # os.open for a while) is raised as soon as it returns, and must not leave the temporary behind.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if fd is not None or not isinstance(e, FileExistsError):  # else another writer's temporary (1 in 2**48)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
