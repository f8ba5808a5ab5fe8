"""
Improvement programs: open-ended research against a frontier that only confirmed gains move.

A program with `claim: {kind: improve, alpha: 0.05}` asks "lower val_bpb at this budget". The
frontier is the best configuration so far (code on the program branch, plus config overrides);
it starts as the baseline. Agents submit tries against it, and each try is

  submitted  its commit merged onto the frontier's (a merge the harness makes; a conflict refuses
             the try), its overrides put on top of the frontier's, and measured on the program's
             seeds against the frontier arm of the moment (`versus`);
  decided    once its runs and that frontier's are finished, in the transaction that finishes
             the last of them (so a crash leaves either no decision or the whole of it):
               stale      the frontier moved since it was submitted (or was withdrawn): not a
                          test; resubmit it
               untested   nothing to test (refused, failed, fewer than two paired seeds)
               kept       the referee's `better` at the level LORD++ gives this test
                          (org/frontier.py), confirmed on the held-out split at that level,
                          then climbing: `better` at every rung of a `ladder`, and on fresh
                          seeds drawn then (claim.fresh_seeds), which no try's code could know,
                          at that same level, where it also reproduces a run of its own
               discarded  otherwise, with the referee's verdict saying why
             A kept try becomes the next frontier, arm frontier-N (its code and overrides), is
             re-measured on every seed, and the program branch moves to its commit.
  withdrawn  a kept try whose code is in the stack of a frontier that later did not reproduce a
             run of its own kept try (a canary missed, while the baseline reproduced its own):
             every frontier from the first with an agent's code on (withdraw_unreproduced)

The rule's state is rebuilt from the decisions on record. At the program's budget a try may
change anything but the budget itself: params, tokens and steps count as declared ("lower loss
at equal FLOPs" may use a wider model or more steps), and the budget's own kind must match.

    frontier(experiments)                      -> the current frontier experiment
    merged_try(lab, program, arm, front, commit) -> (the commit to run, or why not)
    decide_ready(ledger, program)              -> new frontier experiments (for plan())
    sync_branch(lab, ledger, program)          -> program/<name> at the frontier's commit
    check_candidates(lab, program, base, source) -> every patch applies and is allowed
    lineage(experiments)                       -> the decided tries, in decision order
    (org/ablate.py: `org ablate`, the frontier without each kept change)
    (org/improve_story.py tells it: the report's points, progress.png, and markdown)

A kept try's re-measured frontier runs the same code and config on the same seeds as the try
did, so (the trainer being deterministic) it reproduces the try's numbers bit for bit: the
report says whether it did. Later tries pair with the kept try's own runs (judged_against: the
re-runs are the agent's code again, which may tell them apart), so their p-values are not
independent, as LORD++'s guarantee assumes (org/frontier.py says how far that goes).
"""
from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path

import git

from org.commit_checks import code_refusal
from org.confounds import DECLARABLE, UNSEEN_WORK
from org.frontier import Lord
from org.lab import Lab
from org.ledger import FINISHED, Ledger, now
from org.program import Program, ProgramError, quoted
from org.referee import compare, confirm, verdict_kind

HARNESS = {"GIT_AUTHOR_NAME": "nanolab harness", "GIT_AUTHOR_EMAIL": "harness@nanolab.local",
           "GIT_COMMITTER_NAME": "nanolab harness", "GIT_COMMITTER_EMAIL": "harness@nanolab.local"}
REPRODUCED = 1e-6  # val_bpb a deterministic run of the same code, config and seed may move by (none is seen)
OUTCOMES = ("kept", "discarded", "stale", "untested", "climbing", "withdrawn")
# climbing: passed, now at the ladder's rungs; withdrawn: kept, then its frontier did not reproduce it (withdraw)


# --- the frontier ------------------------------------------------------------------------

def frontiers(experiments: list[dict], withdrawn: bool = False) -> list[dict]:
    """The baseline, then each frontier-N standing (with `withdrawn`, those withdrawn too), in order."""
    return [e for e in experiments if (e["arm"] == "baseline" and e["source"] == "declared")
            or (e["source"] == "frontier" and (withdrawn or e["stage"] != "withdrawn"))]


def frontier(experiments: list[dict]) -> dict | None:
    return (frontiers(experiments) or [None])[-1]


def tries(experiments: list[dict]) -> list[dict]:
    return [e for e in experiments if e.get("versus") and e["source"] != "ablation"]


