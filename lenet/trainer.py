"""The training loop: data -> batches -> forward -> loss -> backward -> optimizer step -> metrics -> files.

`train_step` is one step of mini-batch gradient descent, the whole algorithm in five lines. `fit(config)` does what
train.py promises around it: loads the data set, splits it 80/20, trains with shuffled mini-batches, prints one line
per epoch, keeps the best-validation weights in best_model.npz, a resumable last.npz, history.csv and curves.png,
all written atomically.

Who runs the steps is the `runner`: `PlainRunner` below calls train_step on the whole batch, exactly the code of
this file; train.py passes the speed wing's lenet.fast.FastRunner instead, which must give the same numbers.
"""

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .backend import get_array_module, get_backend, to_numpy
from .checkpoint import load_checkpoint, save_checkpoint
from .data import augment, iterate_batches, load_dataset, num_batches, train_val_split
from .errors import LenetError
from .files import atomic_write
from .layers import SoftmaxCrossEntropy
from .model import LeNet5
from .optim import OPTIMIZERS
from .plots import plot_history, plot_images

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
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
    augment: bool = False  # random 1-pixel shifts and mirror images, drawn anew every epoch
    limit: int = None  # use only the first N training examples (quick runs, tests)
    textbook: bool = False  # the textbook layer stack (LeNet5(fused=False)), run by PlainRunner
    threads: int = None  # CPU threads for the speed wing's data parallelism; None: one per core
    cuda_graphs: bool = True  # CuPy: the speed wing replays each training step as a CUDA graph
    out: str = "runs/fashion-mnist"
    progress: bool = True
    resume: bool = False  # continue the run saved in `out` (not stored: a resumed run is no different)

    def check(self):
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


class TrainingInterrupted(Exception):
    """Ctrl-C during training: what was finished is saved; the message says how to resume."""


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


def load_split(config, xp):
    """The data set, cut as config says (--limit, --val-fraction, --seed), moved to the device once."""
    images, labels, class_names = load_dataset(config.dataset, "train", data_dir=config.data_dir)
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
    """Where a run stands: the finished epochs' history and the best validation accuracy so far."""

    history: list
    best_val_acc: float = -1.0

    @property
    def epoch(self):
        """The last finished epoch (0 before the first)."""
        return int(self.history[-1][0]) if self.history else 0


def save_epoch(out, model, optimizer, meta_common, progress, shuffle_rng):
    """After an epoch: best_model.npz if validation improved, then last.npz and history.csv. Returns improved."""
    epoch, val_acc = progress.epoch, progress.history[-1][4]
    improved = val_acc > progress.best_val_acc
    if improved:
        progress.best_val_acc = val_acc
        save_checkpoint(out / "best_model.npz", model, {**meta_common, "epoch": epoch, "val_acc": val_acc})
    resume_meta = {
        **meta_common,
        "epoch": epoch,
        "val_acc": val_acc,
        "best_val_acc": progress.best_val_acc,
        "history": progress.history,
        "rng_state": _rng_state(shuffle_rng),
    }
    save_checkpoint(out / "last.npz", model, resume_meta, optimizer.state_dict())
    write_history(progress.history, out / "history.csv")
    return improved


