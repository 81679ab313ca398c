"""What lenet's command lines share: an argument parser whose errors are one line, a main wrapper that turns
expected failures into one line on stderr and exit status 2 (no traceback) and Ctrl-C and SIGTERM into exit
status 130 and 143 (128 + the signal's number, as a shell reports a process the signal killed), and the names
to print in usage lines and hints (how the user ran the command, in a form that works when pasted)."""

import argparse
import contextlib
import os
import signal
import sys
import threading

from .errors import LenetError, one_line


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
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return 2


def parse_then_run(parse_args, run, argv, prog):
    """The main() of a command that parses its flags first (demo, visualize): --help and a bad flag end here with
    argparse's status; the run goes through run_main."""
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (already reported in one line)
        return e.code or 0
    return run_main(lambda: run(args), prog)


DEFAULT_CHECKPOINT = "runs/fashion-mnist/best_model.npz"  # where a default lenet-train run puts its best weights


DATA_DIR_HELP = (
    "an existing folder with the four IDX files, or where to download them (default: looked up in "
    "$LENET_DATA, ./data and the system's and lenet's cache folders, then downloaded into the cache)"
)


def add_data_dir(parser):
    """--data-dir, as test takes it (train's is declared with its other options, lenet/options.py): an existing
    folder (see existing_folder)."""
    parser.add_argument("--data-dir", type=existing_folder, help=DATA_DIR_HELP)


def existing_folder(text):
    """An argparse type for --data-dir: a folder that exists (a mistyped one is refused, not created and filled)."""
    import shlex

    if os.path.exists(os.path.expanduser(text)) and not os.path.isdir(os.path.expanduser(text)):
        raise argparse.ArgumentTypeError(f"not a folder: {text}")
    if not os.path.isdir(os.path.expanduser(text)):
        raise argparse.ArgumentTypeError(
            f"no such folder: {text}; to download the data set into a new folder, create it first: "
            f"mkdir -p {shlex.quote(text)}"
        )
    return text


def _is_lenet_main(argv0):
    """Whether argv0 is this package's __main__.py (python -m lenet), not another's (python -m pytest)."""
    from pathlib import Path

    return Path(argv0).name == "__main__.py" and Path(argv0).resolve() == Path(__file__).resolve().with_name(
        "__main__.py"
    )


def program_name(command, argv0=None):
    """How a command's usage line and errors name it: as the user ran it (train.py, lenet-train,
    python -m lenet train), or lenet-COMMAND when main() is called from Python."""
    from pathlib import Path

    argv0 = sys.argv[0] if argv0 is None else argv0
    name = Path(argv0).name
    in_package = Path(argv0).resolve().parent == Path(__file__).resolve().parent / "commands"
    if _is_lenet_main(argv0) or in_package:  # python -m lenet train, python -m lenet.commands.train
        return f"python -m lenet {command}"
    if name in (f"{command}.py", f"lenet-{command}"):
        return name
    return f"lenet-{command}"


def shown_python(executable=None, cwd=None):
    """The running Python as a command to paste: relative to the current folder when inside it
    (`.venv/bin/python`), else its full path (the bare `python` may be another one, or none)."""
    from pathlib import Path

    cwd = Path.cwd() if cwd is None else Path(cwd)
    python = Path(sys.executable if executable is None else executable)
    if python.is_absolute() and not python.is_relative_to(cwd):
        return str(python)
    shown = str(python.relative_to(cwd)) if python.is_absolute() else str(python)
    return shown if "/" in shown else f"./{shown}"


def invocation(argv0=None, executable=None, cwd=None, command=None):
    """How to run this program again, as the user ran it, in a form that works when pasted into their shell.

    `python train.py` without an activated environment would be the system's Python, so a hint names the Python
    that runs now (relative to the current folder when it lies inside it, e.g. `.venv/bin/python train.py`);
    an installed command (`lenet-train`) is named as it is when the shell finds it, else by its full path;
    `python -m lenet train` keeps that form. With `command` ("train", "test", ...), the same for that lenet
    command instead of this one (a hint in test.py names train.py, lenet-test names lenet-train), and
    `python -m lenet COMMAND` where this program has no such sibling (a notebook, pytest).
    """
    import shlex
    import shutil
    from pathlib import Path

    argv0 = sys.argv[0] if argv0 is None else argv0
    cwd = Path.cwd() if cwd is None else Path(cwd)
    python = shown_python(executable, cwd)

    def python_m_lenet(name):
        return shlex.join([python, "-m", "lenet", *([name] if name else [])])

    path = Path(argv0)
    name = path.name
    if _is_lenet_main(argv0):  # python -m lenet COMMAND
        if command is None and len(sys.argv) > 1 and sys.argv[1][:1] != "-":
            command = sys.argv[1]
        return python_m_lenet(command)
    if name == "__main__.py" and command is None:  # another program's: python -m pytest
        return shlex.join([python, "-m", path.parent.name])
    if path.suffix == ".py" and path.resolve().parent == Path(__file__).resolve().parent / "commands":
        return python_m_lenet(command or path.stem)  # python -m lenet.commands.train: the same command
    if name.endswith(".py"):  # python train.py, python path/to/train.py
        script = path if command is None else path.with_name(f"{command}.py")
        if command is not None and not (cwd / script).is_file():
            return python_m_lenet(command)
        if script.is_absolute() and script.is_relative_to(cwd):
            script = script.relative_to(cwd)
        return shlex.join([python, str(script)])
    if command is not None:
        if not name.startswith("lenet-"):  # not a lenet command line: pytest, a notebook, python -c
            return python_m_lenet(command)
        name, path = f"lenet-{command}", path.with_name(f"lenet-{command}")
    found = shutil.which(name)  # an installed console script
    if found and path.exists() and Path(found).resolve() == path.resolve():
        return name
    if path.exists():
        return shlex.quote(str(path.resolve()))
    return python_m_lenet(command) if command is not None else shlex.quote(argv0)
