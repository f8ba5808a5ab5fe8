"""
Ablation reports: reports/<program>/README.md and PNG plots, generated from the ledger alone.

No agent writes a report; `org report softcap` rebuilds it from what the runner recorded:

    report = build(".lab/softcap/ledger.sqlite", "softcap")   # reads; never writes the ledger
    readme = write(report, "reports/softcap")                  # README.md + *.png
    print_summary(report, readme)                              # rich tables in the terminal
    to_json(report)                                            # the same numbers for machines

The README holds the question and the claim, the verdict table (the referee's: compare ->
adjust (Holm) -> confirm on the held-out split), the noise floor, the budget and how it was
enforced, the lineage of every experiment, and the spend (compute and LLM dollars).

The plots and the learning curves behind them are org/plots.py's; reading a ledger of any
schema is org/ledger_read.py's (read_tables).

Bad input degrades, it does not crash: the ledger is opened read-only and may be from an
older schema (a missing table or column is named, and what depends on it is left out); a
metrics.jsonl with unreadable lines is read around them; an arm with one seed, or a program
with no finished runs, gets the referee's `inconclusive (...)`, never an invented verdict.
Everything missing is listed under "What is missing" at the top of the README.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from org import OrgError, code_span, improve_story, one_line, shown, write_atomically
from org.ledger import FINISHED, LedgerError, loads, shown_seed
from org.ledger_read import read_tables
from org.plots import Curve, finite, plot_all, read_curves
from org.program import fresh_seed_count
from org.confounds import NO_CHANGE
from org.evaluator import SCORED_FACTOR, SETUP_FACTOR, SETUP_GRACE
from org.referee import (NEEDS_CONFIRMATION, Comparison, NoiseFloor, more_seeds, noise_floor, per_seed,
                         read_arm, verdict_kind, verdicts)
from trainer.config import BUDGET_FLAGS

ADJUSTMENT = "holm"  # for the many comparisons an org makes: family-wise error, the strict one
LEDGER_TABLES = ("programs", "experiments", "runs", "llm_spend", "agent_cpu")  # what a report reads
NOT_RUN_YET = ("queued", "running")


class ReportError(OrgError):
    pass


# --- the report's data: everything read once, then rendered three ways (markdown, rich, JSON) ---


@dataclass
class Report:
    program: str
    ledger_path: Path
    spec: dict                      # the program as the ledger recorded it ({} if absent)
    base_commit: str | None
    experiments: list[dict]
    runs: list[dict]
    llm: list[dict]                 # llm_spend rows
    agent_cpu: Counter              # agent -> CPU seconds its own boxes used (agent_cpu rows)
    budget_changes: list[dict] = field(default_factory=list)  # `org budget` log (schema 3 on)
    missing: list[str] = field(default_factory=list)  # what the ledger or the run files lack
    arms: list[str] = field(default_factory=list)
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # arm -> the referee's
    no_verdict: dict[str, str] = field(default_factory=dict)          # arm -> why there is none
    noise: NoiseFloor | None = None
    curves: dict[int, Curve] = field(default_factory=dict)            # run id -> its metrics
    plots: list[str] = field(default_factory=list)                    # file names in the report dir

    def arm_runs(self, arm: str) -> list[dict]:
        return [r for r in self.runs if r.get("arm") == arm]

    def finals(self, arm: str, metric: str = "val_bpb") -> dict[int, float]:
        """Seed -> final val_bpb (or confirm_bpb) of the arm's completed main runs (the referee's reading)."""
        main, _ = read_arm(self.arm_runs(arm))
        return per_seed(main, metric)


def build(ledger_path: str | Path, program: str) -> Report:
    """Read the ledger (read-only) and each run's metrics, and ask the referee for verdicts."""
    report = read_ledger(Path(ledger_path), program)
    report.arms = arms_in_order(report)
    add_verdicts(report)
    read_curves(report)
    return report


# --- reading the ledger: read-only, any schema version --------------------------------


