"""Run folders (lenet/runs.py and what train.py does with them): the fresh-start policy, the lock, stale
temporaries, Ctrl-C and SIGTERM in every window, options that --resume ignores, config.json.

Where signals or two processes matter, train.py runs as a subprocess on the real Fashion-MNIST (see
test_train.py's helpers); the other windows are hit in process, with the data loaded once.
"""

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import (
    MISSING_DATA,
    REPO,
    SUBPROCESS_TIMEOUT_S,
    assert_records_match_last,
    needs_data,
    one_line_error,
    run_script,
    without_busy_notice,
)
from threadpoolctl import threadpool_limits

import lenet.resume
import lenet.runfiles
import lenet.trainer
from lenet.checkpoint import load_checkpoint, save_checkpoint
from lenet.cli import shown_python
from lenet.commands.train import interrupted_message
from lenet.data import load_dataset
from lenet.errors import LenetError
from lenet.fast import FastRunner
from lenet.model import LeNet5
from lenet.options import TrainConfig
from lenet.runs import RunLock, check_fresh_start, remove_stale_temporaries
from lenet.trainer import TrainingInterrupted, fit

QUICK = ["--limit", 300, "--no-progress"]


@pytest.fixture
def env(offline_env):
    """conftest.py's offline environment, by a shorter name."""
    return offline_env


def fake_run(out, epoch=2, epochs=5, val_acc=0.75, **options):
    """A last.npz and best_model.npz as a run that finished `epoch` of `epochs` would leave them."""
    model = LeNet5()
    config = TrainConfig(epochs=epochs, out=str(out), **options)
    meta = {"dataset": "fashion-mnist", "train_config": config.stored(), "epoch": epoch, "val_acc": val_acc}
    save_checkpoint(out / "best_model.npz", model, meta)
    rows = [[e, 1.0, 0.5, 1.0, val_acc, 0.1] for e in range(1, epoch + 1)]
    rng_state = json.loads(json.dumps(np.random.default_rng([0, 1]).bit_generator.state))
    resume = {**meta, "best_val_acc": val_acc, "history": rows, "rng_state": rng_state}
    save_checkpoint(out / "last.npz", model, resume, {"steps": 3, "lr": 1e-3})


# ---------------------------------------------------------------------------------------------------------
# The policy, the lock, the temporaries (no training)


def test_a_fresh_start_refuses_a_folder_that_holds_a_run(tmp_path):
    fake_run(tmp_path, epoch=2, epochs=5, val_acc=0.75)
    with pytest.raises(LenetError) as info:
        check_fresh_start(tmp_path, overwrite=False)
    message = str(info.value)
    assert "epoch 2 of 5 finished, best val acc 0.7500" in message
    assert all(flag in message for flag in ("--resume", "--overwrite", "--out"))
    assert (tmp_path / "best_model.npz").exists() and (tmp_path / "last.npz").exists()


