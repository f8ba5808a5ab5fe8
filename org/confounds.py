"""
Confound checks: why a comparison of two arms may mean nothing, or less than it seems.

Each check is one function over the two arms' main runs (referee.Run records: the harness's
measurements and the runner's clock), returning Findings; its docstring says why it matters.
The referee (org/referee.py) turns them into the verdict:

    invalid    budgets differ; the budgeted quantity differs; FLOPs, tokens or steps differ with
               nothing to explain it; params differ undeclared; eval or data fingerprints
               differ; diverged or killed in one arm only; devices differ under a seconds
               budget; wall time per unit of budget far above the baseline's (hidden compute),
               or per run above it under a seconds budget in a variant whose trainer, and
               so whose clock, is its own;
               val_bpb far below the model's own train-split score, beyond the baseline's (it
               learned or reads the evaluation text); an initial model below the data's
               unigram entropy (it started trained); a code arm's forward pass far slower per
               FLOP when scored than the base's (compute at evaluation)
    no change  same overrides and code; bit-identical final parameters; a seed-only change
    warning    FLOPs, tokens or steps differ as the budget or the claim explains (seconds
               budget; FLOP budget with FLOPs/token changed; declared); unequal seed sets;
               devices differ otherwise; wall time per unit of budget beyond the noise;
               error or invalid runs in one arm only (invalid in a variant with code of its
               own: it could fail on purpose); the baseline is not learning; a code arm's
               forward pass somewhat slower per FLOP when scored than the base's; an arm
               that trained on windows of its stream again

A claim declares what it changes on purpose (declared={'params'} for "wider at equal FLOPs").
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
# scipy.stats is imported where it is used: it takes over a second to import, and every `org`
# command outside a box imports this module (in a CLI's box `org` imports its port alone: org/entry.py)

if TYPE_CHECKING:
    from org.referee import Run

DECLARABLE = ("params", "flops", "tokens", "steps")  # what a claim may say it changes
DROPPED = ("diverged", "killed")  # outcomes of the intervention: losing them biases an arm
FAILED = ("error", "invalid")     # harness failures or broken rules: rerun them


@dataclass(frozen=True)
class Tolerances:
    """Relative differences between the arms' per-run medians that still count as equal."""
    flops: float = 0.01      # a FLOP budget ends within one step of its value
    tokens: float = 0.01
    steps: float = 0.01
    flops_per_token: float = 0.01
    # wall seconds per unit of budget as a log ratio to the baseline's (paired by seed, median over
    # seeds), beyond these by more than its margin of error: a warning (+16%), invalid (+49%;
    # under a seconds budget +16%: the budgeted quantity itself)
    wall_time: float = 0.15
    wall_time_invalid: float = 0.4
    # the same log ratio for code of its own whose training step is the base's (replayed by the
    # harness from the same init, landing where the base's does) at the baseline's model config:
    # its runs do the baseline's work, so more time than this is work no step count shows (invalid)
    same_step: float = 0.05
    # seconds: the runner's clock swings by about this much on equal work whatever the run's length
    # (its start-up and the scheduler on a busy machine: 0.5 to 1.0 s for the same sub-second run
    # in CI), so a short run's wall time per unit of budget means less than a long one's
    wall_jitter: float = 0.25
    # seconds: the same for the CPU time of a trainer's box (the runner's clock where every run has it:
    # a busy machine moves the wall far more than the CPU time, which waiting for a core does not count)
    cpu_jitter: float = 0.1
    # bits per byte: the variant's held-out gap (val_bpb - train_bpb) below the baseline's and below
    # zero by more than this and its margin of error: invalid (it learned or reads the val text)
    held_out_gap: float = 0.1
    # bits per byte: an initial model this far below the data's unigram entropy started trained
    head_start: float = 0.25
    # a code arm's scored forward pass, its time per FLOP over the base's forward pass on the same
    # batches (median over its runs): a warning (x1.5), invalid (x2.5: dynamic evaluation is x3+)
    eval_compute: float = 1.5
    eval_compute_invalid: float = 2.5


