"""The training loop: data -> batches -> forward -> loss -> backward -> optimizer step -> metrics -> files.

`train_step` (lenet/step.py) is one step of mini-batch gradient descent, the whole algorithm in five lines.
`fit(config)` does what train.py promises around it: loads the data set, splits it 80/20, trains with shuffled
mini-batches, prints one line per epoch, and keeps the run's files (lenet/runfiles.py: the best weights, a resumable
last.npz, history.csv, curves.png, config.json; lenet/recorder.py: the epoch records) in a run folder that it holds
locked for the whole run (lenet/runs.py). The options are TrainConfig's (lenet/options.py); --resume continues a run
from its last.npz (lenet/resume.py).

Who runs the steps is the `runner`: `PlainRunner` below calls train_step on the whole batch, exactly the core's
code; train.py passes the speed wing's lenet.fast.FastRunner instead, which must give the same numbers.
"""

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backend import get_array_module, get_backend, to_numpy
from .checkpoint import load_checkpoint
from .data import AUGMENT_MIRROR, augment, iterate_batches, load_dataset, num_batches, train_val_split
from .errors import LenetError
from .layers import SoftmaxCrossEntropy
from .model import NUM_CLASSES, LeNet5
from .optim import OPTIMIZERS
from .plots import plot_images
from .recorder import EpochRecorder
from .resume import check_resumable, ignored_message, restore, resume_from, saved_progress
from .runfiles import Progress, best_model_path, clean_up, finish, save_epoch, write_config
from .runs import RunLock, check_fresh_start, remove_stale_temporaries
from .step import train_step


