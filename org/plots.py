"""
The report's plots, and the learning curves they draw from each run's metrics.jsonl.

    read_curves(report)            # report.curves: run id -> Curve (a torn line costs only itself)
    plot_all(report, out_dir)      # curves_flops.png, curves_time.png, final.png, progress.png
                                   # (an improvement program's); returns the names

Every panel has one unit per axis. Arms that differ by less than their spread would sit on top of
each other on a val_bpb axis, so each curves plot also draws the paired difference to the
baseline (same seed, same x), where a 0.005 bpb effect is as tall as the panel. The val_bpb
curves are the harness's, on the lab's val: its measurement of each parameter snapshot a run kept
and of its final checkpoint (Measurement.val_curve; a run recorded before those, its own
evaluations on its dev text); the train loss is the trainer's word. Points at equal
compute are drawn at equal x, never nudged apart.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from org import write_atomically
from org.improve_story import progress
from org.referee import verdict_kind

matplotlib.use("Agg")


@dataclass
class Curve:
    """One run's metrics.jsonl as arrays of (flops, seconds, value)."""
    train: np.ndarray  # train_loss at logged steps
    evals: np.ndarray  # val_bpb at eval steps
    harness: bool = False  # its evals are the harness's measurements (a run recorded before them: its trainer's)




def read_curves(report):
    for run in report.runs:
        if run.get("status") != "completed" or run.get("purpose", "main") != "main":
            continue
        path = metrics_path(report, run)
        who = f"run {run.get('id')} ({run.get('arm')}, seed {run.get('seed')})"
        if path is None or not path.is_file():
            report.missing.append(f"{who}: no metrics.jsonl{f' at {path}' if path else ''}; not plotted")
            continue
        records, bad = read_metrics(path)
        if bad:
            report.missing.append(f"{who}: {bad} unreadable line{'s' * (bad > 1)} in {path} skipped")
        curve = to_curve(records, flops_per_token(run), measured_points(run))
        if len(curve.train) or len(curve.evals):
            report.curves[run["id"]] = curve
        else:
            report.missing.append(f"{who}: no usable metrics in {path}; not plotted")


def metrics_path(report, run: dict) -> Path | None:
    """As recorded; else in the run's directory beside the ledger (a lab moved as a whole)."""
    recorded = run.get("metrics_path") or (run.get("run_dir") and str(Path(run["run_dir"]) / "metrics.jsonl"))
    beside = report.ledger_path.parent / "runs" / str(run.get("id")) / "metrics.jsonl"
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    if beside.is_file():
        return beside
    return Path(recorded) if recorded else None


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """(records, number of unreadable lines). A torn or garbled line costs only itself."""
    records, bad = [], 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # (an int of 5000 digits, or 10^5 brackets: not a decode error)
            bad += 1
            continue
        if isinstance(record, dict) and finite(record.get("step")):
            records.append(record)
        else:
            bad += 1
    return records, bad


def flops_per_token(run: dict) -> float | None:
    return run.get("flops_per_token")  # the record's (ledger.run_row)


def measured_points(run: dict) -> list[tuple[int, float, float]] | None:
    """(step, FLOPs, val_bpb) of the harness's curve: each snapshot's and the final checkpoint's,
    at the FLOPs of its steps by the harness's count; None for a run recorded before it had one."""
    if run.get("val_curve") is None or not finite(run.get("steps")) or not finite(run.get("flops")) \
            or not run["steps"]:
        return None
    last = [(run["steps"], run["val_bpb"])] if finite(run.get("val_bpb")) else []
    return [(step, run["flops"] * step / run["steps"], bpb) for step, bpb in [*run["val_curve"], *last]]


def to_curve(records: list[dict], fpt: float | None, measured: list | None = None) -> Curve:
    """Train records carry flops and seconds; eval records only step and tokens, so theirs
    come from tokens * FLOPs/token and from the train records' clock at that step. `measured`
    (measured_points): the harness's evaluations, in place of any the records hold."""
    train = [r for r in records if finite(r.get("train_loss")) and finite(r.get("flops"))
             and finite(r.get("elapsed_s"))]
    steps = np.array([r["step"] for r in train], dtype=float)
    flops = np.array([r["flops"] for r in train], dtype=float)
    seconds = np.array([r["elapsed_s"] for r in train], dtype=float)

    def at(step, ys):
        return float(np.interp(step, steps, ys)) if len(steps) else math.nan

    evals = [(f, at(step, seconds), bpb) for step, f, bpb in measured or []]
    for r in records if measured is None else []:
        if finite(r.get("val_bpb")):
            f = r["tokens"] * fpt if fpt and finite(r.get("tokens")) else at(r["step"], flops)
            evals.append((f, at(r["step"], seconds), r["val_bpb"]))
    return Curve(np.array([(f, s, r["train_loss"]) for f, s, r in zip(flops, seconds, train)]).reshape(-1, 3),
                 np.array(evals, dtype=float).reshape(-1, 3), harness=measured is not None)


