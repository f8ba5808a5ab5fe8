"""Improvement programs (org/improve.py): tries against a frontier that only confirmed gains move.

A real lab (git repo, program branch, ledger); the runs' outcomes are recorded the way the runner
records them (finish, then plan(), in one transaction), with chosen val_bpb, so each decision is
known in advance. The scripted org that runs a real program end to end is at the bottom."""
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from agentlab import BackgroundRunner, lab_dir, make_project, tiny_program, worktree
from org.agents.loop import Agent, Settings
from org.agents.scripted import ScriptedModel
from org.agents.tools import Limits, program_status
from org.experiments import plan, submit
from org.frontier import Lord
import org.improve
from org.improve import frontier, lineage, rule_of, sync_branch
from org.improve_story import section
from org.lab import Lab
from org.ledger import Ledger
from org.mail import Mail
from org.program import Program, ProgramError
from org.report import build, to_json, write
from org.workspace import preflight
from trainer.record import Measurement, Result

SEEDS = [0, 1, 2, 3, 4]
BASE = [2.20, 2.21, 2.19, 2.22, 2.20]   # the baseline's val_bpb per seed
JITTER = [0.001, -0.002, 0.0005, 0.0015, -0.001]


def improve_program(**changes) -> dict:
    spec = tiny_program([{"name": "solo", "role": "researcher"}], corpus="corpus", variants=[],
                        claim={"kind": "improve", "alpha": 0.05, "fresh_seeds": 0})  # (fresh seeds: their own test)
    spec["name"] = "climb"
    spec["budget"]["seeds"] = SEEDS
    spec.update(changes)
    return spec


@pytest.fixture
def lab(tmp_path):
    root, program = make_project(tmp_path, improve_program())
    lab = Lab.open(root)
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        yield lab, program, ledger
    lab.close()


def measured(value: float, seed: int, held_out: float | None = None, steps: int = 3) -> Measurement:
    return Measurement(val_bpb=value, val_loss=value * 0.69, confirm_bpb=value if held_out is None else held_out,
                       steps=steps, tokens=64 * steps, flops=1e9 * steps / 3, flops_per_token=5e6, eval_tokens=512,
                       eval_fingerprint="e", data_fingerprint="d")


def finish(ledger: Ledger, program: Program, arm: str, values, held_out=None, purpose="main", walls=None,
           steps=3):
    """Every queued run of the arm (main, or a rung's), finished with these val_bpb per seed
    (confirm_bpb the same, or held_out) and wall seconds, each in one transaction with plan(), as
    the runner does. Fresh seeds ('replicate') take the values in the order they were drawn."""
    for n, run in enumerate([r for r in ledger.runs(program.name, arm=arm, status="queued") if r["purpose"] == purpose]):
        i = n if purpose == "replicate" else SEEDS.index(run["seed"])
        with ledger.tx():
            ledger.finish(run["id"], "completed", result=Result(status="completed", val_bpb=values[i], seed=run["seed"]),
                          wall_seconds=walls[i] if walls else 1.0,
                          measurement=measured(values[i], run["seed"], held_out and held_out[i], steps))
            plan(ledger, program, ledger.experiment(run["experiment_id"]))


def try_(ledger, lab, program, arm, overrides=None, ref=None):
    submit(ledger, lab, program, "baseline", {}, who="program", hypothesis="the baseline", source="declared")
    return submit(ledger, lab, program, arm, overrides or {}, who="solo", hypothesis=f"{arm} helps", ref=ref)


def decision(ledger, program, arm) -> dict:
    e = next(e for e in ledger.experiments(program.name) if e["arm"] == arm)
    return json.loads(e["decision"]) if e["decision"] else None


# --- the frontier moves only for a confirmed gain ----------------------------------------

def test_a_real_gain_is_kept_becomes_the_frontier_and_moves_the_program_branch(lab):
    lab, program, ledger = lab
    e = try_(ledger, lab, program, "wd-up", {"weight_decay": 0.3})
    assert e["versus"] == "baseline" and json.loads(e["overrides"]) == {"weight_decay": 0.3}
    finish(ledger, program, "baseline", BASE)
    assert decision(ledger, program, "wd-up") is None  # its runs are not finished: nothing decided
    finish(ledger, program, "wd-up", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
    d = decision(ledger, program, "wd-up")
    assert d["outcome"] == "kept" and d["test"] == 1 and d["p"] <= d["level"] == pytest.approx(Lord().level())
    assert d["frontier_after"] == "frontier-1" and d["n"] == 5 and d["delta"] == pytest.approx(-0.03, abs=1e-3)
    front = frontier(ledger.experiments(program.name))
    assert front["arm"] == "frontier-1" and front["source"] == "frontier"
    assert json.loads(front["overrides"]) == {"weight_decay": 0.3}
    # re-measured on every seed: its runs are queued with the try's overrides
    queued = ledger.runs(program.name, arm="frontier-1")
    assert sorted(r["seed"] for r in queued) == SEEDS and all(r["status"] == "queued" for r in queued)
    # the next try builds on the frontier: its overrides on top, measured against frontier-1
    nxt = try_(ledger, lab, program, "lr-up", {"matrix_lr": 0.03})
    assert nxt["versus"] == "frontier-1" and json.loads(nxt["overrides"]) == {"weight_decay": 0.3, "matrix_lr": 0.03}
    # the program branch follows the frontier (here its code is the base's: the branch stays)
    assert sync_branch(lab, ledger, program) is None


def test_noise_a_harmful_change_and_a_gain_inside_the_seed_spread_are_all_discarded(lab):
    lab, program, ledger = lab
    for arm, k in (("neutral", "softcap"), ("worse", "qk_gain"), ("tiny-gain", "rope_base")):
        try_(ledger, lab, program, arm, {k: 10.0})
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, "neutral", [b + j for b, j in zip(BASE, JITTER)])
    finish(ledger, program, "worse", [b + 0.05 for b in BASE])
    # consistently lower on every seed (p tiny), but by less than the baseline's seed-to-seed std
    finish(ledger, program, "tiny-gain", [b - 0.004 + j / 100 for b, j in zip(BASE, JITTER)])
    outcomes = {arm: decision(ledger, program, arm) for arm in ("neutral", "worse", "tiny-gain")}
    assert {a: d["outcome"] for a, d in outcomes.items()} == dict.fromkeys(outcomes, "discarded")
    assert "inside the noise floor" in outcomes["tiny-gain"]["verdict"]
    assert [d["test"] for d in outcomes.values()] == [1, 2, 3]  # each one a test the rule spent on
    assert frontier(ledger.experiments(program.name))["arm"] == "baseline"


def test_a_gain_the_held_out_split_does_not_confirm_is_not_kept(lab):
    lab, program, ledger = lab
    try_(ledger, lab, program, "overfit", {"softcap": 30.0})
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, "overfit", [b - 0.03 + j for b, j in zip(BASE, JITTER)],
           held_out=[b + 0.01 + j for b, j in zip(BASE, JITTER)])
    d = decision(ledger, program, "overfit")
    assert d["outcome"] == "discarded" and "not confirmed on held-out split" in d["verdict"]
    assert d["p_held_out"] > d["level"]


def test_a_gain_on_more_wall_time_per_flop_than_the_frontiers_is_not_kept(lab):
    """The referee calls a variant 30% slower per FLOP by the runner's clock `better` with a
    warning: honest code may be slower, but so is a trainer that trains 1.3x what it is charged
    for. A keep moves the frontier every later try is judged against, and no person reads it."""
    lab, program, ledger = lab
    try_(ledger, lab, program, "slow-gain", {"weight_decay": 0.3})
    finish(ledger, program, "baseline", BASE, walls=[60.0, 60.5, 59.8, 60.2, 60.1])
    finish(ledger, program, "slow-gain", [b - 0.03 + j for b, j in zip(BASE, JITTER)], walls=[78.0, 78.6, 77.7, 78.3, 78.1])
    d = decision(ledger, program, "slow-gain")
    assert d["passed"] and d["outcome"] == "discarded", d
    assert "; not kept: wall time +30% per FLOP by the runner's clock" in d["verdict"]
    assert frontier(ledger.experiments(program.name))["arm"] == "baseline"