def ablations(experiments: list[dict]) -> list[dict]:
    return [e for e in experiments if e["source"] == "ablation"]


def lineage(experiments: list[dict]) -> list[dict]:
    """The decided tries in decision order, each with its decision read."""
    decided = [dict(e, decision=json.loads(e["decision"])) for e in tries(experiments) if e.get("decision")]
    return sorted(decided, key=lambda e: e["decision"]["seq"])


def rule_of(program: Program, experiments: list[dict]) -> Lord:
    """LORD++ after the tests on record; its wealth comes back for a kept try alone, not for one
    that passed on the program's seeds and then failed at the ladder or on fresh seeds: a pass
    on known seeds can be made to order (a table of each seed's best data order), and each one
    paid wealth back, so the levels never fell while such tries failed their fresh seeds one
    after another. (Fewer discoveries counted make every level lower: LORD++ holds its rate.)"""
    return Lord.rebuild([e["decision"]["outcome"] == "kept" for e in lineage(experiments)
                         if e["decision"]["test"] is not None], alpha=program.claim.alpha)


# --- submitting a try --------------------------------------------------------------------

def merged_try(lab: Lab, program: str, arm: str, front: str, commit: str) -> tuple[str | None, str | None]:
    """The code a try runs: its commit merged onto the frontier's commit front, or (None, why)."""
    repo = lab.repo
    lab.harden()
    if commit == front or repo.is_ancestor(commit, front):  # nothing of its own: the frontier's code
        return front, None
    if repo.is_ancestor(front, commit):                     # built on the frontier
        return commit, None
    try:
        tree = repo.git.merge_tree("--write-tree", "--name-only", "--no-messages", front, commit).split()[0]
    except git.GitCommandError as e:
        conflicts = [line for line in (e.stdout or "").strip("' \n").splitlines()[1:] if line.strip()]
        return None, (f"its commit {commit[:10]} does not merge onto the frontier's {front[:10]}"
                      + (f": conflict in {', '.join(conflicts[:3])}" if conflicts else "")
                      + "; rebase it on the frontier (results() names its commit)")
    merged = repo.git.commit_tree(tree, "-p", front, "-p", commit, "-m", f"try {arm}: {commit[:10]} onto "
                                  f"the frontier {front[:10]}", env=HARNESS)  # added to the hardened env
    repo.git.update_ref(f"refs/nanolab/{program}/tries/{arm}", merged)  # kept: the ledger names it
    return merged, None


# --- deciding ----------------------------------------------------------------------------

def decide_ready(ledger: Ledger, program: Program) -> list[dict]:
    """Decide every try whose runs (and its frontier's) are finished, in one transaction;
    returns the frontier experiments a keep created, whose runs the caller plans."""
    if program.claim.kind != "improve":
        return []
    created = []
    with ledger.tx():
        withdraw_unreproduced(ledger, program, ledger.experiments(program.name))
        experiments = ledger.experiments(program.name)
        for e in [e for e in tries(experiments) if not e["decision"] or json.loads(e["decision"])["outcome"] == "climbing"]:
            front = next((f for f in frontiers(experiments) if f["arm"] == e["versus"]), None)
            if front is None:  # withdrawn since it was submitted
                decision = withdrawn_under(ledger, program, experiments, e)
            else:
                decision = decide(ledger, program, experiments, e, front) if not e["decision"] else json.loads(e["decision"])
            if decision is not None and decision["outcome"] == "climbing":
                decision = climb(ledger, program, experiments, e, front, decision)
            if decision is None:
                continue
            if decision["outcome"] == "kept":
                arm = f"frontier-{len(frontiers(experiments, withdrawn=True))}"  # (a withdrawn one keeps its name)
                decision["frontier_after"] = arm
                new_id = ledger.add_experiment(
                    program.name, arm, who="program", source="frontier", base_commit=e["base_commit"],
                    code_commit=e["code_commit"], overrides=json.loads(e["overrides"]), stage="measuring",
                    hypothesis=f"the frontier after keeping {e['arm']} (experiment {e['id']})", diff=e["diff"])
                created.append(ledger.experiment(new_id))
                plan_multiplier(ledger, program, front)  # how much compute is the keep worth to it?
            ledger.update_experiment(e["id"], decision=decision)
            experiments = ledger.experiments(program.name)
    return created


