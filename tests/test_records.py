"""The epoch records (issue 22, docs/training.md): what train.py keeps of every epoch (lenet/recorder.py), the one
reader of them (lenet/records.py), and the pictures drawn from them (lenet/training_plots.py, visualize.py).

Runs on slices of the real Fashion-MNIST go through conftest's quick_fit; the reader and the pictures are also
tested on records made from random images, which need no data set.
"""

import json
import os
import shutil
import tracemalloc

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from helpers import assert_records_match_last, needs_data

import lenet.recorder
import lenet.trainer
from lenet import visualize as vis
from lenet.checkpoint import load_checkpoint, save_checkpoint
from lenet.commands.train import parse_args
from lenet.commands.visualize import main as visualize_main
from lenet.data import get_dataset_info
from lenet.errors import LenetError
from lenet.layers import SoftmaxCrossEntropy
from lenet.model import LeNet5
from lenet.options import TrainConfig
from lenet.recorder import PROBE_COUNT, EpochRecorder, probe_figures
from lenet.records import MAX_RECORDS_BYTES, epoch_file, epoch_model, epoch_weights, read_records, records_folder
from lenet.trainer import Split, TrainingInterrupted, load_split
from lenet.training_plots import draw_training, epochs_to_show

QUIET = {"progress": False}
CLASS_NAMES = list(get_dataset_info("fashion-mnist").class_names)
ACTIVATIONS_AFTER = {"c1": "act1", "c3": "act3", "f5": "act5", "f6": "act6", "f7": None}


def learning_config(out, epochs, **options):
    """600 images (480 to train on, 120 to validate) at a learning rate where a few epochs saturate some units."""
    options = {"lr": 0.005, "batch_size": 16, **QUIET, **options}
    return TrainConfig(limit=600, epochs=epochs, out=str(out), **options)


@pytest.fixture(scope="module")
def recorded(quick_fit, tmp_path_factory):
    """A 3-epoch run of the textbook layers, whose results a test can recompute exactly: (config, history, folder)."""
    out = tmp_path_factory.mktemp("recorded")
    config = learning_config(out, 3, textbook=True)
    history, _ = quick_fit(config)
    return config, history, out


@pytest.fixture(scope="module")
def uninterrupted(quick_fit, tmp_path_factory):
    """The same 3 epochs on the fast runner (whose resumed runs are the same to the bit): the reference for the resumed
    and stopped runs. Its folder."""
    out = tmp_path_factory.mktemp("uninterrupted")
    quick_fit(learning_config(out, 3))
    return out


# ---------------------------------------------------------------------------------------------------------
# What a run keeps


def test_every_epoch_is_kept_from_the_initial_weights_on(recorded):
    config, _, out = recorded
    records = assert_records_match_last(out)  # epochs 0-3, each with its weights, the last last.npz's
    assert len(records["epochs"]) == 4
    initial = LeNet5(config.activation, config.pool, dtype=config.dtype, seed=config.seed).state_dict()
    kept = epoch_weights(out, 0)
    assert sorted(kept) == sorted(initial) and all(np.array_equal(kept[k], initial[k]) for k in initial)
    best_weights, best = load_checkpoint(out / "best_model.npz")[:2]
    assert all(np.array_equal(v, epoch_weights(out, best["epoch"])[k]) for k, v in best_weights.items())
    _, meta = epoch_model(out, 0)
    assert (meta["epoch"], meta["val_acc"], meta["dataset"]) == (0, None, "fashion-mnist")
    assert meta["train_config"] == json.loads((out / "config.json").read_text())
    assert load_checkpoint(epoch_file(out, 2))[1]["val_acc"] == records["epochs"][2]["val_acc"]
    assert records["class_names"] == CLASS_NAMES and records["activation"] == "sigmoid"


