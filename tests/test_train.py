"""train.py, test.py and lenet.trainer.fit on slices of the real Fashion-MNIST.

The command lines run as subprocesses, several side by side (each spends about a second importing);
the in-process runs share one cached load of the training images and skip the pictures, which
test_plots.py and the end-to-end run cover. Everything runs with a one-thread BLAS: on a busy machine
OpenBLAS's spinning threads made a LeNet conv backward 30-500x slower, and these tests are about
results, not speed.
"""

import contextlib
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from helpers import MISSING_DATA, needs_data, one_line_error, run_script, without_busy_notice

import lenet.resume
import lenet.runfiles
import lenet.trainer
from lenet.backend import cupy_available
from lenet.checkpoint import META_KEY, load_checkpoint, model_from_checkpoint, save_checkpoint
from lenet.commands.train import interrupted_message
from lenet.data import num_batches, train_val_split
from lenet.errors import LenetError
from lenet.fast import FastRunner
from lenet.model import LeNet5
from lenet.options import TrainConfig
from lenet.runfiles import HISTORY_COLUMNS
from lenet.trainer import TrainingInterrupted, fit

# ---------------------------------------------------------------------------------------------------------
# Helpers


def npz_arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def assert_same_arrays(path_a, path_b):
    a, b = npz_arrays(path_a), npz_arrays(path_b)
    meta_a, meta_b = (json.loads(str(d.pop(META_KEY))) for d in (a, b))
    assert set(a) == set(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), f"{key} differs between {path_a} and {path_b}"
    for key in ("epoch", "val_acc", "best_val_acc", "rng_state"):
        assert meta_a.get(key) == meta_b.get(key), key


def without_seconds(history):
    return history.drop(columns="seconds")


def assert_same_history(a, b):
    """Equal to the last bit in every column but the timing."""
    pd.testing.assert_frame_equal(without_seconds(a), without_seconds(b), check_exact=True)


# ---------------------------------------------------------------------------------------------------------
# The command lines, end to end


