"""
The referee: did the variant beat the baseline? Decided from the runs alone.

Pure functions of plain run dicts (ledger rows or result.json dicts, see Run.read), so the
report, the tests and a person at a REPL call it the same way:

    c = compare(baseline_runs, variant_runs, claim="non-inferiority", margin=0.01)
    comparisons = adjust([c, ...])                 # every comparison of the program at once
    c = confirm(comparisons[0], baseline_runs, variant_runs)   # re-check on the held-out split
    c = replicate(c, baseline_runs, variant_runs, 5)  # and on 5 fresh seeds the harness draws
    c.final_verdict      # 'no regression', 'better (not confirmed on held-out split: ...)', ...

The statistics. Runs are paired by seed (the same seed gives both arms the same init and
data order, so the seed's luck cancels), d = variant - baseline in val_bpb per seed, and
lower is better, so d < 0 is an improvement. With n pairs, mean m and std s:

    lower, upper = m -/+ t(1 - alpha, n - 1) * s / sqrt(n)

Each is a one-sided (1 - alpha) bound, 95% at the default alpha = 0.05 (together they make a
two-sided 90% interval). A rule uses one bound, so each verdict is a one-sided test at alpha:

    before the rule  refused (...)  the variant's runs were all refused (protected paths, shadowing,
                                    owned keys, more than max_change_kb): nothing was measured
                     invalid (...)  its runs (or the baseline's) were all invalid: the reason; or a
                                    check found the comparison meaningless (org/confounds.py), such
                                    as runs on different seeds that start or end bit-identical
                     no change (...) the variant is the baseline: same overrides and code,
                                    bit-identical final parameters on every paired seed, or a code
                                    change whose only effect is a redrawn init (the harness's
                                    seed probe, org/evaluator.py)
    superiority      better         adjusted p of H0 "m >= 0" < alpha, and |m| >= the noise floor
                     worse          lower > 0
    non-inferiority  no regression  upper < margin ("worse by ..., within the margin" when lower > 0)
                     better         no regression, and better as under superiority
                     worse          lower > margin
    otherwise        inconclusive (needs N more seeds), or (inside the noise floor) when a
                     superiority mean leans better but is smaller than the floor

A `better` or `no regression` then has to hold twice more, or final_verdict says where it did not:
on the held-out split (confirm()), and on fresh seeds alone, which the harness drew once the arm's
main runs were done (replicate()): no code committed before could know them. A non-inferiority
`better` that holds there only as `no regression` stands as that (only_the_gain_failed).

A baseline whose val_bpb does not beat the data's unigram entropy (measured by the harness) is
not learning: every verdict of the program says so, loudly, in brackets at its end.

The noise floor is max(the baseline's seed-to-seed std, |its drift over the program|), from
the baseline's interleaved re-runs (see noise_floor): a difference smaller than what a seed
change or the passing of time does to the baseline alone is never `better`.

Only `better` is adjusted for the many comparisons an org makes (adjust(): Holm by default,
or Benjamini-Hochberg), because "it got better" is the claim made over and over; `no
regression` answers the program's one pre-registered question at its margin, and `worse`
needs no protection from being found too often. A single comparison is its own family.

Confound checks (org/confounds.py: invalid, no change, or a warning, one function each) run
on the arms' records: the harness's measurements and the runner's clock. Pairs and checks use
main runs only; baseline re-runs (purpose 'repeat') feed the noise floor.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
# scipy.stats is imported where it is used: a second to import, in every `org` command outside a box

from org.confounds import DECLARABLE, DROPPED, FAILED, NO_CHANGE, Finding, Tolerances, find_confounds
from org.ledger import run_row

CLAIMS = ("non-inferiority", "superiority")
MAX_MORE_SEEDS = 100     # beyond this the effect is too small to settle with seeds
NEEDS_CONFIRMATION = ("better", "no regression")


# --- runs --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One run, normalized from a ledger row (the record's columns, flat params_*, the harness's `measurement`
    and the trainer's `result` as JSON) or a plain dict of the same fields (nested params, budget as {kind, value})."""
    arm: str
    seed: int
    status: str
    reason: str | None      # why a run was refused, invalid, ...
    purpose: str            # main | repeat (an interleaved baseline re-run) | tune | replicate (a fresh seed)
    val_bpb: float | None
    confirm_bpb: float | None
    flops: float | None
    tokens: float | None
    steps: float | None
    params: tuple           # (total, matmul)
    flops_per_token: float | None
    tokens_per_second: float | None
    device: str | None      # the trainer's word
    machine: str | None     # the device model harness code saw the run train on
    eval_fingerprint: str | None
    data_fingerprint: str | None
    budget: tuple | None    # (kind, value)
    overrides: str          # canonical JSON, so arms compare with ==
    code: tuple             # (git_commit, dirty)
    claim_seq: int | None   # the order runs were started in
    finished_at: float | None
    wall_seconds: float | None      # the runner's clock
    params_fingerprint: str | None  # of the final parameters, by the harness
    seed_only: bool                 # the harness's seed probe: a redrawn init, the same training step
    unigram_bpb: float | None       # the data's unigram entropy, by the harness
    train_bpb: float | None = None  # on train-split windows drawn when measuring, by the harness
    train_window_bpb: tuple | None = None  # each of those windows' own
    val_window_bpb: tuple | None = None    # each val window's own
    init_bpb: float | None = None   # a code arm's initial model on those windows, by the harness
    forward_time_ratio: float | None = None  # a code arm's scored forward pass: time per FLOP over the base's
    init_fingerprint: str | None = None  # a code arm's initial parameters, as its code makes them, by the harness
    config_fingerprint: str | None = None  # of the model config its overrides make, by the harness
    stream_passes: float | None = None  # times its steps went through its stream of windows, by the harness
    train_cpu_seconds: float | None = None  # all its trainer's box ran, by the runner's cgroup
    replay: str | None = None  # a code arm's training step from the base init, against the base's: same | differs
    own_kernels: bool | None = None  # a code arm whose CPU kernels' sources are not the base's: its runs compile them

    @classmethod
    def read(cls, row: dict) -> Run:
        """From a runs row as the ledger hands it over (ledger.run_row: the record's figures flat
        beside the columns; a raw row is read the same way) or a plain dict of the same fields."""
        row = run_row(row)
        get = row.get
        params = get("params") or {}
        purpose = get("purpose") or ("repeat" if get("is_rerun") else "main")
        return cls(
            arm=get("arm") or "?", seed=row["seed"], status=row["status"], reason=get("reason"),
            purpose=purpose,
            val_bpb=get("val_bpb"), confirm_bpb=get("confirm_bpb"),
            flops=get("flops"), tokens=get("tokens"), steps=get("steps"),
            params=(params.get("total", get("params_total")), params.get("matmul", get("params_matmul"))),
            flops_per_token=get("flops_per_token"), tokens_per_second=get("tokens_per_second"),
            device=get("device"), machine=get("machine"), eval_fingerprint=get("eval_fingerprint"),
            data_fingerprint=get("data_fingerprint"), budget=_budget(get("budget")),
            overrides=json.dumps(_json(get("overrides")) or {}, sort_keys=True),
            code=(get("git_commit"), bool(get("git_dirty"))), claim_seq=get("claim_seq"),
            finished_at=_timestamp(get("finished_at")), wall_seconds=get("wall_seconds"),
            params_fingerprint=get("params_fingerprint"), seed_only=bool(get("seed_only")),
            unigram_bpb=get("unigram_bpb"), train_bpb=get("train_bpb"), init_bpb=get("init_bpb"),
            forward_time_ratio=get("forward_time_ratio"), init_fingerprint=get("init_fingerprint"),
            config_fingerprint=get("config_fingerprint"), stream_passes=get("stream_passes"),
            train_cpu_seconds=get("train_cpu_seconds"), replay=get("replay"), own_kernels=get("own_kernels"),
            train_window_bpb=tuple(get("train_window_bpb") or ()) or None, val_window_bpb=tuple(get("val_window_bpb") or ()) or None)


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _timestamp(value) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError):
        return None