def test_an_invalid_trys_figures_are_on_record_for_the_person_and_shown_to_no_agent(lab):
    """As `results` and `verdicts` show no figure of an invalid run or arm, an agent reads no Δ or p
    in the decision of a try the referee found invalid: an org could explore over many invalid
    tries (here one that trained 2 steps past its budget of 3) and submit only what scored best. The
    decision keeps them for the person's report; a valid try's stay for every agent."""
    lab, program, ledger = lab
    try_(ledger, lab, program, "more-steps", {"weight_decay": 0.3})
    try_(ledger, lab, program, "wd-gain", {"weight_decay": 0.2})
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, "more-steps", [b - 0.05 + j for b, j in zip(BASE, JITTER)], steps=5)
    finish(ledger, program, "wd-gain", [b + 0.02 + j for b, j in zip(BASE, JITTER)])
    invalid, valid = decision(ledger, program, "more-steps"), decision(ledger, program, "wd-gain")
    assert invalid["verdict"].startswith("invalid (confounded: steps +66.7% under a steps budget"), invalid
    assert invalid["delta"] == pytest.approx(-0.05, abs=1e-3) and invalid["p"] is not None  # the person's record
    shown = {e["arm"]: e for e in program_status(ledger, program)["experiments"]}
    assert shown["more-steps"]["decision"]["verdict"] == invalid["verdict"]
    assert all(shown["more-steps"]["decision"][k] is None for k in ("delta", "p", "p_held_out")), \
        shown["more-steps"]["decision"]
    assert shown["wd-gain"]["decision"]["delta"] == pytest.approx(0.02, abs=1e-3) == valid["delta"]
    assert shown["wd-gain"]["decision"]["p"] == valid["p"] is not None


def test_later_tries_are_judged_against_the_kept_trys_own_runs_not_its_re_runs(lab):
    """A kept try's code runs again as frontier-1's re-runs, and can tell them apart (its run's
    folder, the time): here it trains worse there. Every later try was paired with those runs,
    so a try that changes nothing that matters (the kept try's own numbers) read `better` and
    was kept. Later tries pair with the kept try's own runs; the re-runs show in the report."""
    lab, program, ledger = lab
    try_(ledger, lab, program, "wd-up", {"weight_decay": 0.3})
    finish(ledger, program, "baseline", BASE)
    kept = [b - 0.03 + j for b, j in zip(BASE, JITTER)]
    finish(ledger, program, "wd-up", kept)
    assert decision(ledger, program, "wd-up")["outcome"] == "kept"
    finish(ledger, program, "frontier-1", [k + 0.05 for k in kept])  # its re-runs, trained worse on purpose
    try_(ledger, lab, program, "nothing-new", {"matrix_lr": 0.0201})
    finish(ledger, program, "nothing-new", [k + j / 3 for k, j in zip(kept, JITTER)])
    d = decision(ledger, program, "nothing-new")
    assert d["outcome"] == "discarded" and abs(d["delta"]) < 0.01, d
    report = build(ledger.path, "climb")
    story = section(report.spec, report.experiments, report.runs, report.llm)
    assert "frontier-1 re-measured on 5 seeds: differs from wd-up's runs by up to 0.05" in story


def test_a_try_measured_against_a_frontier_that_moved_is_stale_and_spends_nothing(lab):
    lab, program, ledger = lab
    try_(ledger, lab, program, "first", {"weight_decay": 0.3})
    try_(ledger, lab, program, "second", {"matrix_lr": 0.03})
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, "first", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
    finish(ledger, program, "second", [b - 0.05 + j for b, j in zip(BASE, JITTER)])
    d = decision(ledger, program, "second")
    assert d["outcome"] == "stale" and d["test"] is None and "frontier-1 is the frontier now" in d["verdict"]
    assert rule_of(program, ledger.experiments(program.name)) == Lord.rebuild([True], alpha=0.05)
    # no test, so no copy: made again against the baseline (once frontier-1 is withdrawn), it is one
    from org.experiments import same_change
    second = next(e for e in ledger.experiments(program.name) if e["arm"] == "second")
    assert same_change(ledger, lab, program, second["code_commit"], {"matrix_lr": 0.03}, "baseline") is None
    first = next(e for e in ledger.experiments(program.name) if e["arm"] == "first")
    assert same_change(ledger, lab, program, first["code_commit"], {"weight_decay": 0.3}, "baseline")["arm"] == "first"


def test_the_rule_spends_its_wealth_over_the_sequence_and_is_rebuilt_from_the_ledger(lab):
    lab, program, ledger = lab
    finish_plan = []
    for i in range(6):  # six null tries: each is tested at a smaller level than the one before
        try_(ledger, lab, program, f"null-{i}", {"qk_gain": 1.0 + i / 10})
        finish_plan.append(f"null-{i}")
    finish(ledger, program, "baseline", BASE)
    for i, arm in enumerate(finish_plan):
        finish(ledger, program, arm, [b + JITTER[(s + i) % 5] for s, b in enumerate(BASE)])
    levels = [decision(ledger, program, a)["level"] for a in finish_plan]
    assert levels == sorted(levels, reverse=True) and levels[0] < 0.05 / 2
    assert [e["arm"] for e in lineage(ledger.experiments(program.name))] == finish_plan
    assert rule_of(program, ledger.experiments(program.name)) == Lord.rebuild([False] * 6, alpha=0.05)


# --- code tries: merged onto the frontier by the harness ---------------------------------

