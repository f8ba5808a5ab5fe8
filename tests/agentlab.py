"""
A small lab for agent tests: a committed project (a copy of this repo's trainer/ and a tiny
program), the program started (branch, state dir, ledger), agents' worktrees, and a runner
draining the queue in a background thread so submitted experiments really run (a run of the
1-layer, 32-wide model for 3 steps takes about a second).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import git
import yaml

from org.workspace import open_program
from org.lab import Lab
from org.program import Program
from org.sandbox import Limits, Sandbox

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_layer": 1, "n_embd": 32, "n_head": 1}


def tiny_program(agents: list[dict], topology: str = "solo", corpus: str = "pystdlib", **changes) -> dict:
    program = {
        "name": "tiny", "question": "Can the logit softcap be removed at tiny size?",
        "claim": {"kind": "non-inferiority", "margin": 0.05, "fresh_seeds": 0},  # (replication: its own tests)
        "baseline": {"preset": "nanochat", "overrides": TINY},
        "variants": [{"name": "no-softcap", "overrides": {"softcap": 0}}],
        "data": {"source": corpus, "val_tokens": 512},
        "budget": {"per_run": {"steps": 3}, "seeds": [0, 1], "total_compute_seconds": 600,
                   "total_llm_dollars": 5.0, "run_timeout_seconds": 60},
        "org": {"topology": topology, "agents": agents},
        "runner": {"threads_per_slot": 1},
        "train": {"batch_size": 2, "seq_len": 32},
    }
    program.update(changes)
    return program


def make_project(tmp_path: Path, program: dict, trainer: bool = True) -> tuple[Path, Program]:
    """A committed project holding `program` (and the trainer), started: returns (root, program)."""
    root = tmp_path / "proj"
    root.mkdir()
    if trainer:
        shutil.copytree(ROOT / "trainer", root / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        (root / "trainer").mkdir()
        for name in ("eval.py", "data.py", "flops.py", "config.py", "__main__.py"):  # (stand-ins: these labs never train)
            (root / "trainer" / name).write_text(f"# {name}\n")
    if program["data"]["source"] == "corpus":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(("the cat sat on the mat and the dog sat on the log. " * 400))
        program["data"]["source"] = str(corpus)
    (root / "programs").mkdir()
    (root / "programs" / f"{program['name']}.yaml").write_text(yaml.safe_dump(program, sort_keys=False))
    repo = git.Repo.init(root, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Test").set_value("user", "email", "test@example.com")
    repo.git.add(A=True)
    repo.git.commit("-m", "project")
    repo.close()
    loaded, lab = open_program(program["name"], root)
    lab.close()
    return root, loaded


def worktree(root: Path, program: Program, agent: str) -> Path:
    lab = Lab.open(root)
    path = lab.add_worktree(program.name, agent)
    lab.close()
    return path


def lab_dir(root: Path, program: Program) -> Path:
    return root / ".lab" / program.name


class BackgroundRunner:
    """Drains the program's queue again and again until stopped, as a runner process would."""

    def __init__(self, root: Path, program: Program):
        self.root, self.program = root, program
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(60)
        if self.errors:
            raise self.errors[0]

    def _loop(self):
        """Holds the queue throughout, as `org serve` does (its drains nest). A drain that took the
        lock afresh each time once found it held on a loaded machine: a child the agent's thread
        forked in this process, not yet at its exec, held a copy of the lock's file (reproduced in
        tests/test_recovery.py; one_runner now lets go of the lock before it closes the file)."""
        from org.recovery import one_runner
        from org.runner import Runner
        lab = Lab.open(self.root)
        try:
            with one_runner(lab.state_dir(self.program.name)):
                while not self.stopping.is_set():
                    Runner(lab, self.program, lab.state_dir(self.program.name) / "ledger.sqlite",
                           say=lambda *a: None).drain()
                    time.sleep(0.1)
        except BaseException as e:
            self.errors.append(e)
        finally:
            lab.close()


# --- a run's core, shared: what a box that spins there gets of it -------------------------------

# the run's work prints its window on the wall clock and the CPU time it got in it
WORK = ("import time\nt, c = time.time(), time.process_time()\nsum(range(20_000_000))\n"
        "print(t, time.time(), time.process_time() - c)\n")
# a box's process spins on the run's core and logs (wall clock, its CPU time) every 5 ms
HOG = ("import os, time\nos.sched_setaffinity(0, {core})\nt = last = time.time()\nlog = []\n"
       "while last - t < {seconds}:\n"
       "    now = time.time()\n"
       "    if now - last > 0.005: log.append(f'{{now}} {{time.process_time()}}'); last = now\n"
       "open('hog.log', 'w').write(chr(10).join(log))\n")


def cpu_in(log: list[tuple[float, float]], start: float, end: float) -> float:
    """The CPU seconds a logged process got between two wall-clock times: its last sample
    before each (a process that was not running takes no samples and gains no CPU time)."""
    def at(t):
        return max((cpu for wall, cpu in log if wall <= t), default=0.0)
    return at(end) - at(start)


def run_windows(folder: Path, core: int, n: int = 3) -> list[tuple[float, float, float]]:
    """n runs of WORK in a box as the runner makes a slot's (one core): each one's window on the
    wall clock and the CPU time it got in it."""
    (folder / "work.py").write_text(WORK)
    box = Sandbox(readonly=[folder], limits=Limits(cores=(core,)))
    outs = [box.popen([sys.executable, str(folder / "work.py")], cwd=folder, env={"PATH": os.environ["PATH"]},
                      stdout=subprocess.PIPE).communicate(timeout=120)[0] for _ in range(n)]
    return [tuple(map(float, out.split())) for out in outs]


def shares_of_the_core(hog_log: Path, windows: list) -> tuple[float, float]:
    """The CPU seconds the run and the spinning box (HOG's log) each got in the run's windows."""
    log = [tuple(map(float, line.split())) for line in hog_log.read_text().splitlines()]
    assert log and log[-1][1] > 0.3, f"the box did not spin: {log[-1:]}"  # it ran, and got CPU outside the windows
    return sum(cpu for _, _, cpu in windows), sum(cpu_in(log, start, end) for start, end, _ in windows)
