"""Every option of a training run, declared once: `TrainConfig` below (nanoGPT's config block).

Each field is one option: its name (train.py's flag is the name with dashes, batch_size: --batch-size), its type
(the annotation), its default, the values it allows beyond its type, and its help. Three things are derived from
that one declaration, so they cannot disagree:

- train.py's argparse arguments (lenet/commands/train.py builds them from `OPTIONS`);
- `TrainConfig.check()`, which `fit` runs before it touches the run folder;
- the schema that the options stored in a last.npz must pass before --resume trusts them (lenet/resume.py).
"""

import argparse
import dataclasses
import math

from .backend import BACKENDS, cpu_cores
from .checkpoint import CHECKPOINT_FORMATS
from .cli import DATA_DIR_HELP, existing_folder
from .data import DATASETS
from .errors import LenetError, short
from .model import ACTIVATIONS, DTYPES, POOLS
from .optim import OPTIMIZERS


@dataclasses.dataclass(frozen=True)
class Allowed:
    """The values an option allows beyond its type: `wanted` says which in words, `test(value)` tells them apart.

    wanted may be a function: a limit that depends on the machine is said as it is when the check runs.
    """

    wanted: object
    test: object
    choices: tuple = None  # a list to choose from, which argparse shows in --help and checks itself

    def describe(self):
        return self.wanted() if callable(self.wanted) else self.wanted

    def allows(self, value):
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):  # a value of a type the test was not written for
            return False


def one_of(choices):
    choices = tuple(choices)
    return Allowed(f"one of {', '.join(choices)}", lambda value: value in choices, choices)


def at_least(low):
    return Allowed(f"a whole number >= {low}", lambda value: value >= low)


POSITIVE = Allowed("a positive number", lambda value: math.isfinite(value) and value > 0)
NOT_NEGATIVE = Allowed("a number >= 0", lambda value: math.isfinite(value) and value >= 0)
FRACTION = Allowed("a number between 0 and 1", lambda value: 0 < value < 1)  # NaN is neither
PATH = Allowed("a path", lambda value: "\x00" not in value)
# Each worker is a process of its own (or a thread with a model replica): a huge number would fill memory before
# the first step, and more than a few per core only wait for each other.
WORKERS = Allowed(
    lambda: f"a whole number from 1 to {4 * cpu_cores()} (4 per core; this process may use {cpu_cores()} cores)",
    lambda value: 1 <= value <= 4 * cpu_cores(),
)


def option(default, help, allowed=None, **how):
    """A TrainConfig field: its default, its help ("{default}" in it is replaced by the default), the values it
    allows beyond its type, and `how` it is given and kept (the fields of Option below)."""
    return dataclasses.field(default=default, metadata={"help": help, "allowed": allowed, **how})


