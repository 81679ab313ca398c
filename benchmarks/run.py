"""Training and inference throughput of lenet's LeNet-5, side by side with PyTorch eager.

    python benchmarks/run.py [--backends numpy,cupy,torch] [--batch-sizes 32,256,1024] [--threads N]
                             [--repeats R] [--min-time S] [--out DIR] [--quick]

For each batch size and mode (train: FastRunner.train_step as train.py runs it, a full step of
forward, loss, backward and SGD; infer: FastRunner.forward) every backend is warmed up, then timed R
times, the backends interleaved within each repetition so that the drift of a shared machine hits them
alike. A repetition calls the step in a loop for at least --min-time seconds on random data already in
memory, synchronizing the GPU at both ends. Reported: images/s (median, min, max over the repetitions)
and the ratio of medians to PyTorch with the same weights and threads: numpy against torch on the CPU,
cupy against torch on CUDA. On cupy, train.py's steps are CUDA-graph replays after two eager ones
(lenet/fast/graphs.py), and so are the timed ones here; inference is eager.
Writes <out>/results.csv and <out>/throughput.png.
"""

# ruff: noqa: E402  (lenet is imported after the checkout is put on the path)
import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not

import numpy as np
from common import (
    ArgumentParser,
    core_count,
    cpu_model,
    describe_machine,
    positive_float,
    positive_int,
    positive_ints,
    random_batch,
    run_main,
)
from threadpoolctl import threadpool_limits

from lenet import LeNet5
from lenet.backend import cupy_available, cupy_unavailable_reason, synchronize
from lenet.errors import LenetError
from lenet.fast import FastRunner
from lenet.fast.tuning import keep_freed_memory
from lenet.files import atomic_write
from lenet.optim import SGD

BACKENDS = ("numpy", "cupy", "torch")
REFERENCE = {"numpy": "torch", "torch": "torch", "cupy": "torch-cuda", "torch-cuda": "torch-cuda"}
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
]
TABLE = "{:<10} {:<5} {:>5} {:>13} {:>9} {:>9} {:>9}"


def backend_list(text):
    names = list(dict.fromkeys(text.split(",")))
    for name in names:
        if name not in BACKENDS:
            raise argparse.ArgumentTypeError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return names


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backends",
        type=backend_list,
        default=["numpy", "torch"],
        help="any of numpy,cupy,torch (default numpy,torch)",
    )
    p.add_argument(
        "--batch-sizes", type=positive_ints, default=[32, 256, 1024], help="comma-separated (default 32,256,1024)"
    )
    p.add_argument(
        "--threads", type=positive_int, default=core_count(), help="for every backend (default %(default)s: all cores)"
    )
    p.add_argument("--repeats", type=positive_int, default=7, help="timed repetitions per backend (default 7)")
    p.add_argument("--min-time", type=positive_float, default=0.3, help="seconds per repetition (default 0.3)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for results.csv, throughput.png (default %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="tiny run for tests: batch 8, 1 repetition, 10 ms")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats, args.min_time = [8], 1, 0.01
    return args


def lenet_steps(backend, x, y, threads):
    """{train, infer, sync} for one batch, run as train.py runs them (lenet.fast.FastRunner)."""
    model = LeNet5(activation="sigmoid", pool="avg", backend=backend, dtype="float32", seed=0)
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    runner = FastRunner(model, opt, threads if backend == "numpy" else 1)
    x, y = model.xp.asarray(x), model.xp.asarray(y)
    return {
        "train": lambda: runner.train_step(x, y),
        "infer": lambda: runner.forward(x),
        "sync": lambda: synchronize(model.xp),
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
    if "torch" in names:
        try:
            import torch_lenet
        except Exception as e:  # not installed, or a native library that fails to load
            notes.append(f"torch skipped: it does not import ({type(e).__name__}: {e})")
        else:
            torch_lenet.torch.set_num_threads(threads)
            state = LeNet5(seed=0).state_dict()  # the weights every lenet model starts from
            devices = {"torch": "cpu"}
            if "cupy" in makers and torch_lenet.torch.cuda.is_available():
                devices["torch-cuda"] = "cuda"
            elif "cupy" in makers:
                notes.append("torch-cuda skipped: torch.cuda.is_available() is False, so cupy has no reference")
            for name, device in devices.items():
                makers[name] = lambda x, y, d=device: torch_lenet.torch_steps(state, x, y, d, LR, MOMENTUM)
    if not makers:
        raise LenetError("nothing to benchmark: " + "; ".join(notes))
    return makers


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
    for r in rows:
        ref = medians.get(REFERENCE[r["backend"]])
        r["ratio_to_torch"] = round(r["images_per_s_median"] / ref, 3) if ref else ""
    return rows


def table_row(r):
    ratio = f"{r['ratio_to_torch']:.2f}x" if r["ratio_to_torch"] != "" else "-"
    numbers = (f"{r[c]:,.0f}" for c in ("images_per_s_median", "images_per_s_min", "images_per_s_max"))
    return TABLE.format(r["backend"], r["mode"], r["batch_size"], *numbers, ratio)


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


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()  # as train.py does (lenet/fast/tuning.py): fresh pages each step would be timed otherwise
    started, notes, rows = time.perf_counter(), [], []
    with threadpool_limits(limits=args.threads):
        makers = setup_backends(args.backends, args.threads, notes)
        print("lenet benchmark: LeNet-5 (sigmoid, average pooling, float32), random data in memory, seed 0")
        print("\n".join(describe_machine(args.threads)))
        print(f"timing   {args.repeats} repetitions of >= {args.min_time} s per backend after a warm-up, interleaved")
        for note in notes:
            print(f"note     {note}")
        print()
        print(TABLE.format("backend", "mode", "batch", "img/s median", "min", "max", "vs torch"))
        for batch in args.batch_sizes:
            x, y = random_batch(batch)
            steps = {name: make(x, y) for name, make in makers.items()}
            for mode in MODES:
                cell = summarize(measure(steps, mode, batch, args.repeats, args.min_time), mode, batch)
                print("\n".join(table_row(r) for r in cell), flush=True)
                rows += cell
    noisy = sum(r["images_per_s_max"] > 1.5 * r["images_per_s_min"] for r in rows)
    if noisy and args.repeats > 1:
        print(f"note: max/min above 1.5 in {noisy} of {len(rows)} rows: the machine was busy; compare medians or rerun")
    write_csv(rows, args.out / "results.csv")
    plot(rows, args.out / "throughput.png", f"lenet LeNet-5 vs PyTorch eager, {args.threads} threads, {cpu_model()}")
    took = time.perf_counter() - started
    print(f"\nwrote {args.out / 'results.csv'} and {args.out / 'throughput.png'} ({took:.0f} s)")


if __name__ == "__main__":
    run_main(main)
