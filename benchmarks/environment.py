"""The benchmark scripts run by a Python without lenet's packages (the machine's own python3, say): one line that
names the missing package and the command that sets up lenet's environment, exit status 2, no traceback.

Standard library only: it is imported before NumPy, threadpoolctl and lenet, whose absence it reports.
"""

import sys
from pathlib import Path


def exit_for_missing_package(error):
    """Called with the ModuleNotFoundError of a script's imports; a missing part of lenet itself is a bug: raised."""
    if (error.name or "").partition(".")[0] == "lenet":
        raise error
    script = Path(sys.argv[0]).name
    print(
        f"{script}: {error} in {sys.executable}; set up lenet's environment first: "
        f"python3 -m venv .venv && .venv/bin/pip install -e . ; then run: .venv/bin/python benchmarks/{script}",
        file=sys.stderr,
    )
    sys.exit(2)
