"""The training loop: data -> batches -> forward -> loss -> backward -> optimizer step -> metrics -> files.

`train_step` is one step of mini-batch gradient descent, the whole algorithm in five lines. `fit(config)` does what
train.py promises around it: loads the data set, splits it 80/20, trains with shuffled mini-batches, prints one line
per epoch, keeps the best-validation weights in best_model.npz, a resumable last.npz, history.csv, curves.png and
config.json, all written atomically, in a run folder that it holds locked for the whole run (lenet/runs.py).

Who runs the steps is the `runner`: `PlainRunner` below calls train_step on the whole batch, exactly the code of
this file; train.py passes the speed wing's lenet.fast.FastRunner instead, which must give the same numbers.
"""

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .backend import get_array_module, get_backend, to_numpy
from .checkpoint import CHECKPOINT_FORMATS, check_resume_state, load_checkpoint, save_checkpoint
from .data import AUGMENT_MIRROR, augment, iterate_batches, load_dataset, num_batches, train_val_split
from .errors import LenetError
from .files import atomic_write
from .layers import SoftmaxCrossEntropy
from .model import LeNet5
from .optim import OPTIMIZERS
from .plots import plot_history, plot_images
from .runs import RunLock, check_fresh_start, remove_stale_temporaries

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
AUGMENTATIONS = ("none", "shift", "affine")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run (train.py's flags). Stored in last.npz so --resume continues it."""

    dataset: str = "fashion-mnist"
    data_dir: str = None
    backend: str = "numpy"
    epochs: int = 30  # None on --resume: keep the stored run's number
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    activation: str = "sigmoid"
    pool: str = "avg"
    dtype: str = "float32"
    seed: int = 0
    val_fraction: float = 0.2
    augment: str = "none"  # "shift": random 1-pixel shifts (and mirror images where the data set allows), drawn
    # anew every epoch; "affine": those and a small random rotation, scale and shear (AUGMENTATIONS)
    limit: int = None  # use only the first N training examples (quick runs, tests)
    textbook: bool = False  # the textbook layer stack (LeNet5(fused=False)), run by PlainRunner
    threads: int = None  # CPU workers for the speed wing's data parallelism (processes.py); None: one per core
    cuda_graphs: bool = True  # CuPy: the speed wing replays each training step as a CUDA graph
    out: str = "runs/fashion-mnist"
    progress: bool = True
    resume: bool = False  # continue the run saved in `out` (not stored: a resumed run is no different)
    overwrite: bool = False  # a fresh run may replace a run already in `out` (not stored)
    format: str = "npz"  # of the best weights: best_model.npz, or best_model.safetensors (last.npz stays .npz)

    def __post_init__(self):
        if isinstance(self.augment, bool):  # runs saved before the modes existed stored True or False
            self.augment = "shift" if self.augment else "none"

    def check(self):
        if self.augment not in AUGMENTATIONS:
            raise LenetError(f"unknown augmentation {self.augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
        if self.epochs < 1:
            raise LenetError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise LenetError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise LenetError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise LenetError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise LenetError(f"--lr must be a positive number, not {self.lr}")
        for flag, value in (("--momentum", self.momentum), ("--weight-decay", self.weight_decay)):
            if not (math.isfinite(value) and value >= 0):
                raise LenetError(f"{flag} must be a number >= 0, not {value}")
        if self.seed < 0:  # NumPy's generators take only non-negative seeds
            raise LenetError(f"--seed must be >= 0, not {self.seed}")
        if self.limit is not None and self.limit < 2:
            raise LenetError(f"--limit must be at least 2, not {self.limit}")
        if self.threads is not None:
            # Each worker is a process of its own (or a thread with a model replica): a huge number would fill
            # memory before the first step.
            cores = _cores()
            if not 1 <= self.threads <= 4 * cores:
                raise LenetError(
                    f"--threads must be between 1 and {4 * cores} (4 per core; this process may use {cores} "
                    f"cores), not {self.threads}"
                )
        if self.format not in CHECKPOINT_FORMATS:
            raise LenetError(f"unknown format {self.format!r}; choose one of: {', '.join(CHECKPOINT_FORMATS)}")
        if self.resume and self.overwrite:
            raise LenetError("--resume continues the run in --out and --overwrite replaces it: give one of them")

    def stored(self):
        """What last.npz and config.json keep: every option but how this command was asked to run."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_STORED}


NOT_STORED = ("resume", "overwrite", "progress")
# Options a resumed run takes from the resuming command: how to run it, not what to train.
HOW_TO_RUN = ("epochs", "out", "data_dir", "threads", "progress", "cuda_graphs", "resume", "overwrite")


def _cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


# -- one step, one epoch, one evaluation --------------------------------------------------------------------
def train_step(model, loss_fn, optimizer, x, y):
    """One step of mini-batch gradient descent on images x (N, 1, 28, 28) and labels y (N,).

    Returns (mean loss, number of correct predictions), both still on the device.
    """
    logits = model.forward(x)  # (N, 10)
    loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward())  # fills every parameter's .grad
    optimizer.step()
    return loss, (logits.argmax(axis=1) == y).sum()


class PlainRunner:
    """Runs a model's steps as the core writes them: train_step on the whole batch, in this thread.

    The speed wing's FastRunner (lenet/fast) has the same three methods.
    """

    def __init__(self, model, optimizer, config=None):
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
    """(mean loss, accuracy) of `forward` (logits of a batch) over a data set, read from the device once."""
    loss_fn = SoftmaxCrossEntropy()
    xp = get_array_module(images)
    total_loss, correct = xp.zeros((), dtype=np.float64), xp.zeros((), dtype=np.int64)
    for x, y in iterate_batches(images, labels, batch_size):
        logits = forward(x)
        total_loss += loss_fn.forward(logits, y) * len(y)
        correct += (logits.argmax(axis=1) == y).sum()
    n = len(labels)
    return float(total_loss) / n, int(correct) / n


def predict(forward, images, batch_size=1024):
    """Class indices (N,) for images (N, 1, 28, 28), a batch of batch_size at a time so memory stays small."""
    xp = get_array_module(images)
    out = [forward(images[i : i + batch_size]).argmax(axis=1) for i in range(0, images.shape[0], batch_size)]
    return xp.concatenate(out) if out else xp.zeros(0, dtype=np.int64)


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


# -- data ----------------------------------------------------------------------------------------------------
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


# -- files ---------------------------------------------------------------------------------------------------
def write_history(history, path):
    """The history as a pandas DataFrame, written to CSV atomically; returns the DataFrame."""
    df = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_write(path, "w") as f:
        df.to_csv(f, index=False)
    return df


def _rng_state(rng):
    return json.loads(json.dumps(rng.bit_generator.state))  # plain JSON types (PCG64's state has big ints)


@dataclasses.dataclass
class Progress:
    """Where a run stands: the finished epochs' history, and what of it is on disk.

    best_val_acc is the validation accuracy of the weights in best_model.npz and saved_epoch the epoch in
    last.npz: each changes only once its file is written, so a message built from them is never ahead of the files.
    """

    history: list
    best_val_acc: float = -1.0  # -1: no best_model.npz written yet
    saved_epoch: int = 0

    @property
    def epoch(self):
        """The last finished epoch (0 before the first)."""
        return int(self.history[-1][0]) if self.history else 0


def best_model_path(config):
    """Where a run keeps its best weights: best_model.npz, or best_model.safetensors with --format safetensors."""
    return Path(config.out) / f"best_model{CHECKPOINT_FORMATS[config.format]}"


def save_epoch(out, model, optimizer, meta_common, progress, shuffle_rng, best_path):
    """After an epoch: the best weights (to best_path) if validation improved, then last.npz and history.csv.
    Returns whether validation improved."""
    epoch, val_acc = progress.epoch, progress.history[-1][4]
    improved = val_acc > progress.best_val_acc
    if improved:
        save_checkpoint(best_path, model, {**meta_common, "epoch": epoch, "val_acc": val_acc})
        progress.best_val_acc = val_acc
    resume_meta = {
        **meta_common,
        "epoch": epoch,
        "val_acc": val_acc,
        "best_val_acc": progress.best_val_acc,
        "history": progress.history,
        "rng_state": _rng_state(shuffle_rng),
    }
    save_checkpoint(out / "last.npz", model, resume_meta, optimizer.state_dict())
    progress.saved_epoch = epoch
    write_history(progress.history, out / "history.csv")
    return improved


def restore(state, model, optimizer, shuffle_rng):
    """Put a run saved in last.npz back: weights, optimizer state, shuffling RNG."""
    model.load_state_dict(state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    shuffle_rng.bit_generator.state = state["meta"]["rng_state"]


def saved_progress(meta):
    """The Progress of a run saved in last.npz (its metadata)."""
    return Progress([list(row) for row in meta["history"]], meta["best_val_acc"], meta["epoch"])


def all_finite(model):
    """Whether every weight of `model` is a finite number (one read from the device)."""
    xp = model.xp
    return bool(xp.stack([xp.isfinite(p.data).all() for p in model.parameters()]).all())


# -- the run -------------------------------------------------------------------------------------------------
def print_now(line):
    """print, flushed at once: piped or redirected, each epoch's line arrives as it is printed, not at exit."""
    print(line, flush=True)


def fit(config, runner=PlainRunner, log=print_now, given=None, warn=None):
    """Train as `config` says; returns the history DataFrame.

    Raises LenetError on bad input or divergence, and TrainingInterrupted on Ctrl-C or SIGTERM once the run
    folder is held: from then on every interruption leaves the finished epochs saved and says which they are.
    runner(model, optimizer, config) makes what runs the steps: PlainRunner, or lenet.fast.FastRunner.for_config.
    given: names of the TrainConfig fields the user set; on --resume those the stored run keeps, set to other
    values, are named in one line through warn (default: printed to stderr).
    """
    out = Path(config.out)
    last_path = out / "last.npz"
    if config.resume:
        _check_resumable(last_path)  # before the lock makes the folder
    else:
        config.check()
    with RunLock(out):
        remove_stale_temporaries(out)
        if config.resume:
            config, resume_state, ignored = _resume(config, last_path, given)
            if ignored:
                (warn or _print_warning)(ignored_message(ignored))
            config.check()
        else:
            check_fresh_start(out, config.overwrite)
            resume_state = None
        return _train(config, resume_state, runner, log)


def _train(config, resume_state, runner, log):
    out = Path(config.out)
    best_path = best_model_path(config)
    progress = Progress([]) if resume_state is None else saved_progress(resume_state["meta"])
    epoch, run = None, None  # epoch: the one running now; None before the first
    try:
        xp = get_backend(config.backend)
        data = load_split(config, xp, download=resume_state is None or resume_state["download"])
        write_config(config, out / "config.json")
        model = LeNet5(
            config.activation, config.pool, config.backend, config.dtype, config.seed, fused=not config.textbook
        )
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
        run = runner(model, optimizer, config)
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
                val_loss, val_acc = evaluate(run.forward, data.x_val, data.y_val)
            _check_finite(epoch, train_loss, val_loss, model, best_path)  # before anything of the epoch is saved
            seconds = time.perf_counter() - start
            progress.history.append([epoch, train_loss, train_acc, val_loss, val_acc, seconds])
            improved = save_epoch(out, model, optimizer, meta_common, progress, shuffle_rng, best_path)
            log(
                f"epoch {epoch:3d}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  {seconds:6.2f} s{'  *best' if improved else ''}"
            )
        df = _finish(progress.history, out)
        log(f"best validation accuracy {progress.best_val_acc:.4f}; weights in {best_path}")
        return df
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as lenet.cli.Terminated: in any phase of the run
        not_written = _clean_up(progress, out)
        best = progress.best_val_acc if progress.best_val_acc >= 0 else None
        raise TrainingInterrupted(stop, out, epoch, progress.saved_epoch, config.epochs, best, not_written) from None
    finally:
        if run is not None:
            run.close()


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


def write_config(config, path):
    """The run's options (TrainConfig.stored()) as readable JSON, written atomically."""
    with atomic_write(path, "w") as f:
        json.dump(config.stored(), f, indent=2, sort_keys=True)
        f.write("\n")


def _print_warning(message):
    print(f"warning: {message}", file=sys.stderr)


def _plot_first_batch(config, data, path):
    """The tutorial's picture of one training batch (the first of a fresh shuffle, up to 64 images)."""
    xp = get_array_module(data.x_train)
    order = np.random.default_rng(config.seed).permutation(len(data.y_train))[: min(64, config.batch_size)]
    images = to_numpy(data.x_train[xp.asarray(order)])
    plot_images(images, data.class_names, to_numpy(data.y_train[xp.asarray(order)]), path)


def _finish(history, out):
    df = write_history(history, out / "history.csv")
    if len(df):
        plot_history(df, out / "curves.png")
    return df


def _clean_up(progress, out):
    """After an interruption: history.csv and curves.png of the epochs in last.npz, as far as they can be written.

    Returns what was not written, with why (a full disk; a second Ctrl-C, which skips the rest). The run's
    checkpoints are already safe: this only brings the table and the picture up to them.
    """
    rows = progress.history[: progress.saved_epoch]
    if not rows:
        return []
    writers = [
        ("history.csv", lambda path: write_history(rows, path)),
        ("curves.png", lambda path: plot_history(pd.DataFrame(rows, columns=HISTORY_COLUMNS), path)),
    ]
    not_written = []
    for i, (name, write) in enumerate(writers):
        try:
            write(out / name)
        except OSError as e:
            not_written.append(f"{name} ({e.strerror or e})")
        except KeyboardInterrupt:
            not_written += [f"{later} (interrupted again)" for later, _ in writers[i:]]
            break
    return not_written


def _check_resumable(last_path):
    if not last_path.exists():
        raise LenetError(f"nothing to resume in {last_path.parent}: it has no last.npz")


def _resume(config, last_path, given=None):
    """The stored config of the run in last_path, its saved state, and the options the stored run keeps.

    The returned config is the stored one with how to run it (HOW_TO_RUN) taken from `config`; epochs may be
    raised. The third value lists (field, stored value, requested value) for each field in `given` (the
    fields the user set) that the stored run keeps at another value.
    """
    _check_resumable(last_path)
    state, meta, optimizer_state = load_checkpoint(last_path)
    check_resume_state(meta, optimizer_state, last_path)  # every field used below: types, ranges, shapes
    try:
        stored = TrainConfig(**meta["train_config"])
    except TypeError as e:
        raise LenetError(f"{last_path}: its training options do not fit this lenet ({e})") from None
    ignored = [
        (name, getattr(stored, name), getattr(config, name))
        for name in sorted(given or ())
        if name not in HOW_TO_RUN and getattr(stored, name) != getattr(config, name)
    ]
    if config.epochs is not None:  # the only option of what to train that a resumed run may change
        stored.epochs = config.epochs
    # How to run, not what to train: the resuming command's own (a GPU that cannot record graphs can resume).
    stored.out, stored.progress, stored.cuda_graphs = config.out, config.progress, config.cuda_graphs
    stored.threads, stored.resume = config.threads, True
    # A data_dir read from last.npz is a path from a file: only looked in. Downloads go to a folder the user named.
    download = config.data_dir is not None or stored.data_dir is None
    stored.data_dir = config.data_dir or stored.data_dir
    if meta["epoch"] >= stored.epochs:
        raise LenetError(f"{last_path} already finished epoch {meta['epoch']} of {stored.epochs}; raise --epochs")
    return stored, {"weights": state, "meta": meta, "optimizer": optimizer_state, "download": download}, ignored


def ignored_message(ignored):
    """One line for the options --resume ignores: (field, stored value, requested value) each."""
    kept = ", ".join(_as_flag(name, value) for name, value, _ in ignored)
    asked = ", ".join(_as_flag(name, value) for name, _, value in ignored)
    return f"--resume keeps the stored run's {kept}; ignored: {asked}"


def _as_flag(name, value):
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {value}"
