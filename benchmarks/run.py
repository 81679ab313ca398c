"""Training and inference throughput of lenet's LeNet-5, side by side with PyTorch eager, torch.compile and (on a
GPU) PyTorch's whole step captured as a CUDA graph.

    python benchmarks/run.py [--backends numpy,cupy,torch,torch-compile,torch-graph] [--batch-sizes 32,256,1024]
                             [--threads N] [--busy N] [--repeats R] [--min-time S] [--out DIR] [--quick]

For each batch size and mode (train: FastRunner.train_step as train.py runs it, a full step of
forward, loss, backward and SGD; infer: FastRunner.forward) every backend is warmed up, then timed R
times, the backends interleaved within each repetition so that the drift of a shared machine hits them
alike. A repetition calls the step in a loop for at least --min-time seconds on random data already in
memory, synchronizing the GPU at both ends. Reported: images/s (median, min, max over the repetitions)
and the ratios of medians to PyTorch with the same weights and threads: on the CPU to PyTorch eager
(`vs torch`) and to the same module under torch.compile (`vs compile`; the optimizer step eager); on CUDA,
cupy to PyTorch eager on CUDA (`vs torch`) and to PyTorch with the whole training step, and the forward pass,
each captured as one CUDA graph (`vs graph`, backend torch-graph: PyTorch's fastest form there).
torch-compile's warm-up is its compilation (two graphs per batch size, training and inference, made before
any timing); the run checks that no timed step compiled again.
The header names the CPU, its instruction set and the kernel OpenBLAS chose: figures from different
machines are not comparable. On cupy, train.py's steps and forward passes are CUDA-graph replays of the GPU
twin (lenet/fast/gpu.py, graphs.py) after one eager call per batch size, and so are the timed ones here.
--busy N runs N busy neighbours (each a plain Python busy loop at normal priority: the other programs of a real
laptop) from before the first timing to after the last, so that every backend, PyTorch included, is measured under
the same load; the header says how many ran and what they are.
Writes <out>/results.csv and <out>/throughput.png; where an earlier run's are, it stops before timing anything
unless --overwrite (as train.py does with a run folder). --quick is a smoke test that the script runs: its figures
come from one 10 ms repetition and mean nothing, so it says so, and prints no ratios.
"""

# ruff: noqa: E402  (lenet is imported after the checkout is put on the path)
import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not

from environment import exit_for_missing_package

try:
    import numpy as np
    from common import (
        ArgumentParser,
        add_busy_option,
        busy_line,
        busy_neighbours,
        core_count,
        cpu_model,
        describe_machine,
        instruction_set,
        positive_float,
        positive_int,
        positive_ints,
        random_batch,
        refuse_to_replace,
        run_main,
    )
    from threadpoolctl import threadpool_limits

    from lenet import LeNet5
    from lenet.backend import cupy_available, cupy_unavailable_reason, synchronize
    from lenet.errors import LenetError
    from lenet.fast import FastRunner
    from lenet.fast.tuning import tune_process
    from lenet.files import atomic_write
    from lenet.optim import SGD
except ModuleNotFoundError as e:  # a Python without lenet's packages: say how to set them up
    exit_for_missing_package(e)

BACKENDS = ("numpy", "cupy", "torch", "torch-compile", "torch-graph")
# ratio column -> {backend: the backend its median is divided by}; a backend not listed gets no ratio there.
REFERENCES = {
    "ratio_to_torch": {
        "numpy": "torch", "torch": "torch", "torch-compile": "torch", "cupy": "torch-cuda", "torch-cuda": "torch-cuda",
    },
    "ratio_to_torch_compile": {"numpy": "torch-compile", "torch": "torch-compile", "torch-compile": "torch-compile"},
    "ratio_to_torch_graph": {"cupy": "torch-graph", "torch-cuda": "torch-graph", "torch-graph": "torch-graph"},
}  # fmt: skip
MODES = ("train", "infer")
LR, MOMENTUM = 0.01, 0.9
COLUMNS = [
    "backend",
    "mode",
    "batch_size",
    "images_per_s_median",
    "images_per_s_min",
    "images_per_s_max",
    "ratio_to_torch",
    "ratio_to_torch_compile",
    "ratio_to_torch_graph",
]
TABLE = "{:<13} {:<5} {:>5} {:>13} {:>9} {:>9} {:>9} {:>10} {:>9}"
GPU_BATCH_SIZES = "32,256,1024,8192"
SMOKE_TEST = (
    "a smoke test that the script runs, not a measurement: images/s from one 10 ms repetition are noise, "
    "so no ratios are printed (results.csv still holds them); run without --quick to measure"
)


