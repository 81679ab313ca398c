"""What the benchmark scripts share: one-line flag errors, the machine description, the random batch, and busy
neighbours (the other programs of a real laptop, for `--busy N`)."""

import argparse
import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

from lenet.backend import cupy_available
from lenet.cli import ArgumentParser, positive_int  # noqa: F401  (the scripts import them from here)
from lenet.errors import LenetError


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def count(text):
    """A whole number >= 0 (--busy 0: no neighbours)."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return int(text)


def add_busy_option(parser):
    """--busy N: the busy neighbours (busy_neighbours below) that a benchmark runs beside its timing."""
    parser.add_argument(
        "--busy",
        type=count,
        default=0,
        help="busy neighbour processes (plain Python busy loops) running beside the timing (default %(default)s)",
    )


def positive_ints(text):
    """'32,256,1024' -> [32, 256, 1024]."""
    return [positive_int(part) for part in text.split(",")]


def core_count():
    """Cores this process may run on (the affinity mask, which containers narrow), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def random_batch(n, seed=0):
    """A fixed batch in host memory: images (n, 1, 28, 28) float32 in [0, 1), labels (n,) int64."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def cpu_info():
    """{field: value} of the first processor in /proc/cpuinfo ({} where there is none: not Linux)."""
    info = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            break  # the end of the first processor's block
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_model():
    return cpu_info().get("model name") or platform.processor() or platform.machine()


# The widest vector instruction set the CPU reports, first match wins (x86 flags; ARM's "Features" line).
INSTRUCTION_SETS = (
    ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"), ("sve", "SVE"), ("asimd", "NEON"),
)  # fmt: skip


def instruction_set(info=None):
    """'AVX-512', 'AVX2', ... from the CPU flags; the machine's architecture name where no flag is known."""
    info = cpu_info() if info is None else info
    flags = set((info.get("flags") or info.get("Features") or "").split())
    for flag, name in INSTRUCTION_SETS:
        if flag in flags:
            return name
    return f"{platform.machine()} (no known vector flag)"


def blas_description():
    """'OpenBLAS 0.3.31, kernel Haswell': the BLAS libraries threadpoolctl finds, with the kernel OpenBLAS chose.

    OpenBLAS picks its kernels for the CPU it finds at load time (threadpoolctl reports that as `architecture`),
    unless OPENBLAS_CORETYPE names one: the same numpy wheel runs different code on different machines.
    """
    names = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}
    found = [
        f"{names.get(p['internal_api'], p['internal_api'])} {p.get('version') or '?'}"
        + (f", kernel {p['architecture']}" if p.get("architecture") else "")
        for p in threadpool_info()
        if p["user_api"] == "blas"
    ]
    return "; ".join(found) or "none found"


def describe_machine(threads):
    """Header lines: CPU and instruction set, BLAS kernel, library versions, the thread pools, threads used.

    Call it inside threadpool_limits so the pools show the limits in force. Figures from different machines
    differ by 2x and more (PyTorch most), so every output names the CPU it was measured on.
    """
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    torch = sys.modules.get("torch")
    if torch:
        versions.append(
            f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()})"
        )
    else:
        versions.append("torch -")
    cupy = sys.modules.get("cupy")
    versions.append(f"cupy {cupy.__version__ if cupy else '-'}")
    pools = [
        f"{p['internal_api']} {p.get('version') or ''}".strip()
        + f" ({p['num_threads']} threads, {Path(p['filepath']).name})"
        for p in threadpool_info()
    ]
    lines = [
        f"cpu      {cpu_model()}, {instruction_set()}, {core_count()} cores ({platform.platform()})",
        f"blas     {blas_description()} (the kernel is threadpoolctl's `architecture`)",
    ]
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_")]
    if settings:
        why = (
            " (OPENBLAS_CORETYPE overrides the kernel OpenBLAS would choose)"
            if "OPENBLAS_CORETYPE" in os.environ
            else ""
        )
        lines.append(f"env      {' '.join(settings)}{why}")
    lines += [
        f"versions {', '.join(versions)}",
        f"pools    {'; '.join(pools) or 'none found'}",
        f"threads  {threads}",
    ]
    if hasattr(os, "getloadavg"):  # others' work on a shared machine shows here, and in the min-max spread
        lines.append(f"load     {os.getloadavg()[0]:.2f} (1-minute average before the run)")
    if "cupy" in sys.modules and cupy_available():  # only when a GPU backend is in use
        cuda = sys.modules["cupy"].cuda
        name = cuda.runtime.getDeviceProperties(cuda.Device().id)["name"].decode()
        driver, runtime = (
            f"{v // 1000}.{v % 1000 // 10}" for v in (cuda.runtime.driverGetVersion(), cuda.runtime.runtimeGetVersion())
        )
        lines.append(f"gpu      {name}, CUDA driver {driver}, runtime {runtime}")
    return lines


def refuse_to_replace(out, names, overwrite):
    """The files of `names` that an earlier run left in folder `out`: without --overwrite, a LenetError that says
    so. train.py's rule for its run folders; checked before anything is timed, so that a refusal costs nothing."""
    existing = [name for name in names if (Path(out) / name).exists()]
    if existing and not overwrite:
        raise LenetError(
            f"{out} already holds {' and '.join(existing)} of an earlier run; replace them with --overwrite, "
            "or choose another --out"
        )
    return existing


# A busy neighbour: a plain Python busy loop. It checks every few tens of milliseconds that the benchmark that started
# it is still its parent, so that it ends by itself should the benchmark be killed without a chance to stop it.
BUSY_LOOP = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


@contextlib.contextmanager
def busy_neighbours(n):
    """Within: n busy neighbour processes, each a plain Python busy loop at normal priority (what a browser tab, an
    editor or a second experiment does to a laptop's cores). Yields their Popen objects.

    They are stopped on the way out, however it goes (an error, Ctrl-C); each runs in a session of its own, so that a
    Ctrl-C typed in the terminal reaches only the benchmark, which stops them, and none prints a traceback.
    """
    neighbours = []
    try:
        for _ in range(n):
            neighbours.append(
                subprocess.Popen(
                    [sys.executable, "-c", BUSY_LOOP, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        yield neighbours
    finally:
        for neighbour in neighbours:
            neighbour.kill()
        for neighbour in neighbours:
            neighbour.wait()


def busy_line(neighbours):
    """The header line that says what ran beside the timing."""
    if not neighbours:
        return "busy     none: nothing of the benchmark's own ran beside it (see `load` for others' work)"
    pids = ", ".join(str(p.pid) for p in neighbours)
    what = (
        "1 busy neighbour process, " if len(neighbours) == 1 else f"{len(neighbours)} busy neighbour processes, each "
    )
    return (
        f"busy     {what}a plain Python busy loop at normal priority (pid {pids}), running from before the first "
        "timing to after the last, for every backend alike"
    )


def run_main(main):
    """Run a script's main(); a LenetError (bad flag value, missing GPU) becomes one line and exit status 2, Ctrl-C
    one line and exit status 130."""
    try:
        main()
    except LenetError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{Path(sys.argv[0]).name}: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)
