"""--resume: what a last.npz must hold before a run continues from it, and how the run continues.

A last.npz is a file from anywhere, like any checkpoint (lenet/checkpoint_checks.py), and --resume trusts more of
it: the stored options, the history, the shuffling RNG's state and the optimizer's buffers. `check_resume_state`
checks all of that against a schema; the stored options against the one declaration of the options
(lenet/options.py), so a stored value passes exactly when train.py would take it as a flag. An option that a
last.npz lacks is refused, unless it was added after the first version that stored the options (ADDED_LATER):
a missing --limit must not silently become "all 60,000 images".
"""

import numpy as np

from .checkpoint import load_checkpoint
from .checkpoint_checks import OPTIMIZER_PREFIX, is_fraction, is_int, is_number, parameter_shapes
from .errors import LenetError, one_line, short
from .optim import OPTIMIZERS
from .options import ADDED_LATER, OPTIONS, TrainConfig
from .runfiles import Progress

RESUME_FIELDS = ("train_config", "epoch", "history", "best_val_acc", "rng_state")
# Options a resumed run takes from the resuming command: how to run it, not what to train.
HOW_TO_RUN = tuple(name for name, option in OPTIONS.items() if option.on_resume != "kept")


def check_resumable(last_path):
    if not last_path.exists():
        raise LenetError(f"nothing to resume in {last_path.parent}: it has no last.npz")


def resume_from(config, last_path, given=None):
    """The stored config of the run in last_path, its saved state, and the options the stored run keeps.

    The returned config is the stored one with how to run it (HOW_TO_RUN) taken from `config`; epochs may be
    raised. The third value lists (field, stored value, requested value) for each field in `given` (the
    fields the user set) that the stored run keeps at another value.
    """
    check_resumable(last_path)
    state, meta, optimizer_state = load_checkpoint(last_path)
    check_resume_state(meta, optimizer_state, last_path)  # every field used below: types, ranges, shapes
    older = {name: OPTIONS[name].value_if_missing() for name in ADDED_LATER}  # a run from before an option
    stored = TrainConfig(**{**older, **meta["train_config"]})
    ignored = [
        (name, getattr(stored, name), getattr(config, name))
        for name in sorted(given or ())
        if name not in HOW_TO_RUN and getattr(stored, name) != getattr(config, name)
    ]
    # A data_dir read from last.npz is a path from a file: only looked in. Downloads go to a folder the user named.
    download = config.data_dir is not None or stored.data_dir is None
    for name in HOW_TO_RUN:
        # "command": how to run, the resuming command's (a GPU that cannot record graphs can resume); "given":
        # the resuming command's where it gives one (epochs may be raised), else the stored run's.
        if OPTIONS[name].on_resume == "command" or getattr(config, name) is not None:
            setattr(stored, name, getattr(config, name))
    if meta["epoch"] >= stored.epochs:
        raise LenetError(f"{last_path} already finished epoch {meta['epoch']} of {stored.epochs}; raise --epochs")
    return stored, {"weights": state, "meta": meta, "optimizer": optimizer_state, "download": download}, ignored


