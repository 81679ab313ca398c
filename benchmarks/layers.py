"""Where a training step's time goes: each layer's forward and backward, the loss and the optimizer step.

    python benchmarks/layers.py [--batch-size 256] [--backend numpy] [--threads N] [--repeats R] [--out DIR]

One repetition is one training step run by hand through the layers of the model's fused twin (fuse(model), what
train.py's FastRunner runs): every forward in order, the loss, every backward in reverse, SGD (layers cache inputs
between forward and backward, so a repetition is always a whole step). Each part is timed on its own (the GPU
synchronized after each), medians over the repetitions. Each repetition also times one FastRunner.train_step call as
a whole (as train.py runs it), so that a twin whose forward no longer walks its layers shows up as a gap between the
two.

Then one more step, untimed, counts the calls each part makes into C (on NumPy, most of them NumPy calls,
each with a fixed cost of a few tenths of a microsecond to microseconds whatever the array size): what a
small batch pays for besides arithmetic. sys.setprofile reports ("c_call") calls of C functions and methods
(np.empty, ndarray.reshape, len) but not of ufuncs (np.exp, np.matmul), NumPy's dispatchers
(np.concatenate) or C types (range, np.float32): those are counted as call instructions that reach
neither a Python nor a C function the profiler sees (sys.settrace opcode events). Operators (a + b,
a[...] = b, a *= s) run ufuncs too and are counted by neither, so the counts are a floor; the operators and
subscripts run in lenet's code (on arrays or on Python numbers alike) are printed as a bound. The whole
train_step is counted on one thread: it cuts the batch the same way on any number of threads (a profiler
is set per thread), so the calls are the same.
Optionally writes <out>/layers.csv; where an earlier run's is, it stops before timing anything unless --overwrite.
"""

# ruff: noqa: E402  (lenet is imported after the checkout is put on the path)
import collections
import csv
import dis
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not

from environment import exit_for_missing_package

try:
    from common import (
        ArgumentParser,
        core_count,
        describe_machine,
        positive_int,
        random_batch,
        refuse_to_replace,
        run_main,
    )

    from lenet import LeNet5
    from lenet.backend import BACKENDS, synchronize
    from lenet.fast import FastRunner, fuse
    from lenet.fast.tuning import tune_process
    from lenet.files import atomic_write
    from lenet.layers import SoftmaxCrossEntropy
    from lenet.optim import SGD
except ModuleNotFoundError as e:  # a Python without lenet's packages: say how to set them up
    exit_for_missing_package(e)

TABLE = "{:<10} {:>10} {:>11} {:>9} {:>7} {:>7}"
# The instructions that call something (3.11 has CALL and CALL_FUNCTION_EX; 3.13 adds CALL_KW).
CALL_OPCODES = {dis.opmap[name] for name in ("CALL", "CALL_KW", "CALL_FUNCTION_EX") if name in dis.opmap}
# Operators and subscripts: on an array each is a NumPy call, on a Python number or tuple it is not.
OPERATOR_OPCODES = {dis.opmap[name] for name in ("BINARY_OP", "BINARY_SUBSCR", "STORE_SUBSCR", "COMPARE_OP")}
LENET_CODE = f"{Path(__file__).resolve().parents[1] / 'lenet'}{os.sep}"