@dataclass(frozen=True)
class Finding:
    check: str      # which check: budget, flops, tokens, steps, params, eval, data, seeds, ...
    text: str       # what a person reads, short: it goes into the verdict
    invalid: bool   # True: the comparison means nothing; False: a warning


NO_CHANGE = ("noop", "identical", "seed-only")  # findings that make the verdict `no change`
UNSEEN_WORK = "work the FLOP count does not see?"  # a wall-time warning's words for a slower variant
SEED_Z = 4  # one seed's wall time past the invalid bar by this many of one pair's noise: hidden work there
SEED_STALL = 10.0  # ... and by more than a stall of this many seconds could add to one run (a burst of another process's)


def find_confounds(base: list[Run], var: list[Run], declared: frozenset, tol: Tolerances,
                   base_all: list[Run] = ()) -> list[Finding]:
    """Every check over the two arms' main runs (base_all: the baseline's re-runs too, for the
    spread of its wall time)."""
    found = []
    for check in (check_budget, check_spend, check_params, check_fingerprints, check_seeds,
                  check_noop, check_identical, check_seed_only, check_seed_ignored, check_devices, check_dropped,
                  check_learning, check_head_start, check_repeats):
        found += check(base, var, declared, tol)
    base_all = list(base_all) or base
    return (found + check_wall_time(base, var, tol, base_all) + check_held_out_gap(base, var, tol, base_all)
            + check_eval_compute(base, var, tol))


def completed(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.status == "completed"]


def median(runs: list[Run], key: str) -> float | None:
    values = [getattr(r, key) for r in completed(runs) if getattr(r, key) is not None]
    return statistics.median(values) if values else None


def change(base: list[Run], var: list[Run], key: str) -> float | None:
    """Relative change of the variant's median over the baseline's; None when unknown."""
    b, v = median(base, key), median(var, key)
    return None if b is None or v is None or b == 0 else v / b - 1


def budget_kind(runs: list[Run]) -> str | None:
    kinds = {r.budget[0] for r in runs if r.budget}
    return kinds.pop() if len(kinds) == 1 else None


def check_budget(base, var, declared, tol) -> list[Finding]:
    """Invalid: arms (or runs within an arm) under different budgets measure different things."""
    budgets = {r.budget for r in base + var if r.budget}
    if len(budgets) <= 1:
        return []
    show = lambda runs: ", ".join(sorted(f"{k} {v:g}" for k, v in {r.budget for r in runs if r.budget}))
    return [Finding("budget", f"budgets differ: baseline {show(base)} / variant {show(var)}", True)]


def check_spend(base, var, declared, tol) -> list[Finding]:
    """FLOPs, tokens and steps must match unless the budget or the claim explains it:
    - the quantity the budget fixes differs: invalid, nothing can excuse it;
    - under a seconds budget the arms spend equal wall time, the rest follows: warning;
    - under a FLOP budget with FLOPs/token changed, tokens and steps follow: warning
      (a compute-matched comparison; steps that differ at equal FLOPs/token are invalid);
    - the claim declared it (e.g. 'flops' for "wider at equal steps"): warning;
    - anything else: invalid (the spurious width result: more FLOPs, lower loss)."""
    kind = budget_kind(base + var)
    fpt = change(base, var, "flops_per_token")
    fpt_changed = fpt is not None and abs(fpt) > tol.flops_per_token
    found = []
    for key in ("flops", "tokens", "steps"):
        delta = change(base, var, key)
        if delta is None or abs(delta) <= getattr(tol, key):
            continue
        text = f"{key} {delta:+.1%}"
        if kind == key:
            found.append(Finding(key, f"{text} under a {kind} budget", True))
        elif kind == "seconds":
            found.append(Finding(key, f"{text} (equal wall time)", False))
        elif kind == "flops" and key != "flops" and fpt_changed:
            found.append(Finding(key, f"{text} (equal FLOPs, FLOPs/token {fpt:+.1%})", False))
        elif key in declared:
            found.append(Finding(key, f"{text} (declared)", False))
        else:
            found.append(Finding(key, text, True))
    return found


