"""The harness's own failures are no verdict on a run, and one runner drains a program at a time
(org/recovery.py, org/runner.py). Each test is a crash a red-team hunt made (2026-12-06): on the
code before, every one of them was recorded against the run's arm, or counted twice."""
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from org.cli import main
from org.lab import Lab
from org.program import load_program
from org.reaper import PULSE_SECONDS
from org.recovery import one_runner
from org.runner import Runner
from test_org_runner import ledger_of, make_project, tiny_program  # noqa: F401 (a fixture)

ORG_RUN = [sys.executable, "-c", "import sys; from org.cli import main; sys.exit(main(['run', 'tiny']))"]


def one_seed(**budget) -> dict:
    return tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0], **budget})


def evaluators_below(pid: int) -> list[int]:
    """The harness's evaluators among pid's descendants (`python -m org.evaluator --run <dir>`)."""
    parent, argv = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().split(b"\0")
    below, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - below
        below |= frontier
    return [p for p in below if b"org.evaluator" in argv.get(p, []) and b"--run" in argv.get(p, [])]


def end(org_run: subprocess.Popen):
    """The runner and what it started (its evaluator leads a session of its own)."""
    for pid in [*evaluators_below(org_run.pid), org_run.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    org_run.wait()


def killing_every_evaluator(org_run: subprocess.Popen) -> list[int]:
    """Run org_run to its end, SIGKILLing each evaluator it starts (a harness that cannot measure)."""
    killed = []
    while org_run.poll() is None:
        for pid in set(evaluators_below(org_run.pid)) - set(killed):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.02)
    return killed


