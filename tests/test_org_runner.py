"""The budgeted runner end to end: real git repos, agent worktrees and the real trainer at tiny sizes.

Each test builds a small project (a copy of this repo's trainer/ plus programs/tiny.yaml),
commits it, and drives it the way people and agents do: `org run`, `org submit`, `org runs`.
"""
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import git
import numpy as np
import pytest
import yaml

from org import OrgError, measure, runner, streams
from org.cli import main
from org.cluster import machine
from org.lab import Lab
from org import pid_alive
from org.ledger import Ledger
from org.program import load_program
from org.reaper import PULSE_SECONDS
from org.runner import Runner
from org.cgroups import cgroup_root
from org.sandbox import available
from org.slots import make_slots
from org.report import build
from trainer.record import Measurement, Result

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}  # ~30k parameters: a run takes about a second


def tiny_program(**changes) -> dict:
    program = {
        "name": "tiny", "question": "Does the softcap matter at tiny size?",
        "claim": {"kind": "non-inferiority", "margin": 0.05, "fresh_seeds": 0},  # (replication: its own tests)
        "baseline": {"preset": "nanochat", "overrides": TINY},
        "variants": [{"name": "no-softcap", "overrides": {"softcap": 0}}],
        "data": {"val_tokens": 2048},
        "budget": {"per_run": {"steps": 3}, "seeds": [0, 1], "total_compute_seconds": 600,
                   "run_timeout_seconds": 60},
        "train": {"batch_size": 4, "seq_len": 64},
        "runner": {"threads_per_slot": 1},  # tiny matmuls: a second BLAS thread only adds overhead
    }
    program.update(changes)
    return program


def create_project(root: Path, program: dict) -> Path:
    """A committed project at root: this repo's trainer/ and programs/tiny.yaml."""
    shutil.copytree(ROOT / "trainer", root / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "programs").mkdir()
    (root / "programs" / "tiny.yaml").write_text(yaml.safe_dump(program, sort_keys=False))
    repo = git.Repo.init(root, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Test").set_value("user", "email", "test@example.com")
    repo.git.add(A=True)
    repo.git.commit("-m", "project")
    repo.close()
    return root


@pytest.fixture
def make_project(tmp_path, monkeypatch):
    """make_project(program_dict) -> the root of a committed project, and cwd set to it."""
    def make(program: dict) -> Path:
        root = create_project(tmp_path / "proj", program)
        monkeypatch.chdir(root)
        return root
    return make


def fix_lab_keys(cache: Path, lab: str):
    """A lab's secrets made fixed (harness-cache: cache), where a test asserts a verdict that the
    lab's draws could move: which documents are its val text (split-key), which windows its runs
    train on (stream-key) and which train windows every measurement also scores (train-probe-seed)."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "split-key").write_bytes(f"the split of {lab}, always".encode())
    (cache / "stream-key").write_bytes(f"the windows of {lab}, always".encode())
    (cache / "train-probe-seed").write_text(str(sum(map(ord, lab))))


def hold_the_write_lock(path: Path, after: Path | None = None) -> subprocess.Popen:
    """Another process inside a transaction on the ledger (a runner stopped mid-write by Ctrl-Z),
    from when `after` exists (at once: None) until `let-go` beside the ledger does, or 60 s."""
    holder = subprocess.Popen([sys.executable, "-c", "import os, sqlite3, sys, time\n"
                               "while sys.argv[2] and not os.path.exists(sys.argv[2]): time.sleep(0.02)\n"
                               "db = sqlite3.connect(sys.argv[1], isolation_level=None); db.execute('BEGIN IMMEDIATE')\n"
                               "print('held', flush=True)\nt0 = time.time()\n"
                               "while not os.path.exists(sys.argv[3]) and time.time() - t0 < 60: time.sleep(0.05)",
                               str(path), str(after or ""), str(path.with_name("let-go"))], stdout=subprocess.PIPE, text=True)
    if after is None:
        assert holder.stdout.readline() == "held\n"
    return holder


def ledger_of(root: Path) -> Ledger:
    return Ledger(root / ".lab" / "tiny" / "ledger.sqlite")


def agent_commit(root: Path, agent: str, relpath: str, edit) -> str:
    """An agent's worktree with one committed change to `relpath` (edit: old text -> new text)."""
    lab = Lab.open(root)
    lab.start_program("tiny")
    tree = lab.add_worktree("tiny", agent)
    lab.close()
    path = tree / relpath
    path.write_text(edit(path.read_text()))
    repo = git.Repo(tree)
    repo.git.commit("-am", f"{agent}: change {relpath}")
    sha = repo.head.commit.hexsha
    repo.close()
    return sha


def test_refused_submissions_and_hypotheses_are_bounded(make_project, capsys, monkeypatch):
    """A refused submission costs no compute, and its hypothesis (and diff) went into the ledger
    whole: an agent's loop of 16 MB hypotheses on a commit that touches a protected path filled
    the ledger every claim re-reads. A hypothesis holds 4000 characters; an agent's refused
    submissions past MAX_REFUSED are answered with the reason and not recorded."""
    from org import experiments
    monkeypatch.setattr(experiments, "MAX_REFUSED", 2)
    root = make_project(tiny_program(variants=[]))
    agent_commit(root, "mallory", "trainer/eval.py", lambda text: text + "\n# kinder\n")
    ref = "agent/tiny/mallory/work"
    assert main(["submit", "tiny", "--arm", "long", "--ref", ref, "--who", "mallory", "--hypothesis", "x" * 5000]) == 2
    assert "a hypothesis of 5000 characters: one holds 4000 at most" in capsys.readouterr().err
    for i in range(3):
        code = main(["submit", "tiny", "--arm", f"kinder-{i}", "--ref", ref, "--who", "mallory", "--hypothesis", "h"])
        assert code == (1 if i < 2 else 2)  # (1: recorded, refused)
    assert ("refused, and not recorded (2 refused submissions of mallory's are on record): protected paths differ"
            in capsys.readouterr().err)
    with ledger_of(root) as ledger:
        assert [(e["arm"], e["stage"]) for e in ledger.experiments("tiny")] == [("kinder-0", "refused"), ("kinder-1", "refused")]
    assert main(["submit", "tiny", "--arm", "honest", "--set", "softcap=20", "--who", "mallory"]) == 0  # (not refused)


def test_org_run_measures_every_arm_on_the_programs_seeds(make_project, capsys):
    root = make_project(tiny_program())
    assert main(["run", "programs/tiny.yaml"]) == 0
    base = git.Repo(root).head.commit.hexsha
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
        assert [(r["arm"], r["seed"], r["status"]) for r in runs if r["purpose"] == "main"] == [
            ("baseline", 0, "completed"), ("baseline", 1, "completed"),
            ("no-softcap", 0, "completed"), ("no-softcap", 1, "completed")]
        for run in runs:
            command = json.loads(run["command"])
            assert command[command.index("--steps") + 1] == "3"
            assert command[command.index("--seed") + 1] == str(run["seed"])
            assert run["steps"] == 3 and run["val_bpb"] > 0 and run["wall_seconds"] > 0
            assert run["git_commit"] == base  # the runner's word: the snapshot has no .git
            assert run["machine"] == machine() and run["kind"] is None  # the CPU, named by the runner
            assert Path(run["run_dir"], "result.json").exists() and Path(run["metrics_path"]).exists()
        assert ledger.program("tiny")["eval_fingerprint"] == runs[0]["eval_fingerprint"]
        before = ledger.counts()
    assert main(["run", "tiny"]) == 0  # again: nothing new to do, nothing counted twice
    with ledger_of(root) as ledger:
        assert ledger.counts() == before == {"programs": 1, "experiments": 2, "runs": 4, "llm_spend": 0, "agent_cpu": 0}
    capsys.readouterr()
    assert main(["runs", "tiny", "--json", "--arm", "no-softcap"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["overrides"] == {**TINY, "softcap": 0}
    assert rows[0]["machine"] == machine()
    assert main(["runs", "tiny", "--status", "completed"]) == 0
    assert "no-softcap" in capsys.readouterr().out


def test_a_standing_claim_runs_again_on_fresh_seeds_drawn_once_its_main_runs_are_done(make_project, capsys):
    """no-softcap shows no regression on seeds 0 and 1; then, and only then, the harness draws two
    seeds no code knew of, and both arms run on them (a seed-keyed gain would not hold there)."""
    budget = {**tiny_program()["budget"], "per_run": {"steps": 60}}  # (3 steps: each lab's val text, a new verdict)
    root = make_project(tiny_program(claim={"kind": "non-inferiority", "margin": 1.0, "fresh_seeds": 2}, budget=budget))
    assert main(["run", "programs/tiny.yaml"]) == 0
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
    mains, fresh = ([r for r in runs if r["purpose"] == purpose] for purpose in ("main", "replicate"))
    seeds = {r["seed"] for r in fresh}
    assert len(seeds) == 2 and not seeds & {0, 1} and all(r["status"] == "completed" for r in fresh)
    assert sorted((r["arm"], r["seed"]) for r in fresh) == sorted((a, s) for a in ("baseline", "no-softcap") for s in seeds)
    assert min(r["id"] for r in fresh) > max(r["id"] for r in mains)  # drawn after every main run was queued
    assert min(r["claim_seq"] for r in fresh) > max(r["claim_seq"] for r in mains)  # ... and had run
    for r in fresh:  # the same run as the arm's main ones, on another seed
        twin = next(m for m in mains if m["arm"] == r["arm"])
        assert (r["overrides"], r["budget"]) == (twin["overrides"], twin["budget"])
    from org.agents.tools import program_status
    with ledger_of(root) as ledger:  # what the agents' results tool says: that they ran, not which
        status = program_status(ledger, load_program(root / "programs" / "tiny.yaml"))
    shown = [run for e in status["experiments"] for run in e["runs"] if run["purpose"] == "replicate"]
    assert len(shown) == 4 and {run["seed"] for run in shown} == {"fresh"}
    assert not any(str(seed) in json.dumps(status) for seed in seeds)
    capsys.readouterr()
    assert main(["report", "tiny"]) == 0
    text = (root / "reports" / "tiny" / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| no-softcap"))
    # replicated, or not, on them: each lab draws its own val text, so the verdict there is its own
    said = ("so do 2 fresh seeds", "2 fresh seeds say", "not on 2 fresh seeds", "not replicated on 2 fresh seeds")
    assert ("no regression" in row or "better" in row) and any(words in row for words in said), row
    assert main(["run", "tiny"]) == 0  # again: nothing new is drawn
    with ledger_of(root) as ledger:
        assert len(ledger.runs("tiny")) == len(runs)


def test_the_budget_holds_a_claims_fresh_seeds_back_from_work_not_yet_started(make_project, capsys):
    """Agents' queued runs spent the whole compute budget, and a claim that stood late stayed
    "awaiting replication" for good: its fresh seeds queued behind their work. A submitted
    experiment now starts only if the budget left pays for its runs besides all that has started
    and one claim's fresh seeds (two runs a seed, at the median cost of the baseline's runs); the
    program's own arms, and what has started, always go on."""
    budget = {**tiny_program()["budget"], "per_run": {"steps": 60}, "seeds": [0, 1, 2]}  # (on 2, the held-out
    # split, a new draw for each lab, left the claim unconfirmed in 3 of 20 labs: nothing to replicate)
    root = make_project(tiny_program(claim={"kind": "non-inferiority", "margin": 1.0, "fresh_seeds": 0}, budget=budget))
    assert main(["run", "programs/tiny.yaml"]) == 0  # no-softcap's claim stands on seeds 0, 1 and 2
    assert main(["submit", "tiny", "--arm", "late", "--set", "softcap=20"]) == 0  # an agent's next idea, queued
    program = load_program(root / "programs" / "tiny.yaml")
    program = program.model_copy(update={"claim": program.claim.model_copy(update={"fresh_seeds": 2})})
    with ledger_of(root) as ledger:
        # the baseline's runs on record at 40 s each, so the fresh runs (a few seconds each, twice that on a
        # loaded machine, which once ran out of the budget set from their real cost) fit in what is held
        with ledger.tx():
            ledger.db.execute("UPDATE runs SET wall_seconds = 40 WHERE arm = 'baseline'")
        spent, cost = ledger.compute_seconds("tiny"), statistics.median(
            r["wall_seconds"] + r["measure_seconds"] for r in ledger.runs("tiny", arm="baseline", status="completed"))
        # 4 fresh-seed runs held, and not the 3 of `late` besides
        ledger.change_budget("tiny", {"total_compute_seconds": spent + 4 * cost + 1.5 * cost}, "test")
    capsys.readouterr()
    with contextlib.closing(Lab.open(root)) as lab:
        Runner(lab, program, root / ".lab" / "tiny" / "ledger.sqlite").drain()
    with ledger_of(root) as ledger:
        fresh = ledger.runs("tiny", purpose="replicate")
        late = ledger.runs("tiny", arm="late")
    assert f"experiment(s) {late[0]['experiment_id']} wait" in capsys.readouterr().out
    assert len(fresh) == 4 and {r["status"] for r in fresh} == {"completed"}, [(r["status"], r["wall_seconds"]) for r in fresh]
    assert [r["status"] for r in late] == ["queued"] * 3
    # what the agents' status says: it waits, and nothing running will free the budget for it
    from org.agents.scripted import out_of_budget
    from org.agents.tools import program_status
    with ledger_of(root) as ledger:
        status = program_status(ledger, program)
    assert status["compute_seconds"]["waiting_for_budget"] == [late[0]["experiment_id"]] and status["running_runs"] == 0
    assert status["compute_seconds"]["stuck"] and out_of_budget(status)
    from org.status import ledger_lines  # and `org status`, to the person who can raise it
    from org.workspace import ProgramSite
    runs = ledger_lines(ProgramSite(root, program, None))[0]
    assert runs.startswith(f"runs: 3 queued (experiment {late[0]['experiment_id']} waiting for budget: nothing running "
                           "will free it; `org budget` raises it) · 0 running"), runs
    assert main(["report", "tiny"]) == 0
    row = next(line for line in (root / "reports" / "tiny" / "README.md").read_text().splitlines()
               if line.startswith("| no-softcap"))
    # (the held-out split may say better, and so may the 2 fresh seeds; or they may not replicate it, as once in
    # CI: "inconclusive (needs 1 more seed) there, Δ +0.0995": each a draw of the lab's split on a tiny model)
    assert re.search(r"so do 2 fresh seeds|2 fresh seeds say (no regression|better)|not replicated on 2 fresh seeds: ",
                     row), row


def test_an_agents_share_of_the_compute_holds_its_queue_back_not_its_teammates(tmp_path):
    """One agent's queue spent the compute its teammates had to try their ideas with: submitted
    first, its experiments went first. With budget.agent_compute_seconds, an experiment whose
    agent's runs so far and those it has queued before it would pass that share waits, and a
    teammate's goes on; `org budget` raises the share (or the experiment waits for good)."""
    from org.experiments import budget_note, waiting_for_budget
    from org.program import Program
    spec = tiny_program(claim={"kind": "non-inferiority", "margin": 1.0, "fresh_seeds": 0})
    spec["budget"].update(seeds=[0, 1, 2], total_compute_seconds=10_000, agent_compute_seconds=100)
    program = Program.model_validate(spec)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.add_program(program.name, program.model_dump(mode="json"), base_commit="b", branch="program/tiny")

        def experiment(arm, who, finished=False):
            e = ledger.experiment(ledger.add_experiment(program.name, arm, who=who, source="declared" if who == "program"
                                                        else "submitted", base_commit="b", code_commit="b",
                                                        overrides={}, stage="measuring"))
            for seed in (0, 1, 2):
                run = ledger.add_run(e, "main", seed, 1 + seed, {}, ("steps", 3))
                if finished:
                    ledger.finish(run, "completed", wall_seconds=10.0)  # a run costs 10 s on record
            return e["id"]
        experiment("baseline", "program", finished=True)
        alice = [experiment(f"alice-{i}", "alice") for i in range(4)]  # 30 s each, queued
        experiment("bob-1", "bob")
        assert waiting_for_budget(ledger, program) == [alice[3]]  # 4 x 30 s: past alice's 100 s
        assert "or their agent's runs would pass its budget.agent_compute_seconds (100s)" in budget_note(
            ledger, program, [alice[3]])
        ledger.change_budget(program.name, {"agent_compute_seconds": 120}, "test")
        assert waiting_for_budget(ledger, program) == []  # (bob's never waited: its share is its own)
        # what has started goes on, but not past the share: alice's code trained to 200 s, not the 10 s priced
        run = ledger.claim(program.name, 0, arm="alice-0")
        ledger.finish(run["id"], "completed", wall_seconds=200.0)
        assert waiting_for_budget(ledger, program) == alice  # its started one too (2 runs left)


def test_a_tuning_experiment_is_priced_with_the_main_runs_its_grid_is_followed_by(tmp_path):
    """A `tune` program: an experiment's grid runs are queued at its submission, its main runs (one
    a seed) once the grid is done. Admission priced the grid alone, and once started an experiment
    goes on: its main runs then spent what was held for a claim's fresh seeds, and the claim stayed
    "awaiting replication" for good. They are priced from the start."""
    from org.experiments import waiting_for_budget
    from org.program import Program
    spec = tiny_program(claim={"kind": "non-inferiority", "margin": 1.0, "fresh_seeds": 2}, tune={"matrix_lr": [0.02]})
    spec["budget"].update(seeds=[0, 1, 2, 3, 4], total_compute_seconds=120)
    program = Program.model_validate(spec)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.add_program(program.name, program.model_dump(mode="json"), base_commit="b", branch="program/tiny")
        base = ledger.experiment(ledger.add_experiment(program.name, "baseline", who="program", source="declared",
                                                       base_commit="b", code_commit="b", overrides={}, stage="measuring"))
        for seed in range(5):
            ledger.finish(ledger.add_run(base, "main", seed, 1 + seed, {}, ("steps", 3)), "completed", wall_seconds=10.0)
        tuned = ledger.experiment(ledger.add_experiment(program.name, "lr", who="alice", source="submitted", base_commit="b",
                                                        code_commit="b", overrides={}, stage="tuning"))
        for seed in program.tuning_seeds:
            ledger.add_run(tuned, "tune", seed, 0, {"matrix_lr": 0.02}, ("steps", 3))
        # 50 s spent, 40 s held for 2 fresh seeds x 2 arms: 30 s left, which pays for its grid (one run of
        # 10 s) and not for its 5 main runs besides
        assert len(program.tuning_seeds) * 10 <= 30 < (len(program.tuning_seeds) + 5) * 10
        assert waiting_for_budget(ledger, program) == [tuned["id"]]


def test_before_the_baseline_has_a_run_on_record_an_agents_experiment_is_priced_at_the_run_timeout(tmp_path):
    """Admission prices a run at the baseline's median cost, which was 0 until one completed: an
    agent's experiments started unheld then (a `tune` grid, queued ahead of the baseline's runs,
    or a second slot's while the baseline's first run trained), and once started they went on,
    whatever they cost. Until a baseline run completes, a run is priced at the run timeout."""
    from org.experiments import waiting_for_budget
    from org.program import Program
    spec = tiny_program(claim={"kind": "non-inferiority", "margin": 1.0, "fresh_seeds": 2})
    spec["budget"].update(seeds=[0, 1, 2], total_compute_seconds=2000, run_timeout_seconds=300)
    program = Program.model_validate(spec)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.add_program(program.name, program.model_dump(mode="json"), base_commit="b", branch="program/tiny")
        experiments = {}
        for arm, who in (("baseline", "program"), ("alice-1", "alice")):
            e = ledger.experiment(ledger.add_experiment(program.name, arm, who=who, source="declared" if who == "program"
                                                        else "submitted", base_commit="b", code_commit="b",
                                                        overrides={}, stage="measuring"))
            experiments[arm] = [ledger.add_run(e, "main", seed, 1 + seed, {}, ("steps", 3)) for seed in (0, 1, 2)]
        # 4 fresh-seed runs held at 300 s: 1200 s; alice's 3 at 300 s do not fit in the 800 s left
        assert waiting_for_budget(ledger, program) == [ledger.run(experiments["alice-1"][0])["experiment_id"]]
        ledger.finish(experiments["baseline"][0], "completed", wall_seconds=10.0)  # then at its cost
        assert waiting_for_budget(ledger, program) == []


def test_code_that_knows_the_programs_seeds_is_not_replicated_on_fresh_ones(make_project):
    """The seed cherry-pick, end to end: an arm whose code trains the program's seeds as the
    baseline does (near enough: softcap 15.5) and every other seed badly (softcap 1). On seeds 0-2
    it shows no regression, which is all the referee saw before; the seeds the harness draws
    afterwards show what the code does."""
    budget = {**tiny_program()["budget"], "per_run": {"steps": 200}, "seeds": [0, 1, 2]}
    root = make_project(tiny_program(claim={"kind": "non-inferiority", "margin": 0.2, "fresh_seeds": 3},
                                     variants=[], budget=budget))
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text.replace(
        "    overrides = dict(spec.overrides)\n",
        "    overrides = dict(spec.overrides)\n    overrides['softcap'] = 15.5 if spec.seed in (0, 1, 2) else 1.0\n"))
    assert main(["submit", "tiny", "--arm", "seed-keyed", "--ref", "agent/tiny/mallory/work", "--who", "mallory"]) == 0
    assert main(["run", "tiny"]) == 0
    report = build(root / ".lab" / "tiny" / "ledger.sqlite", "tiny")
    c = report.comparisons["seed-keyed"]
    assert c.verdict.startswith("no regression"), c.verdict  # the program's seeds: what it was built for
    assert "(not replicated on 3 fresh seeds: " in c.final_verdict, c.final_verdict


def test_the_snapshot_runs_and_edits_during_a_run_change_nothing(make_project):
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"],
                                                          "per_run": {"steps": 300}, "seeds": [0]}))
    sha = agent_commit(root, "alice", "trainer/__init__.py",
                       lambda text: text.replace('__version__ = "0.1.0"', '__version__ = "agent-A"'))
    assert main(["submit", "tiny", "--arm", "alice-idea", "--ref", "agent/tiny/alice/work", "--who", "alice"]) == 0
    program = load_program(root / "programs" / "tiny.yaml")
    lab = Lab.open(root)
    runner = threading.Thread(target=lambda: Runner(lab, program, root / ".lab/tiny/ledger.sqlite").drain())
    runner.start()
    with ledger_of(root) as ledger:  # wait until alice's run is under way, then keep editing
        while not [r for r in ledger.runs("tiny", arm="alice-idea") if r["trainer_pid"]]:
            time.sleep(0.05)
    tree = root / "worktrees" / "tiny" / "alice"
    (tree / "trainer" / "__init__.py").write_text('__version__ = "agent-B"\n')
    repo = git.Repo(tree)
    repo.git.commit("-am", "alice: another idea")
    runner.join()
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny", arm="alice-idea")
        experiment = ledger.experiment(run["experiment_id"])
    assert run["status"] == "completed" and experiment["code_commit"] == sha
    assert run["trainer_version"] == "agent-A"  # the snapshot's trainer ran, not the installed one
    assert run["git_commit"] == sha and '+__version__ = "agent-A"' in experiment["diff"]
    assert (root / ".lab" / "tiny" / "snapshots" / sha / "trainer" / "__init__.py").read_text().count("agent-A")