def backend_list(text):
    names = list(dict.fromkeys(text.split(",")))
    for name in names:
        if name not in BACKENDS:
            raise argparse.ArgumentTypeError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return names


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    # String defaults go through `type` like typed-in values, and --help shows them as one would type them.
    p.add_argument(
        "--backends",
        type=backend_list,
        default="numpy,torch,torch-compile",
        help=f"comma-separated, any of {','.join(BACKENDS)} (default %(default)s)",
    )
    p.add_argument(
        "--batch-sizes",
        type=positive_ints,
        help=f"comma-separated (default 32,256,1024; {GPU_BATCH_SIZES} when cupy or torch-graph is benchmarked)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=core_count(), help="for every backend (default %(default)s: all cores)"
    )
    add_busy_option(p)
    p.add_argument(
        "--repeats", type=positive_int, default=7, help="timed repetitions per backend (default %(default)s)"
    )
    p.add_argument("--min-time", type=positive_float, default=0.3, help="seconds per repetition (default %(default)s)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for results.csv, throughput.png (default %(default)s)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the results an earlier run left in --out (default off)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test that the script runs (batch 8, 1 repetition of 10 ms), not a measurement (default off)",
    )
    args = p.parse_args(argv)
    if args.batch_sizes is None:
        gpu = {"cupy", "torch-graph"} & set(args.backends)
        args.batch_sizes = positive_ints(GPU_BATCH_SIZES if gpu else "32,256,1024")
    if args.quick:
        args.batch_sizes, args.repeats, args.min_time = [8], 1, 0.01
    return args


def lenet_steps(backend, x, y, threads):
    """{train, infer, sync, close} for one batch, run as train.py runs them (lenet.fast.FastRunner)."""
    model = LeNet5(activation="sigmoid", pool="avg", backend=backend, dtype="float32", seed=0)
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    runner = FastRunner(model, opt, threads if backend == "numpy" else 1)
    x, y = model.xp.asarray(x), model.xp.asarray(y)
    return {
        "train": lambda: runner.train_step(x, y),
        "infer": lambda: runner.forward(x),
        "sync": lambda: synchronize(model.xp),
        "close": runner.close,  # its worker processes (lenet/fast/processes.py)
    }


def setup_backends(names, threads, notes):
    """{backend: make(x, y) -> {train, infer, sync}} for what can run here; `notes` gets why the rest cannot."""
    makers = {}
    if "numpy" in names:
        makers["numpy"] = lambda x, y: lenet_steps("numpy", x, y, threads)
    if "cupy" in names:
        if cupy_available():
            makers["cupy"] = lambda x, y: lenet_steps("cupy", x, y, 1)
        else:
            notes.append(f"cupy skipped: {cupy_unavailable_reason()}")
    wanted = [name for name in ("torch", "torch-compile", "torch-graph") if name in names]
    if wanted:
        try:
            import torch_lenet
        except Exception as e:  # not installed, or a native library that fails to load
            notes += [f"{name} skipped: torch does not import ({type(e).__name__}: {e})" for name in wanted]
        else:
            torch_lenet.torch.set_num_threads(threads)
            state = LeNet5(seed=0).state_dict()  # the weights every lenet model starts from
            variants = {}  # backend -> (device, compile)
            if "torch" in names:
                variants["torch"] = ("cpu", False)
            if "torch-compile" in names:
                variants["torch-compile"] = ("cpu", True)
            if "cupy" in makers and "torch" in names and torch_lenet.torch.cuda.is_available():
                variants["torch-cuda"] = ("cuda", False)
            elif "cupy" in makers and "torch" in names:
                notes.append("torch-cuda skipped: torch.cuda.is_available() is False, so cupy has no reference")
            for name, (device, compile) in variants.items():
                makers[name] = lambda x, y, d=device, c=compile: torch_lenet.torch_steps(
                    state, x, y, d, LR, MOMENTUM, compile=c
                )
            if "torch-graph" in names and torch_lenet.torch.cuda.is_available():
                makers["torch-graph"] = lambda x, y: torch_lenet.torch_graph_steps(state, x, y, LR, MOMENTUM)
            elif "torch-graph" in names:
                notes.append("torch-graph skipped: torch.cuda.is_available() is False")
    if not makers:
        raise LenetError("nothing to benchmark: " + "; ".join(notes))
    return makers


