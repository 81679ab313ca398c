"""notebooks/lenet.ipynb runs top to bottom, in this environment's Python, and shows what its prose says it shows.

The notebook is executed once, in memory (nbclient; nothing is written next to it or anywhere in the checkout), by a
kernel that is this interpreter: a kernel spec written to a temporary JUPYTER_PATH names sys.executable, so no other
Python's "python3" kernel can answer. The tests then read the cells' outputs by cell id.
"""

import json
import re
import sys
from pathlib import Path

import pytest
from helpers import needs_data  # the real data set, or why the tests that need it skip

# The dev extra brings these; the floors environment of .ci/run (the lowest dependency versions, no extras) skips.
nbformat = pytest.importorskip("nbformat", reason="running the notebook needs the dev extra (pip install -e '.[dev]')")
pytest.importorskip("nbclient", reason="running the notebook needs the dev extra (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="running the notebook needs the dev extra (pip install -e '.[dev]')")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "lenet.ipynb"
CELL_TIMEOUT_S = 120  # the training cell takes seconds; a hung kernel fails instead of stalling the suite

pytestmark = needs_data


def _kernel_env(monkeypatch, tmp):
    """Jupyter's and IPython's files under tmp, and a "python3" kernel spec that runs this interpreter."""
    spec = tmp / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "lenet's venv", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp / "jupyter"))  # searched before every other place
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "runtime"))  # the connection file
    monkeypatch.setenv("IPYTHONDIR", str(tmp / "ipython"))  # no profile or startup file of the user's
    # Opts in to platformdirs' folders now: jupyter_core releases that still plan the move warn about it
    # (DeprecationWarning, an error under this suite's filterwarnings) unless it is set.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebook's %matplotlib inline must decide
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # as in test_train.py: spinning BLAS threads on a busy machine, not results


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after a run, with one cell appended that prints the kernel's interpreter."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)", id="which-python"))
    before = sorted(p.name for p in NOTEBOOK.parent.iterdir())
    with pytest.MonkeyPatch.context() as monkeypatch:
        _kernel_env(monkeypatch, tmp_path_factory.mktemp("jupyter"))
        client = NotebookClient(
            nb,
            kernel_name="python3",
            timeout=CELL_TIMEOUT_S,
            startup_timeout=60,
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # the folder a reader runs it in
        )
        client.execute()
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == before, "the notebook wrote files next to itself"
    return {cell.id: cell for cell in nb.cells}


def stdout(cell):
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    ran = [cell.id for cell in nb.cells if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
    assert not ran, f"cells committed with outputs (clear them before committing): {ran}"


def test_it_runs_in_this_python_and_writes_nothing_to_stderr(executed):
    assert stdout(executed["which-python"]).strip() == sys.executable
    # A warning in the kernel (lenet's own included) would show here: the kernel has no filterwarnings = error.
    noisy = {
        cell_id: out.text
        for cell_id, cell in executed.items()
        for out in getattr(cell, "outputs", [])
        if out.output_type == "stream" and out.name == "stderr"
    }
    assert not noisy


def test_im2col_columns_and_adjoint(executed):
    text = stdout(executed["patches"])
    assert "column 3: the 3x3 patch whose top-left pixel is at row 1, column 1: [ 5  6  7  9 10 11 13 14 15]" in text
    inner = re.findall(r"<.*?> = (-?\d+\.\d+)", stdout(executed["col2im"]))
    assert len(inner) == 2 and inner[0] == inner[1]  # printed to 12 decimals


def test_conv2d_backward_matches_central_differences(executed):
    gaps = re.findall(r"(dL/\w+) +(\d+) numbers, largest gap .*: (\S+)", stdout(executed["central-differences"]))
    assert [(name, int(n)) for name, n, _ in gaps] == [("dL/dx", 25), ("dL/dweight", 18), ("dL/dbias", 2)]
    assert all(float(gap) < 1e-7 for _, _, gap in gaps)


def test_check_layer_passes_the_right_layer_and_catches_the_broken_one(executed):
    passed = re.findall(r"Scale (\w+): relative error (\S+), below", stdout(executed["gradcheck-pass"]))
    assert [name for name, _ in passed] == ["input", "weight"]
    assert all(float(error) < 1e-8 for _, error in passed)
    caught = stdout(executed["gradcheck-fail"])
    assert "check_layer caught the bug (GradientCheckError)" in caught
    assert re.search(r"BrokenScale weight: relative error \S+ >= 1e-06 \(shape \(3,\)\)", caught), caught
    assert "the bug went unseen" not in caught


def test_the_short_training_run_learns(executed):
    rows = re.findall(
        r"epoch (\d): train loss (\S+), train accuracy (\S+), held-out accuracy (\S+)", stdout(executed["train"])
    )
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    losses = [float(r[1]) for r in rows]
    held_out = [float(r[3]) for r in rows]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 1.5  # chance is ln 10 = 2.30
    assert held_out[-1] > 0.5  # five times chance on images it never trained on


def test_the_pictures_are_drawn_inline(executed):
    for cell_id, count in (("data", 1), ("forward", 1), ("curves", 1), ("filters", 1), ("after", 1)):
        images = [out for out in executed[cell_id].outputs if "image/png" in out.get("data", {})]
        assert len(images) == count, cell_id