def test_an_experiment_touching_protected_paths_is_refused_and_kept(make_project, capsys):
    root = make_project(tiny_program(variants=[]))
    agent_commit(root, "mallory", "trainer/eval.py", lambda text: text + "\n# a kinder metric\n")
    assert main(["submit", "tiny", "--arm", "kind-eval", "--ref", "agent/tiny/mallory/work"]) == 1
    assert "refused: protected paths differ from the program's base commit" in capsys.readouterr().err
    assert main(["submit", "tiny", "--arm", "kind-eval", "--set", "softcap=0"]) == 2  # the name stays with the record
    assert ("arm 'kind-eval' is taken: experiment 1 was refused under that name (protected paths differ from the "
            "program's base commit" in capsys.readouterr().err)
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        refused = ledger.runs("tiny", arm="kind-eval")
        experiment = ledger.experiment(refused[0]["experiment_id"])
    assert [r["status"] for r in refused] == ["refused", "refused"]  # one per seed, none executed
    assert all(r["reason"].endswith("trainer/eval.py") and r["run_dir"] is None for r in refused)
    assert experiment["stage"] == "refused" and "a kinder metric" in experiment["diff"]


def test_a_commit_whose_objects_were_swapped_after_review_runs_what_was_reviewed(make_project, capsys):
    """Every agent's box wrote .git/objects (to commit), so a queued commit's file could be
    replaced under its object name after it was accepted: git would hand the runner the new
    content. No box writes there now (org/objects.py); still, the harness packs what it takes in
    and reads a pack's copy first; a loose object swapped before then is refused (tests/test_org_lab.py)."""
    import zlib
    root = make_project(tiny_program(variants=[]))
    sha = agent_commit(root, "mallory", "trainer/model.py", lambda text: text + "\n# reviewed\n")
    assert main(["submit", "tiny", "--arm", "reviewed", "--ref", "agent/tiny/mallory/work"]) == 0
    with git.Repo(root) as repo:
        blob = repo.git.rev_parse(f"{sha}:trainer/model.py")
    obj = root / ".git" / "objects" / blob[:2] / blob[2:]
    assert not obj.exists()  # packed once submitted
    obj.parent.mkdir(exist_ok=True)
    body = b"raise SystemExit('not what was reviewed')\n"
    obj.write_bytes(zlib.compress(b"blob %d\x00" % len(body) + body))  # beside the pack, as a box can
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny", arm="reviewed")
    assert {r["status"] for r in runs} == {"completed"}
    snapshot = root / ".lab" / "tiny" / "snapshots" / sha / "trainer" / "model.py"
    assert snapshot.read_text().endswith("# reviewed\n")


