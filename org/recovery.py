"""
What a runner that died (or was stopped) left, taken up by the next runner of the program before
it claims anything: a run whose trainer wrote its result is measured and recorded, any other put
back in the queue, each charged once; and the lock that keeps a program's queue to one runner at
a time (two runners started on a crashed lab both recovered a run, and both measured and recorded it).

    with one_runner(lab.state_dir(program.name)):   # OrgError: another runner drains it
        recover(runner, ledger)
        remeasure(runner, ledger)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from datetime import datetime
from pathlib import Path

from org import OrgError, remove_tree
from org.measure import HARNESS_LOGS, planted, put_aside, read_result
from org.reaper import KILL_GRACE_SECONDS, last_change, last_pulse, reap, sweep_pulses
from org.slots import make_slots
from org.streams import run_stream
from trainer.record import Result


HELD: set[Path] = set()  # the programs whose queue this process holds (`org serve` its own for good: its drains nest)


@contextlib.contextmanager
def one_runner(state_dir: Path, wait: float = 0.0):
    """Hold the program's queue for this process (an open file's lock: the kernel drops it with the
    process, however it dies); OrgError where another holds it `wait` seconds on."""
    if state_dir in HELD:
        yield
        return
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = open(state_dir / "runner.lock", "a+")
    except OSError as e:  # (a hand's damage: a folder where the lock goes)
        raise OrgError(f"{e.filename}: {e.strerror}: the runner's lock cannot be held; move it away") from None
    with lock:
        deadline = time.monotonic() + wait
        while not locked(lock):
            if time.monotonic() > deadline:
                lock.seek(0)
                raise OrgError(f"another runner (pid {lock.read().strip() or '?'}) is running {state_dir.name}'s queue: "
                               "one at a time (`org stop` ends a launched org's)")
            time.sleep(0.1)
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        HELD.add(state_dir)
        try:
            yield
        finally:
            HELD.discard(state_dir)
            # (let go of, not only closed: a child forked meanwhile holds a copy of the file until its
            # exec, which kept the lock, and this process's next drain met "another runner (pid <its own>)")
            fcntl.flock(lock, fcntl.LOCK_UN)


def locked(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def recover(runner, ledger, why: str = "died mid-run", just_now: bool = False):
    """Runs whose runner died (or was stopped: `why`): keep a finished result, else set the
    partial directory aside (never deleted) and put the run back in the queue, its attempt
    charged to when it was last worked on (its runner's last pulse, or its last write where that
    came later), or to now where the runner ended `just_now` (`org stop`). A finished run's
    trainer ran until its last write; its runner measured it from then until its last pulse (or now)."""
    program = runner.program
    for run in ledger.stale_runs(program.name):
        run_dir = Path(run["run_dir"]) if run["run_dir"] else runner.runs_dir / str(run["id"])
        if run["job_id"] and runner.jobs and runner.jobs.status(run["job_id"]) in ("PENDING", "RUNNING"):
            runner.say(f"run {run['id']}: its job {run['job_id']} still runs on the cluster; adopted")
            runner.jobs.wait(run["job_id"], program.budget.run_timeout_seconds, KILL_GRACE_SECONDS, runner.stopping)
            ledger.set_job(run["id"], node=runner.jobs.node(run["job_id"]), machine=runner.jobs.machine(run["job_id"]))
        if stuck := reap(run["trainer_pid"], run_dir):  # orphans of the run, gone before it is read
            runner.say(f"run {run['id']}: processes {sorted(stuck)} of its dead runner do not die; "
                       "its directory is read all the same")
        changed = last_change(run_dir, skip=HARNESS_LOGS) if run_dir.is_dir() and not run_dir.is_symlink() else None
        left = planted(run_dir)  # before anything there is opened (and its times moved to now)
        # (a start not on record, its runner stopped as it started it, says not which data it was given: run again)
        result = Result(status="invalid", reason=left) if left else read_result(run_dir) if run["command"] else None
        started = datetime.fromisoformat(run["started_at"]).timestamp()
        lived = time.time() if just_now else last_pulse(runner.pulses, run["runner_pid"], run["runner_started"]) or 0.0
        remove_tree(run_stream(runner.harness_cache, program.name, run), ignore_errors=True)  # (its data)
        if result is not None:
            since = max(changed or 0.0, datetime.fromisoformat(run["adopted_at"]).timestamp() if run["adopted_at"] else 0.0)
            with ledger.tx():  # (killed as it measures, this runner is charged from now: both, or neither)
                if since and lived > since:  # its runner lived on: measuring it, killed (or stopped)
                    ledger.charge_measuring(run["id"], lived - since)
                ledger.adopt(run["id"])
            runner.record(ledger, run, result, (changed or time.time()) - started, None, make_slots(program)[0],
                          run["trainer_cpu"])
            runner.say(f"recovered run {run['id']}: result.json was written before the runner died")
            continue
        spent = (time.time() if just_now else max(changed or started, lived)) - started
        if run["command"] and run["reason"]:  # its runner had killed its trainer (for time: Runner._wait) and died
            # before it recorded that: run again, an over-time run cost the budget its timeout once more, each time
            runner.record(ledger, run, Result(status="killed"), spent, f"{run['reason']} (its runner died before it "
                          "recorded that)", make_slots(program)[0], run["trainer_cpu"])
            continue
        put_aside(run_dir)
        ledger.requeue(run["id"], f"runner pid {run['runner_pid']} {why}; re-queued", spent)
        runner.say(f"re-queued run {run['id']} (its runner {why})")
    sweep_pulses(runner.pulses)


def remeasure(runner, ledger):
    """Completed runs recorded without the harness's measurement (by an older nanolab) are
    measured now from their checkpoints; one that cannot be measured becomes `invalid`."""
    for run in ledger.runs(runner.program.name, status="completed"):
        if run["measurement"] is not None:
            continue
        result, t0 = run["result"] or Result(), time.monotonic()
        status, reason, measurement = runner.measure(ledger, run, result, make_slots(runner.program)[0])
        with ledger.tx():
            ledger.finish(run["id"], status, reason, result, run["wall_seconds"], measurement, time.monotonic() - t0)
        runner.say(f"run {run['id']}: measured by the harness now (recorded before it measured runs): {status}")
