"""The run folder (--out): who may write in it, and what a new run may do to an old one.

One train.py at a time holds a run folder: `RunLock` takes an exclusive flock on `<out>/.lock` for the whole
run and writes its PID there, so a second train.py on the same folder stops at once and names the holder. The
operating system drops the lock when the process ends, however it ends (kill -9 included), so a lock is never
stale: a .lock that a killed run left is taken over by the next. A run that ends removes its .lock, and the
folder too if the lock made it and nothing was written there (a run that failed before training leaves nothing).
Under the lock a run may then:

- refuse to start afresh over a run already there (`check_fresh_start`): the earlier run's best_model.npz and
  last.npz would be gone at its first epoch. --resume continues it, --overwrite starts over (removing its files,
  its epoch records and test.py's pictures of it first, `remove_run_files`, so the folder never mixes two runs),
  --out names another folder;
- remove what killed runs left behind: the temporaries of lenet.files.atomic_write (`.<name>.<hex>.tmp`) for the
  files a run writes (`remove_stale_temporaries`). Under the lock no live run can own them.
"""

import contextlib
import os
import re
from pathlib import Path

from .errors import LenetError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no flock; the run goes on unlocked
    fcntl = None

LOCK_NAME = ".lock"
# What train.py writes in a run folder, and what test.py writes beside its checkpoint by default.
RUN_FILES = (
    "best_model.npz",
    "best_model.safetensors",
    "last.npz",
    "history.csv",
    "curves.png",
    "batch.png",
    "config.json",
)
TEST_FILES = ("confusion_matrix.png", "predictions.png")
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")  # files.atomic_write's `.<name>.<12 hex>.tmp`


class RunLock:
    """An exclusive lock on a run folder, held from __enter__ to __exit__; the folder is made if need be.

    On exit the .lock file goes, and so do the folders that __enter__ made, where they are left empty.
    """

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self._fd = None
        self._made = []  # the folders __enter__ made, deepest first

    def __enter__(self):
        for _ in range(100):  # another run may remove the .lock, or the folder, between two of the steps below
            self._made += _make_folders(self.out)
            if fcntl is None:
                return self
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the folder went: a run that just ended removed it, empty
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"another train.py (PID {holder})" if holder else "another train.py"
                raise LenetError(
                    f"{self.out} is in use by {who}; wait for it to finish, or choose another --out"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if not _is_at(fd, self.path):  # locked a .lock that its holder removed as it ended: take the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return self
        raise LenetError(f"{self.out}: could not take its lock; other runs keep creating and removing it")

    def __exit__(self, *exc_info):
        if self._fd is not None:
            # Removed while still held: a run that opens it now finds, once it holds it, that it is no longer
            # the .lock of the folder (_is_at), and takes a new one.
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        for folder in self._made:  # only empty ones: rmdir refuses the others
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._made = []


def _make_folders(folder):
    """Make `folder` and its missing parents; returns those it made, deepest first."""
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _is_at(fd, path):
    """Whether the open file `fd` is still the file at `path` (not removed, nor replaced by another)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_pid(fd):
    """The PID the lock's holder wrote, or None (not written yet, or not a number)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def describe_run(out):
    """What the run in `out` has done, in words ("last.npz: epoch 3 of 30 finished, best val acc 0.8512"), or None.

    None when the folder holds no run (neither last.npz nor best_model.npz). A file that cannot be read is
    named, not described: this is for a message, not for resuming.
    """
    from .checkpoint import load_checkpoint  # only here: the lock above needs nothing but the standard library

    out = Path(out)
    present = [name for name in ("last.npz", "best_model.npz", "best_model.safetensors") if (out / name).exists()]
    if not present:
        return None
    for name in present:  # last.npz first: it knows the whole run
        try:
            meta = load_checkpoint(out / name)[1]
        except (LenetError, OSError):
            continue
        facts = []
        epoch, epochs = meta.get("epoch"), (meta.get("train_config") or {}).get("epochs")
        if _is_number(epoch):
            facts.append(f"epoch {epoch}{f' of {epochs}' if _is_number(epochs) else ''} finished")
        best = meta.get("best_val_acc", meta.get("val_acc"))
        if _is_number(best):
            facts.append(f"best val acc {best:.4f}")
        return f"{name}: {', '.join(facts) or 'no epoch recorded'}"
    return f"{' and '.join(present)}, not readable"


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_fresh_start(out, overwrite):
    """Before a fresh run in `out`: refuse if a run is there, unless `overwrite`, which removes its files."""
    there = describe_run(out)
    if there is None:
        return
    if not overwrite:
        raise LenetError(
            f"{out} already holds a run ({there}); continue it with --resume, start over in it with "
            "--overwrite (replaces its files), or choose another --out"
        )
    remove_run_files(out)


def remove_run_files(out):
    """Remove the files an earlier run and its test wrote in `out` (RUN_FILES, TEST_FILES, the epoch records in
    epochs/), nothing else."""
    from .recorder import remove_records

    for name in RUN_FILES + TEST_FILES:
        with contextlib.suppress(FileNotFoundError):
            (Path(out) / name).unlink()
    remove_records(out)


def remove_stale_temporaries(out):
    """Remove atomic_write's temporaries of the run files in `out`, left by killed runs. Returns their names.

    Only call this holding the folder's RunLock: a live run's temporaries would otherwise vanish under it.
    test.py's are left alone: it takes no lock, and may be writing its pictures now.
    """
    removed = []
    with os.scandir(out) as entries:
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match and match["name"] in RUN_FILES and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return sorted(removed)