@needs_data
def test_train_then_test_end_to_end(tmp_path, offline_env):
    env = offline_env
    out = tmp_path / "run"
    train = run_script(
        "train.py", ["--limit", 600, "--epochs", 2, "--batch-size", 32, "--out", out, "--no-progress"], env
    )
    assert train.returncode == 0, train.stderr
    assert without_busy_notice(train.stderr) == ""
    assert "Total params: 61,706" in train.stdout
    epoch_lines = [line for line in train.stdout.splitlines() if re.match(r"epoch +\d+/2 ", line)]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"], train.stdout
    assert all("val loss" in line and "acc" in line for line in epoch_lines)
    for name in ("best_model.npz", "last.npz", "history.csv", "curves.png", "batch.png"):
        assert (out / name).is_file(), name
    assert not (out / ".lock").exists()  # a finished run leaves its folder unlocked and without a .lock
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    assert history["epoch"].tolist() == [1, 2]
    assert history[["train_acc", "val_acc"]].stack().between(0, 1).all()
    assert (history["seconds"] > 0).all()

    test = run_script("test.py", ["--checkpoint", out / "best_model.npz", "--show", 3], env)
    assert test.returncode == 0, test.stderr
    assert test.stderr == ""
    accuracy = re.search(r"test accuracy on fashion-mnist \(10000 images\): ([0-9.]+)", test.stdout)
    assert accuracy and 0 <= float(accuracy.group(1)) <= 1, test.stdout
    shown = [line for line in test.stdout.splitlines() if line.startswith("predicted: ")]
    assert len(shown) == 3 and all(" true: " in line for line in shown), test.stdout
    for name in ("confusion_matrix.png", "predictions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# Bad input: (script, arguments, what the one line on stderr must say). {tmp} is a fresh folder per case.
BAD_INPUT = {
    "unknown flag": ("train.py", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    "zero epochs": ("train.py", ["--epochs", "0"], "--epochs"),
    "negative batch size": ("train.py", ["--batch-size", "-1"], "--batch-size"),
    "negative lr": ("train.py", ["--lr", "-1", "--out", "{tmp}"], "argument --lr: must be a positive number, got -1.0"),
    "cupy without a GPU": ("train.py", ["--backend", "cupy", "--limit", "100", "--out", "{tmp}"], "cupy"),
    "unknown data set": ("train.py", ["--dataset", "foo"], "invalid choice: 'foo'"),
    "empty data dir": (
        "train.py",
        ["--data-dir", "{tmp}", "--limit", "100", "--epochs", "1", "--out", "{tmp}/run"],
        "data not found",
    ),
    "resume without last.npz": ("train.py", ["--resume", "--out", "{tmp}"], "last.npz"),
    "resume and overwrite": ("train.py", ["--resume", "--overwrite"], "not allowed with argument"),
    "too many threads": (
        "train.py",
        ["--threads", "100000000", "--out", "{tmp}/run"],
        "argument --threads: must be a whole number from 1 to ",
    ),
    "diverging": (
        "train.py",
        ["--limit", "200", "--epochs", "2", "--optimizer", "sgd", "--lr", "1e38", "--out", "{tmp}", "--no-progress"],
        "diverged",
    ),
    # Adam's first step moves every weight by about lr: the training loss of that step is still finite.
    "diverging adam, 1 epoch": (
        "train.py",
        ["--optimizer", "adam", "--lr", "1e38", "--limit", "10", "--epochs", "1", "--out", "{tmp}", "--no-progress"],
        "diverged",
    ),
    "diverging adam, 3 epochs": (
        "train.py",
        ["--optimizer", "adam", "--lr", "1e38", "--limit", "10", "--epochs", "3", "--out", "{tmp}", "--no-progress"],
        "diverged",
    ),
    "test: missing checkpoint": ("test.py", ["--checkpoint", "{tmp}/nothing.npz"], "no such file"),
    "test: not a lenet file": ("test.py", ["--checkpoint", "{tmp}/history.csv"], "not a lenet checkpoint"),
    "test: wrong shapes": ("test.py", ["--checkpoint", "{tmp}/small_c1.npz"], "c1.weight has shape (6, 1, 3, 3)"),
    "test: negative --show": ("test.py", ["--show", "-1"], "--show"),
}
NEEDS_DATA = {"diverging", "diverging adam, 1 epoch", "diverging adam, 3 epochs"}
HELP = {"train.py": ["--epochs", "--resume", "--limit"], "test.py": ["--checkpoint", "--show"]}


def prepare_folder(case, folder):
    folder.mkdir()
    if case == "test: not a lenet file":
        (folder / "history.csv").write_text("epoch,train_loss\n1,2.3\n")
    elif case == "test: wrong shapes":
        save_checkpoint(folder / "small_c1.npz", LeNet5(), {"dataset": "fashion-mnist"})
        arrays = npz_arrays(folder / "small_c1.npz")
        arrays["c1.weight"] = np.zeros((6, 1, 3, 3), np.float32)
        np.savez(folder / "small_c1.npz", **arrays)


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, offline_env):
    """Every bad-input and --help run, four at a time: {case: (CompletedProcess, its folder)}."""
    env = offline_env
    jobs = {}
    for case, (script, args, _) in BAD_INPUT.items():
        if case == "cupy without a GPU" and cupy_available():
            continue
        if case in NEEDS_DATA and MISSING_DATA:
            continue
        folder = tmp_path_factory.mktemp("cli") / "case"
        prepare_folder(case, folder)
        jobs[case] = (script, [a.replace("{tmp}", str(folder)) for a in args], folder)
    for script in HELP:
        jobs[f"help {script}"] = (script, ["--help"], None)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(run_script, script, args, env) for case, (script, args, _) in jobs.items()}
        return {case: (future.result(), jobs[case][2]) for case, future in futures.items()}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_status_2(cli_results, case):
    if case == "cupy without a GPU" and cupy_available():
        pytest.skip("CuPy works on this machine")
    if case in NEEDS_DATA and MISSING_DATA:
        pytest.skip(MISSING_DATA)
    script, _, expected = BAD_INPUT[case]
    result, _ = cli_results[case]
    message = one_line_error(result, script)
    assert expected in message


