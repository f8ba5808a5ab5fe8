"""
`org compare A B ...`: how quickly did each org make real progress on the same question?

Two org configurations (topology, prompts, models, the scripted control) run as improvement
programs that differ only in their org; this reads each ledger (read-only) and prints one table:
tries decided and kept, the confirmed frontier's gain over the baseline, the runner hours and
wall hours it took, and the gain per runner hour and per LLM dollar. Programs whose measurements
differ (baseline, data, per-run budget, seeds, trainer settings, claim) are refused in one line:
their gains would not be comparable.

    org compare improve improve-claude
    org compare improve improve-claude --json
"""
from __future__ import annotations

import json

from org import OrgError
from org.improve import OUTCOMES, lineage
from org.improve_story import progress
from org.ledger import LedgerError
from org.ledger_read import read_tables
from org.program import MEASUREMENT_BUDGET
from org.workspace import as_current_schema, find_ledger

# what the gains are measured by: the rest of a program (its org, its candidates) may differ
SAME = ("claim", "ladder", "compute_multiplier", "metric", "baseline", "data", "train", "protected")


def add_compare_command(sub):
    p = sub.add_parser("compare", help="one table: the progress of improvement programs that differ only in their org")
    p.add_argument("programs", nargs="+", metavar="PROGRAM", help="two or more started improvement programs")
    p.add_argument("--json", action="store_true", help="the rows as JSON")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    if len(args.programs) < 2:
        raise OrgError("compare: name two or more programs (one org configuration each)")
    rows = [standing(name) for name in args.programs]
    names = [r["program"] for r in rows]
    if len(set(names)) < len(names):  # (`compare i7 i7`, or i7 and its file: one row twice)
        raise OrgError(f"compare: {next(n for n in names if names.count(n) > 1)} is named twice; name each program once")
    check_comparable(rows)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "spec"} for r in rows], indent=2))
        return 0
    print_table(rows)
    return 0


def standing(arg: str) -> dict:
    """One program's row, from its ledger."""
    _, name, path = find_ledger(arg)
    try:
        tables, _, _ = read_tables(path, name, ("programs", "experiments", "runs", "llm_spend"))
    except LedgerError as e:
        raise OrgError(str(e)) from None
    spec = as_current_schema(json.loads(tables["programs"][0]["spec"])) if tables["programs"] else {}
    if (spec.get("claim") or {}).get("kind") != "improve":
        raise OrgError(f"compare: {name} is not an improvement program (claim.kind improve): "
                       "there is no frontier to compare")
    points = progress(tables["experiments"], tables["runs"], tables["llm_spend"])
    steps = lineage(tables["experiments"])
    first, last = points[0] if points else {}, points[-1] if points else {}
    gain = (last["frontier_bpb"] - first["frontier_bpb"]
            if points and None not in (first["frontier_bpb"], last["frontier_bpb"]) else None)
    hours, dollars = last.get("compute_hours") or 0, last.get("dollars") or 0
    agents = (spec.get("org") or {}).get("agents") or []
    return {"program": name, "spec": spec,
            "org": f"{(spec.get('org') or {}).get('topology', 'solo')}: " + ", ".join(
                f"{a['name']} ({a.get('backend', 'scripted')}{' ' + a['model'] if a.get('model') else ''})"
                for a in agents),
            **{o: sum(e["decision"]["outcome"] == o for e in steps) for o in OUTCOMES},
            "kept_tries": [e["arm"] for e in steps if e["decision"]["outcome"] == "kept"],
            "baseline_bpb": first.get("frontier_bpb"), "frontier_bpb": last.get("frontier_bpb"), "gain": gain,
            "runner_hours": hours, "wall_hours": last.get("wall_hours") or 0, "dollars": dollars,
            "gain_per_runner_hour": gain / hours if gain is not None and hours else None,
            "gain_per_dollar": gain / dollars if gain is not None and dollars else None}


def check_comparable(rows: list[dict]):
    first = rows[0]
    for row in rows[1:]:
        for field in SAME:
            if first["spec"].get(field) != row["spec"].get(field):
                raise OrgError(f"compare: {row['program']}'s {field} differs from {first['program']}'s: their "
                               "gains are not measured the same way (only the org may differ)")
        for field in MEASUREMENT_BUDGET:
            if first["spec"]["budget"].get(field) != row["spec"]["budget"].get(field):
                raise OrgError(f"compare: {row['program']}'s budget.{field} differs from {first['program']}'s: "
                               "their gains are not measured the same way (only the org may differ)")


def print_table(rows: list[dict]):
    from rich.console import Console
    from rich.table import Table
    table = Table(title="the confirmed frontier's progress, per org (lower val_bpb is better)")
    for col in ("program", "org", "tries: " + " / ".join(OUTCOMES), "frontier val_bpb",
                "gain (Δ val_bpb)", "runner h", "wall h", "Δ per runner h", "LLM $", "Δ per $"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["program"], r["org"], " / ".join(str(r[o]) for o in OUTCOMES),
                      f"{fmt(r['baseline_bpb'])} → {fmt(r['frontier_bpb'])}", fmt(r["gain"], "+.4f"),
                      f"{r['runner_hours']:.2f}", f"{r['wall_hours']:.2f}", fmt(r["gain_per_runner_hour"], "+.4f"),
                      f"{r['dollars']:.2f}", fmt(r["gain_per_dollar"], "+.4f"))
    Console(width=200).print(table)


def fmt(value, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)
