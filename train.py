"""Train LeNet-5 on Fashion-MNIST (or MNIST): python train.py --help. The same as lenet-train.

A thin shim over lenet/commands/train.py, kept at the top level so the tutorial's commands work in a checkout.
"""

import sys

if __name__ == "__main__":
    try:
        from lenet.commands.train import main
    except KeyboardInterrupt:  # Ctrl-C while Python loads NumPy and lenet (a second or so): nothing has started
        print("train.py: stopped by Ctrl-C while starting; nothing was trained", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
