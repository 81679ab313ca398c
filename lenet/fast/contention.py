"""How much of the CPU other programs take: what lenet's workers adapt their waiting to, and what train.py tells the
user about.

What it must equal: nothing; it changes no number a step computes. It decides only how many of lenet's workers take
chunks and whether they poll or sleep while they wait for each other (parallel.DataParallel._adapt): the queue of
chunks keeps a worker that waits for a core from holding a step up, but a worker that shares a core with the calling
process only takes that core's time from it.

Measured over windows of about WINDOW_S seconds, from /proc (Linux): the busy time of the cores this process may run
on (/proc/stat: every state but idle and iowait, and a virtual machine's steal) less the CPU time of lenet's own
processes (/proc/PID/stat of the training process, its threads included, and its worker processes) is what other
programs took, in cores. Where /proc is missing nothing is measured, and lenet waits as on a quiet machine.
"""

import os
import time

WINDOW_S = 0.5
FIRST_WINDOW_S = 0.2  # the first verdict sooner: the worker processes start only once it says quiet
BUSY_CORES = 0.5  # others took at least half a core over a window: the machine is busy
QUIET_CORES = 0.2  # and under a fifth of one: quiet again
_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _cpu_lines():
    """{cpu number: [jiffies in each state]} from /proc/stat, or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            text = f.read()
    except OSError:
        return None
    lines = {}
    for line in text.splitlines():
        name, _, values = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            lines[int(name[3:])] = [int(v) for v in values.split()]
    return lines


def _busy_ticks(cpus):
    """Jiffies the cores `cpus` spent busy (user, nice, system, irq, softirq, steal), or None."""
    lines = _cpu_lines()
    if lines is None:
        return None
    total = 0
    for cpu in cpus:
        states = lines.get(cpu, [])
        total += sum(states[:8]) - sum(states[3:5])  # all but idle and iowait; guest time is already in user
    return total


def _process_ticks(pid):
    """Jiffies process `pid` ran (user and system, all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


class CpuWatch:
    """Watches how many cores other programs take beside lenet's processes (`pids()`: the worker processes' ids;
    this process is always counted as lenet's). update() once a step: it measures when a window has passed, the first
    after first_s. clock: seconds (time.perf_counter; a test's own clock)."""

    def __init__(self, pids=list, window_s=WINDOW_S, clock=time.perf_counter, first_s=FIRST_WINDOW_S):
        self.pids, self.window_s, self.clock = pids, window_s, clock
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.others = None  # the cores the other programs took in the last window
        self._last = self._sample()
        # busy: None until the first window is measured, False where nothing can be measured.
        self.busy = None if self._last is not None else False
        self._due = clock() + first_s

    def _sample(self):
        busy = _busy_ticks(self.cpus) if self.cpus else None
        if busy is None:
            return None
        ours = {pid: _process_ticks(pid) for pid in (os.getpid(), *self.pids())}
        return self.clock(), busy, {pid: t for pid, t in ours.items() if t is not None}

    def update(self):
        """Measure if a window has passed; returns whether it did (then `others` and `busy` are new)."""
        now = self.clock()
        if self._last is None or now < self._due:
            return False
        sample = self._sample()
        if sample is None:  # /proc went away: as if it had never been there
            self._last, self.busy = None, False
            return True
        (then, busy_then, ours_then), (now, busy_now, ours_now) = self._last, sample
        ours = sum(t - ours_then.get(pid, 0) for pid, t in ours_now.items())  # a new process: all its time is new
        self.others = max(0.0, (busy_now - busy_then - ours) * _TICK_S / (now - then))
        self._last, self._due = sample, now + self.window_s
        self.busy = self.others >= BUSY_CORES or (self.busy is True and self.others >= QUIET_CORES)
        return True
