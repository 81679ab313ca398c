"""lenet as a package: the sdist holds what its tests need, the build gives no deprecation warning, and
`pip install <checkout>` into a fresh virtual environment gives working commands in any folder.

Slow (a build with its own setuptools, a venv, a short training run): the builds run once per module.
The fresh venv installs lenet alone (--no-deps) and reaches numpy, pandas, ... through a .pth file
naming this environment's site-packages, so nothing is downloaded but the build's setuptools.
Both build from a copy of the checkout in a temporary folder: setuptools writes build/ and lenet.egg-info/
into the folder it builds, and a test suite must leave the checkout as it found it.
"""

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
from pathlib import Path

import pytest
from helpers import MISSING_DATA, REPO

TIMEOUT_S = 600
_BUILD = importlib.util.find_spec("build")
HAS_BUILD = _BUILD is not None and _BUILD.origin is not None  # not the checkout's own build/ folder
needs_build = pytest.mark.skipif(not HAS_BUILD, reason="the 'build' package is not installed (pip install build)")


def run(args, cwd, env=None):
    done = subprocess.run(list(map(str, args)), cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return done


def tracked_files(*folders):
    """The files git tracks under folders (relative paths), or None outside a git checkout."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    done = run(["git", "ls-files", "-z", "--", *folders], REPO)
    return set(done.stdout.split("\0")) - {""} if done.returncode == 0 else None


def untracked_files():
    """What git shows in the checkout beyond its tracked files: new files and ignored ones (build/, ...)."""
    done = run(["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"], REPO)
    return {line[3:] for line in done.stdout.splitlines() if line.startswith(("?? ", "!! "))}


# What a copy of the checkout leaves out where git cannot say (an unpacked sdist): these top-level folders
# (lenet/data/ is part of the package), egg-info and __pycache__ folders.
NOT_COPIED = {".git", ".venv", "build", "dist", "data", "runs", "bench-results", ".pytest_cache", ".ruff_cache"}


def not_copied(folder, names):
    """shutil.copytree's ignore: what a build must not see of the checkout."""
    left_out = {n for n in names if n.endswith(".egg-info") or n == "__pycache__"}
    return left_out | (NOT_COPIED & set(names) if Path(folder) == REPO else set())


@pytest.fixture(scope="module")
def checkout_untouched():
    """What git shows beyond the tracked files before this module's builds, to compare after them."""
    return untracked_files() if tracked_files() is not None else None


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory, checkout_untouched):
    """A copy of the checkout as git sees it (tracked and new files, nothing ignored) to build from."""
    copy = tmp_path_factory.mktemp("checkout") / "lenet"
    done = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO)
    if tracked_files() is None or done.returncode != 0:
        shutil.copytree(REPO, copy, ignore=not_copied)
        return copy
    for name in set(done.stdout.split("\0")) - {""}:
        if (REPO / name).is_file():  # not a tracked file deleted in the work tree
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    return copy