def make_steps(makers, x, y, notes):
    """{backend: {train, infer, sync}} for one batch. A backend that fails here (torch.compile without a
    working C++ compiler, say) is dropped from `makers` with one line in `notes`, which is also printed."""
    steps = {}
    for name, make in list(makers.items()):
        try:
            steps[name] = make(x, y)
        except Exception as e:
            if name != "torch-compile":  # lenet's own backends and PyTorch eager must not fail: show the traceback
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            notes.append(f"{name} skipped: compiling failed ({type(e).__name__}: {first[:300]})")
            print(f"note     {notes[-1]}", flush=True)
            del makers[name]
    return steps


def images_per_s(fn, sync, batch, min_time):
    """Calls fn in a loop for at least min_time seconds; returns images per second, queued GPU work included."""
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if time.perf_counter() - start >= min_time:
            break
    sync()
    return calls * batch / (time.perf_counter() - start)


def measure(steps, mode, batch, repeats, min_time):
    """{backend: [images/s of each repetition]}; every backend warmed up, then all interleaved per repetition."""
    for s in steps.values():
        images_per_s(s[mode], s["sync"], batch, min_time / 2)  # first-call costs, caches, clocks
    samples = {name: [] for name in steps}
    for _ in range(repeats):
        for name, s in steps.items():
            samples[name].append(images_per_s(s[mode], s["sync"], batch, min_time))
    return samples


def summarize(samples, mode, batch):
    rows = [
        {
            "backend": name,
            "mode": mode,
            "batch_size": batch,
            "images_per_s_median": round(statistics.median(v), 1),
            "images_per_s_min": round(min(v), 1),
            "images_per_s_max": round(max(v), 1),
        }
        for name, v in samples.items()
    ]
    medians = {r["backend"]: r["images_per_s_median"] for r in rows}
    for column, reference in REFERENCES.items():
        for r in rows:
            ref = medians.get(reference.get(r["backend"]))
            r[column] = round(r["images_per_s_median"] / ref, 3) if ref else ""
    return rows


def table_row(r, show_ratios=True):
    """A row of the printed table; "-" in the ratio columns without `show_ratios` (a smoke test's mean nothing)."""
    ratios = (f"{r[c]:.2f}x" if show_ratios and r[c] != "" else "-" for c in REFERENCES)
    numbers = (f"{r[c]:,.0f}" for c in ("images_per_s_median", "images_per_s_min", "images_per_s_max"))
    return TABLE.format(r["backend"], r["mode"], r["batch_size"], *numbers, *ratios)


def write_csv(rows, path):
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows, path, title):
    """Grouped bars: one panel per mode, one group per batch size, one bar per backend (median, min-max)."""
    from matplotlib.figure import Figure  # here, so a bad flag is answered without loading matplotlib

    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = list(dict.fromkeys(r["batch_size"] for r in rows))
    by_key = {(r["backend"], r["mode"], r["batch_size"]): r for r in rows}
    width = 0.8 / len(backends)
    fig = Figure(figsize=(11, 4.5), layout="constrained")  # no pyplot: rendered by Agg, no display needed
    for ax, mode in zip(fig.subplots(1, 2), MODES, strict=True):
        for i, name in enumerate(backends):
            sel = [by_key[name, mode, b] for b in batches]
            med = np.array([r["images_per_s_median"] for r in sel])
            err = [med - [r["images_per_s_min"] for r in sel], [r["images_per_s_max"] for r in sel] - med]
            xs = np.arange(len(batches)) + (i - (len(backends) - 1) / 2) * width
            bars = ax.bar(xs, med, width, yerr=err, capsize=3, label=name)
            ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=2)
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set(title=f"{mode}: images/s (median, min-max)", xlabel="batch size", ylabel="images/s")
        ax.legend()
    fig.suptitle(title)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)


