"""Evaluate a trained LeNet-5 on the test set: python test.py --help. The same as lenet-test.

A thin shim over lenet/commands/test.py, kept at the top level so the tutorial's commands work in a checkout.
"""

import sys

if __name__ == "__main__":
    try:
        from lenet.commands.test import main
    except KeyboardInterrupt:  # Ctrl-C while Python loads NumPy and lenet: nothing has started
        print("test.py: stopped by Ctrl-C while starting; nothing was evaluated", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