def _budget(value) -> tuple | None:
    """{kind: flops, value: 3e12} (a ledger row's, result.json's) -> (kind, value)."""
    value = _json(value)
    return (value["kind"], float(value["value"])) if value else None


def read_arm(runs: list[dict]) -> tuple[list[Run], list[Run]]:
    """(main runs, all runs). Pairs and checks use main runs; re-runs feed the noise floor."""
    everything = [Run.read(r) for r in runs]
    return [r for r in everything if r.purpose == "main"], everything


def per_seed(runs: list[Run], metric: str) -> dict[int, float]:
    """Each seed's value from its completed runs (their mean, if a seed ran twice)."""
    values = {}
    for r in (r for r in runs if usable(r, metric)):
        values.setdefault(r.seed, []).append(getattr(r, metric))
    return {seed: float(np.mean(v)) for seed, v in values.items()}


def usable(r: Run, metric: str) -> bool:
    value = getattr(r, metric)
    return r.status == "completed" and value is not None and math.isfinite(value)


# --- the noise floor ---------------------------------------------------------------------

@dataclass(frozen=True)
class NoiseFloor:
    """How much the baseline moves with no intervention at all."""
    seed_std: float | None  # std of the baseline's per-seed values (main runs, ddof=1)
    seeds: int
    drift: float | None     # change of the baseline from its first run to its last (measure_drift)
    reruns: int             # runs of seeds that ran more than once: what drift is measured on

    @property
    def floor(self) -> float:
        """A mean difference smaller than this is never 'better': a seed change alone, or the
        arms running at different times, moves the baseline by as much."""
        return max(self.seed_std or 0.0, abs(self.drift or 0.0))