def compile_report(compiled, recompiled):
    """Lines on torch.compile: seconds to compile per batch size, and whether a timed step compiled again."""
    each = ", ".join(f"{s:.1f} s at batch {b}" for b, s in compiled.items())
    lines = [f"torch-compile: compiling (2 graphs per batch size, in the warm-up, not timed) took {each}"]
    if recompiled:
        lines.append(
            f"torch-compile: WARNING: {recompiled} graphs compiled during timing: its figures include compiling"
        )
    else:
        lines.append("torch-compile: no graph compiled during timing (torch._dynamo's counters)")
    return lines


def time_all(args, makers, notes):
    """Every batch size and mode, printed as it goes: (rows, {batch: seconds torch.compile took}, graphs compiled
    while timing)."""
    rows, compiled, recompiled = [], {}, 0
    print(TABLE.format("backend", "mode", "batch", "img/s median", "min", "max", "vs torch", "vs compile", "vs graph"))
    for batch in args.batch_sizes:
        x, y = random_batch(batch)
        steps = make_steps(makers, x, y, notes)
        if not steps:
            raise LenetError("nothing left to benchmark: " + "; ".join(notes))
        try:
            if "torch-compile" in steps:
                import torch_lenet  # setup_backends imported it

                compiled[batch] = steps["torch-compile"]["compile_s"]
                graphs = torch_lenet.compiled_graphs()
            for mode in MODES:
                cell = summarize(measure(steps, mode, batch, args.repeats, args.min_time), mode, batch)
                print("\n".join(table_row(r, show_ratios=not args.quick) for r in cell), flush=True)
                rows += cell
            if "torch-compile" in steps:
                recompiled += torch_lenet.compiled_graphs() - graphs
        finally:
            for s in steps.values():
                s.get("close", lambda: None)()
    return rows, compiled, recompiled


def main(argv=None):
    args = parse_args(argv)
    replaced = refuse_to_replace(args.out, ["results.csv", "throughput.png"], args.overwrite)
    tune_process()  # as train.py does (lenet/fast/tuning.py): one BLAS thread, malloc thresholds, switch interval
    started, notes = time.perf_counter(), []
    with threadpool_limits(limits=args.threads, user_api="openmp"):  # PyTorch's threads; NumPy's BLAS stays at one
        makers = setup_backends(args.backends, args.threads, notes)
        with busy_neighbours(args.busy) as neighbours:  # stopped however the timing ends (Ctrl-C, an error)
            print("lenet benchmark: LeNet-5 (sigmoid, average pooling, float32), random data in memory, seed 0")
            print("\n".join(describe_machine(args.threads)))
            print(busy_line(neighbours))
            print(
                f"timing   {args.repeats} repetitions of >= {args.min_time} s per backend after a warm-up, interleaved"
            )
            if args.quick:
                print(f"quick    {SMOKE_TEST}")
            for note in notes:
                print(f"note     {note}")
            print(flush=True)
            rows, compiled, recompiled = time_all(args, makers, notes)
    if not rows:
        raise LenetError("nothing was benchmarked: " + "; ".join(notes))
    print()
    if compiled:
        print("\n".join(compile_report(compiled, recompiled)))
    noisy = sum(r["images_per_s_max"] > 1.5 * r["images_per_s_min"] for r in rows)
    if noisy and args.repeats > 1:
        print(f"note: max/min above 1.5 in {noisy} of {len(rows)} rows: the machine was busy; compare medians or rerun")
    write_csv(rows, args.out / "results.csv")
    references = " and ".join(
        label for name, label in (("torch", "PyTorch eager"), ("torch-compile", "torch.compile")) if name in makers
    )
    busy = f", {args.busy} busy neighbour{'s' if args.busy > 1 else ''}" if args.busy else ""
    title = (
        f"lenet LeNet-5 vs {references or 'nothing'}, {args.threads} threads{busy}, {cpu_model()} ({instruction_set()})"
    )
    if args.quick:
        title = f"--quick: a smoke test, not a measurement\n{title}"
    plot(rows, args.out / "throughput.png", title)
    took = time.perf_counter() - started
    print(f"wrote {args.out / 'results.csv'} and {args.out / 'throughput.png'} ({took:.0f} s)", end="")
    print(f", replacing the earlier run's {' and '.join(replaced)}" if replaced else "")
    if args.quick:
        print(f"--quick: {SMOKE_TEST}")


if __name__ == "__main__":
    run_main(main)