def check_params(base, var, declared, tol) -> list[Finding]:
    """Invalid when the parameter count (total or matmul) changed and the claim did not
    declare 'params': a bigger model winning says nothing about the idea. Declared: silent."""
    if "params" in declared:
        return []
    b = {r.params for r in completed(base) if r.params[0] is not None}
    v = {r.params for r in completed(var) if r.params[0] is not None}
    if not b or not v or b == v:
        return []
    (bt, bm), (vt, vm) = min(b), min(v)
    if bt == vt and (bm is None or vm is None):  # an older row without the matmul count
        return []
    text = f"params {vt / bt - 1:+.1%}" if bt != vt else f"matmul params {vm / bm - 1:+.1%}"
    return [Finding("params", f"{text} (not declared)", True)]


def check_fingerprints(base, var, declared, tol) -> list[Finding]:
    """Invalid: a different evaluation or validation set makes the numbers incomparable."""
    found = []
    for name in ("eval", "data"):
        key = f"{name}_fingerprint"
        if len({getattr(r, key) for r in completed(base + var)}) > 1:
            found.append(Finding(name, f"{name} fingerprints differ", True))
    return found


def check_seeds(base, var, declared, tol) -> list[Finding]:
    """Warning: the arms were given different seeds. Pairs use the common ones only, so no
    seed can be picked to win; a single seed is left to the verdict (inconclusive)."""
    b, v = {r.seed for r in base}, {r.seed for r in var}
    if not b or not v or b == v:
        return []
    common = len(b & v)
    return [Finding("seeds", f"seeds differ: baseline {_seeds(b)} / variant {_seeds(v)}, "
                             f"{common} in common", False)]


def _seeds(seeds) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def check_repeats(base, var, declared, tol) -> list[Finding]:
    """Warning: an arm's steps went through their stream of windows more than once (the
    harness counts it: streams.with_passes), so it trained on some windows again where a run
    its windows were counted for sees new text every step. Its val_bpb is worse than its
    budget buys: a run far faster than the baseline's pace under a seconds budget (its windows
    were counted at twice that pace, at its own code's twice again), or a budget past the
    train split. Not invalid: repeats cost the arm that made them."""
    found = []
    for name, runs in (("baseline", base), ("variant", var)):
        over = [r for r in completed(runs) if (r.stream_passes or 0) > 1]
        if over:
            most = max(r.stream_passes for r in over)
            found.append(Finding("repeats", f"{name} trained on windows again on seed{'s' * (len(over) > 1)} "
                                            f"{_seeds(r.seed for r in over)} (up to x{most:.2f} its stream)", False))
    return found


def check_noop(base, var, declared, tol) -> list[Finding]:
    """No change: the variant has the baseline's overrides and code, so any difference is the
    seed's (a dirty working tree counts as different code: we cannot tell)."""
    same_overrides = {r.overrides for r in base} == {r.overrides for r in var}
    codes = {r.code for r in base + var}
    same_code = len(codes) == 1 and not any(dirty for _, dirty in codes)
    if not (base and var and same_overrides and same_code):
        return []
    only_seed = {r.seed for r in base} != {r.seed for r in var}
    text = "only the seed changed" if only_seed else "the baseline's overrides and code"
    return [Finding("noop", text, True)]


def check_identical(base, var, declared, tol) -> list[Finding]:
    """No change: on every seed both arms completed, the harness found the final parameters
    bit-identical (a code change that changes nothing the training does)."""
    b = {r.seed: r.params_fingerprint for r in completed(base)}
    v = {r.seed: r.params_fingerprint for r in completed(var)}
    seeds = b.keys() & v.keys()
    if not seeds or any(b[s] is None or b[s] != v[s] for s in seeds):
        return []
    return [Finding("identical", f"final parameters bit-identical to the baseline's on "
                                 f"seed{'s' * (len(seeds) > 1)} {_seeds(seeds)}", True)]