def finite(x) -> bool:
    """A number a float holds (an int past 1e308 raised OverflowError in isfinite, and stopped the report)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


# ----------------------------------------------------------------------------------------
# the plots


def plot_all(report, out_dir: Path) -> list[str]:
    made = []
    for name, draw in (("curves_flops.png", lambda: plot_curves(report, x=0)),
                       ("curves_time.png", lambda: plot_curves(report, x=1)),
                       ("final.png", lambda: plot_final(report)),
                       ("progress.png", lambda: plot_progress(report))):
        fig = draw()
        if fig is None:
            (out_dir / name).unlink(missing_ok=True)  # no stale plot from an earlier report
            continue
        png = io.BytesIO()
        fig.savefig(png, dpi=110, format="png")
        write_atomically(out_dir / name, png.getvalue())  # (a reader, or a report written at once, sees a whole one)
        plt.close(fig)
        made.append(name)
    return made


X_LABELS = ("training compute (FLOPs)", "training time (seconds, excluding evaluation)")


def colors(report) -> dict[str, str]:
    palette = plt.get_cmap("tab10").colors
    variants = [a for a in report.arms if a != "baseline"]
    return {"baseline": "black", **{a: palette[i % 10] for i, a in enumerate(variants)}}


def plot_curves(report, x: int):
    """Against FLOPs (x=0) or seconds (x=1): val_bpb per arm (mean over seeds, min-max band);
    each variant's paired difference to the baseline (variant − baseline on the same seed, at
    the same x; mean and min-max over seeds); train loss per arm."""
    by_arm = curves_by_arm(report)
    if not by_arm:
        return None
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 11), sharex=True,
                                              gridspec_kw={"height_ratios": [3, 2, 2]})
    color = colors(report)
    for arm, curves in by_arm.items():
        label = f"{arm} ({len(curves)} seed{'s' * (len(curves) > 1)})"
        band(top, [c.evals[:, [x, 2]] for c in curves.values()], color[arm], label)
        band(bottom, [ema(c.train[:, [x, 2]]) for c in curves.values()], color[arm], label)
    plot_paired(middle, report, by_arm, x, color)
    what = "FLOPs" if x == 0 else "training time"
    whose = "the harness's" if all(c.harness for curves in by_arm.values() for c in curves.values()) else \
        "the harness's, or older runs' trainers'"
    top.set_title(f"{report.program}: val bits per byte ({whose}, on the lab's val) vs {what}\n"
                  "line: mean over seeds; band / bar: min-max over seeds (completed main runs)")
    top.set_ylabel("val_bpb (bits per byte)\nlower is better")
    middle.set_title("paired difference: variant − baseline on the same seed (below 0: the variant is better;\n"
                     "y axis fitted to the end of training, earlier spreads clipped)")
    middle.set_ylabel("Δ val_bpb (bits per byte)")
    bottom.set_title(f"training loss vs {what} (each seed smoothed: EMA {EMA_BETA} over logged steps)")
    bottom.set_ylabel("train loss (nats per token)")
    bottom.set_xlabel(X_LABELS[x])
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        else:  # (the paired panel may hold its zero line alone: no variant has a seed paired yet)
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    return fig


def curves_by_arm(report) -> dict[str, dict[int, Curve]]:
    """arm -> seed -> the curve of its completed main run."""
    out = {}
    for run in report.runs:
        if run.get("id") in report.curves:
            out.setdefault(run["arm"], {})[run.get("seed")] = report.curves[run["id"]]
    return {a: out[a] for a in report.arms if a in out}


def plot_paired(ax, report, by_arm: dict, x: int, color: dict):
    """Each variant's val_bpb minus the baseline's on the same seed, both read at the same x. The
    y axis fits the end of training (where the verdicts are read): early evaluations, whose
    seed-to-seed spread can be ten times wider, are clipped rather than flattening the rest."""
    base, ends = by_arm.get("baseline", {}), [0.0]
    for arm, curves in by_arm.items():
        seeds = sorted(s for s in curves if s in base and arm != "baseline")
        if seeds:
            deltas = [paired_difference(curves[s].evals[:, [x, 2]], base[s].evals[:, [x, 2]]) for s in seeds]
            band(ax, deltas, color[arm], f"{arm} − baseline ({len(seeds)} paired seed{'s' * (len(seeds) > 1)})")
            ends += [d[-1, 1] for d in deltas if len(d)]
    ax.axhline(0, color="black", lw=1, ls="--")
    claim = report.spec.get("claim") or {}
    if claim.get("kind") == "non-inferiority" and finite(claim.get("margin")):
        ax.axhline(claim["margin"], color="red", lw=1, ls=":", label=f"non-inferiority margin (+{claim['margin']:g})")
        ends.append(claim["margin"])
    low, high = min(ends), max(ends)
    pad = 0.25 * (high - low) or 0.005
    ax.set_ylim(low - pad, high + pad)


def paired_difference(variant: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """(x, variant − baseline) at the variant's x values inside the baseline's x range; with one
    point each (evaluated at the end only), the two end points: (variant's x, difference)."""
    variant, baseline = (a[np.isfinite(a).all(axis=1)] for a in (variant, baseline))
    variant, baseline = (a[np.argsort(a[:, 0], kind="stable")] for a in (variant, baseline))
    if not len(variant) or not len(baseline):
        return np.empty((0, 2))
    if len(variant) == 1 or len(baseline) == 1:
        return np.array([[variant[-1, 0], variant[-1, 1] - baseline[-1, 1]]])
    inside = (variant[:, 0] >= baseline[0, 0]) & (variant[:, 0] <= baseline[-1, 0])
    xs = variant[inside, 0]
    return np.column_stack([xs, variant[inside, 1] - np.interp(xs, baseline[:, 0], baseline[:, 1])])


EMA_BETA = 0.8  # train loss is one batch's loss per logged step: noisy


def ema(xy: np.ndarray, beta: float = EMA_BETA) -> np.ndarray:
    """Exponential moving average of the y column, debiased like Adam's (no start-up dip)."""
    out, avg = xy.copy(), 0.0
    for i, y in enumerate(xy[:, 1]):
        avg = beta * avg + (1 - beta) * y
        out[i, 1] = avg / (1 - beta ** (i + 1))
    return out


def band(ax, series: list[np.ndarray], color, label: str):
    """Mean line and min-max band of several (x, y) series on their common x range; with one
    point per series (evaluated only at the end), the mean point and a min-max error bar, at
    its own x (points at equal compute stay at equal x: the paired panel tells them apart)."""
    series = [s[np.isfinite(s).all(axis=1)] for s in series]
    series = [s[np.argsort(s[:, 0], kind="stable")] for s in series if len(s)]
    if not series:
        return
    lo, hi = max(s[0, 0] for s in series), min(s[-1, 0] for s in series)
    if all(len(s) >= 2 for s in series) and lo < hi:
        grid = np.linspace(lo, hi, 200)
        ys = np.array([np.interp(grid, s[:, 0], s[:, 1]) for s in series])
        ax.plot(grid, ys.mean(axis=0), color=color, lw=1.8, label=label)
        if len(series) > 1:  # a faint fill with thin edges, so overlapping bands stay apart
            ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.12, lw=0)
            for edge in (ys.min(axis=0), ys.max(axis=0)):
                ax.plot(grid, edge, color=color, lw=0.6, alpha=0.5)
        return
    last = np.array([s[-1] for s in series])  # the final eval of each seed
    mean = last.mean(axis=0)
    err = [[mean[1] - last[:, 1].min()], [last[:, 1].max() - mean[1]]]
    only_end = all(len(s) == 1 for s in series)
    ax.errorbar([mean[0]], [mean[1]], yerr=err, fmt="o", color=color, capsize=4, alpha=0.8,
                label=f"{label}: " + ("evaluated at the end only" if only_end else "final evals"))


