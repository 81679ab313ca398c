"""The command lines as a user meets them: hints that work when pasted, --help with every default, one-line
refusals, python -m lenet, and logs that read well (a bar only on a terminal, each epoch's line at once)."""

import argparse
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, needs_data

import lenet.commands.test
import lenet.commands.train
from lenet.backend import cupy_available
from lenet.cli import invocation, program_name, shown_python

TIMEOUT_S = 180


def run(args, env, cwd=REPO, shell=False):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, shell=shell)


def one_line(stderr, prog):
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# How to run a command again


def test_invocation_names_the_python_that_runs(tmp_path):
    venv_python = str(tmp_path / ".venv" / "bin" / "python")
    assert invocation("train.py", venv_python, tmp_path) == ".venv/bin/python train.py"
    assert invocation("train.py", "/usr/bin/python3", tmp_path) == "/usr/bin/python3 train.py"
    assert invocation(str(tmp_path / "sub dir" / "train.py"), "/usr/bin/python3", tmp_path) == (
        "/usr/bin/python3 'sub dir/train.py'"
    )
    assert shown_python(venv_python, tmp_path) == ".venv/bin/python"
    assert shown_python(str(tmp_path / "python3"), tmp_path) == "./python3"


def test_invocation_of_another_command_keeps_the_form_the_user_ran(tmp_path, monkeypatch):
    python = str(tmp_path / ".venv" / "bin" / "python")
    (tmp_path / "test.py").write_text("")
    # test.py beside no train.py: the package's own form, which works wherever lenet is installed
    assert invocation("test.py", python, tmp_path, command="train") == ".venv/bin/python -m lenet train"
    (tmp_path / "train.py").write_text("")
    assert invocation("test.py", python, tmp_path, command="train") == ".venv/bin/python train.py"
    assert invocation(str(tmp_path / "test.py"), python, tmp_path, command="train") == ".venv/bin/python train.py"

    main_py = str(Path(lenet.__file__).with_name("__main__.py"))
    assert invocation(main_py, python, tmp_path, command="train") == ".venv/bin/python -m lenet train"
    assert invocation("/usr/bin/pytest", python, tmp_path, command="test") == ".venv/bin/python -m lenet test"
    pytest_main = str(Path(pytest.__file__).with_name("__main__.py"))  # python -m pytest
    assert invocation(pytest_main, python, tmp_path, command="test") == ".venv/bin/python -m lenet test"
    assert invocation(pytest_main, python, tmp_path) == ".venv/bin/python -m pytest"

    scripts = tmp_path / "bin dir"
    scripts.mkdir()
    for name in ("lenet-train", "lenet-test"):
        (scripts / name).write_text("#!/bin/sh\n")
        (scripts / name).chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")  # not on PATH: the full path, quoted for the shell
    assert invocation(str(scripts / "lenet-test"), python, tmp_path, command="train") == shlex.quote(
        str(scripts.resolve() / "lenet-train")
    )
    monkeypatch.setenv("PATH", str(scripts))  # on PATH: the bare name, as the user typed it
    assert invocation(str(scripts / "lenet-test"), python, tmp_path, command="train") == "lenet-train"
    assert invocation(str(scripts / "lenet-test"), python, tmp_path) == "lenet-test"


def test_program_name_is_how_the_command_was_run():
    assert program_name("train", "/x/train.py") == "train.py"
    assert program_name("train", "/x/.venv/bin/lenet-train") == "lenet-train"
    assert program_name("test", str(Path(lenet.__file__).with_name("__main__.py"))) == "python -m lenet test"
    assert program_name("test", lenet.commands.test.__file__) == "python -m lenet test"
    assert program_name("test", "/usr/bin/pytest") == "lenet-test"  # main() called from Python
    assert program_name("test", str(Path(pytest.__file__).with_name("__main__.py"))) == "lenet-test"


def test_python_m_lenet_lists_its_commands():
    done = run([sys.executable, "-m", "lenet", "--help"], os.environ)
    assert done.returncode == 0, done.stderr
    assert f"usage: {shown_python(cwd=REPO)} -m lenet COMMAND" in done.stdout
    assert re.search(r"^  train +train LeNet-5", done.stdout, re.M) and re.search(r"^  test +", done.stdout, re.M)
    done = run([sys.executable, "-m", "lenet", "frobnicate"], os.environ)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown command 'frobnicate'" in done.stderr
    done = run([sys.executable, "-m", "lenet", "train", "--help"], os.environ)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m lenet train "), done.stdout


