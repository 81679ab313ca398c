"""python -m lenet COMMAND [ARGS]: the same as lenet-COMMAND (train, test, ...)."""

import importlib
import sys

from .cli import shown_python

COMMANDS = {
    "train": "train LeNet-5 (lenet-train)",
    "test": "evaluate a checkpoint on the test set (lenet-test)",
    "visualize": "pictures of what a checkpoint learned: filters, feature maps, saliency, mistakes (lenet-visualize)",
    "demo": "a local web page: draw, and watch every layer answer (lenet-demo)",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        here = f"{shown_python()} -m lenet"
        print(f"usage: {here} COMMAND [ARGS]   ({here} COMMAND --help for its options)\n\ncommands:")
        for name, what in COMMANDS.items():
            print(f"  {name:<10} {what}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"python -m lenet: error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr
        )
        return 2
    return importlib.import_module(f"lenet.commands.{name}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
