"""What recovery kills of a dead runner's run (org/reaper.py): its trainer wherever it went, all
that trainer started, and nothing else that happens to name the run's folder."""
import os
import subprocess
import sys
import time

from org import pid_alive
from org.reaper import last_change, reap, run_processes
from org.sandbox import dies_with

SLEEP = "import os, sys, time\nif sys.argv[1] == 'fork' and os.fork() == 0:\n    os.setsid()\ntime.sleep(600)"


def start(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLEEP, *map(str, argv)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def orphan_trainer(run_dir) -> int:
    """A trainer whose parent is gone (as a box's, once bwrap is killed): no tree leads to it."""
    code = ("import subprocess, sys\n"
            f"p = subprocess.Popen([sys.executable, '-c', {SLEEP!r}, 'no', '--out', {str(run_dir)!r}],"
            " start_new_session=True, stdout=subprocess.DEVNULL,"
            " stderr=subprocess.DEVNULL)\nprint(p.pid)")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_recovery_kills_the_runs_processes_and_only_those(tmp_path):
    run, other = tmp_path / "runs" / "3", tmp_path / "runs" / "30"
    for d in (run, other):
        d.mkdir(parents=True)
        (d / "train.log").write_text("")
    recorded = start("fork", "--out", run)  # the pid the runner recorded, and a child in a session of its own
    orphan = orphan_trainer(run)
    bystanders = [start("no", "--out", other),                 # another run's trainer: runs/30 is not runs/3
                  start("no", "tail", "-f", run / "train.log")]  # someone reading the run's log
    try:
        deadline = time.monotonic() + 30  # the forked child exists (a loaded machine starts it late)
        while len(found := run_processes(recorded.pid, run)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {recorded.pid, orphan} < found and len(found) == 3  # and the forked child
        assert not found & {b.pid for b in bystanders}
        assert reap(recorded.pid, run) == set()
        assert not any(map(pid_alive, found))
        assert all(b.poll() is None for b in bystanders)
        assert run_processes(recorded.pid, run) == set()
    finally:
        for p in [recorded, *bystanders]:
            p.kill()
            p.wait()


def test_a_recorded_pid_now_someone_elses_is_left_alone(tmp_path):
    """pids are reused: the one the dead runner recorded may be any process by now."""
    someone = start("no", "--out", tmp_path / "elsewhere")
    try:
        assert run_processes(someone.pid, tmp_path / "runs" / "3") == set()
        assert reap(someone.pid, tmp_path / "runs" / "3") == set() and someone.poll() is None
    finally:
        someone.kill()
        someone.wait()


def test_a_child_ends_with_the_process_that_started_it_even_one_that_died_as_it_forked():
    """A box's bwrap and a model worker die with their parent (PR_SET_PDEATHSIG), however it ends.
    A parent SIGKILLed between the fork and the child's prctl never sends that signal (CI once saw
    an agent's box outlive the agent so): the child finds its parent is another, and ends."""
    code = ("import subprocess, sys\nfrom org.sandbox import dies_with\nimport os\n"
            "p = subprocess.Popen(['sleep', '600'], preexec_fn=dies_with(os.getpid()))\n"
            "print(p.pid, flush=True)\nimport time; time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    child = int(parent.stdout.readline())
    assert pid_alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:  # (a zombie until init reaps it)
        time.sleep(0.05)
    assert not pid_alive(child)

    t0 = time.monotonic()  # the race, as the child sees it: a parent pid other than the one that armed it
    orphaned = subprocess.run(["sleep", "600"], preexec_fn=dies_with(parent.pid))
    assert orphaned.returncode == 1 and time.monotonic() - t0 < 5
    assert subprocess.run(["true"], preexec_fn=dies_with(os.getpid())).returncode == 0


def test_recovery_kills_the_evaluator_a_dead_runner_left_measuring(tmp_path):
    """The evaluator runs in a session of its own: a runner SIGKILLed while it measured left it
    (and its workers) measuring, beside the next runner's new measurement of the same run."""
    from org.measure import evaluator_argv
    run = tmp_path / "runs" / "3"
    run.mkdir(parents=True)
    evaluator = subprocess.Popen(evaluator_argv(run), stdin=subprocess.PIPE, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # waits for its job
    other = subprocess.Popen(evaluator_argv(tmp_path / "runs" / "30"), stdin=subprocess.PIPE, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        assert run_processes(None, run) == {evaluator.pid}
        assert reap(None, run) == set() and evaluator.wait(timeout=10) == -9
        assert other.poll() is None
    finally:
        for p in (evaluator, other):
            p.kill()
            p.wait()


def test_a_runs_last_change_is_read_as_the_run_left_it_and_what_cannot_be_read_charges_up_to_now(tmp_path):
    """Recovery charges a run up to the last change in its directory. The harness's measure logs
    are not the run's; a folder the run named like one is. Past the entries it reads, the time is
    now: a run could otherwise hide its last write behind many files."""
    run = tmp_path / "runs" / "3"
    (run / "measure_x.log").mkdir(parents=True)
    (run / "result.json").write_text("{}")
    time.sleep(0.05)
    (run / "measure_x.log" / "late").write_text("written last")  # the run's, in a folder named like a log
    late = (run / "measure_x.log" / "late").stat().st_ctime
    time.sleep(0.05)
    (run / "measure.log").write_text("the harness's")
    assert last_change(run, skip="measure*.log") == late
    for i in range(5):
        (run / f"f{i}").write_text("")
    time.sleep(0.05)
    before = time.time()
    assert last_change(run, skip="measure*.log", most=4) >= before