def check_seed_only(base, var, declared, tol) -> list[Finding]:
    """No change: the harness's seed probe found, for every completed run of the variant, an
    initialisation only redrawn from the baseline's distributions and the baseline's training
    step: a different seed in disguise, whose luck the pairing by seed would read as an effect.
    Only where the two arms' model configs are the same (as built: a default restated in the
    overrides changes nothing; an older record's overrides as written): the probe replays the
    variant's config, so an improvement program's reseed try on a frontier of matrix_lr 0.02 read
    `no change` against the first baseline (0.01) too, at Δ -0.072, p < 0.001."""
    done, both = completed(var), completed(base) + completed(var)
    key = "config_fingerprint" if all(r.config_fingerprint for r in both) else "overrides"  # (one kind for all)
    config = lambda runs: {getattr(r, key) for r in completed(runs)}
    if not done or not all(r.seed_only for r in done) or config(base) != config(var):
        return []
    return [Finding("seed-only", "only the random initialisation differs from the baseline's (redrawn "
                                 "from the same distributions; the same training step): a seed change", True)]


def check_seed_ignored(base, var, declared, tol) -> list[Finding]:
    """Invalid: two of the variant's runs on different seeds started from, or ended at, the same
    parameters (the harness's fingerprints of its code's init and of the checkpoint). Its code
    ignores the seed: its "seeds" are one draw, which it could have picked, seed by seed over
    earlier arms, for the luck the harness's val_bpb showed it; fresh seeds replicate that too."""
    done = completed(var)
    for key, when in (("init_fingerprint", "started from"), ("params_fingerprint", "ended at")):
        seeds = {}
        for r in done:
            if getattr(r, key) is not None:
                seeds.setdefault(getattr(r, key), set()).add(r.seed)
        alike = next((s for s in seeds.values() if len(s) > 1), None)
        if alike:
            return [Finding("seed-ignored", f"its runs on seeds {_seeds(alike)} {when} bit-identical parameters: "
                                            "its code ignores the seed (one draw, which it could have picked)", True)]
    return []


def check_learning(base, var, declared, tol) -> list[Finding]:
    """Warning, loud: the baseline's val_bpb does not beat the data's unigram entropy (what
    counting tokens gives): nothing the program compares is learning, whatever the verdicts say."""
    values = [r.val_bpb for r in completed(base) if r.val_bpb is not None]
    entropy = [r.unigram_bpb for r in completed(base) if r.unigram_bpb is not None]
    if not values or not entropy or np.mean(values) < min(entropy):
        return []
    return [Finding("learning", f"NOT LEARNING: the baseline's val_bpb {np.mean(values):.3f} does not beat "
                                f"the data's unigram entropy {min(entropy):.3f} bits per byte", False)]


def check_head_start(base, var, declared, tol) -> list[Finding]:
    """Invalid: the variant's initial model, built by its own code at the run's seed, already
    scores below the data's unigram entropy on text it could not foresee. Nothing untrained
    does better than counting tokens: it was trained before its budget began (weights in its
    commit, trained in an agent's box that no budget meters). Code that builds a different model
    for the harness's probe than for its run is not caught here (README)."""
    ahead = [r for r in completed(var) if r.init_bpb is not None and r.unigram_bpb is not None
             and r.init_bpb < r.unigram_bpb - tol.head_start]
    if not ahead:
        return []
    first = min(ahead, key=lambda r: r.init_bpb)
    return [Finding("head-start", f"starts trained: its initial model scores {first.init_bpb:.3f} bits per byte "
                                  f"(seed{'s' * (len(ahead) > 1)} {_seeds(r.seed for r in ahead)}) on text it could "
                                  f"not foresee, below the data's unigram entropy {first.unigram_bpb:.3f}: training "
                                  f"no budget counted", True)]