def test_the_records_numbers_are_the_historys(recorded):
    _, history, out = recorded
    on_disk = pd.read_csv(out / "history.csv", dtype=str).astype(history.dtypes.to_dict())
    records = read_records(out)["epochs"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [r[key] for r in records[1:]] == on_disk[key].tolist() == history[key].tolist(), key
    assert records[0]["train_loss"] is None and records[0]["train_acc"] is None


def test_the_confusion_matrix_counts_the_validation_predictions(quick_fit, recorded):
    config, _, out = recorded
    data = load_split(config, np)  # the run's validation images (quick_fit's cached data)
    for record in read_records(out)["epochs"]:
        model, _ = epoch_model(out, record["epoch"])
        predicted = model.forward(data.x_val).argmax(axis=1)
        expected = np.zeros((10, 10), dtype=np.int64)
        np.add.at(expected, (data.y_val, predicted), 1)
        assert record["confusion"] == expected.tolist(), record["epoch"]
        assert record["val_acc"] == np.trace(expected) / len(data.y_val)
    assert read_records(out)["epochs"][-1]["confusion"] != read_records(out)["epochs"][0]["confusion"]


def test_the_layer_figures_are_the_textbook_backward_pass_on_the_probe_batch(quick_fit, recorded):
    config, _, out = recorded
    data = load_split(config, np)
    records = read_records(out)
    count = records["probe"]["count"]
    assert count == min(PROBE_COUNT, len(data.y_val)) == 120 and records["probe"]["split"] == "validation"
    x, y = data.x_val[:count], data.y_val[:count]
    for record in records["epochs"]:
        model, _ = epoch_model(out, record["epoch"])
        loss_fn = SoftmaxCrossEntropy()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        params = dict(model.named_parameters())
        outputs = vis.layer_outputs(model, x)  # a forward pass of its own: the gradients above stay
        for layer, act in ACTIVATIONS_AFTER.items():
            figures, where = record["layers"][layer], (record["epoch"], layer)
            w, g = (a.astype(np.float64) for a in (params[f"{layer}.weight"].data, params[f"{layer}.weight"].grad))
            assert figures["weight_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-12), where
            assert figures["grad_norm"] == pytest.approx(np.linalg.norm(g), rel=1e-12), where
            assert figures["grad_mean_abs"] == pytest.approx(np.abs(g).mean(), rel=1e-12), where
            if act is None:
                assert figures["saturated"] is None
            else:
                flat = (outputs[act] < 0.05) | (outputs[act] > 0.95)
                assert figures["saturated"] == pytest.approx(flat.mean(), abs=1e-12), where
    # What the pictures are for: a sigmoid LeNet-5 starts with C1's gradient far below F7's, and saturates as it learns.
    first, last = records["epochs"][0]["layers"], records["epochs"][-1]["layers"]
    assert first["c1"]["grad_mean_abs"] * 10 < first["f7"]["grad_mean_abs"]
    assert max(last[layer]["saturated"] for layer in ("c1", "c3", "f5", "f6")) > 0.01  # so the check above checks


def test_probe_figures_on_either_backend(xp):
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 3, (16, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 16)  # some units saturate
    expected = probe_figures(LeNet5("tanh", "max", seed=2), x, y)
    model = LeNet5("tanh", "max", backend="cupy" if xp is not np else "numpy", seed=2)
    found = probe_figures(model, xp.asarray(x), xp.asarray(y))
    for layer, figures in expected.items():
        for name, value in figures.items():
            assert found[layer][name] == (None if value is None else pytest.approx(value, rel=1e-4)), (layer, name)
    assert 0 < expected["c1"]["saturated"] < 1


@pytest.mark.parametrize("textbook", [False, True], ids=["fast", "textbook"])
def test_the_records_change_no_number_of_the_training(quick_fit, tmp_path, textbook):
    """Bit for bit: the history, last.npz (weights and optimizer state) and best_model.npz, records on or off."""
    runs = {}
    for keep in (True, False):
        config = TrainConfig(limit=300, epochs=2, out=str(tmp_path / str(keep)), textbook=textbook, epoch_records=keep)
        runs[keep], _ = quick_fit(config)
    kept, plain = tmp_path / "True", tmp_path / "False"
    assert records_folder(kept).is_dir() and not records_folder(plain).exists() and read_records(plain) is None
    pd.testing.assert_frame_equal(
        runs[True].drop(columns="seconds"), runs[False].drop(columns="seconds"), check_exact=True
    )
    for name in ("last.npz", "best_model.npz"):
        (a, meta_a, opt_a), (b, meta_b, opt_b) = load_checkpoint(kept / name), load_checkpoint(plain / name)
        assert all(np.array_equal(a[k], b[k]) for k in a) and sorted(opt_a) == sorted(opt_b)
        assert all(np.array_equal(opt_a[k], opt_b[k]) for k in opt_a)
        assert meta_a.get("rng_state") == meta_b.get("rng_state")
        assert (meta_a["train_config"]["epoch_records"], meta_b["train_config"]["epoch_records"]) == (True, False)
    assert json.loads((plain / "config.json").read_text())["epoch_records"] is False


def test_no_epoch_records_is_a_flag_of_train_py():
    assert parse_args(["--no-epoch-records"]).epoch_records is False
    assert parse_args([]).epoch_records is True


# ---------------------------------------------------------------------------------------------------------
# --resume, --overwrite and interruptions keep the records at last.npz's epochs


def test_resume_goes_on_with_the_records_one_run_would_keep(quick_fit, uninterrupted, tmp_path):
    quick_fit(learning_config(tmp_path, 1))
    quick_fit(TrainConfig(epochs=3, out=str(tmp_path), **QUIET), resume=True)
    assert assert_records_match_last(tmp_path) == read_records(uninterrupted)


class Killed(BaseException):
    """kill -9, as far as a test in process can: lenet's clean-up answers only Ctrl-C and SIGTERM."""


def test_a_run_killed_between_its_records_and_last_npz_resumes_to_the_same_records(
    quick_fit, uninterrupted, tmp_path, monkeypatch
):
    real_save = lenet.trainer.save_epoch

    def save_epoch(out, model, optimizer, meta_common, progress, *args):
        if progress.epoch == 2:
            raise Killed  # epoch 2's records are written, its last.npz is not
        return real_save(out, model, optimizer, meta_common, progress, *args)

    monkeypatch.setattr(lenet.trainer, "save_epoch", save_epoch)
    with pytest.raises(Killed):
        quick_fit(learning_config(tmp_path, 3))
    monkeypatch.setattr(lenet.trainer, "save_epoch", real_save)
    records = read_records(tmp_path)
    assert [r["epoch"] for r in records["epochs"]] == [0, 1, 2]  # one ahead of last.npz
    # Mark epoch 2's record, and leave a temporary as a killed write would: --resume must drop both.
    text = (records_folder(tmp_path) / "records.json").read_text()
    records["epochs"][2]["val_loss"] = 99.0
    (records_folder(tmp_path) / "records.json").write_text(json.dumps(records))
    (records_folder(tmp_path) / ".epoch_0003.npz.0123456789ab.tmp").write_bytes(b"half")
    assert text != (records_folder(tmp_path) / "records.json").read_text()

    quick_fit(TrainConfig(epochs=3, out=str(tmp_path), **QUIET), resume=True)
    assert assert_records_match_last(tmp_path) == read_records(uninterrupted)


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["before last.npz of epoch 2", "in the records of epoch 2", "in epoch 1"])
def test_ctrl_c_leaves_the_records_at_last_npzs_epochs(quick_fit, tmp_path, monkeypatch, where):
    real_save, real_probe = lenet.trainer.save_epoch, lenet.recorder.probe_figures
    stop_at = 1 if where == "in epoch 1" else 2

    def save_epoch(out, model, optimizer, meta_common, progress, *args):
        if progress.epoch == stop_at:
            raise KeyboardInterrupt
        return real_save(out, model, optimizer, meta_common, progress, *args)

    calls = []

    def probe(*args):  # called for epochs 0, 1, 2: the third time, epoch 2's weights file is already written
        calls.append(1)
        return ctrl_c() if len(calls) == 3 else real_probe(*args)

    if where == "in the records of epoch 2":
        monkeypatch.setattr(lenet.recorder, "probe_figures", probe)
    else:
        monkeypatch.setattr(lenet.trainer, "save_epoch", save_epoch)
    with pytest.raises(TrainingInterrupted) as info:
        quick_fit(TrainConfig(limit=300, epochs=3, out=str(tmp_path), **QUIET))
    assert info.value.saved_epoch == stop_at - 1
    records = assert_records_match_last(tmp_path)  # epoch_0002.npz, if written, is gone again
    assert len(records["epochs"]) == stop_at


def test_resume_without_its_records_warns_once_and_goes_on_without_them(quick_fit, tmp_path, capsys):
    quick_fit(TrainConfig(limit=300, epochs=1, out=str(tmp_path), **QUIET))
    shutil.rmtree(records_folder(tmp_path))
    quick_fit(TrainConfig(epochs=2, out=str(tmp_path), **QUIET), resume=True)
    warning = capsys.readouterr().err
    assert warning == (
        f"warning: the epoch records do not reach epoch 1 ({records_folder(tmp_path)} holds none); this run goes on "
        "without them\n"
    )
    assert not records_folder(tmp_path).exists()
    assert load_checkpoint(tmp_path / "last.npz")[1]["epoch"] == 2


def test_resume_with_damaged_records_says_why_and_leaves_them(quick_fit, tmp_path, capsys):
    quick_fit(TrainConfig(limit=300, epochs=1, out=str(tmp_path), **QUIET))
    damaged = records_folder(tmp_path) / "records.json"
    damaged.write_text(damaged.read_text()[:50])
    quick_fit(TrainConfig(epochs=2, out=str(tmp_path), **QUIET), resume=True)
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: the epoch records do not reach epoch 1 ({damaged}: not valid JSON (")
    assert warning.count("\n") == 1 and len(damaged.read_text()) == 50


def test_a_run_with_no_epoch_records_resumes_without_them(quick_fit, tmp_path, capsys):
    quick_fit(TrainConfig(limit=300, epochs=1, out=str(tmp_path), epoch_records=False, **QUIET))
    quick_fit(TrainConfig(epochs=2, out=str(tmp_path), **QUIET), resume=True)  # the stored choice is kept
    assert capsys.readouterr().err == "" and not records_folder(tmp_path).exists()


def test_overwrite_and_a_fresh_start_begin_the_records_anew(quick_fit, tmp_path):
    quick_fit(TrainConfig(limit=300, epochs=2, out=str(tmp_path), **QUIET))
    (records_folder(tmp_path) / "notes.txt").write_text("mine")
    quick_fit(TrainConfig(limit=300, epochs=1, out=str(tmp_path), overwrite=True, seed=1, **QUIET))
    assert [r["epoch"] for r in read_records(tmp_path)["epochs"]] == [0, 1]
    assert sorted(p.name for p in records_folder(tmp_path).iterdir()) == [
        "epoch_0000.npz",
        "epoch_0001.npz",
        "notes.txt",
        "records.json",
    ]
    assert np.array_equal(epoch_weights(tmp_path, 0)["c1.weight"], LeNet5(seed=1).state_dict()["c1.weight"])

    # A folder whose run went (a run killed in its first epoch leaves records and no last.npz): begun anew
    (records_folder(tmp_path) / "notes.txt").unlink()
    for name in ("last.npz", "best_model.npz"):
        (tmp_path / name).unlink()
    shutil.copy(epoch_file(tmp_path, 1), epoch_file(tmp_path, 7))
    quick_fit(TrainConfig(limit=300, epochs=1, out=str(tmp_path), **QUIET))
    assert_records_match_last(tmp_path)

    quick_fit(TrainConfig(limit=300, epochs=1, out=str(tmp_path), overwrite=True, epoch_records=False, **QUIET))
    assert not records_folder(tmp_path).exists()


# ---------------------------------------------------------------------------------------------------------
# The reader: records from anywhere


def make_records(out, epochs=2, activation="sigmoid"):
    """A run folder with records as train.py keeps them, of random images and weights that drift epoch by epoch;
    and its best_model.npz (the last epoch's)."""
    rng = np.random.default_rng(5)
    x, y = rng.random((40, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 40)
    config = TrainConfig(out=str(out), activation=activation)
    meta = {"dataset": "fashion-mnist", "class_names": CLASS_NAMES, "train_config": config.stored()}
    recorder = EpochRecorder(out, config, Split(x[:20], y[:20], x[20:], y[20:], CLASS_NAMES), meta)
    model = LeNet5(activation)
    for epoch in range(epochs + 1):
        for p in model.parameters():
            p.data += (0.3 * epoch * rng.standard_normal(p.data.shape)).astype(p.data.dtype)
        results = [None, None] if epoch == 0 else [2.0 / (epoch + 1), 0.2 * epoch]
        confusion = rng.multinomial(20, np.full(100, 0.01)).reshape(10, 10)
        recorder.add([epoch, *results, 2.3 - 0.2 * epoch, np.trace(confusion) / 20], confusion, model)
    save_checkpoint(out / "best_model.npz", model, {**meta, "epoch": epochs, "val_acc": 0.5})
    return out


def edited(edit):
    def write(path):
        records = json.loads(path.read_text())
        edit(records)
        path.write_text(json.dumps(records))

    return write


def raw(text):
    return lambda path: path.write_text(text)


def setitem(path, value):
    """An edit that sets records[path...] = value."""

    def edit(records):
        *parents, last = path
        for key in parents:
            records = records[key]
        records[last] = value

    return edited(edit)


MALFORMED = {
    "truncated": (lambda p: p.write_text(p.read_text()[:300]), "not valid JSON (Expecting"),
    "not UTF-8": (lambda p: p.write_bytes(b'{"version": "\xff"}'), "not UTF-8 text"),
    "a list": (raw("[1, 2]"), "the file must be an object, not [1, 2]"),
    "empty object": (raw("{}"), "version is missing"),
    "version 2": (setitem(["version"], 2), "epoch records of version 2; this lenet reads version 1"),
    "version '1'": (setitem(["version"], "1"), "version must be 1, not '1'"),
    "NaN": (raw('{"version": NaN}'), "NaN is not a number JSON allows"),
    "a 50-digit number": (raw('{"version": ' + "9" * 50 + "}"), "a whole number of 50 digits, more than 12"),
    "nested 20 deep": (raw('{"version": 1, "x": ' + "[" * 20 + "]" * 20 + "}"), "nested more than 6 deep"),
    "nested 100,000 deep": (raw("[" * 100_000 + "]" * 100_000), "nested more than 6 deep"),
    "9 class names": (setitem(["class_names"], CLASS_NAMES[:9]), "class_names must be a list of 10 names"),
    "activation unknown": (setitem(["activation"], "softplus"), "activation must be one of sigmoid, relu, tanh"),
    "probe of 0 images": (setitem(["probe", "count"], 0), "probe.count must be a whole number from 1 to 60000"),
    "probe of training images": (setitem(["probe", "split"], "train"), "probe.split must be 'validation'"),
    "no epochs": (setitem(["epochs"], []), "epochs must be a list of 1 to 100001 epochs, not []"),
    "epochs an object": (setitem(["epochs"], {}), "epochs must be a list"),
    "epochs out of order": (setitem(["epochs", 1, "epoch"], 2), "epochs[1].epoch must be 1 (the epochs from 0"),
    "epoch 0 trained": (setitem(["epochs", 0, "train_loss"], 1.0), "epochs[0].train_loss must be null (epoch 0 has"),
    "val_acc 1.5": (setitem(["epochs", 1, "val_acc"], 1.5), "epochs[1].val_acc must be a number from 0 to 1, not 1.5"),
    "val_acc true": (setitem(["epochs", 1, "val_acc"], True), "epochs[1].val_acc must be a number from 0 to 1"),
    "val_loss a string": (setitem(["epochs", 2, "val_loss"], "0.5"), "epochs[2].val_loss must be a number >= 0"),
    "train_loss missing": (
        edited(lambda r: r["epochs"][1].pop("train_loss")),
        "epochs[1].train_loss is missing",
    ),
    "confusion of 9 rows": (setitem(["epochs", 1, "confusion"], [[0] * 10] * 9), "epochs[1].confusion must be 10 rows"),
    "a negative count": (setitem(["epochs", 1, "confusion", 3, 3], -1), "epochs[1].confusion must be 10 rows of 10"),
    "a count of 0.5": (setitem(["epochs", 1, "confusion", 3, 3], 0.5), "epochs[1].confusion must be 10 rows of 10"),
    "no f7": (edited(lambda r: r["epochs"][0]["layers"].pop("f7")), "epochs[0].layers.f7 is missing"),
    "layers a list": (setitem(["epochs", 0, "layers"], []), "epochs[0].layers must be an object, not []"),
    "grad_norm -1": (
        setitem(["epochs", 2, "layers", "c3", "grad_norm"], -1),
        "epochs[2].layers.c3.grad_norm must be a number >= 0, or null, not -1",
    ),
    "saturated 2": (
        setitem(["epochs", 2, "layers", "c1", "saturated"], 2),
        "epochs[2].layers.c1.saturated must be a share from 0 to 1, or null, not 2",
    ),
    "a megabyte string": (setitem(["dataset"], "x" * 1_000_000), "dataset must be a data set's name, not 'xxxxx"),
    "records.json a folder": (lambda p: p.unlink() or p.mkdir(), "records.json: not a file"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_records_are_one_line(tmp_path, case):
    out = make_records(tmp_path / "run")
    damage, words = MALFORMED[case]
    damage(records_folder(out) / "records.json")
    with pytest.raises(LenetError) as info:
        read_records(out)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(str(records_folder(out) / "records.json")), message
    assert words in message, message
    assert draw_training(out, np.zeros((1, 1, 28, 28), np.float32), "", tmp_path)[1] == message


def test_a_huge_records_file_is_refused_before_it_is_read(tmp_path):
    out = make_records(tmp_path)
    with open(records_folder(out) / "records.json", "r+b") as f:
        f.truncate(MAX_RECORDS_BYTES + 1)  # sparse: costs no disk
    tracemalloc.start()
    try:
        with pytest.raises(LenetError, match=f"larger than the {MAX_RECORDS_BYTES} bytes epoch records can need"):
            read_records(out)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_links_that_lead_out_of_the_run_folder_are_refused(tmp_path):
    out, elsewhere = make_records(tmp_path / "run"), make_records(tmp_path / "elsewhere")
    folder = records_folder(out)
    (folder / "records.json").unlink()
    (folder / "records.json").symlink_to(records_folder(elsewhere) / "records.json")
    with pytest.raises(LenetError, match="records.json leads outside the run folder .* refused"):
        read_records(out)
    epoch_file(out, 1).unlink()
    epoch_file(out, 1).symlink_to(epoch_file(elsewhere, 1))
    for read in (epoch_weights, epoch_model):
        with pytest.raises(LenetError, match="epoch_0001.npz leads outside the run folder"):
            read(out, 1)
    shutil.rmtree(folder)
    folder.symlink_to(records_folder(elsewhere), target_is_directory=True)
    with pytest.raises(LenetError, match="leads outside the run folder"):
        read_records(out)
    # A link inside the run folder is no way out: read as the file it names.
    shutil.copytree(records_folder(elsewhere), out / "copy")
    folder.unlink()
    folder.symlink_to(out / "copy", target_is_directory=True)
    assert read_records(out) == read_records(elsewhere)


@pytest.mark.parametrize("epoch", [-1, 3, True, 1.0, "1", None, 10**9])
def test_an_epoch_that_is_not_kept_is_one_line(tmp_path, epoch):
    out = make_records(tmp_path)
    with pytest.raises(LenetError) as info:
        epoch_weights(out, epoch)
    message = str(info.value)
    assert "\n" not in message
    assert ("keeps no weights for epoch 3 (no epoch_0003.npz in epochs/)" if epoch == 3 else "epoch must be") in message


def test_an_epoch_file_of_another_epoch_is_refused(tmp_path):
    out = make_records(tmp_path)
    shutil.copy(epoch_file(out, 1), epoch_file(out, 2))
    with pytest.raises(LenetError, match="its metadata says epoch 1, not 2"):
        epoch_weights(out, 2)
    epoch_file(out, 2).write_bytes(b"not a zip")
    with pytest.raises(LenetError, match="not a lenet checkpoint"):
        epoch_model(out, 2)


def test_a_run_from_before_the_records_has_none(tmp_path):
    save_checkpoint(tmp_path / "best_model.npz", LeNet5(), {"epoch": 1, "val_acc": 0.5})
    assert read_records(tmp_path) is None
    with pytest.raises(LenetError, match="keeps no weights for epoch 0"):
        epoch_weights(tmp_path, 0)
    with pytest.raises(LenetError, match="no such run folder"):
        read_records(tmp_path / "missing")


def test_the_reader_gives_what_the_recorder_wrote(tmp_path):
    out = make_records(tmp_path, epochs=3, activation="relu")
    records = read_records(out)
    assert [r["epoch"] for r in records["epochs"]] == [0, 1, 2, 3]
    assert records["activation"] == "relu" and records["probe"] == {"split": "validation", "count": 20}
    model, meta = epoch_model(out, 3, input_grad=True)
    assert model.activation == "relu" and model.input_grad and meta["epoch"] == 3
    assert all(np.array_equal(p.data, epoch_weights(out, 3)[name]) for name, p in model.named_parameters())
    # Keys lenet does not write are left out of what the reader gives.
    path = records_folder(out) / "records.json"
    path.write_text(path.read_text().replace('"version": 1,', '"version": 1, "extra": [1, 2],'))
    assert "extra" not in read_records(out) and read_records(out)["epochs"] == records["epochs"]


# ---------------------------------------------------------------------------------------------------------
# The pictures


def looks_drawn(path):
    pixels = matplotlib.image.imread(path)[..., :3]
    colourful = float((pixels.max(axis=2) - pixels.min(axis=2) > 0.15).mean())
    return pixels.shape[0] > 300 and pixels.shape[1] > 600 and pixels.std() > 0.05 and colourful > 0.01


def test_epochs_to_show():
    assert [epochs_to_show(last) for last in (0, 1, 2, 3, 8, 30)] == [
        [0],
        [0, 1],
        [0, 1, 2],
        [0, 1, 2, 3],
        [0, 1, 4, 8],
        [0, 1, 15, 30],
    ]


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_training_and_gradient_flow_pictures(tmp_path, activation):
    out = make_records(tmp_path / "run", epochs=4, activation=activation)
    image = np.random.default_rng(0).random((1, 1, 28, 28)).astype(np.float32)
    written, skipped = draw_training(out, image, "a random image", tmp_path / "pictures")
    assert skipped is None
    assert written == [tmp_path / "pictures" / "training.png", tmp_path / "pictures" / "gradient_flow.png"]
    assert all(looks_drawn(path) for path in written)
    assert sorted(os.listdir(tmp_path / "pictures")) == ["gradient_flow.png", "training.png"]  # no temporaries


def test_no_records_no_pictures_and_one_line_why(tmp_path):
    save_checkpoint(tmp_path / "best_model.npz", LeNet5(), {"epoch": 1, "val_acc": 0.5})
    assert draw_training(tmp_path, np.zeros((1, 1, 28, 28), np.float32), "", tmp_path) == (
        [],
        f"{tmp_path} keeps no epoch records (trained before they existed, or with --no-epoch-records)",
    )
    assert sorted(os.listdir(tmp_path)) == ["best_model.npz"]


@needs_data
def test_visualize_draws_the_run_over_time_or_says_why_not(tmp_path, capsys):
    with_records = make_records(tmp_path / "run")
    assert visualize_main(["--checkpoint", str(with_records / "best_model.npz"), "--mistakes", "2"]) == 0
    printed = capsys.readouterr().out
    for name in ("training.png", "gradient_flow.png"):
        assert f"wrote {with_records / name}\n" in printed and looks_drawn(with_records / name)
    assert "skipped" not in printed
    shutil.rmtree(records_folder(with_records))
    assert visualize_main(["--checkpoint", str(with_records / "best_model.npz"), "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert printed.endswith(
        f"skipped training.png and gradient_flow.png: {with_records} keeps no epoch records (trained before they "
        "existed, or with --no-epoch-records)\n"
    )
    assert not (tmp_path / "b" / "training.png").exists()
