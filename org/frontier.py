"""
The frontier's gate: which tries of an improvement program may join the frontier.

An improvement program makes try after try against the frontier (the best configuration so
far), and the referee gives each a one-sided p-value that it beats the frontier (paired
seeds, H0 "mean d >= 0", d = try - frontier in val_bpb). Tested each at plain alpha = 0.05,
100 tries that change nothing keep about 5 of them anyway; and a program's keeps are small,
often smaller than the seed spread, so noise is exactly what wins. It happened: an
autoresearch loop kept a change of the random seed as a win. So a try joins the frontier
only when an online false-discovery-rate rule says so. Online: each p-value is decided the
moment it arrives, without knowing the tries to come.

The rule is LORD++ (Ramdas, Yang, Wainwright & Jordan 2017, "Online control of the false
discovery rate with decaying memory"; Javanmard & Montanari 2018). Think of alpha-wealth:
the rule starts with W0 <= alpha (default alpha / 2), spends a share gamma_k of it on the
k-th try, and each keep earns alpha back (the first keep alpha - W0), spent the same way on
the tries after it. With tau_1 < tau_2 < ... the tries kept so far:

    try t's level  alpha_t = gamma_t * W0 + (alpha - W0) * gamma_{t - tau_1}
                             + alpha * sum_{j >= 2} gamma_{t - tau_j}
    keep           p_t <= alpha_t: the try joins the frontier, and t becomes a tau
    discard        otherwise

gamma_k ∝ log(max(k, 2)) / (k * exp(sqrt(log k))) (Javanmard & Montanari's choice: it
decreases, and slowly), normalised to sum to 1 over HORIZON tries and 0 beyond (a program
never gets that far). The indices t, t - tau_1, t - tau_2, ... differ, so alpha_t <= alpha;
with no keep yet, alpha_t = gamma_t * W0 and the chance of any false keep among nulls is at
most W0. The expected share of false keeps among all keeps (FDR) stays <= alpha when the
nulls' p-values are independent of each other and of the true effects'. Tries that share the
frontier's runs are not quite that (an unlucky frontier seed flatters every try measured
against it): fresh frontier runs per try keep the guarantee exact.

The state is the tries decided so far and the ones kept, so the harness rebuilds it from
its ledger after a crash:

    rule = Lord(alpha=0.05)                       # the program's stated FDR level
    rule.level()                                  # 0.0026: what the first try's p must beat
    rule.keeps(p)                                 # does this try join the frontier?
    rule = rule.after(p)                          # the rule once this try is decided
    rule = Lord.rebuild([False, True], alpha=0.05)  # the same state from the ledger's keeps
    replay([0.3, 0.001], Lord(alpha=0.05))        # [(level, kept), ...] per try

power(n, delta, sigma, level) is the chance that a try of true effect delta, on n paired
seeds, gets kept at that level; simulate() runs synthetic programs through a rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from typing import Iterable

import numpy as np
# scipy.stats is imported where it is used: it takes over a second to import, and every `org`
# command outside a box imports this module (in a CLI's box `org` imports its port alone: org/entry.py)

HORIZON = 10**6  # tries gamma is spread over


@cache
def gammas() -> np.ndarray:
    """gamma_k for k = 0 .. HORIZON (gamma_0 = 0: only t > tau_j spends a keep's wealth)."""
    k = np.arange(1, HORIZON + 1, dtype=float)
    g = np.log(np.maximum(k, 2)) / (k * np.exp(np.sqrt(np.log(k))))
    return np.concatenate([[0.0], g / g.sum()])


def gamma(k: int) -> float:
    return float(gammas()[k]) if k <= HORIZON else 0.0


def check_p(p: float) -> float:
    if not 0 <= p <= 1:  # NaN fails too
        raise ValueError(f"p: expected a p-value in [0, 1], got {p!r}")
    return float(p)


# --- the rule ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Lord:
    """LORD++ after `tries` decided tries, of which those at kept_at (1-based) were kept."""
    alpha: float = 0.05
    w0: float | None = None             # the initial wealth; None: alpha / 2
    tries: int = 0
    kept_at: tuple[int, ...] = ()

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: expected an FDR level in (0, 1), got {self.alpha!r}")
        if self.w0 is None:
            object.__setattr__(self, "w0", self.alpha / 2)
        if not 0 < self.w0 <= self.alpha:
            raise ValueError(f"w0: expected an initial wealth in (0, alpha={self.alpha}], got {self.w0!r}")

    def level(self) -> float:
        """alpha_t of the next try, t = tries + 1: what its p-value must beat."""
        t = self.tries + 1
        a = gamma(t) * self.w0
        if self.kept_at:
            a += (self.alpha - self.w0) * gamma(t - self.kept_at[0])
            a += self.alpha * sum(gamma(t - tau) for tau in self.kept_at[1:])
        return min(a, self.alpha)  # <= alpha already; the min absorbs float rounding

    def keeps(self, p: float) -> bool:
        return check_p(p) <= self.level()

    def record(self, kept: bool) -> Lord:
        """The rule once the next try is decided (kept or not)."""
        t = self.tries + 1
        return replace(self, tries=t, kept_at=self.kept_at + (t,) if kept else self.kept_at)

    def after(self, p: float) -> Lord:
        return self.record(self.keeps(p))

    @classmethod
    def rebuild(cls, kept: Iterable[bool], alpha: float = 0.05, w0: float | None = None) -> Lord:
        """The state from the ledger's decisions, in order: no p-value needed."""
        rule = cls(alpha, w0)
        for k in kept:
            rule = rule.record(bool(k))
        return rule


@dataclass(frozen=True)
class Fixed:
    """Every try at the same level: what LORD++ replaces, for comparison."""
    alpha: float = 0.05

    def level(self) -> float:
        return self.alpha

    def keeps(self, p: float) -> bool:
        return check_p(p) <= self.alpha

    def record(self, kept: bool) -> Fixed:
        return self

    def after(self, p: float) -> Fixed:
        return self


def replay(p_values: Iterable[float], rule: Lord | Fixed | None = None) -> list[tuple[float, bool]]:
    """(level, kept) of each try, the p-values fed in order through rule (default Lord())."""
    rule = Lord() if rule is None else rule
    out = []
    for p in p_values:
        level, kept = rule.level(), rule.keeps(p)
        out.append((level, kept))
        rule = rule.record(kept)
    return out


# --- power -------------------------------------------------------------------------------

def power(n: int, delta: float, sigma: float, level: float) -> float:
    """Chance that a one-sided paired t-test on n seeds gets p <= level when the true mean
    difference is delta (try - frontier in val_bpb: negative = better) and the per-pair
    differences have std sigma. t = mean / (s / sqrt(n)) is noncentral t with n - 1 degrees
    of freedom and noncentrality delta * sqrt(n) / sigma; p <= level when t <= t_level."""
    from scipy import stats
    if n < 2:
        raise ValueError(f"n: expected at least 2 paired seeds, got {n!r}")
    df, nc = n - 1, delta * math.sqrt(n) / sigma
    return float(stats.nct.cdf(stats.t.ppf(level, df), df, nc))


# --- simulation --------------------------------------------------------------------------

@dataclass(frozen=True)
class Tally:
    tries: int
    planted: int                # tries with a true improvement (delta < 0)
    false_keeps: int            # kept, though delta >= 0
    true_keeps: int             # kept, and delta < 0
    expected_true_keeps: float  # sum of power() at the level each planted try met


def simulate(effects: Iterable[float], rule: Lord | Fixed | None = None, n: int = 5, sigma: float = 0.01,
             seed: int = 0) -> Tally:
    """A synthetic program: try i's n paired differences ~ Normal(effects[i], sigma), its
    p-value from the referee's one-sided paired t-test, all fed in order through rule
    (default Lord()). effects[i] = 0 is a null try; < 0 a planted improvement."""
    from scipy import stats
    effects = np.asarray(list(effects), dtype=float)
    rng = np.random.default_rng(seed)
    d = effects[:, None] + sigma * rng.standard_normal((len(effects), n))
    p = stats.ttest_1samp(d, 0.0, axis=1, alternative="less").pvalue
    rule = Lord() if rule is None else rule
    false_keeps = true_keeps = 0
    expected = 0.0
    for delta, (level, kept) in zip(effects, replay(p, rule)):
        if delta < 0:
            true_keeps += kept
            expected += power(n, delta, sigma, level)
        else:
            false_keeps += kept
    return Tally(len(effects), int((effects < 0).sum()), false_keeps, true_keeps, expected)