def check_devices(base, var, declared, tol) -> list[Finding]:
    """Different devices: invalid under a seconds budget (the device sets how much training
    fits); a warning otherwise (same work, numerics differ only in rounding). Judged seed by
    seed, as the arms are compared, on the device model harness code saw each run train on (a
    cluster can mix kinds); on the trainer's word for runs recorded before the harness looked."""
    b = {r.seed: r.machine for r in completed(base) if r.machine}
    v = {r.seed: r.machine for r in completed(var) if r.machine}
    apart = sorted(s for s in b.keys() & v.keys() if b[s] != v[s])
    if apart:
        text = "; ".join(f"seed {s}: baseline on {b[s]}, variant on {v[s]}" for s in apart)
        return [Finding("device", f"devices differ: {text}", budget_kind(base + var) == "seconds")]
    if b.keys() & v.keys():
        return []
    b = {r.device for r in completed(base)}
    v = {r.device for r in completed(var)}
    if not b or not v or b == v:
        return []
    show = lambda devices: ", ".join(sorted(map(str, devices)))
    text = f"devices differ: baseline {show(b)} / variant {show(v)}"
    return [Finding("device", text, budget_kind(base + var) == "seconds")]


def check_wall_time(base, var, tol, base_all) -> list[Finding]:
    """Hidden compute, judged by the runner's clock (the trainer's own can be stopped): the CPU
    seconds of all the trainer's box ran where the variant's every run has them (its cgroup's: waiting
    for a core is not in them, so their noise is a fraction of the wall's, and work on a second
    core is), else wall seconds; per unit of the budget (per FLOP; per run under a seconds budget), as the log ratio
    to the baseline's on the same seed; D = its median over seeds. Its margin of error comes
    from the noise of a pair: the larger of the pairs' own spread and sqrt(2) x the baseline's
    spread over all its runs (every seed and re-run does the same work), so a busy machine
    widens the tolerance instead of raising alarms; that spread is taken as at least
    tol.wall_jitter over the baseline's median wall time, since three runs of a second or less
    can read alike and say nothing of a clock that swings by half a second. The pairs' spread counts only up to twice
    the baseline's: a variant that hides work on some seeds and pads others' wall time would
    otherwise widen its own margin until the work hid in it:
    - D beyond tol.wall_time_invalid (+49%) by more than its margin: invalid (work the record
      does not see: extra steps, a bigger model, training outside the timed loop); and so is one
      seed's own difference beyond it by more than SEED_Z x the machine's noise for one pair
      (and than a stall of SEED_STALL seconds in one run, which a run of seconds would not survive):
      a median is deaf to work hidden on fewer than half the seeds (code that reads its seed
      trains twice as long on two of five, and the mean gain counts it all);
    - a variant that runs code of its own with D beyond tol.wall_time (+16%) by more than its
      margin: invalid; beyond tol.same_step (+5%) where its every run's training step replayed
      as the base's (the seed probe: the same parameters after two steps from the same init)
      at the baseline's model config, and on the base's compiled kernels (a run of kernels of
      its own compiles them, seconds the baseline's runs do not spend): its runs do the
      baseline's steps, and a trainer loop that trained 1.4x the steps it reported read +33%
      per FLOP (code that knows this changes its step a little and is held to +16%: README).
      Under a seconds budget the budget is time, and that trainer keeps its own clock: one that
      reports train_seconds within the budget while it trains longer (or trains before its
      clock starts, or after it stops) shows here and nowhere else. Under a budget of
      FLOPs, its code is what the FLOP count is recounted from, and work it does besides (a
      block looped, a weight reused as an extra matmul, a costlier optimizer, more windows a
      step) shows only on the clock: up to +49% read as a warning, beside a `better` that stood.
      Honest code slower per FLOP reads invalid too: its claim at equal FLOPs needs the clock to
      agree. A config arm's code is the base trainer's, whose FLOPs are recounted exactly, and
      the rest of its wall time (start-up, the first step, the final evaluation) honestly grows
      with the model: +21% for depth 4 against depth 2 at a 30 s budget (measured);
    - |D| beyond tol.wall_time (+16%) by more than its margin: a warning."""
    kind = budget_kind(base + var)
    # the clock that tells most; a baseline run without its figure (a hunt saw one: its box's group swept before it
    # was read, cgroups.sweep) sits out with its seed, where it switched every comparison of the program to the wall's
    metered = lambda runs: [r for r in completed(runs) if r.train_cpu_seconds]  # noqa: E731
    cpu = len(metered(var)) == len(completed(var)) and len({r.seed for r in metered(base)} & {r.seed for r in metered(var)}) >= 2
    clock, jitter = ("train_cpu_seconds", tol.cpu_jitter) if cpu else ("wall_seconds", tol.wall_jitter)
    said = "CPU time" if cpu else "wall time"

    def cost(r: Run) -> float | None:
        work, spent = 1.0 if kind == "seconds" else r.flops, getattr(r, clock)
        return math.log(spent / work) if spent and work else None

    b = {r.seed: cost(r) for r in completed(base) if cost(r) is not None}
    v = {r.seed: cost(r) for r in completed(var) if cost(r) is not None}
    seeds = sorted(b.keys() & v.keys())
    if len(seeds) < 2:
        return []
    d = np.array([v[s] - b[s] for s in seeds])
    D = float(np.median(d))
    walls = [getattr(r, clock) for r in completed(base_all) if getattr(r, clock)]
    floor = jitter / float(np.median(walls)) if walls else 0.0  # that swing as a log ratio
    own = [cost(r) for r in completed(base_all) if cost(r) is not None]  # the baseline's, every run
    margin = median_margin(d, own, floor)
    text = (f"{said} {math.exp(D) - 1:+.0%} per {'run' if kind == 'seconds' else 'FLOP'} by the runner's "
            f"clock (median over {len(seeds)} seeds, ±{math.exp(margin) - 1:.0%} at 95%)")
    if D - margin > tol.wall_time_invalid:
        return [Finding("wall time", f"{text}: hidden compute", True)]
    worst = int(np.argmax(d))
    one = max(SEED_Z * pair_noise(own, floor), math.log1p(SEED_STALL / float(np.median(walls))) if walls else 0.0)
    if d[worst] - one > tol.wall_time_invalid:  # (the median is deaf to work hidden on fewer than half the seeds)
        return [Finding("wall time", f"{said} {math.exp(d[worst]) - 1:+.0%} per {'run' if kind == 'seconds' else 'FLOP'} "
                                     f"on seed {seeds[worst]} by the runner's clock (±{math.exp(one) - 1:.0%}, the "
                                     f"machine's noise for one pair): hidden compute on some seeds", True)]
    same_step = {r.config_fingerprint for r in completed(base)} == {r.config_fingerprint for r in completed(var)} \
        and all(r.replay == "same" and r.own_kernels is False for r in completed(var))  # (unknown: older records)
    if D - margin > (tol.same_step if same_step else tol.wall_time) and runs_own_code(base, var):
        why = "over its time budget" if kind == "seconds" else \
            f"its training step is the base's (replayed), so: {UNSEEN_WORK}" if same_step else \
            f"code of its own, and {UNSEEN_WORK}"
        return [Finding("wall time", f"{text}: {why}", True)]
    if abs(D) - margin > tol.wall_time:
        return [Finding("wall time", f"{text}: {UNSEEN_WORK if D > 0 else 'skips work it claims?'}", False)]
    return []


