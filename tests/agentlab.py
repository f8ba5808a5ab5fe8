"""
A small lab for agent tests: a committed project (a copy of this repo's trainer/ and a tiny
program), the program started (branch, state dir, ledger), agents' worktrees, and a runner
draining the queue in a background thread so submitted experiments really run (a run of the
1-layer, 32-wide model for 3 steps takes about a second).
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import git
import yaml

from org.workspace import open_program
from org.lab import Lab
from org.program import Program

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
        for name in ("eval.py", "data.py", "flops.py", "config.py"):
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
        from org.runner import Runner
        lab = Lab.open(self.root)
        try:
            while not self.stopping.is_set():
                Runner(lab, self.program, lab.state_dir(self.program.name) / "ledger.sqlite",
                       say=lambda *a: None).drain()
                time.sleep(0.1)
        except BaseException as e:
            self.errors.append(e)
        finally:
            lab.close()