def read_ledger(path: Path, program: str) -> Report:
    try:
        rows, changes, missing = read_tables(path, program, LEDGER_TABLES)
    except LedgerError as e:
        raise ReportError(str(e)) from None
    program_row = rows["programs"][0] if rows["programs"] else {}
    if not program_row:
        missing.append(f"program {program!r} is not in the ledger's programs table: question, claim and budget unknown, so no verdicts")
    spec = loads(program_row.get("spec")) or {}
    agent_cpu = sum((Counter({r["agent"]: r["seconds"]}) for r in rows["agent_cpu"]), Counter())
    return Report(program, path, spec, program_row.get("base_commit"), rows["experiments"],
                  rows["runs"], rows["llm_spend"], agent_cpu, changes, missing)


def arms_in_order(report: Report) -> list[str]:
    """The baseline first, then arms in the order they were proposed."""
    seen = ["baseline", *(row["arm"] for row in report.experiments + report.runs if row.get("arm"))]
    return list(dict.fromkeys(seen)) if report.runs or report.experiments else []


# --- the verdicts: the referee's, never ours ------------------------------------------


def add_verdicts(report: Report):
    """compare every arm with the baseline, adjust the family (Holm), confirm on held-out."""
    runs = report.runs
    if not runs:
        report.missing.append("no runs in the ledger: nothing to compare")
        return
    absent = [c for c in ("arm", "seed", "status") if c not in runs[0]]
    if absent:
        report.missing.append(f"the runs table has no {', '.join(absent)}: runs cannot be paired, no verdicts")
        return
    report.noise = noise_floor(report.arm_runs("baseline"))
    claim = report.spec.get("claim") or {}
    variants = [a for a in report.arms if a != "baseline"]
    if not claim.get("kind"):
        report.no_verdict = {a: "no claim recorded for the program" for a in variants}
        return
    declares = {v.get("name"): frozenset(v.get("declares") or []) for v in report.spec.get("variants", [])}
    rule = "superiority" if claim["kind"] == "improve" else claim["kind"]  # every arm against the baseline
    fresh = None if claim["kind"] == "improve" else fresh_seed_count(claim, (report.spec.get("budget") or {}).get("seeds"))
    report.comparisons, report.no_verdict = verdicts(runs, rule, claim.get("margin", 0.0), declares, ADJUSTMENT,
                                                     variants, fresh)
    if not any(r.get("status") == "completed" for r in runs):
        report.missing.append("no finished runs: every verdict is inconclusive")


# --- writing: README.md and the plots -------------------------------------------------


