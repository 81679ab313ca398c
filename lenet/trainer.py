"""The training loop: data -> batches -> forward -> loss -> backward -> optimizer step -> metrics -> files.

`fit(config)` does what train.py promises: loads the data set, splits it 80/20, trains with shuffled
mini-batches, prints one line per epoch, keeps the best-validation weights in best_model.npz, a
resumable last.npz, history.csv and curves.png, all written atomically.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .backend import get_array_module, get_backend
from .checkpoint import load_checkpoint, save_checkpoint
from .data import augment, iterate_batches, load_dataset, num_batches, train_val_split
from .errors import LenetError
from .files import atomic_write
from .layers import SoftmaxCrossEntropy
from .model import LeNet5
from .optim import OPTIMIZERS
from .parallel import DataParallel, default_threads
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
    threads: int = None  # CPU threads for data parallelism; None: every core on NumPy (parallel.py)
    cuda_graphs: bool = True  # CuPy: replay each training step as a CUDA graph (cuda.py)
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


# -- one pass over a data set ------------------------------------------------------------------------------
def evaluate(runner, images, labels, batch_size=1024):
    """(mean loss, accuracy) over a data set, accumulated on the device, read once at the end."""
    loss_fn = SoftmaxCrossEntropy()
    xp = get_array_module(images)
    total_loss, correct = xp.zeros((), dtype=np.float64), xp.zeros((), dtype=np.int64)
    for x, y in iterate_batches(images, labels, batch_size):
        logits = runner.forward(x)
        total_loss += loss_fn.forward(logits, y) * len(y)
        correct += (logits.argmax(axis=1) == y).sum()
    n = len(labels)
    return float(total_loss) / n, int(correct) / n


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


# -- files -------------------------------------------------------------------------------------------------
def write_history(history, path):
    """The history as a pandas DataFrame, written to CSV atomically; returns the DataFrame."""
    df = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_write(path, "w") as f:
        df.to_csv(f, index=False)
    return df


def _rng_state(rng):
    return json.loads(json.dumps(rng.bit_generator.state))  # plain JSON types (PCG64's state has big ints)


# -- the run -----------------------------------------------------------------------------------------------
def fit(config, log=print):
    """Train as `config` says; returns the history DataFrame. Raises LenetError on bad input or divergence."""
    out = Path(config.out)
    last_path, best_path = out / "last.npz", out / "best_model.npz"
    resume_state = None
    if config.resume:
        config, resume_state = _resume(config, last_path)
    config.check()
    xp = get_backend(config.backend)

    images, labels, class_names = load_dataset(config.dataset, "train", data_dir=config.data_dir)
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    train_idx, val_idx = train_val_split(len(labels), config.val_fraction, config.seed)
    dtype = np.dtype(config.dtype)
    # The whole data set moves to the device once; batches are sliced there.
    x_train, y_train = xp.asarray(images[train_idx], dtype=dtype), xp.asarray(labels[train_idx])
    x_val, y_val = xp.asarray(images[val_idx], dtype=dtype), xp.asarray(labels[val_idx])

    model = LeNet5(config.activation, config.pool, backend=config.backend, dtype=config.dtype, seed=config.seed)
    optimizer = make_optimizer(config, model)
    runner = DataParallel(model, config.threads or default_threads(xp), cuda_graphs=config.cuda_graphs)
    shuffle_rng = np.random.default_rng([config.seed, 1])
    history, best_val_acc, first_epoch = [], -1.0, 1
    if resume_state is not None:
        model.load_state_dict(resume_state["weights"])
        optimizer.load_state_dict(resume_state["optimizer"])
        shuffle_rng.bit_generator.state = resume_state["meta"]["rng_state"]
        history = [list(row) for row in resume_state["meta"]["history"]]
        best_val_acc = resume_state["meta"]["best_val_acc"]
        first_epoch = resume_state["meta"]["epoch"] + 1
        log(f"resuming from {last_path} after epoch {first_epoch - 1} (best val acc so far {best_val_acc:.4f})")
    else:
        log(model.summary())
        first_batch = next(
            iterate_batches(images[train_idx], labels[train_idx], config.batch_size, np.random.default_rng(config.seed))
        )
        plot_images(first_batch[0][:64], class_names, first_batch[1][:64], out / "batch.png")
    log(
        f"{config.dataset}: {len(train_idx)} training and {len(val_idx)} validation images; backend {config.backend}, "
        f"{config.optimizer} lr {config.lr} ({config.schedule}), batch {config.batch_size}, "
        f"{config.activation}/{config.pool}{', augmented' if config.augment else ''}"
    )

    meta_common = {
        "dataset": config.dataset,
        "class_names": list(class_names),
        "train_config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("resume", "progress")},
    }
    steps_per_epoch = num_batches(len(train_idx), config.batch_size)
    epoch = first_epoch - 1
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            start = time.perf_counter()
            optimizer.lr = learning_rate(config, epoch)
            total_loss, correct = xp.zeros((), dtype=np.float64), xp.zeros((), dtype=np.int64)
            x_epoch = augment(x_train, shuffle_rng) if config.augment else x_train
            batches = iterate_batches(x_epoch, y_train, config.batch_size, shuffle_rng)
            with np.errstate(over="ignore", invalid="ignore"):  # a diverging loss is caught below, by value
                for x, y in tqdm(
                    batches, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=not config.progress
                ):
                    loss, hits = runner.train_step(optimizer, x, y)
                    total_loss += loss * len(y)
                    correct += hits
                train_loss, train_acc = float(total_loss) / len(train_idx), int(correct) / len(train_idx)
                if not math.isfinite(train_loss):
                    kept = f". The best weights so far are in {best_path}" if best_path.exists() else ""
                    raise LenetError(
                        f"training diverged: the loss became {train_loss} in epoch {epoch}; try a lower --lr{kept}"
                    )
                val_loss, val_acc = evaluate(runner, x_val, y_val)
            seconds = time.perf_counter() - start
            history.append([epoch, train_loss, train_acc, val_loss, val_acc, seconds])
            improved = val_acc > best_val_acc
            if improved:
                best_val_acc = val_acc
                save_checkpoint(best_path, model, {**meta_common, "epoch": epoch, "val_acc": val_acc})
            save_checkpoint(
                last_path,
                model,
                {
                    **meta_common,
                    "epoch": epoch,
                    "val_acc": val_acc,
                    "best_val_acc": best_val_acc,
                    "history": history,
                    "rng_state": _rng_state(shuffle_rng),
                },
                optimizer.state_dict(),
            )
            write_history(history, out / "history.csv")
            log(
                f"epoch {epoch:3d}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  {seconds:6.2f} s{'  *best' if improved else ''}"
            )
    except KeyboardInterrupt:
        done = epoch - 1
        _finish(history, out)
        raise TrainingInterrupted(
            f"interrupted in epoch {epoch}; epochs 1-{done} are saved in {out} "
            f"(best val acc {best_val_acc:.4f}); continue with: python train.py --resume --out {out}"
            if done >= 1
            else f"interrupted in epoch {epoch}, before any epoch finished; nothing to resume"
        ) from None
    finally:
        runner.close()
    df = _finish(history, out)
    log(f"best validation accuracy {best_val_acc:.4f}; weights in {best_path}")
    return df


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
