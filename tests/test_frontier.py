"""The frontier's gate (LORD++ online FDR) as a program would use it: its levels, rebuilding it
from a ledger, what it keeps from 200 tries that change nothing (and what plain alpha = 0.05
keeps), and how often it keeps a planted improvement compared with the noncentral-t power."""
from __future__ import annotations

import math

import numpy as np
import pytest

from org.frontier import Fixed, Lord, gammas, power, replay, simulate

ALPHA, W0 = 0.05, 0.025       # the program's FDR level and LORD++'s default initial wealth
N, SIGMA = 5, 0.01            # paired seeds per try, std of a pair's difference in val_bpb
SEQUENCES, TRIES = 500, 200   # simulated programs under the global null


def binomial_se(p: float, trials: int) -> float:
    return math.sqrt(p * (1 - p) / trials)


# --- the rule's levels -------------------------------------------------------------------

def test_gamma_is_a_decreasing_sequence_summing_to_one():
    g = gammas()
    assert g[0] == 0 and g[1:].sum() == pytest.approx(1.0)
    assert np.all(np.diff(g[1:]) < 0)
    assert g[1] == pytest.approx(0.10257, abs=1e-5)   # a tenth of the wealth goes on try 1


def test_first_level_is_gamma_1_times_the_initial_wealth():
    rule = Lord(alpha=ALPHA)
    assert rule.w0 == W0
    assert rule.level() == pytest.approx(gammas()[1] * W0) == pytest.approx(0.0025643, rel=1e-4)
    assert rule.keeps(0.002) and not rule.keeps(0.003)


def test_a_keep_earns_wealth_back():
    g = gammas()
    discarded, kept = Lord().after(0.5), Lord().after(0.001)
    assert (discarded.tries, discarded.kept_at) == (1, ())
    assert (kept.tries, kept.kept_at) == (1, (1,))
    assert discarded.level() == pytest.approx(g[2] * W0)                       # 0.00056
    assert kept.level() == pytest.approx(g[2] * W0 + (ALPHA - W0) * g[1])      # 0.0031
    assert kept.level() > 5 * discarded.level()
    # a second keep (try 2) earns the full alpha: it is spent over the tries after it
    twice = kept.after(0.0)
    assert twice.level() == pytest.approx(g[3] * W0 + (ALPHA - W0) * g[2] + ALPHA * g[1])


def test_levels_never_exceed_alpha():
    every_try_kept = replay([0.0] * 300)
    assert all(kept for _, kept in every_try_kept)
    levels = np.array([level for level, _ in every_try_kept])
    assert levels.max() <= ALPHA
    # keeping everything, try t's level tends to alpha * (gamma_1 + ... + gamma_{t-1}): 0.024 at
    # t = 300, as gamma is spread thin over a long horizon
    assert levels[-1] == pytest.approx(ALPHA * gammas()[1:300].sum(), rel=1e-5)
    assert levels[-1] == pytest.approx(0.0242, abs=1e-4)
    rng = np.random.default_rng(0)
    mixed = replay(rng.uniform(0, 0.01, size=300))
    assert max(level for level, _ in mixed) <= ALPHA


def test_replaying_the_same_p_values_gives_the_same_decisions():
    rng = np.random.default_rng(1)
    # a fifth of the tries very clear wins (p < 1e-4), the rest nulls
    p = np.where(rng.uniform(size=100) < 0.2, rng.uniform(0, 1e-4, size=100), rng.uniform(size=100))
    first, again = replay(p), replay(p)
    assert first == again
    assert [kept for _, kept in first] == list(p < 1e-4) and sum(p < 1e-4) == 19
    # the harness after a crash: the ledger's keeps alone rebuild the rule
    live = Lord()
    for p_t in p:
        live = live.after(p_t)
    rebuilt = Lord.rebuild([kept for _, kept in first])
    assert rebuilt == live and rebuilt.level() == live.level()


# --- 200 tries that change nothing -------------------------------------------------------

def test_under_the_global_null_lord_keeps_almost_nothing():
    tallies = [simulate([0.0] * TRIES, Lord(ALPHA), N, SIGMA, seed=s) for s in range(SEQUENCES)]
    any_false = np.mean([t.false_keeps > 0 for t in tallies])
    mean_false = np.mean([t.false_keeps for t in tallies])
    # With only nulls every keep is false, so FDR = P(any false keep) must be <= alpha; the
    # Monte-Carlo margin is 3 binomial standard errors at alpha over 500 sequences (0.029).
    margin = 3 * binomial_se(ALPHA, SEQUENCES)
    assert any_false <= ALPHA + margin
    # Sharper: before the first keep the levels are gamma_t * W0, so P(any) = 1 - prod(1 - that)
    # exactly (t-test p-values are uniform under the null): 0.0113 over 200 tries.
    predicted = 1 - np.prod(1 - gammas()[1:TRIES + 1] * W0)
    assert predicted == pytest.approx(0.01126, abs=1e-5)
    assert abs(any_false - predicted) <= 3 * binomial_se(predicted, SEQUENCES)
    assert any_false == 0.016   # measured: 8 of 500 programs kept a null
    # The wealth a program spends is W0 plus what its keeps earn, so the mean number of
    # false keeps is <= W0 / (1 - alpha) = 0.026 (same margin as above).
    assert mean_false <= W0 / (1 - ALPHA) + margin and mean_false == 0.016


