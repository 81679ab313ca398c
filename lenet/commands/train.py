"""Train LeNet-5 on Fashion-MNIST (or MNIST) with lenet's hand-written gradients.

lenet-train                      # the default recipe, NumPy on the CPU (in a checkout: .venv/bin/python train.py)
lenet-train --backend cupy       # the same on an NVIDIA GPU
lenet-train --resume             # continue the run in --out from its last epoch
lenet-train --overwrite          # start over in --out, replacing the run there
"""

import argparse
import shlex
import sys

from ..cli import (
    ArgumentParser,
    add_data_dir,
    interrupted_status,
    invocation,
    positive_int,
    program_name,
    run_main,
    signal_name,
)
from ..trainer import PlainRunner, TrainConfig, TrainingInterrupted, fit

DEFAULTS = TrainConfig()


def build_parser():
    p = ArgumentParser(
        prog=program_name("train"),
        description="Train LeNet-5 with lenet (NumPy or CuPy).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example, a quick run and its test:\n  {invocation()} --epochs 5 --out runs/quick\n"
        f"  {invocation(command='test')} --checkpoint runs/quick/best_model.npz",
    )
    p.add_argument(
        "--backend", choices=["numpy", "cupy"], default=DEFAULTS.backend, help="array backend (default %(default)s)"
    )
    p.add_argument(
        "--dataset", choices=["fashion-mnist", "mnist"], default=DEFAULTS.dataset, help="(default %(default)s)"
    )
    add_data_dir(p)
    p.add_argument(
        "--epochs", type=positive_int, help=f"number of epochs (default {DEFAULTS.epochs}; --resume: the stored run's)"
    )
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="(default %(default)s)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=DEFAULTS.optimizer, help="(default %(default)s)")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="learning rate (default %(default)s)")
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="SGD momentum (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="L2 (default %(default)s)")
    p.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default=DEFAULTS.schedule,
        help="learning-rate schedule (default %(default)s)",
    )
    p.add_argument(
        "--activation", choices=["sigmoid", "relu", "tanh"], default=DEFAULTS.activation, help="(default %(default)s)"
    )
    p.add_argument("--pool", choices=["avg", "max"], default=DEFAULTS.pool, help="(default %(default)s)")
    p.add_argument(
        "--augment",
        nargs="?",
        const="shift",
        default=DEFAULTS.augment,
        choices=["none", "shift", "affine"],
        help="new random copies of the training images each epoch: shift = 1-pixel shifts, and mirror images for "
        "fashion-mnist (not for digits); affine = those and a small rotation, scale and shear; --augment alone is "
        "shift (default %(default)s)",
    )
    p.add_argument("--dtype", choices=["float32", "float64"], default=DEFAULTS.dtype, help="(default %(default)s)")
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="seeds the weights, the split and the shuffling (default %(default)s)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULTS.val_fraction,
        help="the share of the training images held out for validation (default %(default)s)",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="use only the first N images of the training set, split as --val-fraction says (N=1000: 800 to "
        "train on, 200 to validate) (default: all 60000)",
    )
    p.add_argument("--out", help="folder for checkpoints, history and plots (default runs/<dataset>)")
    p.add_argument(
        "--textbook",
        action="store_true",
        help="train the textbook layers of lenet/layers.py as they are written (one thread, no fused stage, "
        "no CUDA graphs): slower, the same numbers to float32 rounding",
    )
    p.add_argument(
        "--format",
        choices=["npz", "safetensors"],
        default=DEFAULTS.format,
        help="file format of the best weights: best_model.npz, or best_model.safetensors for Hugging Face's tools "
        "(needs the safetensors package: pip install 'lenet[safetensors]'); last.npz stays .npz "
        "(default %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU workers for the numpy backend: this process and N-1 worker processes on Linux, threads elsewhere "
        "(default: one per core)",
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run saved in --out (its options are kept)")
    start.add_argument(
        "--overwrite", action="store_true", help="start over in an --out that holds a run, replacing its files"
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is shown only when stderr is a terminal, and never with TQDM_DISABLE=1)",
    )
    p.add_argument(
        "--no-cuda-graphs", action="store_true", help="cupy: run every training step eagerly, not as a CUDA graph"
    )
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    # Which options the user gave (--resume warns about those the stored run keeps): parsed again, defaults unset.
    unset = object()
    p.set_defaults(**dict.fromkeys(vars(args), unset))
    args.given = {FIELDS.get(name, name) for name, value in vars(p.parse_args(argv)).items() if value is not unset}
    return args


FIELDS = {"no_progress": "progress", "no_cuda_graphs": "cuda_graphs"}  # argparse names that are not TrainConfig's


def run(argv=None):
    args = parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("no_progress", "no_cuda_graphs", "given")}
    options["out"] = args.out or f"runs/{args.dataset}"
    if args.epochs is None and not args.resume:
        options["epochs"] = DEFAULTS.epochs
    config = TrainConfig(**options, progress=not args.no_progress, cuda_graphs=not args.no_cuda_graphs)
    try:
        fit(
            config,
            runner=_runner,
            given=args.given,
            warn=lambda m: print(f"{program_name('train')}: warning: {m}", file=sys.stderr),
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


def _runner(model, optimizer, config):
    """The textbook PlainRunner for --textbook runs, else the speed wing (imported only then)."""
    if config.textbook:
        return PlainRunner(model, optimizer)
    from ..fast import FastRunner
    from ..fast.tuning import tune_process

    tune_process(config.backend)
    return FastRunner.for_config(model, optimizer, config)


def main(argv=None):
    return run_main(lambda: run(argv), program_name("train"))


if __name__ == "__main__":
    sys.exit(main())
