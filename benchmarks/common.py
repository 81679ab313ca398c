"""What the benchmark scripts share: one-line flag errors, the machine description, the random batch."""

import argparse
import os
import platform
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


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(threads):
    """Header lines: machine, library versions, the BLAS/OpenMP pools threadpoolctl sees, threads used.

    Call it inside threadpool_limits so the pools show the limits in force.
    """
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for name in ("torch", "cupy"):
        module = sys.modules.get(name)
        versions.append(f"{name} {module.__version__ if module else '-'}")
    pools = [
        f"{p['internal_api']} {p.get('version') or ''}".strip()
        + f" ({p['num_threads']} threads, {Path(p['filepath']).name})"
        for p in threadpool_info()
    ]
    lines = [
        f"machine  {platform.platform()}, {cpu_model()}, {core_count()} cores",
        f"versions {', '.join(versions)}",
        f"pools    {'; '.join(pools) or 'none found'}",
        f"threads  {threads}",
    ]
    if hasattr(os, "getloadavg"):  # others' work on a shared machine shows here, and in the min-max spread
        lines.append(f"load     {os.getloadavg()[0]:.2f} (1-minute average before the run)")
    if "cupy" in sys.modules and cupy_available():  # only when a GPU backend is in use
        cuda = sys.modules["cupy"].cuda
        lines.append(f"gpu      {cuda.runtime.getDeviceProperties(cuda.Device().id)['name'].decode()}")
    return lines


def run_main(main):
    """Run a script's main(); a LenetError (bad flag value, missing GPU) becomes one line and exit status 2."""
    try:
        main()
    except LenetError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
