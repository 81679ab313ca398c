"""Sharing the CPU with other programs (lenet/fast/contention.py and what DataParallel and train.py do with it).

The CpuWatch is held to its arithmetic on counters a test controls, and to seeing a real busy neighbour; DataParallel
to sleeping instead of polling while the machine is busy, and to saying so once; train.py to printing that one line
through its warning channel, once a run, with a busy neighbour beside it.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import needs_data, needs_processes, run_script

from lenet import LeNet5
from lenet.fast import DataParallel, fuse
from lenet.fast import contention as contention_module
from lenet.fast.contention import BUSY_CORES, QUIET_CORES, CpuWatch
from lenet.fast.processes import SPIN_S
from lenet.optim import SGD

pytestmark = pytest.mark.usefixtures("one_blas_thread")

needs_proc = pytest.mark.skipif(
    not (os.path.exists("/proc/stat") and hasattr(os, "sched_getaffinity")), reason="reads /proc/stat (Linux)"
)
TICK_S = contention_module._TICK_S


class Counters:
    """What CpuWatch reads, set by the test: the cores' busy jiffies, each process's jiffies, and the clock."""

    def __init__(self, monkeypatch):
        self.now, self.busy, self.ticks = 0.0, 0, {os.getpid(): 0}
        monkeypatch.setattr(contention_module, "_busy_ticks", lambda cpus: self.busy)
        monkeypatch.setattr(contention_module, "_process_ticks", lambda pid: self.ticks.get(pid))

    def run(self, seconds, others, ours=0.0, pid=None):
        """`seconds` pass in which the other programs take `others` cores and process `pid` (this one) `ours`."""
        self.now += seconds
        self.busy += round((others + ours) * seconds / TICK_S)
        pid = os.getpid() if pid is None else pid
        self.ticks[pid] = self.ticks.get(pid, 0) + round(ours * seconds / TICK_S)


@needs_proc
def test_the_watch_counts_what_others_take_and_turns_busy_and_quiet_with_a_margin(monkeypatch):
    counters = Counters(monkeypatch)
    watch = CpuWatch(window_s=0.5, clock=lambda: counters.now, first_s=0.5)
    counters.run(0.3, others=1.0)
    assert not watch.update() and watch.others is None and watch.busy is None  # no window yet: nothing measured
    counters.run(0.3, others=1.0, ours=2.0)  # busy cores that are lenet's own count for nothing
    assert watch.update() and watch.busy and watch.others == pytest.approx(1.0)
    counters.run(0.6, others=(BUSY_CORES + QUIET_CORES) / 2)
    assert watch.update() and watch.busy  # between the two thresholds: as it was
    counters.run(0.6, others=QUIET_CORES / 2, ours=1.5)
    assert watch.update() and not watch.busy and watch.others == pytest.approx(QUIET_CORES / 2)
    counters.run(0.6, others=(BUSY_CORES + QUIET_CORES) / 2)
    assert watch.update() and not watch.busy  # the same margin on the way up


@needs_proc
def test_the_workers_time_is_lenets_own_a_new_workers_whole_time_included(monkeypatch):
    counters = Counters(monkeypatch)
    workers = []
    watch = CpuWatch(pids=lambda: workers, window_s=0.5, clock=lambda: counters.now, first_s=0.5)
    workers.append(4242)  # started within the window: all its time so far is this window's
    counters.run(0.6, others=0.1, ours=1.0, pid=4242)
    assert watch.busy is None and watch.update() and watch.busy is False  # the first verdict: quiet
    assert watch.others == pytest.approx(0.1)
    counters.run(0.6, others=0.3, ours=0.9, pid=4242)
    watch.update()
    assert watch.others == pytest.approx(0.3) and not watch.busy


@needs_proc
def test_the_watch_sees_a_real_busy_neighbour():
    """A busy loop beside this process takes far more than BUSY_CORES of the cores this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(neighbour.pid, cpus)
        watch = CpuWatch(window_s=0.5)
        deadline = time.monotonic() + 30
        while watch.others is None and time.monotonic() < deadline:
            time.sleep(0.1)
            watch.update()
        assert watch.busy and watch.others >= BUSY_CORES, watch.others
    finally:
        neighbour.kill()
        neighbour.wait()