class CallCounter:
    """Counts calls into C while active, under the name of the part being run (`counter.part = ...`).

    counts[part] is a Counter with "numpy" (NumPy functions and methods sys.setprofile sees), "other" (other
    C functions it sees: len, isinstance, ...) and "unseen" (calls of ufuncs, dispatchers and C types, which
    it does not see); `names` counts the seen NumPy calls by name. Python functions are not counted, the
    C calls inside them are. Use it as a context manager, on the thread that runs the step.
    """

    def __init__(self):
        self.part = None
        self.counts = collections.defaultdict(collections.Counter)
        self.names = collections.Counter()
        self._pending = False  # the last instruction was a call and nothing profiled has been entered since
        self.operators = 0  # operators and subscripts run in lenet's code, on arrays or not: a bound, not a count

    def __enter__(self):
        self._saved = sys.getprofile(), sys.gettrace()
        sys.settrace(self._trace)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._saved[0])
        sys.settrace(self._saved[1])

    @staticmethod
    def _dispatcher(code):
        """Whether `code` is one of NumPy's array-function dispatchers, the Python function that np.concatenate,
        np.where and others call first (the ones of C functions live in multiarray.py, the others end in
        _dispatcher). It is not the call: the C function or the Python implementation after it is."""
        name = code.co_filename
        return "numpy" in name and (name.endswith("multiarray.py") or code.co_name.endswith("_dispatcher"))

    def _profile(self, frame, event, arg):
        if event == "call":  # a Python function: its own calls are counted as they happen
            if not self._dispatcher(frame.f_code):
                self._pending = False
        elif event == "c_call":
            self._pending = False
            if arg in (sys.setprofile, sys.settrace):  # the counter's own
                return
            owner = getattr(arg, "__self__", None)
            module = getattr(arg, "__module__", None) or type(owner).__module__
            if module.startswith("numpy"):  # np.empty is module "numpy"; ndarray.sum's owner is an ndarray
                self.counts[self.part]["numpy"] += 1
                self.names[getattr(arg, "__qualname__", arg.__name__)] += 1
            else:
                self.counts[self.part]["other"] += 1

    def _trace(self, frame, event, arg):
        if event == "call":
            if self._dispatcher(frame.f_code):
                return None
            frame.f_trace_opcodes, frame.f_trace_lines = True, False
        elif event == "opcode":
            if self._pending:  # the previous call ran without a Python frame or a profiled C function
                self.counts[self.part]["unseen"] += 1
            op = frame.f_code.co_code[frame.f_lasti]
            self._pending = op in CALL_OPCODES
            if op in OPERATOR_OPCODES and frame.f_code.co_filename.startswith(LENET_CODE):
                self.operators += 1
        return self._trace

    def total(self, part=None):
        """All counted calls of one part, or of every part."""
        parts = [part] if part is not None else list(self.counts)
        return sum(sum(self.counts[p].values()) for p in parts)


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=positive_int, default=256, help="(default %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help="(default %(default)s)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=core_count(),
        help="Python threads of the whole train_step; the parts run on one (default %(default)s: all cores)",
    )
    p.add_argument("--repeats", type=positive_int, default=20, help="timed steps (default %(default)s)")
    p.add_argument("--out", type=Path, help="folder to write layers.csv into (default: print only)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the layers.csv an earlier run left in --out (default off)"
    )
    return p.parse_args(argv)


def timed_step(model, loss_fn, opt, x, y, sync, counter=None):
    """One training step, part by part: {(part, phase): seconds}, phase 'forward', 'backward' or 'step'.

    With a CallCounter, each part's calls into C are counted under its name (the times then include the
    counting and mean nothing).
    """
    times = {}

    def timed(key, fn, *args):
        if counter:
            counter.part = key[0]
        start = time.perf_counter()
        out = fn(*args)
        sync()
        times[key] = time.perf_counter() - start
        if counter:
            counter.part = None  # the glue between the parts is not the parts' own
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


def breakdown(samples, parts, calls):
    """Table rows {part, forward_ms, backward_ms, step_ms, total_ms, percent, c_calls} from
    {(part, phase): [seconds]} and a CallCounter of one step."""
    rows = []
    for part in parts:
        ms = {phase: statistics.median(samples[part, phase]) * 1e3 for p, phase in samples if p == part}
        rows.append(
            {
                "part": part,
                "forward_ms": ms.get("forward"),
                "backward_ms": ms.get("backward"),
                "step_ms": ms.get("step"),
                "total_ms": sum(ms.values()),
                "c_calls": calls.total(part),
            }
        )
    total = sum(r["total_ms"] for r in rows)
    for r in rows:
        r["percent"] = 100 * r["total_ms"] / total
    return rows, total


def phase_line(rows, total):
    """'forward 1.2 ms (40%), backward ..., optimizer ...': the step by phase, the loss in forward and backward."""
    phases = [("forward", "forward_ms"), ("backward", "backward_ms"), ("optimizer", "step_ms")]
    sums = {name: sum(r[key] or 0 for r in rows) for name, key in phases}
    return ", ".join(f"{name} {ms:.3f} ms ({100 * ms / total:.0f}%)" for name, ms in sums.items())


