"""Keeping a run's epoch records as it trains: what a learner needs to replay it (read back by lenet/records.py).

After each epoch, before last.npz, `EpochRecorder.add` writes the epoch's weights (epochs/epoch_NNNN.npz) and then
records.json with the epoch's numbers added, each file atomically: a file is listed only once it is whole, and the
records are never behind last.npz. Epoch 0 is the initialization, recorded before the first step.

The per-layer figures are measured by `probe_figures` with the textbook model's own forward and backward pass on a
fixed probe batch (the first PROBE_COUNT validation images), on a copy of the weights: the training model, its
gradients and its layers' caches are never touched, so a run trains the same numbers with records or without.

The records hold exactly the epochs 0..E of last.npz: a fresh run starts them anew, --resume drops what a run killed
between the records and last.npz wrote beyond E (`keep_until`), and so does the clean-up after Ctrl-C or SIGTERM.
"""

import contextlib
import json
import math
import os
import re

import numpy as np

from .backend import to_numpy
from .checkpoint import save_checkpoint
from .errors import LenetError
from .files import atomic_write
from .layers import SoftmaxCrossEntropy
from .model import LeNet5
from .records import LAYERS, RECORDS_FILE, VERSION, epoch_file, read_records, records_folder

# Enough images for steady figures, few enough that measuring them with the textbook layers on one thread stays a
# small part of an epoch.
PROBE_COUNT = 128
# Where each learnable layer's activation is in LeNet5.layers (f7 has none), and when its output is in a flat region,
# where the gradient through it nearly vanishes (sigmoid, tanh) or is exactly zero (a dead ReLU).
ACTIVATION_AFTER = {"c1": "act1", "c3": "act3", "f5": "act5", "f6": "act6", "f7": None}
FLAT = {
    "sigmoid": lambda xp, y: (y < 0.05) | (y > 0.95),
    "tanh": lambda xp, y: xp.abs(y) > 0.9,
    "relu": lambda xp, y: y == 0,
}
_OURS = re.compile(r"(epoch_(?P<epoch>\d{4,})\.npz|records\.json)")  # what the records folder holds of ours
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")  # files.atomic_write's temporaries


def probe_figures(model, x, y):
    """{layer: {weight_norm, grad_norm, grad_mean_abs, saturated}} of `model` on images x (N, 1, 28, 28), labels y.

    The model's own forward pass, layer by layer as model.forward runs it (keeping each activation's output), the mean
    SoftmaxCrossEntropy loss, model.backward, and each weight's .grad (dL/dW; biases left out). Norms are L2 norms,
    in float64; saturated is the share of the activation's outputs (all units of all N images) in a flat region
    (FLAT), None for f7. A figure that is not a finite number is None. Fills the model's gradients and caches.
    """
    model.check_input(x)
    xp, outputs = model.xp, {}
    with np.errstate(all="ignore"):  # weights about to diverge may overflow here; such figures become None
        for name, layer in model.layers:
            x = layer.forward(x)
            outputs[name] = x
        loss_fn = SoftmaxCrossEntropy()
        loss_fn.forward(x, y)
        model.backward(loss_fn.backward())
        params = dict(model.named_parameters())
        values = []  # 4 per layer, read from the device at once
        for layer in LAYERS:
            w, g = params[f"{layer}.weight"].data.astype(np.float64), params[f"{layer}.weight"].grad.astype(np.float64)
            act = ACTIVATION_AFTER[layer]
            flat = FLAT[model.activation](xp, outputs[act]).mean(dtype=np.float64) if act else xp.asarray(math.nan)
            values += [xp.sqrt((w * w).sum()), xp.sqrt((g * g).sum()), xp.abs(g).mean(), flat]
        values = to_numpy(xp.stack(values)).tolist()
    figures = {}
    for i, layer in enumerate(LAYERS):
        four = values[4 * i : 4 * i + 4]
        figures[layer] = {
            name: value if math.isfinite(value) else None
            for name, value in zip(("weight_norm", "grad_norm", "grad_mean_abs", "saturated"), four, strict=True)
        }
    return figures


