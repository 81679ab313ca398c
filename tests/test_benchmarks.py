"""The benchmark scripts run end to end on a tiny setting and write what they promise. No timing is asserted."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from lenet.backend import cupy_available

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
RESULT_COLUMNS = ["backend", "mode", "batch_size", "images_per_s_median", "images_per_s_min", "images_per_s_max"]


def bench(script, *args):
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_run_quick_writes_results_and_chart(tmp_path):
    backends = "numpy,torch" if HAS_TORCH else "numpy"  # without PyTorch, the torch part is left out
    done = bench("run.py", "--quick", "--backends", backends, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert set(RESULT_COLUMNS + ["ratio_to_torch"]) <= set(reader.fieldnames)
        rows = list(reader)
    expected = {(b, mode) for b in backends.split(",") for mode in ("train", "infer")}
    assert {(r["backend"], r["mode"]) for r in rows} == expected
    for r in rows:
        assert int(r["batch_size"]) > 0
        assert all(float(r[c]) > 0 for c in RESULT_COLUMNS[3:]), r
    assert (tmp_path / "throughput.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_layers_tiny_prints_every_layer_and_writes_csv(tmp_path):
    done = bench("layers.py", "--batch-size", "4", "--repeats", "2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "layers.csv", newline="") as f:
        parts = [r["part"] for r in csv.DictReader(f)]
    assert parts == ["c1+act1+s2", "c3+act3+s4", "flatten", "f5", "act5", "f6", "act6", "f7", "loss", "sgd"]
    assert "total" in done.stdout


BAD_FLAGS = [
    ("run.py", "--backends", "foo"),
    ("run.py", "--batch-sizes", "32,x"),
    ("layers.py", "--batch-size", "0"),
]
if not cupy_available():  # asking for a GPU that is not there is a bad flag too
    BAD_FLAGS += [("run.py", "--backends", "cupy"), ("layers.py", "--backend", "cupy")]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=" ".join)
def test_bad_flag_is_one_line_and_exit_2(argv):
    done = bench(*argv)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "error" in done.stderr and "Traceback" not in done.stderr


def test_epoch_benchmark_runs_on_a_slice_of_the_real_data():
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    args = ["--limit", "400", "--repeats", "1", "--step-seconds", "0.1"]
    done = subprocess.run(
        [sys.executable, "benchmarks/epoch.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "320 training images" in done.stdout
    ratio = [line for line in done.stdout.splitlines() if line.startswith("ratio real / predicted")]
    assert len(ratio) == 1 and float(ratio[0].split()[-1]) > 0