def noise_floor(baseline_runs: list[dict], metric: str = "val_bpb") -> NoiseFloor:
    """The baseline's seed-to-seed std (its main runs) and drift (its re-runs too)."""
    main, everything = read_arm(baseline_runs)
    values = list(per_seed(main, metric).values())
    seed_std = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    drift, reruns = measure_drift([r for r in everything if r.purpose in ("main", "repeat")], metric)
    return NoiseFloor(seed_std, len(values), drift, reruns)


def measure_drift(runs: list[Run], metric: str) -> tuple[float | None, int]:
    """Least-squares slope of the metric on run order within seeds (each seed's own mean
    removed, so seed luck is not read as drift), times the span of run order: how far the
    baseline moved over the program. Only seeds run more than once carry information."""
    runs = [r for r in runs if usable(r, metric)]
    order = run_order(runs)
    by_seed = {}
    for r, t in zip(runs, order):
        by_seed.setdefault(r.seed, []).append((t, getattr(r, metric)))
    repeated = [np.array(v, dtype=float) for v in by_seed.values() if len(v) >= 2]
    if not repeated:
        return None, 0
    u = np.concatenate([v[:, 0] - v[:, 0].mean() for v in repeated])  # centered order
    y = np.concatenate([v[:, 1] - v[:, 1].mean() for v in repeated])  # centered metric
    times = np.concatenate([v[:, 0] for v in repeated])
    if not (u ** 2).sum():
        return None, len(u)
    slope = (u * y).sum() / (u ** 2).sum()
    return float(slope * (times.max() - times.min())), len(u)


def run_order(runs: list[Run]) -> list[float]:
    """claim_seq where every run has one, else finished_at, else the order given."""
    for key in ("claim_seq", "finished_at"):
        values = [getattr(r, key) for r in runs]
        if all(v is not None for v in values):
            return [float(v) for v in values]
    return [float(i) for i in range(len(runs))]


# --- one comparison ----------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    arm: str
    claim: str                  # non-inferiority | superiority
    margin: float
    alpha: float
    metric: str                 # val_bpb, or confirm_bpb for the held-out re-check
    declared: frozenset
    tolerances: Tolerances
    seeds: tuple                # the paired seeds
    baseline_mean: float | None  # over the paired seeds
    variant_mean: float | None
    n: int
    mean: float | None          # of d = variant - baseline: negative means the variant is lower
    std: float | None
    lower: float | None         # one-sided (1 - alpha) lower bound of the mean difference
    upper: float | None         # one-sided (1 - alpha) upper bound
    p: float | None             # the rule's null: m >= margin (non-inferiority) or m >= 0
    p_better: float | None      # the superiority null m >= 0 (the same as p under superiority)
    p_better_adjusted: float | None
    adjustment: str             # how p_better was adjusted: none | holm | bh
    family: int                 # how many comparisons were adjusted together
    noise: NoiseFloor
    findings: tuple
    shortfall: str | None       # why there is no interval: no runs, no pairs, one seed
    failed: str | None = None   # 'refused (...)' / 'invalid (...)': no run of an arm could be measured
    verdict: str = ""
    final_verdict: str = ""     # the verdict once the held-out split and the fresh seeds had their say
    confirmation: Comparison | None = None
    replication: Comparison | None = None  # the same rule on the fresh seeds alone (replicate())

    @property
    def confounds(self) -> list[Finding]:
        return [f for f in self.findings if f.invalid]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if not f.invalid]

    @property
    def threshold(self) -> float:
        return self.margin if self.claim == "non-inferiority" else 0.0

    @property
    def alpha_better(self) -> float:
        """The level p_better itself must pass once adjusted: alpha / (p_adjusted / p)."""
        if not self.p_better or self.p_better_adjusted is None:
            return self.alpha
        return self.alpha * self.p_better / self.p_better_adjusted

    @property
    def inside_noise(self) -> bool:
        return self.mean is not None and abs(self.mean) < self.noise.floor

    @property
    def is_better(self) -> bool:
        return (self.mean is not None and self.mean < 0 and not self.inside_noise
                and self.p_better_adjusted is not None and self.p_better_adjusted < self.alpha)


