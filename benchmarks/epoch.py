"""Does a real epoch of train.py cost what the benchmark's step time predicts?

    python benchmarks/epoch.py [--backend numpy] [--batch-size 32] [--data-dir DIR] [--limit N]

Times, interleaved on the same machine: (1) training steps on random data in memory at the batch size,
as benchmarks/run.py does, giving the predicted epoch time n_train / (images per second); (2) whole epochs
of lenet.trainer.fit on the real data set (shuffling, batching, metrics and validation included, the
writing of checkpoints and plots not). Prints both and their ratio.
"""

# ruff: noqa: E402  (lenet is imported after the checkout is put on the path)
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not

from common import ArgumentParser, describe_machine, positive_int, random_batch, run_main

from lenet import LeNet5
from lenet.fast import FastRunner, default_threads
from lenet.fast.tuning import keep_freed_memory
from lenet.optim import Adam
from lenet.trainer import TrainConfig, fit


def parse_args(argv=None):
    p = ArgumentParser(prog="epoch.py", description="Real epoch time against the benchmark's prediction.")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy", help="(default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size, help="(default %(default)s)")
    p.add_argument("--data-dir", help="folder with the IDX files (default: looked up as train.py does)")
    p.add_argument("--limit", type=positive_int, help="use only the first N training images (default: all)")
    p.add_argument(
        "--repeats", type=positive_int, default=2, help="epochs and step timings, interleaved (default %(default)s)"
    )
    p.add_argument(
        "--step-seconds", type=float, default=3.0, help="how long to time the steps each time (default %(default)s)"
    )
    return p.parse_args(argv)


def step_rate(backend, batch_size, seconds=3.0):
    """Images per second of FastRunner.train_step (Adam, as train.py's default) on random data."""
    model = LeNet5(backend=backend)
    opt = Adam(model.parameters(), lr=1e-3)
    runner = FastRunner(model, opt)
    x, y = (model.xp.asarray(a) for a in random_batch(batch_size))
    runner.train_step(x, y)
    float(runner.train_step(x, y)[0])  # warm, and synchronized
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loss, _ = runner.train_step(x, y)
        steps += 1
    float(loss)
    rate = steps * batch_size / (time.perf_counter() - start)
    runner.close()
    return rate


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()  # as train.py does (lenet/fast/tuning.py): fresh pages each step would be timed otherwise
    print("\n".join(describe_machine(default_threads(LeNet5(backend=args.backend).xp))))
    rates, epochs = [], []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            rates.append(step_rate(args.backend, args.batch_size, args.step_seconds))
            config = TrainConfig(
                backend=args.backend, batch_size=args.batch_size, epochs=1, data_dir=args.data_dir,
                limit=args.limit, out=out, progress=False, overwrite=True,  # each repetition in the same folder
            )  # fmt: skip
            history = fit(config, runner=FastRunner.for_config, log=lambda *a: None)
            epochs.append(float(history["seconds"].iloc[0]))
    n_train = round((args.limit or 60_000) * (1 - TrainConfig.val_fraction))
    rate, epoch = statistics.median(rates), statistics.median(epochs)
    predicted = n_train / rate
    print(f"\nbatch {args.batch_size}, {n_train} training images, {args.repeats} interleaved repetitions (medians)")
    print(f"benchmark step rate      {rate:10,.0f} images/s -> predicted epoch {predicted:6.2f} s")
    each = ", ".join(f"{e:.2f}" for e in epochs)
    print(f"real epoch of train.py   {epoch:10.2f} s (validation included)  [each: {each}]")
    print(f"ratio real / predicted   {epoch / predicted:10.2f}")


if __name__ == "__main__":
    run_main(main)
