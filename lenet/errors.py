"""The one exception type that means "the user gave us something we cannot use".

The command lines catch it, print its message as one line and exit with status 2. It subclasses
ValueError so library code that already catches ValueError keeps working.
"""


class LenetError(ValueError):
    """Bad input from the user: a flag, a data file, a checkpoint, a missing GPU."""
