"""Evaluate a trained LeNet-5 on the test set: python test.py --help. The same as lenet-test.

A thin shim over lenet/commands/test.py, kept at the top level so the tutorial's commands work in a checkout.
"""

import sys

from lenet.commands.test import main

if __name__ == "__main__":
    sys.exit(main())