@pytest.fixture(scope="module")
def sdist(tmp_path_factory, checkout_copy):
    """(the sdist's member names without the top folder, the build's output)."""
    out = tmp_path_factory.mktemp("dist")
    done = run([sys.executable, "-m", "build", "--sdist", "--outdir", out, checkout_copy], checkout_copy)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (archive,) = out.glob("lenet-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.10.12+, 3.11.4+
        tar.extractall(out / "unpacked", **safe)
    (root,) = (out / "unpacked").iterdir()
    return names, done.stdout + done.stderr, root


@needs_build
def test_sdist_ships_the_tests_with_everything_they_import(sdist):
    names, _, _ = sdist
    for name in ("LICENSE", "README.md", "pyproject.toml", "train.py", "test.py", "tests/conftest.py"):
        assert name in names, name
    tracked = tracked_files("tests", "benchmarks", "lenet")
    if tracked is not None:  # in a git checkout: every tracked test, helper and module
        missing = sorted(tracked - names)
        assert not missing, f"tracked but not in the sdist: {missing}"
    assert not [n for n in names if n.endswith((".pyc", ".npz")) or "__pycache__" in n or n.startswith(".ci")]


@needs_build
def test_sdist_tests_collect_from_the_unpacked_sdist(sdist):
    _, _, root = sdist
    done = run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = re.search(r"(\d+) tests? collected", done.stdout)
    assert collected and int(collected.group(1)) > 100, done.stdout[-2000:]


@needs_build
def test_build_gives_no_deprecation_warning(sdist):
    _, output, _ = sdist
    assert "deprecat" not in output.lower(), output  # e.g. setuptools on `license = { text = ... }`


def test_build_outputs_are_ignored_by_git():
    if tracked_files() is None:
        pytest.skip("not a git checkout")
    done = run(["git", "check-ignore", "--no-index", "build/lib/lenet/model.py", "dist/lenet-0.1.0.tar.gz"], REPO)
    assert done.stdout.split() == ["build/lib/lenet/model.py", "dist/lenet-0.1.0.tar.gz"], done.stdout


# ---------------------------------------------------------------------------------------------------------
# pip install <checkout> into a fresh venv


@pytest.fixture(scope="module")
def installed(tmp_path_factory, checkout_copy):
    """A fresh venv with `pip install <a copy of the checkout>` done in it: its bin folder."""
    root = tmp_path_factory.mktemp("installed")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "lenet_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    done = run([python, "-m", "pip", "install", "--no-deps", checkout_copy], root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "venv" / "bin"


@needs_build
def test_builds_leave_nothing_in_the_checkout(sdist, installed, checkout_untouched):
    """No build/, dist/ or new file after the sdist and pip install: they built a copy of the checkout."""
    if checkout_untouched is None:
        pytest.skip("not a git checkout")
    left = sorted(untracked_files() - checkout_untouched)
    assert left == [], f"the builds left these in the checkout: {left}"


def test_installed_package_has_its_commands_and_no_checkout_files(installed, offline_env, tmp_path):
    bin_dir = installed
    where = run([bin_dir / "python", "-c", "import lenet; print(lenet.__file__)"], tmp_path, offline_env)
    assert Path(where.stdout.strip()).is_relative_to(bin_dir.parent), where.stdout + where.stderr
    site = Path(where.stdout.strip()).parents[1]
    assert not (site / "train.py").exists() and not (site / "tests").exists()
    listed = run([bin_dir / "python", "-m", "lenet", "--help"], tmp_path, offline_env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^  train ", listed.stdout, re.M) and re.search(r"^  test ", listed.stdout, re.M)
    for command in ("lenet-train", "lenet-test"):
        helped = run([bin_dir / command, "--help"], tmp_path, offline_env)
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: {command} "), helped.stderr


def test_installed_test_command_hint_works_as_pasted(installed, offline_env, tmp_path):
    bin_dir = installed
    done = run([bin_dir / "lenet-test", "--checkpoint", tmp_path / "run" / "best_model.npz"], tmp_path, offline_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    hint = done.stderr.strip().split("train first: ", 1)[1]
    assert hint == f"{shlex.quote(str((bin_dir / 'lenet-train').resolve()))} --out {shlex.quote(str(tmp_path / 'run'))}"
    pasted = subprocess.run(f"{hint} --help", shell=True, cwd=tmp_path, env=offline_env, capture_output=True, text=True)
    assert pasted.returncode == 0 and pasted.stdout.startswith("usage: lenet-train "), pasted.stderr


@pytest.mark.skipif(MISSING_DATA is not None, reason=MISSING_DATA or "")
def test_installed_commands_train_and_test_from_another_folder(installed, offline_env, tmp_path):
    bin_dir = installed
    train = run([bin_dir / "lenet-train", "--epochs", 1, "--limit", 2000, "--out", "X"], tmp_path, offline_env)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert re.search(r"^epoch +1/1 ", train.stdout, re.M), train.stdout
    assert "1600 training and 400 validation images" in train.stdout
    assert "worker process" not in train.stderr, train.stderr  # the installed lenet's workers started and ran
    test = run([bin_dir / "lenet-test", "--checkpoint", "X/best_model.npz"], tmp_path, offline_env)
    assert test.returncode == 0, test.stderr
    assert re.search(r"test accuracy on fashion-mnist \(10000 images\): 0\.\d+", test.stdout), test.stdout
    assert (tmp_path / "X" / "confusion_matrix.png").is_file()
