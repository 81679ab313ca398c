"""What train.py and test.py share: an argument parser whose errors are one line, and a main wrapper
that turns expected failures into one line on stderr and exit status 2 (no traceback), and Ctrl-C and SIGTERM
into exit status 130 and 143 (128 + the signal's number, as a shell reports a process the signal killed)."""

import argparse
import contextlib
import os
import signal
import sys
import threading

from .errors import LenetError


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers, `timeout` and `docker stop` send), raised where the program is, as Ctrl-C
    raises KeyboardInterrupt: so one `except KeyboardInterrupt` stops cleanly for both."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def stop_signals():
    """Within: SIGTERM raises Terminated, where its handler was the default (death with no word said).

    A SIGTERM that the parent process ignored stays ignored, as Python leaves an ignored SIGINT; only the main
    thread may set handlers, so elsewhere this does nothing. The old handler returns afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGTERM)
    if old == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if old == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, old)


def interrupted_status(stop):
    """The exit status for an interruption: 143 for SIGTERM (Terminated), 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


def signal_name(stop):
    return "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"


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
    """Call main(); LenetError and file-system errors become `prog: error: ...` and exit status 2.

    Ctrl-C and SIGTERM that main() does not handle itself end it with one line and status 130 or 143.
    """
    try:
        with stop_signals():
            return main() or 0
    except KeyboardInterrupt as stop:  # main() says more where it knows more (train.py: what is saved)
        print(f"{prog}: stopped by {signal_name(stop)}", file=sys.stderr)
        return interrupted_status(stop)
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
