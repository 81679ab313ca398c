"""Where a training step's time goes: each layer's forward and backward, the loss and the optimizer step.

    python benchmarks/layers.py [--batch-size 256] [--backend numpy] [--threads N] [--repeats R] [--out DIR]

One repetition is one training step run by hand through model.layers: every forward in order, the loss,
every backward in reverse, SGD (layers cache inputs between forward and backward, so a repetition is
always a whole step). Each part is timed on its own (the GPU synchronized after each), medians over the
repetitions. Each repetition also times one FastRunner.train_step call as a whole (as train.py runs
it), so that a model whose forward no longer walks model.layers shows up as a gap between the two.
Optionally writes <out>/layers.csv.
"""

# ruff: noqa: E402  (lenet is imported after the checkout is put on the path)
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not

from common import ArgumentParser, core_count, describe_machine, positive_int, random_batch, run_main
from threadpoolctl import threadpool_limits

from lenet import LeNet5
from lenet.backend import BACKENDS, synchronize
from lenet.fast import FastRunner
from lenet.fast.tuning import keep_freed_memory
from lenet.files import atomic_write
from lenet.layers import SoftmaxCrossEntropy
from lenet.optim import SGD

TABLE = "{:<10} {:>10} {:>11} {:>9} {:>7}"


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--backend", choices=BACKENDS, default="numpy")
    p.add_argument("--threads", type=positive_int, default=core_count(), help="BLAS threads (default: all cores)")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed steps (default 20)")
    p.add_argument("--out", type=Path, help="folder to write layers.csv into (default: print only)")
    return p.parse_args(argv)


def timed_step(model, loss_fn, opt, x, y, sync):
    """One training step, part by part: {(part, phase): seconds}, phase 'forward', 'backward' or 'step'."""
    times = {}

    def timed(key, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        sync()
        times[key] = time.perf_counter() - start
        return out

    sync()
    h = x
    for name, layer in model.layers:
        h = timed((name, "forward"), layer.forward, h)
    timed(("loss", "forward"), loss_fn.forward, h, y)
    d = timed(("loss", "backward"), loss_fn.backward)
    for name, layer in reversed(model.layers):
        d = timed((name, "backward"), layer.backward, d)
    timed(("sgd", "step"), opt.step)
    return times


def breakdown(samples, parts):
    """Table rows {part, forward_ms, backward_ms, total_ms, percent} from {(part, phase): [seconds]}."""
    rows = []
    for part in parts:
        ms = {phase: statistics.median(samples[part, phase]) * 1e3 for p, phase in samples if p == part}
        rows.append(
            {
                "part": part,
                "forward_ms": ms.get("forward"),
                "backward_ms": ms.get("backward"),
                "total_ms": sum(ms.values()),
            }
        )
    total = sum(r["total_ms"] for r in rows)
    for r in rows:
        r["percent"] = 100 * r["total_ms"] / total
    return rows, total


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()  # as train.py does (lenet/fast/tuning.py): fresh pages each step would be timed otherwise
    with threadpool_limits(limits=args.threads):
        model = LeNet5(activation="sigmoid", pool="avg", backend=args.backend, dtype="float32", seed=0)
        xp, sync = model.xp, lambda: synchronize(model.xp)
        loss_fn, opt = SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = (xp.asarray(a) for a in random_batch(args.batch_size))
        print(
            f"lenet per-layer breakdown: LeNet-5 (sigmoid, avg pool, float32), {args.backend}, batch {args.batch_size}"
        )
        print("\n".join(describe_machine(args.threads)))
        print(f"timing   median of {args.repeats} steps after 2 warm-up steps, ms\n")
        samples, whole = {}, []
        runner = FastRunner(model, opt, args.threads if args.backend == "numpy" else 1)
        for rep in range(args.repeats + 2):
            times = timed_step(model, loss_fn, opt, x, y, sync)
            start = time.perf_counter()
            runner.train_step(x, y)
            sync()
            if rep >= 2:
                whole.append(time.perf_counter() - start)
                for key, seconds in times.items():
                    samples.setdefault(key, []).append(seconds)
    parts = [name for name, _ in model.layers] + ["loss", "sgd"]
    rows, total = breakdown(samples, parts)

    def ms(value):
        return "" if value is None else f"{value:.3f}"

    print(TABLE.format("part", "forward ms", "backward ms", "total ms", "% step"))
    for r in rows:
        print(
            TABLE.format(r["part"], ms(r["forward_ms"]), ms(r["backward_ms"]), ms(r["total_ms"]), f"{r['percent']:.1f}")
        )
    print(TABLE.format("total", "", "", ms(total), "100.0"))
    step_ms = statistics.median(whole) * 1e3
    print(
        f"\ntrain_step as one call ({runner.parallel.threads} threads): {step_ms:.3f} ms "
        f"({args.batch_size / step_ms * 1e3:,.0f} images/s)"
    )
    if args.out:
        with atomic_write(args.out / "layers.csv", "w") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
        print(f"wrote {args.out / 'layers.csv'}")


if __name__ == "__main__":
    run_main(main)
