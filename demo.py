"""A local web page: draw, and watch a trained LeNet-5's layers answer live (see --help)."""

import sys

try:
    from lenet.commands.demo import main
except ModuleNotFoundError as e:  # a Python without lenet's packages (NumPy, matplotlib, ...): say how to get one
    if (e.name or "").partition(".")[0] == "lenet":
        raise
    print(
        f"demo.py: {e} in {sys.executable}; set up lenet's environment first: "
        "python3 -m venv .venv && .venv/bin/pip install -e . ; then run: .venv/bin/python demo.py",
        file=sys.stderr,
    )
    sys.exit(2)
sys.exit(main())
