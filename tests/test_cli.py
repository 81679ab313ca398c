"""lenet/cli.py: hints that work when pasted, python -m lenet."""

import subprocess
import sys
from pathlib import Path

from lenet.cli import invocation

REPO = Path(__file__).resolve().parents[1]


def test_invocation_names_the_python_that_runs(tmp_path):
    venv_python = str(tmp_path / ".venv" / "bin" / "python")
    assert invocation("train.py", venv_python, tmp_path) == ".venv/bin/python train.py"
    assert invocation("train.py", "/usr/bin/python3", tmp_path) == "/usr/bin/python3 train.py"
    assert invocation(str(tmp_path / "sub dir" / "train.py"), "/usr/bin/python3", tmp_path) == (
        "/usr/bin/python3 'sub dir/train.py'"
    )


def test_python_m_lenet_lists_its_commands():
    done = subprocess.run([sys.executable, "-m", "lenet", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "train" in done.stdout and "test" in done.stdout
    done = subprocess.run([sys.executable, "-m", "lenet", "frobnicate"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown command 'frobnicate'" in done.stderr