def decide(ledger: Ledger, program: Program, experiments: list[dict], e: dict, front: dict | None) -> dict | None:
    """One try's decision, or None while it is not ready."""
    seq = len(lineage(experiments)) + 1
    record = dict(seq=seq, test=None, level=None, p=None, p_held_out=None, delta=None, n=0,
                  frontier=e["versus"], decided_at=now())
    if e["stage"] in ("refused", "failed"):
        return dict(record, outcome="untested", verdict=f"{e['stage']} ({e['reason']})")
    runs = ledger.runs(program.name, experiment_id=e["id"])
    front_runs = judged_against(ledger, program, experiments, front) if front else []
    if e["stage"] != "measuring" or any(r["status"] not in FINISHED for r in runs + front_runs
                                        if r["purpose"] == "main"):
        return None
    current = frontier(experiments)
    if front is None or front["id"] != current["id"]:
        return dict(record, outcome="stale", verdict=f"stale (measured against {e['versus']}; {current['arm']} "
                                                     "is the frontier now: submit it again against that)")
    rule = rule_of(program, experiments)
    level = rule.level()
    declared = frozenset(DECLARABLE) - {program.budget.per_run.kind}
    c = compare(front_runs, runs, "superiority", alpha=level, declared=declared)
    c = confirm(c, front_runs, runs)
    tested = c.p_better is not None and not c.failed
    passed = tested and verdict_kind(c.verdict) == "better" and c.final_verdict == c.verdict
    slower = unseen_work(program, c) or (passed and unseen_since_baseline(ledger, program, experiments, runs, front))
    outcome = ("climbing" if program.ladder or program.fresh_seeds else "kept") if passed and not slower else (
        "discarded" if tested else "untested")
    return dict(record, test=rule.tries + 1 if tested else None, level=level if tested else None, passed=passed,
                p=c.p_better, p_held_out=c.confirmation and c.confirmation.p_better, delta=c.mean, n=c.n,
                outcome=outcome, verdict=c.final_verdict + (f"; not kept: {slower}" if passed and slower else ""),
                rung=1 if outcome == "climbing" else None, rungs=[])


def withdrawn_under(ledger: Ledger, program: Program, experiments: list[dict], e: dict) -> dict:
    """A try whose frontier was withdrawn (withdraw_unreproduced) under it: stale at once, its
    runs still queued refused (the code it was merged onto is not the frontier's any more)."""
    gone = next(f for f in frontiers(experiments, withdrawn=True) if f["arm"] == e["versus"])
    for r in ledger.runs(program.name, experiment_id=e["id"], status="queued"):
        ledger.finish(r["id"], "refused", f"not run: {gone['arm']}, its frontier, was withdrawn")
    d = json.loads(e["decision"]) if e["decision"] else dict(
        seq=len(lineage(experiments)) + 1, test=None, level=None, p=None, p_held_out=None, delta=None, n=0,
        frontier=e["versus"], rungs=[])
    return dict(d, outcome="stale", decided_at=now(), verdict=f"stale (measured against {e['versus']}, withdrawn "
                f"since: {gone['reason']}; {frontier(experiments)['arm']} is the frontier now: submit it again)")


