"""--resume (lenet/resume.py): the schema a last.npz must pass, options that a last.npz lacks, and what a resumed run
takes from the resuming command. Whole resumed runs, bit for bit against uninterrupted ones, are in test_train.py."""

import json

import numpy as np
import pytest
from helpers import needs_data

from lenet.checkpoint import load_checkpoint, save_checkpoint
from lenet.errors import LenetError
from lenet.layers import SoftmaxCrossEntropy
from lenet.model import LeNet5
from lenet.options import ADDED_LATER, OPTIONS, TrainConfig
from lenet.resume import check_resume_state, resume_from
from lenet.trainer import fit, make_optimizer

# What the first version that stored train_config in last.npz (commit de265d3) stored; of these, progress is no
# longer stored. Every other option that lenet stores is one that a last.npz may lack (ADDED_LATER).
FIRST_VERSION = {
    "dataset", "data_dir", "backend", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
    "schedule", "activation", "pool", "dtype", "seed", "val_fraction", "limit", "out", "progress",
}  # fmt: skip
STORED = [name for name, option in OPTIONS.items() if option.stored]


def resume_state(optimizer="adam", **options):
    """(meta, optimizer_state) as fit saves them in last.npz after two epochs."""
    config = TrainConfig(optimizer=optimizer, **options)
    model = LeNet5(seed=7)
    opt = make_optimizer(config, model)
    x, y = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32), np.arange(4)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    rng = np.random.default_rng([0, 1])
    rng.random(3)
    meta = {
        "epoch": 2,
        "val_acc": 0.5,
        "best_val_acc": 0.5,
        "history": [[1, 2.1, 0.3, 2.0, 0.4, 1.5], [2, 1.9, 0.45, 1.8, 0.5, 1.4]],
        "rng_state": json.loads(json.dumps(rng.bit_generator.state)),
        "train_config": config.stored(),
    }
    return meta, opt.state_dict()


def edited(change, optimizer="adam"):
    meta, state = resume_state(optimizer)
    change(meta, state)
    return meta, state


def saved_run(out, change=None, **options):
    """A last.npz in `out` as fit leaves it after epoch 2 of 3, `change(meta)` made to its metadata."""
    meta, state = resume_state(epochs=3, out=str(out), **options)
    if change is not None:
        change(meta)
    save_checkpoint(out / "last.npz", LeNet5(seed=7), meta, state)
    return out / "last.npz"


# ---------------------------------------------------------------------------------------------------------
# The schema, field by field