def restore(state, model, optimizer, shuffle_rng):
    """Put a run saved in last.npz back: weights, optimizer state, shuffling RNG. Returns its Progress."""
    model.load_state_dict(state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    shuffle_rng.bit_generator.state = state["meta"]["rng_state"]
    return Progress([list(row) for row in state["meta"]["history"]], state["meta"]["best_val_acc"])


# -- the run -------------------------------------------------------------------------------------------------
def print_now(line):
    """print, flushed at once: piped or redirected, each epoch's line arrives as it is printed, not at exit."""
    print(line, flush=True)


def fit(config, runner=PlainRunner, log=print_now):
    """Train as `config` says; returns the history DataFrame. Raises LenetError on bad input or divergence.

    runner(model, optimizer, config) makes what runs the steps: PlainRunner, or lenet.fast.FastRunner.for_config.
    """
    out = Path(config.out)
    last_path, best_path = out / "last.npz", out / "best_model.npz"
    resume_state = None
    if config.resume:
        config, resume_state = _resume(config, last_path)
    config.check()
    xp = get_backend(config.backend)
    data = load_split(config, xp)
    model = LeNet5(config.activation, config.pool, config.backend, config.dtype, config.seed, fused=not config.textbook)
    optimizer = make_optimizer(config, model)
    shuffle_rng = np.random.default_rng([config.seed, 1])
    if resume_state is not None:
        progress = restore(resume_state, model, optimizer, shuffle_rng)
        log(f"resuming from {last_path} after epoch {progress.epoch} (best val acc so far {progress.best_val_acc:.4f})")
    else:
        progress = Progress([])
        log(model.summary())
        _plot_first_batch(config, data, out / "batch.png")
    log(
        f"{config.dataset}: {len(data.y_train)} training and {len(data.y_val)} validation images; "
        f"backend {config.backend}{', textbook layers' if config.textbook else ''}, "
        f"{config.optimizer} lr {config.lr} ({config.schedule}), batch {config.batch_size}, "
        f"{config.activation}/{config.pool}{', augmented' if config.augment else ''}"
    )
    meta_common = {
        "dataset": config.dataset,
        "class_names": data.class_names,
        "train_config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("resume", "progress")},
    }
    steps_per_epoch = num_batches(len(data.y_train), config.batch_size)
    run = runner(model, optimizer, config)
    epoch = progress.epoch
    try:
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            start = time.perf_counter()
            optimizer.lr = learning_rate(config, epoch)
            x_epoch = augment(data.x_train, shuffle_rng) if config.augment else data.x_train
            # disable=None: a bar only on a terminal (a log file gets no carriage-return frames); TQDM_DISABLE
            # is read as tqdm reads it (any value but empty), as tqdm ignores it once disable is passed
            no_bar = not config.progress or bool(os.environ.get("TQDM_DISABLE"))
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=True if no_bar else None)
            with bar, np.errstate(over="ignore", invalid="ignore"):  # a diverging loss is caught below, by value
                train_loss, train_acc = train_epoch(run, x_epoch, data.y_train, config.batch_size, shuffle_rng, bar)
                if not math.isfinite(train_loss):
                    kept = f". The best weights so far are in {best_path}" if best_path.exists() else ""
                    raise LenetError(
                        f"training diverged: the loss became {train_loss} in epoch {epoch}; try a lower --lr{kept}"
                    )
                val_loss, val_acc = evaluate(run.forward, data.x_val, data.y_val)
            seconds = time.perf_counter() - start
            progress.history.append([epoch, train_loss, train_acc, val_loss, val_acc, seconds])
            improved = save_epoch(out, model, optimizer, meta_common, progress, shuffle_rng)
            log(
                f"epoch {epoch:3d}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  {seconds:6.2f} s{'  *best' if improved else ''}"
            )
    except KeyboardInterrupt:
        done = epoch - 1
        _finish(progress.history, out)
        raise TrainingInterrupted(
            f"interrupted in epoch {epoch}; epochs 1-{done} are saved in {out} "
            f"(best val acc {progress.best_val_acc:.4f}); continue with: python train.py --resume --out {out}"
            if done >= 1
            else f"interrupted in epoch {epoch}, before any epoch finished; nothing to resume"
        ) from None
    finally:
        run.close()
    df = _finish(progress.history, out)
    log(f"best validation accuracy {progress.best_val_acc:.4f}; weights in {best_path}")
    return df


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


def _resume(config, last_path):
    """The stored config of the run in last_path (epochs may be raised) and its saved state."""
    if not last_path.exists():
        raise LenetError(f"nothing to resume in {last_path.parent}: it has no last.npz")
    state, meta, optimizer_state = load_checkpoint(last_path)
    missing = [k for k in ("train_config", "epoch", "history", "best_val_acc", "rng_state") if k not in meta]
    if missing or "steps" not in optimizer_state:
        missing += [] if "steps" in optimizer_state else ["optimizer state"]
        raise LenetError(f"{last_path} is not a resumable checkpoint (missing: {', '.join(missing)})")
    try:
        stored = TrainConfig(**meta["train_config"])
    except TypeError as e:
        raise LenetError(f"{last_path}: its training options do not fit this lenet ({e})") from None
    if config.epochs is not None:  # the only option a resumed run may change
        stored.epochs = config.epochs
    # How to run, not what to train: the resuming command's own (a GPU that cannot record graphs can resume).
    stored.out, stored.progress, stored.cuda_graphs = config.out, config.progress, config.cuda_graphs
    stored.data_dir = config.data_dir or stored.data_dir
    if meta["epoch"] >= stored.epochs:
        raise LenetError(f"{last_path} already finished epoch {meta['epoch']} of {stored.epochs}; raise --epochs")
    return stored, {"weights": state, "meta": meta, "optimizer": optimizer_state}