# ---------------------------------------------------------------------------------------------------------
# --help shows every default


class _Parsed(Exception):
    pass


def benchmark_parser(monkeypatch):
    """benchmarks/run.py's parser, taken from its parse_args before it parses anything."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # for its `from common import ...`
    spec = importlib.util.spec_from_file_location("benchmarks_run", REPO / "benchmarks" / "run.py")
    benchmark_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark_run)

    def grab(parser, *args, **kwargs):
        raise _Parsed(parser)

    with monkeypatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", grab)
        with pytest.raises(_Parsed) as caught:
            benchmark_run.parse_args([])
    return caught.value.args[0]


def shown_default(action):
    """How a default looks in a help text: what %(default)s makes of it, lists as the comma-separated form."""
    if isinstance(action.default, (list, tuple)):
        return ",".join(map(str, action.default))
    return str(action.default)


def test_every_option_shows_its_default(monkeypatch):
    parsers = {
        "train": lenet.commands.train.build_parser(),
        "test": lenet.commands.test.build_parser(),
        "benchmarks/run.py": benchmark_parser(monkeypatch),
    }
    checked = 0
    for name, parser in parsers.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction)):
                continue
            flag = f"{name} {action.option_strings[0]}"
            text = " ".join(formatter._expand_help(action).split()) if action.help else ""
            assert re.search(r"\(default[ :]", text), f"{flag}: its help names no default: {text!r}"
            if action.default is not None:
                assert shown_default(action) in text, f"{flag}: help {text!r} does not show {action.default!r}"
            checked += 1
    assert checked >= 25  # train.py alone has 19 options with a value


def test_limit_help_says_how_the_images_are_split():
    (limit,) = [a for a in lenet.commands.train.build_parser()._actions if "--limit" in a.option_strings]
    assert "--val-fraction" in limit.help and "800 to train on, 200 to validate" in limit.help


# ---------------------------------------------------------------------------------------------------------
# One-line refusals that say what to do


@pytest.mark.parametrize("command", [lenet.commands.train, lenet.commands.test], ids=["train", "test"])
def test_a_data_dir_that_does_not_exist_is_refused_not_created(command, tmp_path, capsys):
    missing = tmp_path / "fashoin-mnist"  # a typo
    with pytest.raises(SystemExit) as done:
        command.main(["--data-dir", str(missing), "--out", str(tmp_path / "run")])
    assert done.value.code == 2
    message = one_line(capsys.readouterr().err, program_name(command.__name__.rsplit(".", 1)[1]))
    assert f"no such folder: {missing}" in message
    assert f"create it first: mkdir -p {missing}" in message
    assert not missing.exists() and not (tmp_path / "run").exists()

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    with pytest.raises(SystemExit):
        command.main(["--data-dir", str(a_file)])
    assert f"not a folder: {a_file}" in capsys.readouterr().err


def test_missing_checkpoint_says_what_to_train_first(tmp_path, capsys):
    checkpoint = tmp_path / "my run" / "best_model.npz"
    assert lenet.commands.test.main(["--checkpoint", str(checkpoint)]) == 2
    message = one_line(capsys.readouterr().err, "lenet-test")
    hint = f"{shlex.quote(shown_python())} -m lenet train --out {shlex.quote(str(checkpoint.parent))}"
    assert message.endswith(f"no such file; train first: {hint}"), message


def test_the_train_first_hint_works_as_pasted(tmp_path, offline_env):
    """python test.py from the checkout prints how to run train.py with the same Python; pasted, it runs."""
    checkpoint = tmp_path / "run" / "best_model.npz"
    done = run([sys.executable, "test.py", "--checkpoint", str(checkpoint)], offline_env)
    assert done.returncode == 2
    message = one_line(done.stderr, "test.py")
    hint = message.split("train first: ", 1)[1]
    assert hint == f"{shlex.quote(shown_python(cwd=REPO))} train.py --out {shlex.quote(str(checkpoint.parent))}"
    pasted = run(f"{hint} --help", offline_env, shell=True)
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.startswith("usage: train.py ")


# ---------------------------------------------------------------------------------------------------------
# Logs: a bar only on a terminal, every epoch's line as it is printed


class Terminal(io.StringIO):
    def isatty(self):
        return True


@needs_data
@pytest.mark.parametrize(
    "progress, tqdm_disable, terminal, bar",
    [(True, None, True, True), (False, None, True, False), (True, "1", True, False), (True, None, False, False)],
    ids=["terminal", "--no-progress", "TQDM_DISABLE=1", "not a terminal"],
)
def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, progress, tqdm_disable, terminal, bar):
    from lenet.options import TrainConfig
    from lenet.trainer import fit

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    if tqdm_disable:
        monkeypatch.setenv("TQDM_DISABLE", tqdm_disable)
    stdout, stderr = io.StringIO(), Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    fit(TrainConfig(limit=300, epochs=1, out=str(tmp_path), progress=progress, textbook=True))
    assert ("\r" in stderr.getvalue() and "epoch 1" in stderr.getvalue()) == bar, stderr.getvalue()
    assert re.search(r"^epoch +1/1 ", stdout.getvalue(), re.M)


# Runs train.py, holding epoch 2 back (its progress bar is made only once the test has seen epoch 1's line, or
# after five minutes): an epoch line that waited in a buffer until exit would never be seen in time.
HOLD_EPOCH_2 = """
import runpy, sys, time
from pathlib import Path
import tqdm

