"""Does a real epoch of train.py cost what the benchmark's step time predicts, and what do the workers give?

    python benchmarks/epoch.py [--backend numpy] [--batch-size 32] [--data-dir DIR] [--limit N] [--threads 1,2]
                               [--busy N] [--repeats R] [--step-seconds S]

Times, interleaved on the same machine, for each --threads setting in turn: (1) training steps on random data in
memory at the batch size, as benchmarks/run.py does, giving the predicted epoch time n_train / (images per second);
(2) whole epochs of lenet.trainer.fit on the real data set (shuffling, batching, metrics and validation included, the
writing of checkpoints and plots not), as train.py runs them. Prints both and their ratio, and each setting's epoch
against the first one's. --busy N runs N busy neighbours (each a plain Python busy loop at normal priority, the other
programs of a real laptop) from before the first timing to after the last; the header says how many and what.
"""

# ruff: noqa: E402  (lenet is imported after the checkout is put on the path)
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not

from environment import exit_for_missing_package

try:
    from common import (
        ArgumentParser,
        add_busy_option,
        busy_line,
        busy_neighbours,
        describe_machine,
        positive_int,
        positive_ints,
        random_batch,
        run_main,
    )

    from lenet import LeNet5
    from lenet.fast import FastRunner, default_threads
    from lenet.fast.tuning import tune_process
    from lenet.optim import Adam
    from lenet.options import TrainConfig
    from lenet.trainer import fit
except ModuleNotFoundError as e:  # a Python without lenet's packages: say how to set them up
    exit_for_missing_package(e)


def parse_args(argv=None):
    p = ArgumentParser(prog="epoch.py", description="Real epoch time against the benchmark's prediction.")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy", help="(default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size, help="(default %(default)s)")
    p.add_argument("--data-dir", help="folder with the IDX files (default: looked up as train.py does)")
    p.add_argument("--limit", type=positive_int, help="use only the first N training images (default: all)")
    p.add_argument(
        "--threads",
        type=positive_ints,
        help="comma-separated worker counts to time in turn, as train.py's --threads (default: train.py's default, "
        "one per core; e.g. 1,2 to set one worker against two)",
    )
    add_busy_option(p)
    p.add_argument(
        "--repeats", type=positive_int, default=2, help="epochs and step timings, interleaved (default %(default)s)"
    )
    p.add_argument(
        "--step-seconds", type=float, default=3.0, help="how long to time the steps each time (default %(default)s)"
    )
    return p.parse_args(argv)


def step_rate(backend, batch_size, threads, seconds=3.0):
    """Images per second of FastRunner.train_step (Adam, as train.py's default) on random data."""
    model = LeNet5(backend=backend)
    opt = Adam(model.parameters(), lr=1e-3)
    runner = FastRunner(model, opt, threads)
    try:
        x, y = (model.xp.asarray(a) for a in random_batch(batch_size))
        runner.train_step(x, y)
        float(runner.train_step(x, y)[0])  # warm, and synchronized
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            loss, _ = runner.train_step(x, y)
            steps += 1
        float(loss)
        return steps * batch_size / (time.perf_counter() - start)
    finally:
        runner.close()


def main(argv=None):
    args = parse_args(argv)
    tune_process(args.backend)  # as train.py does (lenet/fast/tuning.py), once, before anything is timed
    default = default_threads(LeNet5(backend=args.backend).xp)
    settings = args.threads or [default]
    rates, epochs = {t: [] for t in settings}, {t: [] for t in settings}
    told = {t: [] for t in settings}  # what train.py would have printed as a warning, per setting
    n_train = round((args.limit or 60_000) * (1 - TrainConfig.val_fraction))
    with tempfile.TemporaryDirectory() as out, busy_neighbours(args.busy) as neighbours:
        print("\n".join(describe_machine(default)))
        print(busy_line(neighbours), flush=True)
        for _ in range(args.repeats):
            for threads in settings:
                rates[threads].append(step_rate(args.backend, args.batch_size, threads, args.step_seconds))
                config = TrainConfig(
                    backend=args.backend, batch_size=args.batch_size, epochs=1, data_dir=args.data_dir,
                    limit=args.limit, threads=threads, out=out, progress=False, overwrite=True,  # the same folder
                )  # fmt: skip
                history = fit(config, runner=FastRunner.for_config, log=lambda *a: None, warn=told[threads].append)
                epochs[threads].append(float(history["seconds"].iloc[0]))
    print(f"\nbatch {args.batch_size}, {n_train} training images, {args.repeats} interleaved repetitions (medians)")
    first = statistics.median(epochs[settings[0]])
    for threads in settings:
        rate, epoch = statistics.median(rates[threads]), statistics.median(epochs[threads])
        predicted = n_train / rate
        each = ", ".join(f"{e:.2f}" for e in epochs[threads])
        print(f"threads {threads}{' (the default)' if threads == default else ''}")
        print(f"  benchmark step rate      {rate:10,.0f} images/s -> predicted epoch {predicted:6.2f} s")
        print(f"  real epoch of train.py   {epoch:10.2f} s (validation included)  [each: {each}]")
        print(f"  ratio real / predicted   {epoch / predicted:10.2f}")
        if threads != settings[0]:
            print(f"  epoch / threads {settings[0]}'s      {epoch / first:10.2f}")
        if told[threads]:  # lenet's CpuWatch (lenet/fast/contention.py) found others using the CPU
            print(f"  train.py warned in {len(told[threads])} of {args.repeats} epochs: {told[threads][-1]}")


if __name__ == "__main__":
    run_main(main)