@needs_data
@pytest.mark.parametrize("case", ["diverging", "diverging adam, 1 epoch", "diverging adam, 3 epochs"])
def test_diverging_run_never_saves_non_finite_weights(cli_results, case):
    result, folder = cli_results[case]
    assert "try a lower --lr" in result.stderr
    assert "epoch 1" in result.stderr  # a learning rate of 1e38 must blow up at once
    for name in ("best_model.npz", "last.npz"):
        if (folder / name).exists():
            model, _ = model_from_checkpoint(folder / name)
            assert all(np.isfinite(p.data).all() for p in model.parameters()), name
    if "best_model.npz" in result.stderr:  # named only if there are finite best weights
        assert (folder / "best_model.npz").exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("script", list(HELP))
def test_help(cli_results, script):
    result, _ = cli_results[f"help {script}"]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"usage: {script}")
    for flag in ["--backend", *HELP[script]]:
        assert flag in result.stdout


def test_empty_data_dir_fails_fast_with_a_refused_download(cli_results):
    result, folder = cli_results["empty data dir"]
    assert f"looked in: {folder} (none of the files)" in result.stderr
    assert "Connection refused" in result.stderr or "Errno 111" in result.stderr, result.stderr
    # Nothing written before the data was there: no run folder, not even one holding only its .lock.
    assert not (folder / "run").exists()


# ---------------------------------------------------------------------------------------------------------
# fit() in process


LIMIT = 300  # images; 240 train, 60 validation
QUIET = {"progress": False}


def learning_config(out, epochs, **options):
    """A recipe that learns within a few epochs of 240 images, so best_model.npz moves."""
    return TrainConfig(limit=LIMIT, epochs=epochs, out=str(out), activation="relu", pool="max", **{**QUIET, **options})