def write(report: Report, out_dir: str | Path) -> Path:
    """Render the report into out_dir; returns the README's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.plots = plot_all(report, out_dir)
    readme = out_dir / "README.md"
    write_atomically(readme, markdown(report))  # a reader never sees half a report (nor two writers one's)
    return readme


# --- README.md ------------------------------------------------------------------------


def markdown(report: Report) -> str:
    parts = [header(report), missing_section(report), improve_story.section(report.spec, report.experiments, report.runs,
             report.llm), verdict_section(report), per_seed_section(report), noise_section(report),
             plots_section(report), budget_section(report), lineage_section(report), spend_section(report)]
    return "\n\n".join(p for p in parts if p) + "\n"


def header(report: Report) -> str:
    spec = report.spec
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {report.program}: ablation report", "",
             f"_Generated by `org report {report.program}` from the ledger `{report.ledger_path}` "
             f"at {when}. Do not edit: it is rebuilt from the ledger, never written by an agent._", "",
             f"**Question.** {spec.get('question') or 'not recorded'}", "",
             f"**Claim.** {claim_text(spec)}"]
    baseline = spec.get("baseline")
    if baseline:
        lines += ["", f"**Baseline.** preset `{baseline.get('preset')}` {overrides_text(baseline.get('overrides'))}"]
    train, data = spec.get("train"), spec.get("data") or {}
    if train:
        lines += ["", f"**Every run.** batch {train.get('batch_size')} × {train.get('seq_len')} tokens on "
                      f"{train.get('device', 'cpu')}, {train.get('dtype', 'float32')} with "
                      f"{train.get('matmul', 'fp32')} matmuls; data `{data.get('source')}` "
                      f"({data.get('tokenizer')}), {scored_text(report, data.get('val_tokens'))}."]
    machines = Counter(r["machine"] for r in report.runs if r.get("machine"))
    if machines:  # named by harness code where each run trained; a cluster can mix kinds
        lines[-1] += " Trained on " + ", ".join(f"{m} ({n} run{'s' * (n > 1)})" for m, n in machines.most_common()) + "."
    lines += ["", measured_text(report)]
    pending = Counter(r.get("status") for r in report.runs if r.get("status") in NOT_RUN_YET)
    if pending:
        lines += ["", f"**Still in progress:** {counts_text(pending)}; the verdicts below are provisional."]
    return "\n".join(lines)


def scored_text(report: Report, asked: int | None) -> str:
    """The tokens val_bpb is over, as the harness scored them: data.val_tokens, or all the val split holds."""
    held = min((r["eval_tokens"] for r in report.runs if r.get("measurement") and r.get("eval_tokens")), default=None)
    short = held and asked and held + (report.spec.get("train") or {}).get("seq_len", 1) <= asked
    return f"val_bpb over {held or asked} tokens" + (f" (all the lab's val split holds: data.val_tokens asks {asked})" * bool(short))


def measured_text(report: Report) -> str:
    """Where the numbers come from: the harness's evaluation, never the trainer's word."""
    done = [r for r in report.runs if r.get("status") == "completed"]
    unmeasured = [r for r in done if not r.get("measurement")]
    text = ("**Every number is the harness's.** val_bpb, confirm_bpb, FLOPs, tokens, steps and parameter "
            "counts come from the harness's own evaluation of each run's final checkpoint, with the base "
            "commit's evaluation, data and FLOP code in a fresh process (an experiment's code runs there only "
            "as a forward pass whose logits harness code scores and probes for causality), on the lab's own "
            "val and confirm split, drawn by a key no run or agent reads; time is the runner's clock. The trainer's "
            "FLOPs, steps and parameters are a cross-check (a disagreement: `invalid`); the val curves score each run's snapshots.")
    grace = (report.spec.get("budget") or {}).get("measure_grace_seconds", SETUP_GRACE)  # (a ledger before the field: 30)
    if any(e.get("code_commit") not in (None, report.base_commit) for e in report.experiments):  # (code of its own)
        text += (f" An experiment's model, timed beside the base's there, may take {SETUP_FACTOR}x the base's time to "
                 f"build and load, {SCORED_FACTOR:g}x its time per FLOP of scored forward passes, and {g(grace)} s more "
                 "in all (`budget.measure_grace_seconds`), else the run is `invalid`: work there is compute no budget counts. "
                 "**Not ruled out: that forward pass drawing on text its box holds** (the stdlib bytecode's names and strings "
                 "gained 0.18 bpb on pystdlib as an n-gram, 0.36 placed where the val documents' own bytecode says they stand: "
                 "README, \"what is left is enough for such a lookup\"): read a code arm's diff before you trust its gain.")
    if unmeasured:
        text += (f" **Except {len(unmeasured)} of {len(done)} completed runs**, recorded before the harness "
                 f"measured runs: their numbers are the trainer's own; `org run {report.program}` measures them.")
    return text


def claim_text(spec: dict) -> str:
    claim = spec.get("claim") or {}
    metric = spec.get("metric", "val_bpb")
    if claim.get("kind") == "non-inferiority":
        return (f"non-inferiority with margin {g(claim.get('margin'))} {metric}: a variant shows `no regression` "
                f"when the upper one-sided 95% bound of Δ = variant − baseline (paired by seed) is below "
                f"the margin. Lower {metric} is better.")
    if claim.get("kind") in ("superiority", "improve"):
        return ("improve: open-ended tries against a frontier (see The frontier); below, every arm against the "
                "first baseline, " * (claim["kind"] == "improve") + f"superiority: a variant is `better` when the "
                f"Holm-adjusted p of Δ = variant − baseline (paired by seed) < 0 is below 0.05 and |Δ| is above the "
                f"noise floor. Lower {metric} is better.")
    return "not recorded: no verdicts can be given"


def missing_section(report: Report) -> str:
    return "## What is missing\n\n" + "\n".join(f"- {m}" for m in report.missing) if report.missing else ""


def verdict_section(report: Report) -> str:
    if not report.arms:
        return "## Verdicts\n\nNo experiments or runs in the ledger yet: nothing to judge."
    head = ("| arm | seeds | val_bpb mean ± std | Δ vs baseline [one-sided 95% bounds] | p (rule) "
            f"| p better ({ADJUSTMENT.capitalize()}) | verdict | final verdict (held-out) | confounds / warnings |")
    rows = [head, "|" + "---|" * 9]
    for arm in report.arms:
        rows.append("| " + " | ".join(cell(v) for v in verdict_row(report, arm)) + " |")
    family = next(iter(report.comparisons.values())).family if report.comparisons else 0
    notes = [
        "Δ = variant − baseline in val_bpb, paired by seed (negative: the variant is lower, i.e. better). "
        "The two bounds are each one-sided at 95% (together a 90% two-sided interval), from Student's t.",
        f"p (rule) tests the claim's null hypothesis; p better is adjusted with Holm's step-down over the "
        f"{family} comparison{'s' * (family != 1)} with a p-value, and only `better` uses it.",
        "`better` and `no regression` become final only once they hold on the held-out `confirm` split "
        "(confirm_bpb); the final verdict says when they do not, or when that split was not measured. Under a "
        "non-inferiority claim a `better` that holds there only as `no regression` reads as that in both columns.",
    ]
    checks = "".join(f"\n\n{line}" for line in control_lines(report))
    return "## Verdicts\n\n" + "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + checks


def control_lines(report: Report) -> list[str]:
    """Each positive control's verdict against the effect it is known to have: the evidence that
    the program could see an effect of that size at all."""
    lines = []
    for v in [v for v in report.spec.get("variants") or [] if v.get("control")]:
        known, c = v["control"], report.comparisons.get(v["name"])
        what = f"Positive control `{v['name']}` (known to be {known})"
        if c is None:
            lines.append(f"{what}: not measured yet.")
        elif c.verdict.startswith(known) and "(awaiting replication" in c.final_verdict:
            lines.append(f"{what}: **{known}** on the main split, Δ {c.mean:+.4f}; its fresh seeds are to come.")
        elif c.verdict.startswith(known) and c.final_verdict == c.verdict:  # (held on every test it faced)
            lines.append(f"{what}: **{known}**, Δ {c.mean:+.4f}: the program can see an effect of this size.")
        else:
            more = more_seeds(c) if verdict_kind(c.verdict) == "inconclusive" and c.n >= 2 else ""  # (what settles it)
            start = 1 + max((r["seed"] for r in report.runs if r.get("purpose") == "main"), default=-1)
            hint = (f"{more} more seed{'' if more == '1' else 's'} (`org extend {report.program} --seeds {','.join(map(str, range(start, start + int(more))))}"
                    "`: every arm runs on them), or a larger budget per run" if more.isdigit() else "A larger budget per run")
            lines.append(f"**{what} reads {code_span(c.final_verdict)}: the program could not see a known effect, so its "
                         f"other verdicts prove little. {hint}.**")
    return lines


def verdict_row(report: Report, arm: str) -> list[str]:
    finals = report.finals(arm)
    values = list(finals.values())
    spread = f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else (
        f"{values[0]:.4f} (one seed, no std)" if values else "no completed run")
    seeds = ",".join(str(s) for s in sorted(finals)) or "none"
    if arm == "baseline":
        return [arm, seeds, spread, "reference", "", "", "", "", ""]
    c = report.comparisons.get(arm)
    if c is None:
        why = report.no_verdict.get(arm, "not compared")
        return [arm, seeds, spread, "", "", "", f"no verdict ({why})", "", ""]
    delta = "" if c.mean is None else f"{c.mean:+.4f}"
    if c.lower is not None:
        delta += f" [{c.lower:+.4f}, {c.upper:+.4f}]"
    findings = [f"{'no change' if f.check in NO_CHANGE else 'invalid'}: {f.text}" for f in c.confounds]
    findings += [f"warning: {f.text}" for f in c.warnings]
    return [arm, f"{seeds} ({c.n} paired)", spread, delta or "no pairs", p_text(c.p),
            p_text(c.p_better_adjusted), c.verdict, final_text(c), "; ".join(findings) or "none"]


def per_seed_section(report: Report) -> str:
    """The numbers behind the verdicts: each arm's final val_bpb on each seed, the held-out
    confirm_bpb beside it, and each variant's paired difference to the baseline."""
    arms = [a for a in report.arms if report.finals(a)]
    if not arms:
        return ""
    val = {a: report.finals(a) for a in arms}
    held = {a: report.finals(a, "confirm_bpb") for a in arms}
    variants = [a for a in arms if a != "baseline" and "baseline" in val]
    rows = ["| seed | " + " | ".join(arms) + "".join(f" | Δ {a}" for a in variants) + " |",
            "|---:|" + "---:|" * (len(arms) + len(variants))]
    for seed in sorted({s for a in arms for s in val[a]}):
        cells = [pair(val[a].get(seed), held[a].get(seed), "{:.4f}") for a in arms]
        cells += [pair(difference(val, a, seed), difference(held, a, seed), "{:+.4f}") for a in variants]
        rows.append(f"| {seed} | " + " | ".join(cells) + " |")
    return ("## Per seed\n\nval_bpb (confirm_bpb, the held-out split) of each completed main run, measured by "
            "the harness; Δ = variant − baseline on the same seed. A seed that ran twice shows its mean.\n\n"
            + "\n".join(rows))


