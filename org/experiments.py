"""
Experiments: what to run. An experiment names an arm, config overrides and (optionally) a
commit; the program decides everything else.

    submit()      -> refused (owned keys, protected paths) or queued runs: every arm gets the
                     program's seed list; with a tune grid, first tuning runs, then the best point
    plan()        -> whatever an experiment needs next (idempotent: safe after any crash), and
                     fresh seeds for an arm whose claim stands on its main ones
    waiting_for_budget() -> submitted experiments that may not start yet: the budget holds one
                     claim's fresh seeds back from them
    waiting_for_pace()   -> under a seconds budget, code of its own waits for the baseline's pace
    stuck_for_budget()   -> nothing can run till a person raises the budget
    submission_source() / check_arm_name() -> the one rule for arm names, for people and agents

The runner (org/runner.py) executes the queue these fill.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import subprocess
import zlib
from collections import Counter

from org import OrgError
from org.commit_checks import code_refusal, kilobytes, same_code
from org.improve import built_on_withdrawn, check_try, config, decide_ready, draw_seeds, frontier, merged_try
from org.lab import Lab, child_env
from org.ledger import FINISHED, SECRET_SEEDS, Ledger
from org.program import NAME, Program, owned_by_program


MAX_HYPOTHESIS_CHARS = 4000  # every agent's `results` shows it, and the ledger keeps it for good
MAX_REFUSED = 100  # an agent's refused submissions on record: each costs no compute, and is read at every claim


def submit(ledger: Ledger, lab: Lab, program: Program, arm: str, overrides: dict, who: str,
           hypothesis: str | None = None, ref: str | None = None, source: str = "submitted") -> dict:
    """Record an experiment and enqueue its runs (or record it refused). Returns the experiment.
    A declared arm submitted twice returns the existing experiment, so `org run` is idempotent."""
    if len(hypothesis or "") > MAX_HYPOTHESIS_CHARS:
        raise OrgError(hypothesis_too_long(hypothesis))
    base = ledger.program(program.name)["base_commit"]
    commit = lab.take_in(ref, (program.name, who)) if ref else base  # copied, checked, where no box writes
    maker = lab.made_by(program.name, commit) if ref and who in {a.name for a in program.org.agents} else None
    if maker and maker != who and all(e["code_commit"] != commit for e in ledger.experiments(program.name)):
        # (a teammate's commit, submitted first under another name, left its maker refused; one on
        # record, a kept try's say, is anyone's to build on)
        raise OrgError(f"commit {commit[:10]} was made in {maker}'s box: an agent submits commits of its own (one "
                       f"on top of it is), so each verdict goes to whoever did the work")
    versus, since, merge_problem = None, base, None
    if program.claim.kind == "improve" and arm != "baseline":  # a try, against the frontier of the moment
        front = frontier(ledger.experiments(program.name)) or submit(
            ledger, lab, program, "baseline", {}, who="program", hypothesis="the program's baseline", source="declared")
        merged, merge_problem = merged_try(lab, program.name, arm, front["code_commit"], commit)
        commit, overrides = merged or commit, {**json.loads(front["overrides"]), **overrides}
        versus, since = front["arm"], front["code_commit"]
        merge_problem = merge_problem or check_try(program, overrides, commit, front) \
            or built_on_withdrawn(lab, ledger.experiments(program.name), commit, who)
    reason = merge_problem or refusal(lab, program, base, commit, overrides)
    if reason and source == "submitted" and \
            sum(e["who"] == who and e["stage"] == "refused" for e in ledger.experiments(program.name)) >= MAX_REFUSED:
        raise OrgError(f"refused, and not recorded ({MAX_REFUSED} refused submissions of {who}'s are on record): "
                       f"{reason.splitlines()[0][:500]}")
    if not reason:  # taken in as reviewed: its objects in a pack of their own
        lab.pack_loose([commit])
    stage = "refused" if reason else ("tuning" if program.tune else "measuring")
    diff = shown_diff(lab, since, commit, 64 << 10 if reason else 1 << 20)  # (refused: as many as an agent likes)
    with ledger.tx():
        # again under the write lock: two submits sent at once both passed the check before it
        # (git work between), and two experiments shared one arm (its runs averaged per seed)
        if source == "submitted" and any(x["arm"] == arm for x in ledger.experiments(program.name)):
            raise OrgError(f"arm {arm!r} already exists; give a new idea a new name")
        if source == "submitted" and (twin := same_change(ledger, lab, program, commit, overrides, versus)):
            raise OrgError(f"experiment {twin['id']} ({twin['arm']}) already is this change (the same code and "
                           f"overrides{', against the same frontier' if versus else ''}): its runs and verdict "
                           "stand, and a copy under a new name would be one more test of one idea")
        experiment_id = ledger.add_experiment(
            program.name, arm, who=who, source=source, base_commit=base, code_commit=commit,
            overrides=overrides, stage=stage, hypothesis=hypothesis, diff=diff, reason=reason, versus=versus)
        if experiment_id is None:  # this declared arm is already in the ledger
            return next(e for e in ledger.experiments(program.name)
                        if e["arm"] == arm and e["source"] == "declared")
        experiment = ledger.experiment(experiment_id)
        plan(ledger, program, experiment)
    return ledger.experiment(experiment_id)


def hypothesis_too_long(hypothesis: str) -> str:
    return (f"a hypothesis of {len(hypothesis)} characters: one holds {MAX_HYPOTHESIS_CHARS} at most "
            "(what you expect versus the baseline, and why; the diff goes with it)")


def shown_diff(lab: Lab, base: str, commit: str, most: int) -> str:
    """The change as git shows it, its first `most` bytes: a commit of a few KB compressed can be
    a diff of hundreds of MB (400 MB of one line repeated: 2 MB), which went whole into the
    harness's memory and the ledger, and was read again at every refresh of the status."""
    if base == commit:
        return ""
    env = child_env(lab.repo.git.environment())  # (a file past 1 MB: "Binary files differ")
    with subprocess.Popen(["git", "-c", "core.bigFileThreshold=1m", "diff", "--no-ext-diff", "--no-textconv", base,
                           commit], cwd=lab.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as git_:
        shown = git_.stdout.read(most + 1)
        git_.kill()
    text = shown[:most].decode(errors="replace")
    return text if len(shown) <= most else text + f"\n... (cut: the diff goes on past {most >> 10} KB)\n"


def same_change(ledger: Ledger, lab: Lab, program: Program, commit: str, overrides: dict, versus: str | None):
    """An experiment (not refused) that runs this code tree with these overrides, against the same
    frontier, or None. Each verdict is a test at the program's alpha (`no regression` unadjusted
    for how many arms there are), and each copy draws fresh seeds of its own: one change submitted
    under ten names had about 40 % odds that one copy's verdict held by chance. A try decided stale
    or untested was no test: made again (its frontier stands again once a later one is withdrawn),
    it is one. The same code: its comments, docstrings and layout aside (commit_checks.same_code)."""
    trained = trained_config(program, overrides)
    no_test = lambda e: e["decision"] and json.loads(e["decision"])["outcome"] in ("stale", "untested")
    return next((e for e in ledger.experiments(program.name) if e["stage"] != "refused" and e["versus"] == versus
                 and not no_test(e) and trained_config(program, json.loads(e["overrides"])) == trained
                 and same_code(lab, e["code_commit"], commit)),
                None)


def trained_config(program: Program, overrides: dict) -> dict:
    """What the runs of an arm with these overrides train with: the base trainer's whole config,
    as it reads their `--set` flags, and each key it does not know (a code arm's own) as its flag
    says. `softcap: 0`, `"0"`, `"0.0"` and `"0e0"` are one run (and a key set to its default is
    none), which compared as written were four ideas, each drawing fresh seeds of its own."""
    from trainer.config import KEYS, flag_value, make_config
    flags = {k: flag_value(v) for k, v in {**program.baseline.overrides, **overrides}.items()}
    known = {k: v for k, v in flags.items() if k in KEYS or k == "depth"}
    try:
        resolved = dataclasses.asdict(make_config(program.baseline.preset, **known))
    except (ValueError, TypeError):  # (the runner refuses it; as written, then)
        resolved = known
    return {**resolved, **{k: v for k, v in flags.items() if k not in known}}


def check_arm_name(arm: str):
    if not re.fullmatch(NAME, arm) or arm == "baseline" or arm.startswith("frontier-"):
        raise OrgError(f"arm {shown_name(arm)}: use a new lowercase name (letters, digits, - and _; 64 at most); "
                       "'baseline' and 'frontier-N' are the program's")


def shown_name(arm: str) -> str:
    return repr(arm) if len(arm) <= 80 else f"{arm[:60]!r}... ({len(arm)} characters)"


def submission_source(ledger: Ledger, lab: Lab, program: Program, arm: str, overrides: dict, commit: str) -> str:
    """The one rule for an arm's name, for `org submit` and the agents' tool alike: 'declared'
    for one of the program's own arms exactly as the file declares it (submitting it again is
    harmless: its runs are reused), else 'submitted', which needs a name of its own, so the
    referee never mixes two ideas. Raises OrgError otherwise."""
    check_arm_name(arm)
    declared = next((v for v in program.variants if v.name == arm), None)
    base = ledger.program(program.name)["base_commit"]
    if declared and declared.overrides == overrides and commit == lab.resolve(declared.ref or base):
        return "declared"
    taken = [e for e in ledger.experiments(program.name) if e["arm"] == arm]
    if taken and taken[0]["stage"] == "refused":  # the record keeps what was refused, under its name
        why = (taken[0]["reason"] or "no reason recorded").splitlines()[0]
        raise OrgError(f"arm {arm!r} is taken: experiment {taken[0]['id']} was refused under that name ({why}), "
                       "and the record keeps it; submit this idea under a new name")  # (not this --set's refusal)
    if taken or declared:
        who = taken[0]["who"] if taken else "the program"
        raise OrgError(f"arm {arm!r} already exists (by {who}, experiment {taken[0]['id'] if taken else 'declared'}); "
                       "give a new idea a new name")
    return "submitted"


def submit_declared(ledger: Ledger, lab: Lab, program: Program) -> list[dict]:
    """The program file's baseline and variants, each once."""
    arms = [("baseline", {}, None, "the program's baseline")]
    arms += [(v.name, v.overrides, v.ref, f"declared variant {v.name}") for v in program.variants]
    return [submit(ledger, lab, program, arm, overrides, who="program", hypothesis=text, ref=ref,
                   source="declared") for arm, overrides, ref, text in arms]


def runs_own_code(experiment: dict) -> bool:
    """Whether an experiment runs a commit other than the program's base (an agent's code)."""
    return experiment["code_commit"] != experiment["base_commit"]


def refusal(lab: Lab, program: Program, base: str, commit: str, overrides: dict) -> str | None:
    """Why an experiment may not run, or None."""
    owned = owned_by_program(overrides)
    if owned:
        return f"override {owned}"
    carried = len(zlib.compress(json.dumps(overrides).encode(), 9)) if overrides else 0  # a string value could hold weights
    if carried > program.max_change_kb * 1024:
        return f"the overrides carry {kilobytes(carried)} (compressed), more than max_change_kb: {program.max_change_kb:g}"
    return code_refusal(lab, base, commit, program.protected, program.max_change_kb, carried)


def plan(ledger: Ledger, program: Program, experiment: dict):
    """Enqueue whatever the experiment needs next, and decide the tries of an improvement
    program that are ready (org/improve.py), planning the frontier a keep makes. Idempotent (the
    ledger ignores a run it already has), so it is safe to call again after any crash."""
    plan_runs(ledger, program, experiment)
    for front in decide_ready(ledger, program):
        plan_runs(ledger, program, front)
    plan_replication(ledger, program)


def plan_all(ledger: Ledger, program: Program):
    """plan() for every experiment, with the program's decisions and fresh seeds planned once:
    once an experiment, they read every run of the program each time (a thousand refused
    experiments, which cost their agent nothing, took the runner's every drain)."""
    for experiment in ledger.experiments(program.name):
        plan_runs(ledger, program, experiment)
    for front in decide_ready(ledger, program):
        plan_runs(ledger, program, front)
    plan_replication(ledger, program)


def plan_replication(ledger: Ledger, program: Program):
    """Fresh seeds for every arm whose claim stands on its main seeds (better or no regression,
    confirmed on the held-out split) and has none yet: program.fresh_seeds of them, drawn now, so
    that no code committed before could know them, each run by the arm and by the baseline
    (referee.replicate judges them). Only once every main run of the arm and the baseline is
    finished: a verdict still moving is not yet a claim."""
    runs = ledger.runs(program.name)
    mains = [r for r in runs if r["purpose"] == "main"]
    done = {arm for arm in {r["arm"] for r in mains} if all(r["status"] in FINISHED for r in mains if r["arm"] == arm)}
    ready = done - {r["arm"] for r in runs if r["purpose"] == "replicate"} - {"baseline"}
    if not program.fresh_seeds or program.claim.kind == "improve" or "baseline" not in done or not ready:
        return
    from org.referee import NEEDS_CONFIRMATION, verdict_kind, verdicts  # (scipy: only where it is used)
    declares = {v.name: frozenset(v.declares) for v in program.variants}
    try:
        judged, _ = verdicts(runs, program.claim.rule, program.claim.margin, declares)
    except Exception:  # the referee's bug must not stop the runner: the claim is awaited (report, results)
        return
    base = next(r for r in mains if r["arm"] == "baseline")
    budget = program.budget.per_run.kind, program.budget.per_run.value
    for arm in sorted(ready & judged.keys()):
        c = judged[arm]
        if verdict_kind(c.verdict) not in NEEDS_CONFIRMATION or c.final_verdict != c.verdict:
            continue
        own = next(r for r in mains if r["arm"] == arm)
        with ledger.tx():  # all its fresh seeds, or none: a crash half-way left some, and "has some" planned no more
            for i, seed in enumerate(draw_seeds(ledger.runs(program.name), program.fresh_seeds)):
                for template in (base, own):  # (its overrides: the tuned point, where a grid was tuned)
                    ledger.add_run(ledger.experiment(template["experiment_id"]), "replicate", seed, 1 + i,
                                   json.loads(template["overrides"]), budget)


CHECKS = SECRET_SEEDS  # the runs the harness adds to check a claim, on seeds it drew (fresh seeds, canaries)


def waiting_for_budget(ledger: Ledger, program: Program) -> list[int]:
    """The experiments whose runs may not start yet: one submitted (by an agent, or `org submit`)
    that has not started, where the budget left cannot pay for its runs besides every run of what
    has started and one claim's fresh seeds (held_for_checks). Without that hold, agents' queued
    work spent the whole budget, and a claim that stood late stayed "awaiting replication" for
    good. With budget.agent_compute_seconds, also one whose agent's runs so far, and those it has
    started or queued before it, would pass that share: one agent's queue spent the compute its
    teammates had to try their ideas with. What has started goes on, unless its agent's runs have
    used its whole share (priced at the baseline's median, experiments let in together passed it
    3.5x: an agent's code may train to the timeout); the program's own arms always go on; the first
    to come, first."""
    held, cost = held_for_checks(ledger, program)
    share = ledger.budget(program.name).get("agent_compute_seconds")
    if not cost or not (held or share):
        return []
    runs, experiments = ledger.runs(program.name), ledger.experiments(program.name)
    started = {r["experiment_id"] for r in runs if r["claim_seq"]}
    pending = Counter(r["experiment_id"] for r in runs if r["status"] in ("queued", "running") and r["purpose"] not in CHECKS)
    for e in experiments:  # its main runs, one a seed, are planned once its grid is done: priced now
        pending[e["id"]] += len(program.budget.seeds) if e["stage"] == "tuning" else 0
    new = [e for e in experiments if e["source"] == "submitted" and e["id"] not in started and pending[e["id"]]]
    left = ledger.budget(program.name)["total_compute_seconds"] - ledger.compute_seconds(program.name) - held \
        - cost * (sum(pending.values()) - sum(pending[e["id"]] for e in new))  # (a running run: at its full cost)
    who = {e["id"]: e["who"] for e in experiments}
    theirs = Counter()  # each agent's runner seconds: spent, and held for what it has started
    for r in runs:
        theirs[who[r["experiment_id"]]] += (r["wall_seconds"] or 0) + (r["measure_seconds"] or 0) + (r["lost_seconds"] or 0)
    used = Counter(theirs)
    for experiment_id in started:
        theirs[who[experiment_id]] += cost * pending[experiment_id]
    waiting = [e["id"] for e in experiments if e["source"] == "submitted" and e["id"] in started and pending[e["id"]]
               and share is not None and used[e["who"]] >= share]
    for e in new:
        need = cost * pending[e["id"]]
        if (not held or need <= left) and (share is None or theirs[e["who"]] + need <= share):
            left, theirs[e["who"]] = left - need, theirs[e["who"]] + need
        else:
            waiting.append(e["id"])
    return waiting


def stuck_for_budget(ledger: Ledger, program: Program, waiting: list[int]) -> bool:
    """No run can start or end: every queued run's experiment waits for budget (`waiting`), and no
    run is running whose end could change that; `org budget`, a person's, frees it."""
    queued = {r["experiment_id"] for r in ledger.runs(program.name, status="queued")}
    return bool(queued) and queued <= set(waiting) and not ledger.runs(program.name, status="running")


def waiting_for_pace(ledger: Ledger, program: Program, kind: str | None = None) -> list[int]:
    """Under a seconds budget, the experiments of code of their own with runs queued while the
    baseline has no pace on this `kind` of device (streams.base_pace) and a run to come: that pace
    counts their windows (streams.stream_rows), and without it they could not start."""
    from org.streams import base_pace
    if program.budget.per_run.kind != "seconds":
        return []
    base = ledger.runs(program.name, arm="baseline")
    if base_pace(base, kind) or not any(r["status"] in ("queued", "running") for r in base):
        return []
    queued = {r["experiment_id"] for r in ledger.runs(program.name, status="queued")}
    return [e["id"] for e in ledger.experiments(program.name) if runs_own_code(e) and e["id"] in queued]


def budget_note(ledger: Ledger, program: Program, waiting: list[int], kind: str | None = None) -> str:
    spent, total = ledger.compute_seconds(program.name), ledger.budget(program.name)["total_compute_seconds"]
    if spent >= total:
        return f"compute budget spent ({spent:.0f}s of {total:g}s); queued runs stay queued"
    waiting, pace = list(dict.fromkeys(waiting)), waiting_for_pace(ledger, program, kind)  # (one may wait for both)
    paced = [e for e in waiting if e in pace]
    budget = [e for e in waiting if e not in paced]
    share = ledger.budget(program.name).get("agent_compute_seconds")
    notes = [f"experiment(s) {', '.join(map(str, paced))} wait for the baseline's first run: under a seconds budget "
             f"its pace sizes their windows of the train split"] if paced else []
    return "; ".join(notes + [
        f"experiment(s) {', '.join(map(str, budget))} wait: {spent:.0f}s of {total:g}s is spent, and what has "
        f"started and one claim's fresh seeds ({held_for_checks(ledger, program)[0]:.0f}s) leave too little for their runs"
        + (f", or their agent's runs would pass its budget.agent_compute_seconds ({share:g}s)" if share else "")] * bool(budget))


def held_for_checks(ledger: Ledger, program: Program) -> tuple[float, float]:
    """The compute seconds held back for one standing claim's fresh seeds, each run by the arm and
    by what it is judged against (0 where the program draws none), and the run cost they count."""
    cost = run_cost(ledger, program)
    return 2 * program.fresh_seeds * cost, cost


def run_cost(ledger: Ledger, program: Program) -> float:
    """The median runner time (training and measurement) of the baseline's completed runs, the
    program's own code (an agent's could be made to cost anything), or its run timeout, the most
    a run may train, before one completes (priced at 0 then, agents' runs started unheld, and
    once started they went on: a `tune` grid queued ahead of the baseline's runs spent it all)."""
    costs = [r["wall_seconds"] + (r["measure_seconds"] or 0) for r in ledger.runs(program.name, arm="baseline")
             if r["status"] == "completed" and r["purpose"] in ("main", "repeat") and r["wall_seconds"]]
    return min(statistics.median(costs) if costs else math.inf, program.budget.run_timeout_seconds)


def plan_runs(ledger: Ledger, program: Program, experiment: dict):
    if experiment.get("decision"):  # an improvement program's decided try: its runs are done with
        return                      # (seeds added later, by `org extend`, would change nothing)
    seeds = program.budget.seeds
    budget = program.budget.per_run.kind, program.budget.per_run.value
    arm_overrides = config(program, experiment)
    stage = experiment["stage"]
    if stage == "refused":
        for i, seed in enumerate(seeds):
            ledger.add_run(experiment, "main", seed, 1 + i, arm_overrides, budget,
                           status="refused", reason=experiment["reason"])
        return
    if stage == "tuning":
        for point in program.grid_points():
            for seed in program.tuning_seeds:
                ledger.add_run(experiment, "tune", seed, 0, {**arm_overrides, **point}, budget)
        stage = choose_tuned(ledger, program, experiment)
    if stage == "measuring":
        chosen = json.loads(ledger.experiment(experiment["id"])["chosen"] or "{}")
        for i, seed in enumerate(seeds):
            ledger.add_run(experiment, "main", seed, 1 + i, {**arm_overrides, **chosen}, budget)


def choose_tuned(ledger: Ledger, program: Program, experiment: dict) -> str:
    """Once all of an experiment's tuning runs are finished, pick the grid point with the best
    mean val_bpb (on the validation split, over tune seeds) and move on to measuring."""
    runs = ledger.runs(program.name, experiment_id=experiment["id"], purpose="tune")
    if any(r["status"] not in FINISHED for r in runs):
        return "tuning"
    scores = {}
    for point in program.grid_points():
        values = [r["val_bpb"] for r in runs if r["status"] == "completed"
                  and _point_of(r, point) and r["val_bpb"] is not None]
        if values:
            scores[json.dumps(point, sort_keys=True)] = sum(values) / len(values)
    if not scores:
        ledger.update_experiment(experiment["id"], stage="failed",
                                 reason="no tuning run completed")
        return "failed"
    best = min(scores, key=scores.get)
    ledger.update_experiment(experiment["id"], stage="measuring", chosen=json.loads(best))
    return "measuring"


def _point_of(run: dict, point: dict) -> bool:
    overrides = json.loads(run["overrides"])
    return all(overrides.get(k) == v for k, v in point.items())