def check_eval_compute(base, var, tol) -> list[Finding]:
    """Compute at evaluation alone: a code arm's model is scored in a worker, and each batch it
    scores is run right after by the base commit's forward pass in a worker of the same kind;
    Run.forward_time_ratio is the (trimmed) mean of the two times' ratio, per FLOP of each recount
    (org/remote.py's Yardstick), and R its median over the arm's runs. About 1 for a forward
    pass that does the work its FLOPs say; more for work that only evaluation does, which no
    budget paid for and no probe sees: training on each window while scoring it (dynamic
    evaluation, causal and row-local: a backward pass a token, R of 3 or more), an ensemble of
    passes. Code that is honestly slower per FLOP is slower in training too, where more than
    +49% is invalid already (check_wall_time), so R is not excused by the training's time: an
    excuse would be a budget for padding the training's wall time.
    - R beyond tol.eval_compute_invalid (x2.5): invalid;
    - R beyond tol.eval_compute (x1.5): a warning."""
    ratios = [r.forward_time_ratio for r in completed(var) if r.forward_time_ratio]
    if not ratios:
        return []
    R = statistics.median(ratios)
    text = (f"its forward pass took x{R:.2f} the base's time per FLOP when scored (the harness's clock, median "
            f"over {len(ratios)} runs)")
    if R > tol.eval_compute_invalid:
        return [Finding("eval compute", f"{text}: compute at evaluation that no budget paid for", True)]
    if R > tol.eval_compute:
        return [Finding("eval compute", f"{text}: work at evaluation?", False)]
    return []


