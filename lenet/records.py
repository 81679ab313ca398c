"""The epoch records of a training run, and the one reader of them (the page and visualize.py both read them here).

A train.py run keeps, in its run folder's `epochs/` (lenet/recorder.py writes them; docs/training.md is the contract):

- `epoch_0000.npz`, the weights before the first step, and `epoch_NNNN.npz`, the weights after epoch N: ordinary
  lenet checkpoints (lenet/checkpoint.py) whose metadata says the epoch;
- `records.json`: for each epoch 0..E (E the epoch in last.npz) the losses and accuracies, the confusion matrix on the
  validation images, and per learnable layer (c1, c3, f5, f6, f7) figures measured on a fixed probe batch with the
  textbook model's own forward and backward pass: weight_norm, grad_norm, grad_mean_abs (of dL/dW) and saturated (the
  share of the layer's activation outputs in a flat region; null for f7, which has none).

The reader's interface:

    read_records(run_dir)                  -> the records (a dict as records.json holds it, checked), or None
    epoch_weights(run_dir, epoch)          -> {name: NumPy array}, the state dict of that epoch
    epoch_model(run_dir, epoch, **options) -> (LeNet5 with that epoch's weights, the file's metadata)

A run folder from before the records (no epochs/records.json) has none: read_records gives None, not an error.
Everything else is a file from anywhere, read as lenet reads checkpoints: sizes bounded before reading, every field's
type and range checked, files only inside run_dir (a link that leads out is refused), and anything malformed one
LenetError of one line.
"""

import json
from pathlib import Path

from .checkpoint import load_checkpoint, model_from_state
from .checkpoint_checks import is_int, is_number, nested_deeper_than
from .errors import LenetError, one_line, short
from .model import ACTIVATIONS, NUM_CLASSES

RECORDS_FOLDER = "epochs"
RECORDS_FILE = "records.json"
VERSION = 1
LAYERS = ("c1", "c3", "f5", "f6", "f7")  # the learnable layers, in the network's order
FIGURES = ("weight_norm", "grad_norm", "grad_mean_abs", "saturated")
RESULTS = ("train_loss", "train_acc", "val_loss", "val_acc")

# A record is about 1.3 KB of JSON an epoch: these allow tens of thousands of epochs and refuse a file made to
# exhaust memory before it is parsed.
MAX_RECORDS_BYTES = 32 << 20
MAX_EPOCHS = 100_000
MAX_JSON_DEPTH = 6  # records.json goes 5 deep: the confusion matrix's rows in an epoch in the list of epochs
MAX_INT_DIGITS = 12  # the largest whole numbers are counts of images
MAX_NAME_CHARS = 200
MAX_PROBE_IMAGES = 60_000


def records_folder(run_dir):
    return Path(run_dir) / RECORDS_FOLDER


def epoch_file(run_dir, epoch):
    """Where the weights of `epoch` (0: the initialization) are kept: epochs/epoch_NNNN.npz."""
    return records_folder(run_dir) / f"epoch_{epoch:04d}.npz"


def read_records(run_dir):
    """The records of the run in `run_dir`, checked: a dict with version, dataset, class_names, activation, probe
    ({split, count}) and epochs (a list whose i-th entry is epoch i's: epoch, train_loss, train_acc (null for epoch 0),
    val_loss, val_acc, confusion (10 x 10 counts, rows the true class, columns the predicted) and layers ({c1: {...},
    ...} of FIGURES, each a number >= 0 or null)). Keys that lenet does not write are left out.

    None when the run keeps no records (a run from before them, or trained with --no-epoch-records).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LenetError(f"{run_dir}: no such run folder")
    path = records_folder(run_dir) / RECORDS_FILE
    if not path.exists() and not path.is_symlink():
        return None
    text = _read_bounded(_inside(run_dir, path), MAX_RECORDS_BYTES)
    return check_records(_parse_json(text, path), path)


def epoch_weights(run_dir, epoch):
    """The weights kept for `epoch` (0: before the first step) as a state dict {name: NumPy array}, PyTorch's names."""
    return _load_epoch(run_dir, epoch)[0]


def epoch_model(run_dir, epoch, backend="numpy", **options):
    """(a LeNet5 with the weights of `epoch`, the epoch file's metadata); options go to LeNet5 (input_grad)."""
    path = _epoch_path(run_dir, epoch)
    weights, meta = _load_epoch(run_dir, epoch, path)  # its epoch checked
    return model_from_state(weights, meta, path, backend=backend, **options)


def _epoch_path(run_dir, epoch):
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= MAX_EPOCHS):
        raise LenetError(f"epoch must be a whole number from 0 to {MAX_EPOCHS}, not {short(epoch)}")
    path = epoch_file(run_dir, epoch)
    if not path.exists() and not path.is_symlink():
        raise LenetError(f"{Path(run_dir)} keeps no weights for epoch {epoch} (no {path.name} in {RECORDS_FOLDER}/)")
    return _inside(run_dir, path)


def _load_epoch(run_dir, epoch, path=None):
    path = path or _epoch_path(run_dir, epoch)
    weights, meta, _ = load_checkpoint(path)  # bounded and checked as any checkpoint
    if meta.get("epoch") != epoch:
        raise LenetError(f"{path}: its metadata says epoch {short(meta.get('epoch'))}, not {epoch}")
    return weights, meta


def _inside(run_dir, path):
    """`path` with its links followed, if it stays inside run_dir; LenetError if it leads out."""
    real, root = Path(path).resolve(), Path(run_dir).resolve()
    if not real.is_relative_to(root):
        raise LenetError(f"{path} leads outside the run folder {run_dir} (to {real}); refused")
    return real