def _augment_before_modes(value):
    """Runs saved before --augment had modes stored true or false: the shifts, or none."""
    if isinstance(value, bool):
        return "shift" if value else "none"
    return value


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run (train.py's flags). Stored in last.npz so --resume continues it."""

    backend: str = option("numpy", "array backend (default {default})", one_of(BACKENDS))
    dataset: str = option("fashion-mnist", "(default {default})", one_of(DATASETS))
    data_dir: str = option(None, DATA_DIR_HELP, PATH, parse=existing_folder, on_resume="given")
    epochs: int = option(
        30,
        "number of epochs (default {default}; --resume: the stored run's)",
        at_least(1),
        command_fills=True,
        on_resume="given",
    )
    batch_size: int = option(32, "(default {default})", at_least(1))
    optimizer: str = option("adam", "(default {default})", one_of(OPTIMIZERS))
    lr: float = option(1e-3, "learning rate (default {default})", POSITIVE)
    momentum: float = option(0.9, "SGD momentum (default {default})", NOT_NEGATIVE)
    weight_decay: float = option(0.0, "L2 (default {default})", NOT_NEGATIVE)
    schedule: str = option("constant", "learning-rate schedule (default {default})", one_of(("constant", "cosine")))
    activation: str = option("sigmoid", "(default {default})", one_of(ACTIVATIONS))
    pool: str = option("avg", "(default {default})", one_of(POOLS))
    augment: str = option(
        "none",
        "new random copies of the training images each epoch: shift = 1-pixel shifts, and mirror images for "
        "fashion-mnist (not for digits); affine = those and a small rotation, scale and shear; --augment alone is "
        "shift (default {default})",
        one_of(("none", "shift", "affine")),
        const="shift",
        upgrade=_augment_before_modes,
    )
    dtype: str = option("float32", "(default {default})", one_of(DTYPES))
    seed: int = option(0, "seeds the weights, the split and the shuffling (default {default})", at_least(0))
    val_fraction: float = option(
        0.2, "the share of the training images held out for validation (default {default})", FRACTION
    )
    limit: int = option(
        None,
        "use only the first N images of the training set, split as --val-fraction says (N=1000: 800 to train on, "
        "200 to validate) (default: all 60000)",
        at_least(2),
        metavar="N",
    )
    out: str = option(
        "runs/fashion-mnist",
        "folder for checkpoints, history and plots (default runs/<dataset>)",
        PATH,
        command_fills=True,
        on_resume="command",
    )
    textbook: bool = option(
        False,
        "train the textbook layers of lenet/layers.py as they are written (one thread, no fused stage, no CUDA "
        "graphs): slower, the same numbers to float32 rounding",
    )
    format: str = option(
        "npz",
        "file format of the best weights: best_model.npz, or best_model.safetensors for Hugging Face's tools (needs "
        "the safetensors package: pip install 'lenet[safetensors]'); last.npz stays .npz (default {default})",
        one_of(CHECKPOINT_FORMATS),
    )
    epoch_records: bool = option(
        True,
        "keep no epoch records (by default the run keeps in <out>/epochs/ the weights after every epoch, about 250 KB "
        "each, and per-layer figures of each epoch, which visualize.py and the demo page show)",
        flag="--no-epoch-records",
        if_missing=False,  # a run from before the records kept none: --resume must not start them halfway
    )
    threads: int = option(
        None,
        "CPU workers for the numpy backend: this process and N-1 worker processes on Linux, threads elsewhere "
        "(default: one per core)",
        WORKERS,
        on_resume="command",
    )
    resume: bool = option(
        False,
        "continue the run saved in --out (its options are kept)",
        group="start",
        stored=False,
        on_resume="command",
    )
    overwrite: bool = option(
        False,
        "start over in an --out that holds a run, replacing its files",
        group="start",
        stored=False,
        on_resume="command",
    )
    progress: bool = option(
        True,
        "no progress bar (it is shown only when stderr is a terminal, and never with TQDM_DISABLE=1)",
        flag="--no-progress",
        stored=False,
        on_resume="command",
    )
    cuda_graphs: bool = option(
        True,
        "cupy: run every training step eagerly, not as a CUDA graph",
        flag="--no-cuda-graphs",
        on_resume="command",
    )

    def __post_init__(self):
        for name, opt in OPTIONS.items():
            if opt.upgrade is not None:
                setattr(self, name, opt.upgrade(getattr(self, name)))

    def check(self):
        """Raise LenetError, one line, for the first option whose value TrainConfig does not allow."""
        for name, opt in OPTIONS.items():
            value = getattr(self, name)
            if not opt.allows(value):
                raise LenetError(f"{opt.flag} must be {opt.wanted()}, not {short(value)}")
        if self.resume and self.overwrite:
            raise LenetError("--resume continues the run in --out and --overwrite replaces it: give one of them")

    def stored(self):
        """What last.npz and config.json keep: every option but how this command was asked to run."""
        return {name: getattr(self, name) for name, opt in OPTIONS.items() if opt.stored}


@dataclasses.dataclass(frozen=True)
class Option:
    """One TrainConfig field as the command line, the checks and the resume schema see it."""

    name: str
    type: type
    default: object
    help: str
    allowed: Allowed = None  # None: any value of the type
    flag: str = None  # the command-line flag; None: --name-with-dashes (a bool that is on by default: --no-...)
    metavar: str = None
    const: object = None  # the value of the flag given alone (--augment: shift)
    parse: object = None  # turns the flag's text into the value (argparse's type), instead of the type itself
    command_fills: bool = False  # None on the command line: the command fills it in (out: runs/<dataset>)
    group: str = None  # flags of one group exclude each other
    stored: bool = True  # kept in last.npz and config.json (what to train, not how this command runs)
    # On --resume: "kept" from the stored run; "command": the resuming command's (how to run, not what to train);
    # "given": the resuming command's if it gives one, else the stored run's.
    on_resume: str = "kept"
    upgrade: object = None  # turns a value that earlier versions stored into today's
    # The value of a run stored before the option existed (ADDED_LATER), where it is not the default.
    if_missing: object = "the default"

    def __post_init__(self):
        if self.flag is None:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))

    def value_if_missing(self):
        """What --resume takes for this option when a last.npz from before it (ADDED_LATER) lacks it."""
        return self.default if self.if_missing == "the default" else self.if_missing

    def fits_type(self, value):
        """Whether `value` is of the option's type: int is not bool, a float may be written 1; None where the
        default is None."""
        if value is None:
            return self.default is None
        if self.type is bool:
            return isinstance(value, bool)
        if self.type is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if self.type is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return isinstance(value, self.type)

    def allows(self, value):
        return self.fits_type(value) and (value is None or self.allowed is None or self.allowed.allows(value))

    def wanted(self, type_only=False):
        """What a value must be, in words (type_only: of which type)."""
        if self.allowed is not None and not type_only:
            return self.allowed.describe()
        return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[self.type]

    def from_text(self, text):
        """The value of `flag TEXT` (argparse's type): parsed, then checked as check() checks it."""
        if self.parse is not None:
            value = self.parse(text)
        elif self.type in (int, float):
            try:
                value = self.type(text)
            except ValueError:
                kind = "a whole number" if self.type is int else "a number"
                raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        else:
            value = text
        if not self.allows(value):
            raise argparse.ArgumentTypeError(f"must be {self.wanted()}, got {value}")
        return value


OPTIONS = {
    field.name: Option(field.name, field.type, field.default, **field.metadata)
    for field in dataclasses.fields(TrainConfig)
}
# Options that runs of the first version that stored train_config in last.npz (commit de265d3) did not store:
# a last.npz may lack them, and a resumed run then takes their value_if_missing() (the default, unless the option
# says otherwise). Any other missing option is refused. A new option goes here too.
ADDED_LATER = ("threads", "augment", "cuda_graphs", "textbook", "format", "epoch_records")