def pair(value, held, fmt: str) -> str:
    return "not run" if value is None else fmt.format(value) + (f" ({fmt.format(held)})" if held is not None else "")


def difference(finals: dict, arm: str, seed: int) -> float | None:
    v, b = finals[arm].get(seed), finals["baseline"].get(seed)
    return None if v is None or b is None else v - b


def final_text(c: Comparison) -> str:
    """The final verdict, saying what the held-out split said when it confirmed one."""
    if c.final_verdict != c.verdict:
        return c.final_verdict
    if c.confirmation is not None and verdict_kind(c.verdict) in NEEDS_CONFIRMATION:
        there, n = verdict_kind(c.confirmation.verdict), c.replication and c.replication.n
        fresh = n and (f"; so do {n} fresh seeds" if verdict_kind(c.replication.verdict) == there
                       else f"; {n} fresh seeds say {verdict_kind(c.replication.verdict)}")
        return f"{c.verdict} (confirmed: held-out split says {there}{fresh or ''})"
    return "same (needs no held-out check)"


def p_text(p: float | None) -> str:
    return "" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def cell(text, markdown: bool = False) -> str:
    """A table cell of text an agent's words may be in, or of markdown the harness made of them."""
    return (text if markdown else one_line(text)).replace("|", "\\|")


