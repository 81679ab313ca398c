"""Train LeNet-5 on Fashion-MNIST (or MNIST): python train.py --help. The same as lenet-train.

A thin shim over lenet/commands/train.py, kept at the top level so the tutorial's commands work in a checkout.
"""

import sys

if __name__ == "__main__":
    try:
        from lenet.commands.train import main
    except ModuleNotFoundError as e:  # a Python without lenet's packages (tqdm, NumPy, ...): say how to get one
        if (e.name or "").partition(".")[0] == "lenet":
            raise
        print(
            f"train.py: {e} in {sys.executable}; set up lenet's environment first: "
            "python3 -m venv .venv && .venv/bin/pip install -e . ; then run: .venv/bin/python train.py",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while Python loads NumPy and lenet (a second or so): nothing has started
        print("train.py: stopped by Ctrl-C while starting; nothing was trained", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
