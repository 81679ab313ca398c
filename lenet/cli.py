"""What train.py and test.py share: an argument parser whose errors are one line, and a main wrapper
that turns expected failures into one line on stderr and exit status 2 (no traceback)."""

import argparse
import os
import sys

from .errors import LenetError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_main(main, prog):
    """Call main(); LenetError and file-system errors become `prog: error: ...` and exit status 2."""
    try:
        return main() or 0
    except BrokenPipeError:  # the reader went away (python test.py | head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except LenetError as e:
        message = str(e)
    except OSError as e:  # an unwritable --out folder, a full disk, ...
        message = f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def invocation(argv0=None, executable=None, cwd=None):
    """How to run this program again, as the user ran it, in a form that works when pasted into their shell.

    `python train.py` without an activated environment would be the system's Python, so a hint names the Python
    that runs now (relative to the current folder when it lies inside it, e.g. `.venv/bin/python train.py`);
    an installed command (`lenet-train`) is named as it is when the shell finds it, else by its full path;
    `python -m lenet train` keeps that form.
    """
    import shlex
    import shutil
    from pathlib import Path

    argv0 = sys.argv[0] if argv0 is None else argv0
    cwd = Path.cwd() if cwd is None else Path(cwd)
    python = Path(sys.executable if executable is None else executable)
    with_python = not python.is_absolute() or python.is_relative_to(cwd)
    shown_python = str(python.relative_to(cwd)) if python.is_absolute() and python.is_relative_to(cwd) else str(python)
    if with_python and "/" not in shown_python:
        shown_python = f"./{shown_python}"
    name = Path(argv0).name
    if name == "__main__.py":  # python -m lenet COMMAND
        module = Path(argv0).parent.name
        command = sys.argv[1] if module == "lenet" and len(sys.argv) > 1 else ""
        return shlex.join([shown_python, "-m", "lenet", *([command] if command else [])])
    if name.endswith(".py"):  # python train.py, python path/to/train.py
        script = Path(argv0)
        if script.is_absolute() and script.is_relative_to(cwd):
            script = script.relative_to(cwd)
        return shlex.join([shown_python, str(script)])
    found = shutil.which(name)  # an installed console script
    if found and Path(found).resolve() == Path(argv0).resolve():
        return name
    return shlex.quote(str(Path(argv0).resolve()) if Path(argv0).exists() else argv0)