# -- one step, one epoch, one evaluation --------------------------------------------------------------------
class PlainRunner:
    """Runs a model's steps as the core writes them: train_step on the whole batch, in this thread.

    The speed wing's FastRunner (lenet/fast) has the same three methods.
    """

    def __init__(self, model, optimizer, config=None, warn=None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, SoftmaxCrossEntropy()

    def train_step(self, x, y):
        return train_step(self.model, self.loss_fn, self.optimizer, x, y)

    def forward(self, x):
        return self.model.forward(x)

    def close(self):
        pass


def train_epoch(runner, x_train, y_train, batch_size, rng, progress=None):
    """One pass over the shuffled training set: (mean loss, accuracy), read from the device once at the end."""
    xp = get_array_module(x_train)
    total_loss, correct = xp.zeros((), dtype=np.float64), xp.zeros((), dtype=np.int64)
    for x, y in iterate_batches(x_train, y_train, batch_size, rng):
        loss, hits = runner.train_step(x, y)
        total_loss += loss * len(y)
        correct += hits
        if progress is not None:
            progress.update()
    n = len(y_train)
    return float(total_loss) / n, int(correct) / n


def evaluate(forward, images, labels, batch_size=1024):
    """(mean loss, accuracy, confusion matrix) of `forward` (logits of a batch) over a data set.

    confusion[i, j] (NumPy, NUM_CLASSES x NUM_CLASSES) counts the images of class i predicted as j: taken from the
    same predictions as the accuracy (its trace / N), so the epoch records need no second pass.
    """
    loss_fn = SoftmaxCrossEntropy()
    xp = get_array_module(images)
    total_loss, correct = xp.zeros((), dtype=np.float64), xp.zeros((), dtype=np.int64)
    confusion = xp.zeros(NUM_CLASSES * NUM_CLASSES, dtype=np.int64)  # flat: true * NUM_CLASSES + predicted
    for x, y in iterate_batches(images, labels, batch_size):
        logits = forward(x)
        total_loss += loss_fn.forward(logits, y) * len(y)
        predicted = logits.argmax(axis=1)
        correct += (predicted == y).sum()
        confusion += xp.bincount(y.astype(np.int64) * NUM_CLASSES + predicted, minlength=NUM_CLASSES * NUM_CLASSES)
    n = len(labels)
    return float(total_loss) / n, int(correct) / n, to_numpy(confusion).reshape(NUM_CLASSES, NUM_CLASSES)


def predict(forward, images, batch_size=1024):
    """Class indices (N,) for images (N, 1, 28, 28), a batch of batch_size at a time so memory stays small."""
    xp = get_array_module(images)
    out = [forward(images[i : i + batch_size]).argmax(axis=1) for i in range(0, images.shape[0], batch_size)]
    return xp.concatenate(out) if out else xp.zeros(0, dtype=np.int64)


# -- the run ------------------------------------------------------------------------------------------------
def print_now(line):
    """print, flushed at once: piped or redirected, each epoch's line arrives as it is printed, not at exit."""
    print(line, flush=True)


def fit(config, runner=PlainRunner, log=print_now, given=None, warn=None):
    """Train as `config` says; returns the history DataFrame.

    Raises LenetError on bad input or divergence, and TrainingInterrupted on Ctrl-C or SIGTERM once the run
    folder is held: from then on every interruption leaves the finished epochs saved and says which they are.
    runner(model, optimizer, config, warn) makes what runs the steps: PlainRunner, or lenet.fast.FastRunner.for_config.
    given: names of the TrainConfig fields the user set; on --resume those the stored run keeps, set to other
    values, are named in one line through warn (default: printed to stderr), which the runner may also use (the
    speed wing says there, once, when other programs use the CPU and what its workers do about it).
    """
    out = Path(config.out)
    last_path = out / "last.npz"
    warn = warn or _print_warning
    if config.resume:
        check_resumable(last_path)  # before the lock makes the folder
    else:
        config.check()
    with RunLock(out):
        remove_stale_temporaries(out)
        if config.resume:
            config, resume_state, ignored = resume_from(config, last_path, given)
            if ignored:
                warn(ignored_message(ignored))
            config.check()
        else:
            check_fresh_start(out, config.overwrite)
            resume_state = None
        return _train(config, resume_state, runner, log, warn)


def _train(config, resume_state, runner, log, warn):
    out = Path(config.out)
    best_path = best_model_path(config)
    progress = Progress([]) if resume_state is None else saved_progress(resume_state["meta"])
    epoch, run, records = None, None, None  # epoch: the one running now; None before the first
    try:
        xp = get_backend(config.backend)
        data = load_split(config, xp, download=resume_state is None or resume_state["download"])
        write_config(config, out / "config.json")
        model = LeNet5(config.activation, config.pool, config.backend, config.dtype, config.seed)
        optimizer = make_optimizer(config, model)
        shuffle_rng = np.random.default_rng([config.seed, 1])
        if resume_state is not None:
            restore(resume_state, model, optimizer, shuffle_rng)
            log(
                f"resuming from {out / 'last.npz'} after epoch {progress.epoch} "
                f"(best val acc so far {progress.best_val_acc:.4f})"
            )
        else:
            log(model.summary())
            _plot_first_batch(config, data, out / "batch.png")
        log(
            f"{config.dataset}: {len(data.y_train)} training and {len(data.y_val)} validation images; "
            f"backend {config.backend}{', textbook layers' if config.textbook else ''}, "
            f"{config.optimizer} lr {config.lr} ({config.schedule}), batch {config.batch_size}, "
            f"{config.activation}/{config.pool}{'' if config.augment == 'none' else f', augment {config.augment}'}"
        )
        meta_common = {"dataset": config.dataset, "class_names": data.class_names, "train_config": config.stored()}
        steps_per_epoch = num_batches(len(data.y_train), config.batch_size)
        run = runner(model, optimizer, config, warn)
        records = EpochRecorder.start(
            out, config, data, meta_common, model, progress.epoch,
            lambda: evaluate(run.forward, data.x_val, data.y_val), warn,
        )  # fmt: skip
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            start = time.perf_counter()
            optimizer.lr = learning_rate(config, epoch)
            x_epoch = augmented(config, data.x_train, shuffle_rng)
            # disable=None: a bar only on a terminal (a log file gets no carriage-return frames); TQDM_DISABLE
            # is read as tqdm reads it (any value but empty), as tqdm ignores it once disable is passed
            no_bar = not config.progress or bool(os.environ.get("TQDM_DISABLE"))
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=True if no_bar else None)
            with bar, np.errstate(over="ignore", invalid="ignore"):  # a diverging loss is caught below, by value
                train_loss, train_acc = train_epoch(run, x_epoch, data.y_train, config.batch_size, shuffle_rng, bar)
                val_loss, val_acc, confusion = evaluate(run.forward, data.x_val, data.y_val)
            _check_finite(epoch, train_loss, val_loss, model, best_path)  # before anything of the epoch is saved
            seconds = time.perf_counter() - start
            progress.history.append([epoch, train_loss, train_acc, val_loss, val_acc, seconds])
            if records is not None:  # before last.npz: the records are never behind it
                records.add(progress.history[-1], confusion, model)
            improved = save_epoch(out, model, optimizer, meta_common, progress, shuffle_rng, best_path)
            log(
                f"epoch {epoch:3d}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  {seconds:6.2f} s{'  *best' if improved else ''}"
            )
        df = finish(progress.history, out)
        log(f"best validation accuracy {progress.best_val_acc:.4f}; weights in {best_path}")
        return df
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as lenet.cli.Terminated: in any phase of the run
        not_written = clean_up(progress, out, records)
        best = progress.best_val_acc if progress.best_val_acc >= 0 else None
        raise TrainingInterrupted(stop, out, epoch, progress.saved_epoch, config.epochs, best, not_written) from None
    finally:
        if run is not None:
            run.close()