def noise_section(report: Report) -> str:
    n = report.noise
    if n is None:
        return "## Noise floor\n\nNot measured: no baseline runs."
    std = f"{n.seed_std:.4f} over {n.seeds} seeds" if n.seed_std is not None else f"not measured ({n.seeds} seed{'s' * (n.seeds != 1)}; needs 2)"
    drift = (f"{n.drift:+.4f} over the program, from {n.reruns} runs of re-run seeds"
             if n.drift is not None else "not measured (no interleaved baseline re-runs completed)")
    return ("## Noise floor\n\n"
            f"- baseline seed-to-seed std of val_bpb: {std}\n"
            f"- drift of the baseline's interleaved re-runs: {drift}\n"
            f"- noise floor = max(std, |drift|) = **{n.floor:.4f}** val_bpb: a mean difference smaller "
            "than this is never called `better`.")


def plots_section(report: Report) -> str:
    captions = {
        "curves_flops.png": "val_bpb, each variant's paired difference to the baseline, and train loss vs "
                            "training FLOPs (mean over seeds, min-max band, over the range every seed reaches)",
        "curves_time.png": "val_bpb, each variant's paired difference to the baseline, and train loss vs "
                           "training time in seconds (mean over seeds, min-max band, over the range every seed reaches)",
        "final.png": "final val_bpb per arm and seed, and the paired differences to the baseline",
        "progress.png": "the frontier against runner hours and wall hours, with every try by its outcome",
    }
    if not report.plots:
        return "## Plots\n\nNone: no completed run has readable metrics or a final val_bpb."
    text = "## Plots\n\n"
    if report.curves and all(len(c.evals) <= 1 for c in report.curves.values()):
        text += ("val_bpb was measured only at the end of each run (the program sets no "
                 "`train.eval_every`), so the val_bpb panels show one point per arm.\n\n")
    return text + "\n\n".join(f"{captions[p]}:\n\n![{captions[p]}]({p})" for p in report.plots)