class EpochRecorder:
    """The records of one run: its probe batch, a textbook model to measure on, and records.json's content."""

    def __init__(self, out, config, data, meta_common, epochs=()):
        self.out, self.meta_common = out, meta_common
        count = min(PROBE_COUNT, len(data.y_val))
        self.probe_x, self.probe_y = data.x_val[:count], data.y_val[:count]
        self.probe_model = LeNet5(config.activation, config.pool, config.backend, config.dtype)
        self.records = {
            "version": VERSION,
            "dataset": config.dataset,
            "class_names": list(data.class_names),
            "activation": config.activation,
            "probe": {"split": "validation", "count": count},
            "epochs": list(epochs),
        }

    @classmethod
    def start(cls, out, config, data, meta_common, model, saved_epoch, evaluate_initial, warn):
        """The recorder of a run about to train past `saved_epoch` (0: a fresh run), or None (none kept).

        A fresh run removes any records left in `out` (a run killed before its first epoch) and records epoch 0:
        `model`'s initial weights, with evaluate_initial() -> (val_loss, val_acc, confusion). A resumed run goes on
        with its records, cut to epochs 0..saved_epoch; if they do not reach saved_epoch (removed, or damaged), one
        line through `warn` says so and the run goes on without records.
        """
        if saved_epoch == 0:
            remove_records(out)
            if not config.epoch_records:
                return None
            recorder = cls(out, config, data, meta_common)
            val_loss, val_acc, confusion = evaluate_initial()
            recorder.add([0, None, None, val_loss, val_acc], confusion, model)
            return recorder
        if not config.epoch_records:
            return None
        kept, why = _kept_records(out, saved_epoch)
        if kept is None:
            warn(f"the epoch records do not reach epoch {saved_epoch} ({why}); this run goes on without them")
            return None
        recorder = cls(out, config, data, meta_common, kept["epochs"])
        recorder.keep_until(saved_epoch)
        return recorder

    def add(self, row, confusion, model):
        """Record an epoch: row [epoch, train_loss, train_acc, val_loss, val_acc] (the history's), the validation
        confusion matrix (10, 10), and `model`'s weights after it. Its weights file first, then records.json."""
        epoch, train_loss, train_acc, val_loss, val_acc = row[:5]
        self.probe_model.load_state_dict(model.state_dict())  # a copy: the training model is never touched
        meta = {**self.meta_common, "epoch": epoch, "val_acc": val_acc if epoch > 0 else None}
        save_checkpoint(epoch_file(self.out, epoch), self.probe_model, meta)
        record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss}
        record["val_acc"] = val_acc
        record["confusion"] = np.asarray(confusion, dtype=np.int64).tolist()
        record["layers"] = probe_figures(self.probe_model, self.probe_x, self.probe_y)
        self.records["epochs"] = [r for r in self.records["epochs"] if r["epoch"] < epoch] + [record]
        self._write()

    def keep_until(self, epoch):
        """Cut the records to epochs 0..epoch: records.json rewritten, later epochs' weights removed."""
        self.records["epochs"] = [r for r in self.records["epochs"] if r["epoch"] <= epoch]
        if self.records["epochs"]:
            self._write()
        remove_records(self.out, after=epoch)

    def _write(self):
        """records.json, atomically: the run's facts, then one line per epoch (a file a person can read too)."""
        head = json.dumps({k: v for k, v in self.records.items() if k != "epochs"}, allow_nan=False)
        lines = ",\n".join(json.dumps(r, allow_nan=False) for r in self.records["epochs"])
        with atomic_write(records_folder(self.out) / RECORDS_FILE, "w") as f:
            f.write(f'{head[:-1]}, "epochs": [\n{lines}\n]}}\n')


def _kept_records(out, saved_epoch):
    """(the records in `out`, None) if they reach saved_epoch with the weights of every epoch, else (None, why not)."""
    try:
        kept = read_records(out)
    except LenetError as e:
        return None, str(e)
    if kept is None:
        return None, f"{records_folder(out)} holds none"
    if len(kept["epochs"]) <= saved_epoch:
        return None, f"{records_folder(out)} holds epochs 0-{len(kept['epochs']) - 1} only"
    missing = [e for e in range(saved_epoch + 1) if not epoch_file(out, e).is_file()]
    if missing:
        return None, f"{records_folder(out)} has no weights of epoch {missing[0]}"
    return kept, None


def remove_records(out, after=-1):
    """Remove the records in `out` of the epochs after `after` (-1: all, and records.json and the folder if it is left
    empty), with atomic_write's temporaries that killed runs left. Files the records do not write stay."""
    folder = records_folder(out)
    if not folder.is_dir():
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            ours, temporary = _OURS.fullmatch(entry.name), _TEMPORARY.fullmatch(entry.name)
            if temporary and _OURS.fullmatch(temporary["name"]):
                doomed = True
            elif ours and ours["epoch"] is not None:
                doomed = int(ours["epoch"]) > after
            else:
                doomed = ours is not None and after < 0
            if doomed and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
    if after < 0:
        with contextlib.suppress(OSError):  # only an empty folder goes
            folder.rmdir()