def plot_final(report):
    """Left: the final val_bpb of every seed per arm (box + points). Right: the paired
    difference to the baseline per seed, its mean and the referee's one-sided bounds."""
    finals = {arm: report.finals(arm) for arm in report.arms}
    finals = {arm: f for arm, f in finals.items() if f}
    if not finals:
        return None
    paired = [(a, c) for a, c in report.comparisons.items() if c.seeds]
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(12 if paired else 7, 5.5), squeeze=False)
    color = colors(report)
    ax = axes[0, 0]
    names = list(finals)
    ax.boxplot([list(finals[a].values()) for a in names], widths=0.5, showfliers=False)
    for i, arm in enumerate(names, start=1):
        seeds, values = zip(*sorted(finals[arm].items()))
        xs = i + np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [i]
        ax.scatter(xs, values, color=color[arm], zorder=3, label=arm)
        for x, y, s in zip(xs, values, seeds):
            ax.annotate(f"s{s}", (x, y), textcoords="offset points", xytext=(6, -3), fontsize=7)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=15)
    ax.set_xlabel("arm (points: one per seed, labelled s<seed>; box: quartiles and median)")
    ax.set_ylabel("final val_bpb (bits per byte, lower is better)")
    ax.set_title(f"{report.program}: final val_bpb per arm")
    ax.grid(alpha=0.3, axis="y")
    if paired:
        plot_deltas(axes[0, 1], report, paired, color)
    fig.tight_layout()
    return fig


