"""The one exception type that means "the user gave us something we cannot use".

The command lines catch it, print its message as one line and exit with status 2. It subclasses
ValueError so library code that already catches ValueError keeps working.
"""


class LenetError(ValueError):
    """Bad input from the user: a flag, a data file, a checkpoint, a missing GPU."""


def one_line(message):
    """`message` (an exception or text) as one line: its whitespace runs, newlines included, become single spaces."""
    return " ".join(str(message).split())


def short(value, limit=60):
    """repr(value), cut to `limit` characters: for a message about a value read from a file, which can be a megabyte."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