def commit_change(root, program, agent, path, old, new, message) -> str:
    tree = Lab.open(root).worktree_path(program.name, agent)
    target = tree / path
    target.write_text(target.read_text().replace(old, new, 1))
    subprocess.run(["git", "-c", "user.name=T", "-c", "user.email=t@t", "commit", "-qam", message], cwd=tree, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()


def test_a_kept_code_try_is_merged_onto_the_program_branch_and_a_conflicting_one_is_refused(lab):
    lab, program, ledger = lab
    root = lab.root
    for agent in ("alice", "bob", "carol"):  # each works from the base commit
        worktree(root, program, agent)
    # (code, not comments: a change of comments only is the code it changes, commit_checks.same_code)
    mine = commit_change(root, program, "alice", "trainer/model.py", "import numpy as np",
                         "import numpy as np\nALICES_IDEA = 1", "alice: an idea")
    e = try_(ledger, lab, program, "alice-idea", ref=mine)
    assert e["code_commit"] == mine and "trainer/model.py" in e["diff"]  # built on the frontier: its own
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, "alice-idea", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
    assert decision(ledger, program, "alice-idea")["outcome"] == "kept"
    assert sync_branch(lab, ledger, program) == mine and lab.resolve("program/climb") == mine
    # bob worked from the base commit on another file: merged onto the frontier by the harness
    theirs = commit_change(root, program, "bob", "trainer/optim.py", "import math",
                           "import math\nBOBS_IDEA = 1", "bob: another idea")
    e = try_(ledger, lab, program, "bob-idea", ref=theirs)
    merged = lab.repo.commit(e["code_commit"])
    assert e["versus"] == "frontier-1" and e["stage"] == "measuring"
    assert {p.hexsha for p in merged.parents} == {mine, theirs} and "BOBS_IDEA" in e["diff"] and "ALICE" not in e["diff"]
    assert lab.resolve("refs/nanolab/climb/tries/bob-idea") == merged.hexsha  # the ledger names it: kept
    # carol changed alice's line another way: it does not merge, and says so; nothing moves
    clash = commit_change(root, program, "carol", "trainer/model.py", "import numpy as np",
                          "import numpy as np\nCAROLS_IDEA = 1", "carol: a clash")
    e = try_(ledger, lab, program, "carol-idea", ref=clash)
    assert e["stage"] == "refused" and "does not merge onto the frontier" in e["reason"]
    assert "conflict in trainer/model.py" in e["reason"]
    assert decision(ledger, program, "carol-idea")["outcome"] == "untested"
    assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1" and lab.resolve("program/climb") == mine


def test_a_try_that_changes_nothing_or_takes_a_frontier_name_is_refused(lab):
    from org.experiments import check_arm_name
    from org import OrgError
    lab, program, ledger = lab
    e = try_(ledger, lab, program, "same", {})
    assert e["stage"] == "refused" and "changes nothing against the frontier (baseline)" in e["reason"]
    with pytest.raises(OrgError, match="'frontier-N' are the program's"):
        check_arm_name("frontier-1")


# --- the program file ---------------------------------------------------------------------

def diff_of(root, path, old, new) -> str:
    """The patch that would change old to new in path (the file is left as it was)."""
    target = root / path
    text = target.read_text()
    target.write_text(text.replace(old, new, 1))
    out = subprocess.run(["git", "diff"], cwd=root, capture_output=True, text=True).stdout
    target.write_text(text)
    return out


@pytest.mark.parametrize("case, expected", [
    ("protected", "candidates[0].patch (idea): changes what no experiment may: protected paths differ"),
    ("stale", "candidates[0].patch (idea): does not apply to the base commit"),
    ("uncommitted", "candidates[0].patch (idea): 'programs/idea.patch' is not committed"),
])
def test_a_bad_candidate_patch_is_one_line_naming_the_program_and_the_candidate(tmp_path, monkeypatch, case, expected):
    root, _ = make_project(tmp_path, tiny_program([{"name": "solo"}], corpus="corpus"))
    patch = {"protected": diff_of(root, "trainer/eval.py", "import", "import os  # mine\nimport"),
             "stale": diff_of(root, "trainer/model.py", "import numpy as np", "import numpy as np  # x")
             .replace("-import numpy as np\n", "-import numpy as nope\n"),
             "uncommitted": diff_of(root, "trainer/model.py", "import numpy as np", "import numpy as np  # x")}[case]
    spec = improve_program(candidates=[{"name": "idea", "patch": "programs/idea.patch"}])
    spec["data"]["source"] = "pystdlib"
    (root / "programs" / "climb.yaml").write_text(yaml.safe_dump(spec))
    (root / "programs" / "idea.patch").write_text(patch)
    subprocess.run(["git", "add", "programs/climb.yaml"] + (["programs/idea.patch"] if case != "uncommitted" else []),
                   cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "the program"], cwd=root, check=True)
    monkeypatch.chdir(root)
    with pytest.raises(ProgramError) as e:
        preflight("climb")
    assert "programs/climb.yaml: candidates[0]" in str(e.value) and expected in str(e.value) and "\n" not in str(e.value)
    assert "stderr" not in str(e.value) and not str(e.value).endswith("'")  # (git's words, not GitPython's wrapping)


def test_an_improve_claim_takes_candidates_not_variants():
    with pytest.raises(ValueError, match="takes candidates, not variants"):
        Program.model_validate(improve_program(variants=[{"name": "x", "overrides": {"softcap": 0}}]))
    with pytest.raises(ValueError, match="set claim.kind to improve"):
        Program.model_validate(tiny_program([], candidates=[{"name": "x", "overrides": {"softcap": 0}}]))


# --- a scripted org runs a real improvement program ----------------------------------------

def test_a_scripted_researcher_keeps_a_real_gain_and_discards_a_reseed_and_a_harmful_change(tmp_path, monkeypatch):
    """Real runs of a 1-layer model: a learning rate 10x too small is the baseline, so raising it is a
    real gain; a patch that only redraws the init is a seed change; a learning rate that small
    again is harmful. The scripted researcher applies the patch in its worktree and commits it.
    The gain must also hold at 2 layers (the ladder), and the baseline runs at half and twice the
    budget for its compute multiplier: real runs at budgets of their own, which the runner
    commands and checks, and the harness measures, at that budget."""
    candidates = [{"name": "reseed", "patch": "programs/reseed.patch"},
                  {"name": "lr-up", "overrides": {"matrix_lr": 0.02, "embedding_lr": 0.3, "unembedding_lr": 0.008}},
                  {"name": "lr-down", "overrides": {"matrix_lr": 0.0002}}]
    spec = improve_program(candidates=candidates, baseline={"preset": "nanochat", "overrides": {
        "n_layer": 1, "n_embd": 32, "n_head": 1, "matrix_lr": 0.002, "embedding_lr": 0.03, "unembedding_lr": 0.0008}})
    spec["budget"]["per_run"] = {"steps": 60}  # (at 30, lr-up's seeds split between 3.3 and 7.2 bpb on this machine's floats)
    spec.update(ladder=[{"n_layer": 2}], compute_multiplier={"budgets": [0.5, 2], "seeds": 2})
    root, _ = make_project(tmp_path, improve_program(), trainer=True)
    spec["data"]["source"] = str(tmp_path / "corpus.txt")  # make_project wrote it
    model_py = (root / "trainer" / "model.py").read_text()
    (root / "trainer" / "model.py").write_text(model_py.replace("np.random.default_rng(seed)", "np.random.default_rng(seed + 1000)", 1))
    reseed = subprocess.run(["git", "diff"], cwd=root, capture_output=True, text=True).stdout
    (root / "trainer" / "model.py").write_text(model_py)
    assert "seed + 1000" in reseed
    (root / "programs" / "reseed.patch").write_text(reseed)
    (root / "programs" / "climb2.yaml").write_text(yaml.safe_dump({**spec, "name": "climb2"}, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "the program"], cwd=root, check=True)
    from org.workspace import open_program
    prog, lab = open_program("climb2", root)
    lab.close()
    # the same training windows on every run of this test (a lab draws its own key: lr-up's p at
    # 5 seeds and 30 steps moved about its level, 0.00056, from one lab's windows to another's)
    (lab_dir(root, prog).parent / "harness-cache").mkdir(parents=True, exist_ok=True)
    (lab_dir(root, prog).parent / "harness-cache" / "stream-key").write_bytes(b"the windows of this test, always")
    # lr-up's runs come after the baseline's, and runs of 30 steps are mostly start-up: a CI machine
    # busier in between read them slower per FLOP, and the keep waited for the clock to agree (that
    # rule has its own test: test_a_gain_on_more_wall_time_per_flop_than_the_frontiers_is_not_kept)
    monkeypatch.setattr(org.improve, "unseen_work", lambda program, c: None)
    tree = worktree(root, prog, "solo")
    settings = Settings(retry_base_seconds=0.01, limits=Limits(poll_seconds=0.05))
    ended = {}
    with BackgroundRunner(root, prog):
        agent = Agent("solo", prog, root, tree, ScriptedModel(prog, "solo", wait_seconds=1),
                      console=Console(quiet=True), settings=settings)
        thread = threading.Thread(target=lambda: ended.setdefault("solo", agent.run()))
        thread.start()
        thread.join(600)
    assert ended.get("solo", "").startswith("finished: "), ended
    with Ledger(lab_dir(root, prog) / "ledger.sqlite") as ledger:
        steps = {e["arm"]: e["decision"] for e in lineage(ledger.experiments("climb2"))}
        assert {a: d["outcome"] for a, d in steps.items()} == {"reseed": "discarded", "lr-up": "kept",
                                                                "lr-down": "discarded"}, steps
        assert steps["reseed"]["verdict"].startswith("no change") and steps["lr-up"]["delta"] < 0
        assert "held at rung 1 (n_layer=2)" in steps["lr-up"]["verdict"] and steps["lr-up"]["rungs"][0]["n"] == 5
        extra = [r for r in ledger.runs("climb2", arm="baseline") if r["purpose"] in ("x0.5", "x2")]
        assert sorted((r["purpose"], r["seed"], r["status"], r["steps"]) for r in extra) == [
            ("x0.5", 0, "completed", 30), ("x0.5", 1, "completed", 30), ("x2", 0, "completed", 120),
            ("x2", 1, "completed", 120)]  # measured by the harness at their own budgets
        assert steps["lr-down"]["frontier"] == "frontier-1"
        from org.improve_story import frontier_line  # what org status and org report print
        assert frontier_line(ledger.experiments("climb2")) == \
            "frontier: frontier-1 (kept: lr-up) · 3 tries decided: 1 kept, 2 discarded"
    board = Mail(lab_dir(root, prog)).board()
    assert "The frontier is frontier-1 (kept: lr-up)" in board
    report = build(lab_dir(root, prog) / "ledger.sqlite", "climb2")
    readme = write(report, tmp_path / "report")
    text = readme.read_text()
    assert "## The frontier" in text and "3 tries decided: 1 kept, 2 discarded" in text and "progress.png" in report.plots
    assert re.search(r"\| lr-up \|.*\| ×\d+\.\d\d( \(extrapolated\))? \|", text)  # its compute multiplier
    points = to_json(report)["frontier"]
    assert [p["outcome"] for p in points] == ["baseline", "discarded", "kept", "discarded"]
    assert points[-1]["frontier_bpb"] < points[0]["frontier_bpb"]