def withdraw_unreproduced(ledger: Ledger, program: Program, experiments: list[dict]):
    """Withdraw the agents' code from the frontier when a frontier did not reproduce a run of its
    kept try (a canary missed: missed_canary) while the baseline reproduced its own since (the
    machine and its libraries still give the bits they gave). Code in its stack tells runs apart
    (the time, a folder, the tree it sits in), so the runs its keeps stood on are no evidence, and
    its re-runs no yardstick. Which change does it cannot be told (a keep that trains otherwise
    once merged with another's code, some hours on, looks like the other's fault), so every
    frontier from the first that holds an agent's code on is withdrawn: a 'time bomb' costs its
    author the keep, and a keep built on it must be made again (by its author, without the rest).
    Left standing, such a frontier froze the program: every later try untested, for good.

    The frontier before them stands again (the program branch goes back to it: sync_branch);
    tries against a withdrawn frontier are stale (withdrawn_under), one whose commit builds on
    its code is refused (built_on_withdrawn), and LORD++ counts none of them as a discovery
    (rule_of): every later level falls. Not under a budget of seconds, where a run's steps follow
    the machine's load (an agent's busy box could push an honest canary off); nor while no
    re-run of the baseline since the miss has reproduced (a library upgraded mid-program moved
    every canary, and withdrew every frontier): there the frontier stands and the tries against
    it are untested (climb) until one has."""
    if program.budget.per_run.kind == "seconds":
        return
    fronts = frontiers(experiments)
    for i, front in enumerate(fronts):
        kept = origin(experiments, front)
        miss = kept and missed_canary(ledger, program, experiments, front)
        if not miss or not baseline_reproduced_since(ledger, program, miss[0]["started_at"] or miss[0]["finished_at"]):
            continue
        first = next((j for j, f in enumerate(fronts) if f["code_commit"] != fronts[0]["code_commit"]), i)
        why = (f"{front['arm']} did not reproduce a run of {kept['arm']}, its kept try ({said(*miss)}), where the "
               "baseline reproduced its own: code in its stack tells runs apart")
        for j, gone in enumerate(fronts[min(first, i):], start=min(first, i)):
            reason = why if j == i else f"{why} ({'its code is in that stack' if j < i else 'built on ' + front['arm']})"
            ledger.update_experiment(gone["id"], stage="withdrawn", reason=reason)
            for e in [gone] + [e for e in experiments if e["versus"] == gone["arm"] and e["source"] == "ablation"]:
                for r in ledger.runs(program.name, experiment_id=e["id"], status="queued"):
                    ledger.finish(r["id"], "refused", f"not run: {gone['arm']} was withdrawn")
            mine = origin(experiments, gone)
            d = mine["decision"]  # (lineage: read)
            ledger.update_experiment(mine["id"], decision=dict(d, outcome="withdrawn", withdrawn_at=now(),
                                                               verdict=f"{d['verdict']}; withdrawn: {reason}"))
        return


def baseline_reproduced_since(ledger: Ledger, program: Program, since: str) -> bool:
    """Whether the baseline's re-runs of its seeds (the runner's `repeat` runs) that ended after
    `since` landed where its first runs did, and there is one: the program's own code gives the
    bits it gave, so a frontier's canary that missed then is its code's doing."""
    runs = ledger.runs(program.name, arm="baseline", status="completed")
    first = {r["seed"]: r["val_bpb"] for r in runs if r["purpose"] == "main" and r["val_bpb"] is not None}
    later = [r for r in runs if r["purpose"] == "repeat" and (r["finished_at"] or "") > since
             and r["val_bpb"] is not None and r["seed"] in first]
    return bool(later) and all(abs(r["val_bpb"] - first[r["seed"]]) <= REPRODUCED for r in later)


def built_on_withdrawn(lab: Lab, experiments: list[dict], commit: str, who: str) -> str | None:
    """Why `who`'s try may not run: its code holds another's withdrawn code change, which would
    come back in unseen: built on that frontier's commit (an agent's worktree still there), or the
    change made again (a plain `git rebase` onto the frontier replays the withdrawn author's
    commit, and a copy of its tree is a new commit): its diff taken out of the try's code applies.
    Its own, an author may make again (which of the stack's changes told runs apart is not known;
    one that does it again is caught again, and withdraws its own keep with the rest)."""
    for e in lineage(experiments):
        if e["decision"]["outcome"] != "withdrawn" or e["who"] == who:
            continue
        before = next(f for f in frontiers(experiments, withdrawn=True) if f["arm"] == e["versus"])
        if e["code_commit"] == before["code_commit"]:  # a change of overrides only
            continue
        holds = lab.repo.is_ancestor(e["code_commit"], commit)
        if not holds:
            with tempfile.NamedTemporaryFile("w", suffix=".patch") as f:
                f.write(lab.repo.git.diff("--binary", "--no-ext-diff", "--no-textconv", before["code_commit"],
                                          e["code_commit"]) + "\n")
                f.flush()
                holds = patched(lab, commit, Path(f.name), reverse=True)[0] is not None
        if holds:
            return (f"its code holds {e['arm']}'s change ({e['code_commit'][:10]}), withdrawn: "
                    f"{e['decision']['verdict'].rsplit('; withdrawn: ', 1)[-1]}; make the try on the frontier's "
                    "commit without it (a rebase replays its commits: cherry-pick your own)")
    return None


def origin(experiments: list[dict], front: dict) -> dict | None:
    """The kept try a frontier-N is (its code and config), or None: the baseline."""
    return next((e for e in lineage(experiments) if e["decision"].get("frontier_after") == front["arm"]), None)