def count_lines(counter):
    """The calls of one counted train_step by kind, and the most frequent NumPy ones sys.setprofile names."""
    counts = sum(counter.counts.values(), collections.Counter())
    frequent = ", ".join(f"{n} {c}" for n, c in counter.names.most_common(6))
    return [
        f"calls into C in one train_step: {counter.total()} (on one thread; operators such as a + b not counted)",
        f"  {counts['numpy']:>5}  NumPy functions and methods sys.setprofile sees (most: {frequent})",
        f"  {counts['unseen']:>5}  calls it does not see: ufuncs (np.exp, np.matmul), dispatchers (np.concatenate), "
        "C types (range, np.float32)",
        f"  {counts['other']:>5}  other C functions it sees (len, isinstance, ...)",
        f"  and {counter.operators} operators and subscripts in lenet's code (a + b, a[i], a[...] = b), on arrays "
        "or on Python numbers: at most that many more NumPy calls",
    ]


def main(argv=None):
    args = parse_args(argv)
    replaced = refuse_to_replace(args.out, ["layers.csv"], args.overwrite) if args.out else []
    # As train.py does (lenet/fast/tuning.py): one BLAS thread, as every chunk of FastRunner.train_step runs (waiting
    # OpenBLAS threads spin, and on a busy machine two of them made the parts 100 times slower than the step), and
    # the malloc thresholds (fresh pages each step would be timed otherwise).
    tune_process(args.backend)
    model = LeNet5(activation="sigmoid", pool="avg", backend=args.backend, dtype="float32", seed=0)
    twin = fuse(model)  # the layers timed one by one: what FastRunner runs
    xp, sync = model.xp, lambda: synchronize(model.xp)
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = (xp.asarray(a) for a in random_batch(args.batch_size))
    print(f"lenet per-layer breakdown: LeNet-5 (sigmoid, avg pool, float32), {args.backend}, batch {args.batch_size}")
    print("\n".join(describe_machine(args.threads)))
    print(f"timing   median of {args.repeats} steps after 2 warm-up steps, ms, the parts on one thread\n")
    samples, whole = {}, []
    runner = FastRunner(model, opt, args.threads if args.backend == "numpy" else 1)
    for rep in range(args.repeats + 2):
        times = timed_step(twin, loss_fn, opt, x, y, sync)
        start = time.perf_counter()
        runner.train_step(x, y)
        sync()
        if rep >= 2:
            whole.append(time.perf_counter() - start)
            for key, seconds in times.items():
                samples.setdefault(key, []).append(seconds)
    with CallCounter() as part_calls:
        timed_step(twin, loss_fn, opt, x, y, sync, counter=part_calls)
    one_thread = FastRunner(model, opt, threads=1)  # the same chunks, on the thread the counter watches
    one_thread.train_step(x, y)  # its own first step: loss functions and buffers made
    with CallCounter() as step_calls:
        one_thread.train_step(x, y)
        sync()
    runner.close()
    one_thread.close()
    parts = [name for name, _ in twin.layers] + ["loss", "sgd"]
    rows, total = breakdown(samples, parts, part_calls)

    def ms(value):
        return "" if value is None else f"{value:.3f}"

    print(TABLE.format("part", "forward ms", "backward ms", "total ms", "% step", "C calls"))
    for r in rows:
        forward, backward = ms(r["forward_ms"]), ms(r["backward_ms"])
        print(TABLE.format(r["part"], forward, backward, ms(r["total_ms"]), f"{r['percent']:.1f}", r["c_calls"]))
    print(TABLE.format("total", "", "", ms(total), "100.0", part_calls.total()))
    print(f"\nby phase: {phase_line(rows, total)}")
    print("C calls: per part, in one step (NumPy, ufuncs, builtins; not operators such as a + b: see the docstring)")
    step_ms = statistics.median(whole) * 1e3
    print(
        f"\ntrain_step as one call ({runner.parallel.threads} workers): {step_ms:.3f} ms "
        f"({args.batch_size / step_ms * 1e3:,.0f} images/s)"
    )
    print("\n".join(count_lines(step_calls)))
    if args.out:
        with atomic_write(args.out / "layers.csv", "w") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
        print(f"wrote {args.out / 'layers.csv'}" + (", replacing the earlier run's" if replaced else ""))


if __name__ == "__main__":
    run_main(main)
