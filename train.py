"""Train LeNet-5 on Fashion-MNIST (or MNIST): python train.py --help. The same as lenet-train.

A thin shim over lenet/commands/train.py, kept at the top level so the tutorial's commands work in a checkout.
"""

import sys

from lenet.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