def judged_against(ledger: Ledger, program: Program, experiments: list[dict], front: dict) -> list[dict]:
    """The runs a try is paired with: the frontier's main runs, where the frontier is a kept try
    re-measured, that try's own runs on every seed it ran (the same code, config and seeds).
    The re-runs run the agent's code again, and it may tell them apart (its run's folder, the
    time): trained worse there, every later try read `better` against them; padded with sleeps,
    their wall times widened every later try's margin for hidden compute. They still show in
    the report (remeasured: bit for bit, or not), and count for seeds added since (org extend)."""
    runs = ledger.runs(program.name, experiment_id=front["id"])
    kept = origin(experiments, front)
    if kept is None:  # the baseline: the program's own code, its re-runs too
        return runs
    own = [r for r in ledger.runs(program.name, experiment_id=kept["id"]) if r["purpose"] == "main"]
    seeds = {r["seed"] for r in own}
    return own + [r for r in runs if r["purpose"] == "main" and r["seed"] not in seeds]


def unseen_work(program: Program, c) -> str | None:
    """Why a `better` is not kept all the same: under a budget of FLOPs (or steps, or tokens), a
    try whose runs took more wall time per FLOP than the frontier's, beyond the machine's noise
    (the referee's wall-time warning, +16% to +49%). The referee calls it `better` with a warning,
    as honest code can be slower per FLOP; but so is one that trains 1.4x what it is charged for,
    and nothing else tells them apart. A keep moves the frontier every later try is judged
    against, with no person to read the warning: it waits for the runner's clock to agree.
    (Under a seconds budget the time is the budget, and a code arm over it is invalid already.)"""
    if program.budget.per_run.kind == "seconds":
        return None
    return next((f"{f.text} (a keep needs the runner's clock to agree with the FLOP count)" for f in c.warnings
                 if f.check == "wall time" and f.text.endswith(UNSEEN_WORK)), None)


def unseen_since_baseline(ledger: Ledger, program: Program, experiments: list[dict], runs: list[dict],
                          front: dict) -> str | None:
    """unseen_work against the program's baseline, where the frontier is a kept try: each keep may
    take up to +16% more wall time per FLOP than its frontier (the machine's noise besides), and
    padded with sleeps, a kept try's runs let the next one train that much more, unseen: a chain
    of keeps added it up (1.14^k)."""
    if origin(experiments, front) is None:  # the frontier is the baseline: unseen_work judged it so
        return None
    baseline = next(e for e in experiments if e["arm"] == "baseline")
    base_runs = [r for r in ledger.runs(program.name, experiment_id=baseline["id"]) if r["purpose"] == "main"]
    declared = frozenset(DECLARABLE) - {program.budget.per_run.kind}
    why = unseen_work(program, compare(base_runs, runs, "superiority", alpha=program.claim.alpha, declared=declared))
    return why and f"against the program's baseline, {why}"