def _read_bounded(path, limit):
    try:
        if not path.is_file():
            raise LenetError(f"{path}: not a file")
        if path.stat().st_size > limit:  # refused before a byte is read; the read below is bounded too
            raise LenetError(f"{path}: larger than the {limit} bytes epoch records can need")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise LenetError(f"{path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise LenetError(f"{path}: larger than the {limit} bytes epoch records can need")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LenetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _bounded_int(text):
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise LenetError(f"a whole number of {len(text.lstrip('-'))} digits, more than {MAX_INT_DIGITS}")
    return int(text)


def _no_constant(name):
    raise LenetError(f"{name} is not a number JSON allows")


def _parse_json(text, path):
    try:
        data = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except LenetError as e:
        raise LenetError(f"{path}: not valid epoch records ({e})") from None
    except RecursionError:
        raise LenetError(f"{path}: not valid epoch records (nested more than {MAX_JSON_DEPTH} deep)") from None
    except ValueError as e:  # JSONDecodeError, and a float too large for a float
        raise LenetError(f"{path}: not valid JSON ({one_line(e)})") from None
    if nested_deeper_than(data, MAX_JSON_DEPTH):
        raise LenetError(f"{path}: not valid epoch records (nested more than {MAX_JSON_DEPTH} deep)")
    return data


# -- the schema -----------------------------------------------------------------------------------------------


def check_records(data, path="records.json"):
    """The records in `data` (records.json parsed), checked field by field: a new dict of the known fields.

    Raises LenetError naming the first field that is missing or of the wrong type or range.
    """

    def refuse(field, wanted, value):
        raise LenetError(f"{path}: not valid epoch records: {field} must be {wanted}, not {short(value)}")

    def field(tree, key, where):
        if not isinstance(tree, dict):
            refuse(where or "the file", "an object", tree)
        if key not in tree:
            raise LenetError(f"{path}: not valid epoch records: {where + '.' if where else ''}{key} is missing")
        return tree[key]

    version = field(data, "version", "")
    if is_int(version, 0) and version != VERSION:
        raise LenetError(f"{path}: epoch records of version {version}; this lenet reads version {VERSION}")
    if version != VERSION:
        refuse("version", str(VERSION), version)
    dataset = field(data, "dataset", "")
    if not (isinstance(dataset, str) and 0 < len(dataset) <= MAX_NAME_CHARS):
        refuse("dataset", "a data set's name", dataset)
    names = field(data, "class_names", "")
    if not (
        isinstance(names, list)
        and len(names) == NUM_CLASSES
        and all(isinstance(n, str) and len(n) <= MAX_NAME_CHARS for n in names)
    ):
        refuse("class_names", f"a list of {NUM_CLASSES} names", names)
    activation = field(data, "activation", "")
    if activation not in ACTIVATIONS:
        refuse("activation", f"one of {', '.join(ACTIVATIONS)}", activation)
    probe = field(data, "probe", "")
    if field(probe, "split", "probe") != "validation":
        refuse("probe.split", "'validation'", probe["split"])
    if not is_int(field(probe, "count", "probe"), 1, MAX_PROBE_IMAGES):
        refuse("probe.count", f"a whole number from 1 to {MAX_PROBE_IMAGES}", probe["count"])
    epochs = field(data, "epochs", "")
    if not (isinstance(epochs, list) and 1 <= len(epochs) <= MAX_EPOCHS + 1):
        refuse("epochs", f"a list of 1 to {MAX_EPOCHS + 1} epochs", epochs)
    return {
        "version": VERSION,
        "dataset": dataset,
        "class_names": list(names),
        "activation": activation,
        "probe": {"split": "validation", "count": probe["count"]},
        "epochs": [_check_epoch(record, i, field, refuse) for i, record in enumerate(epochs)],
    }


def _check_epoch(record, i, field, refuse):
    where = f"epochs[{i}]"
    if field(record, "epoch", where) != i or not is_int(record["epoch"], 0):
        refuse(f"{where}.epoch", f"{i} (the epochs from 0, in order)", record["epoch"])
    checked = {"epoch": i}
    for key in RESULTS:
        value = field(record, key, where)
        fraction = key.endswith("_acc")
        if i == 0 and key.startswith("train_"):  # no training before the first step
            if value is not None:
                refuse(f"{where}.{key}", "null (epoch 0 has no training)", value)
        elif not is_number(value, 0, 1 if fraction else None):
            refuse(f"{where}.{key}", "a number from 0 to 1" if fraction else "a number >= 0", value)
        checked[key] = value
    confusion = field(record, "confusion", where)
    if not (
        isinstance(confusion, list)
        and len(confusion) == NUM_CLASSES
        and all(isinstance(row, list) and len(row) == NUM_CLASSES for row in confusion)
        and all(is_int(n, 0) for row in confusion for n in row)
    ):
        refuse(f"{where}.confusion", f"{NUM_CLASSES} rows of {NUM_CLASSES} counts", confusion)
    checked["confusion"] = [list(row) for row in confusion]
    layers = field(record, "layers", where)
    checked["layers"] = {}
    for layer in LAYERS:
        figures = field(layers, layer, f"{where}.layers")
        checked["layers"][layer] = {}
        for name in FIGURES:
            value = field(figures, name, f"{where}.layers.{layer}")
            bound = 1 if name == "saturated" else None
            if value is not None and not is_number(value, 0, bound):
                wanted = "a share from 0 to 1" if bound else "a number >= 0"
                refuse(f"{where}.layers.{layer}.{name}", f"{wanted}, or null", value)
            checked["layers"][layer][name] = value
    return checked