def budget_section(report: Report) -> str:
    budget = report.spec.get("budget") or {}
    per_run = budget.get("per_run") or {}
    kind, value = next(((k, v) for k, v in per_run.items() if v is not None), (None, None))
    compute = sum(r.get(k) or 0 for r in report.runs for k in ("wall_seconds", "measure_seconds", "lost_seconds"))
    dollars = sum(r.get("dollars") or 0 for r in report.llm)
    lines = ["## Budget and how it was enforced", ""]
    if kind:
        flag = BUDGET_FLAGS.get(kind, "--" + kind)
        lines.append(f"- per run: **{value:g} {kind}** (`{flag} {value:g}` on every run); seeds "
                     f"{budget.get('seeds')} for every arm; a run past {g(budget.get('run_timeout_seconds'))} s "
                     "of wall time (the runner's clock, not the trainer's) is killed")
    else:
        lines.append("- per-run budget: not recorded")
    lines.append(f"- totals: compute {compute:.0f} s of {g(budget.get('total_compute_seconds'))} s (runner wall time, as "
                 f"the budget counts it: runs, measurements, attempts that recorded nothing); LLM ${dollars:.2f} of "
                 f"${g(budget.get('total_llm_dollars'))}")
    for c in report.budget_changes:
        lines.append(f"- seed {g(c['new'])} added for every arm by {c['who']} with `org extend` at {c['created_at']} "
                     "(after the program started: its verdicts are re-tested on more seeds, not pre-registered)"
                     if c["field"] == "seeds" else f"- changed by {c['who']} with `org budget` at "
                     f"{c['created_at']}: {c['field']} {g(c['old'])} -> {g(c['new'])}")
    lines.append("- enforced by the runner: the experiment sets only model and optimizer keys (the program owns "
                 "budget, seeds, data and evaluation); each completed run is measured by the harness (FLOPs per "
                 "token recounted from the checkpoint's shapes, the steps the budget allows, val and confirm "
                 "scored by harness code on the lab's own split) and the trainer's FLOPs, steps, seed, shapes and "
                 "eval fingerprint must agree with it, else the run is `invalid`; a commit that changes a protected "
                 f"path ({', '.join(report.spec['protected']) or 'none' if 'protected' in report.spec else 'not recorded'}) or adds code that "
                 "could shadow it (bytecode, extensions, .pth, a package beside a protected module) is `refused`")
    measured = [r for r in report.runs if r.get("measure_seconds") and r.get("wall_seconds")]  # (refused runs: their checks)
    if measured:
        spent = sum(r["measure_seconds"] for r in measured)
        trained = sum(r["wall_seconds"] for r in measured)
        lines.append(f"- the runner's own time on {len(measured)} runs (checking and copying their commits, probing code "
                     f"arms' models, measuring checkpoints) took {spent:.0f} s, {100 * spent / trained:.1f}% of their "
                     f"{trained:.0f} s of training")
    lines += ["", spent_table(report), "", failures_table(report)]
    return "\n".join(l for l in lines if l is not None)


def g(value) -> str:
    return f"{value:g}" if finite(value) else "(not recorded)"


def spent_table(report: Report) -> str:  # (seconds: the runner's clock; a trainer's own are its word)
    rows = ["| arm | runs by status | steps | tokens | FLOPs | wall s (median) | wall s (sum) |", "|" + "---|" * 7]
    for arm in report.arms:
        runs = report.arm_runs(arm)
        done = [r for r in runs if r.get("status") == "completed"]
        rows.append("| " + " | ".join(cell(v) for v in (
            arm, counts_text(Counter(r.get("status") for r in runs)), span(done, "steps"),
            span(done, "tokens"), span(done, "flops"),
            f"{np.median([r['wall_seconds'] for r in done if r.get('wall_seconds')]):.1f}"
            if any(r.get("wall_seconds") for r in done) else "",
            f"{sum(r.get('wall_seconds') or 0 for r in runs):.0f}")) + " |")
    return "\n".join(rows)