def compare(baseline_runs: list[dict], variant_runs: list[dict], claim: str, margin: float = 0.0,
            alpha: float = 0.05, declared: frozenset = frozenset(), tolerances: Tolerances = Tolerances(),
            metric: str = "val_bpb") -> Comparison:
    """One variant against the baseline, paired by seed, under the program's rule."""
    if claim not in CLAIMS:
        raise ValueError(f"claim: expected one of {', '.join(CLAIMS)}, got {claim!r}")
    unknown = set(declared) - set(DECLARABLE)
    if unknown:
        raise ValueError(f"declared: unknown {sorted(unknown)}, expected some of {', '.join(DECLARABLE)}")
    base, base_all = read_arm(baseline_runs)
    var, _ = read_arm(variant_runs)
    b, v = per_seed(base, metric), per_seed(var, metric)
    seeds = sorted(b.keys() & v.keys())
    d = np.array([v[s] - b[s] for s in seeds])
    paired = paired_stats(d, margin if claim == "non-inferiority" else 0.0, alpha)
    c = Comparison(
        arm=var[0].arm if var else "variant", claim=claim, margin=margin, alpha=alpha,
        metric=metric, declared=frozenset(declared), tolerances=tolerances, seeds=tuple(seeds),
        baseline_mean=float(np.mean([b[s] for s in seeds])) if seeds else None,
        variant_mean=float(np.mean([v[s] for s in seeds])) if seeds else None,
        **paired, p_better_adjusted=paired["p_better"], adjustment="none", family=1,  # alone
        noise=noise_floor(baseline_runs, metric),
        findings=tuple(find_confounds(base, var, frozenset(declared), tolerances,
                                      [r for r in base_all if r.purpose in ("main", "repeat")])),
        shortfall=shortfall(base, var, len(seeds), metric), failed=failed(base, var))
    return decided(c)


def paired_stats(d: np.ndarray, threshold: float, alpha: float) -> dict:
    """n, mean, std, one-sided bounds and p-values of the paired differences d."""
    from scipy import stats
    n = len(d)
    if n < 2:
        mean = float(d.mean()) if n else None
        return dict(n=n, mean=mean, std=None, lower=None, upper=None, p=None, p_better=None)
    mean, std = float(d.mean()), float(d.std(ddof=1))
    half = stats.t.ppf(1 - alpha, n - 1) * std / math.sqrt(n)
    return dict(n=n, mean=mean, std=std, lower=mean - half, upper=mean + half,
                p=p_below(d, threshold), p_better=p_below(d, 0.0))


def p_below(d: np.ndarray, threshold: float) -> float:
    """One-sided t-test p-value of H0 "mean >= threshold" against "mean < threshold"
    (stats.ttest_1samp(d, threshold, alternative="less"), without its overhead)."""
    from scipy import stats
    se = d.std(ddof=1) / math.sqrt(len(d))
    if se == 0:  # identical differences: the t statistic is infinite (or undefined)
        return 0.0 if d.mean() < threshold else 1.0
    return float(stats.t.cdf((d.mean() - threshold) / se, len(d) - 1))


def shortfall(base: list[Run], var: list[Run], n: int, metric: str) -> str | None:
    """Why the data cannot give an interval, in words; None when it can."""
    if n >= 2:
        return None
    finished = [r for r in base + var if r.status in ("completed",) + DROPPED + FAILED]
    if not finished:
        return "no finished runs"
    if n == 1:
        return "one seed: an interval needs two"
    nb, nv = len(per_seed(base, metric)), len(per_seed(var, metric))
    return f"no seed with {metric} in both arms: baseline {nb}, variant {nv}"


