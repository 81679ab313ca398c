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
        lines.append(f"gpu      {cuda.runtime.getDeviceProperties(cuda.Device().id)['name'].decode()}")
    return lines


def run_main(main):
    """Run a script's main(); a LenetError (bad flag value, missing GPU) becomes one line and exit status 2."""
    try:
        main()
    except LenetError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