def test_overwrite_removes_the_run_files_and_nothing_else(tmp_path):
    fake_run(tmp_path)
    for name in ("history.csv", "curves.png", "batch.png", "config.json", "confusion_matrix.png", "notes.txt"):
        (tmp_path / name).write_text("x")
    check_fresh_start(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    check_fresh_start(tmp_path, overwrite=False)  # an empty folder holds no run


def test_an_unreadable_run_is_still_refused(tmp_path):
    (tmp_path / "last.npz").write_bytes(b"not a zip")
    with pytest.raises(LenetError, match="already holds a run \\(last.npz, not readable\\)"):
        check_fresh_start(tmp_path, overwrite=False)


def test_stale_temporaries_of_the_run_files_are_removed(tmp_path):
    stale = [".best_model.npz.0123456789ab.tmp", ".curves.png.abcdef012345.tmp", ".last.npz.000000000000.tmp"]
    kept = [".confusion_matrix.png.0123456789ab.tmp", ".notes.txt.0123456789ab.tmp", "best_model.npz", ".lock"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_the_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    """A second process cannot take the lock while the first holds it; kill -9 of the holder frees it."""
    code = f"from lenet.runs import RunLock\nwith RunLock({str(tmp_path)!r}):\n print(1)\n input()"
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout.readline() == "1\n"
            with pytest.raises(LenetError) as info:
                RunLock(tmp_path).__enter__()
            assert str(info.value) == (
                f"{tmp_path} is in use by another train.py (PID {holder.pid}); wait for it to finish, "
                "or choose another --out"
            )
        finally:
            holder.kill()  # kill -9
    assert (tmp_path / ".lock").read_text() == f"{holder.pid}\n"  # kill -9 left its .lock behind ...
    with RunLock(tmp_path):  # ... and the OS dropped its lock: the next run takes it
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / ".lock").exists()


def test_a_run_that_ends_leaves_no_lock_and_no_folder_it_made_empty(tmp_path):
    out = tmp_path / "runs" / "new"
    with RunLock(out):
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert list(tmp_path.iterdir()) == []  # both folders it made, empty, are gone
    out.mkdir(parents=True)
    with RunLock(out):  # a folder the user made stays, even empty
        pass
    assert out.is_dir() and list(out.iterdir()) == []
    with RunLock(tmp_path / "kept") as lock:  # a folder the run wrote in stays, without the .lock
        (lock.out / "last.npz").write_bytes(b"x")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["last.npz"]


def test_a_lock_removed_as_it_is_taken_is_taken_anew(tmp_path, monkeypatch):
    """A run that ends removes its .lock while it still holds it: a run that opened that file just before, and
    then gets the flock on it, must not take it for the folder's lock (two runs would then hold the folder)."""
    import lenet.runs

    real_flock, flocked = lenet.runs.fcntl.flock, []

    def flock(fd, operation):
        if not flocked:  # between our open and our flock, the holder ends: .lock is removed
            os.unlink(tmp_path / ".lock")
        flocked.append(fd)
        return real_flock(fd, operation)

    monkeypatch.setattr(lenet.runs.fcntl, "flock", flock)
    with RunLock(tmp_path):
        assert len(flocked) == 2  # the removed file, then the new .lock
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(LenetError, match="is in use by another train.py"):
            RunLock(tmp_path).__enter__()


# ---------------------------------------------------------------------------------------------------------
# train.py as a process


def start_train(args, env):
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *map(str, args)],
        cwd=REPO,
        env={**env, "PYTHONUNBUFFERED": "1"},  # each line as it is printed, through the pipe
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epoch_line(process):
    """Read the process's stdout until its first epoch line (tqdm is off: lines are whole)."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, f"train.py ended before its first epoch: {process.communicate()}"
        if re.match(r"epoch +1/", line):
            return
    raise AssertionError("no epoch line")


def interrupted_run(out, env, sig, meanwhile=None):
    """A long train.py run into `out`, sent `sig` after its first epoch line (and after meanwhile(process), if
    given): (its exit status, its stderr)."""
    with start_train([*QUICK, "--batch-size", 8, "--epochs", 1000, "--out", out], env) as run:
        try:
            wait_for_epoch_line(run)
            if meanwhile is not None:
                meanwhile(run)
            run.send_signal(sig)
            stderr = without_busy_notice(run.communicate(timeout=SUBPROCESS_TIMEOUT_S)[1])
        finally:
            run.kill()
    return run.returncode, stderr


def saved_epochs(message):
    match = re.search(r"epochs? (?:1-)?(\d+) (?:is|are) saved", message)
    assert match, message
    return int(match.group(1))


@needs_data
def test_two_runs_on_one_folder_and_sigterm(tmp_path, env):
    """The second train.py on a folder in use exits 2 naming the holder; SIGTERM stops the first with 143."""
    out = tmp_path / "run"

    def second_run(first):
        line = one_line_error(run_script("train.py", [*QUICK, "--epochs", 1, "--out", out], env), "train.py")
        assert f"{out} is in use by another train.py (PID {first.pid})" in line

    returncode, stderr = interrupted_run(out, env, signal.SIGTERM, meanwhile=second_run)
    assert returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert re.match(r"train.py: stopped by SIGTERM (in|after) epoch \d+; ", stderr), stderr
    meta = load_checkpoint(out / "last.npz")[1]
    assert saved_epochs(stderr) == meta["epoch"]
    assert f"best val acc {load_checkpoint(out / 'best_model.npz')[1]['val_acc']:.4f}" in stderr
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert_records_match_last(out)  # the epoch records cut to last.npz's epochs, wherever SIGTERM fell


@needs_data
def test_ctrl_c_says_how_to_resume_and_the_hint_works_as_pasted(tmp_path, env):
    out = tmp_path / "run"
    returncode, stderr = interrupted_run(out, env, signal.SIGINT)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert re.match(r"train.py: stopped by Ctrl-C (in|after) epoch \d+; ", stderr), stderr
    done = saved_epochs(stderr)
    assert load_checkpoint(out / "last.npz")[1]["epoch"] == done
    hint = stderr.split("continue with: ")[1].strip()
    # The Python as a shell in the checkout names it: relative when it lies inside (CI's .venv), else its full path.
    python = shlex.quote(shown_python(sys.executable, REPO))
    assert hint == f"{python} train.py --resume --out {shlex.quote(str(out))}"
    resumed = subprocess.run(
        [*shlex.split(hint), "--epochs", str(done + 1), "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'last.npz'} after epoch {done}" in resumed.stdout
    assert load_checkpoint(out / "last.npz")[1]["epoch"] == done + 1
    assert json.loads((out / "config.json").read_text())["epochs"] == done + 1


@needs_data
def test_a_second_fresh_run_refuses_then_overwrite_starts_over(tmp_path, env):
    out = tmp_path / "run"
    assert run_script("train.py", [*QUICK, "--epochs", 2, "--out", out], env).returncode == 0
    before = (out / "best_model.npz").read_bytes()
    refused = run_script("train.py", [*QUICK, "--epochs", 1, "--out", out], env)
    line = one_line_error(refused, "train.py")
    assert f"{out} already holds a run (last.npz: epoch 2 of 2 finished, best val acc " in line
    assert (out / "best_model.npz").read_bytes() == before
    again = run_script("train.py", [*QUICK, "--epochs", 1, "--seed", 1, "--out", out, "--overwrite"], env)
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(out / "last.npz")[1]["epoch"] == 1
    assert (out / "history.csv").read_text().count("\n") == 2  # the header and epoch 1 of the new run
    config = (out / "config.json").read_text()
    assert config == json.dumps(TrainConfig(**{**json.loads(config)}).stored(), indent=2, sort_keys=True) + "\n"
    assert json.loads(config)["seed"] == 1 and "overwrite" not in config


def test_a_stored_data_dir_is_only_looked_in(tmp_path, env):
    """--resume of a run whose last.npz names a data folder that is gone: one line, and no download into it."""
    out, gone = tmp_path / "run", tmp_path / "gone"
    out.mkdir()
    fake_run(out, epoch=1, epochs=2, data_dir=str(gone), limit=300)
    result = run_script("train.py", ["--resume", "--out", out, "--no-progress"], env)
    line = one_line_error(result, "train.py")
    assert f"looked in: {gone} (no such folder)" in line and "downloading is turned off" in line
    assert not gone.exists()
    _, state, _ = lenet.resume.resume_from(TrainConfig(epochs=None, out=str(out), data_dir=str(gone)), out / "last.npz")
    assert state["download"]  # named on the command line: the user's folder, downloads allowed


def test_resume_names_the_options_it_ignores(tmp_path):
    fake_run(tmp_path, epoch=1, epochs=3, lr=1e-3, augment=False)  # stored as runs before the modes did
    asked = TrainConfig(epochs=4, out=str(tmp_path), lr=0.01, batch_size=32, augment="shift", threads=1)
    given = {"lr", "batch_size", "augment", "epochs", "threads", "out"}
    stored, _, ignored = lenet.resume.resume_from(asked, tmp_path / "last.npz", given)
    assert (stored.lr, stored.augment, stored.epochs, stored.threads) == (1e-3, "none", 4, 1)
    assert lenet.resume.ignored_message(ignored) == (
        "--resume keeps the stored run's --augment none, --lr 0.001; ignored: --augment shift, --lr 0.01"
    )
    # Not set on the command line: nothing to warn about, whatever the value.
    assert lenet.resume.resume_from(asked, tmp_path / "last.npz", {"epochs"})[2] == []


def test_resume_warning_is_one_line_on_stderr(tmp_path, env):
    fake_run(tmp_path, epoch=1, epochs=3, lr=1e-3, data_dir=str(tmp_path / "gone"))  # stops at the data
    result = run_script("train.py", ["--resume", "--out", tmp_path, "--lr", "0.01", "--batch-size", "32"], env)
    lines = result.stderr.splitlines()
    assert lines[0] == "train.py: warning: --resume keeps the stored run's --lr 0.001; ignored: --lr 0.01"
    assert lines[1].startswith("train.py: error: fashion-mnist data not found") and len(lines) == 2
    assert result.returncode == 2


def test_ctrl_c_while_python_imports_lenet(tmp_path):
    """The shim's own window: KeyboardInterrupt while `from lenet.commands.train import main` runs."""
    code = (
        "import builtins, runpy\n"
        "real = builtins.__import__\n"
        "def imports(name, *args, **kwargs):\n"
        "    if name == 'lenet.commands.train':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = imports\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 130
    assert result.stderr == "train.py: stopped by Ctrl-C while starting; nothing was trained\n"


# ---------------------------------------------------------------------------------------------------------
# The other windows, in process


@pytest.fixture(scope="module")
def cached_data():
    if MISSING_DATA:
        pytest.skip(MISSING_DATA)
    images, labels, class_names = load_dataset("fashion-mnist", "train")
    return images[:300].copy(), labels[:300].copy(), class_names


@pytest.fixture
def quick(cached_data, monkeypatch):
    """fit(config) on 300 cached images, no batch.png; returns what it logged."""
    monkeypatch.setattr(lenet.trainer, "load_dataset", lambda *args, **kwargs: cached_data)
    monkeypatch.setattr(lenet.trainer, "plot_images", lambda *args, **kwargs: None)

    def run(out, epochs, **options):
        logged = []
        with threadpool_limits(1, user_api="blas"):
            fit(
                TrainConfig(limit=300, epochs=epochs, out=str(out), progress=False, **options),
                FastRunner.for_config,
                logged.append,
            )
        return logged

    return run


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_curves_png_is_written_and_again_in_the_clean_up(quick, tmp_path, monkeypatch):
    monkeypatch.setattr(lenet.runfiles, "plot_history", ctrl_c)  # every try: the first and the clean-up's
    with pytest.raises(TrainingInterrupted) as info:
        quick(tmp_path, 2)
    stopped = info.value
    assert (stopped.epoch, stopped.saved_epoch, stopped.not_written) == (2, 2, ["curves.png (interrupted again)"])
    best = load_checkpoint(tmp_path / "best_model.npz")[1]["val_acc"]
    assert interrupted_message(stopped) == (
        f"stopped by Ctrl-C after epoch 2; all 2 epochs are saved in {tmp_path} (best val acc {best:.4f} in "
        "best_model.npz); not written: curves.png (interrupted again)"
    )
    assert not (tmp_path / "curves.png").exists()


def test_sigterm_on_a_full_disk_still_says_how_to_resume(quick, tmp_path, monkeypatch):
    from lenet.cli import Terminated

    real_save = lenet.trainer.save_epoch

    def save_epoch(out, model, optimizer, meta_common, progress, shuffle_rng, best_path):
        if progress.epoch == 2:
            full.append(True)  # from now on the disk is full
            raise Terminated  # SIGTERM in epoch 2, just before its files
        return real_save(out, model, optimizer, meta_common, progress, shuffle_rng, best_path)

    full, real_write, real_plot = [], lenet.runfiles.write_history, lenet.runfiles.plot_history

    def disk_full(real):
        def write(*args, **kwargs):
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args, **kwargs)

        return write

    monkeypatch.setattr(lenet.trainer, "save_epoch", save_epoch)
    monkeypatch.setattr(lenet.runfiles, "write_history", disk_full(real_write))
    monkeypatch.setattr(lenet.runfiles, "plot_history", disk_full(real_plot))
    with pytest.raises(TrainingInterrupted) as info:
        quick(tmp_path, 3)
    message = interrupted_message(info.value)
    assert message.startswith("stopped by SIGTERM in epoch 2; epoch 1 is saved in ")
    assert f"--resume --out {tmp_path}; not written: history.csv (No space left on device), curves.png (No space" in (
        message
    )
    assert load_checkpoint(tmp_path / "last.npz")[1]["epoch"] == 1


