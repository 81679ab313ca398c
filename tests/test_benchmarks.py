"""The benchmark scripts run end to end on a tiny setting and write what they promise. No timing is asserted."""

import contextlib
import csv
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import needs_data

from lenet.backend import cupy_available

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
RESULT_COLUMNS = ["backend", "mode", "batch_size", "images_per_s_median", "images_per_s_min", "images_per_s_max"]


def bench(script, *args, timeout=120, env=None):
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def benchmark_module(name, monkeypatch):
    """benchmarks/<name>.py imported as a module (the scripts import their neighbours by plain name)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_results(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_run_quick_writes_results_and_chart(tmp_path):
    backends = "numpy,torch" if HAS_TORCH else "numpy"  # without PyTorch, the torch part is left out
    done = bench("run.py", "--quick", "--backends", backends, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    fields, rows = read_results(tmp_path / "results.csv")
    assert set(RESULT_COLUMNS + ["ratio_to_torch", "ratio_to_torch_compile"]) <= set(fields)
    expected = {(b, mode) for b in backends.split(",") for mode in ("train", "infer")}
    assert {(r["backend"], r["mode"]) for r in rows} == expected
    for r in rows:
        assert int(r["batch_size"]) > 0
        assert all(float(r[c]) > 0 for c in RESULT_COLUMNS[3:]), r
    assert (tmp_path / "throughput.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if HAS_TORCH:  # numpy's ratio is its median over torch's, and torch is its own reference
        median = {(r["backend"], r["mode"]): float(r["images_per_s_median"]) for r in rows}
        for r in rows:
            ref = median["torch", r["mode"]]
            assert float(r["ratio_to_torch"]) == pytest.approx(median[r["backend"], r["mode"]] / ref, rel=1e-2)
            assert r["ratio_to_torch_compile"] == ""  # torch-compile was not run
    for name in ("cpu", "blas", "versions", "threads"):  # the header names the machine
        assert re.search(rf"^{name} +\S", done.stdout, re.MULTILINE), name
    cpu = next(line for line in done.stdout.splitlines() if line.startswith("cpu "))
    assert any(isa in cpu for isa in ("AVX-512", "AVX2", "AVX,", "SSE4.2", "NEON", "SVE", "no known vector flag"))
    # --quick says, before the table and at the end, that it is a smoke test, and prints no ratio (the CSV has them)
    lines = done.stdout.splitlines()
    assert re.match(r"quick +a smoke test that the script runs, not a measurement: ", lines[lines.index("") - 1])
    assert lines[-1].startswith("--quick: a smoke test that the script runs, not a measurement")
    table = [line.split() for line in lines if line.startswith(("numpy ", "torch "))]
    assert len(table) == len(rows) and all(row[-3:] == ["-", "-", "-"] for row in table), table


def test_run_and_layers_refuse_to_replace_an_earlier_runs_results_without_overwrite(tmp_path):
    for script, files, argv in (
        ("run.py", ["results.csv", "throughput.png"], ["--quick", "--backends", "numpy"]),
        ("layers.py", ["layers.csv"], ["--batch-size", "4", "--repeats", "1"]),
    ):
        out = tmp_path / script
        out.mkdir()
        for name in files:
            (out / name).write_text("an earlier run's")
        refused = bench(script, *argv, "--out", str(out))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr == (
            f"{script}: error: {out} already holds {' and '.join(files)} of an earlier run; "
            "replace them with --overwrite, or choose another --out\n"
        )
        assert refused.stdout == "", "refused before anything was timed"
        assert all((out / name).read_text() == "an earlier run's" for name in files)
        replaced = bench(script, *argv, "--out", str(out), "--overwrite")
        assert replaced.returncode == 0, replaced.stderr
        assert re.search(rf"^wrote {re.escape(str(out))}.*, replacing the earlier run's", replaced.stdout, re.M)
        assert all((out / name).read_bytes() != b"an earlier run's" for name in files)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_run_torch_compile_reports_both_ratios_and_no_recompiles(tmp_path):
    # Batch 8 compiles in seconds (Inductor caches it for the next run; the timeout leaves room for a cold cache).
    # One thread: on a busy machine PyTorch's waiting OpenMP threads made compiled steps up to 100x slower.
    argv = ["--quick", "--threads", "1", "--backends", "numpy,torch,torch-compile", "--out", str(tmp_path)]
    done = bench("run.py", *argv, timeout=600)
    assert done.returncode == 0, done.stderr
    fields, rows = read_results(tmp_path / "results.csv")
    median = {(r["backend"], r["mode"]): float(r["images_per_s_median"]) for r in rows}
    assert set(median) == {(b, m) for b in ("numpy", "torch", "torch-compile") for m in ("train", "infer")}
    for r in rows:
        ours = median[r["backend"], r["mode"]]
        assert float(r["ratio_to_torch"]) == pytest.approx(ours / median["torch", r["mode"]], rel=1e-2)
        assert float(r["ratio_to_torch_compile"]) == pytest.approx(ours / median["torch-compile", r["mode"]], rel=1e-2)
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("backend "))
    assert "vs torch" in header and "vs compile" in header
    assert sum(line.startswith("torch-compile ") for line in lines) == 2  # a table row per mode
    assert "torch-compile: no graph compiled during timing" in done.stdout
    assert "WARNING" not in done.stdout


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_compile_that_cannot_compile_is_skipped_in_one_line(tmp_path):
    # No C++ compiler where Inductor looks for one, and an empty cache, so nothing can be reused.
    env = {"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    argv = ["--quick", "--threads", "1", "--backends", "numpy,torch-compile", "--out", str(tmp_path)]
    done = bench("run.py", *argv, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stdout.splitlines() if "torch-compile skipped" in line]
    assert len(notes) == 1 and "compiling failed" in notes[0], done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    _, rows = read_results(tmp_path / "results.csv")
    assert {r["backend"] for r in rows} == {"numpy"}


@pytest.mark.parametrize("script", ["run.py", "layers.py", "epoch.py"])
def test_help_shows_every_default(script):
    done = bench(script, "--help")
    assert done.returncode == 0, done.stderr
    options = done.stdout.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", "\n" + options)[1:]  # one entry per option, its wrapped lines included
    assert len(entries) >= 4
    for entry in entries:
        if not entry.startswith("-h"):
            assert "default" in entry, entry


def test_instruction_set_from_cpu_flags(monkeypatch):
    common = benchmark_module("common", monkeypatch)
    assert common.instruction_set({"flags": "fpu sse4_2 avx avx2 fma avx512f avx512bw"}) == "AVX-512"
    assert common.instruction_set({"flags": "fpu sse4_2 avx avx2 fma"}) == "AVX2"
    assert common.instruction_set({"flags": "fpu sse4_2"}) == "SSE4.2"
    assert common.instruction_set({"Features": "fp asimd evtstrm"}) == "NEON"
    assert "no known vector flag" in common.instruction_set({})


def test_machine_header_names_the_blas_kernel_and_openblas_settings(monkeypatch):
    common = benchmark_module("common", monkeypatch)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    lines = common.describe_machine(1)
    assert any(line.startswith("env ") and "OPENBLAS_CORETYPE=Haswell" in line for line in lines)
    blas = next(line for line in lines if line.startswith("blas "))
    if "OpenBLAS" in blas:  # numpy's wheels bundle OpenBLAS; threadpoolctl reports the kernel it chose
        assert "kernel " in blas
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert not any("OPENBLAS_CORETYPE" in line for line in common.describe_machine(1))


def test_call_counter_counts_what_setprofile_sees_and_what_it_does_not(monkeypatch):
    layers = benchmark_module("layers", monkeypatch)
    a = np.ones((3, 3))

    def inner(a):
        return np.matmul(a, a)  # a ufunc: invisible to sys.setprofile

    def step(a):
        counter.part = "one"
        np.exp(a)  # ufunc
        np.concatenate([a, a])  # array-function dispatcher
        a.reshape(9)  # method: seen
        np.empty(2)  # function: seen
        len(a)  # a builtin, not NumPy
        counter.part = "two"
        inner(a)
        np.float32(1)  # a C type
        return np.add(a, a)  # ufunc

    with layers.CallCounter() as counter:
        step(a)
    one = counter.counts["one"]
    # np.concatenate is a C dispatcher that setprofile misses on numpy 2; numpy 1.x dispatches it through Python
    # code that setprofile sees (and that then makes a C call of its own), so only bounds hold on both.
    assert one["other"] == 1 and one["numpy"] >= 2 and one["unseen"] >= 1 and set(one) == {"numpy", "unseen", "other"}
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert one == {"unseen": 2, "numpy": 2, "other": 1}
    assert counter.counts["two"] == {"unseen": 3}
    assert counter.names["ndarray.reshape"] == 1 and counter.names["empty"] == 1
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert counter.names == {"ndarray.reshape": 1, "empty": 1}
    assert sys.getprofile() is None and sys.gettrace() is None or "coverage" in sys.modules


def test_layers_tiny_prints_every_layer_and_writes_csv(tmp_path):
    done = bench("layers.py", "--batch-size", "4", "--repeats", "2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    parts = [r["part"] for r in rows]
    assert parts == ["c1+act1+s2", "c3+act3+s4", "flatten", "f5", "act5", "f6", "act6", "f7", "loss", "sgd"]
    assert all(int(r["c_calls"]) > 0 for r in rows), rows  # every part calls into NumPy
    assert float(rows[-1]["step_ms"]) > 0 and rows[-1]["forward_ms"] == ""  # the optimizer is a phase of its own
    assert "total" in done.stdout
    assert re.search(r"^by phase: forward [\d.]+ ms \(\d+%\), backward .+, optimizer ", done.stdout, re.MULTILINE)
    total = re.search(r"^calls into C in one train_step: (\d+)", done.stdout, re.MULTILINE)
    kinds = re.findall(r"^ +(\d+)  ", done.stdout, re.MULTILINE)
    assert total and len(kinds) == 3 and sum(map(int, kinds)) == int(total[1]) > 50, done.stdout
    assert int(re.search(r"^  and (\d+) operators and subscripts", done.stdout, re.MULTILINE)[1]) > 0


BAD_FLAGS = [
    ("run.py", "--backends", "foo"),
    ("run.py", "--busy", "-1"),
    ("epoch.py", "--threads", "2,0"),
    ("run.py", "--batch-sizes", "32,x"),
    ("layers.py", "--batch-size", "0"),
    ("gpu_profile.py", "--steps", "0"),
    ("gpu_profile.py", "--batch-sizes", "8,-1"),
]
if not cupy_available():  # asking for a GPU that is not there is a bad flag too
    BAD_FLAGS += [("run.py", "--backends", "cupy"), ("layers.py", "--backend", "cupy"), ("gpu_profile.py",)]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=" ".join)
def test_bad_flag_is_one_line_and_exit_2(argv):
    done = bench(*argv)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "error" in done.stderr and "Traceback" not in done.stderr


@needs_data
def test_epoch_benchmark_runs_on_a_slice_of_the_real_data():
    args = ["--limit", "400", "--repeats", "2", "--step-seconds", "0.1"]  # two: the second fit reuses the folder
    done = bench("epoch.py", *args)
    assert done.returncode == 0, done.stderr
    assert "320 training images" in done.stdout
    ratio = [line for line in done.stdout.splitlines() if line.strip().startswith("ratio real / predicted")]
    assert len(ratio) == 1 and float(ratio[0].split()[-1]) > 0
    assert re.search(r"^busy +none", done.stdout, re.MULTILINE)


@needs_data
def test_epoch_benchmark_sets_worker_counts_side_by_side_under_busy_neighbours():
    args = ["--limit", "200", "--repeats", "1", "--step-seconds", "0.1", "--threads", "1,2", "--busy", "1"]
    done = bench("epoch.py", *args)
    assert done.returncode == 0, done.stderr
    pids = neighbour_pids(done.stdout)
    assert len(pids) == 1 and not any(map(running, pids))
    assert re.search(r"^threads 2", done.stdout, re.MULTILINE) and re.search(r"^threads 1$", done.stdout, re.MULTILINE)
    assert len(re.findall(r"^  ratio real / predicted +[\d.]+$", done.stdout, re.MULTILINE)) == 2
    assert re.search(r"^  epoch / threads 1's +[\d.]+$", done.stdout, re.MULTILINE)


# -- busy neighbours (--busy N) -----------------------------------------------------------------------------------
def neighbour_pids(stdout):
    """The neighbours' process ids from a benchmark's `busy` header line."""
    line = next(line for line in stdout.splitlines() if line.startswith("busy "))
    return [int(pid) for pid in re.search(r"\(pid ([\d, ]+)\)", line)[1].split(", ")]


def running(pid):
    """Whether process `pid` exists and is not a zombie (one that ended, its parent not told yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def cpu_seconds(pid):
    """User and system CPU time of process `pid` so far (/proc/PID/stat's utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


@needs_proc
@pytest.mark.parametrize("ending", ["normally", "by Ctrl-C", "by an error"])
def test_busy_neighbours_burn_cpu_within_and_are_gone_after(monkeypatch, ending):
    common = benchmark_module("common", monkeypatch)
    stop = {"normally": None, "by Ctrl-C": KeyboardInterrupt, "by an error": RuntimeError}[ending]
    try:
        with common.busy_neighbours(2) as neighbours:
            pids = [p.pid for p in neighbours]
            assert len(set(pids)) == 2 and all(map(running, pids))
            before = [cpu_seconds(pid) for pid in pids]
            time.sleep(0.5)
            assert all(cpu_seconds(pid) - b > 0.05 for pid, b in zip(pids, before, strict=True))  # busy, not asleep
            assert all(os.getsid(pid) != os.getsid(0) for pid in pids)  # a terminal's Ctrl-C reaches only us
            if stop:
                raise stop
    except (KeyboardInterrupt, RuntimeError) as e:
        assert type(e) is stop
    assert not any(map(running, pids))


@needs_proc
def test_busy_neighbours_end_by_themselves_when_their_benchmark_is_killed(tmp_path):
    """kill -9 leaves the benchmark no chance to stop them: each sees its parent gone and ends."""
    script = (
        "import sys, time; sys.path.insert(0, 'benchmarks'); from common import busy_neighbours\n"
        "with busy_neighbours(1) as n:\n    print(n[0].pid, flush=True); time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True) as parent:
        pid = int(parent.stdout.readline())
        assert running(pid)
        parent.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(pid)


@needs_proc
def test_run_times_every_backend_with_the_neighbours_running_and_stops_them(monkeypatch, tmp_path, capsys):
    run = benchmark_module("run", monkeypatch)
    real_measure, real_neighbours, seen = run.measure, run.busy_neighbours, []

    @contextlib.contextmanager
    def started(n):
        with real_neighbours(n) as neighbours:
            seen.append(neighbours)
            yield neighbours

    def measure(steps, *args):
        assert seen and all(running(p.pid) for p in seen[0])  # every backend is timed beside the neighbours
        return real_measure(steps, *args)

    monkeypatch.setattr(run, "busy_neighbours", started)
    monkeypatch.setattr(run, "measure", measure)
    run.main(["--quick", "--busy", "2", "--backends", "numpy", "--out", str(tmp_path)])
    assert len(seen[0]) == 2 and not any(running(p.pid) for p in seen[0])
    header = capsys.readouterr().out
    assert re.search(r"^busy +2 busy neighbour processes, each a plain Python busy loop", header, re.MULTILINE)
    assert sorted(neighbour_pids(header)) == sorted(p.pid for p in seen[0])


@needs_proc
def test_ctrl_c_stops_the_benchmark_and_its_neighbours_in_one_line():
    argv = ["--busy", "1", "--backends", "numpy", "--batch-sizes", "8", "--repeats", "1000", "--min-time", "1"]
    command = [sys.executable, "benchmarks/run.py", *argv, "--out", os.devnull]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as bench_run:
        lines = []
        while not (lines and lines[-1].startswith("backend ")):  # the table's head: the timing starts
            lines.append(bench_run.stdout.readline())
            assert lines[-1], "".join(lines) + bench_run.stderr.read()
        pids = neighbour_pids("".join(lines))
        assert len(pids) == 1 and running(pids[0])
        time.sleep(1)  # well into the first 1000 repetitions of a second
        bench_run.send_signal(signal.SIGINT)
        err = bench_run.communicate(timeout=60)[1]
    assert bench_run.returncode == 130 and err.strip() == "run.py: stopped by Ctrl-C", err
    assert not running(pids[0])