RESUME_EDITS = {
    "epoch a dict": (lambda m, s: m.update(epoch={"n": 2}), "epoch must be a whole number >= 1"),
    "epoch 1.5": (lambda m, s: m.update(epoch=1.5), "epoch must be a whole number >= 1, not 1.5"),
    "history not a list": (lambda m, s: m.update(history="1,2"), "history must be a list of 1 to 2 rows"),
    "history longer than the epochs": (lambda m, s: m["history"].append(m["history"][-1]), "history must be a list"),
    "history row of 5": (lambda m, s: m["history"][1].pop(), "history[1] must be 6 finite numbers"),
    "history row of strings": (lambda m, s: m["history"].__setitem__(0, list("abcdef")), "history[0] must be 6"),
    "history with NaN": (lambda m, s: m["history"][0].__setitem__(3, float("nan")), "history[0] must be 6 finite"),
    "history out of order": (lambda m, s: m["history"].reverse(), "history[1] must be a row of an epoch after 2"),
    "history epoch 1.0": (lambda m, s: m["history"][0].__setitem__(0, 1.0), "history[0] must be a row of an epoch"),
    "history behind the epoch": (lambda m, s: m.update(epoch=3), "history must be rows up to epoch 3"),
    "best_val_acc a string": (lambda m, s: m.update(best_val_acc="0.5"), "best_val_acc must be a number from 0 to 1"),
    "rng_state of MT19937": (lambda m, s: m["rng_state"].update(bit_generator="MT19937"), "rng_state.bit_generator"),
    "rng_state a list": (lambda m, s: m.update(rng_state=[1, 2]), "rng_state must be an object with bit_generator"),
    "rng_state.state.state negative": (lambda m, s: m["rng_state"]["state"].update(state=-1), "rng_state.state.state"),
    "rng_state.state.inc even": (lambda m, s: m["rng_state"]["state"].update(inc=2), "state.inc must be an odd"),
    "rng_state.has_uint32 2": (lambda m, s: m["rng_state"].update(has_uint32=2), "rng_state.has_uint32 must be 0 or 1"),
    "train_config a list": (lambda m, s: m.update(train_config=[]), "train_config must be an object"),
    "train_config unknown option": (lambda m, s: m["train_config"].update(depth=3), "train_config.'depth' is not an"),
    "train_config.lr a string": (lambda m, s: m["train_config"].update(lr="0.1"), "train_config.lr must be a positive"),
    "train_config.batch_size 2.5": (lambda m, s: m["train_config"].update(batch_size=2.5), "train_config.batch_size"),
    "train_config.augment 1": (lambda m, s: m["train_config"].update(augment=1), "train_config.augment must be one of"),
    "train_config.augment rotate": (
        lambda m, s: m["train_config"].update(augment="rotate"),
        "train_config.augment must be one of none, shift, affine",
    ),
    "train_config.epochs null": (lambda m, s: m["train_config"].update(epochs=None), "train_config.epochs must be a"),
    "train_config.optimizer rmsprop": (lambda m, s: m["train_config"].update(optimizer="rmsprop"),
                                       "train_config.optimizer must be one of sgd, adam"),
    "train_config.val_fraction 1": (lambda m, s: m["train_config"].update(val_fraction=1), "train_config.val_fraction"),
    "train_config.limit 1": (lambda m, s: m["train_config"].update(limit=1), "train_config.limit must be a whole"),
    "train_config.data_dir a number": (lambda m, s: m["train_config"].update(data_dir=3), "train_config.data_dir must"),
    "threads a string": (lambda m, s: m["train_config"].update(threads="8"),
                         "train_config.threads must be a whole number or null"),
    "out a number": (lambda m, s: m["train_config"].update(out=3), "train_config.out must be a string, not 3"),
    "no train_config.limit": (lambda m, s: m["train_config"].pop("limit"), "its train_config has no limit (only"),
    "optimizer array of the wrong shape": (lambda m, s: s.update({"m.3": np.zeros(5, np.float32)}),
                                           "optimizer/m.3 must be a float array of shape (16,)"),
    "optimizer array of another optimizer": (lambda m, s: s.update({"velocity.0": np.zeros((6, 1, 5, 5))}),
                                             "optimizer/velocity.0 must be absent"),
    "optimizer arrays half there": (lambda m, s: s.pop("v.9"), "optimizer/v.* must be one array per parameter"),
    "negative step count": (lambda m, s: s.update(steps=np.array(-1)), "optimizer/steps must be a whole number >= 0"),
    "step count a float": (lambda m, s: s.update(steps=np.array(1.5)), "optimizer/steps must be a whole number"),
    "lr zero": (lambda m, s: s.update(lr=np.array(0.0)), "optimizer/lr must be a positive number"),
    "lr infinite": (lambda m, s: s.update(lr=np.array(np.inf)), "optimizer/lr must be a positive number"),
    "no rng_state": (lambda m, s: m.pop("rng_state"), "(missing: rng_state)"),
    "no step count": (lambda m, s: s.pop("steps"), "(missing: optimizer state)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RESUME_EDITS))
def test_resume_state_is_checked_field_by_field(case):
    change, expected = RESUME_EDITS[case]
    meta, state = edited(change)
    with pytest.raises(LenetError) as info:
        check_resume_state(meta, state, "runs/x/last.npz")
    message = str(info.value)
    assert message.startswith("runs/x/last.npz is not a resumable checkpoint"), message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_resume_state_fit_saves_passes_through_a_checkpoint(tmp_path, optimizer):
    meta, state = resume_state(optimizer)
    path = tmp_path / "last.npz"
    save_checkpoint(path, LeNet5(seed=7), meta, state)
    _, loaded_meta, loaded_state = load_checkpoint(path)
    assert check_resume_state(loaded_meta, loaded_state, path) is None
    assert set(loaded_state) == set(state)
    # The config it holds is one that TrainConfig takes and passes.
    TrainConfig(**loaded_meta["train_config"]).check()


@needs_data
def test_the_last_checkpoint_of_a_real_run_passes_the_schema(tmp_path):
    config = TrainConfig(epochs=2, limit=64, batch_size=16, threads=1, progress=False, out=str(tmp_path))
    fit(config, log=lambda *args: None)
    _, meta, state = load_checkpoint(tmp_path / "last.npz")
    assert check_resume_state(meta, state, tmp_path / "last.npz") is None
    assert meta["epoch"] == 2 and len(meta["history"]) == 2 and int(state["steps"]) == 2 * 4


# ---------------------------------------------------------------------------------------------------------
# Options a last.npz lacks


def test_only_the_options_added_after_the_first_version_may_be_missing():
    """A new option that lenet stores must go into ADDED_LATER: runs saved before it lack it."""
    assert set(STORED) == (FIRST_VERSION - {"progress"}) | set(ADDED_LATER)
    assert not FIRST_VERSION & set(ADDED_LATER)


@pytest.mark.parametrize("name", STORED)
def test_a_missing_option_is_refused_unless_it_was_added_later(tmp_path, name):
    """A --limit 2000 run whose last.npz lost its limit must not go on over all 60,000 images."""
    last = saved_run(tmp_path, lambda meta: meta["train_config"].pop(name), limit=2000)
    asked = TrainConfig(epochs=None, out=str(tmp_path), resume=True)
    if name in ADDED_LATER:
        stored, _, _ = resume_from(asked, last)
        command = OPTIONS[name].on_resume == "command"  # the resuming command's anyway
        assert getattr(stored, name) == (getattr(asked, name) if command else OPTIONS[name].value_if_missing())
        assert stored.limit == 2000
    else:
        with pytest.raises(LenetError) as info:
            resume_from(asked, last)
        message = str(info.value)
        assert message == (
            f"{last} is not a resumable checkpoint: its train_config has no {name} (only options added in later "
            f"versions may be missing: {', '.join(ADDED_LATER)})"
        )


def test_a_run_from_before_the_epoch_records_resumes_without_them(tmp_path):
    """Its records could hold only the epochs after the resumption: none is better than a replay with a hole."""
    last = saved_run(tmp_path, lambda meta: meta["train_config"].pop("epoch_records"), limit=2000)
    stored, _, _ = resume_from(TrainConfig(epochs=None, out=str(tmp_path), resume=True), last)
    assert stored.epoch_records is False and TrainConfig().epoch_records is True
    kept = saved_run(tmp_path, lambda meta: None, limit=2000)  # a run from now keeps its choice
    assert resume_from(TrainConfig(epochs=None, out=str(tmp_path), resume=True), kept)[0].epoch_records is True


def test_fit_refuses_to_resume_a_run_without_its_limit_before_loading_anything(tmp_path, monkeypatch):
    last = saved_run(tmp_path, lambda meta: meta["train_config"].pop("limit"), limit=2000)
    monkeypatch.setattr("lenet.trainer.load_dataset", lambda *args, **kwargs: pytest.fail("loaded the data"))
    with pytest.raises(LenetError, match="its train_config has no limit"):
        fit(TrainConfig(epochs=None, out=str(tmp_path), resume=True, progress=False), log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [last.name]


# ---------------------------------------------------------------------------------------------------------
# What the resuming command decides


def test_how_to_run_is_the_resuming_commands_and_not_checked_against_this_machine(tmp_path):
    """--threads (how to run) is the resuming command's: a run saved with more workers than this machine allows
    goes on here with the command's number, and the stored one is only checked for its type."""
    too_many = 4 * 4096  # more than 4 per core of any machine this runs on
    last = saved_run(tmp_path, lambda meta: meta["train_config"].update(threads=too_many))
    assert not OPTIONS["threads"].allows(too_many)
    stored, _, _ = resume_from(TrainConfig(epochs=None, out=str(tmp_path), threads=1, cuda_graphs=False), last)
    assert (stored.threads, stored.cuda_graphs, stored.out, stored.epochs) == (1, False, str(tmp_path), 3)
    stored.check()
