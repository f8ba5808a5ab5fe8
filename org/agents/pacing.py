"""
Pacing: the harness's own CPU time spent for one agent, held to a share of a core.

Some of an agent's work is the harness's, done outside every box at a run's priority: a CLI's
port answers (org/agents/port.py) and the take-ins of its commits (clis._supervise), an SDK
agent's tool calls with the take-in after each (org/agents/loop.py), and the gateway's reading of
its model calls (org/gateway.py). Unpaced, a CLI calling `org results` in a loop 4 at a time kept
a core of the harness busy, and a 2-thread run took 3.6x as long (hunt42).

    pacer = Pacer()            # one per agent, shared by all the threads that work for it
    with pacer.paced():        # waits while the agent is in debt, then books what the work cost
        answer = handle(request)

A bucket of CPU seconds: it fills at SHARE a second up to BURST, and each piece of work takes out
what it cost, going into debt. Work that finds the agent in debt waits until it is paid, so over
any long stretch one agent's work takes SHARE of a core; an agent that never floods never waits.
Work that starts while another is under way takes out, as it starts, what the last one cost, so
that requests sent at once queue behind each other rather than all running in the bucket's credit.

What a piece of work cost: this thread's CPU time and its children's (git's: half a `results`),
less what the agent's own boxes used (a command of its `run` tool is its own, metered and at
SCHED_IDLE already: box_ended), and at most twice the wall time it took. The children's time is
the process's: a child another thread reaps meanwhile (a CLI's box, with all it ran) counts too,
and the bound keeps that from being taken as this work's.
"""
from __future__ import annotations

import contextlib
import resource
import threading
import time

SHARE = 0.2   # of a core, at most, that the harness spends on one agent over a long stretch
BURST = 2.0   # CPU seconds it may spend at once before pacing starts: a few of an honest agent's dearest calls

_boxes = threading.local()  # CPU seconds of agents' boxes this thread ran: theirs, not the harness's


def box_ended(cpu_seconds: float):
    """Workspace.run's word that a box it waited for used `cpu_seconds` (its cgroup's count)."""
    _boxes.seconds = getattr(_boxes, "seconds", 0.0) + max(0.0, cpu_seconds)


def harness_cpu() -> tuple[float, float]:
    """(CPU time, wall time) now: this thread's and every child's the process has waited for, less
    the boxes this thread ran."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.thread_time() + children.ru_utime + children.ru_stime - getattr(_boxes, "seconds", 0.0)
    return cpu, time.monotonic()


def spent_since(since: tuple[float, float]) -> float:
    """The harness's CPU time since `since` (harness_cpu()), at most twice the wall time between."""
    cpu, wall = harness_cpu()
    return max(0.0, min(cpu - since[0], 2 * (wall - since[1])))


class Pacer:
    def __init__(self, share: float = SHARE, burst: float = BURST):
        self.share, self.burst = share, burst
        self.lock = threading.Lock()
        self.credit, self.at, self.last = burst, time.monotonic(), 0.0  # (CPU-s; when it was filled; the last cost)

    def owed(self) -> float:
        """Seconds until the agent's debt is paid: 0 when it is not in debt."""
        with self.lock:
            self._fill()
            return max(0.0, -self.credit) / self.share

    @contextlib.contextmanager
    def paced(self, wait: bool = True):
        """Wait out the agent's debt (unless not `wait`: work that must not be held up, booked all
        the same), do the work, and book what it cost."""
        with self.lock:
            self._fill()
            delay, guess = max(0.0, -self.credit) / self.share, self.last
            self.credit -= guess  # (reserved: work that comes meanwhile waits for it too)
        if wait:
            time.sleep(delay)
        since = harness_cpu()
        try:
            yield
        finally:
            cost = spent_since(since)
            with self.lock:
                self._fill()
                self.credit -= cost - guess
                self.last = cost

    def _fill(self):
        now = time.monotonic()
        self.credit = min(self.burst, self.credit + (now - self.at) * self.share)
        self.at = now