def check_held_out_gap(base, var, tol, base_all) -> list[Finding]:
    """Trained on the evaluation text, or reading it: a run's code can read the val split (the
    data is in its box), so the harness also scores every model on train-split windows drawn
    at measuring time, which no run can know (evaluator.unforeseen_windows). A model's held-out
    gap, val_bpb - train_bpb, is its own: an honest change moves both figures together (a run
    sees a sliver of the train split, once), and regularising an overfit model shrinks a
    positive gap towards zero, not below it. So per seed e = the variant's gap - min(the
    baseline's gap, 0), E its median; E below -tol.held_out_gap (0.1 bpb) by more than its
    margin of error is invalid: the model does better on held-out text than on its own
    training text, by more than the baseline does. The margin has two parts: the seeds' spread
    (the baseline's gaps' spread bounds it, as for wall time) and the draw's (draw_margin: the
    windows are one draw for the whole lab, so no number of seeds averages it away)."""
    def gap(r: Run) -> float | None:
        return r.val_bpb - r.train_bpb if r.val_bpb is not None and r.train_bpb is not None else None

    b = {r.seed: r for r in completed(base) if gap(r) is not None}
    v = {r.seed: r for r in completed(var) if gap(r) is not None}
    seeds = sorted(b.keys() & v.keys())
    if len(seeds) < 2:
        return []
    e = np.array([gap(v[s]) - min(gap(b[s]), 0.0) for s in seeds])
    E = float(np.median(e))
    margin = math.hypot(median_margin(e, [gap(r) for r in completed(base_all) if gap(r) is not None]),
                        draw_margin([b[s] for s in seeds], [v[s] for s in seeds]))
    if E + margin < -tol.held_out_gap:
        return [Finding("held-out gap", f"val_bpb {-E:.3f} below its score on unforeseen train-split text, "
                        f"beyond the baseline's (median over {len(seeds)} seeds, ±{margin:.3f} at 95%): "
                        "trained on or reading the evaluation text", True)]
    return []


def draw_margin(base: list[Run], var: list[Run]) -> float:
    """The 95% margin of error that the draw of the windows puts on the two arms' difference of
    gaps: the train-split windows are one draw for the whole lab, and the val windows one draw
    of the lab's split, so no number of seeds averages either away. Two models that differ much
    by kind of text (one barely trained, say) differ much by draw too: at equal FLOPs a 3x wider
    tiny model's gap moved by 0.27 bpb (std) between draws of 32 train windows, and 6 to 12 of
    300 draws (three counts, two labs; tests/held_out_draws.py) read `invalid` without the train
    part; with it but without the val part, 2 of 7 new labs did (test_e2e_referee)."""
    return math.hypot(window_margin([r.train_window_bpb for r in base], [r.train_window_bpb for r in var]),
                      window_margin([r.val_window_bpb for r in base], [r.val_window_bpb for r in var]))