def climb(ledger: Ledger, program: Program, experiments: list[dict], e: dict, front: dict, d: dict) -> dict:
    """A try that passed at the program's scale, at the ladder's rungs in turn (its runs and its
    frontier's at each rung's overrides, every seed), then on fresh seeds drawn now (the last
    rung: the program's config, program.fresh_seeds of them, which no code committed before could
    know: a seed-keyed gain, referee.replicate). Kept once `better` holds at every rung, discarded
    at the first where it does not: at a ladder rung at alpha (the keep test was the first
    scale's), on fresh seeds at the keep test's own LORD++ level, since a pass on the program's
    seeds can be made to order and one on fresh seeds cannot (at plain alpha a try that changes
    nothing but knows the seeds would be kept once in twenty, try after try). Its LORD++ test
    counts as a discovery once it is kept (rule_of).

    A frontier that is a kept try is an agent's code, which may train worse when it runs again
    later (the time tells it): at a ladder rung its kept try's own runs stand for it, as in
    judged_against; on fresh seeds it must run again, and canaries go with those runs
    (plan_canaries): a try that meets a frontier's miss is untested, the frontier is withdrawn once
    the baseline has reproduced a run since (withdraw_unreproduced: the tries against it then are
    stale), and a try that does not reproduce itself could not be a frontier."""
    declared = frozenset(DECLARABLE) - {program.budget.per_run.kind}
    kept = origin(experiments, front)
    while True:
        rung = d["rung"]
        fresh = rung > len(program.ladder)
        purpose = "replicate" if fresh else f"rung{rung}"
        runs_of = lambda x: [r for r in ledger.runs(program.name, experiment_id=x["id"]) if r["purpose"] == purpose]
        pair = [runs_of(front), runs_of(e)]
        if fresh:  # the frontier's fresh runs of this try's seeds (another try climbing against it draws its own)
            mine = {r["seed"] for r in pair[1]}
            pair[0] = [r for r in pair[0] if r["seed"] in mine]
        elif kept:  # the kept try's own runs at this rung, then the frontier's of seeds added since
            own = runs_of(kept)
            pair[0] = own + [r for r in pair[0] if r["seed"] not in {r["seed"] for r in own}]
        where = (f"{len(pair[1])} fresh seeds" if fresh else
                 f"rung {rung} ({', '.join(f'{k}={v}' for k, v in program.ladder[rung - 1].items())})")
        moved = fresh and kept and unreproduced(ledger, program, experiments, front)  # (a miss that withdrew it:
        if moved:  # this try is stale before it gets here; else a seconds budget, or no baseline control yet)
            return dict(d, outcome="untested", verdict=f"{d['verdict']} at the program's scale, untested at fresh "
                        f"seeds: {front['arm']} did not reproduce a run of {kept['arm']}, its kept try ({moved}): "
                        "its re-runs are no yardstick")
        if not all(pair):
            seeds = draw_seeds(ledger.runs(program.name), program.fresh_seeds) if fresh else program.budget.seeds
            plan_rung(ledger, program, e, rung, seeds)
            plan_rung(ledger, program, front, rung, [s for s in seeds if s not in {r["seed"] for r in pair[0]}])
            return dict(d, canaries=plan_canaries(ledger, program, e, front, kept, seeds)) if fresh else d
        canaries = [ledger.run(i) for i in d.get("canaries", []) if fresh]
        if any(r["status"] not in FINISHED for r in pair[0] + pair[1] + canaries):
            return d
        # a frontier run or a canary that did not complete is not the try's to answer for (and code that
        # fails some of its re-runs spoils none of them: no canary misses for good there)
        lost = [r for r in pair[0] + canaries if r["status"] != "completed"] if fresh else []
        if lost:
            return dict(d, outcome="untested", verdict=f"{d['verdict']} at the program's scale, untested at {where}: "
                        f"{lost[0]['arm']}'s {lost[0]['purpose']} run of a fresh seed ended {lost[0]['status']}")
        front_runs, runs = ([dict(r, purpose="main") for r in rs] for rs in pair)  # the referee pairs main runs
        level = d["level"] if fresh else program.claim.alpha  # (fresh seeds: the test the rule rests on)
        c = compare(front_runs, runs, "superiority", alpha=level, declared=declared)
        held = dict(rung=rung, level=level, overrides={} if fresh else program.ladder[rung - 1], delta=c.mean, n=c.n,
                    p=c.p_better, verdict=c.verdict)
        d = dict(d, rungs=d["rungs"] + [held], decided_at=now())
        slower = unseen_work(program, c)
        if verdict_kind(c.verdict) != "better" or slower or (fresh and c.n < len(pair[1])):  # (a run failed there)
            return dict(d, outcome="discarded", verdict=f"{d['verdict']} at the program's scale, but not at {where}: "
                                                        f"{c.verdict}" + (f"; not kept: {slower}" if slower else ""))
        moved = fresh and unreproduced(ledger, program, experiments, e)
        if moved:
            return dict(d, outcome="discarded", verdict=f"{d['verdict']} at the program's scale, {c.verdict} at {where}; "
                        f"not kept: it did not reproduce its own run of a fresh seed ({moved}), and a frontier's "
                        "re-runs must, for the tries after it to be judged against them")
        if rung == len(program.ladder) + (1 if program.fresh_seeds else 0):
            current = frontier(ledger.experiments(program.name))
            if current["id"] != front["id"]:
                return dict(d, outcome="stale", verdict=f"stale (held at every rung, against {front['arm']}; "
                                                        f"{current['arm']} is the frontier now: submit it again)")
            return dict(d, outcome="kept", verdict=f"{d['verdict']}; held at {where} (Δ {c.mean:+.4f})")
        d = dict(d, rung=rung + 1)


