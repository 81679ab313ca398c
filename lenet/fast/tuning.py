"""Process tuning: settings of the whole process that the entry points make once, at their top, never a runner.

    tune_process(backend)    # train.py, test.py, the benchmarks and each worker process, before anything else

What it speeds up: the allocator, BLAS and thread switching around a LeNet step, not its arithmetic; nothing here
changes a single number a step computes. `benchmarks/run.py` measures a step with these settings, as train.py runs it.

- glibc's malloc gives every freed block over 128 KiB back to the system at once (mmap/munmap), so each of a step's
  im2col buffers is fresh memory whose pages fault in on first touch; `keep_freed_memory` raises that threshold.
  (glibc raises it by itself once large blocks have been freed, which is why a run that loaded a big data set was
  fast without it; this makes every process fast.)
- OpenBLAS's own threads spin while they wait for work; next to lenet's workers (lenet/fast/parallel.py), or with
  anything else running on the machine, they slowed training steps by orders of magnitude. BLAS is held at one
  thread per call: lenet's own workers use the cores.
- With the default 5 ms switch interval a thread that wants the GIL back can wait long between the many short NumPy
  calls of a LeNet step; a shorter one lets the worker threads (parallel.py, where processes are not used) interleave.
  It matters only while two threads run Python.
"""

import ctypes
import sys

from threadpoolctl import threadpool_limits

SWITCH_INTERVAL_S = 5e-4


def keep_freed_memory():
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB for reuse instead of handing them back to the OS.

    Linux with glibc only; elsewhere a no-op. Returns whether the setting took.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def tune_process(backend="numpy"):
    """The settings above, for the rest of the process, on the NumPy backend. Returns the threadpoolctl limiter,
    whose restore_original_limits() gives BLAS its threads back; None on CuPy (nothing to tune)."""
    if backend != "numpy":
        return None
    keep_freed_memory()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return threadpool_limits(limits=1, user_api="blas")