class Watch:
    """A CpuWatch whose verdicts the test gives: update() reports each new one once."""

    def __init__(self, busy=None, others=None):
        self.busy, self.others, self.cpus, self._new = busy, others, [0, 1], busy is not None

    def set(self, busy, others):
        self._new, self.busy, self.others = True, busy, others

    def update(self):
        new, self._new = self._new, False
        return new


@needs_processes
def test_beside_busy_programs_fewer_workers_take_chunks_none_polls_and_the_user_is_told_once():
    told = []
    model = LeNet5(seed=3)
    runner = DataParallel(fuse(model), 2, notify=told.append)
    x, y = np.zeros((64, 1, 28, 28), np.float32), np.zeros(64, int)
    opt = SGD(model.parameters(), lr=0.1)
    try:
        runner.watch = watch = Watch()
        runner.train_step(opt, x, y)
        assert not runner._workers and runner.takers == [0, 0] and not told  # nothing measured yet: the caller alone
        assert runner._group.spin_s == 0.0
        # (busy, cores the others take) -> (workers that take chunks, seconds of polling)
        for busy, others, active, spin in [
            (False, 0.1, 2, SPIN_S),
            (True, 1.2, 1, 0.0),  # one core left: the calling process alone
            (False, 0.1, 2, SPIN_S),
            (True, 0.6, 1, 0.0),
        ]:
            watch.set(busy, others)
            runner.train_step(opt, x, y)  # measured after this step: the next one runs as it says
            assert runner.active == active and runner._group.batch["spin_s"][0] == spin
            queued = runner._group.step
            runner.train_step(opt, x, y)
            assert (runner._group.step == queued) == (active == 1)  # one worker: no chunk went into the queue
            assert active > 1 or runner.takers == [0, 0]
        assert len(told) == 1, told  # the second busy spell says nothing more
        assert told[0] == (
            "other programs are using the CPU (about 1.2 of the 2 cores lenet runs on): lenet now runs its steps on 1 "
            "of its 2 workers, and on all once the cores free up"
        )
        runner._close_workers()  # as after Ctrl-C: the next group starts the way the machine is now
        runner.train_step(opt, x, y)
        assert runner._group.spin_s == 0.0 and runner.active == 1 and runner.takers == [0, 0]
        assert not runner._workers  # and no worker is started while the machine is busy
    finally:
        runner.close()


@needs_processes
def test_a_worker_that_ends_while_the_caller_runs_alone_is_noticed():
    """Beside busy programs the workers take no chunks, but one that ended is noticed at the next step all the same."""
    import signal

    model = LeNet5(seed=3)
    runner = DataParallel(fuse(model), 2)
    x, y = np.zeros((64, 1, 28, 28), np.float32), np.zeros(64, int)
    opt = SGD(model.parameters(), lr=0.1)
    try:
        runner.watch = watch = Watch(busy=False, others=0.0)
        runner.train_step(opt, x, y)  # quiet: the worker starts
        watch.set(True, 1.5)
        runner.train_step(opt, x, y)
        assert runner.active == 1 and runner._workers
        worker = runner._workers[0].process
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        with pytest.warns(UserWarning, match="a worker process ended"):
            runner.train_step(opt, x, y)
        assert not runner.processes
    finally:
        runner.close()


@needs_data
@needs_proc
def test_train_py_with_a_busy_neighbour_says_so_once_on_stderr(tmp_path, offline_env):
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(neighbour.pid, os.sched_getaffinity(0))
        args = ["--limit", 10000, "--epochs", 3, "--threads", 2, "--no-progress", "--out", tmp_path / "run"]
        result = run_script("train.py", args, offline_env)
    finally:
        neighbour.kill()
        neighbour.wait()
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # one line for the whole run, not one per epoch
    assert lines[0].startswith("train.py: warning: other programs are using the CPU (about "), lines[0]
