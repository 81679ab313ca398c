"""What a training run writes in its folder (--out), each file atomically (lenet/files.py):

- best_model.npz (or .safetensors): the weights of the best validation accuracy so far;
- last.npz: the weights, optimizer state, history and shuffling RNG after the last finished epoch (what --resume
  continues, lenet/resume.py);
- history.csv and curves.png: a row per epoch and their picture;
- config.json: the run's options, readable.

`Progress` keeps which epochs are on disk, so that what a message says is never ahead of the files.
"""

import dataclasses
import json
from pathlib import Path

import pandas as pd

from .checkpoint import CHECKPOINT_FORMATS, save_checkpoint
from .files import atomic_write
from .plots import plot_history

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


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


def _rng_state(rng):
    return json.loads(json.dumps(rng.bit_generator.state))  # plain JSON types (PCG64's state has big ints)


def write_history(history, path):
    """The history as a pandas DataFrame, written to CSV atomically; returns the DataFrame."""
    df = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_write(path, "w") as f:
        df.to_csv(f, index=False)
    return df


def write_config(config, path):
    """The run's options (TrainConfig.stored()) as readable JSON, written atomically."""
    with atomic_write(path, "w") as f:
        json.dump(config.stored(), f, indent=2, sort_keys=True)
        f.write("\n")


def finish(history, out):
    """At the end of a run: history.csv and curves.png of all its epochs. Returns the history DataFrame."""
    df = write_history(history, out / "history.csv")
    if len(df):
        plot_history(df, out / "curves.png")
    return df


def clean_up(progress, out, records=None):
    """After an interruption: the epoch records (lenet/recorder.py) cut to the epochs in last.npz, and history.csv and
    curves.png of those epochs, as far as they can be written.

    Returns what was not written, with why (a full disk; a second Ctrl-C, which skips the rest). The run's
    checkpoints are already safe: this only brings the records, the table and the picture up to them.
    """
    rows = progress.history[: progress.saved_epoch]
    writers = [("epochs/records.json", lambda path: records.keep_until(progress.saved_epoch))] if records else []
    if rows:
        writers += [
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
