"""Test a trained LeNet-5: accuracy on the test set, per-class accuracy, confusion matrix, predictions.

lenet-test                                   # runs/fashion-mnist/best_model.npz (a checkout: .venv/bin/python test.py)
lenet-test --checkpoint runs/x/best_model.npz --show 10
"""

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..backend import get_backend, to_numpy
from ..checkpoint import model_from_checkpoint
from ..cli import DEFAULT_CHECKPOINT, ArgumentParser, add_data_dir, invocation, program_name, run_main
from ..data import load_dataset
from ..errors import LenetError
from ..fast import DataParallel, FastRunner, default_threads, fuse
from ..fast.tuning import tune_process
from ..plots import plot_confusion_matrix, plot_images
from ..trainer import predict


def build_parser():
    p = ArgumentParser(
        prog=program_name("test"),
        description="Evaluate a lenet checkpoint on the test set.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example:\n  {invocation()} --checkpoint runs/quick/best_model.npz --show 10",
    )
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="(default %(default)s)")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy", help="array backend (default %(default)s)")
    add_data_dir(p)
    p.add_argument(
        "--show", type=int, default=0, metavar="N", help="print N lines of predicted vs true class (default 0)"
    )
    p.add_argument("--out", help="folder for confusion_matrix.png and predictions.png (default: the checkpoint's)")
    p.add_argument(
        "--textbook",
        action="store_true",
        help="evaluate with the textbook layers (one thread), not the fast ones",
    )
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def train_first_hint(checkpoint):
    """What to run to make a missing checkpoint: the train command, in the form this one was run in."""
    checkpoint = Path(checkpoint)
    command = invocation(command="train")
    if str(checkpoint) != str(Path(DEFAULT_CHECKPOINT)) and checkpoint.name in ("best_model.npz", "last.npz"):
        command += f" --out {shlex.quote(str(checkpoint.parent))}"
    return command


def run(argv=None):
    args = parse_args(argv)
    tune_process(args.backend)  # the process settings lenet's steps run best with, made once (lenet/fast/tuning.py)
    if args.show < 0:
        raise LenetError(f"--show must be >= 0, not {args.show}")
    if not Path(args.checkpoint).exists():
        hint = train_first_hint(args.checkpoint)
        raise LenetError(f"checkpoint {args.checkpoint}: no such file; train first: {hint}")
    xp = get_backend(args.backend)
    model, meta = model_from_checkpoint(args.checkpoint, backend=args.backend)
    dataset = meta.get("dataset", "fashion-mnist")
    images, labels, class_names = load_dataset(dataset, "test", data_dir=args.data_dir)
    images = images.astype(model.dtype)
    if args.textbook:
        predicted = to_numpy(predict(model.forward, xp.asarray(images)))
    elif xp is np:  # the speed wing: the fused twin, on threads on the CPU
        # Threads, not worker processes: one pass over a test set is over before a worker would have started.
        runner = DataParallel(fuse(model), default_threads(xp), processes=False)
        predicted = to_numpy(predict(runner.forward, xp.asarray(images)))
        runner.close()
    else:  # the speed wing on a GPU: the model's GPU twin, each batch size's forward pass a CUDA graph
        predicted = to_numpy(predict(FastRunner(model, None).forward, xp.asarray(images)))

    accuracy = float((predicted == labels).mean())
    val_acc = meta.get("val_acc")  # none for the initial weights (epochs/epoch_0000.npz)
    shown = "none yet" if val_acc is None else f"{val_acc:.4f}"
    print(f"checkpoint {args.checkpoint}: epoch {meta.get('epoch')}, validation accuracy {shown}")
    print(f"test accuracy on {dataset} ({len(labels)} images): {accuracy:.4f}")
    confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = pd.DataFrame(
        {
            "class": class_names,
            "images": confusion.sum(axis=1),
            "accuracy": confusion.diagonal() / confusion.sum(axis=1),
        }
    )
    print(per_class.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    for i in range(min(args.show, len(labels))):
        mark = "" if predicted[i] == labels[i] else "   <- wrong"
        print(f"predicted: {class_names[predicted[i]]:<12} true: {class_names[labels[i]]}{mark}")

    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    plot_confusion_matrix(confusion, class_names, out / "confusion_matrix.png", of=f"{dataset} test images")
    shown = min(32, len(labels))
    title = f"the first {shown} {dataset} test images"
    plot_images(
        images[:shown], class_names, labels[:shown], out / "predictions.png", predicted=predicted[:shown], title=title
    )
    print(f"wrote {out / 'confusion_matrix.png'} and {out / 'predictions.png'}")


def main(argv=None):
    return run_main(lambda: run(argv), program_name("test"))


if __name__ == "__main__":
    sys.exit(main())