def failed(base: list[Run], var: list[Run]) -> str | None:
    """'refused (why)' or 'invalid (why)' when every finished run of an arm was refused or
    invalid: there is nothing to compare, and the reason says why. (Runs that diverged or were
    killed are the intervention's outcome: check_dropped judges those.)"""
    for name, runs in (("", var), ("baseline: ", base)):
        finished = {r.status for r in runs if r.status not in ("queued", "running")}
        if not finished or not finished <= {"invalid", "refused"}:
            continue
        for status in ("invalid", "refused"):
            reasons = sorted({r.reason or "no reason recorded" for r in runs if r.status == status})
            if reasons:
                return f"{status} ({name}{'; '.join(reasons[:2])}{' ...' if len(reasons) > 2 else ''})"
    return None


def verdict_kind(verdict: str) -> str:
    """'no regression (worse by ...) [WARNING ...]' -> 'no regression'."""
    return verdict.split(" (")[0].split(" [")[0]


def decided(c: Comparison) -> Comparison:
    verdict = decide(c) + alarm(c)
    final = (f"{verdict} (awaiting held-out confirmation)" if verdict_kind(verdict) in NEEDS_CONFIRMATION
             else verdict)
    return replace(c, verdict=verdict, final_verdict=final, confirmation=None)


def alarm(c: Comparison) -> str:
    """What every verdict of the program must say, whatever it is."""
    loud = [f.text for f in c.findings if f.check == "learning"]
    return f" [{loud[0]}]" if loud else ""


def decide(c: Comparison) -> str:
    """The verdict; see the module docstring for the rules. Never more than the data says."""
    if c.failed:
        return c.failed
    if c.shortfall == "no finished runs":
        return "inconclusive (no finished runs)"
    same = [f for f in c.findings if f.check in NO_CHANGE]
    if same:
        return f"no change ({same[0].text})"
    if c.confounds:
        return f"invalid (confounded: {', '.join(f.text for f in c.confounds)})"
    if c.shortfall:
        return f"inconclusive ({c.shortfall})"
    if c.lower > c.threshold:
        return "worse"
    if c.claim == "non-inferiority" and c.upper < c.margin:
        if c.is_better:
            return "better"
        if c.lower > 0:  # reliably worse, but by less than the margin allows
            return f"no regression (worse by {c.mean:.3g}, within the margin {c.margin:g})"
        return "no regression"
    if c.claim == "superiority" and c.is_better:
        return "better"
    if c.claim == "superiority" and c.mean < 0 and c.inside_noise:  # more seeds cannot help
        return f"inconclusive (inside the noise floor: |Δ| {abs(c.mean):.2g} < {c.noise.floor:.2g})"
    return f"inconclusive (needs {(more := more_seeds(c))} more seed{'' if more == '1' else 's'})"


def more_seeds(c: Comparison) -> str:
    """Seeds to add, if the mean and std stay as observed, for the bound the mean leans
    toward to cross the threshold: the smallest n with t(1 - a, n - 1) * s / sqrt(n) <
    |mean - threshold| (a: alpha_better when leaning to 'better', else alpha)."""
    from scipy import stats
    leans_better = c.claim == "superiority" and c.mean < 0
    a = c.alpha_better if leans_better else c.alpha
    n = np.arange(c.n + 1, c.n + MAX_MORE_SEEDS + 1)
    settled = stats.t.ppf(1 - a, n - 1) * c.std / np.sqrt(n) < abs(c.mean - c.threshold)
    return str(n[settled.argmax()] - c.n) if settled.any() else f">{MAX_MORE_SEEDS}"


# --- many comparisons --------------------------------------------------------------------

