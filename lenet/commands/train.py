"""Train LeNet-5 on Fashion-MNIST (or MNIST) with lenet's hand-written gradients.

lenet-train                      # the default recipe, NumPy on the CPU (in a checkout: .venv/bin/python train.py)
lenet-train --backend cupy       # the same on an NVIDIA GPU
lenet-train --resume             # continue the run in --out from its last epoch
"""

import argparse
import sys

from ..cli import ArgumentParser, existing_folder, invocation, positive_int, program_name, run_main
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
    p.add_argument(
        "--data-dir",
        type=existing_folder,
        help="an existing folder with the four IDX files, or where to download them (default: looked up in "
        "$LENET_DATA, ./data and the system's and lenet's cache folders, then downloaded into the cache)",
    )
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
    p.add_argument("--augment", action="store_true", help="random 1-pixel shifts and mirror images, new each epoch")
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
    p.add_argument("--threads", type=positive_int, help="CPU threads for the numpy backend (default: one per core)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out (its options are kept)")
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
    return build_parser().parse_args(argv)


def run(argv=None):
    args = parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("no_progress", "no_cuda_graphs")}
    options["out"] = args.out or f"runs/{args.dataset}"
    if args.epochs is None and not args.resume:
        options["epochs"] = DEFAULTS.epochs
    config = TrainConfig(**options, progress=not args.no_progress, cuda_graphs=not args.no_cuda_graphs)
    try:
        fit(config, runner=_runner)
    except TrainingInterrupted as e:
        print(f"{program_name('train')}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the first epoch started (loading data, writing batch.png)
        print(f"{program_name('train')}: interrupted before training started; nothing was trained", file=sys.stderr)
        return 130


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