def plot_deltas(ax, report, paired: list, color: dict):
    base = report.finals("baseline")
    for i, (arm, c) in enumerate(paired, start=1):
        var = report.finals(arm)
        d = [var[s] - base[s] for s in c.seeds]
        xs = i + np.linspace(-0.15, 0.15, len(d)) if len(d) > 1 else [i]
        ax.scatter(xs, d, color=color[arm], alpha=0.6, zorder=3)
        for x, y, s in zip(xs, d, c.seeds):
            ax.annotate(f"s{s}", (x, y), textcoords="offset points", xytext=(6, -3), fontsize=7)
        if c.lower is not None:
            ax.errorbar([i + 0.3], [c.mean], yerr=[[c.mean - c.lower], [c.upper - c.mean]], fmt="D",
                        color=color[arm], capsize=5, label=f"{arm}: mean, one-sided 95% bounds")
    ax.axhline(0, color="gray", lw=1, ls="--", label="no difference")
    claim = report.spec.get("claim") or {}
    if claim.get("kind") == "non-inferiority" and finite(claim.get("margin")):
        ax.axhline(claim["margin"], color="red", lw=1, ls=":",
                   label=f"non-inferiority margin (+{claim['margin']:g})")
    ax.set_xticks(range(1, len(paired) + 1), [f"{a}\n({verdict_kind(c.verdict)})" for a, c in paired])
    ax.set_xlim(0.5, len(paired) + 0.6)
    ax.set_xlabel("arm (verdict); points: per-seed differences, labelled s<seed>")
    ax.set_ylabel("Δ val_bpb = variant − baseline, same seed\n(bits per byte; below 0 is better)")
    ax.set_title("paired difference to the baseline, with the referee's bounds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # off the data


OUTCOME_STYLE = {"baseline": ("black", "s"), "kept": ("tab:green", "o"), "discarded": ("tab:gray", "o"),
                 "untested": ("tab:red", "x"), "stale": ("tab:orange", "v"), "climbing": ("tab:blue", "^"),
                 "withdrawn": ("tab:purple", "X")}


def plot_progress(report):
    """An improvement program's frontier (a step line) against runner hours and wall hours, with
    every try as a point at its own mean val_bpb, by outcome (org/improve.py: progress)."""
    if (report.spec.get("claim") or {}).get("kind") != "improve":
        return None
    points = progress(report.experiments, report.runs, report.llm)
    if not points:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    short = max(p["wall_hours"] for p in points) < 2  # minutes read better than 0.01 hours
    unit, scale = ("minutes", 60) if short else ("hours", 1)
    for p in points:
        p.update(compute=p["compute_hours"] * scale, wall=p["wall_hours"] * scale)
    for ax, key, label in ((axes[0], "compute", f"runner {unit} spent (trainer runs and measurements)"),
                           (axes[1], "wall", f"wall {unit} since the program's first experiment")):
        front = [(p[key], p["frontier_bpb"]) for p in points if p["frontier_bpb"] is not None]
        if front:
            xs, ys = zip(*front)
            ax.step(xs, ys, where="post", color="tab:green", lw=2, label="confirmed frontier (mean over seeds)")
        for outcome, (color, marker) in OUTCOME_STYLE.items():
            mine = [p for p in points if p["outcome"] == outcome and p["val_bpb"] is not None]
            if mine:
                ax.scatter([p[key] for p in mine], [p["val_bpb"] for p in mine], color=color, marker=marker,
                           s=50, zorder=3, label=f"{outcome} ({len(mine)})")
                for p in mine:
                    ax.annotate(p["arm"], (p[key], p["val_bpb"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val_bpb (bits per byte, lower is better):\nthe frontier, and each try's mean over seeds")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report.program}: the frontier's progress; every try, kept or not")
    fig.tight_layout()
    return fig