def adjust(comparisons: list[Comparison], method: str = "holm") -> list[Comparison]:
    """Adjust p_better over the family (every comparison with a p-value, confounded ones
    included: the org made them) and decide again. holm controls the chance of any false
    'better' (family-wise error); bh the expected share of false ones among the 'better's
    (false discovery rate). Call before confirm()."""
    from scipy import stats
    if any(c.confirmation for c in comparisons):
        raise ValueError("adjust() before confirm(): the held-out check uses the adjusted level")
    tested = [i for i, c in enumerate(comparisons) if c.p_better is not None]
    p = np.array([comparisons[i].p_better for i in tested])
    if method == "holm":
        adjusted = holm(p)
    elif method == "bh":
        adjusted = stats.false_discovery_control(p, method="bh") if len(p) else p
    else:
        raise ValueError(f"method: expected holm or bh, got {method!r}")
    out = [replace(c, adjustment=method, family=len(tested)) for c in comparisons]
    for i, p_adj in zip(tested, adjusted):
        out[i] = replace(out[i], p_better_adjusted=float(p_adj))
    return [decided(c) for c in out]


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down: the k-th smallest p (k = 0, 1, ...) times m - k, kept non-decreasing
    in that order, capped at 1."""
    m = len(p)
    order = np.argsort(p)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


# --- held-out confirmation ---------------------------------------------------------------

def confirm(c: Comparison, baseline_runs: list[dict], variant_runs: list[dict]) -> Comparison:
    """The same rule on confirm_bpb (the held-out split), at the same adjusted level. A
    'better' or 'no regression' that does not hold there says so in final_verdict (see
    only_the_gain_failed). Call it last: compare -> adjust -> confirm."""
    held_out = compare(baseline_runs, variant_runs, c.claim, c.margin, c.alpha, c.declared,
                       c.tolerances, metric="confirm_bpb")
    if held_out.p_better is not None:  # same multiplier as the validation p got
        p_adj = min(1.0, held_out.p_better * c.alpha / c.alpha_better)
        held_out = decided(replace(held_out, p_better_adjusted=p_adj, adjustment=c.adjustment,
                                   family=c.family))
    kinds = verdict_kind(c.verdict), verdict_kind(held_out.verdict)
    if only_the_gain_failed(c, kinds):  # (the program's question held there)
        c, kinds = stands_as_no_regression(c, "the main split", "the held-out split", held_out), ("no regression",) * 2
    holds = kinds[0] == kinds[1] or kinds == ("no regression", "better")
    if kinds[0] in NEEDS_CONFIRMATION and not holds:
        loud = alarm(c)
        final = (f"{c.verdict.removesuffix(loud)} (not confirmed on held-out split: "
                 f"{held_out.verdict.removesuffix(alarm(held_out))}){loud}")
    else:
        final = c.verdict
    return replace(c, final_verdict=final, confirmation=held_out)


# --- replication on fresh seeds --------------------------------------------------------------

def replicate(c: Comparison, baseline_runs: list[dict], variant_runs: list[dict], wanted: int | None = 0) -> Comparison:
    """The claim again on fresh seeds alone (runs of purpose 'replicate'), which the harness drew
    once the arm's main runs were done (experiments.plan_replication): its code was committed
    before they existed. Code that reads its seed and trains each seed it knows its own best way
    (a data order picked per seed from exploratory arms) wins on the program's seeds, and loses
    the edge on these. The claim stands if the same rule, at the same adjusted level, gives it on
    them: a second test, which a seed-keyed gain passes at its level and a real effect at its
    power. A fresh seed with no pair (a run failed) fails it; while runs are pending, or none were
    drawn though the program `wanted` some, it is awaited (None: not here; an improve program's
    tries replicate against their frontier, improve.climb). Call it after confirm()."""
    fresh = [r for r in map(Run.read, variant_runs) if r.purpose == "replicate"]
    kind = verdict_kind(c.verdict)
    if wanted is None or (not fresh and not wanted) or kind not in NEEDS_CONFIRMATION or c.final_verdict != c.verdict:
        return c
    seeds = {r.seed for r in fresh}
    theirs = [r for r in map(Run.read, baseline_runs) if r.purpose == "replicate" and r.seed in seeds]
    b, v = per_seed(theirs, c.metric), per_seed(fresh, c.metric)
    paired = sorted(b.keys() & v.keys())
    loud = alarm(c)
    plain, n = c.verdict.removesuffix(loud), len(seeds) or wanted
    if not fresh or any(r.status in ("queued", "running") for r in fresh + theirs):
        return replace(c, final_verdict=f"{plain} (awaiting replication on {n} fresh seeds){loud}")
    if len(paired) < n:
        return replace(c, final_verdict=f"{plain} (not replicated: {n - len(paired)} of {n} fresh seeds have "
                                        f"no pair of completed runs){loud}")
    again = compare(fresh_only(baseline_runs, seeds), fresh_only(variant_runs, seeds), c.claim, c.margin, c.alpha,
                    c.declared, c.tolerances)
    if again.p_better is not None:  # same multiplier as the main p got
        again = decided(replace(again, p_better_adjusted=min(1.0, again.p_better * c.alpha / c.alpha_better),
                                adjustment=c.adjustment, family=c.family))
    kinds = kind, verdict_kind(again.verdict)
    if only_the_gain_failed(c, kinds):  # (the program's question held there)
        c, kinds = stands_as_no_regression(c, "the program's seeds", f"{n} fresh seeds", again), ("no regression",) * 2
    holds = kinds[0] == kinds[1] or kinds == ("no regression", "better")
    there = again.verdict.removesuffix(alarm(again))
    final = c.verdict if holds else (f"{plain} (not replicated on {n} fresh seeds: {there} there, "
                                     f"Δ {round(again.mean, 4) + 0:+.4f} against {c.mean:+.4f}){loud}")  # (no -0.0000)
    return replace(c, final_verdict=final, replication=again)


def only_the_gain_failed(c: Comparison, kinds: tuple[str, str]) -> bool:
    """A non-inferiority `better` that a second test (held-out split, fresh seeds) finds only `no
    regression` answered the program's question again: it stands as that (as `better (not
    confirmed ...)` its fresh seeds, drawn for a claim that holds, were never drawn)."""
    return c.claim == "non-inferiority" and kinds == ("better", "no regression")


def stands_as_no_regression(c: Comparison, here: str, there: str, said: Comparison) -> Comparison:
    detail = said.verdict.removesuffix(alarm(said)).removeprefix("no regression (").removesuffix(")")  # (worse by ...)
    there += f": {detail}" if detail != "no regression" else ""
    return replace(c, verdict=f"no regression (better on {here} only, not on {there}){alarm(c)}")


def fresh_only(runs: list[dict], seeds: set) -> list[dict]:
    """The fresh seeds' runs as main ones, the rest as they were (the baseline's other runs still
    give the noise floor and the confound checks their spread; only fresh seeds pair)."""
    return [dict(r, purpose="main") if r.get("purpose") == "replicate" and r["seed"] in seeds
            else (r if r.get("arm") == "baseline" else dict(r, purpose="program")) for r in runs]


# --- the whole pipeline: the report, `org status` and the agents' `results` tool --------------

def verdicts(runs: list[dict], claim: str, margin: float, declares: dict[str, frozenset] | None = None,
             method: str = "holm", arms: list[str] | None = None, fresh_seeds: int | None = 0
             ) -> tuple[dict[str, Comparison], dict[str, str]]:
    """Every arm of a program against its baseline, from all of the program's runs (ledger rows,
    any purpose): what judge_arms() returns. arms: which to judge, in order (default: every arm
    with a run past tuning, in the order first seen)."""
    by_arm: dict[str, list[dict]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    if arms is None:
        arms = [a for a, rs in by_arm.items() if any(r.get("purpose") != "tune" for r in rs)]
    arms = [a for a in arms if a != "baseline"]
    return judge_arms(by_arm.get("baseline", []), {a: by_arm.get(a, []) for a in arms}, claim, margin,
                      declares, method, fresh_seeds)


def judge_arms(baseline_runs: list[dict], arm_runs: dict[str, list[dict]], claim: str, margin: float,
               declares: dict[str, frozenset] | None = None, method: str = "holm", fresh_seeds: int | None = 0
               ) -> tuple[dict[str, Comparison], dict[str, str]]:
    """Every arm against the baseline: compare -> adjust over the family -> confirm on the
    held-out split -> replicate on fresh seeds (`fresh_seeds`: how many the program draws, so
    that a claim with none yet is awaited; 0: judged on the runs there are; None: no replication
    step, as for an improve program's arms against the baseline). Returns
    ({arm: Comparison}, {arm: why there is no verdict}): an arm whose runs the referee cannot
    read gets a reason, never a made-up verdict."""
    declares = declares or {}
    raw, unreadable = {}, {}
    for arm, runs in arm_runs.items():
        try:
            raw[arm] = compare(baseline_runs, runs, claim, margin, declared=frozenset(declares.get(arm, ())))
        except (KeyError, TypeError, ValueError) as e:  # a row the referee cannot read
            unreadable[arm] = f"the referee could not read its runs ({e})"
    adjusted = adjust(list(raw.values()), method)
    return ({arm: replicate(confirm(c, baseline_runs, arm_runs[arm]), baseline_runs, arm_runs[arm], fresh_seeds)
             for arm, c in zip(raw, adjusted)}, unreadable)