def restore(state, model, optimizer, shuffle_rng):
    """Put a run saved in last.npz back: weights, optimizer state, shuffling RNG."""
    model.load_state_dict(state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    shuffle_rng.bit_generator.state = state["meta"]["rng_state"]


def saved_progress(meta):
    """The Progress of a run saved in last.npz (its metadata)."""
    return Progress([list(row) for row in meta["history"]], meta["best_val_acc"], meta["epoch"])


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


# ---------------------------------------------------------------------------------------------------------
# The schema


def check_resume_state(meta, optimizer_state, path):
    """Check everything that --resume takes from last.npz (resume_from and fit) against a schema.

    meta and optimizer_state as load_checkpoint returns them (load_checkpoint has checked the fields it
    knows: epoch, val_acc, architecture, ...). Raises LenetError naming the first field that is missing,
    of the wrong type, out of range or of the wrong shape; returns None when all is well.
    """

    def refuse(field, wanted, value):
        raise LenetError(f"{path} is not a resumable checkpoint: {field} must be {wanted}, not {short(value)}")

    missing = [k for k in RESUME_FIELDS if k not in meta]
    missing += [] if "steps" in optimizer_state else ["optimizer state"]
    if missing:
        raise LenetError(f"{path} is not a resumable checkpoint (missing: {', '.join(missing)})")
    _check_stored_options(meta["train_config"], path, refuse)

    epoch = meta["epoch"]
    if not is_int(epoch, 1):
        refuse("epoch", "a whole number >= 1", epoch)
    history = meta["history"]
    if not isinstance(history, list) or not 1 <= len(history) <= epoch:
        refuse("history", f"a list of 1 to {epoch} rows (one per epoch)", history)
    previous = 0
    for i, row in enumerate(history):
        if not (isinstance(row, list) and len(row) == 6 and all(is_number(v) for v in row)):
            refuse(f"history[{i}]", "6 finite numbers (epoch, train_loss, train_acc, val_loss, val_acc, seconds)", row)
        if not is_int(row[0], previous + 1) or not (is_fraction(row[2]) and is_fraction(row[4])):
            refuse(f"history[{i}]", f"a row of an epoch after {previous}, with accuracies from 0 to 1", row)
        previous = row[0]
    if previous != epoch:
        refuse("history", f"rows up to epoch {epoch}", f"rows up to epoch {previous}")
    if not is_fraction(meta["best_val_acc"]):
        refuse("best_val_acc", "a number from 0 to 1", meta["best_val_acc"])
    _check_pcg64_state(meta["rng_state"], refuse)
    _check_optimizer_state(optimizer_state, meta["train_config"].get("optimizer", "adam"), refuse)


def _check_stored_options(stored, path, refuse):
    """The options in last.npz's train_config, each as TrainConfig.check() takes it (lenet/options.py).

    An option the resuming command replaces (how to run: --out, --threads, ...) is checked for its type only: its
    stored value is never used, and a run saved on a machine with more cores may go on here.
    """
    if not isinstance(stored, dict):
        refuse("train_config", "an object", stored)
    for name, value in stored.items():
        option = OPTIONS.get(name)
        if option is None:
            raise LenetError(f"{path} is not a resumable checkpoint: train_config.{short(name)} is not an option")
        if option.upgrade is not None:
            value = option.upgrade(value)
        fits = option.fits_type(value) if option.on_resume == "command" else option.allows(value)
        if not fits:
            or_null = " or null" if option.default is None else ""
            refuse(f"train_config.{name}", option.wanted(type_only=option.on_resume == "command") + or_null, value)
    missing = [name for name, option in OPTIONS.items() if option.stored and name not in stored]
    missing = [name for name in missing if name not in ADDED_LATER]
    if missing:
        raise LenetError(
            f"{path} is not a resumable checkpoint: its train_config has no {', '.join(missing)} (only options "
            f"added in later versions may be missing: {', '.join(ADDED_LATER)})"
        )


def _check_pcg64_state(state, refuse):
    """The state dict of NumPy's PCG64, as bit_generator.state gives it."""
    below = lambda bits: lambda v: is_int(v, 0, 2**bits - 1)  # noqa: E731
    schema = {
        "bit_generator": ("'PCG64'", lambda v: v == "PCG64"),
        "state": ("an object with state and inc", lambda v: isinstance(v, dict) and set(v) == {"state", "inc"}),
        "has_uint32": ("0 or 1", lambda v: is_int(v, 0, 1)),
        "uinteger": ("a whole number below 2**32", below(32)),
    }
    if not isinstance(state, dict) or set(state) != set(schema):
        refuse("rng_state", f"an object with {', '.join(schema)}", state)
    for key, (wanted, fits) in schema.items():
        if not fits(state[key]):
            refuse(f"rng_state.{key}", wanted, state[key])
    for key in ("state", "inc"):
        if not below(128)(state["state"][key]):
            refuse(f"rng_state.state.{key}", "a whole number below 2**128", state["state"][key])
    if state["state"]["inc"] % 2 == 0:  # PCG64's increment is odd by construction
        refuse("rng_state.state.inc", "an odd number", state["state"]["inc"])
    try:
        np.random.PCG64().state = state
    except (ValueError, TypeError, OverflowError) as e:
        refuse("rng_state", f"a state NumPy's PCG64 takes ({one_line(e)})", state)


def _check_optimizer_state(state, optimizer, refuse):
    """steps, lr and the state arrays of `optimizer`, one per parameter and of its shape, or none of them."""
    steps = state["steps"]
    if not (np.ndim(steps) == 0 and np.asarray(steps).dtype.kind in "iu" and int(steps) >= 0):
        refuse(f"{OPTIMIZER_PREFIX}steps", "a whole number >= 0", steps)
    lr = state.get("lr")
    if lr is None or not (np.ndim(lr) == 0 and np.asarray(lr).dtype.kind in "fiu" and is_number(float(lr)) and lr > 0):
        refuse(f"{OPTIMIZER_PREFIX}lr", "a positive number", lr)
    names = OPTIMIZERS[optimizer].state_names if optimizer in OPTIMIZERS else ()
    shapes = [shape for _, shape in parameter_shapes()]
    expected = {f"{name}.{i}": shape for name in names for i, shape in enumerate(shapes)}
    for key, value in state.items():
        if key in ("steps", "lr"):
            continue
        if key not in expected:
            refuse(f"{OPTIMIZER_PREFIX}{key}", f"absent: it is no part of {optimizer}'s state", "present")
        if not (isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.shape == expected[key]):
            shown = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else value
            refuse(f"{OPTIMIZER_PREFIX}{key}", f"a float array of shape {expected[key]}", shown)
    for name in names:
        present = [i for i in range(len(shapes)) if f"{name}.{i}" in state]
        if present and len(present) != len(shapes):
            absent = sorted(set(range(len(shapes))) - set(present))
            refuse(
                f"{OPTIMIZER_PREFIX}{name}.*", f"one array per parameter (0 to {len(shapes) - 1})", f"missing {absent}"
            )