CANARIES = 2  # a frontier's canaries per try: code that spoils a share q of its re-runs is seen with 1-(1-q)^2


def plan_canaries(ledger: Ledger, program: Program, e: dict, front: dict, kept: dict | None, seeds: list[int]) -> list[int]:
    """Runs of code again on a seed it ran before, which must land where that run did (unreproduced):
    the try once more on one of the fresh seeds just drawn (code that does not reproduce itself
    could not be a frontier), and a frontier that is a kept try on CANARIES of the fresh seeds that
    try ran before its keep. Each at random, in a random round among this try's fresh runs: no agent
    was told those seeds, so the code cannot tell a canary from the runs the try is judged against."""
    budget = program.budget.per_run.kind, program.budget.per_run.value
    plans = [(e, secrets.choice(seeds))]
    if kept:
        done = [r["seed"] for r in ledger.runs(program.name, experiment_id=kept["id"])
                if r["purpose"] == "replicate" and r["status"] == "completed"]
        plans += [(front, done.pop(secrets.randbelow(len(done)))) for _ in range(min(CANARIES, len(done)))]
    return [ledger.add_run(x, "canary", seed, 1 + secrets.randbelow(len(seeds)), config(program, x), budget)
            for x, seed in plans]


def unreproduced(ledger: Ledger, program: Program, experiments: list[dict], x: dict) -> str | None:
    """How the first of x's completed canaries missed the run it repeats, or None (missed_canary)."""
    miss = missed_canary(ledger, program, experiments, x)
    return miss and said(*miss)


def missed_canary(ledger: Ledger, program: Program, experiments: list[dict], x: dict) -> tuple[dict, dict] | None:
    """The first of x's completed canaries that missed the run it repeats (the kept try's, for a
    frontier), and that run; or None. A miss is one past tolerance() (one that did not complete:
    climb)."""
    canaries = [r for r in ledger.runs(program.name, experiment_id=x["id"], purpose="canary")
                if r["status"] == "completed" and r["val_bpb"] is not None]
    if not canaries:  # (the usual case, and a cheap one: climb asks on every recorded run)
        return None
    first = {r["seed"]: r for r in ledger.runs(program.name, experiment_id=(origin(experiments, x) or x)["id"],
                                               purpose="replicate") if r["val_bpb"] is not None}
    limit = tolerance(program, ledger)
    for canary in canaries:
        was = first.get(canary["seed"])
        if was is not None and limit is not None and abs(canary["val_bpb"] - was["val_bpb"]) > limit:
            return canary, was
    return None


def said(canary: dict, was: dict) -> str:
    return f"val_bpb {was['val_bpb']:.4f}, then {canary['val_bpb']:.4f} on the same seed"


def tolerance(program: Program, ledger: Ledger) -> float | None:
    """How far a run of the same code, config and seed may land from the first: nowhere under a
    budget of FLOPs, steps or tokens (the trainer is deterministic: REPRODUCED); under one of
    seconds the steps follow the machine's load, and the baseline's own re-runs of a seed show how
    far (3x the most one moved), or None: nothing measured yet, no canary is judged."""
    if program.budget.per_run.kind != "seconds":
        return REPRODUCED
    by_seed = {}
    for r in ledger.runs(program.name, arm="baseline", status="completed"):
        if r["purpose"] in ("main", "repeat") and r["val_bpb"] is not None:
            by_seed.setdefault(r["seed"], []).append(r["val_bpb"])
    moved = [max(v) - min(v) for v in by_seed.values() if len(v) > 1]
    return 3 * max(moved) + REPRODUCED if moved else None


def draw_seeds(runs: list[dict], n: int) -> list[int]:
    """n seeds no run of the program has used, drawn now (secrets: no agent predicts them)."""
    used, seeds = {r["seed"] for r in runs}, []
    while len(seeds) < n:
        seed = secrets.randbelow(2**31)
        if seed not in used | set(seeds):
            seeds.append(seed)
    return seeds


def config(program: Program, experiment: dict) -> dict:
    """The overrides an experiment's runs train with: the baseline's, then its own."""
    return {**program.baseline.overrides, **json.loads(experiment["overrides"])}


