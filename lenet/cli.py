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