def span(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    return f"{lo:.4g}" if lo == hi else f"{lo:.4g} – {hi:.4g}"


def failures_table(report: Report) -> str:
    bad = [r for r in report.runs if r.get("status") not in ("completed",) + NOT_RUN_YET]
    retried = [r for r in report.runs if (r.get("attempts") or 0) > 1]
    lines = [f"Run {r.get('id')} ({r.get('arm')}, seed {shown_seed(r)}) took {r['attempts']} attempts: "
             f"{one_line('; '.join((r.get('attempt_log') or 'reason not recorded').strip().splitlines()))}" for r in retried]
    if not bad:
        return "\n\n".join(["Every finished run completed: none killed, refused, invalid, diverged or failed."] + lines)
    rows = ["Runs that did not complete:", "", "| run | arm | seed | purpose | status | reason |", "|" + "---|" * 6]
    for r in bad:
        rows.append("| " + " | ".join(cell(v) for v in (r.get("id"), r.get("arm"), shown_seed(r),
                                                         r.get("purpose", ""), r.get("status"),
                                                         r.get("reason") or "not recorded")) + " |")
    return "\n\n".join(["\n".join(rows)] + lines)


def lineage_section(report: Report) -> str:
    if not report.experiments:
        return "## Lineage\n\nNo experiments recorded in this ledger."
    rows = ["| # | arm | who | source | stage | commit | what changed | hypothesis |", "|" + "---|" * 8]
    for e in report.experiments:
        commit = e.get("code_commit") or ""
        same = commit and commit == (e.get("base_commit") or report.base_commit)
        code, chosen = improve_story.diff_summary(e.get("diff")), loads(e.get("chosen"))
        what = "; ".join(x for x in (overrides_text(loads(e.get("overrides"))), code and f"code: {one_line(code)}", chosen and f"tuned: {overrides_text(chosen)}",
                                      e.get("reason") and f"reason: {one_line(e['reason'])}") if x)
        plain = [cell(v) for v in (e.get("id"), e.get("arm"), e.get("who", "?"), e.get("source", ""), e.get("stage", ""))]
        made = [cell(code_span(commit[:10]) + " (base)" * bool(same), markdown=True), cell(what or "nothing", markdown=True)]
        rows.append("| " + " | ".join(plain + made + [cell(e.get("hypothesis") or "")]) + " |")
    return "## Lineage\n\n" + "\n".join(rows)


def overrides_text(overrides) -> str:
    if not overrides:
        return ""
    return " ".join(code_span(f"{k}={v}") for k, v in overrides.items())


def spend_section(report: Report) -> str:
    who = {e.get("id"): e.get("who", "?") for e in report.experiments}
    compute = {"arm": Counter(), "agent": Counter()}
    for r in report.runs:
        compute["arm"][r.get("arm")] += r.get("wall_seconds") or 0
        compute["agent"][who.get(r.get("experiment_id"), "?")] += r.get("wall_seconds") or 0
    seconds = lambda c: ", ".join(f"{k} {v:.0f} s" for k, v in c.items()) or "none"
    # what agents' boxes ran, which no budget counts: far more than the runs is a model trained there, or seeds tried
    cpu = ", ".join(f"{a} {s:.1f} CPU-s" for a, s in report.agent_cpu.most_common()) or "none recorded"
    lines = ["## Spend", "", f"Compute (runner wall time): by arm {seconds(compute['arm'])}; "
             f"by who proposed it {seconds(compute['agent'])}.", "",
             f"Agents' own compute (their boxes' CPU time, the harness's on their submissions; no run's budget): {cpu}.", ""]
    if not report.llm:
        lines.append("LLM spend: none recorded in the ledger.")
        return "\n".join(lines)
    lines += ["| agent | model | tokens in | tokens out | dollars |", "|---|---|---|---|---|"]
    for agent in dict.fromkeys(r.get("agent", "?") for r in report.llm):
        calls = [r for r in report.llm if r.get("agent", "?") == agent]
        total = lambda key: sum(r.get(key) or 0 for r in calls)  # (called before the loop moves on)
        models = ", ".join(sorted({r.get("model", "?") for r in calls}))
        lines.append(f"| {cell(agent)} | {cell(models)} | {total('tokens_in'):,} | {total('tokens_out'):,} | ${total('dollars'):.2f} |")
    return "\n".join(lines)


def counts_text(counts: Counter) -> str:  # Counter({'completed': 5, 'killed': 1}) -> '5 completed, 1 killed'
    return ", ".join(f"{n} {k}" for k, n in counts.items()) or "none"


# --- the terminal and JSON ------------------------------------------------------------


def print_summary(report: Report, readme: Path, file=None):
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    text = lambda v: escape(shown(v))  # an agent's words (a run's reason in a verdict): no escape sequence
    console = Console(file=file, width=None if (file or sys.stdout).isatty() else 160, highlight=False)
    console.print(f"[bold]{text(report.program)}[/bold]: {text(report.spec.get('question') or '')}")
    console.print(f"claim: {text(claim_text(report.spec))}")
    if (report.spec.get("claim") or {}).get("kind") == "improve":
        console.print(text(improve_story.frontier_line(report.experiments)))
    table = Table(title="verdicts")
    for col in ("arm", "seeds", "val_bpb mean ± std", "Δ [bounds]", f"p better ({ADJUSTMENT})", "verdict", "final (held-out)"):
        table.add_column(col)
    for arm in report.arms:
        row = verdict_row(report, arm)
        table.add_row(*(text(v) for v in row[:4] + row[5:8]))
    console.print(table)
    n = report.noise
    if n:
        console.print(f"noise floor {n.floor:.4f} val_bpb: baseline seed std "
                      f"{'not measured' if n.seed_std is None else f'{n.seed_std:.4f}'} over {n.seeds} seeds, "
                      f"drift {'not measured' if n.drift is None else f'{n.drift:+.4f}'} ({n.reruns} re-run runs)")
    for line in control_lines(report):
        console.print(text(line.replace("**", "").replace("`", "")))
    console.print("runs: " + counts_text(Counter(r.get("status") for r in report.runs)))
    for m in report.missing:
        console.print(f"[yellow]missing:[/yellow] {text(m)}")
    console.print(f"report: {text(str(readme))}")


def to_json(report: Report, readme: Path | None = None) -> dict:
    def comparison(c: Comparison) -> dict:
        keys = ("arm", "claim", "margin", "alpha", "metric", "n", "seeds", "baseline_mean", "variant_mean",
                "mean", "std", "lower", "upper", "p", "p_better", "p_better_adjusted", "adjustment",
                "family", "shortfall", "verdict", "final_verdict")
        out = {k: getattr(c, k) for k in keys}
        out.update(seeds=list(c.seeds), declared=sorted(c.declared),
                   confounds=[f.text for f in c.confounds], warnings=[f.text for f in c.warnings],
                   held_out=c.confirmation and {k: getattr(c.confirmation, k) for k in
                                                ("n", "mean", "lower", "upper", "verdict")})
        return out

    n = report.noise
    return {
        "program": report.program, "ledger": str(report.ledger_path), "report": str(readme) if readme else None,
        "question": report.spec.get("question"), "claim": report.spec.get("claim"),
        "arms": {a: {"seeds": report.finals(a), "runs": dict(Counter(r.get("status") for r in report.arm_runs(a)))}
                 for a in report.arms},
        "verdicts": [comparison(c) for c in report.comparisons.values()],
        "no_verdict": report.no_verdict,
        "controls": [line.replace("**", "").replace("`", "") for line in control_lines(report)],
        "frontier": improve_story.progress(report.experiments, report.runs, report.llm),
        "noise_floor": n and {**asdict(n), "floor": n.floor},  # (seed_std, seeds, drift, reruns)
        "budget": report.spec.get("budget"), "compute_seconds": sum(r.get("wall_seconds") or 0 for r in report.runs),
        "llm_dollars": sum(r.get("dollars") or 0 for r in report.llm),
        "agent_cpu_seconds": dict(report.agent_cpu), "plots": report.plots, "missing": report.missing,
    }


def run_report(ledger_path: Path, program: str, out_dir: Path, fmt: str = "text") -> int:
    """`org report`: write the report (one there, say a clone's sample, stays until a run has finished)."""
    report = build(ledger_path, program)
    if (out_dir / "README.md").exists() and not any(r.get("status") in FINISHED for r in report.runs):
        raise ReportError(f"no run of {program} has finished yet: {out_dir / 'README.md'} is left as it is")
    try:
        readme = write(report, out_dir)
    except OSError as e:  # a file where its folder goes, a folder where a file goes, no permission
        raise OrgError(f"the report cannot be written in {out_dir}: {e.strerror}: {e.filename}") from None
    if fmt == "json":
        print(json.dumps(to_json(report, readme), indent=2, default=str))
    else:
        print_summary(report, readme)
    return 0
