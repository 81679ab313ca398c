"""Train LeNet-5 on Fashion-MNIST (or MNIST) with lenet's hand-written gradients.

lenet-train                      # the default recipe, NumPy on the CPU (in a checkout: .venv/bin/python train.py)
lenet-train --backend cupy       # the same on an NVIDIA GPU
lenet-train --resume             # continue the run in --out from its last epoch
lenet-train --overwrite          # start over in --out, replacing the run there
"""

import argparse
import shlex
import sys

from tqdm import tqdm

from ..cli import ArgumentParser, interrupted_status, invocation, program_name, run_main, signal_name
from ..fast import FastRunner
from ..fast.tuning import tune_process
from ..options import OPTIONS, TrainConfig
from ..trainer import PlainRunner, TrainingInterrupted, fit

DEFAULTS = TrainConfig()


def build_parser():
    p = ArgumentParser(
        prog=program_name("train"),
        description="Train LeNet-5 with lenet (NumPy or CuPy).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example, a quick run and its test:\n  {invocation()} --epochs 5 --out runs/quick\n"
        f"  {invocation(command='test')} --checkpoint runs/quick/best_model.npz",
    )
    add_options(p)
    return p


def add_options(parser):
    """One argument for each option that lenet/options.py declares, with its flag, default, help and checks."""
    groups = {}
    for name, option in OPTIONS.items():
        default = None if option.command_fills else option.default
        kwargs = {"dest": name, "default": default, "help": option.help.format(default=option.default)}
        if option.type is bool:  # a switch: --textbook turns it on, --no-progress off
            kwargs["action"] = "store_false" if option.default else "store_true"
        elif option.allowed is not None and option.allowed.choices is not None:
            kwargs["choices"] = option.allowed.choices  # argparse lists them in --help and names them in errors
        else:
            kwargs.update(type=option.from_text, metavar=option.metavar or name.upper())
        if option.const is not None:
            kwargs.update(nargs="?", const=option.const)
        if option.group is not None and option.group not in groups:
            groups[option.group] = parser.add_mutually_exclusive_group()
        groups.get(option.group, parser).add_argument(option.flag, **kwargs)


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    # Which options the user gave (--resume warns about those the stored run keeps): parsed again, defaults unset.
    unset = object()
    p.set_defaults(**dict.fromkeys(vars(args), unset))
    args.given = {name for name, value in vars(p.parse_args(argv)).items() if value is not unset}
    return args


def run(argv=None):
    args = parse_args(argv)
    tune_process(args.backend)  # the process settings lenet's steps run best with, made once (lenet/fast/tuning.py)
    options = {k: v for k, v in vars(args).items() if k != "given"}
    options["out"] = args.out or f"runs/{args.dataset}"
    if args.epochs is None and not args.resume:
        options["epochs"] = DEFAULTS.epochs
    config = TrainConfig(**options)
    try:
        fit(
            config,
            runner=_runner,
            given=args.given,
            warn=lambda m: tqdm.write(f"{program_name('train')}: warning: {m}", file=sys.stderr),  # above any bar
        )
    except TrainingInterrupted as e:
        print(f"{program_name('train')}: {interrupted_message(e)}", file=sys.stderr)
        return interrupted_status(e.stop)
    except KeyboardInterrupt as stop:  # before the run folder was held: nothing was written
        print(
            f"{program_name('train')}: stopped by {signal_name(stop)} before training started; nothing was trained",
            file=sys.stderr,
        )
        return interrupted_status(stop)


def interrupted_message(e):
    """One line from a TrainingInterrupted's facts: where it stopped, what is saved, how to go on."""
    if e.epoch is None:  # loading the data, writing batch.png, ...
        where = f"before epoch {e.saved_epoch + 1}"
    elif e.epoch > e.saved_epoch:
        where = f"in epoch {e.epoch}"
    else:
        where = f"after epoch {e.saved_epoch}"
    best = f" (best val acc {e.best_val_acc:.4f} in best_model.npz)" if e.best_val_acc is not None else ""
    if e.saved_epoch == 0:
        saved = f"no epoch finished, nothing to resume{best}"
    elif e.saved_epoch >= e.epochs:
        saved = f"all {e.epochs} epochs are saved in {e.out}{best}"
    else:
        epochs = "epoch 1 is" if e.saved_epoch == 1 else f"epochs 1-{e.saved_epoch} are"
        again = f"{invocation()} --resume --out {shlex.quote(str(e.out))}"
        saved = f"{epochs} saved in {e.out}{best}; continue with: {again}"
    not_written = f"; not written: {', '.join(e.not_written)}" if e.not_written else ""
    return f"stopped by {signal_name(e.stop)} {where}; {saved}{not_written}"


def _runner(model, optimizer, config, warn=None):
    """The textbook PlainRunner for --textbook runs, else the speed wing's FastRunner."""
    if config.textbook:
        return PlainRunner(model, optimizer)
    return FastRunner.for_config(model, optimizer, config, warn)


def main(argv=None):
    return run_main(lambda: run(argv), program_name("train"))


if __name__ == "__main__":
    sys.exit(main())