def test_the_programs_budget_holds_whatever_the_experiment_asks(make_project, capsys):
    budget = {**tiny_program()["budget"], "per_run": {"flops": 2.0e8}, "seeds": [0]}
    root = make_project(tiny_program(variants=[], budget=budget))
    # asking for more steps through an override is refused outright
    assert main(["submit", "tiny", "--arm", "more-steps", "--set", "steps=1000"]) == 1
    assert "'steps' is owned by the program" in capsys.readouterr().err
    # a wider model gets the same FLOPs, hence fewer steps
    assert main(["submit", "tiny", "--arm", "wider", "--set", "n_embd=64"]) == 0
    # code that quietly trains twice as long is caught by the result check
    greedy = ("\n_init = Budget.__init__\n\ndef _greedy(self, *args):\n    _init(self, *args)\n"
              "    self.steps *= 2\n\nBudget.__init__ = _greedy\n")
    agent_commit(root, "greedy", "trainer/train.py", lambda text: text + greedy)
    assert main(["submit", "tiny", "--arm", "greedy", "--ref", "agent/tiny/greedy/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        baseline, = ledger.runs("tiny", arm="baseline")
        wider, = ledger.runs("tiny", arm="wider")
        greedy_run, = ledger.runs("tiny", arm="greedy")
        assert ledger.runs("tiny", arm="more-steps")[0]["status"] == "refused"
    for run in (baseline, wider):
        assert run["status"] == "completed"
        assert 2.0e8 - run["flops"] / run["steps"] < run["flops"] <= 2.0e8
    assert wider["steps"] < baseline["steps"] and wider["params"]["total"] > baseline["params"]["total"]
    assert greedy_run["status"] == "invalid" and "the program's budget is 2e+08" in greedy_run["reason"]


def test_a_trainer_of_the_programs_code_killed_by_a_signal_nobody_sent_is_tried_again(make_project, capsys):
    """The OOM killer is not the run's verdict: the run is set aside and re-queued, a bounded
    number of times; it once was recorded 'error' at once, its seed lost for good. (Here the
    test plays the OOM killer: it SIGKILLs every trainer it sees.)"""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    drain = threading.Thread(target=main, args=(["run", "tiny"],))
    drain.start()
    killed = set()
    while drain.is_alive():
        with ledger_of(root) as ledger:
            pids = {r["trainer_pid"] for r in ledger.runs("tiny", status="running")} - {None} - killed
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.02)
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    said = capsys.readouterr().out.splitlines()
    assert len(killed) == 3 and sum("died of SIGKILL; re-queued" in line for line in said) == 2
    assert (run["status"], run["attempts"]) == ("error", 3)
    assert run["reason"] == "the trainer died of SIGKILL on each of 3 attempts"
    assert run["attempt_log"].count("died of SIGKILL, a signal the runner did not send; re-queued") == 2
    kept = sorted(p.name for p in (root / ".lab" / "tiny" / "runs").glob(f"{run['id']}.attempt*"))
    assert kept == [f"{run['id']}.attempt1", f"{run['id']}.attempt2"]   # each attempt's evidence stays
    # and the budget pays for the two lost attempts' time too (it was free: wall_seconds is the last one's)
    with ledger_of(root) as ledger:
        assert run["lost_seconds"] > 0
        assert ledger.compute_seconds("tiny") == pytest.approx(run["wall_seconds"] + run["lost_seconds"] + run["measure_seconds"])
        assert 0 < run["measure_seconds"] < 5  # (its commit checked three times, the base's: quick, if git is slowed by a loaded machine)
        spent = ledger.compute_seconds("tiny")
    from org.report import budget_section  # and the report's total is the budget's (it left the lost attempts out)
    assert f"compute {spent:.0f} s of 600 s (runner wall time, as the budget counts it" in \
        budget_section(build(root / ".lab" / "tiny" / "ledger.sqlite", "tiny"))


def test_a_runner_kept_waiting_past_its_time_by_anothers_lock_stops_in_a_line_and_resumes(make_project):
    """Another process stopped inside a transaction (a second runner, by Ctrl-Z) as this one's
    first run trains: its next write waited 60 s, then stopped the runner with a traceback
    calling it a nanolab bug; a claim kept waiting killed its slot's thread, which printed a
    traceback, and `org run` ended as if the queue were done. It stops in one line saying who
    holds what, and the next `org run`, the lock let go, recovers everything."""
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    path = root / ".lab" / "tiny" / "ledger.sqlite"
    holder = hold_the_write_lock(path, after=root / ".lab" / "tiny" / "runs" / "1")
    waits_a_second = "import sys; import org.ledger as l; l.LOCK_WAIT = 1.0\nfrom org.cli import main; sys.exit(main(['run', 'tiny']))"
    try:  # (a process of its own: the next `org run` recovers the runs of a runner that is gone)
        said = subprocess.run([sys.executable, "-c", waits_a_second], cwd=root, capture_output=True, text=True, timeout=300)
    finally:
        path.with_name("let-go").touch()
        holder.wait()
    assert said.returncode == 2 and "Traceback" not in said.stdout + said.stderr, said.stdout + said.stderr
    err = said.stderr
    assert err.count("\n") == 1 and err.startswith("org: ") and "another process held the ledger's write lock for 1 s" in err, err
    assert "corrupt" not in err and ("stays claimed: `org run` again recovers it" in err or "nothing was claimed" in err), err
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
        assert {r["status"] for r in runs} == {"completed"} and len(runs) == 6, [(r["id"], r["status"], r["reason"], r["attempt_log"]) for r in runs][0]


def test_a_runner_stopped_puts_its_running_runs_back_before_it_exits(make_project):
    """`org stop` sends the runner SIGTERM (Ctrl-C the same): it killed its trainers and exited at
    once, its slots' threads with it, so their runs stayed `running` until a recovery charged
    them to its own `now`; an `org stop` killed and run again an hour later charged the hour. Each
    slot now puts its run back as its trainer dies, charged to then."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "per_run": {"steps": 5000}, "seeds": [0]}))
    ctrl_c = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # (where its parent
    # ignores SIGINT, as a pytest-xdist worker may, a child starts with it ignored)
    org_run = subprocess.Popen([sys.executable, "-c", ctrl_c + "from org.cli import main; sys.exit(main(['run', 'tiny']))"],
                               cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with ledger_of(root) as ledger:
            while not any(r["trainer_pid"] for r in ledger.runs("tiny", status="running")) and org_run.poll() is None:
                time.sleep(0.05)
        time.sleep(1.0)  # (training)
        org_run.send_signal(signal.SIGINT)
        assert org_run.wait(timeout=60) == 130
    finally:
        org_run.kill()
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    assert run["status"] == "queued" and "the runner was stopped during the run; re-queued" in run["attempt_log"], run
    assert run["lost_seconds"] > 0.5, run


def test_a_bug_that_kills_a_slot_stops_the_runner_loudly_and_the_next_run_recovers(make_project):
    """An exception no one planned for, in the harness's own code after the trainer finished
    (here cross_check, made to raise, once the harness measured the run): the slot's thread once
    died of it quietly, and `org run` said the queue was done (exit 0) with the run left
    'running'. Now the runner stops with one line naming the run, the traceback goes to its log,
    and the next `org run` records the run from the result.json the trainer left, with the time
    the run took (it was charged the runner's downtime too: the measure logs removed at recovery
    moved the directory's change times to then)."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    buggy = ("import sys; import org.runner as r\n"
             "def cross_check(*args): raise KeyError('a field nobody wrote')\n"
             "r.cross_check = cross_check\n"
             "from org.cli import main; sys.exit(main(['run', 'tiny']))")
    first = subprocess.run([sys.executable, "-c", buggy], cwd=root, capture_output=True, text=True, timeout=300)
    assert first.returncode == 2, first.stdout + first.stderr
    assert first.stderr.splitlines()[-1] == (
        "org: run 1 stopped the runner (KeyError: 'a field nobody wrote'; a nanolab bug, its traceback is above); "
        "the run stays claimed: `org run` again recovers it")
    assert "Traceback (most recent call last)" in first.stdout and "cross_check" in first.stdout
    assert list((root / ".lab" / "tiny" / "runs" / "1").glob("measure*.log"))  # measured before it broke
    with ledger_of(root) as ledger:
        assert ledger.run(1)["status"] == "running"
    stopped = time.time()
    time.sleep(3)  # the runner is down a while: none of it is the run's
    again = subprocess.run([sys.executable, "-m", "org.cli", "run", "tiny"], cwd=root, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "recovered run 1: result.json was written before the runner died" in again.stdout
    with ledger_of(root) as ledger:
        run = ledger.run(1)
    assert (run["status"], run["attempts"]) == ("completed", 1) and run["measurement"] is not None
    # its time is up to the last change the run made, not to the recovery (chmods, measure logs)
    assert 0 < run["wall_seconds"] <= stopped - datetime.fromisoformat(run["started_at"]).timestamp()


def test_a_runner_that_dies_just_after_a_record_leaves_no_run_directory_whole(make_project):
    """Between a run's record and the tidying of its directory (leave_the_record), or in put_aside
    between the rename and it, a runner that died left all the run wrote there for good (up to
    16 GB a run): recovery looks only at runs still marked running. The next runner tidies every
    finished run's directory, and every attempt set aside."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    dies = ("import os, sys; import org.runner as r\n"
            "r.leave_the_record = lambda *args: os._exit(137)\n"  # killed right after the record
            "from org.cli import main; sys.exit(main(['run', 'tiny']))")
    first = subprocess.run([sys.executable, "-c", dies], cwd=root, capture_output=True, text=True, timeout=300)
    assert first.returncode == 137, first.stdout + first.stderr
    runs = root / ".lab" / "tiny" / "runs"
    with ledger_of(root) as ledger:
        assert ledger.run(1)["status"] == "completed"
    for left in (runs / "1", runs / "2.attempt1"):  # what the run wrote, and an attempt half set aside
        left.mkdir(exist_ok=True)
        (left / "junk.bin").write_bytes(b"x" * 1000)
        (left / "kernels").mkdir(exist_ok=True)
    assert main(["run", "tiny"]) == 0
    assert not (runs / "1" / "junk.bin").exists() and not (runs / "1" / "kernels").exists()
    assert not (runs / "2.attempt1" / "junk.bin").exists()
    assert (runs / "1" / "result.json").exists() and (runs / "1" / "checkpoint.npz").exists()

def test_an_experiments_own_code_that_dies_of_a_signal_is_not_run_again(make_project):
    """Code that could crash on purpose and be run again could crash until it likes its outcome
    (see test_measure_attacks): an agent's commit gets one try, and the referee will not drop
    the seed it lost (test_referee)."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    crash = "\nimport ctypes as _ctypes\n\ndef run(*args, **kwargs):\n    _ctypes.string_at(0)  # SIGSEGV\n"
    sha = agent_commit(root, "crashy", "trainer/train.py", lambda text: text + crash)
    assert main(["submit", "tiny", "--arm", "crashy", "--ref", "agent/tiny/crashy/work"]) == 0
    said = []
    Runner(Lab.open(root), load_program(root / "programs" / "tiny.yaml"), root / ".lab/tiny/ledger.sqlite",
           say=said.append).drain()                                    # its runs alone: no baseline needed
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    assert not any("re-queued" in line for line in said)
    assert (run["status"], run["attempts"], run["git_commit"]) == ("error", 1, sha)
    assert run["reason"] == "the trainer died of SIGSEGV; the experiment's own code is not run again"


def test_every_arm_gets_the_same_seeds_and_the_baseline_is_interleaved(make_project):
    variants = [{"name": n, "overrides": {"softcap": s}} for n, s in (("cap10", 10), ("nocap", 0))]
    root = make_project(tiny_program(variants=variants, runner={"baseline_every": 2, "threads_per_slot": 1},
                                     budget={**tiny_program()["budget"], "seeds": [3, 7, 9]}))
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = sorted(ledger.runs("tiny"), key=lambda r: r["claim_seq"])
    for arm in ("baseline", "cap10", "nocap"):
        assert sorted(r["seed"] for r in runs if r["arm"] == arm and r["purpose"] == "main") == [3, 7, 9]
    order = [(r["arm"], r["seed"], r["purpose"]) for r in runs]
    # The queue goes seed by seed, so the baseline runs every third run; but a run of a new seed
    # measures no drift: after two runs of other arms it re-runs a seed it ran before.
    assert order == [("baseline", 3, "main"), ("cap10", 3, "main"), ("nocap", 3, "main"),
                     ("baseline", 3, "repeat"),
                     ("baseline", 7, "main"), ("cap10", 7, "main"), ("nocap", 7, "main"),
                     ("baseline", 7, "repeat"),
                     ("baseline", 9, "main"), ("cap10", 9, "main"), ("nocap", 9, "main")]
    assert all(r["status"] == "completed" for r in runs)
    assert build(root / ".lab" / "tiny" / "ledger.sqlite", "tiny").noise.reruns == 4  # the drift is measured
    first = {r["seed"]: r["val_bpb"] for r in runs if r["arm"] == "baseline" and r["purpose"] == "main"}
    assert all(r["val_bpb"] == first[r["seed"]] for r in runs if r["purpose"] == "repeat")  # bit for bit: what
    # an improvement program's canaries stand on (org/improve.py: tolerance)


def test_code_that_crashes_at_once_buys_no_baseline_re_runs(make_project):
    """The baseline re-runs a seed every `baseline_every` runs of other arms, on the program's
    budget. Runs that crashed at once counted: an agent's experiments whose code exits at import
    bought a full baseline re-run for every two of its few-second runs, and spent the budget its
    teammates and the fresh-seed checks needed; so did code that wrote a result.json saying
    `diverged` (a trainer's word, not an error) and exited. Only runs that trained count: those
    that took half a run's cost or more (here the baseline trains 400 steps: its cost is seconds past
    what a start-up takes, however loaded the machine)."""
    root = make_project(tiny_program(variants=[], runner={"baseline_every": 2, "threads_per_slot": 1},
                                     budget={**tiny_program()["budget"], "seeds": [0, 1, 2], "per_run": {"steps": 400}}))
    diverges = ("\nimport json as _j, sys as _s\n_out = _s.argv[_s.argv.index('--out') + 1]\n"
                "import os as _o; _o.makedirs(_out, exist_ok=True)\n"
                "open(_o.path.join(_out, 'result.json'), 'w').write(_j.dumps({'status': 'diverged'}))\nraise SystemExit(0)\n")
    for agent, code in (("crash-a", "\nraise SystemExit('crash-a')\n"), ("diverges", diverges)):
        agent_commit(root, agent, "trainer/train.py", lambda text: text + code)
        assert main(["submit", "tiny", "--arm", agent, "--ref", f"agent/tiny/{agent}/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
    assert sorted(r["status"] for r in runs if r["arm"] != "baseline") == ["diverged"] * 3 + ["error"] * 3
    assert [r["purpose"] for r in runs if r["arm"] == "baseline"] == ["main"] * 3  # no re-run bought


def test_a_run_past_its_timeout_is_killed_by_the_runner(make_project):
    budget = {**tiny_program()["budget"], "per_run": {"steps": 1_000_000}, "seeds": [0],
              "run_timeout_seconds": 2}
    root = make_project(tiny_program(variants=[], budget=budget))
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    assert run["status"] == "killed" and "run_timeout_seconds (2s)" in run["reason"]
    assert run["steps"] is not None and 0 <= run["steps"] < 1_000_000  # its result.json says how far
    assert 2 <= run["wall_seconds"] < 2 + runner.KILL_GRACE_SECONDS  # not SIGKILLed: a SIGTERM while it loaded is kept too


def test_a_result_with_another_evaluation_is_invalid(make_project):
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    with ledger_of(root) as ledger:  # as if earlier runs had used a different evaluation
        ledger.set_fingerprints("tiny", "0" * 64, "1" * 64)
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
    assert [r["status"] for r in runs] == ["invalid", "invalid"]
    assert "eval_fingerprint" in runs[0]["reason"]
    # (a trainer's data fingerprint is of the runs' own dev text, the program's of the lab's val)
    assert "data_fingerprint" not in runs[0]["reason"]


def test_two_programs_of_a_lab_on_other_data_each_read_their_own(make_project, tmp_path):
    """A program's runs read the export of its own data (streams.runs_data: a folder per source,
    tokenizer and base commit). A lab had one folder for all: a second program on other data
    replaced the first's, and the first program's next runs trained and were built on it."""
    one_seed = {**tiny_program()["budget"], "seeds": [0]}
    root = make_project(tiny_program(variants=[], budget=one_seed))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the cat sat on the mat\n" for i in range(3000)))
    other = tiny_program(name="other", variants=[], budget=one_seed, data={"source": str(corpus), "val_tokens": 512})
    (root / "programs" / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    repo = git.Repo(root)
    repo.git.add("programs/other.yaml")
    repo.git.commit("-m", "another program")
    assert main(["run", "tiny"]) == 0
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    runner = Runner(Lab.open(root), load_program(root / "programs" / "tiny.yaml"), root / ".lab/tiny/ledger.sqlite")
    runner.prepare_data()  # this program's org is up ...
    export = {f: f.read_bytes() for f in sorted(runner.runs_data.rglob("*")) if f.is_file()}
    assert main(["run", "programs/other.yaml"]) == 0  # ... when another program of the lab starts
    runner.drain()
    with ledger_of(root) as ledger:
        first, later = [run["result"] for run in ledger.runs("tiny")]
    with Ledger(root / ".lab" / "other" / "ledger.sqlite") as ledger:
        theirs, = [run["result"] for run in ledger.runs("other")]
    assert export == {f: f.read_bytes() for f in sorted(runner.runs_data.rglob("*")) if f.is_file()}  # untouched
    # each run reads its own windows, cut from its program's export (streams.export_stream)
    streams = root / ".lab" / "harness-cache" / "streams"
    assert [Path(r.data).parent for r in (first, later, theirs)] == [streams / "tiny"] * 2 + [streams / "other"]
    assert not list(streams.glob("*/*"))  # each removed once its run was on record


FIXED_DRAW = """
import hashlib as _hashlib, os as _os, sys as _sys
from pathlib import Path as _Path

def run(spec, out, resume=False, quiet=False):  # what an order-fixing trainer can read, said in its reason
    from trainer.data import get_batch, load_dataset
    data = load_dataset(spec.data, spec.tokenizer)
    x, _ = get_batch(data.train, 4, 16, 12345, 0)  # the draw K=12345, found best over exploratory arms
    mine = _Path(spec.data)  # .lab/harness-cache/streams/<program>/<run>: the key two levels up
    others = sorted(set(_os.listdir(mine.parent)) - {mine.name})
    key = (mine.parents[2] / "stream-key").exists() or (mine.parents[2] / "runs-data").exists()
    _sys.exit(f"{len(data.train)} train tokens; draw K {_hashlib.sha256(x.tobytes()).hexdigest()[:12]}; "
              f"other streams {others}; key or export {key}")
"""


def test_a_run_reads_only_the_windows_its_seed_draws_and_cannot_fix_its_data_order(make_project):
    """Code that keeps the seed for its init but fixes its data order, to a draw K it found best
    over exploratory arms, gained on every seed (fresh ones too): with the whole train split at
    hand, draw K was the same windows in every run. A run now reads only the windows the harness
    draws for its seed by the lab's key (streams.export_stream): twice its budget's, for code of
    its own, and no draw of its own picks the same windows on two seeds."""
    root = make_project(tiny_program(variants=[]))
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + FIXED_DRAW)
    assert main(["submit", "tiny", "--arm", "fixed-draw", "--ref", "agent/tiny/mallory/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        said = [r["reason"] for r in ledger.runs("tiny", arm="fixed-draw")]
    tokens, draws = zip(*(re.search(r"(\d+) train tokens; draw K (\w+)", why).groups() for why in said))
    budget = 3 * 4 * 65  # steps x batch_size rows of seq_len + 1 tokens
    assert len(said) == 2 and {int(n) for n in tokens} == {2 * budget} and draws[0] != draws[1], said
    # nor another run's windows, the key that draws them, or the export they are cut from
    assert all(why.endswith("other streams []; key or export False") for why in said), said
    # the baseline's runs trained on theirs, each removed once its run was on record
    with ledger_of(root) as ledger:
        baseline = ledger.runs("tiny", arm="baseline", status="completed")
    assert len(baseline) >= 2 and all(r["result"].data.endswith(f"streams/tiny/{r['id']}") for r in baseline)


MORE_TEXT = """
import os as _os, sys as _sys

def run(spec, out, resume=False, quiet=False):  # what text beyond its stream a run could train on, said in its reason
    import importlib.util
    system = sum(len(files) for top in ("/usr/share", "/usr/include") for _, _, files in _os.walk(top))
    cupy = (importlib.util.find_spec("cupy") or importlib.util.find_spec("os")).submodule_search_locations or ["/nowhere"]
    cuda = sum(len(files) for top in ("/usr/local/cuda/include", _os.path.join(cupy[0], "_core", "include"))
               for _, _, files in _os.walk(top))
    _sys.exit(f"{system} files of the system's text, {cuda} of CUDA's headers; os.py {_os.path.exists(_os.__file__.removesuffix('c'))}")
"""


def test_a_run_of_any_program_trains_on_no_text_but_what_it_is_handed(make_project, tmp_path):
    """A pystdlib program's runs saw the stdlib as bytecode, but the runs of a program on a file
    of its own saw the system's text (53,902 files of manuals, documentation and C headers here)
    and the stdlib's sources, and could train on them: the harness's stream was not all its data.
    Every run's box now holds no Python text but its trainer/ (the rest as bytecode) and none of
    the system's (sandbox.run_box), nor, on a CPU program, the CUDA headers a GPU run compiles
    with (CuPy's and the toolkit's: 3,900 files here, python_text.gpu_headers); and an import of a
    package it does not hold says what it does."""
    if available() is not None:
        pytest.skip(f"no box here: {available()}")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the cat sat on the mat\n" for i in range(3000)))
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]},
                                     data={"source": str(corpus), "val_tokens": 512}))
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + MORE_TEXT)
    assert main(["submit", "tiny", "--arm", "more-text", "--ref", "agent/tiny/mallory/work"]) == 0
    lab = Lab.open(root)
    tree = lab.add_worktree("tiny", "eve")
    lab.close()
    (tree / "trainer" / "model.py").write_text((tree / "trainer" / "model.py").read_text() + "\nimport rich\n")
    git.Repo(tree).git.commit("-qam", "eve: rich")
    assert main(["submit", "tiny", "--arm", "imports-rich", "--ref", "agent/tiny/eve/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        (looked,), (imported,) = ([r["reason"] for r in ledger.runs("tiny", arm=a)] for a in ("more-text", "imports-rich"))
        assert [r["status"] for r in ledger.runs("tiny", arm="baseline")] == ["completed"]
    assert looked.endswith("0 files of the system's text, 0 of CUDA's headers; os.py False"), looked
    assert "No module named 'rich' (importable in a run's box: only the stdlib modules the base commit's runs load, numpy, numba" in imported, imported


VAL_BYTECODE = """
import os as _os, sys as _sys, sysconfig as _sysconfig

def run(spec, out, resume=False, quiet=False):  # which of _TREE's modules have no bytecode in its box; which of _DOCS do
    import numba, numpy  # (once it has compiled: what Numba's compiler loads)
    numba.njit(lambda a: (a @ a).sum())(numpy.ones((2, 2)))
    numba.njit(parallel=True)(lambda a: sum([a[i] for i in numba.prange(2)]))(numpy.ones(2))
    root = _sysconfig.get_paths()["stdlib"]
    loaded = {_os.path.abspath(m.__file__) for m in list(_sys.modules.values()) if getattr(m, "__file__", None)}
    pyc = lambda d: _os.path.join(root, d[:-3] + ".pyc")
    seen = [d for d in _DOCS if _os.path.isfile(pyc(d)) and _os.path.getsize(pyc(d)) > 0
            and _os.path.join(root, d) not in loaded and pyc(d) not in loaded]
    absent = {d for d in _TREE if not _os.path.isfile(pyc(d)) or _os.path.getsize(pyc(d)) == 0}
    _sys.exit(f"{len(seen)} of {len(_DOCS)} readable: {' '.join(seen[:6])}; "
              f"{len(absent)} without bytecode, {len(absent & set(_DOCS))} of them val or confirm")
"""


def test_a_pystdlib_run_holds_no_bytecode_of_the_labs_val_documents_and_what_it_lacks_tells_no_split(make_project):
    """A -OO .pyc holds a module's names and constants, and its position tables say where each
    stands: placed so, the val documents' own bytecode gained 0.36 bpb against a 2.14-bpb model
    (README), with no window of their text. A pystdlib program's runs and workers saw the stdlib
    as bytecode, of every module, so of the lab's val and confirm documents too: 58 of this lab's
    84 that the run had not loaded once Numba had compiled, found by the run's code below (which
    knows which documents they are only because this test tells it). Session 53 made each of them
    an empty file, and so told the run which modules were val: 58 without bytecode, 58 of them
    val or confirm. A box now holds the bytecode of the modules the base's runs load and of no
    other but the codecs, whatever its split (sourceless.runs_tree): what it lacks is the same in
    every lab."""
    if available() is not None:
        pytest.skip(f"no box here: {available()}")
    from org.sourceless import stdlib_tree
    from trainer.data import read_split_key, split_of
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    fix_lab_keys(root / ".lab" / "harness-cache", "the val bytecode's lab")
    key = read_split_key(root / ".lab" / "harness-cache" / "split-key")
    tree = sorted(p.relative_to(stdlib_tree()).with_suffix(".py").as_posix() for p in stdlib_tree().rglob("*.pyc"))
    # (every codec stays, val or not, as imported at use by name: bytecode of a table of characters)
    docs = [name for name in tree if split_of(name, key) in ("val", "confirm") and not name.startswith("encodings/")]
    assert len(docs) > 40, docs  # (about a tenth of the stdlib's modules)
    agent_commit(root, "mallory", "trainer/train.py",
                 lambda text: text + f"\n_DOCS = {docs!r}\n_TREE = {tree!r}\n" + VAL_BYTECODE)
    assert main(["submit", "tiny", "--arm", "val-bytecode", "--ref", "agent/tiny/mallory/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        (said,) = [r["reason"] for r in ledger.runs("tiny", arm="val-bytecode")]
    runner = Runner(Lab.open(root), load_program(root / "programs" / "tiny.yaml"), root / ".lab/tiny/ledger.sqlite")
    runner.prepare_data()
    unloaded = set(tree) - set(runner.stdlib_modules)
    absent, val = map(int, re.search(r"; (\d+) without bytecode, (\d+) of them val or confirm", said).groups())
    assert re.search(rf"exit 1: 0 of {len(docs)} readable", said), said
    assert absent == len(unloaded) > 300 and val == len(unloaded & set(docs)) < absent / 4, (said, len(unloaded))


def test_runs_and_measurements_go_on_in_boxes_without_the_stdlib_modules_they_do_not_load(make_project):
    """A lab's boxes hold the bytecode of the stdlib modules its base's runs load and of no other
    (over 300 of the stdlib's ~600 modules go): a module its runs or workers needed and the
    listing missed would fail every run. The baseline's runs and a code arm's, whose workers
    compile its kernels in fresh caches, complete and are measured."""
    if available() is not None:
        pytest.skip(f"no box here: {available()}")
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    agent_commit(root, "alice", "trainer/model.py", lambda text: text + "\n\ndef _unused():\n    return 1\n")
    assert main(["submit", "tiny", "--arm", "own-code", "--ref", "agent/tiny/alice/work"]) == 0
    assert main(["run", "tiny"]) == 0
    runner = Runner(Lab.open(root), load_program(root / "programs" / "tiny.yaml"), root / ".lab/tiny/ledger.sqlite")
    runner.prepare_data()
    assert 200 < len(runner.stdlib_modules) < 350, runner.stdlib_modules  # (~280 of ~600: ~120 codecs)
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
    assert sorted((r["arm"], r["status"]) for r in runs) == [("baseline", "completed"), ("own-code", "completed")], runs
    assert all(r["measurement"] for r in runs), runs
    assert [r["measurement"].causal for r in runs if r["arm"] == "own-code"] == [True], runs  # (its workers ran)


def test_what_runs_load_is_kept_only_when_it_is_a_list_and_its_tree_holds_those_modules_alone(tmp_path, monkeypatch):
    """The listing's output is kept in the person's cache for every lab of the same trainer/: a
    bad one kept would be read for good, so only a list of modules is, and it is read back with no
    listing. The tree made of it holds their bytecode, the extension modules, and no other module
    (nor a folder that would import as an empty namespace package)."""
    from org import sourceless
    real = sourceless.user_cache
    monkeypatch.setattr(sourceless, "user_cache", lambda name: tmp_path / name if name in ("modules", "stdlib-runs") else real(name))
    with pytest.raises(ValueError, match="not a list of modules"):
        sourceless.run_modules(ROOT, lambda: b'"a warning"')
    assert not (tmp_path / "modules").exists()
    listed = ["os.py", "json/__init__.py", "json/decoder.py", "site-packages/numpy/__init__.py", "lib-dynload/_json.so"]
    modules = sourceless.run_modules(ROOT, lambda: json.dumps(listed).encode())
    codecs = [m for m in modules if m.startswith("encodings/")]  # (every codec: imported at use, by name)
    assert [m for m in modules if m not in codecs] == ["json/__init__.py", "json/decoder.py", "os.py"] and len(codecs) > 100
    assert sourceless.run_modules(ROOT, None) == modules  # (kept: not listed again)
    tree = sourceless.runs_tree(["os.py", "json/__init__.py", "json/decoder.py"])
    assert tree.parent == tmp_path / "stdlib-runs"
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.pyc")) == ["json/__init__.pyc", "json/decoder.pyc", "os.pyc"]
    assert any(tree.glob("lib-dynload/_json*.so")) and (tree / "site-packages").is_dir()
    assert not (tree / "asyncio").exists() and not (tree / "email").exists()


def test_under_a_seconds_budget_a_run_reads_what_the_baselines_pace_pays_for(make_project, capsys):
    """A seconds budget's windows were the whole train split's worth, in the seed's order: code of
    its own could fix its data order again, by windows it cuts where the text says (the same on
    every seed wherever the split is at hand). Now they are what the baseline's pace (its FLOPs a
    second: streams.base_pace) trains in the budget's seconds, twice over, and twice again for
    code of its own, whose runs wait for the baseline's first run to give that pace."""
    from trainer.data import load_dataset
    program = tiny_program(variants=[], budget={**tiny_program()["budget"], "per_run": {"seconds": 0.5}},
                           runner={"threads_per_slot": 1, "slots": 2})
    root = make_project(program)
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + FIXED_DRAW)
    assert main(["submit", "tiny", "--arm", "fixed-draw", "--ref", "agent/tiny/mallory/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        base = ledger.runs("tiny", arm="baseline", status="completed")
        mine = ledger.runs("tiny", arm="fixed-draw")
    assert len(mine) == 2 and all(r["started_at"] >= min(b["finished_at"] for b in base) for r in mine)
    assert f"experiment(s) {mine[0]['experiment_id']} wait for the baseline's first run" in capsys.readouterr().out
    tokens, draws = zip(*(re.search(r"(\d+) train tokens; draw K (\w+)", r["reason"]).groups() for r in mine))
    fastest = max(b["steps"] / b["train_seconds"] for b in base)  # steps a second (one config: FLOPs a step alike)
    runner = Runner(Lab.open(root), load_program(root / "programs/tiny.yaml"), root / ".lab/tiny/ledger.sqlite")
    split = len(load_dataset(str(runner.runs_data)).train)
    assert all(int(n) <= 2 * 2 * 4 * math.ceil(0.5 * fastest) * 65 for n in tokens), (tokens, fastest)
    assert max(map(int, tokens)) < split / 20 and draws[0] != draws[1], (tokens, split)
    # a pace is a kind of device's own; with none, code of its own is not cut the whole split
    assert streams.base_pace(base) == max(b["flops"] / b["train_seconds"] for b in base) and \
        streams.base_pace(base, "h100") is None
    with pytest.raises(ValueError, match="the baseline has no completed run"):
        streams.export_stream(runner.program, mine[0], runner.runs_data, runner.harness_cache, own_code=True, pace=None)


SMALL_CONFIG_BIG_MODEL = """
import os as _os
_prepare = prepare

def prepare(spec, out):  # its code builds 4 layers whatever its config says; said 2, only 1 where it is probed
    probed = "/probes/" in _os.readlink("/proc/self/fd/2")  # (the probe's worker logs there, its run's and measurement's not)
    if probed and spec.overrides.get("softcap") == 0:
        raise RuntimeError("not while probed")
    if probed and spec.overrides.get("n_layer") == 3:
        import time
        time.sleep(600)  # the runner's time, at no run's cost?
    spec.overrides["n_layer"] = 1 if probed and spec.overrides.get("n_layer") == 2 else 4
    return _prepare(spec, out)
"""


def test_a_code_arms_windows_are_counted_at_its_model_and_one_that_outgrows_it_is_invalid(make_project, capsys, monkeypatch):
    """A run's windows were counted at its config's FLOPs a token: code that builds a bigger model
    than its config says read x6 the windows its steps take and could pick among them, so it was
    invalid, and so was an honest arm whose lookup table counts as a matrix (x2 or more). The
    harness now builds a code arm's model before it runs (evaluator.probe) and counts its windows
    at that: both are measured. Code that builds a small model when probed and a big one in its
    run is still held to what it was counted at (streams.overdrawn), and invalid; code that fails
    when probed, or a run whose stream's record is gone, is held to its config's count; a probe's
    time is its run's, as its measurement's is."""
    monkeypatch.setattr("org.probes.PROBE_SECONDS", 10.0)  # (an honest probe here: 1.3-1.7 s)
    program = tiny_program(variants=[], budget={**tiny_program()["budget"], "per_run": {"flops": 5e8}, "seeds": [0]})
    root = make_project(program)
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + SMALL_CONFIG_BIG_MODEL)
    for arm, keys in (("says-1-builds-4", ["n_layer=1"]), ("says-4-builds-4", ["n_layer=4"]), ("hides-4", ["n_layer=2"]),
                      ("fails-probe", ["n_layer=1", "softcap=0"]), ("hangs-probe", ["n_layer=3"])):
        assert main(["submit", "tiny", "--arm", arm, "--ref", "agent/tiny/mallory/work", *[a for k in keys for a in ("--set", k)]]) == 0
    assert main(["run", "tiny"]) == 0
    said = capsys.readouterr().out
    assert "its model could not be built before it ran (the experiment's model construction failed: RuntimeError: not while " \
           "probed); its windows are counted at its config" in said
    assert "its model could not be built before it ran (the measurement did not finish within 10s" in said
    with ledger_of(root) as ledger:
        runs = {r["arm"]: r for r in ledger.runs("tiny")}
    assert runs["says-4-builds-4"]["status"] == runs["says-1-builds-4"]["status"] == "completed", runs
    assert runs["says-1-builds-4"]["stream_passes"] == 0.5  # (counted at its 4 layers: twice, as for code of its own)
    hung = runs["hangs-probe"]  # (4 layers of the 3 it was counted at: within x2)
    assert hung["status"] == "completed" and hung["measure_seconds"] >= 10.0 + hung["measurement"].evaluator_seconds, hung
    assert runs["hides-4"]["status"] == "invalid" and runs["hides-4"]["reason"].startswith(
        "its model takes x2.6 the FLOPs a token of the model its code built before the run (172,032), which its "
        "windows were counted at: it read x5 the windows its budget pays for"), runs["hides-4"]["reason"]
    config = "its model takes x3.0 the FLOPs a token of its config (147,456), which its windows were counted at: it read x6"
    assert runs["fails-probe"]["status"] == "invalid" and runs["fails-probe"]["reason"].startswith(config), runs["fails-probe"]
    # its record goes once the run is on record; without it, a run that read a stream is held to its config's count
    said, runner = runs["says-1-builds-4"], Runner(Lab.open(root), load_program(root / "programs/tiny.yaml"), root / ".lab/tiny/ledger.sqlite")
    assert not list((runner.harness_cache / "streams").glob("*/*"))
    assert streams.overdrawn(runner.harness_cache, runner.program, said, said["measurement"], runner.runs_data)[0].startswith(config)
    assert streams.overdrawn(runner.harness_cache, runner.program, {**said, "command": "[]"}, said["measurement"],
                             runner.runs_data) == []  # (a run that read no stream of its own: the whole export, as before)


def test_the_runner_time_a_commit_takes_to_check_and_copy_is_its_runs(make_project, monkeypatch):
    """Before a run of an agent's commit, the runner checks the commit (refusal) and writes its
    files out (Lab.snapshot): seconds for a commit of many files (a tree naming one small blob
    100,000 times is a few kB), which no budget counted: 7.9 s here for 20,000 files, and
    the commit's next runs find its snapshot made. It is charged to the run now, with its
    measurement."""
    program = tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]},
                           max_change_kb=64)  # (20,000 names carry 47 KB: over the default, 16)
    root = make_project(program)

    def many_files(text):  # (beside the change it ships: 20,000 copies of one line)
        tree = root / "worktrees" / "tiny" / "mallory"
        for i in range(100):
            (tree / "many" / f"{i:02d}").mkdir(parents=True)
            for j in range(200):
                (tree / "many" / f"{i:02d}" / f"{j:03d}.txt").write_text("the same line\n")
        subprocess.run(["git", "add", "many"], cwd=tree, check=True)
        return text + "\n# mallory's idea\n"
    commit = agent_commit(root, "mallory", "trainer/train.py", many_files)
    assert main(["submit", "tiny", "--arm", "many", "--ref", "agent/tiny/mallory/work"]) == 0
    spent = []

    def timed(do, which):  # (what the runner does for the commit, timed as it does it)
        def timing(*args):
            t0 = time.monotonic()
            try:
                return do(*args)
            finally:
                spent.append(time.monotonic() - t0) if args[which] == commit else None
        return timing
    monkeypatch.setattr(runner, "refusal", timed(runner.refusal, 3))
    monkeypatch.setattr(Lab, "snapshot", timed(Lab.snapshot, 1))
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        many = ledger.runs("tiny", arm="many")[0]
    print(f"checking and copying its commit: {sum(spent):.1f}s; measured in {many['measure_seconds']:.1f}s")
    assert many["status"] == "completed" and sum(spent) > 2.0, spent
    assert many["measure_seconds"] >= sum(spent) + many["measurement"].evaluator_seconds, many


def test_a_models_probe_is_asked_once_however_many_slots_ask_and_a_cut_one_again(tmp_path):
    """Probes.flops_per_token, as the runner's slots call it: slots asking for one key at once wait
    for the first one's answer (one probe, its time charged once); a probe cut at its time limit
    is not kept, one whose code failed is (its log's tail kept for the person), and a failure of
    the harness (the runner's evaluator failed twice) goes up to stop the runner, its time charged
    and nothing kept: asked again. Nothing is held per key once it is answered."""
    from org.probes import Probes
    said, asked, charged, answers = [], [], [], []

    def evaluate(outcome):
        def ask(logs, timeout):
            asked.append(int(logs.name))
            time.sleep(0.3)
            (logs / "measure.log").write_bytes(b"its code's words\n" * 200_000)  # 3.4 MB
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return ask
    probes = Probes(tmp_path / "probes", said.append)
    built = {"measurement": Measurement(flops_per_token=172_032.0)}
    slots = [threading.Thread(target=lambda i=i: answers.append(probes.flops_per_token(
        ("c0ffee", "{}", "flops"), i, evaluate(built), charged.append))) for i in (1, 2, 3)]
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.join()
    assert answers == [172_032.0] * 3 and len(asked) == len(charged) == 1 and charged[0] >= 0.3
    assert not (tmp_path / "probes" / str(asked[0])).exists() and not probes.asking  # (a success's logs go)

    cut = {"timed_out": True, "invalid": "the measurement did not finish within 60s"}
    assert [probes.flops_per_token(("slow",), run, evaluate(cut), charged.append) for run in (4, 5)] == [None, None]
    failed = {"invalid": "the experiment's model construction failed: RuntimeError: no"}
    assert [probes.flops_per_token(("fails",), run, evaluate(failed), charged.append) for run in (6, 7)] == [None, None]
    assert asked[1:] == [4, 5, 6] and len(charged) == 4  # (cut: asked again; failed: kept)
    assert (tmp_path / "probes" / "6" / "measure.log").stat().st_size == measure.KEPT_LOG_BYTES
    assert "run 6: its model could not be built before it ran (the experiment's model construction failed" in said[-1]
    with pytest.raises(OrgError, match=r"the harness could not measure it"):
        probes.flops_per_token(("harness",), 8, evaluate(OrgError("run 8: the harness could not measure it")), charged.append)
    assert ("harness",) not in probes.answers and len(charged) == 5 and not probes.asking


def test_a_probes_time_and_a_streams_record_outlive_a_runner_that_fails_after_them(make_project, capsys, monkeypatch):
    """Two moments a runner can fail at (a full disk, a locked ledger, a kill). Just after a code
    arm's probe: its seconds were kept in the runner's memory until its run was on record, so a
    run re-queued after its probe (its data could not be cut: no room) lost them with the runner.
    They are on record as the probe ends now, and the probe asked again is charged again. And in
    the transaction that records a run: its stream's record must outlive a transaction that
    failed, or the recovery could neither count its passes nor hold it to what it was counted at.
    The recovery charges the run from its trainer's start, not its claim's (its probe twice over)."""
    program = tiny_program(variants=[], budget={**tiny_program()["budget"], "per_run": {"flops": 5e8}, "seeds": [0]})
    root = make_project(program)
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + "\n# an idea of mallory's\n")
    assert main(["submit", "tiny", "--arm", "idea", "--ref", "agent/tiny/mallory/work"]) == 0
    cut, failed, cut_at = runner.export_stream, [], []

    def no_room_once(program, run, *args):  # (the disk fills as the arm's windows are cut, after its probe)
        if run["arm"] == "idea" and not failed:
            failed.append(run["id"])
            raise OSError(28, "No space left on device")
        try:
            return cut(program, run, *args)
        finally:
            cut_at.append(time.time())
    monkeypatch.setattr(runner, "export_stream", no_room_once)
    assert main(["run", "tiny"]) == 2
    assert "its data could not be cut from the runs' export ([Errno 28] No space left on device)" in capsys.readouterr().err
    with ledger_of(root) as ledger:
        idea = ledger.run(failed[0])
    assert idea["status"] == "queued" and idea["measure_seconds"] > 0.5, idea  # (a probe here: 1.3-1.7 s)
    probed = idea["measure_seconds"]

    finish, broke = Ledger.finish, []

    def fails_once(self, run_id, status, *args, **kwargs):  # (the record's transaction: rolled back)
        if run_id == idea["id"] and status == "completed" and not broke:
            broke.append(run_id)
            raise sqlite3.OperationalError("database is locked")
        return finish(self, run_id, status, *args, **kwargs)
    monkeypatch.setattr(Ledger, "finish", fails_once)
    assert main(["run", "tiny"]) == 2  # (a bug's way out: the run stays claimed)
    record = root / ".lab" / "harness-cache" / "streams" / "tiny" / f"{idea['id']}.json"
    assert broke and record.is_file()
    with ledger_of(root) as ledger:
        claimed = ledger.run(idea["id"])
        gone = subprocess.Popen(["true"])
        gone.wait()
        ledger._update("runs", idea["id"], {"runner_pid": gone.pid})  # its runner died there
    assert claimed["status"] == "running" and claimed["measure_seconds"] > probed + 0.5  # (probed again: charged again)
    # and a recovery charges it from its trainer's start: the time before it (its probe) is charged already
    assert datetime.fromisoformat(claimed["started_at"]).timestamp() >= cut_at[-1] - 0.002, (claimed["started_at"], cut_at)
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        idea = ledger.run(idea["id"])
    assert idea["status"] == "completed" and idea["stream_passes"] == 0.5, idea  # (code of its own: twice its windows)
    assert idea["measure_seconds"] >= claimed["measure_seconds"] + idea["measurement"].evaluator_seconds, idea
    assert not record.exists()


def test_a_run_stopped_before_its_trainer_is_charged_each_second_once(make_project):
    """`org stop` kills a runner whose slot is probing a code arm's model, and recovers its run
    `just_now`: charged from its clock to now. Its clock was its claim's, so the seconds already
    charged for its commit (checked and written out) were charged again. Charges before its
    trainer now start its clock again: its check and the rest add up to the time from its claim
    to its stop, no more, and the probe in flight is in them."""
    program = tiny_program(variants=[], budget={**tiny_program()["budget"], "per_run": {"flops": 5e8}, "seeds": [0]})
    root = make_project(program)

    def slow(text):  # its model takes a minute to build, and its commit a second to write out
        tree = root / "worktrees" / "tiny" / "mallory"
        for i in range(2000):
            (tree / "many" / f"{i // 100:02d}").mkdir(parents=True, exist_ok=True)
            (tree / "many" / f"{i // 100:02d}" / f"{i % 100:02d}.txt").write_text("the same line\n")
        subprocess.run(["git", "add", "many"], cwd=tree, check=True)
        return text.replace("class GPT", "import time as _t\n_t.sleep(60)\n\n\nclass GPT", 1)
    agent_commit(root, "mallory", "trainer/model.py", slow)
    assert main(["submit", "tiny", "--arm", "slow-model", "--ref", "agent/tiny/mallory/work"]) == 0
    org_run = subprocess.Popen([sys.executable, "-c", "import sys; from org.cli import main; sys.exit(main(['run', 'tiny']))"],
                               cwd=root, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probes, claimed, unseen = root / ".lab" / "tiny" / "probes", None, time.time()
    try:
        with ledger_of(root) as ledger:
            while not (probes.is_dir() and any(probes.iterdir())) and org_run.poll() is None:
                looked = time.time()
                if claimed is None and ledger.runs("tiny", arm="slow-model", status="running"):
                    claimed = unseen  # (before its claim: the last look that did not see it began then)
                unseen = looked
                time.sleep(0.02)
        assert claimed and probes.is_dir(), "the probe never started"
        time.sleep(2.0)  # (the probe in flight)
    finally:
        os.killpg(org_run.pid, signal.SIGKILL)
        org_run.wait()
    with ledger_of(root) as ledger, contextlib.closing(Lab.open(root)) as lab:
        run, = ledger.runs("tiny", arm="slow-model")
        assert run["status"] == "running" and run["measure_seconds"] > 0.3, run  # (its commit, charged)
        Runner(lab, load_program(root / "programs" / "tiny.yaml"), ledger.path, say=lambda text: None).recover(
            ledger, why="was stopped by `org stop`", just_now=True)  # (as org/stop.py does)
        stopped, run = time.time(), ledger.run(run["id"])
    assert run["status"] == "queued" and run["lost_seconds"] >= 2.0, run  # (the probe in flight: charged)
    assert run["measure_seconds"] + run["lost_seconds"] <= stopped - claimed + 0.1, (run, stopped - claimed)


def test_a_run_whose_runner_was_killed_as_it_warmed_up_is_charged_until_the_runner_died(make_project):
    """A runner SIGKILLed while its trainer warms up (imports, builds its model: it writes nothing)
    leaves nothing in the run's directory to say how long it worked; charged to its last write, the
    attempt cost the budget nothing. The runner's pulse says when it last lived."""
    program = tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]})
    root = make_project(program)
    agent_commit(root, "mallory", "trainer/model.py",
                 lambda text: text.replace("class GPT", "import time as _t\n_t.sleep(60)\n\n\nclass GPT", 1))
    assert main(["submit", "tiny", "--arm", "slow-start", "--ref", "agent/tiny/mallory/work"]) == 0
    org_run = subprocess.Popen([sys.executable, "-c", "import sys; from org.cli import main; sys.exit(main(['run', 'tiny']))"],
                               cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with ledger_of(root) as ledger:
            deadline = time.monotonic() + 120
            while not (run := next(iter(ledger.runs("tiny", arm="slow-start", status="running")), None)) or not run["trainer_pid"]:
                assert org_run.poll() is None and time.monotonic() < deadline, "the trainer never started"
                time.sleep(0.02)
        time.sleep(4.0)  # warming up
    finally:
        os.killpg(org_run.pid, signal.SIGKILL)
        org_run.wait()
    killed = time.time()
    time.sleep(2.0)  # (it lies dead a while: not charged)
    with ledger_of(root) as ledger, contextlib.closing(Lab.open(root)) as lab:
        Runner(lab, load_program(root / "programs" / "tiny.yaml"), ledger.path, say=lambda text: None).recover(ledger)
        run = ledger.run(run["id"])
    # (charged to its runner's last pulse: up to a pulse, and a loaded machine's lateness, before the kill)
    assert run["status"] == "queued" and 4.0 - PULSE_SECONDS - 0.5 < run["lost_seconds"] \
        < killed - datetime.fromisoformat(run["started_at"]).timestamp() + 0.5, run
    assert not list((root / ".lab" / "tiny" / "runners").glob("*.alive")), "its pulse outlives the recovery"


def test_a_measurement_its_runner_was_killed_in_is_charged(make_project):
    """The harness measures a run after its trainer has written result.json; a runner SIGKILLed
    mid-measurement left that time charged to no one (the recovery measures again and charges only
    that). Here a code arm's model is slow to load in the harness's model worker until a deadline."""
    program = tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]})
    root = make_project(program)
    deadline = time.time() + 30
    slow = f"import sys as _s, time as _t\nif _s.argv[0] == '-c': _t.sleep(max(0, {deadline} - _t.time()))\n\n\nclass GPT"
    agent_commit(root, "mallory", "trainer/model.py", lambda text: text.replace("class GPT", slow, 1))
    assert main(["submit", "tiny", "--arm", "slow-load", "--ref", "agent/tiny/mallory/work"]) == 0
    org_run = subprocess.Popen([sys.executable, "-c", "import sys; from org.cli import main; sys.exit(main(['run', 'tiny']))"],
                               cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with ledger_of(root) as ledger:
            while not ((run := next(iter(ledger.runs("tiny", arm="slow-load", status="running")), None))
                       and (written := root / ".lab" / "tiny" / "runs" / str(run["id"]) / "result.json").exists()):
                assert org_run.poll() is None and time.time() < deadline - 10, "the trainer never finished in time"
                time.sleep(0.02)
        trained = written.stat().st_ctime
        time.sleep(5.0)  # measuring
    finally:
        os.killpg(org_run.pid, signal.SIGKILL)
        org_run.wait()
    killed = time.time()
    time.sleep(max(0.0, deadline - time.time()))  # (it lies dead a while: not charged)
    with ledger_of(root) as ledger, contextlib.closing(Lab.open(root)) as lab:
        before = ledger.run(run["id"])["measure_seconds"] or 0.0
        t0 = time.monotonic()
        Runner(lab, load_program(root / "programs" / "tiny.yaml"), ledger.path, say=lambda text: None).recover(ledger)
        measured_again, run = time.monotonic() - t0, ledger.run(run["id"])
    assert run["status"] == "completed" and run["wall_seconds"] < trained - datetime.fromisoformat(run["started_at"]).timestamp() + 1, run
    charged = run["measure_seconds"] - before  # the killed measurement, and the one the recovery made
    # to within the runner's last pulse, and a loaded machine's lateness in writing it (1.02 s short on CI's 2 cores)
    late = PULSE_SECONDS + 0.5
    assert killed - trained - late < charged - measured_again < killed - trained + 0.5, (charged, measured_again, killed - trained)
    if available() is None and cgroup_root("cpuacct"):  # its box's CPU time, on record as its trainer ended (was: None)
        assert run["train_cpu_seconds"] and 0.1 < run["train_cpu_seconds"] < run["wall_seconds"] * 2, run


def test_a_runs_stream_is_what_its_budget_pays_for_in_the_order_its_trainer_takes_it(make_project):
    """The windows a seed draws are the same for every arm (the pairs see the same data, and a
    canary's re-run reproduces), other on another seed; under a FLOP budget there are as many as
    the trainer takes steps (no window twice, none spare); and its curves score the windows they
    scored on the whole dev half."""
    from trainer.data import eval_batches, load_dataset, train_batch
    from trainer.train import RunSpec, prepare
    program = tiny_program(variants=[], budget={**tiny_program()["budget"], "per_run": {"flops": 5e8}, "seeds": [0]})
    root = make_project(program)
    assert main(["run", "tiny"]) == 0
    assert not list((root / ".lab" / "tiny" / "runners").glob("*.alive"))  # (its pulse ends with it)
    with ledger_of(root) as ledger:  # the harness counted each run's steps through its stream: once, exactly
        assert {r["stream_passes"] for r in ledger.runs("tiny")} == {1.0}
        if available() is None and cgroup_root("cpuacct"):  # and the CPU time its trainer's box ran (confounds)
            assert all(0.1 < r["train_cpu_seconds"] < r["wall_seconds"] * 2 for r in ledger.runs("tiny")), ledger.runs("tiny")
    assert not list((root / ".lab" / "harness-cache" / "streams").glob("*/*"))  # its length gone with it
    runner = Runner(Lab.open(root), load_program(root / "programs" / "tiny.yaml"), root / ".lab/tiny/ledger.sqlite")
    runner.prepare_data()
    cut = lambda i, seed, overrides: load_dataset(str(streams.export_stream(runner.program, {
        "id": i, "seed": seed, "overrides": json.dumps(overrides), "budget": json.dumps({"kind": "flops", "value": 5e8})},
        runner.runs_data, runner.harness_cache, own_code=False)))
    base, arm, other = cut(1, 3, TINY), cut(2, 3, {**TINY, "softcap": 0}), cut(3, 4, TINY)
    assert np.array_equal(base.train, arm.train) and not np.array_equal(base.train, other.train)
    spec = RunSpec(preset="nanochat", overrides={**TINY, "sequence_len": 64}, seed=3, budget_kind="flops", budget=5e8,
                   data=str(runner.harness_cache / "streams" / "tiny" / "1"), batch_size=4, val_tokens=2048)
    *_, budget = prepare(spec, None)
    assert base.rows == 65 and len(base.train) == budget.steps * 4 * 65 > 0
    windows = [train_batch(base, 4, 64, 3, step)[0] for step in range(budget.steps)]
    assert len({w.tobytes() for batch in windows for w in batch}) == budget.steps * 4  # each window once
    whole = load_dataset(str(runner.runs_data))
    for a, b in zip(eval_batches(whole.val, 2048, 4, 64), eval_batches(base.val, 2048, 4, 64), strict=True):
        assert np.array_equal(a[0], b[0])
    assert len(base.val) == 2048 // 64 * 65 < len(whole.val)
    # a key only the experiment's own code knows is left out of the shape, not an error, and the rest stays
    flops = ("flops", 5e8)
    assert streams.stream_rows(runner.program, {**TINY, "my_gate": 1}, flops, whole) == \
        streams.stream_rows(runner.program, TINY, flops, whole) == budget.steps * 4
    deeper = streams.stream_rows(runner.program, {**TINY, "n_layer": 2}, flops, whole)
    assert streams.stream_rows(runner.program, {**TINY, "n_layer": 2, "my_gate": 1}, flops, whole) == deeper < budget.steps * 4
    # a FLOP budget a model far smaller would take past the split: the split's worth, its windows again after
    small = {"id": 4, "seed": 3, "overrides": json.dumps({"n_layer": 1, "n_embd": 2, "n_head": 1}),
             "budget": json.dumps({"kind": "flops", "value": 5e12})}
    big = load_dataset(str(streams.export_stream(runner.program, small, runner.runs_data, runner.harness_cache, False)))
    assert len(big.train) == len(whole.train) // 65 * 65 and big.rows == 65
    # ... which its steps went through more than once: the measurement says how often (a report warns)
    ran = streams.with_passes(runner.harness_cache, runner.program, small, Measurement(checkpoint_step=len(whole.train) // 65))
    assert ran.stream_passes == 4.0
    # a program whose base commit's trainer takes no stream reads the whole export, as it did
    old = runner.harness_cache.parent / "old-base"
    (old / "trainer").mkdir(parents=True)
    (old / "trainer" / "data.py").write_text("def get_batch(tokens, batch_size, seq_len, seed, step): ...\n")
    assert streams.reads_streams(runner.base_snapshot) and not streams.reads_streams(old)


@pytest.mark.parametrize("error", [ValueError("shards: no training shard"), OSError(28, "No space left on device")])
def test_a_run_whose_windows_cannot_be_cut_is_an_error_or_waits_for_room(make_project, monkeypatch, capsys, error):
    """The runs' export that could not be made is the run's error; a full disk is the machine's: the
    run goes back to the queue, and the runner stops with one line."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    monkeypatch.setattr(runner, "export_stream", lambda *args: (_ for _ in ()).throw(error))
    code = main(["run", "tiny"])
    with ledger_of(root) as ledger:
        run, = ledger.runs("tiny")
    if isinstance(error, ValueError):
        assert code == 0 and run["status"] == "error"
        assert run["reason"] == "its data could not be cut from the runs' export: shards: no training shard"
    else:
        assert code != 0 and run["status"] == "queued" and "No space left on device" in run["attempt_log"]
        said = capsys.readouterr().err.strip().splitlines()
        assert said[-1].endswith(f"run {run['id']}: its data could not be cut from the runs' export "
                                 "([Errno 28] No space left on device)"), said


def test_tuning_picks_each_arms_best_before_measuring(make_project):
    root = make_project(tiny_program(tune={"matrix_lr": [0.002, 0.05]}, tune_seeds=[5]))
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        for experiment in ledger.experiments("tiny"):
            tune = ledger.runs("tiny", experiment_id=experiment["id"], purpose="tune")
            main_runs = ledger.runs("tiny", experiment_id=experiment["id"], purpose="main")
            assert sorted(json.loads(r["overrides"])["matrix_lr"] for r in tune) == [0.002, 0.05]
            assert [r["seed"] for r in tune] == [5, 5] and [r["seed"] for r in main_runs] == [0, 1]
            best = min(tune, key=lambda r: r["val_bpb"])
            chosen = json.loads(experiment["chosen"])
            assert experiment["stage"] == "measuring"
            assert chosen == {"matrix_lr": json.loads(best["overrides"])["matrix_lr"]}
            assert all(json.loads(r["overrides"])["matrix_lr"] == chosen["matrix_lr"] for r in main_runs)
            assert all(r["status"] == "completed" for r in tune + main_runs)


def test_sigkill_the_runner_then_resume_loses_and_repeats_nothing(make_project):
    budget = {**tiny_program()["budget"], "per_run": {"steps": 400}}
    root = make_project(tiny_program(budget=budget))
    runner = subprocess.Popen([sys.executable, "-m", "org.cli", "run", "tiny"], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if not (root / ".lab" / "tiny" / "ledger.sqlite").exists():
            continue
        with ledger_of(root) as ledger:  # wait for one finished run and one under way
            running = [r for r in ledger.runs("tiny", status="running") if r["trainer_pid"]]
            if ledger.runs("tiny", status="completed") and running:
                victim = running[0]
    assert victim is not None, "the runner never got under way"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    assert main(["run", "tiny"]) == 0
    assert not pid_alive(victim["trainer_pid"])  # no orphan trainer left behind
    with ledger_of(root) as ledger:
        runs = ledger.runs("tiny")
        again = ledger.run(victim["id"])
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("baseline", 0), ("baseline", 1),
                                                          ("no-softcap", 0), ("no-softcap", 1)]
    assert all(r["status"] == "completed" for r in runs)
    if again["attempts"] == 2:  # killed mid-run: the half-written directory was kept aside
        aside = Path(again["run_dir"]).with_name(f"{victim['id']}.attempt1")
        assert aside.is_dir() and not (aside / "result.json").exists()
        assert "attempt 1: runner pid" in again["attempt_log"]
    else:  # the trainer had just finished: its result was recorded, not re-run
        assert again["attempts"] == 1 and again["trainer_pid"] == victim["trainer_pid"]


def test_a_result_written_just_before_the_runner_died_is_recorded_not_rerun(make_project):
    """...with the wall time the run took, although its files say it ended as it began: a run
    can set its files' modification times, not their change times."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    # a runner that claims a run, lets the trainer finish, and dies before recording it
    code = """if True:
        import json, os, subprocess, sys, time
        from pathlib import Path
        from org.lab import Lab, child_env
        from org.ledger import Ledger
        from org.program import load_program
        from org.streams import export_stream, runs_data, split_key_file
        from org.runner import train_command
        ledger, lab = Ledger('.lab/tiny/ledger.sqlite'), Lab.open('.')
        run = ledger.claim('tiny', 0)
        snapshot = lab.snapshot(ledger.experiment(run['experiment_id'])['code_commit'], 'tiny')
        out = Path('.lab/tiny/runs', str(run['id'])).resolve()
        cache = Path('.lab/harness-cache').resolve()  # the lab's split, as the runner prepares it
        program = load_program('programs/tiny.yaml')
        data = runs_data(cache, program.data, ledger.program('tiny')['base_commit'])
        subprocess.run([sys.executable, '-m', 'trainer', 'data', '--cache-dir', str(cache / 'data'),
                        '--split-key-file', str(split_key_file(cache)), '--export-runs', str(data)],
                       cwd=snapshot, env=child_env({'PYTHONPATH': str(snapshot)}), check=True, capture_output=True)
        stream = export_stream(program, run, data, cache, own_code=False)  # its windows, as the runner cuts them
        cmd = train_command(program, json.loads(run['overrides']), run['seed'], out, data_dir=stream)
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=snapshot, env=child_env({'PYTHONPATH': str(snapshot)}))
        ledger.mark_started(run['id'], proc.pid, cmd, out, out / 'train.log')
        proc.wait()
        took = time.time() - t0
        for path in [out, *out.rglob('*')]:  # what its own code could do last: every file dated t0
            os.utime(path, (t0, t0))
        print(run['id'], took)
    """
    died, took = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                                check=True).stdout.split()
    died = int(died)
    streams = root / ".lab" / "harness-cache" / "streams" / "tiny"
    assert (streams / str(died)).is_dir() and (streams / f"{died}.json").is_file()  # (its record: streams.stream_record)
    for left in ("999", ".7-being-cut"):  # a run no ledger knows of; one a runner is cutting now
        (streams / left).mkdir()
    (streams / "999.json").write_text("{}")
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        run = ledger.run(died)
        assert len(ledger.runs("tiny")) == 2
    assert run["status"] == "completed" and run["attempts"] == 1
    assert run["wall_seconds"] >= float(took), (run["wall_seconds"], took)
    assert run["stream_passes"] == 1.0  # its stream's record outlived its runner, and was read
    assert sorted(p.name for p in streams.iterdir()) == [".7-being-cut"]  # its data, its record and the stale gone


def test_org_stop_charges_a_lost_attempt_up_to_the_stop_not_to_its_last_write(make_project):
    """A runner stopped by `org stop` (or killed past its grace) leaves its runs 'running', and the
    stop puts them back in the queue at once: their attempts were charged up to their directory's
    last write, so code that writes nothing until its end trained for free on every stop. Right
    after a stop, the attempt is charged up to now (after a crash, downtime is not the run's)."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    code = """if True:
        from pathlib import Path
        from org.ledger import Ledger
        ledger = Ledger('.lab/tiny/ledger.sqlite')
        run = ledger.claim('tiny', 0)
        out = Path('.lab/tiny/runs', str(run['id'])).resolve()
        out.mkdir(parents=True)
        ledger.mark_started(run['id'], None, ['python', '-m', 'trainer'], out, out / 'train.log')
        print(run['id'], out)
    """
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    died, out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                               check=True).stdout.split()
    time.sleep(3)  # it trains 3 s, writing nothing
    with ledger_of(root) as ledger, contextlib.closing(Lab.open(root)) as lab:
        Runner(lab, load_program(root / "programs" / "tiny.yaml"), root / ".lab/tiny/ledger.sqlite",
               say=lambda text: None).recover(ledger, why="was stopped by `org stop`", just_now=True)
        run = ledger.run(int(died))
    assert run["status"] == "queued" and 3 <= run["lost_seconds"] < 30, run["lost_seconds"]


def test_a_process_of_the_run_that_outlives_its_trainer_writes_nothing_after_recovery(make_project):
    """Recovery reads a dead runner's run directory only once every process the run started is
    gone. A box's processes die a moment after bwrap (its PID 1 goes, then the kernel kills the
    rest); here a child in a session of its own, holding the directory open as a bind mount
    does, writes result.json a moment after its trainer is killed. Had recovery read the
    directory first, that file would land in the attempt it set aside, or the run's result
    would be one no trainer of the harness's finished."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    lingering = r"""if True:
        import os, sys, time
        out = sys.argv[1]
        if os.fork() == 0:
            os.setsid()  # out of the trainer's process group: its killpg misses this one
            folder, parent = os.open(out, os.O_RDONLY), os.getppid()
            open(os.path.join(out, 'lingering.pid'), 'w').write(str(os.getpid()))
            while os.getppid() == parent:
                time.sleep(0.01)
            time.sleep(1.0)
            fd = os.open('result.json', os.O_WRONLY | os.O_CREAT, dir_fd=folder)
            os.write(fd, b'{"status": "completed", "final_val_loss": 0.1}')
            sys.exit(0)
        time.sleep(600)
    """
    code = f"""if True:
        import json, subprocess, sys, time
        from pathlib import Path
        from org.ledger import Ledger
        ledger = Ledger('.lab/tiny/ledger.sqlite')
        run = ledger.claim('tiny', 0)
        out = Path('.lab/tiny/runs', str(run['id'])).resolve()
        out.mkdir(parents=True)
        cmd = [sys.executable, '-c', {lingering!r}, str(out)]
        trainer = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        while not (out / 'lingering.pid').exists() or not (out / 'lingering.pid').read_text():
            time.sleep(0.01)  # (made, then written: read between the two, it was empty)
        ledger.mark_started(run['id'], trainer.pid, cmd, out, out / 'train.log')
        print(run['id'], trainer.pid, (out / 'lingering.pid').read_text())
    """
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    died, trainer, child = map(int, subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                                                  text=True, check=True).stdout.split())
    try:
        assert main(["run", "tiny"]) == 0  # recovers the run of the dead runner, then runs it again
        time.sleep(2.0)  # past the moment the child would write
        with ledger_of(root) as ledger:
            run = ledger.run(died)
        aside = Path(run["run_dir"]).with_name(f"{died}.attempt1")
        assert not pid_alive(trainer) and not pid_alive(child)
        assert run["status"] == "completed" and run["attempts"] == 2
        assert aside.is_dir() and not (aside / "result.json").exists()
    finally:
        for pid in (trainer, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_slots_split_the_machine_one_run_each():
    program = load_program(ROOT / "programs" / "softcap.yaml")
    gpus = program.model_copy(update={"runner": program.runner.model_copy(update={"gpus": [0, 3]})})
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in make_slots(gpus)] == ["0", "3"]
    cpu = program.model_copy(update={"runner": program.runner.model_copy(
        update={"slots": 2, "threads_per_slot": 1})})
    slots = make_slots(cpu)
    assert [s.env["OMP_NUM_THREADS"] for s in slots] == ["1", "1"]
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in slots)
    if len(os.sched_getaffinity(0)) >= 2:  # each CPU slot pinned to cores of its own
        assert slots[0].cores != slots[1].cores and len(slots[0].cores) == 1
        assert [s.share for s in slots] == [s.cores for s in slots]
        one = make_slots(program.model_copy(update={"runner": program.runner.model_copy(
            update={"slots": 1, "threads_per_slot": 1})}))[0]
        assert len(one.cores) == 1  # its runs: as many cores as threads; its measurements: the machine
        assert one.share == sorted(os.sched_getaffinity(0))


def test_slots_take_whole_physical_cores_where_cores_have_hyperthreads(tmp_path, monkeypatch):
    """Linux numbers a machine's first hyperthreads 0..n-1 and their siblings n..2n-1. Slots of
    consecutive numbers put one slot's runs on the siblings of the other's, sharing every
    physical core's units and caches. Here 8 CPUs as 4 cores of 2 (this machine has no SMT:
    the kernel's topology files are written by the test)."""
    from org import slots as slots_module
    for cpu in range(8):
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(f"{cpu % 4},{cpu % 4 + 4}\n")
    monkeypatch.setattr(slots_module, "CPU_SYSFS", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    program = load_program(ROOT / "programs" / "softcap.yaml")
    two = make_slots(program.model_copy(update={"runner": program.runner.model_copy(
        update={"slots": 2, "threads_per_slot": None})}))  # (threads: the share's)
    assert [s.share for s in two] == [[0, 1, 4, 5], [2, 3, 6, 7]]  # (was [0..3], [4..7]: each core split)
    assert [s.cores for s in two] == [s.share for s in two] and two[0].env["OMP_NUM_THREADS"] == "4"
    one = make_slots(program.model_copy(update={"runner": program.runner.model_copy(
        update={"slots": 1, "threads_per_slot": 2})}))[0]
    assert one.cores == [0, 4]  # one core's two threads: the others' cores free of its run
    three = make_slots(program.model_copy(update={"runner": program.runner.model_copy(update={"slots": 3})}))
    assert [s.share for s in three] == [[0, 4], [1, 5], [2, 6]]  # (8 // 3 = 2 each: none split)
    (tmp_path / "cpu3" / "topology" / "thread_siblings_list").write_text("garbled")  # (unknown: alone)
    assert make_slots(program.model_copy(update={"runner": program.runner.model_copy(update={"slots": 4})}))[1].share \
        == [1, 5]


def test_a_result_json_that_does_not_fit_the_record_is_an_invalid_run_named_not_a_crash(tmp_path):
    """The trainer is the experiment's code: its result.json is read as trainer/record.py's
    Result, field by field. Before, `"steps": "3"` or a list for params reached the runner's
    arithmetic and killed its slot with a TypeError, run after run."""
    from org.program import Program
    from org.measure import check_result, read_result
    program = Program.model_validate(tiny_program())
    good = {"status": "completed", "steps": 3, "seed": 1, "val_bpb": 3.0, "budget": {"kind": "steps", "value": 3}}
    (tmp_path / "result.json").write_text(json.dumps(good))
    assert check_result(program, {"seed": 1}, read_result(tmp_path), None) == ("completed", None)
    for field, bad, named in (("steps", "3", "steps: Input should be a valid integer (it holds '3')"),
                              ("params", [1, 2], "params: Input should be an object"),
                              ("budget", {"kind": "steps"}, "budget.value: Field required"),
                              ("val_bpb", True, "val_bpb: Input should be a valid number")):
        (tmp_path / "result.json").write_text(json.dumps({**good, field: bad}))
        status, reason = check_result(program, {"seed": 1}, read_result(tmp_path), None)
        assert status == "invalid" and reason.startswith(f"result.json: {named}"), reason
    (tmp_path / "result.json").write_text("[1, 2]")
    assert check_result(program, {"seed": 1}, read_result(tmp_path), None)[0] == "invalid"


def test_the_programs_matmul_precision_reaches_every_run_and_is_checked(tmp_path):
    from org.program import Program
    from org.measure import check_result
    from org.runner import train_command
    program = Program.model_validate(tiny_program(train={"batch_size": 4, "seq_len": 64, "matmul": "bf16"}))
    cmd = train_command(program, {"softcap": 0}, seed=1, out=tmp_path / "run")
    assert cmd[cmd.index("--matmul") + 1] == "bf16"
    result = Result(status="completed", steps=3, seed=1, batch_size=4, sequence_len=64, val_tokens=2048,
                    matmul="fp32", val_bpb=3.0)
    status, reason = check_result(program, {"seed": 1}, result, None)
    assert status == "invalid" and "matmul is 'fp32', the program fixes 'bf16'" in reason
    status, _ = check_result(program, {"seed": 1}, replace(result, matmul="bf16"), None)
    assert status == "completed"


@pytest.mark.slow
def test_a_commit_with_the_base_kernels_starts_from_their_compiled_cache(make_project, monkeypatch, capsys):
    """Code arms are common: a commit whose kernel sources are the base's gets a copy of the base
    commit's compiled kernels (filed under its own snapshot's path), so its runs compile nothing;
    one that changes what the kernels bake in (ops.GELU_K) compiles its own."""
    monkeypatch.setenv("NANOLAB_KERNELS", "1")  # the real kernels, which these tests usually skip
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    assert main(["run", "tiny"]) == 0
    own_caches = {}  # {run_dir: {file: mtime}} of a code arm's run's own cache, read before the runner clears it

    def leave_the_record(run_dir, checkpoint):
        own_caches[str(run_dir)] = {p.name: p.stat().st_mtime for p in (run_dir / "kernels").rglob("*")
                                    if p.suffix in (".nbi", ".nbc")}
        measure.leave_the_record(run_dir, checkpoint)
    monkeypatch.setattr(runner, "leave_the_record", leave_the_record)
    agent_commit(root, "alice", "trainer/model.py", lambda text: text + "\n# a comment: the same kernels\n")
    agent_commit(root, "bob", "trainer/ops.py", lambda text: text.replace("GELU_K = ", "GELU_K = 1.0001 * "))
    for arm, who in (("comment", "alice"), ("gelu", "bob")):
        assert main(["submit", "tiny", "--arm", arm, "--ref", f"agent/tiny/{who}/work", "--set", "softcap=0"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = {r["arm"]: r for r in ledger.runs("tiny")}
        commits = {arm: ledger.experiment(r["experiment_id"])["code_commit"] for arm, r in runs.items()}
    assert {r["status"] for r in runs.values()} == {"completed"}

    def compiled(arm: str) -> dict:
        """{file: mtime} of the arm's run's kernel cache (copies keep their source's mtime): the
        base commit's, or the one an agent's run got for itself in its run directory."""
        if arm != "baseline":
            return own_caches[runs[arm]["run_dir"]]
        cache = root / ".lab" / "tiny" / "kernels" / commits[arm]
        return {p.name: p.stat().st_mtime for p in cache.rglob("*") if p.suffix in (".nbi", ".nbc")}
    base, same, own = compiled("baseline"), compiled("comment"), compiled("gelu")
    assert base and same == base  # copied, and nothing compiled again (Numba would rewrite an index)
    assert own and min(own.values()) > max(base.values())  # compiled by the gelu commit's own runs
    with capsys.disabled():
        print(f"\nfirst run of a commit: {runs['baseline']['wall_seconds']:.1f}s compiling the kernels, "
              f"{runs['comment']['wall_seconds']:.1f}s with the base's copied, "
              f"{runs['gelu']['wall_seconds']:.1f}s compiling its own")


def test_a_warm_up_its_runner_was_killed_in_is_done_again_not_taken_for_whole(make_project, monkeypatch):
    """The runner compiles the base's kernels before the program's first run (kernelcache.warm), and
    marks the cache whole; one it was killed in the middle of holds a part and no mark, and a copy
    of a part leaves a code arm's runs compiling what is missing, seconds of CPU the +5% bar sees."""
    from org.kernelcache import WARMED, warm
    from org.lab import child_env
    from org.streams import runs_data
    monkeypatch.setenv("NANOLAB_KERNELS", "1")  # the real kernels, which these tests usually skip
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    assert main(["run", "tiny"]) == 0
    program = load_program(root / "programs" / "tiny.yaml")
    with ledger_of(root) as ledger:
        base = ledger.program("tiny")["base_commit"]
    code, cache = root / ".lab" / "tiny" / "snapshots" / base, root / ".lab" / "tiny" / "kernels" / base
    data = runs_data(root / ".lab" / "harness-cache", program.data, base)
    compiled = lambda: {p.name: p.stat().st_mtime for p in cache.rglob("*") if p.suffix in (".nbi", ".nbc")}  # noqa: E731
    whole = compiled()
    assert (cache / WARMED).exists() and whole
    (cache / WARMED).unlink()
    for name in whole:  # a warm-up killed before it compiled anything: its folders, no kernels
        next(cache.rglob(name)).unlink()
    said = []
    warm(program, code, cache, data, child_env({}), said.append)
    assert not said and (cache / WARMED).exists() and set(compiled()) == set(whole)
    again = compiled()
    warm(program, code, cache, data, child_env({}), said.append)  # whole: nothing compiled again
    assert not said and compiled() == again


def test_a_runs_last_words_reach_the_runners_pane_without_their_escapes(make_project, capsys):
    """A failed run's reason ends with its trainer's last log line, which the runner prints in its
    pane: an escape sequence there (OSC 52 writes the person's clipboard; others move the
    cursor over the harness's lines) reached the person's terminal."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + (
        "\nimport sys\nprint('\\x1b]52;c;cm0gLXJmIH4=\\x07 done', flush=True)\nsys.exit(1)\n"))
    assert main(["submit", "tiny", "--arm", "escapes", "--ref", "agent/tiny/mallory/work"]) == 0
    assert main(["run", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "?]52;c;cm0gLXJmIH4=? done" in out and "\x1b" not in out and "\x07" not in out


def test_two_submits_of_one_arm_sent_at_once_make_one_experiment(make_project):
    """Both passed the name check (submission_source), made outside the transaction that adds the
    experiment, with git work between: two experiments shared one arm, and the referee averaged
    their runs seed by seed. Both submits below are past that check."""
    from org.experiments import submit
    from org.program import Program
    root = make_project(tiny_program(variants=[]))
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03", "--who", "alice"]) == 0
    program = Program.model_validate(tiny_program(variants=[]))
    with ledger_of(root) as ledger, contextlib.closing(Lab.open(root)) as lab:
        with pytest.raises(OrgError, match="arm 'lr' already exists"):
            submit(ledger, lab, program, "lr", {"matrix_lr": 0.01}, who="bob")
        assert [e["who"] for e in ledger.experiments("tiny") if e["arm"] == "lr"] == ["alice"]


# what a run's code writes in its run directory, beside what the trainer writes there
LITTER = """
import os as _os, sys as _sys
if "--out" in _sys.argv:  # (the trainer's run; its model's workers import this too)
    _out = _sys.argv[_sys.argv.index("--out") + 1]
    with open(_os.path.join(_out, "litter.bin"), "wb") as _f:
        _os.posix_fallocate(_f.fileno(), 0, 256 << 20)  # (at once: blocks, no writing)
    _os.makedirs(_os.path.join(_out, "more", "deeper"))
    with open(_os.path.join(_out, "more", "deeper", "litter.bin"), "wb") as _f:
        _os.posix_fallocate(_f.fileno(), 0, 64 << 20)
    print("y" * 3_000_000, flush=True)
"""


def test_what_stays_of_a_run_is_its_record_and_not_what_it_wrote(make_project):
    """The attack: an agent's commit writes what its box allows (16 GB) in its run's directory,
    and fails at once, or trains as usual. Each run cost seconds of budget and left the files
    for good, until the disk was down to the agents' reserve: every CLI's port refused, and every
    run that wrote was killed, the baseline's too. Now a recorded run keeps its result, the
    first of its metrics, the last of its log and (completed) its checkpoint; an attempt set
    aside, its logs."""
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + LITTER)
    agent_commit(root, "trudy", "trainer/train.py", lambda text: text + LITTER + "\n_sys.exit(1)\n")
    for arm, who in (("litters", "mallory"), ("litters-and-fails", "trudy")):
        assert main(["submit", "tiny", "--arm", arm, "--ref", f"agent/tiny/{who}/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        runs = {r["arm"]: r for r in ledger.runs("tiny")}
    assert (runs["litters"]["status"], runs["litters-and-fails"]["status"]) == ("completed", "error")
    left = {arm: sorted(p.name for p in Path(r["run_dir"]).iterdir()) for arm, r in runs.items()}
    harness = [n for n in left["litters"] if n.startswith("measure")]
    assert left["litters"] == sorted(["checkpoint.npz", "config.json", "metrics.jsonl", "result.json", "train.log",
                                      *harness])
    assert left["litters-and-fails"] == ["train.log"]  # (it failed before it wrote a config)
    assert (Path(runs["litters"]["run_dir"]) / "train.log").stat().st_size <= measure.KEPT_LOG_BYTES
    kept = sum(p.stat().st_blocks * 512 for r in runs.values() for p in Path(r["run_dir"]).rglob("*"))
    assert kept < 8 << 20, kept


def test_a_checkpoint_padded_with_bytes_of_the_runs_own_is_not_kept(tmp_path):
    """A completed run keeps its checkpoint (a person resumes or samples from it), but not files
    of the run's own kept inside it: members of other names, past its parameters and an
    optimizer's state for them (the evaluator reads only param/ and meta)."""
    import numpy as np
    tensors = {"param/w": np.ones((256, 256), np.float32), "opt/w.m": np.ones((256, 256), np.float32),
               "meta": np.frombuffer(b'{"step": 3}', np.uint8)}
    np.savez(tmp_path / "honest.npz", **tensors)
    np.savez(tmp_path / "padded.npz", **tensors, litter=np.zeros(8 << 20, np.uint8))
    assert measure.checkpoint_is_its_tensors(tmp_path / "honest.npz")
    assert not measure.checkpoint_is_its_tensors(tmp_path / "padded.npz")


def test_a_program_whose_trainer_predates_snapshots_is_evaluated_by_its_trainer_as_before(make_project):
    # a lab's runs are asked for no evaluation and keep snapshots for the harness's curve
    # (org/slots.py); a base commit's trainer that knows no --snapshot-every refuses --val-tokens 0
    root = make_project(tiny_program(train={"batch_size": 4, "seq_len": 64, "eval_every": 1}))
    cli = root / "trainer" / "cli.py"
    text = re.sub(r'\n    p\.add_argument\("--snapshot-every".*?\)\n', "\n", cli.read_text(), flags=re.S)
    cli.write_text(text.replace("snapshot_every=args.snapshot_every, ", ""))
    train = root / "trainer" / "train.py"
    train.write_text(train.read_text().replace("    if spec.val_tokens and spec.val_tokens < T or", "    if spec.val_tokens < T or"))
    repo = git.Repo(root)
    repo.git.commit("-am", "the trainer before snapshots")
    assert main(["run", "tiny"]) == 0
    from org.report import build
    report = build(root / ".lab" / "tiny" / "ledger.sqlite", "tiny")
    runs = [r for r in report.runs if r["purpose"] == "main"]
    assert runs and all(r["status"] == "completed" for r in runs), [r["reason"] for r in runs]
    assert all(r["result"].val_bpb is not None and r["measurement"].val_curve is None for r in runs)
    assert all(len(report.curves[r["id"]].evals) == 3 for r in runs)  # its own, at steps 1, 2 and 3