def plan_multiplier(ledger: Ledger, program: Program, experiment: dict):
    """The frontier's runs at the compute multiplier's multiples of the per-run budget (purpose
    x0.5, x2, ...: the referee pairs none of them), on its first seeds."""
    m = program.compute_multiplier
    overrides = config(program, experiment)
    kind, value = program.budget.per_run.kind, program.budget.per_run.value
    for factor in (m.budgets if m else []):
        amount = max(1, round(value * factor)) if kind in ("steps", "tokens") else value * factor
        for i, seed in enumerate(program.budget.seeds[:m.seeds]):
            ledger.add_run(experiment, f"x{factor:g}", seed, 1 + i, overrides, (kind, amount))


def plan_rung(ledger: Ledger, program: Program, experiment: dict, rung: int, seeds: list[int]):
    """The experiment's runs at a rung of the ladder (its config plus the rung's overrides), or
    past the ladder, on fresh seeds (its config as it is)."""
    fresh = rung > len(program.ladder)
    overrides = {**config(program, experiment), **({} if fresh else program.ladder[rung - 1])}
    budget = program.budget.per_run.kind, program.budget.per_run.value
    for i, seed in enumerate(seeds):
        ledger.add_run(experiment, "replicate" if fresh else f"rung{rung}", seed, 1 + i, overrides, budget)


# --- the program branch ------------------------------------------------------------------

def sync_branch(lab: Lab, ledger: Ledger, program: Program) -> str | None:
    """Move program/<name> to the frontier's commit (idempotent: after a crash, the next call
    does it). Not while the branch is checked out somewhere: a person's checkout stays as it is."""
    front = frontier(ledger.experiments(program.name)) if program.claim.kind == "improve" else None
    branch = f"program/{program.name}"
    if not front or branch not in lab.repo.heads or lab.resolve(branch) == front["code_commit"]:
        return None
    if any(w["branch"] == branch for w in lab.worktrees()):
        return None
    lab.harden()
    lab.repo.git.update_ref(f"refs/heads/{branch}", front["code_commit"])
    return front["code_commit"]


# --- the program file's candidates -------------------------------------------------------

def check_candidates(lab: Lab, program: Program, base: str, source: str):
    """Each candidate's patch: committed in the lab (the agents' worktrees have only what is),
    applies to the base commit, and changes no protected path. One ProgramError line if not."""
    for i, c in enumerate(program.candidates):
        if not c.patch:
            continue
        where = f"{source}: candidates[{i}].patch ({c.name})"
        path = Path(c.patch)
        if path.is_absolute() or not (lab.root / path).is_file():
            raise ProgramError(f"{where}: no file {quoted(c.patch)} in the lab (a path relative to {lab.root})")
        try:
            lab.repo.git.ls_files("--error-unmatch", c.patch)
        except git.GitCommandError:
            raise ProgramError(f"{where}: {quoted(c.patch)} is not committed; the agents' worktrees would not have it") from None
        commit, why = patched(lab, base, lab.root / path)
        if why:
            raise ProgramError(f"{where}: does not apply to the base commit {base[:10]}: {why}")
        problem = code_refusal(lab, base, commit, program.protected, program.max_change_kb)
        if problem:
            raise ProgramError(f"{where}: changes what no experiment may: {problem}")


def patched(lab: Lab, base: str, patch: Path, reverse: bool = False) -> tuple[str | None, str | None]:
    """A commit of base with the patch applied (or taken out: reverse), made in a scratch index
    (nothing checked out changes), or (None, git's complaint)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**HARNESS, "GIT_INDEX_FILE": str(Path(tmp) / "index")}  # on top of the hardened env
        lab.harden()
        try:
            lab.repo.git.read_tree(base, env=env)
            lab.repo.git.apply("--cached", *["-R"] * reverse, str(patch), env=env)
            tree = lab.repo.git.write_tree(env=env)
        except git.GitCommandError as e:
            said = (e.stderr or "").strip().removeprefix("stderr: '").removesuffix("'")  # (GitPython's wrapping)
            lines = [s.strip() for s in said.splitlines() if s.strip()]
            return None, (lines[0] if lines else "git apply failed")
        return lab.repo.git.commit_tree(tree, "-p", base, "-m", f"check {patch.name}", env=env), None


def check_try(program: Program, overrides: dict, commit: str, front: dict) -> str | None:
    """Why a try is no try at all: it changes nothing against the frontier."""
    if commit == front["code_commit"] and json.loads(front["overrides"]) == overrides:
        return f"it changes nothing against the frontier ({front['arm']}): same code, same overrides"
    return None