go = Path(sys.argv.pop(1))

class HeldBack(tqdm.tqdm):
    made = 0

    def __init__(self, *args, **kwargs):
        HeldBack.made += 1
        deadline = time.monotonic() + 300
        while HeldBack.made == 2 and not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        super().__init__(*args, **kwargs)

tqdm.tqdm = HeldBack
sys.argv.pop(0)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@needs_data
def test_redirected_log_has_one_line_per_epoch_as_it_happens(tmp_path, offline_env):
    """python train.py > log 2>&1: no carriage-return frames, and epoch 1's line is in the file during epoch 2."""
    log, go, out = tmp_path / "log", tmp_path / "go", tmp_path / "run"
    args = [sys.executable, "-c", HOLD_EPOCH_2, str(go), "train.py", "--limit", "300", "--epochs", "2", "--out", out]
    with open(log, "wb") as f:
        proc = subprocess.Popen(list(map(str, args)), cwd=REPO, env=offline_env, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not re.search(r"^epoch +1/2 ", log.read_text(), re.M) and proc.poll() is None:
            assert time.monotonic() < deadline, (
                f"epoch 1's line did not arrive while epoch 2 waited:\n{log.read_text()}"
            )
            time.sleep(0.05)
        assert proc.poll() is None, f"train.py ended before epoch 2 was let go:\n{log.read_text()}"
        go.touch()
        assert proc.wait(timeout=TIMEOUT_S) == 0, log.read_text()
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert "\r" not in text
    assert [line.split()[1] for line in text.splitlines() if re.match(r"epoch +\d+/2 ", line)] == ["1/2", "2/2"]
    assert "fashion-mnist: 240 training and 60 validation images" in text  # --limit 300, split 80/20


# ---------------------------------------------------------------------------------------------------------
# Run by a Python that lacks lenet's packages


@pytest.mark.parametrize(
    "script",
    [
        "train.py",
        "test.py",
        "demo.py",
        "visualize.py",
        "benchmarks/run.py",
        "benchmarks/epoch.py",
        "benchmarks/layers.py",
        "benchmarks/gpu_profile.py",
    ],
)
def test_a_python_without_lenets_packages_gets_the_setup_command(script):
    """`python3 train.py` with the machine's own Python (no NumPy, no tqdm there): one line naming the missing
    package and the command that sets up the environment, exit 2, no traceback. -S leaves site-packages out."""
    result = subprocess.run(
        [sys.executable, "-S", script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert "Traceback" not in result.stderr and result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{Path(script).name}: No module named ") and sys.executable in line, line
    assert "python3 -m venv .venv && .venv/bin/pip install -e ." in line and f".venv/bin/python {script}" in line


@pytest.mark.skipif(cupy_available(), reason="a GPU is present: its cases run instead of skipping")
def test_the_suites_gpu_cases_skip_in_one_line():
    """Where no GPU answers, the CuPy cases of a test run are one line of the summary, not one line per case."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_optim.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    gpu_lines = [line for line in result.stdout.splitlines() if "CuPy" in line]
    assert len(gpu_lines) == 1 and re.match(r"SKIPPED \d+ GPU cases: ", gpu_lines[0]), result.stdout[-3000:]