def test_config_json_and_stale_temporaries_at_the_start(quick, tmp_path, monkeypatch):
    monkeypatch.setattr(lenet.runfiles, "plot_history", lambda *args, **kwargs: None)
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".last.npz.0123456789ab.tmp"
    stale.write_bytes(b"half")
    quick(tmp_path, 1, lr=0.002)
    assert not stale.exists() and not (tmp_path / ".lock").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == TrainConfig(limit=300, epochs=1, out=str(tmp_path), lr=0.002).stored()
    assert list(config) == sorted(config)
    assert load_checkpoint(tmp_path / "last.npz")[1]["train_config"] == config


def test_ctrl_c_while_a_resumed_run_loads_its_data(tmp_path, monkeypatch):
    fake_run(tmp_path, epoch=2, epochs=5, val_acc=0.75)
    monkeypatch.setattr(lenet.trainer, "load_dataset", ctrl_c)
    with pytest.raises(TrainingInterrupted) as info:
        fit(TrainConfig(epochs=None, out=str(tmp_path), resume=True, progress=False), log=lambda line: None)
    message = interrupted_message(info.value)
    assert message.startswith(
        f"stopped by Ctrl-C before epoch 3; epochs 1-2 are saved in {tmp_path} (best val acc 0.7500 in best_model.npz)"
    )
    assert message.endswith(f" --resume --out {tmp_path}")
    assert load_checkpoint(tmp_path / "last.npz")[1]["epoch"] == 2


@pytest.mark.parametrize("stop, status, name", [(KeyboardInterrupt, 130, "Ctrl-C"), ("Terminated", 143, "SIGTERM")])
def test_run_main_turns_an_unhandled_stop_into_one_line(capsys, stop, status, name):
    from lenet import cli

    stop = getattr(cli, stop) if isinstance(stop, str) else stop

    def main():
        raise stop

    before = signal.getsignal(signal.SIGTERM)
    assert cli.run_main(main, "test.py") == status
    assert capsys.readouterr().err == f"test.py: stopped by {name}\n"
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