# -- what the loop needs ------------------------------------------------------------------------------------
def augmented(config, images, rng):
    """This epoch's training images: as they are, or shifted (mirrored where the data set allows) and distorted."""
    if config.augment == "none":
        return images
    return augment(images, rng, flip=AUGMENT_MIRROR[config.dataset], affine=config.augment == "affine")


def make_optimizer(config, model):
    params = model.parameters()
    if config.optimizer == "sgd":
        return OPTIMIZERS["sgd"](params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return OPTIMIZERS["adam"](params, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config, epoch):
    """The learning rate of a (1-based) epoch: constant, or a cosine from lr down to lr/100 at the end."""
    if config.schedule == "constant":
        return config.lr
    t = (epoch - 1) / max(1, config.epochs - 1)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


@dataclasses.dataclass
class Split:
    """The training and validation images and labels, on the device, and the class names."""

    x_train: object
    y_train: object
    x_val: object
    y_val: object
    class_names: list


def load_split(config, xp, download=True):
    """The data set, cut as config says (--limit, --val-fraction, --seed), moved to the device once.

    download=False: missing files are an error, not fetched (a data_dir read from last.npz is only looked in).
    """
    images, labels, class_names = load_dataset(config.dataset, "train", data_dir=config.data_dir, download=download)
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    train_idx, val_idx = train_val_split(len(labels), config.val_fraction, config.seed)
    dtype = np.dtype(config.dtype)
    return Split(
        xp.asarray(images[train_idx], dtype=dtype),
        xp.asarray(labels[train_idx]),
        xp.asarray(images[val_idx], dtype=dtype),
        xp.asarray(labels[val_idx]),
        list(class_names),
    )


def all_finite(model):
    """Whether every weight of `model` is a finite number (one read from the device)."""
    xp = model.xp
    return bool(xp.stack([xp.isfinite(p.data).all() for p in model.parameters()]).all())


def _check_finite(epoch, train_loss, val_loss, model, best_path):
    """Raise LenetError if the epoch diverged: a loss or a weight is not a finite number.

    The validation loss and the weights are checked too: one huge step can leave finite training losses
    behind it and weights that give NaN on every image, or are themselves infinite.
    """
    if not math.isfinite(train_loss):
        what = f"the training loss became {train_loss}"
    elif not math.isfinite(val_loss):
        what = f"the validation loss became {val_loss}"
    elif not all_finite(model):
        what = "the weights are no longer finite numbers"
    else:
        return
    kept = f". The best weights so far are in {best_path}" if _finite_checkpoint(best_path) else ""
    raise LenetError(f"training diverged: {what} in epoch {epoch}; try a lower --lr{kept}")


def _finite_checkpoint(path):
    """Whether `path` is a readable checkpoint whose weights are all finite."""
    if not path.exists():
        return False
    try:
        weights = load_checkpoint(path)[0]
    except (LenetError, OSError):
        return False
    return all(np.isfinite(w).all() for w in weights.values())


def _print_warning(message):
    print(f"warning: {message}", file=sys.stderr)


def _plot_first_batch(config, data, path):
    """The tutorial's picture of one training batch (the first of a fresh shuffle, up to 64 images)."""
    xp = get_array_module(data.x_train)
    order = np.random.default_rng(config.seed).permutation(len(data.y_train))[: min(64, config.batch_size)]
    images = to_numpy(data.x_train[xp.asarray(order)])
    labels = to_numpy(data.y_train[xp.asarray(order)])
    title = f"one training batch: {len(order)} images and their labels, as the network reads them (bright ink on black)"
    plot_images(images, data.class_names, labels, path, title=title)


# -- interruptions ------------------------------------------------------------------------------------------
class TrainingInterrupted(Exception):
    """Ctrl-C (or SIGTERM) during a run: what was finished is saved. The facts for the command's message.

    stop: the KeyboardInterrupt that stopped the run (lenet.cli.Terminated for SIGTERM); out: the run folder;
    epoch: the epoch that was running (None: before the first of this command); saved_epoch: the last epoch in
    last.npz (0: none); epochs: the run's number of epochs; best_val_acc: the validation accuracy of the weights
    in best_model.npz (None: none saved); not_written: files the clean-up could not write, with the reason.
    """

    def __init__(self, stop, out, epoch, saved_epoch, epochs, best_val_acc, not_written=()):
        super().__init__(f"interrupted in epoch {epoch}; last.npz holds epoch {saved_epoch} of {epochs} in {out}")
        self.stop, self.out, self.epoch, self.saved_epoch, self.epochs = stop, Path(out), epoch, saved_epoch, epochs
        self.best_val_acc, self.not_written = best_val_acc, list(not_written)
