"""
An improvement program's story, for its report (org/improve.py decides; this tells): the points
of progress.png, the markdown section (the rule, the path, every try, the leave-one-out pass),
and the one line `org status` prints.

    progress(experiments, runs, llm)       -> one point per decided try
    section(spec, experiments, runs, llm)  -> the report's frontier section
    frontier_line(experiments)             -> "frontier: frontier-2 (...): 3 kept, ..."
    kept_multiplier(spec, runs, kept, front) -> a kept try's compute multiplier (x, extrapolated)
"""
from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime

import numpy as np

from org import code_span, one_line
from org.improve import OUTCOMES, ablations, frontier, frontiers, lineage, tries
from org.referee import adjust, compare, verdict_kind

def mean_bpb(runs: list[dict]) -> float | None:
    values = [r["val_bpb"] for r in runs if r.get("status") == "completed" and r.get("purpose") == "main"
              and r.get("val_bpb") is not None]
    return sum(values) / len(values) if values else None


def progress(experiments: list[dict], runs: list[dict], llm: list[dict]) -> list[dict]:
    """One point per decided try, in order: when (wall hours since the program's first
    experiment, runner hours spent by then, LLM dollars by then), the try's own mean val_bpb,
    its outcome, and the frontier's mean val_bpb after it. The first point is the baseline, at
    the program's start."""
    fronts = frontiers(experiments)
    if not fronts:
        return []
    by_experiment: dict[int, list[dict]] = {}
    for r in runs:
        by_experiment.setdefault(r["experiment_id"], []).append(r)
    start = _time(min(e["created_at"] for e in experiments))
    front_bpb = {f["arm"]: mean_bpb(by_experiment.get(f["id"], [])) for f in fronts}
    steps = lineage(experiments)

    def at(when: str, outcome: str, arm: str, bpb, frontier_arm: str) -> dict:
        t = _time(when)
        spent = sum((r.get("wall_seconds") or 0) + (r.get("measure_seconds") or 0) for r in runs
                    if r.get("finished_at") and _time(r["finished_at"]) <= t)
        dollars = sum(s.get("dollars") or 0 for s in llm if s.get("created_at") and _time(s["created_at"]) <= t)
        return dict(arm=arm, outcome=outcome, val_bpb=bpb, frontier=frontier_arm,
                    frontier_bpb=front_bpb.get(frontier_arm), wall_hours=(t - start) / 3600,
                    compute_hours=spent / 3600, dollars=dollars)

    points = [at(fronts[0]["created_at"], "baseline", "baseline", front_bpb["baseline"], "baseline")
              ] if fronts[0]["arm"] == "baseline" else []  # where the program starts: nothing spent
    current = "baseline"
    for e in steps:
        d = e["decision"]
        current = d.get("frontier_after") if d["outcome"] == "kept" else current  # (a withdrawn one: no step)
        own = mean_bpb(by_experiment.get(e["id"], []))
        point = at(d["decided_at"], d["outcome"], e["arm"], own, current)
        if point["frontier_bpb"] is None and d["outcome"] == "kept":  # not re-measured yet: its own runs
            point["frontier_bpb"] = own
        points.append(point)
    return points


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def section(spec: dict, experiments: list[dict], runs: list[dict], llm: list[dict]) -> str:
    """The report's frontier section (markdown): the rule, the path, every try (its effect on
    val_bpb and on training time, separately), the leave-one-out pass, the progress."""
    claim = spec.get("claim") or {}
    if claim.get("kind") != "improve":
        return ""
    steps, points = lineage(experiments), progress(experiments, runs, llm)
    counts = {o: sum(e["decision"]["outcome"] == o for e in steps) for o in OUTCOMES}
    waiting = [e["arm"] for e in tries(experiments) if not e.get("decision")]
    lines = ["## The frontier", "",
             f"Open-ended: each try is measured against the frontier of its time (paired seeds) and kept only "
             f"when the referee says `better` at the level LORD++ gives it (online FDR {claim.get('alpha', 0.05):g} "
             "over every keep decision; org/frontier.py) and the held-out split agrees at that level. A kept "
             "try becomes the next frontier, re-measured on every seed, and the program branch moves to it.", "",
             f"{len(steps)} tries decided: " + (", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o]) or "none")
             + (f"; waiting: {', '.join(waiting)}" if waiting else "") + "."]
    path = [p for p in points if p["outcome"] in ("baseline", "kept")]
    if path:
        lines += ["", "Path: " + " → ".join(
            f"{p['frontier']} ({_g(p['frontier_bpb'])})" + (f" [kept {p['arm']}]" if p["outcome"] == "kept" else "")
            for p in path)]
        lines += [remeasured(e, experiments, runs) for e in steps if e["decision"]["outcome"] == "kept"]
    lines += [f"- {f['arm']} withdrawn: {one_line(f['reason'])}" for f in frontiers(experiments, withdrawn=True)
              if f["stage"] == "withdrawn"]
    if steps:
        lines += ["", "| # | try | who | versus | change | n | Δ val_bpb | compute × | run time Δ | p | level "
                  "| decision |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        arms = {f["arm"]: f for f in frontiers(experiments, withdrawn=True)}
        for e in steps:
            d = e["decision"]
            slower = time_change(runs, e, arms.get(d["frontier"]))
            worth = kept_multiplier(spec, runs, e, arms.get(d["frontier"])) if d["outcome"] == "kept" else None
            worth = worth if worth in (None, "pending") else f"×{worth[0]:.2f}" + " (extrapolated)" * worth[1]
            lines.append(f"| {d['seq']} | {e['arm']} | {one_line(e['who'])} | {d['frontier']} | "
                         f"{change_text(e, experiments).replace('|', '/')} "
                         f"| {d['n']} | {_g(d['delta'], '+.4f')} | {worth or '—'} | {_g(slower, '+.1%')} "
                         f"| {_g(d['p'], '.2g')} "
                         f"| {_g(d['level'], '.2g')} | **{d['outcome']}**: {one_line(d['verdict']).replace('|', '/')} |")
    if spec.get("compute_multiplier") and steps:
        lines += ["", "compute ×: the multiple of the per-run budget at which the frontier before a kept try reaches "
                  "the try's val_bpb (its runs at " + ", ".join(f"{f:g}" for f in spec["compute_multiplier"]["budgets"])
                  + "x the budget, linear in log budget; means over the first "
                  f"{spec['compute_multiplier'].get('seeds', 3)} seeds). Run time Δ is its effect on the runner's clock, apart."]
    lines += ablation_lines(experiments, runs)
    if len(path) > 0 and points:
        first, last = points[0], points[-1]
        ends = first["frontier_bpb"], last["frontier_bpb"]
        gain = ends[1] - ends[0] if None not in ends else None
        lines += ["", f"Progress: the frontier moved {_g(gain, '+.4f')} val_bpb in {last['compute_hours']:.2f} runner hours "
                  f"({_g(gain / last['compute_hours'] if gain is not None and last['compute_hours'] else None, '+.4f')} "
                  f"per runner hour) and {last['wall_hours']:.2f} wall hours; LLM dollars "
                  + (f"${last['dollars']:.2f} ({_g(gain / last['dollars'], '+.4f')} per dollar)." if last["dollars"]
                     else "$0 (a scripted org: per dollar is not defined).")]
    return "\n".join(lines)


def frontier_line(experiments: list[dict]) -> str:
    """'frontier: frontier-1 (kept: matrix-lr) · 4 tries decided: 1 kept, 3 discarded'."""
    steps, front = lineage(experiments), frontier(experiments)
    told = Counter(e["decision"]["outcome"] for e in steps)
    kept = ", ".join(e["arm"] for e in steps if e["decision"]["outcome"] == "kept") or "nothing"
    return (f"frontier: {front['arm'] if front else 'baseline'} (kept: {kept}) · {len(steps)} tries decided"
            + (": " + ", ".join(f"{told[o]} {o}" for o in OUTCOMES if told[o]) if told else ""))


def remeasured(kept: dict, experiments: list[dict], runs: list[dict]) -> str:
    """The new frontier's runs against the kept try's own, seed by seed: the same code and config
    on the same seeds, so a deterministic trainer gives the same bits (a difference is said)."""
    arm = kept["decision"].get("frontier_after")
    front = next((f for f in frontiers(experiments) if f["arm"] == arm), None)
    finals = lambda e: {r["seed"]: r["val_bpb"] for r in runs if e and r["experiment_id"] == e["id"]
                        and r.get("purpose") == "main" and r.get("status") == "completed"}
    mine, theirs = finals(kept), finals(front)
    seeds = sorted(mine.keys() & theirs.keys())
    if not seeds:
        return f"- {arm}: not re-measured yet."
    gap = max(abs(mine[s] - theirs[s]) for s in seeds)
    same = sum(mine[s] == theirs[s] for s in seeds)
    return (f"- {arm} re-measured on {len(seeds)} seeds: " + (f"identical to {kept['arm']}'s runs on every seed (bit "
            "for bit: the trainer is deterministic)" if same == len(seeds) else
            f"differs from {kept['arm']}'s runs by up to {gap:.2g} ({same} of {len(seeds)} identical)") + ".")


def ablation_lines(experiments: list[dict], runs: list[dict]) -> list[str]:
    """`org ablate`: each kept change taken out of the frontier, the frontier against that, Holm
    over the family: does each still help in the stack?"""
    done = ablations(experiments)
    if not done:
        return []
    arms = {f["arm"]: f for f in frontiers(experiments, withdrawn=True)}
    of = lambda e: [r for r in runs if r["experiment_id"] == e["id"]]
    raw = [compare(of(e), of(arms[e["versus"]]), "superiority") for e in done]
    lines = ["", "Leave-one-out (`org ablate`): each kept change taken out of the frontier; Δ = frontier − "
             "without it, paired by seed, Holm over the kept changes:"]
    for e, c in zip(done, adjust(raw)):
        if e["stage"] == "refused":
            lines.append(f"- {e['arm']}: not run: {one_line(e['reason'])}")
            continue
        numbers = "" if c.mean is None else f"Δ {c.mean:+.4f} (n={c.n}): "
        helps = "still helps" if verdict_kind(c.verdict) == "better" else "not shown to still help"
        lines.append(f"- {e['arm']}: {numbers}{helps} ({c.verdict})")
    return lines


def time_change(runs: list[dict], e: dict, front: dict | None) -> float | None:
    """The try's run time against its frontier's, paired by seed (the runner's clock: the trainer's
    own train_seconds is the agent's code's word): a change that lowers the loss at equal FLOPs
    but slows every step shows both."""
    def seconds(x):
        return {r["seed"]: r.get("wall_seconds") for r in runs if x and
                r["experiment_id"] == x["id"] and r.get("purpose") == "main" and r.get("status") == "completed"}
    mine, theirs = seconds(e), seconds(front)
    seeds = [s for s in mine.keys() & theirs.keys() if mine[s] and theirs[s]]
    return sum(mine[s] for s in seeds) / sum(theirs[s] for s in seeds) - 1 if seeds else None


def change_text(e: dict, experiments: list[dict]) -> str:
    """What a try changes against its frontier: its own overrides, and files of its diff."""
    front = next((f for f in frontiers(experiments, withdrawn=True) if f["arm"] == e["versus"]), None)
    mine, theirs = json.loads(e["overrides"]), json.loads(front["overrides"]) if front else {}
    keys = [code_span(f"{k}={v}") for k, v in mine.items() if theirs.get(k) != v]
    code = diff_summary(e.get("diff"))
    return ", ".join(keys + [f"code: {one_line(code)}"] * bool(code)) or "nothing"


def _g(value, fmt: str = ".4f") -> str:
    return "—" if value is None else format(value, fmt)


def diff_summary(diff: str | None) -> str:
    """'trainer/model.py +3 -1, ...' from a unified diff."""
    if not diff:
        return ""
    files, current = {}, None
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            current = line.split(" b/", 1)[-1]
            files[current] = [0, 0]
        elif current and line.startswith("+") and not line.startswith("+++"):
            files[current][0] += 1
        elif current and line.startswith("-") and not line.startswith("---"):
            files[current][1] += 1
    cut = ", and more: the diff kept was cut" if "\n... (cut: the diff goes on past" in diff else ""  # (org/experiments.py)
    return ", ".join(f"{f} +{a} -{d}" for f, (a, d) in files.items()) + cut


# --- compute multipliers (org/improve.py plan_multiplier runs them) ----------------------------

def multiplier(curve: dict[float, float], loss: float) -> tuple[float, bool] | None:
    """The multiple of the budget at which a frontier whose mean val_bpb at each multiple is
    `curve` reaches `loss`: linear in log2(multiple) between measured points, and along the
    nearest segment beyond them (extrapolated: True). None without two points."""
    if len(curve) < 2:
        return None
    y, x = zip(*sorted((bpb, math.log2(f)) for f, bpb in curve.items()))  # by loss: compute falls
    if y[0] <= loss <= y[-1]:
        return 2 ** float(np.interp(loss, y, x)), False
    i, j = (0, 1) if loss < y[0] else (-2, -1)
    if y[j] == y[i]:
        return None
    return 2 ** (x[i] + (x[j] - x[i]) * (loss - y[i]) / (y[j] - y[i])), True


def kept_multiplier(spec: dict, runs: list[dict], kept: dict, front: dict | None) -> tuple[float, bool] | str | None:
    """A kept try's compute multiplier against the frontier before it (compute_multiplier.seeds
    first seeds, means over them); 'pending' while those runs run; None if one of them failed."""
    m = spec.get("compute_multiplier")
    if not m or not front:
        return None
    seeds = set(spec["budget"]["seeds"][:m.get("seeds", 3)])
    ours = [r for r in runs if r["experiment_id"] in (front["id"], kept["id"]) and r["seed"] in seeds]
    if any(r.get("status") in ("queued", "running") for r in ours):
        return "pending"

    def mean(experiment, purpose):
        values = [r.get("val_bpb") for r in ours if r["experiment_id"] == experiment["id"]
                  and r.get("purpose") == purpose and r.get("status") == "completed"]
        return sum(values) / len(values) if len(values) == len(seeds) and None not in values else None
    curve = {1.0: mean(front, "main"), **{f: mean(front, f"x{f:g}") for f in m["budgets"]}}
    loss = mean(kept, "main")
    return None if loss is None or None in curve.values() else multiplier(curve, loss)