def window_margin(base: list, var: list) -> float:
    """The 95% margin of a mean over windows of the arms' difference (variant - baseline, window
    by window, averaged over the paired seeds): their spread over the windows. 0 where the runs
    lack the windows' figures (measured before they were kept)."""
    from scipy import stats
    windows = base + var
    if not all(windows) or len({len(w) for w in windows}) != 1 or len(windows[0]) < 2:
        return 0.0
    k = len(windows[0])
    delta = np.mean([np.subtract(v, b) for b, v in zip(base, var)], axis=0)
    return float(stats.t.ppf(0.95, k - 1) * delta.std(ddof=1) / math.sqrt(k))


def median_margin(d: np.ndarray, own: list[float], floor: float = 0.0) -> float:
    """The 95% margin of error of median(d), d a paired difference per seed: from the pairs' own
    spread, widened to the machine's (sqrt(2) x the spread of `own`, the baseline's figure over
    all its runs, or of `floor`, a run's known noise, whichever is larger) and capped at twice
    that: more spread is the variant's own doing (hidden work on some seeds, not all), and would
    otherwise widen the margin until it hid. The floor is the baseline's alone, so a variant
    cannot raise it; it matters where three runs' spread says little (two of them alike read 0)."""
    from scipy import stats
    noise, machine = robust_std(d), pair_noise(own, floor)
    if len(own) >= 3:
        noise = max(machine, min(noise, 2 * machine))
    else:
        noise = max(noise, machine)
    return stats.t.ppf(0.95, len(d) - 1) * 1.2533 * noise / math.sqrt(len(d))  # 1.2533: a median's error


def pair_noise(own: list[float], floor: float = 0.0) -> float:
    """The spread of one pair's difference on this machine: sqrt(2) x the baseline's spread over
    all its runs (or `floor`, a run's known noise, whichever is larger)."""
    return math.sqrt(2) * max(robust_std(np.array(own)) if len(own) >= 3 else 0.0, floor)


def robust_std(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: the std of normal data, deaf to one outlier
    (a first run that compiles the kernels)."""
    return 1.4826 * float(np.median(np.abs(x - np.median(x)))) if len(x) else 0.0


def check_dropped(base, var, declared, tol) -> list[Finding]:
    """A seed that completed in one arm but not the other is dropped from the pairs.
    Diverged or killed in one arm only: invalid, since dropping the failures hides them
    (the survivors of a fragile variant look fine). Error or invalid: a warning, rerun it;
    but invalid where the variant runs code of its own, which could fail on purpose on the
    seeds it would lose (its trainer and model run in every run) and so choose which count."""
    found = []
    for name, mine, other in (("variant", var, base), ("baseline", base, var)):
        done_there = {r.seed for r in completed(other)}
        done_here = {r.seed for r in completed(mine)}
        chooses = name == "variant" and runs_own_code(base, var)
        for statuses, invalid in ((DROPPED, True), (FAILED, chooses)):
            lost = {}
            for r in mine:
                if r.status in statuses and r.seed in done_there and r.seed not in done_here:
                    lost.setdefault(r.status, set()).add(r.seed)
            for status, seeds in sorted(lost.items()):
                plural = "s" if len(seeds) > 1 else ""
                why = " (in its own code, which could choose the seeds that count)" if chooses and status in FAILED else ""
                found.append(Finding("dropped", f"{name} {status} on seed{plural} {_seeds(seeds)}{why}", invalid))
    return found


def runs_own_code(base, var) -> bool:
    """The variant ran code the baseline did not: a commit of its own, or a dirty tree."""
    base_code = {r.code for r in base}
    return any(r.code not in base_code or r.code[1] for r in var)
