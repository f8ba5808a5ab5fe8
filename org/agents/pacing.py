"""
Pacing: the harness's own CPU time spent for one agent, held to a share of a core, at the
lowest priority its cpu group has, and in a launch in a group at a low weight of its own.

Some of an agent's work is the harness's, done outside every box: a CLI's port answers
(org/agents/port.py) and the take-ins of its commits (clis._supervise), an SDK agent's tool calls
with the take-in after each (org/agents/loop.py), and the gateway's reading of its model calls
(org/gateway.py). At a run's priority and unpaced, a CLI calling `org results` in a loop 4 at a
time kept a core of the harness busy, and a 2-thread run took 3.6x as long (session 42's red team).

    pacer = Pacer()                        # one per agent in its `org agent` process, shared by all the
                                           # threads that work for it (the gateway keeps its own: GATEWAY_SHARE)
    answer = pacer.run(lambda: handle(request))   # waits while the agent is in debt, does the work
                                           # in a thread at SCHED_IDLE, books what it cost
    with pacer.paced():                    # the same, in this thread at its own priority (the gateway's,
        model, worst = checked(body)       # in the runner's process: an idle thread there would hold its GIL)

A bucket of CPU seconds: it fills at SHARE a second up to BURST, and each piece of work takes out
what it cost, going into debt. Work that finds the agent in debt waits until it is paid, so over
any long stretch one agent's work takes SHARE of a core; an agent that never floods never waits.
Work that starts while another is under way takes out, as it starts, what the last one cost, so
that requests sent at once queue behind each other rather than all running in the bucket's credit.
Paced alone, a flood still took a fifth of a core at a run's priority, and a 2-thread run beside
it took 21-24% longer (session 43's red team); and one piece of work may be dear before it is
booked (a take-in of a commit naming thousands of objects). run() works at SCHED_IDLE, below
only the other threads of its own cpu group: in a launch on cgroup v1, a CLI's `org agent` runs in
a group at its command boxes' weight, an SDK agent's at its loop's (join_agents_weight). The
gateway's reading (paced()) runs at a run's priority.

What a piece of work cost: its thread's CPU time and its children's (git's: half a `results`),
less what the agent's own boxes used (a command of its `run` tool is its own, metered and at
SCHED_IDLE already: box_ended), and at most twice the wall time it took. The children's time is
the process's: a child another thread reaps meanwhile (a CLI's box, with all it ran) counts too,
and the bound keeps that from being taken as this work's.
"""
from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

SHARE = 0.2   # of a core, at most, that one pacer spends on its agent over a long stretch
BURST = 2.0   # CPU seconds it may spend at once before pacing starts: a few of an honest agent's dearest calls
AGENTS_WEIGHT = 1  # the cpu weight of a CLI's `org agent` process, as of its command boxes (org/sandbox.py agent_box), against a run's 100

_boxes = threading.local()  # CPU seconds of agents' boxes this thread ran: theirs, not the harness's


def box_ended(cpu_seconds: float):
    """Workspace.run's word that a box it waited for used `cpu_seconds` (its cgroup's count)."""
    _boxes.seconds = getattr(_boxes, "seconds", 0.0) + max(0.0, cpu_seconds)


def join_agents_weight(weight: int = AGENTS_WEIGHT) -> Path | None:
    """Move this process (an agent's `org agent`: all the harness does for it, and what that starts)
    into a cpu cgroup of its own at `weight` (the agents' boxes', or an SDK agent's loop's:
    commands.warm_imports); its group, or None where none can be made. SCHED_IDLE alone weighs
    nothing across groups: the runs' boxes are groups of their own, and a thread at SCHED_IDLE in the
    harness's group slowed a 2-thread run 9x (session 43's red team). cgroup v1 only: v2's group
    would hold the process's memory too, outside its agent's pool."""
    from org.cgroups import cgroup_root, cpu_weight_setting, new_cgroup, unmake
    root = cgroup_root("cpu")
    group = new_cgroup(root) if root and root != cgroup_root("memory") else None
    if group is None:
        return None
    try:
        for name, value in cpu_weight_setting(group, weight).items():
            (group / name).write_text(value)
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        unmake({group})
        return None
    return group


def at_idle_priority():
    """This thread, and what it starts, at SCHED_IDLE for good (Linux: a thread's own policy)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def harness_cpu(children: bool = True) -> tuple[float, float]:
    """(CPU time, wall time) now: this thread's and (children) every child's the process has
    waited for, less the boxes this thread ran."""
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN) if children else None
    cpu = time.thread_time() + (reaped.ru_utime + reaped.ru_stime if reaped else 0.0) - getattr(_boxes, "seconds", 0.0)
    return cpu, time.monotonic()


def spent_since(since: tuple[float, float], children: bool = True) -> float:
    """The harness's CPU time since `since` (harness_cpu()), at most twice the wall time between."""
    cpu, wall = harness_cpu(children)
    return max(0.0, min(cpu - since[0], 2 * (wall - since[1])))


class Pacer:
    def __init__(self, share: float = SHARE, burst: float = BURST, children: bool = True):
        """`children`: whether the work's children count; not where it starts none and the
        process reaps others' (the gateway's, in the runner's process, which reaps the runs)."""
        self.share, self.burst, self.children = share, burst, children
        self.lock = threading.Lock()
        self.credit, self.at, self.last = burst, time.monotonic(), 0.0  # (CPU-s; when it was filled; the last cost)

    def owed(self) -> float:
        """Seconds until the agent's debt is paid: 0 when it is not in debt."""
        with self.lock:
            self._fill()
            return max(0.0, -self.credit) / self.share

    def run(self, work: Callable[[], T], wait: bool = True) -> T:
        """work(), paced, in a thread of its own at SCHED_IDLE, as is all it starts (git, a box);
        what it raises is raised here. Not `wait`: work that must not be held up (booked all the same)."""
        guess = self._reserve(wait)
        done = {}

        def idle():
            at_idle_priority()
            since = harness_cpu(self.children)
            try:
                done["value"] = work()
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread, below
                done["error"] = e
            finally:
                self._book(spent_since(since, self.children), guess)
        worker = threading.Thread(target=idle, name="paced", daemon=True)
        worker.start()
        worker.join()
        if "error" in done:
            raise done["error"]
        return done["value"]

    @contextlib.contextmanager
    def paced(self, wait: bool = True):
        """The work in the block, paced as run() does, in this thread at its own priority."""
        guess = self._reserve(wait)
        since = harness_cpu(self.children)
        try:
            yield
        finally:
            self._book(spent_since(since, self.children), guess)

    def _reserve(self, wait: bool) -> float:
        """Wait out the agent's debt (if `wait`), having taken out what the last work cost: returns that."""
        with self.lock:
            self._fill()
            delay, guess = max(0.0, -self.credit) / self.share, self.last
            self.credit -= guess  # (reserved: work that comes meanwhile waits for it too)
        if wait:
            time.sleep(delay)
        return guess

    def _book(self, cost: float, guess: float):
        with self.lock:
            self._fill()
            self.credit -= cost - guess
            self.last = cost

    def _fill(self):
        now = time.monotonic()
        self.credit = min(self.burst, self.credit + (now - self.at) * self.share)
        self.at = now