def test_plain_alpha_per_try_keeps_about_ten_of_200_nulls():
    tallies = [simulate([0.0] * TRIES, Fixed(ALPHA), N, SIGMA, seed=s) for s in range(SEQUENCES)]
    mean_false = np.mean([t.false_keeps for t in tallies])
    # each program's false keeps ~ Binomial(200, 0.05): mean 10, std 3.1, so 0.14 over 500
    se = math.sqrt(TRIES * ALPHA * (1 - ALPHA) / SEQUENCES)
    assert abs(mean_false - TRIES * ALPHA) <= 3 * se and mean_false == pytest.approx(9.886)
    assert np.mean([t.false_keeps > 0 for t in tallies]) == 1.0   # every program keeps noise


# --- planted improvements ----------------------------------------------------------------

def test_power_is_the_noncentral_t_and_a_null_is_kept_at_its_level():
    assert power(N, 0.0, SIGMA, 0.05) == pytest.approx(0.05)
    assert power(N, -0.03, SIGMA, 0.05) == pytest.approx(0.99987, abs=1e-5)   # plain alpha
    assert power(N, -0.03, SIGMA, 0.0025643) == pytest.approx(0.7616, abs=1e-4)  # LORD++'s first
    assert power(N, -0.02, SIGMA, 0.0025643) == pytest.approx(0.3803, abs=1e-4)
    assert power(N, +0.01, SIGMA, 0.05) < 0.05   # a harmful change is kept less than a null
    with pytest.raises(ValueError, match="n: expected at least 2 paired seeds, got 1"):
        power(1, -0.03, SIGMA, 0.05)


def test_planted_improvements_are_kept_as_often_as_the_power_at_the_levels_met():
    # every 5th try a true improvement of 3 sigma (0.03 val_bpb), the rest nulls
    effects = [-0.03 if i % 5 == 0 else 0.0 for i in range(100)]
    tallies = [simulate(effects, Lord(ALPHA), N, SIGMA, seed=s) for s in range(300)]
    planted = sum(t.planted for t in tallies)
    observed = sum(t.true_keeps for t in tallies) / planted
    predicted = sum(t.expected_true_keeps for t in tallies) / planted
    # Given the level it met, each planted try is kept with chance power(level), so the sum of
    # keeps minus the sum of powers has variance sum p(1 - p) <= planted * p̄(1 - p̄): 3 of
    # those standard errors (0.019 here) is the tolerance.
    assert planted == 6000 and predicted == pytest.approx(0.4261, abs=1e-3)
    assert abs(observed - predicted) <= 3 * binomial_se(predicted, planted)
    assert observed == pytest.approx(0.4262, abs=1e-4)
    # the levels are small (at plain alpha this effect is kept 99.99% of the time) but the share
    # of false keeps among keeps stays under alpha (same 3-standard-error margin)
    fdp = [t.false_keeps / max(1, t.false_keeps + t.true_keeps) for t in tallies]
    assert np.mean(fdp) <= ALPHA + 3 * binomial_se(ALPHA, len(tallies))
    assert np.mean(fdp) == pytest.approx(0.0145, abs=1e-4)


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, float("nan")])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match=r"^alpha: expected an FDR level in \(0, 1\), got ") as e:
        Lord(alpha=alpha)
    assert "\n" not in str(e.value) and repr(alpha) in str(e.value)


@pytest.mark.parametrize("p", [-0.1, 1.2, float("nan")])
def test_p_value_outside_zero_one_is_refused(p):
    with pytest.raises(ValueError, match=r"^p: expected a p-value in \[0, 1\], got ") as e:
        Lord().after(p)
    assert "\n" not in str(e.value) and repr(p) in str(e.value)
    with pytest.raises(ValueError, match="p: expected"):
        replay([0.5, p])


def test_initial_wealth_above_alpha_is_refused():
    with pytest.raises(ValueError, match=r"w0: expected an initial wealth in \(0, alpha=0.05\], got 0.06"):
        Lord(alpha=0.05, w0=0.06)