@pytest.fixture(scope="module")
def uninterrupted(quick_fit, tmp_path_factory):
    """Three epochs in one go: the reference for resumed runs. Returns (history, folder)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    history, _ = quick_fit(learning_config(out, 3))
    assert history["val_acc"].iloc[-1] > 0.3, "the reference run does not learn"
    return history, out


def test_same_seed_same_history_other_seed_another(quick_fit, tmp_path):
    # Batches of 100 run in two chunks on two threads where there are two cores: that too must repeat.
    runs = {
        name: quick_fit(TrainConfig(limit=400, epochs=2, batch_size=100, seed=seed, out=str(tmp_path / name), **QUIET))[
            0
        ]
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    }
    assert runs["a"]["epoch"].tolist() == [1, 2]
    assert_same_history(runs["a"], runs["b"])
    assert_same_arrays(tmp_path / "a" / "last.npz", tmp_path / "b" / "last.npz")
    assert not np.array_equal(runs["a"]["train_loss"], runs["c"]["train_loss"])
    a, c = npz_arrays(tmp_path / "a" / "last.npz"), npz_arrays(tmp_path / "c" / "last.npz")
    assert not np.array_equal(a["c1.weight"], c["c1.weight"])


def test_textbook_run_matches_the_fast_run_to_float32_rounding(quick_fit, tmp_path):
    """--textbook: the layers of layers.py run by PlainRunner; the fused, threaded default gives the same history."""
    runs = {}
    for textbook in (False, True):
        config = learning_config(tmp_path / str(textbook), 2, batch_size=100, textbook=textbook)
        runs[textbook], logged = quick_fit(config)
        assert ("textbook layers" in logged[1]) == textbook
    fast, plain = runs[False], runs[True]
    np.testing.assert_allclose(plain["train_loss"], fast["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(plain["val_loss"], fast["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(plain["val_acc"], fast["val_acc"], atol=2 / 60)  # at most 2 of 60 images differ
    a, b = npz_arrays(tmp_path / "False" / "last.npz"), npz_arrays(tmp_path / "True" / "last.npz")
    np.testing.assert_allclose(b["c1.weight"], a["c1.weight"], rtol=1e-3, atol=1e-5)


def test_history_csv_is_what_fit_returns(quick_fit, tmp_path):
    history, logged = quick_fit(TrainConfig(limit=100, epochs=1, out=str(tmp_path), **QUIET))
    # Parsed as text, then converted by NumPy (correctly rounded): older pandas' fast float parser can be 1 ulp off.
    on_disk = pd.read_csv(tmp_path / "history.csv", dtype=str).astype(history.dtypes.to_dict())
    assert list(on_disk.columns) == HISTORY_COLUMNS
    pd.testing.assert_frame_equal(on_disk, history, check_exact=True)
    assert "Total params: 61,706" in logged[0]
    assert sum(line.startswith("epoch ") for line in logged) == 1


def test_resume_gives_the_same_run(quick_fit, uninterrupted, tmp_path):
    full_history, full = uninterrupted
    quick_fit(learning_config(tmp_path, 1))
    assert load_checkpoint(tmp_path / "last.npz")[1]["epoch"] == 1
    history, logged = quick_fit(TrainConfig(epochs=3, out=str(tmp_path), **QUIET), resume=True)
    assert any(line.startswith("resuming from") for line in logged)
    assert history["epoch"].tolist() == [1, 2, 3]
    assert_same_history(history, full_history)
    assert_same_history(pd.read_csv(tmp_path / "history.csv"), pd.read_csv(full / "history.csv"))
    for name in ("last.npz", "best_model.npz"):
        assert_same_arrays(tmp_path / name, full / name)


def test_resume_takes_how_to_run_from_the_resuming_command(uninterrupted, tmp_path):
    _, full = uninterrupted
    stored, _, _ = lenet.resume.resume_from(
        TrainConfig(epochs=4, out=str(tmp_path), progress=False, cuda_graphs=False), full / "last.npz"
    )
    assert (stored.epochs, stored.out, stored.cuda_graphs, stored.activation) == (4, str(tmp_path), False, "relu")


def test_resume_of_a_finished_run_asks_for_more_epochs(quick_fit, uninterrupted):
    _, full = uninterrupted
    with pytest.raises(LenetError, match="already finished epoch 3 of 3; raise --epochs"):
        quick_fit(TrainConfig(epochs=None, out=str(full), **QUIET), resume=True)


@contextlib.contextmanager
def ctrl_c_at_step(monkeypatch, step):
    """Make FastRunner.train_step raise KeyboardInterrupt at its `step`-th call (1-based)."""
    real = FastRunner.train_step
    calls = []

    def train_step(self, x, y):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(self, x, y)

    with monkeypatch.context() as mp:
        mp.setattr(FastRunner, "train_step", train_step)
        yield calls


def steps_per_epoch(limit, batch_size=32):
    train_idx, _ = train_val_split(limit, 0.2, 0)
    return num_batches(len(train_idx), batch_size)


def test_ctrl_c_saves_what_is_finished_and_resumes_to_the_same_run(quick_fit, uninterrupted, tmp_path, monkeypatch):
    full_history, full = uninterrupted
    with ctrl_c_at_step(monkeypatch, steps_per_epoch(LIMIT) + 3) as calls:  # the third batch of epoch 2
        with pytest.raises(TrainingInterrupted) as info:
            quick_fit(learning_config(tmp_path, 3))
    assert len(calls) == steps_per_epoch(LIMIT) + 3
    stopped = info.value
    assert (stopped.epoch, stopped.saved_epoch, stopped.epochs) == (2, 1, 3)
    assert stopped.best_val_acc == load_checkpoint(tmp_path / "best_model.npz")[1]["val_acc"]
    message = interrupted_message(stopped)
    assert message.startswith("stopped by Ctrl-C in epoch 2; epoch 1 is saved")
    assert message.endswith(f" --resume --out {tmp_path}")  # after lenet.cli.invocation(): how this ran
    assert load_checkpoint(tmp_path / "last.npz")[1]["epoch"] == 1
    assert load_checkpoint(tmp_path / "best_model.npz")[1]["epoch"] == 1
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [1]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    history, _ = quick_fit(TrainConfig(epochs=None, out=str(tmp_path), **QUIET), resume=True)
    assert_same_history(history, full_history)
    for name in ("last.npz", "best_model.npz"):
        assert_same_arrays(tmp_path / name, full / name)


def test_ctrl_c_in_the_first_epoch_says_there_is_nothing_to_resume(quick_fit, tmp_path, monkeypatch):
    with ctrl_c_at_step(monkeypatch, 2), pytest.raises(TrainingInterrupted) as info:
        quick_fit(TrainConfig(limit=100, epochs=2, out=str(tmp_path), **QUIET))
    assert (info.value.epoch, info.value.saved_epoch) == (1, 0)
    assert "in epoch 1; no epoch finished, nothing to resume" in interrupted_message(info.value)
    assert not (tmp_path / "last.npz").exists()
    assert not (tmp_path / "best_model.npz").exists()


def test_divergence_in_epoch_2_names_the_saved_best_weights(quick_fit, tmp_path, monkeypatch):
    def learning_rate(config, epoch):
        return config.lr if epoch == 1 else 1e38

    monkeypatch.setattr(lenet.trainer, "learning_rate", learning_rate)
    config = TrainConfig(limit=100, epochs=3, optimizer="sgd", lr=0.01, out=str(tmp_path), **QUIET)
    with pytest.raises(LenetError, match="training diverged") as info:
        quick_fit(config)
    message = str(info.value)
    assert "in epoch 2" in message and str(tmp_path / "best_model.npz") in message
    model, meta = model_from_checkpoint(tmp_path / "best_model.npz")
    assert meta["epoch"] == 1
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    assert load_checkpoint(tmp_path / "last.npz")[1]["epoch"] == 1
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [1]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": float("nan")}, "--lr"),
        ({"momentum": -0.5}, "--momentum"),
        ({"weight_decay": float("inf")}, "--weight-decay"),
        ({"seed": -3}, "--seed"),
        ({"limit": 1}, "--limit"),
        ({"optimizer": "lbfgs"}, "--optimizer must be one of sgd, adam, not 'lbfgs'"),
        ({"schedule": "step"}, "--schedule must be one of constant, cosine, not 'step'"),
    ],
)
def test_train_config_refuses_bad_options_before_any_work(tmp_path, options, message):
    with pytest.raises(LenetError, match=message):
        fit(TrainConfig(out=str(tmp_path / "run"), **QUIET, **options), log=lambda *args: None)
    assert not (tmp_path / "run").exists()


def test_augmentation_suits_the_data_set(monkeypatch):
    """--augment: mirror images only for Fashion-MNIST (a mirrored digit is no digit), affine when asked; stored
    True/False from earlier runs read as shift/none."""
    calls = []
    monkeypatch.setattr(lenet.trainer, "augment", lambda images, rng, **kw: calls.append(kw) or images)
    x, rng = np.zeros((2, 1, 28, 28), np.float32), np.random.default_rng(0)
    for dataset, mode in (("fashion-mnist", "shift"), ("mnist", "shift"), ("mnist", "affine")):
        lenet.trainer.augmented(TrainConfig(dataset=dataset, augment=mode), x, rng)
    assert calls == [{"flip": True, "affine": False}, {"flip": False, "affine": False}, {"flip": False, "affine": True}]
    assert lenet.trainer.augmented(TrainConfig(augment="none"), x, rng) is x and len(calls) == 3
    assert TrainConfig(augment=True).augment == "shift" and TrainConfig(augment=False).augment == "none"
    with pytest.raises(LenetError, match="--augment must be one of none, shift, affine, not 'rotate'"):
        TrainConfig(augment="rotate").check()


def test_format_safetensors_keeps_the_best_weights_as_safetensors(quick_fit, tmp_path):
    """--format safetensors: best_model.safetensors (which test.py's loader and safetensors read), last.npz."""
    pytest.importorskip("safetensors")
    history, logged = quick_fit(TrainConfig(limit=100, epochs=1, out=str(tmp_path), format="safetensors", **QUIET))
    assert (tmp_path / "best_model.safetensors").exists() and not (tmp_path / "best_model.npz").exists()
    assert (tmp_path / "last.npz").exists() and str(tmp_path / "best_model.safetensors") in logged[-1]
    model, meta = model_from_checkpoint(tmp_path / "best_model.safetensors")
    assert meta["epoch"] == 1 and meta["val_acc"] == history["val_acc"].iloc[0]
    with pytest.raises(LenetError, match="--format must be one of npz, safetensors, not 'onnx'"):
        TrainConfig(format="onnx").check()