# --- org against org on one question --------------------------------------------------------

def test_org_compare_puts_two_orgs_progress_on_one_question_in_one_table(tmp_path):
    root, climb = make_project(tmp_path, improve_program())
    other = improve_program(org={"topology": "chief", "agents": [{"name": "boss", "role": "chief"},
                                                                  {"name": "junior", "role": "junior"}]})
    other["data"]["source"] = climb.data.source
    bad = dict(other, budget={**other["budget"], "seeds": [0, 1, 2]})
    for name, spec in (("climb-chief", other), ("climb-3", bad)):
        (root / "programs" / f"{name}.yaml").write_text(yaml.safe_dump({**spec, "name": name}))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "two more orgs"], cwd=root, check=True)
    from org.workspace import open_program
    lab = Lab.open(root)
    for name, gain in (("climb", 0.03), ("climb-chief", 0.0)):
        program, _ = open_program(name, root)
        with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
            try_(ledger, lab, program, "wd-up", {"weight_decay": 0.3})
            finish(ledger, program, "baseline", BASE)
            finish(ledger, program, "wd-up", [b - gain + j for b, j in zip(BASE, JITTER)])
            finish(ledger, program, "frontier-1", [b - gain + j for b, j in zip(BASE, JITTER)])
    open_program("climb-3", root)
    lab.close()
    org = [sys.executable, "-m", "org.cli"]
    done = subprocess.run(org + ["compare", "climb", "climb-chief", "--json"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {r["program"]: r for r in json.loads(done.stdout)}
    assert rows["climb"]["kept"] == 1 and rows["climb"]["kept_tries"] == ["wd-up"]
    assert rows["climb"]["gain"] == pytest.approx(-0.03, abs=1e-3) and rows["climb"]["gain_per_runner_hour"] < 0
    assert rows["climb-chief"]["kept"] == 0 and rows["climb-chief"]["discarded"] == 1 and rows["climb-chief"]["gain"] == 0
    assert rows["climb-chief"]["org"] == "chief: boss (scripted), junior (scripted)"
    table = subprocess.run(org + ["compare", "climb", "climb-chief"], cwd=root, capture_output=True, text=True)
    assert table.returncode == 0 and "climb-chief" in table.stdout and "-0.0300" in table.stdout
    twice = subprocess.run(org + ["compare", "climb", "programs/climb.yaml"], cwd=root, capture_output=True, text=True)
    assert twice.stderr.strip().splitlines() == ["org: compare: climb is named twice; name each program once"]
    refused = subprocess.run(org + ["compare", "climb", "climb-3"], cwd=root, capture_output=True, text=True)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == ["org: compare: climb-3's budget.seeds differs from climb's: "
                                                   "their gains are not measured the same way (only the org may differ)"]


# --- does each kept change still help in the stack? ------------------------------------------

def test_org_ablate_takes_each_kept_change_out_of_the_frontier_and_says_which_still_help(lab):
    lab, program, ledger = lab
    try_(ledger, lab, program, "wd-up", {"weight_decay": 0.3})
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, "wd-up", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
    finish(ledger, program, "frontier-1", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
    try_(ledger, lab, program, "lr-up", {"matrix_lr": 0.03})
    finish(ledger, program, "lr-up", [b - 0.06 - j for b, j in zip(BASE, JITTER)])
    assert frontier(ledger.experiments(program.name))["arm"] == "frontier-2"
    org = [sys.executable, "-m", "org.cli", "ablate", "climb", "--who", "alice"]
    done = subprocess.run(org, cwd=lab.root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "(frontier-2-without-wd-up): 5 runs queued" in done.stdout and "frontier-2-without-lr-up" in done.stdout
    again = subprocess.run(org, cwd=lab.root, capture_output=True, text=True)
    assert "nothing to ablate" in again.stdout  # once per frontier
    made = {e["arm"]: e for e in ledger.experiments(program.name) if e["source"] == "ablation"}
    assert json.loads(made["frontier-2-without-wd-up"]["overrides"]) == {"matrix_lr": 0.03}
    assert json.loads(made["frontier-2-without-lr-up"]["overrides"]) == {"weight_decay": 0.3}
    assert all(e["versus"] == "frontier-2" and e["who"] == "alice" for e in made.values())
    finish(ledger, program, "frontier-2", [b - 0.06 - j for b, j in zip(BASE, JITTER)])
    finish(ledger, program, "frontier-2-without-wd-up", [b - 0.03 - j for b, j in zip(BASE, JITTER)])
    finish(ledger, program, "frontier-2-without-lr-up", [b - 0.06 + j / 2 for b, j in zip(BASE, JITTER)])
    assert len(lineage(ledger.experiments(program.name))) == 2  # ablations are no tries: nothing decided
    text = build(ledger.path, "climb")
    story = section(text.spec, text.experiments, text.runs, text.llm)
    assert "- frontier-2-without-wd-up: Δ -0.0300 (n=5): still helps (better)" in story
    assert "- frontier-2-without-lr-up: Δ -0.0000 (n=5): not shown to still help (inconclusive (inside the noise" in story


def test_a_kept_code_change_is_taken_out_by_reversing_its_diff(lab):
    lab, program, ledger = lab
    worktree(lab.root, program, "alice")
    mine = commit_change(lab.root, program, "alice", "trainer/model.py", "import numpy as np",
                         "import numpy as np  # alice's idea", "alice: an idea")
    try_(ledger, lab, program, "alice-idea", {"softcap": 20.0}, ref=mine)
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, "alice-idea", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
    from org.ablate import leave_one_out
    without, = leave_one_out(ledger, lab, program, who="bob")
    assert without["stage"] == "measuring" and json.loads(without["overrides"]) == {}
    code = lab.repo.commit(without["code_commit"])
    assert code.parents[0].hexsha == mine and "alice's idea" not in (code.tree / "trainer/model.py").data_stream.read().decode()
    assert code.tree == lab.repo.commit(lab.resolve("main")).tree  # the frontier without it: the base's code


def test_wall_time_a_chain_of_keeps_adds_up_is_held_to_the_baseline_too(lab):
    """The attack: a kept try pads its runs with sleeps, +13% of wall time per FLOP, under the
    runner's warning (+16% and the machine's noise); the next try drops them and trains 1.13x
    what it is charged for, as slow as its frontier. Each keep was judged against the one
    before, so the hidden training added up, keep after keep (1.13^k), and no clock objected.
    A keep is now held to the program's baseline's wall time per FLOP as well."""
    lab, program, ledger = lab
    walls = lambda scale: [w * scale for w in (60.0, 60.5, 59.8, 60.2, 60.1)]
    try_(ledger, lab, program, "padded", {"weight_decay": 0.3})
    finish(ledger, program, "baseline", BASE, walls=walls(1.0))
    finish(ledger, program, "padded", [b - 0.03 + j for b, j in zip(BASE, JITTER)], walls=walls(1.13))
    assert decision(ledger, program, "padded")["outcome"] == "kept"
    finish(ledger, program, "frontier-1", [b - 0.03 + j for b, j in zip(BASE, JITTER)], walls=walls(1.13))
    try_(ledger, lab, program, "trains-more", {"matrix_lr": 0.03})
    finish(ledger, program, "trains-more", [b - 0.06 - j for b, j in zip(BASE, JITTER)], walls=walls(1.13 * 1.13))
    d = decision(ledger, program, "trains-more")
    assert d["passed"] and d["outcome"] == "discarded", d
    assert "not kept: against the program's baseline, wall time +28% per FLOP by the runner's clock" in d["verdict"]
    assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"


# --- a ladder: a keep must also hold at the next scale ----------------------------------------

def passes(ledger, lab, program, arm, ref=None):
    """A try 0.03 better than the baseline on the program's seeds: it passes, and climbs."""
    try_(ledger, lab, program, arm, {"weight_decay": 0.3}, ref=ref)
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, arm, [b - 0.03 + j for b, j in zip(BASE, JITTER)])
    d = decision(ledger, program, arm)
    assert d["outcome"] == "climbing" and d["passed"] and d["rung"] == 1


def test_a_try_is_kept_only_once_it_also_holds_at_the_next_rung_of_the_ladder(tmp_path):
    root, program = make_project(tmp_path, improve_program(ladder=[{"n_layer": 2}]))
    lab = Lab.open(root)
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        passes(ledger, lab, program, "wd-up")  # here; now the rung
        rung = {arm: ledger.runs(program.name, arm=arm, purpose="rung1") for arm in ("baseline", "wd-up")}
        assert all(sorted(r["seed"] for r in runs) == SEEDS for runs in rung.values())
        assert all(json.loads(r["overrides"])["n_layer"] == 2 for runs in rung.values() for r in runs)
        finish(ledger, program, "baseline", [b + 0.1 for b in BASE], purpose="rung1")
        assert decision(ledger, program, "wd-up")["outcome"] == "climbing"  # its own rung runs still queued
        finish(ledger, program, "wd-up", [b + 0.08 + j for b, j in zip(BASE, JITTER)], purpose="rung1")
        d = decision(ledger, program, "wd-up")
        assert d["outcome"] == "kept" and "held at rung 1 (n_layer=2)" in d["verdict"] and d["rungs"][0]["n"] == 5
        assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"
        # the next passes at the program's scale, but its gain is gone at the rung: discarded. The
        # frontier is wd-up's code, which may train worse when run again at the rung (here: 0.05
        # worse, had it run), and every later try read `better` there: wd-up's own runs stand for it
        finish(ledger, program, "frontier-1", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
        try_(ledger, lab, program, "lr-up", {"matrix_lr": 0.03})
        finish(ledger, program, "lr-up", [b - 0.06 - j for b, j in zip(BASE, JITTER)])
        finish(ledger, program, "frontier-1", [b + 0.08 + j + 0.05 for b, j in zip(BASE, JITTER)], purpose="rung1")
        assert not ledger.runs(program.name, arm="frontier-1", purpose="rung1")  # it is never run again there
        finish(ledger, program, "lr-up", [b + 0.08 + j for b, j in zip(BASE, JITTER)], purpose="rung1")
        d = decision(ledger, program, "lr-up")
        assert d["outcome"] == "discarded" and "but not at rung 1 (n_layer=2)" in d["verdict"], d["verdict"]
        assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"
        # both passed at the program's scale; only the kept one paid the rule's wealth back (a pass on
        # the program's seeds can be made to order: each one paid it back, and the levels never fell)
        assert rule_of(program, ledger.experiments(program.name)) == Lord.rebuild([True, False], alpha=0.05)
        # the ladder's runs are no re-runs: the baseline's noise floor has no drift from them
        from org.referee import noise_floor
        assert noise_floor(ledger.runs(program.name, arm="baseline")).drift is None
        # a third passes here and trains past its budget at the rung: invalid there. Agents read
        # its figures at the program's scale and none at the rung (as `results` shows none)
        try_(ledger, lab, program, "steps-up", {"matrix_lr": 0.02})
        finish(ledger, program, "steps-up", [b - 0.06 - j for b, j in zip(BASE, JITTER)])
        finish(ledger, program, "steps-up", [b + 0.02 + j for b, j in zip(BASE, JITTER)], purpose="rung1", steps=5)
        d = decision(ledger, program, "steps-up")
        assert d["outcome"] == "discarded" and d["rungs"][0]["verdict"].startswith("invalid (confounded: steps +66.7%")
        shown, = [e["decision"] for e in program_status(ledger, program)["experiments"] if e["arm"] == "steps-up"]
        assert d["rungs"][0]["delta"] is not None and (shown["rungs"][0]["delta"], shown["rungs"][0]["p"]) == (None, None)
        assert shown["delta"] == d["delta"] is not None and shown["p"] == d["p"] is not None
    lab.close()


def test_a_try_is_kept_only_once_its_gain_holds_on_fresh_seeds_too(tmp_path):
    """A try's code may know the program's seeds (a table of the best data order for each, from
    exploratory tries): before a keep, it and its frontier run on seeds drawn then."""
    root, program = make_project(tmp_path, improve_program(claim={"kind": "improve", "alpha": 0.05, "fresh_seeds": 3}))
    lab = Lab.open(root)
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        passes(ledger, lab, program, "seed-keyed")  # on the program's seeds; now the fresh ones
        fresh = {arm: ledger.runs(program.name, arm=arm, purpose="replicate") for arm in ("baseline", "seed-keyed")}
        seeds = [r["seed"] for r in fresh["baseline"]]
        assert len(set(seeds)) == 3 and not set(seeds) & set(SEEDS) and [r["seed"] for r in fresh["seed-keyed"]] == seeds
        finish(ledger, program, "baseline", BASE[:3], purpose="replicate")
        finish(ledger, program, "seed-keyed", [b + j for b, j in zip(BASE[:3], JITTER)], purpose="replicate")
        assert decision(ledger, program, "seed-keyed")["outcome"] == "climbing"  # its canary is not done yet
        finish_canaries(ledger, program, "seed-keyed")
        d = decision(ledger, program, "seed-keyed")
        assert d["outcome"] == "discarded" and "but not at 3 fresh seeds: " in d["verdict"], d["verdict"]
        assert frontier(ledger.experiments(program.name))["arm"] == "baseline"  # the frontier did not move

        try_(ledger, lab, program, "wd-up", {"weight_decay": 0.2})  # a real gain holds on any seed
        finish(ledger, program, "wd-up", [b - 0.06 + j for b, j in zip(BASE, JITTER)])
        finish(ledger, program, "baseline", [2.21, 2.18, 2.23], purpose="replicate")
        finish(ledger, program, "wd-up", [b - 0.06 + j for b, j in zip([2.21, 2.18, 2.23], JITTER)], purpose="replicate")
        finish_canaries(ledger, program, "wd-up")
        d = decision(ledger, program, "wd-up")
        assert d["outcome"] == "kept" and d["verdict"].endswith("held at 3 fresh seeds (Δ -0.0602)"), d["verdict"]
        assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"
    lab.close()


def test_on_fresh_seeds_a_try_must_beat_its_own_level_and_not_plain_alpha(tmp_path):
    """A pass on the program's seeds can be made to order (a table of each seed's best data order),
    so the fresh seeds' test is the one LORD++'s guarantee rests on: at plain 5% a try that changes
    nothing would be kept once in twenty, try after try, whatever the levels say."""
    root, program = make_project(tmp_path, improve_program(claim={"kind": "improve", "alpha": 0.05, "fresh_seeds": 3}))
    lab = Lab.open(root)
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        passes(ledger, lab, program, "seed-keyed")
        level = decision(ledger, program, "seed-keyed")["level"]
        fresh = [2.21, 2.18, 2.23]  # a lucky draw of the fresh seeds: p = 0.023, under 5% but over its level
        finish(ledger, program, "baseline", fresh, purpose="replicate")
        finish(ledger, program, "seed-keyed", [f - 0.03 + j for f, j in zip(fresh, [0.01, -0.012, 0.004])],
               purpose="replicate")
        finish_canaries(ledger, program, "seed-keyed")
        d = decision(ledger, program, "seed-keyed")
        assert level < 0.023 < 0.05 and abs(d["rungs"][-1]["p"] - 0.0233) < 1e-3, (level, d["rungs"])
        assert d["outcome"] == "discarded" and "but not at 3 fresh seeds: " in d["verdict"], d["verdict"]
        assert frontier(ledger.experiments(program.name))["arm"] == "baseline"
    lab.close()


def finish_canaries(ledger, program, arm, shift: float = 0.0, status: str = "completed"):
    """The arm's queued canaries, finished where the run each repeats landed (the arm's own run of
    its seed; for a frontier, its kept try's), moved by shift; or killed."""
    for canary in ledger.runs(program.name, arm=arm, purpose="canary", status="queued"):
        same = [r for r in ledger.runs(program.name, purpose="replicate", status="completed") if r["seed"] == canary["seed"]]
        first = next((r for r in same if r["arm"] == arm), None) or next(r for r in same if r["arm"] != "baseline")
        value = first["val_bpb"] + shift
        with ledger.tx():
            if status == "completed":
                ledger.finish(canary["id"], status, result=Result(status=status, val_bpb=value, seed=canary["seed"]),
                              wall_seconds=1.0, measurement=measured(value, canary["seed"]))
            else:
                ledger.finish(canary["id"], status, "wall time over run_timeout_seconds, killed by the runner")
            plan(ledger, program, ledger.experiment(canary["experiment_id"]))


def kept_on_fresh_seeds(tmp_path, **changes):
    """A program with 3 fresh seeds, whose frontier-1 is wd-up (a code change of its author's, and
    an override), kept after its fresh rung."""
    root, program = make_project(tmp_path, improve_program(claim={"kind": "improve", "alpha": 0.05, "fresh_seeds": 3},
                                                           **changes))
    lab = Lab.open(root)
    ledger = Ledger(lab_dir(root, program) / "ledger.sqlite")
    worktree(root, program, "solo")
    mine = commit_change(root, program, "solo", "trainer/model.py", "import numpy as np",
                         "import numpy as np  # wd-up's code", "wd-up")
    passes(ledger, lab, program, "wd-up", ref=mine)
    fresh = [2.21, 2.18, 2.23]
    finish(ledger, program, "baseline", fresh, purpose="replicate")
    finish(ledger, program, "wd-up", [f - 0.03 + j for f, j in zip(fresh, JITTER)], purpose="replicate")
    finish_canaries(ledger, program, "wd-up")  # it reproduces itself
    assert decision(ledger, program, "wd-up")["outcome"] == "kept"
    finish(ledger, program, "frontier-1", [b - 0.03 + j for b, j in zip(BASE, JITTER)])  # re-measured: the same bits
    return lab, program, ledger


def rerun_baseline(ledger, program, seed: int, value: float):
    """One of the runner's re-runs of a baseline seed (a `repeat`), landing at value."""
    baseline = next(e for e in ledger.experiments(program.name) if e["arm"] == "baseline")
    ledger.add_run(baseline, "repeat", seed, 1, json.loads(baseline["overrides"]),
                   (program.budget.per_run.kind, program.budget.per_run.value))
    finish(ledger, program, "baseline", [value] * len(SEEDS), purpose="repeat")


@pytest.mark.parametrize("shift", [0.05, -0.05, 0.0])
def test_a_frontier_whose_code_trains_otherwise_when_run_again_is_caught_by_its_canaries(tmp_path, shift):
    """The frontier is a kept try's code, and on fresh seeds it has to run again (no run of it
    knows them). Code that trained worse once it was the frontier (the time tells it) made every
    later try `better` there: here a try that gains only on the program's seeds (a table); code
    that trained better then (it held back before its keep) had every later try discarded. With
    those runs go canaries, the frontier on fresh seeds its kept try ran, which it must reproduce:
    a miss leaves the try untested. Once a re-run of the baseline since has landed where its first
    run did (the machine still gives the bits it gave), the keep is withdrawn: the frontier
    before it stands again (the program branch too), the tries against it are stale, and one
    built on its code is refused. (Before, it stood: every later try was untested, for good.)"""
    lab, program, ledger = kept_on_fresh_seeds(tmp_path)
    kept = [b - 0.03 + j for b, j in zip(BASE, JITTER)]
    wd_up = frontier(ledger.experiments(program.name))["code_commit"]
    assert sync_branch(lab, ledger, program) == wd_up  # the program branch at the frontier's commit
    try_(ledger, lab, program, "seed-table", {"matrix_lr": 0.0201})  # better on the program's seeds only
    finish(ledger, program, "seed-table", [k - 0.03 - j for k, j in zip(kept, JITTER)])
    assert decision(ledger, program, "seed-table")["outcome"] == "climbing"
    assert len(ledger.runs(program.name, arm="frontier-1", purpose="canary")) == 2
    on_fresh = [2.20, 2.22, 2.19]  # the frontier's val_bpb on this try's fresh seeds, trained honestly
    finish(ledger, program, "frontier-1", [f + shift for f in on_fresh], purpose="replicate")
    finish(ledger, program, "seed-table", [f + j for f, j in zip(on_fresh, JITTER)], purpose="replicate")
    finish_canaries(ledger, program, "seed-table")
    assert decision(ledger, program, "seed-table")["outcome"] == "climbing"  # the frontier's canaries are not done
    finish_canaries(ledger, program, "frontier-1", shift)
    d = decision(ledger, program, "seed-table")
    if not shift:
        assert d["outcome"] == "discarded" and "but not at 3 fresh seeds" in d["verdict"], d["verdict"]
        assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"
        ledger.close()
        lab.close()
        return
    assert d["outcome"] == "untested", d
    assert "frontier-1 did not reproduce a run of wd-up, its kept try (val_bpb " in d["verdict"], d["verdict"]
    assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"  # no baseline re-run since: it stands
    # no agent is told a canary's seed: each is a fresh one; and every agent is told why no try is kept against it
    from org.agents.tools import program_status
    status = program_status(ledger, program)
    shown = json.dumps(status)
    assert '"purpose": "canary"' in shown and all(str(r["seed"]) not in shown for r in ledger.runs(
        program.name, purpose="replicate"))
    assert "no_yardstick" in status["frontier"], status["frontier"]
    shown_decision = next(x["decision"] for x in status["experiments"] if x["arm"] == "seed-table")
    assert "canaries" not in shown_decision and decision(ledger, program, "seed-table")["canaries"]  # (their run ids)
    nxt = try_(ledger, lab, program, "next", {"matrix_lr": 0.0202})  # measured against frontier-1, queued
    if shift < 0:  # the baseline's re-run lands elsewhere too: the machine moved (a library upgraded), not the code
        rerun_baseline(ledger, program, 0, BASE[0] + 0.01)
        assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"
        assert decision(ledger, program, "wd-up")["outcome"] == "kept"
        ledger.close()
        lab.close()
        return
    rerun_baseline(ledger, program, 0, BASE[0])  # the baseline reproduces: the miss is the code's
    experiments = ledger.experiments(program.name)
    withdrawn = decision(ledger, program, "wd-up")
    assert withdrawn["outcome"] == "withdrawn" and "; withdrawn: frontier-1 did not reproduce" in withdrawn["verdict"]
    assert frontier(experiments)["arm"] == "baseline"
    assert not ledger.runs(program.name, arm="frontier-1", status="queued")  # its re-runs: refused
    assert rule_of(program, experiments) == Lord.rebuild([False, False], alpha=0.05)  # no discovery: levels fall
    later = decision(ledger, program, "next")  # stale at once, its runs refused
    assert later["outcome"] == "stale" and "withdrawn since: frontier-1 did not reproduce" in later["verdict"], later
    assert {r["status"] for r in ledger.runs(program.name, experiment_id=nxt["id"])} == {"refused"}
    base = ledger.program(program.name)["base_commit"]
    assert sync_branch(lab, ledger, program) == base and lab.resolve("program/climb") == base  # back
    # another's try from the withdrawn frontier's commit would bring its code back: refused, saying so
    carol = worktree(lab.root, program, "carol")
    subprocess.run(["git", "reset", "-q", "--hard", wd_up], cwd=carol, check=True)
    on_it = commit_change(lab.root, program, "carol", "trainer/optim.py", "import math", "import math  # more",
                          "built on wd-up")
    e = submit(ledger, lab, program, "on-wd-up", {"matrix_lr": 0.0202}, who="carol", hypothesis="h", ref=on_it)
    assert e["stage"] == "refused" and "its code holds wd-up's change (" in e["reason"], e["reason"]
    worktree(lab.root, program, "copycat")  # the same change, committed again on the base commit: refused too
    copy = commit_change(lab.root, program, "copycat", "trainer/model.py", "import numpy as np",
                         "import numpy as np  # wd-up's code", "wd-up, again")
    e = submit(ledger, lab, program, "copy-of-wd-up", {"matrix_lr": 0.0203}, who="copycat", hypothesis="h", ref=copy)
    assert e["stage"] == "refused" and "its code holds wd-up's change (" in e["reason"], e["reason"]
    mine = commit_change(lab.root, program, "solo", "trainer/optim.py", "import math", "import math  # mine",
                         "wd-up's author, on its own change")  # (which change told runs apart is not known)
    assert try_(ledger, lab, program, "mine-again", {"matrix_lr": 0.0204}, ref=mine)["stage"] == "measuring"
    again = try_(ledger, lab, program, "next-again", {"matrix_lr": 0.0202})  # against the baseline: measured
    assert again["versus"] == "baseline" and again["stage"] == "measuring"
    assert "withdrawn" in program_status(ledger, program)["frontier"]
    assert "frontier-1 withdrawn: frontier-1 did not reproduce" in section(
        json.loads(ledger.program(program.name)["spec"]), ledger.experiments(program.name), ledger.runs(program.name), [])
    ledger.close()
    lab.close()


def test_a_miss_withdraws_every_keep_of_agents_code_in_its_stack(tmp_path):
    """A keep's code that trains otherwise once another's change is merged onto it (it can hash
    the tree it sits in), some hours on, made the frontier after it miss: withdrawing only that
    one blamed the honest keep and left the author of the bomb standing, free to do it again.
    Which change does it cannot be told, so every frontier from the first that holds an agent's
    code is withdrawn: here wd-up (the bomb) and honest, kept on top of it."""
    lab, program, ledger = kept_on_fresh_seeds(tmp_path)
    kept = [b - 0.03 + j for b, j in zip(BASE, JITTER)]
    on_fresh = [2.20, 2.22, 2.19]
    for arm, front, gain in (("honest", "frontier-1", 0.05), ("third", "frontier-2", 0.05)):
        try_(ledger, lab, program, arm, {"matrix_lr": 0.03 + gain * (arm == "third")})
        finish(ledger, program, arm, [k - gain - j for k, j in zip(kept, JITTER)])
        finish(ledger, program, front, on_fresh, purpose="replicate")
        finish(ledger, program, arm, [f - gain + j for f, j in zip(on_fresh, JITTER)], purpose="replicate")
        finish_canaries(ledger, program, arm)
        finish_canaries(ledger, program, front, 0.05 if arm == "third" else 0.0)  # the bomb goes off under honest
        if arm == "honest":
            assert decision(ledger, program, arm)["outcome"] == "kept"
            finish(ledger, program, "frontier-2", [k - gain - j for k, j in zip(kept, JITTER)])
            kept = [k - gain - j for k, j in zip(kept, JITTER)]
    assert decision(ledger, program, "third")["outcome"] == "untested"
    rerun_baseline(ledger, program, 1, BASE[1])
    experiments = ledger.experiments(program.name)
    assert [decision(ledger, program, a)["outcome"] for a in ("wd-up", "honest")] == ["withdrawn", "withdrawn"]
    assert frontier(experiments)["arm"] == "baseline"
    verdict = decision(ledger, program, "wd-up")["verdict"]
    assert "frontier-2 did not reproduce a run of honest" in verdict and verdict.endswith("(its code is in that stack)")
    # which change told runs apart is not known: each author may make their own again, no one another's
    mine = commit_change(lab.root, program, "solo", "trainer/model.py", "# wd-up's code", "# wd-up's code, again",
                         "wd-up again, on its own commit")
    e = try_(ledger, lab, program, "wd-up-again", {"weight_decay": 0.31}, ref=mine)
    assert e["stage"] == "measuring", e["reason"]
    worktree(lab.root, program, "bob")
    theirs = commit_change(lab.root, program, "bob", "trainer/model.py", "import numpy as np",
                           "import numpy as np  # wd-up's code", "bob carries wd-up's change")
    e = submit(ledger, lab, program, "bobs", {"matrix_lr": 0.04}, who="bob", hypothesis="h", ref=theirs)
    assert e["stage"] == "refused" and "its code holds wd-up's change (" in e["reason"], e["reason"]
    ledger.close()
    lab.close()


def test_under_a_seconds_budget_a_frontier_that_misses_stands_and_the_try_is_untested(tmp_path):
    """Under a budget of seconds a run's steps follow the machine's load, and an agent's busy box
    could push an honest frontier's canary off: there it is not withdrawn (its keep could not be
    made again), and the try that met the miss is untested."""
    spec = improve_program()
    spec["budget"]["per_run"] = {"seconds": 30}
    lab, program, ledger = kept_on_fresh_seeds(tmp_path, budget=spec["budget"])
    baseline = next(e for e in ledger.experiments(program.name) if e["arm"] == "baseline")
    ledger.add_run(baseline, "repeat", 0, 1, json.loads(baseline["overrides"]), ("seconds", 30))
    finish(ledger, program, "baseline", [b + 0.001 for b in BASE], purpose="repeat")  # tolerance: 3 x 0.001
    kept = [b - 0.03 + j for b, j in zip(BASE, JITTER)]
    try_(ledger, lab, program, "seed-table", {"matrix_lr": 0.0201})
    finish(ledger, program, "seed-table", [k - 0.03 - j for k, j in zip(kept, JITTER)])
    on_fresh = [2.20, 2.22, 2.19]
    finish(ledger, program, "frontier-1", on_fresh, purpose="replicate")
    finish(ledger, program, "seed-table", [f + j for f, j in zip(on_fresh, JITTER)], purpose="replicate")
    finish_canaries(ledger, program, "seed-table")
    finish_canaries(ledger, program, "frontier-1", 0.05)
    d = decision(ledger, program, "seed-table")
    assert d["outcome"] == "untested" and "frontier-1 did not reproduce a run of wd-up" in d["verdict"], d
    rerun_baseline(ledger, program, 0, BASE[0])  # the baseline reproduces since: under FLOPs, a withdrawal
    assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"
    assert decision(ledger, program, "wd-up")["outcome"] == "kept"
    from org.agents.tools import program_status
    assert "no_yardstick" in program_status(ledger, program)["frontier"]
    ledger.close()
    lab.close()


def test_a_canary_that_did_not_complete_leaves_its_try_untested_and_its_frontier_a_yardstick(tmp_path):
    """A canary killed (a loaded machine, a glitch) is no miss: the try it went with is untested,
    not blamed, and the next try against that frontier is judged as usual."""
    lab, program, ledger = kept_on_fresh_seeds(tmp_path)
    kept = [b - 0.03 + j for b, j in zip(BASE, JITTER)]
    for arm, status in (("first", "killed"), ("second", "completed")):
        try_(ledger, lab, program, arm, {"matrix_lr": 0.03 if arm == "first" else 0.031})  # a real gain, everywhere
        finish(ledger, program, arm, [k - 0.05 - j for k, j in zip(kept, JITTER)])
        on_fresh = [2.20, 2.22, 2.19]
        finish(ledger, program, "frontier-1", on_fresh, purpose="replicate")
        finish(ledger, program, arm, [f - 0.05 + j for f, j in zip(on_fresh, JITTER)], purpose="replicate")
        finish_canaries(ledger, program, arm)
        finish_canaries(ledger, program, "frontier-1", status=status)
    first, second = decision(ledger, program, "first"), decision(ledger, program, "second")
    assert first["outcome"] == "untested" and "frontier-1's canary run of a fresh seed ended killed" in first["verdict"]
    assert second["outcome"] == "kept", second["verdict"]
    ledger.close()
    lab.close()


def test_a_try_that_does_not_reproduce_itself_is_not_kept(tmp_path):
    """A frontier's re-runs are the yardstick of the tries after it: code whose runs of one seed
    land apart (noise of its own, or a GPU reduction in no fixed order) could never be one."""
    lab, program, ledger = kept_on_fresh_seeds(tmp_path)
    kept = [b - 0.03 + j for b, j in zip(BASE, JITTER)]
    try_(ledger, lab, program, "noisy", {"matrix_lr": 0.03})  # a real gain, everywhere
    finish(ledger, program, "noisy", [k - 0.05 - j for k, j in zip(kept, JITTER)])
    on_fresh = [2.20, 2.22, 2.19]
    finish(ledger, program, "frontier-1", on_fresh, purpose="replicate")
    finish(ledger, program, "noisy", [f - 0.05 + j for f, j in zip(on_fresh, JITTER)], purpose="replicate")
    finish_canaries(ledger, program, "frontier-1")
    finish_canaries(ledger, program, "noisy", 0.004)
    d = decision(ledger, program, "noisy")
    assert d["outcome"] == "discarded" and d["rungs"][-1]["verdict"].startswith("better"), d
    assert "not kept: it did not reproduce its own run of a fresh seed (val_bpb " in d["verdict"], d["verdict"]
    assert frontier(ledger.experiments(program.name))["arm"] == "frontier-1"
    ledger.close()
    lab.close()


# --- compute multipliers -------------------------------------------------------------------

def test_a_multiplier_is_read_off_the_frontier_before_in_log_budget():
    from org.improve_story import multiplier
    curve = {0.5: 2.30, 1.0: 2.25, 2.0: 2.20}
    assert multiplier(curve, 2.20) == (2.0, False)
    assert multiplier(curve, 2.225)[0] == pytest.approx(2 ** 0.5) and not multiplier(curve, 2.225)[1]
    assert multiplier(curve, 2.15) == (pytest.approx(4.0), True)   # beyond the runs: extrapolated, and said
    assert multiplier(curve, 2.35) == (pytest.approx(0.25), True)  # a try worse than the frontier: below 1
    assert multiplier({1.0: 2.25}, 2.2) is None


def test_a_kept_try_gets_its_compute_multiplier_from_runs_of_the_frontier_before_at_other_budgets(tmp_path):
    root, program = make_project(tmp_path, improve_program(compute_multiplier={"budgets": [0.5, 2], "seeds": 2}))
    lab = Lab.open(root)
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        try_(ledger, lab, program, "wd-up", {"weight_decay": 0.3})
        finish(ledger, program, "baseline", BASE)
        finish(ledger, program, "wd-up", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
        extra = {p: ledger.runs(program.name, arm="baseline", purpose=p) for p in ("x0.5", "x2")}
        assert {p: [(r["seed"], json.loads(r["budget"])) for r in runs] for p, runs in extra.items()} == {
            "x0.5": [(0, {"kind": "steps", "value": 2}), (1, {"kind": "steps", "value": 2})],   # 3 steps x 0.5, rounded
            "x2": [(0, {"kind": "steps", "value": 6}), (1, {"kind": "steps", "value": 6})]}
        report = build(ledger.path, "climb")
        assert "| pending |" in section(report.spec, report.experiments, report.runs, report.llm)
        finish(ledger, program, "baseline", [b + 0.05 for b in BASE], purpose="x0.5")
        finish(ledger, program, "baseline", [b - 0.03 + j for b, j in zip(BASE, JITTER)], purpose="x2")
        report = build(ledger.path, "climb")
        text = section(report.spec, report.experiments, report.runs, report.llm)
    lab.close()
    assert "| ×2.00 |" in text and "compute ×: the multiple of the per-run budget" in text


def test_a_run_at_a_multiple_of_the_budget_is_commanded_and_checked_at_that_budget():
    from org.measure import budget_problem
    from org.runner import train_command
    spec = improve_program()
    spec["data"]["source"] = "pystdlib"
    program = Program.model_validate(spec)
    cmd = train_command(program, {}, 0, Path("/tmp/x"), ("steps", 6.0))
    assert cmd[cmd.index("--steps") + 1] == "6"
    assert budget_problem(program, Result(status="completed", steps=6), ("steps", 6.0)) is None
    assert "6 steps, the program fixes 3" in budget_problem(program, Result(status="completed", steps=6))


@pytest.mark.parametrize("changes, expected", [
    ({"ladder": [{"n_layer": 8, "n_embd": 512, "n_head": 8}]},
     "ladder[0]: budget.per_run.flops: 1e+08 is smaller than one step at this rung"),
    ({"compute_multiplier": {"budgets": [0.01, 2]}},
     "compute_multiplier.budgets[0]: budget.per_run.flops: 1e+06 is smaller than one step of the baseline at 0.01x the budget"),
])
def test_a_ladder_rung_or_a_multiple_of_the_budget_no_step_fits_is_one_line(tmp_path, monkeypatch, changes, expected):
    spec = improve_program(**changes)
    spec["budget"]["per_run"] = {"flops": 1e8}
    spec["data"]["source"] = "pystdlib"
    root, _ = make_project(tmp_path, tiny_program([{"name": "solo"}], corpus="corpus"))
    (root / "programs" / "climb.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(root)
    with pytest.raises(ProgramError) as e:
        preflight("climb")
    assert f"programs/climb.yaml: {expected}" in str(e.value) and "\n" not in str(e.value)


def test_compute_multiplier_budgets_are_multiples_other_than_one():
    for budgets in ([1.0], [1e300]):  # (the second overflowed the FLOP budget to inf)
        with pytest.raises(ValueError, match="above 0, up to 1000 and not 1"):
            Program.model_validate(improve_program(compute_multiplier={"budgets": budgets}))


def test_org_extend_gives_new_seeds_to_the_frontier_and_to_tries_still_open_not_to_decided_ones(lab):
    lab, program, ledger = lab
    try_(ledger, lab, program, "wd-up", {"weight_decay": 0.3})
    finish(ledger, program, "baseline", BASE)
    finish(ledger, program, "wd-up", [b - 0.03 + j for b, j in zip(BASE, JITTER)])
    try_(ledger, lab, program, "lr-up", {"matrix_lr": 0.03})  # against frontier-1, not decided yet
    done = subprocess.run([sys.executable, "-m", "org.cli", "extend", "climb", "--seeds", "5,6"],
                          cwd=lab.root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seeds = {arm: sorted(r["seed"] for r in ledger.runs(program.name, arm=arm, purpose="main"))
             for arm in ("baseline", "wd-up", "frontier-1", "lr-up")}
    assert seeds == {"baseline": SEEDS + [5, 6], "wd-up": SEEDS, "frontier-1": SEEDS + [5, 6],
                     "lr-up": SEEDS + [5, 6]}  # a decided try's verdict is final: more seeds would be waste
