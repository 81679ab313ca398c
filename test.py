"""Evaluate a trained LeNet-5 on the test set: python test.py --help. The same as lenet-test.

A thin shim over lenet/commands/test.py, kept at the top level so the tutorial's commands work in a checkout.
"""

import sys

if __name__ == "__main__":
    try:
        from lenet.commands.test import main
    except ModuleNotFoundError as e:  # a Python without lenet's packages (tqdm, NumPy, ...): say how to get one
        if (e.name or "").partition(".")[0] == "lenet":
            raise
        print(
            f"test.py: {e} in {sys.executable}; set up lenet's environment first: "
            "python3 -m venv .venv && .venv/bin/pip install -e . ; then run: .venv/bin/python test.py",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while Python loads NumPy and lenet: nothing has started
        print("test.py: stopped by Ctrl-C while starting; nothing was evaluated", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