def test_an_evaluator_killed_mid_measurement_measures_the_run_again(make_project):
    """The OOM killer (or anyone) SIGKILLs the harness's evaluator as it measures: the run was
    recorded `error`, its checkpoint deleted, and a code arm's verdict read invalid for good
    ('error in its own code, which could choose the seeds that count'). Now it is measured again."""
    root = make_project(one_seed())
    org_run = subprocess.Popen(ORG_RUN, cwd=root, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while not (found := evaluators_below(org_run.pid)):
            assert org_run.poll() is None and time.time() < deadline, "no evaluator seen"
            time.sleep(0.02)
        os.kill(found[0], signal.SIGKILL)
        out, _ = org_run.communicate(timeout=120)
    finally:
        end(org_run)
    assert org_run.returncode == 0, out
    assert "the harness's measurement failed" in out and "measuring it again" in out, out
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    assert run["status"] == "completed" and run["measurement"] is not None, (run["status"], run["reason"])


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_under_a_runs_trainer_stops_the_runner_and_requeues_the_run(make_project, capsys):
    """A disk the machine filled (no box: a box that fills it is killed by its disk watch) made the
    trainer fail, and the run was recorded `error`, against its arm. Now the runner starts no run on
    a full disk, puts back one whose trainer failed as it filled, and stops, in one line; `org run`
    once there is room runs it."""
    root = make_project(one_seed(per_run={"seconds": 8}))  # (its disk fills as it trains, however loaded the machine)
    runs = root / ".lab" / "tiny" / "runs"
    assert main(["status", "tiny"]) == 0  # (the lab made, its runs' folder on a disk just over the reserve)
    runs.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1040m", "tmpfs", str(runs)], capture_output=True).returncode:
        pytest.skip("no tmpfs can be mounted here")
    fill = ["dd", "if=/dev/zero", f"of={runs / 'filler'}", "bs=1M"]  # (to ENOSPC)
    filler = None
    try:
        subprocess.run(fill, capture_output=True)
        capsys.readouterr()
        assert main(["run", "tiny"]) == 2
        err = capsys.readouterr().err
        assert "free, within the 1.0 GB no run's box may write into: no run starts" in err and "Traceback" not in err, err
        with ledger_of(root) as ledger:
            assert [(r["status"], r["attempts"]) for r in ledger.runs("tiny")] == [("queued", 0)]  # (none spent)
        (runs / "filler").unlink()
        filler = fill_once_a_run_starts(runs)  # (full as its trainer starts)
        returned = main(["run", "tiny"])
        filled = filler.communicate(timeout=120)[0]
        assert returned == 2 and "No space left" in filled, f"org run returned {returned}; the filler: {filled}"
        err = capsys.readouterr().err
        assert "is full" in err and "the run went back to the queue" in err and "Traceback" not in err, err
        with ledger_of(root) as ledger:
            run, = ledger.runs("tiny")
        assert run["status"] == "queued" and "free on the disk; re-queued" in run["attempt_log"], run
    finally:
        if filler is not None and filler.poll() is None:
            filler.kill()
        subprocess.run(["umount", "-l", str(runs)])  # (lazily: a process still in it lets go later)
    assert main(["run", "tiny"]) == 0  # room again
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    assert run["status"] == "completed", run["reason"]


FILLER = """
import shutil, subprocess, sys, time
from pathlib import Path
runs, t0 = Path(sys.argv[1]), time.monotonic()
while not any(p.is_dir() for p in runs.iterdir()):
    if time.monotonic() - t0 > 120:
        sys.exit("no run started in 120 s")
    time.sleep(0.005)
seen = time.monotonic() - t0
dd = subprocess.run(["dd", "if=/dev/zero", f"of={runs / 'filler'}", "bs=1M"], capture_output=True, text=True)
print(f"a run's folder seen at {seen:.2f} s; dd ended at {time.monotonic() - t0:.2f} s, exit {dd.returncode}: "
      f"{dd.stderr.strip()!r}; {shutil.disk_usage(runs).free} bytes free")
"""


def fill_once_a_run_starts(runs: Path) -> subprocess.Popen:
    """Fill the disk under runs to ENOSPC the moment a run's folder appears there, from a process
    of its own (a thread of this one shares its interpreter with the runner under test); its
    output says when it saw the folder, what dd said and what was left free."""
    return subprocess.Popen([sys.executable, "-c", FILLER, str(runs)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_run_the_harness_cannot_measure_stops_the_runner_once_not_for_good(make_project):
    """A measurement that fails every time (a harness bug on this checkpoint) stops the runner the
    first time (a person may mend what is wrong), and after that is recorded `error`, as before:
    a run that stopped every runner would stop the program for good."""
    root = make_project(one_seed())
    for stopped in (True, False):
        org_run = subprocess.Popen(ORG_RUN, cwd=root, start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            assert len(killing_every_evaluator(org_run)) == 2  # (the first measurement, and once more)
            out = org_run.stdout.read()
        finally:
            end(org_run)
        with ledger_of(root) as ledger:
            run, = ledger.runs("tiny")
        if stopped:
            assert org_run.returncode == 2 and "the harness could not measure it, twice" in out, out
            assert "the run stays claimed: `org run` again measures it" in out and run["status"] == "running", out
        else:
            assert org_run.returncode == 0 and run["status"] == "error", (out, run["status"])
            assert "the harness's evaluator failed" in run["reason"] and "recovered run" in out, out
        kept = root / ".lab" / "tiny" / "failed-measurements"  # each attempt's logs, none overwritten by the next
        assert sorted(p.name for p in kept.iterdir()) == [f"1-{n}" for n in range(1, 3 if stopped else 5)]
        assert all((kept / f"1-{n}" / "measure.log").is_file() for n in range(1, 3 if stopped else 5))
        assert f"its logs: {kept / ('1-2' if stopped else '1-4')}" in (run["attempt_log"] if stopped else run["reason"])


def test_a_second_runner_of_a_program_is_refused_in_one_line(make_project, capsys):
    """Two runners started on a crashed lab both recovered a run, and both measured and recorded it
    (its measuring time charged twice). One runner drains a program at a time."""
    root = make_project(one_seed(per_run={"seconds": 8}))
    org_run = subprocess.Popen(ORG_RUN, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        with ledger_of(root) as ledger:
            deadline = time.time() + 60
            while not ledger.runs("tiny", status="running"):
                assert org_run.poll() is None and time.time() < deadline, "the first runner never claimed its run"
                time.sleep(0.05)
        capsys.readouterr()
        assert main(["run", "tiny"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"another runner (pid {org_run.pid}) is running tiny's queue" in err, err
    finally:
        end(org_run)
    with one_runner(root / ".lab" / "tiny"), one_runner(root / ".lab" / "tiny"):  # (as `org serve` holds it: its drains nest)
        assert subprocess.run(ORG_RUN, cwd=root, capture_output=True, text=True).returncode == 2  # (and no one else's)


def test_a_queue_let_go_of_is_free_though_a_child_forked_meanwhile_has_not_yet_started(tmp_path):
    """A test's runner in a thread, beside an agent whose tool calls start boxes, took the queue
    afresh for each drain and met "another runner (pid <its own>)": a child forked while the
    queue was held keeps a copy of every open file until its exec (after its preexec_fn: a box's
    limits, SCHED_IDLE, slow under load), the lock's too."""
    forked, go = os.pipe()
    child = {}
    with one_runner(tmp_path):
        starting = threading.Thread(target=lambda: child.setdefault("proc", subprocess.Popen(
            ["true"], preexec_fn=lambda: (os.write(go, b"x"), time.sleep(1)))))
        starting.start()
        assert os.read(forked, 1) == b"x"  # the child holds its copy of the lock's file now
    try:
        with one_runner(tmp_path):  # (old: "another runner (pid <this one>) is running ...'s queue")
            assert starting.is_alive()  # (the child had not exec'd yet)
    finally:
        starting.join()
        child["proc"].wait()
        os.close(forked), os.close(go)


def test_an_agents_commands_lock_let_go_of_is_free_though_a_child_forked_meanwhile_has_not_yet_started(tmp_path):
    """The same for the harness's other file locks (org.held: an agent's commands, one at a time;
    the board; the launch; a CLI's take-in count): closed only, each stayed held until the child's
    exec, and the next holder waited for it."""
    import fcntl
    from org.agents.tools import one_at_a_time
    forked, go = os.pipe()
    child = {}
    with one_at_a_time(tmp_path / "commands.lock"):
        starting = threading.Thread(target=lambda: child.setdefault("proc", subprocess.Popen(
            ["true"], preexec_fn=lambda: (os.write(go, b"x"), time.sleep(2)))))
        starting.start()
        assert os.read(forked, 1) == b"x"  # the child holds its copy of the lock's file now
    try:
        with open(tmp_path / "commands.lock") as another:
            fcntl.flock(another, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (old: BlockingIOError, for 2 s)
        assert starting.is_alive()  # (the child had not exec'd yet)
    finally:
        starting.join()
        child["proc"].wait()
        os.close(forked), os.close(go)


def test_a_run_killed_for_time_whose_runner_died_before_it_recorded_that_is_killed_not_run_again(make_project):
    """A trainer past run_timeout_seconds that wrote nothing in its grace is SIGKILLed; a runner
    that died before it recorded that left the run claimed, and its recovery put it back in the
    queue: the over-time run cost the budget its timeout once more (each time so). Here the runner's
    SIGTERM is a SIGKILL (a trainer that writes no result in its grace) and it dies as it records."""
    root = make_project(one_seed(per_run={"steps": 1_000_000}, run_timeout_seconds=2))
    dies_as_it_records = ("import os, signal, sys; from org import runner; from org.cli import main\n"
                          "kill = runner._kill_group; runner._kill_group = lambda pid, sig: kill(pid, signal.SIGKILL)\n"
                          "runner.Runner.record = lambda self, ledger, run, result, wall, killed, *a, **k: os._exit(9)\n"
                          "sys.exit(main(['run', 'tiny']))")
    died = subprocess.run([sys.executable, "-c", dies_as_it_records], cwd=root, capture_output=True, text=True, timeout=120)
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
        assert died.returncode == 9 and run["status"] == "running", (died.stderr[-2000:], run["status"])
        with contextlib.closing(Lab.open(root)) as lab:
            Runner(lab, load_program(root / "programs" / "tiny.yaml"), ledger.path, say=lambda text: None).recover(ledger)
        run = ledger.run(run["id"])
    assert run["status"] == "killed" and "run_timeout_seconds (2s), killed by the runner" in run["reason"], dict(run)
    assert run["attempts"] == 1 and not run["lost_seconds"] and 2 <= run["wall_seconds"] < 2 + 2 * PULSE_SECONDS + 5, dict(run)
