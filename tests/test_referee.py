"""The referee on constructed runs: every rule, every confound check (a case that triggers it
and one that does not), the noise floor, held-out confirmation, and a simulation of its
false-positive rate and power."""
import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from org.confounds import UNSEEN_WORK
from org.referee import Tolerances, adjust, compare, confirm, holm, judge_arms, noise_floor, verdict_kind

SEEDS = [0, 1, 2, 3, 4]
BASELINE = [1.000, 1.010, 0.990, 1.005, 0.995]  # seed-to-seed std 0.0079
JITTER = [0.001, -0.001, 0.0005, -0.0005, 0.0]  # the variant's own per-seed noise


def run(arm, seed, val_bpb, **fields):
    """One completed run as the ledger would hand it over (result.json's fields)."""
    r = dict(arm=arm, seed=seed, status="completed", purpose="main", val_bpb=val_bpb,
             confirm_bpb=val_bpb, flops=1e12, tokens=1e6, steps=100, flops_per_token=1e6,
             params={"total": 1_000_000, "matmul": 800_000}, tokens_per_second=5e4, device="cpu",
             eval_fingerprint="eval-1", data_fingerprint="data-1",
             budget={"kind": "flops", "value": 1e12}, git_commit="abc123",
             overrides={"depth": 2} if arm == "baseline" else {"depth": 2, "softcap": 0})
    r.update(fields)
    return r


def baseline(values=BASELINE, seeds=SEEDS, **fields):
    return [run("baseline", s, v, **fields) for s, v in zip(seeds, values)]


def variant(delta, values=BASELINE, seeds=SEEDS, jitter=JITTER, **fields):
    """The baseline's per-seed values moved by delta, plus a little noise of its own."""
    return [run("no-softcap", s, v + delta + j, **fields) for s, v, j in zip(seeds, values, jitter)]


def superiority(base, var, **kw):
    return compare(base, var, "superiority", **kw)


def non_inferiority(base, var, margin=0.01, **kw):
    return compare(base, var, "non-inferiority", margin=margin, **kw)


def checks(c):
    return {f.check: f for f in c.findings}


# --- the statistics ----------------------------------------------------------------------

def test_paired_differences_and_one_sided_bounds():
    c = superiority(baseline(), variant(-0.02))
    d = np.array(JITTER) - 0.02
    half = stats.t.ppf(0.95, 4) * d.std(ddof=1) / math.sqrt(5)
    assert c.n == 5 and c.seeds == tuple(SEEDS)
    assert c.mean == pytest.approx(d.mean()) and c.std == pytest.approx(d.std(ddof=1))
    assert (c.lower, c.upper) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.p == c.p_better == pytest.approx(stats.ttest_1samp(d, 0, alternative="less").pvalue)
    assert c.baseline_mean == pytest.approx(np.mean(BASELINE))


def test_seed_pairing_cancels_seed_luck():
    # seed-to-seed spread (0.0079) is 4x the effect; pairing sees through it
    c = superiority(baseline(), variant(-0.002, jitter=[0.0002, -0.0002, 0.0001, -0.0001, 0]))
    assert c.upper < 0


# --- the rules ---------------------------------------------------------------------------

def test_superiority_better_worse_inconclusive():
    assert superiority(baseline(), variant(-0.02)).verdict == "better"
    assert superiority(baseline(), variant(+0.02)).verdict == "worse"
    noisy = [0.02, -0.02, 0.015, -0.01, 0.0]
    c = superiority(baseline(), variant(-0.01, jitter=noisy))
    assert re.fullmatch(r"inconclusive \(needs (1 more seed|([2-9]|\d\d+) more seeds)\)", c.verdict), c.verdict


def test_non_inferiority_no_regression_better_worse_inconclusive():
    assert non_inferiority(baseline(), variant(0.0)).verdict == "no regression"
    assert non_inferiority(baseline(), variant(-0.02)).verdict == "better"
    assert non_inferiority(baseline(), variant(+0.03)).verdict == "worse"
    noisy = [0.01, -0.01, 0.008, -0.006, 0.0]
    assert non_inferiority(baseline(), variant(+0.008, jitter=noisy)).verdict.startswith("inconclusive (needs")


def test_worse_than_baseline_but_within_margin_is_no_regression_and_says_so():
    c = non_inferiority(baseline(), variant(+0.004), margin=0.01)
    assert c.lower > 0 and c.upper < 0.01
    assert c.verdict == "no regression (worse by 0.004, within the margin 0.01)"
    assert c.final_verdict == "no regression (worse by 0.004, within the margin 0.01) (awaiting held-out confirmation)"
    assert confirm(c, baseline(), variant(+0.004)).final_verdict == c.verdict  # the held-out split agrees


def test_seeds_needed_is_where_the_bound_would_cross():
    noisy = [0.02, -0.02, 0.015, -0.01, 0.0]
    c = superiority(baseline(), variant(-0.01, jitter=noisy))
    more = int(c.verdict.split("needs ")[1].split()[0])
    bound = lambda n: stats.t.ppf(0.95, n - 1) * c.std / math.sqrt(n)
    assert bound(c.n + more) < abs(c.mean) <= bound(c.n + more - 1)


def test_seeds_needed_beyond_the_cap():
    noisy = [0.05, -0.05, 0.04, -0.04, 0.0]
    c = non_inferiority(baseline(), variant(+0.0099, jitter=noisy), margin=0.01)
    assert c.verdict == "inconclusive (needs >100 more seeds)"


def test_inside_the_noise_floor_is_never_better():
    tight = [0.0002, -0.0002, 0.0001, -0.0001, 0.0]
    c = superiority(baseline(), variant(-0.004, jitter=tight))  # significant, but 0.004 < 0.0079
    assert c.upper < 0 and c.p_better < 0.001
    assert c.verdict.startswith("inconclusive (inside the noise floor")
    assert non_inferiority(baseline(), variant(-0.004, jitter=tight)).verdict == "no regression"
    assert superiority(baseline(), variant(-0.01, jitter=tight)).verdict == "better"  # outside


def test_no_finished_runs_no_pairs_and_one_seed_are_never_a_verdict():
    queued = lambda runs: [dict(r, status="queued", val_bpb=None) for r in runs]
    c = superiority(queued(baseline()), queued(variant(-0.02)))
    assert c.verdict == "inconclusive (no finished runs)" and c.n == 0
    assert superiority([], []).verdict == "inconclusive (no finished runs)"
    c = superiority(baseline(), queued(variant(-0.02)))
    assert c.verdict == "inconclusive (no seed with val_bpb in both arms: baseline 5, variant 0)"
    nan = [dict(r, val_bpb=float("nan")) for r in variant(-0.02)]
    assert superiority(baseline(), nan).verdict.startswith("inconclusive (no seed with val_bpb")
    c = superiority(baseline()[:1], variant(-0.02)[:1])
    assert c.verdict == "inconclusive (one seed: an interval needs two)" and c.mean == pytest.approx(-0.019)


def test_unknown_claim_or_declaration_is_an_error():
    with pytest.raises(ValueError, match="claim"):
        compare(baseline(), variant(-0.02), "lower-is-better")
    with pytest.raises(ValueError, match="declared"):
        superiority(baseline(), variant(-0.02), declared={"width"})


# --- many comparisons --------------------------------------------------------------------

def test_holm_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.20])
    # sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.20
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.20])


def test_a_better_alone_is_not_better_among_twenty():
    winner = superiority(baseline(), variant(-0.012, jitter=[0.008, -0.008, 0.006, -0.004, 0.0]))
    nulls = [superiority(baseline(), variant(0.0, jitter=np.roll(JITTER, k) * 5)) for k in range(19)]
    assert winner.verdict == "better" and 0.05 / 20 < winner.p_better < 0.05
    adjusted = adjust([winner] + nulls)  # Holm, the default
    assert adjusted[0].adjustment == "holm" and adjusted[0].family == 20
    assert adjusted[0].p_better_adjusted == pytest.approx(min(1, 20 * winner.p_better))
    assert adjusted[0].verdict.startswith("inconclusive (needs")


def test_benjamini_hochberg_matches_scipy():
    comparisons = [superiority(baseline(), variant(delta)) for delta in (-0.02, -0.01, 0.0, 0.01)]
    adjusted = adjust(comparisons, method="bh")
    expected = stats.false_discovery_control([c.p_better for c in comparisons], method="bh")
    assert [c.p_better_adjusted for c in adjusted] == pytest.approx(expected)
    assert all(c.adjustment == "bh" for c in adjusted)


FRESH = [1_904_211, 73_554, 880_023_417, 5_012, 61_000_937]  # drawn by the harness once the main runs were done
FRESH_BASELINE = [1.004, 0.996, 1.008, 0.991, 1.001]


def fresh(arm_values, arm="no-softcap", **fields):
    """Runs of the fresh seeds (purpose 'replicate'): the baseline's, then the arm's."""
    return ([run("baseline", s, v, purpose="replicate", **fields) for s, v in zip(FRESH, FRESH_BASELINE)]
            + [run(arm, s, v, purpose="replicate", **fields) for s, v in zip(FRESH, arm_values)])


def judged(base, var, claim="superiority", margin=0.0, fresh_seeds=0):
    return judge_arms(base, {"no-softcap": var}, claim, margin, fresh_seeds=fresh_seeds)[0]["no-softcap"]


def test_a_gain_only_on_the_seeds_the_code_knew_is_not_replicated_on_fresh_ones():
    """The attack: K exploratory arms each train with data order seed + 1000*j, and the final arm
    commits a table {seed: best j}, read from its runs' results. Every seed of the program gains
    (here 0.02, over twice the baseline's seed-to-seed std), and it reads `better` there. On seeds
    drawn after it was committed it has no table, and trains as the baseline does."""
    seeded = variant(-0.02)
    knew = fresh([v + j for v, j in zip(FRESH_BASELINE, JITTER)])
    assert judged(baseline(), seeded).final_verdict == "better"  # the program's seeds: all the referee saw
    c = judged(baseline() + knew[:5], seeded + knew[5:])
    assert c.verdict == "better"  # (the main seeds' verdict, before replication)
    assert c.final_verdict.startswith("better (not replicated on 5 fresh seeds: inconclusive"), c.final_verdict
    assert c.final_verdict.endswith(" there, Δ +0.0000 against -0.0200)") and c.replication.n == 5

    real = fresh([v - 0.02 + j for v, j in zip(FRESH_BASELINE, JITTER)])  # a real gain holds on any seed
    c = judged(baseline() + real[:5], seeded + real[5:])
    assert c.final_verdict == c.verdict == "better" and c.replication.verdict == "better"
    assert c.replication.seeds == tuple(sorted(FRESH))  # paired on the fresh seeds alone


def test_a_claim_waits_for_its_fresh_seeds_and_a_failed_one_fails_it():
    assert judged(baseline(), variant(-0.02), fresh_seeds=5).final_verdict == (
        "better (awaiting replication on 5 fresh seeds)")  # none drawn yet: not yet a claim
    real = fresh([v - 0.02 for v in FRESH_BASELINE])
    queued = [dict(r, status="queued", val_bpb=None, confirm_bpb=None) for r in real]
    c = judged(baseline() + queued[:5], variant(-0.02) + queued[5:])
    assert c.final_verdict == "better (awaiting replication on 5 fresh seeds)", c.final_verdict
    diverged = real[:9] + [dict(real[9], status="diverged", val_bpb=None, confirm_bpb=None)]  # it cannot duck
    c = judged(baseline() + diverged[:5], variant(-0.02) + diverged[5:])
    assert "(not replicated: 1 of 5 fresh seeds have no pair of completed runs)" in c.final_verdict
    worse = fresh([v + 0.03 for v in FRESH_BASELINE])  # no regression on the main seeds; 0.03 worse on fresh ones
    c = judged(baseline() + worse[:5], variant(+0.002) + worse[5:], "non-inferiority", 0.01)
    assert c.verdict.startswith("no regression") and "(not replicated on 5 fresh seeds: worse" in c.final_verdict
    assert judged(baseline(), variant(-0.02) + worse[5:]).final_verdict.startswith(
        "better (not replicated: 5 of 5")  # the baseline's fresh runs are the harness's: without them, no pair


def test_adjust_goes_before_confirm():
    c = confirm(superiority(baseline(), variant(-0.02)), baseline(), variant(-0.02))
    with pytest.raises(ValueError, match="before confirm"):
        adjust([c])


# --- the noise floor ---------------------------------------------------------------------

def test_noise_floor_is_the_seed_std_without_reruns():
    floor = noise_floor(baseline())
    assert floor.seed_std == pytest.approx(np.std(BASELINE, ddof=1)) and floor.seeds == 5
    assert floor.drift is None and floor.floor == floor.seed_std


def test_drift_of_interleaved_reruns():
    """The baseline creeps up 0.001 per run: re-runs of the same seeds reveal it."""
    def at(seq, seed, purpose):
        return run("baseline", seed, BASELINE[seed] + 0.001 * seq, purpose=purpose, claim_seq=seq)
    runs = [at(seq, seed, "main") for seq, seed in zip(range(1, 6), SEEDS)]
    runs += [at(seq, seed, "repeat") for seq, seed in zip(range(10, 15), SEEDS)]
    floor = noise_floor(runs)
    assert floor.drift == pytest.approx(0.001 * (14 - 1)) and floor.reruns == 10
    steady = noise_floor([dict(r, val_bpb=BASELINE[r["seed"]]) for r in runs])
    assert steady.drift == pytest.approx(0.0)


def test_drift_orders_by_finished_at_without_claim_seq():
    runs = [run("baseline", 0, 1.00, finished_at="2026-01-01T10:00:00+00:00"),
            run("baseline", 0, 1.02, purpose="repeat", finished_at="2026-01-01T11:00:00+00:00"),
            run("baseline", 1, 1.01, finished_at="2026-01-01T10:30:00+00:00")]
    assert noise_floor(runs).drift == pytest.approx(0.02)


def test_drift_raises_the_floor():
    runs = baseline() + [run("baseline", s, v + 0.03, purpose="repeat") for s, v in zip(SEEDS, BASELINE)]
    c = superiority(runs, variant(-0.02))
    assert c.noise.floor > 0.02 and c.verdict.startswith("inconclusive (inside the noise floor")


# --- confound checks ---------------------------------------------------------------------

def test_flops_differ():
    steps_budget = {"kind": "steps", "value": 100}
    more = superiority(baseline(budget=steps_budget), variant(-0.02, budget=steps_budget, flops=1.05e12))
    assert checks(more)["flops"].invalid and more.verdict == "invalid (confounded: flops +5.0%)"
    within = superiority(baseline(budget=steps_budget), variant(-0.02, budget=steps_budget, flops=1.005e12))
    assert "flops" not in checks(within) and within.verdict == "better"
    declared = superiority(baseline(budget=steps_budget), variant(-0.02, budget=steps_budget, flops=1.05e12),
                           declared={"flops"})
    assert not checks(declared)["flops"].invalid
    budget = superiority(baseline(), variant(-0.02, flops=1.05e12), declared={"flops"})
    assert checks(budget)["flops"].text == "flops +5.0% under a flops budget" and budget.confounds


def test_tokens_differ():
    steps_budget = {"kind": "steps", "value": 100}
    c = superiority(baseline(budget=steps_budget), variant(-0.02, budget=steps_budget, tokens=2e6))
    assert checks(c)["tokens"].invalid
    same = superiority(baseline(budget=steps_budget), variant(-0.02, budget=steps_budget))
    assert "tokens" not in checks(same)


def test_steps_differ_under_a_flop_budget():
    c = superiority(baseline(), variant(-0.02, steps=120, tokens=1.2e6))
    assert checks(c)["steps"].invalid and checks(c)["tokens"].invalid
    assert "steps" not in checks(superiority(baseline(), variant(-0.02)))


def test_params_differ_unless_declared():
    wider = {"total": 1_500_000, "matmul": 1_200_000}
    c = superiority(baseline(), variant(-0.02, params=wider))
    assert checks(c)["params"].text == "params +50.0% (not declared)" and c.verdict.startswith("invalid")
    assert "params" not in checks(superiority(baseline(), variant(-0.02, params=wider), declared={"params"}))
    assert "params" not in checks(superiority(baseline(), variant(-0.02)))


def test_the_spurious_width_result():
    """A wider model at a fixed step count does more compute and looks better: invalid. At
    equal FLOPs, declared as a change of parameters, it is a fair comparison."""
    steps_budget = {"kind": "steps", "value": 100}
    wider = dict(params={"total": 1_500_000, "matmul": 1_200_000}, flops_per_token=1.5e6)
    fixed_steps = superiority(baseline(budget=steps_budget),
                              variant(-0.02, budget=steps_budget, flops=1.5e12, **wider))
    assert {f.check for f in fixed_steps.confounds} == {"flops", "params"}
    assert fixed_steps.verdict == "invalid (confounded: flops +50.0%, params +50.0% (not declared))"
    equal_flops = superiority(baseline(), variant(-0.02, steps=67, tokens=6.7e5, **wider), declared={"params"})
    assert equal_flops.verdict == "better" and not equal_flops.confounds
    assert {f.check for f in equal_flops.warnings} == {"tokens", "steps"}
    assert checks(equal_flops)["tokens"].text == "tokens -33.0% (equal FLOPs, FLOPs/token +50.0%)"


def test_seconds_budget_lets_spend_follow_speed():
    seconds = {"kind": "seconds", "value": 60}
    c = superiority(baseline(budget=seconds), variant(-0.02, budget=seconds, flops=1.2e12, tokens=1.2e6,
                                                      steps=120, tokens_per_second=6e4))
    assert not c.confounds and {"flops", "tokens", "steps"} <= set(checks(c))


@pytest.mark.parametrize("name", ["eval", "data"])
def test_fingerprints_differ(name):
    c = superiority(baseline(), variant(-0.02, **{f"{name}_fingerprint": "other"}))
    assert checks(c)[name].invalid and f"{name} fingerprints differ" in c.verdict
    assert name not in checks(superiority(baseline(), variant(-0.02)))


def test_unequal_seeds_are_paired_on_the_common_ones():
    c = superiority(baseline(), variant(-0.02)[:4])
    assert not checks(c)["seeds"].invalid and c.n == 4 and c.verdict == "better"
    assert checks(c)["seeds"].text == "seeds differ: baseline 0,1,2,3,4 / variant 0,1,2,3, 4 in common"
    assert "seeds" not in checks(superiority(baseline(), variant(-0.02)))


def test_only_the_seed_changed():
    same = {"depth": 2}
    reseeded = superiority(baseline(), variant(-0.02, seeds=[5, 6, 7, 8, 9], overrides=same))
    assert reseeded.verdict == "no change (only the seed changed)"
    unchanged = superiority(baseline(), variant(-0.02, overrides=same))
    assert unchanged.verdict == "no change (the baseline's overrides and code)"
    new_code = superiority(baseline(), variant(-0.02, overrides=same, git_commit="def456"))
    assert "noop" not in checks(new_code)
    assert "noop" not in checks(superiority(baseline(), variant(-0.02)))


def test_bit_identical_parameters_are_no_change():
    fingerprint = lambda runs: [dict(r, params_fingerprint=f"final-{r['seed']}") for r in runs]
    same = superiority(fingerprint(baseline()), fingerprint(variant(0.0, jitter=[0] * 5, git_commit="def456")))
    assert same.verdict == "no change (final parameters bit-identical to the baseline's on seeds 0,1,2,3,4)"
    one_differs = fingerprint(variant(0.0, jitter=[0] * 5, git_commit="def456"))
    one_differs[2]["params_fingerprint"] = "other"
    assert "identical" not in checks(superiority(fingerprint(baseline()), one_differs))
    assert "identical" not in checks(superiority(baseline(), variant(-0.02)))  # not measured: no claim


def test_a_seed_only_code_change_is_no_change():
    reseeded = superiority(baseline(), variant(-0.02, git_commit="def456", seed_only=True, overrides={"depth": 2}))
    assert reseeded.verdict.startswith("no change (only the random initialisation differs from the baseline's")
    partly = variant(-0.02, git_commit="def456", seed_only=True, overrides={"depth": 2})
    partly[0]["seed_only"] = False  # one run's probe saw a real change: the arm is judged
    assert superiority(baseline(), partly).verdict == "better"
    # the probe replays the variant's own config: a reseed on top of another config (an improvement
    # program's try on a frontier of matrix_lr 0.02, read against the first baseline) changed that too
    tuned = variant(-0.07, git_commit="def456", seed_only=True, overrides={"depth": 2, "matrix_lr": 0.02})
    assert superiority(baseline(), tuned).verdict == "better"
    # what decides is the model config the overrides make, as the harness built it: a default restated
    # (softcap 15, nanochat's own) does not make a reseed an idea
    restated = variant(-0.02, git_commit="def456", seed_only=True, overrides={"depth": 2, "softcap": 15},
                       config_fingerprint="d2")
    assert superiority(baseline(config_fingerprint="d2"), restated).verdict.startswith("no change (only the random")
    assert superiority(baseline(config_fingerprint="d2"), [dict(r, config_fingerprint="d2-lr") for r in tuned]) \
        .verdict == "better"
    # a baseline measured before the harness kept fingerprints: the overrides decide, for every run alike
    same = variant(-0.02, git_commit="def456", seed_only=True, overrides={"depth": 2}, config_fingerprint="d2")
    assert superiority(baseline(), same).verdict.startswith("no change (only the random")


def test_a_code_arm_that_ignores_the_seed_is_invalid():
    """An agent's trainer maps every seed to one it chose (K = 1000 j + s over earlier arms, read
    off the harness's val_bpb): all its seeds are one lucky draw, fresh seeds too. The harness
    fingerprints what its code makes at each run's seed and what each run ends at; two seeds
    alike in either is a code that ignores the seed."""
    same_init = [dict(r, init_fingerprint="K*", params_fingerprint=f"end-{r['seed']}")
                 for r in variant(-0.02, git_commit="def456")]  # only the data order varies by seed
    c = superiority(baseline(), same_init)
    assert c.verdict.startswith("invalid (confounded: its runs on seeds 0,1,2,3,4 started from bit-identical parameters: "
                                "its code ignores the seed")
    same_end = [dict(r, init_fingerprint=f"init-{r['seed']}", params_fingerprint="end" if r["seed"] < 2 else r["seed"])
                for r in variant(-0.02, git_commit="def456")]
    assert superiority(baseline(), same_end).verdict.startswith("invalid (confounded: its runs on seeds 0,1 ended at bit-identical")
    honest = [dict(r, init_fingerprint=f"init-{r['seed']}", params_fingerprint=f"end-{r['seed']}")
              for r in variant(-0.02, git_commit="def456")]
    repeated = honest + [dict(honest[0], purpose="replicate")]  # a seed run again ends where it did: no finding
    assert superiority(baseline(), honest).verdict == "better" == superiority(baseline(), repeated).verdict


def test_an_arm_whose_runs_were_all_refused_or_invalid_says_so():
    refused = [dict(r, status="refused", val_bpb=None, reason="protected paths differ: trainer/eval.py")
               for r in variant(-0.02)]
    c = superiority(baseline(), refused)
    assert c.verdict == "refused (protected paths differ: trainer/eval.py)" and c.final_verdict == c.verdict
    invalid = [dict(r, status="invalid", reason="the trainer reported val_bpb 0.9, the harness measures 1.0")
               for r in variant(-0.02)]
    assert superiority(baseline(), invalid).verdict == (
        "invalid (the trainer reported val_bpb 0.9, the harness measures 1.0)")
    base = [dict(r, status="invalid", reason="no checkpoint") for r in baseline()]
    assert superiority(base, variant(-0.02)).verdict == "invalid (baseline: no checkpoint)"
    mixed = variant(-0.02)
    mixed[0] = dict(mixed[0], status="invalid", reason="x")
    assert superiority(baseline(), mixed).verdict == "better"  # the others completed: judged on those


def test_a_baseline_that_is_not_learning_is_said_on_every_verdict():
    above = [dict(r, unigram_bpb=0.9) for r in baseline()]  # val_bpb ~1.0: worse than counting bytes
    for c in (superiority(above, variant(-0.02)), non_inferiority(above, variant(0.0)),
              superiority(above, variant(0.0, overrides={"depth": 2}))):
        assert c.verdict.endswith("[NOT LEARNING: the baseline's val_bpb 1.000 does not beat the data's "
                                  "unigram entropy 0.900 bits per byte]")
    c = superiority(above, variant(-0.02))
    assert c.verdict.startswith("better [NOT LEARNING") and c.final_verdict.startswith("better [NOT LEARNING")
    assert confirm(c, above, variant(-0.02)).final_verdict == c.verdict
    learning = [dict(r, unigram_bpb=4.7) for r in baseline()]
    assert "learning" not in checks(superiority(learning, variant(-0.02)))


def test_devices_differ():
    c = superiority(baseline(), variant(-0.02, device="cuda:0"))
    assert not checks(c)["device"].invalid and c.verdict == "better"
    seconds = {"kind": "seconds", "value": 60}
    timed = superiority(baseline(budget=seconds), variant(-0.02, budget=seconds, device="cuda:0"))
    assert checks(timed)["device"].invalid
    assert "device" not in checks(superiority(baseline(), variant(-0.02)))


def test_an_arm_that_trained_on_windows_again_is_warned_of():
    """A run whose steps went through its stream of windows more than once (the harness's count,
    streams.with_passes) trained on some text twice: a warning naming the arm and the seeds."""
    once = superiority(baseline(stream_passes=1.0), variant(-0.02, stream_passes=1.0))
    assert "repeats" not in checks(once) and once.verdict == "better"
    var = variant(-0.02, stream_passes=1.0)
    var[1]["stream_passes"], var[3]["stream_passes"] = 1.5, 2.25
    again = superiority(baseline(stream_passes=1.0), var)
    found = checks(again)["repeats"]
    assert not found.invalid and again.verdict == "better"
    assert found.text == "variant trained on windows again on seeds 1,3 (up to x2.25 its stream)"
    base = [dict(r, stream_passes=1.1) if r["seed"] == 0 else r for r in baseline()]  # (the rest uncounted: older)
    assert checks(superiority(base, variant(-0.02)))["repeats"].text == \
        "baseline trained on windows again on seed 0 (up to x1.10 its stream)"


def test_devices_differ_seed_by_seed_as_the_harness_saw_them():
    """A mixed cluster: each arm ran on both kinds of device, so the sets agree, but seed 3's
    baseline and variant did not; the trainers all claim the same device."""
    on = lambda runs, machines: [dict(r, machine=m) for r, m in zip(runs, machines)]
    base = on(baseline(), ["EPYC"] * 3 + ["Xeon"] * 2)
    mixed = on(variant(-0.02), ["EPYC"] * 4 + ["Xeon"])
    found = checks(superiority(base, mixed))["device"]
    assert not found.invalid and found.text == "devices differ: seed 3: baseline on Xeon, variant on EPYC"
    seconds = {"kind": "seconds", "value": 60}
    timed = superiority([dict(r, budget=seconds) for r in base], [dict(r, budget=seconds) for r in mixed])
    assert checks(timed)["device"].invalid and timed.verdict.startswith("invalid")
    kept = on(variant(-0.02), ["EPYC"] * 3 + ["Xeon"] * 2)  # each seed's arms on one kind: nothing to flag
    assert "device" not in checks(superiority(base, kept))
    claimed = on(variant(-0.02, device="cuda:0"), ["EPYC"] * 3 + ["Xeon"] * 2)  # the harness's word wins
    assert "device" not in checks(superiority(base, claimed))


def timed(runs, walls):
    return [dict(r, wall_seconds=w) for r, w in zip(runs, walls)]


QUIET = [100, 102, 99, 101, 100]  # the baseline's wall seconds: a quiet machine


def test_hidden_compute_by_the_runners_clock():
    hidden = superiority(timed(baseline(), QUIET), timed(variant(-0.02), [200, 205, 197, 199, 201]))
    assert hidden.verdict.startswith("invalid (confounded: wall time +100% per FLOP by the runner's clock")
    assert checks(hidden)["wall time"].text.endswith("(median over 5 seeds, ±3% at 95%): hidden compute")
    slower = superiority(timed(baseline(), QUIET), timed(variant(-0.02), [125, 126, 124, 125, 127]))
    assert not checks(slower)["wall time"].invalid and slower.verdict == "better"  # a config arm's: a warning only
    own_code = superiority(timed(baseline(), QUIET), timed(variant(-0.02, git_commit="def456"), [125, 126, 124, 125, 127]))
    assert own_code.verdict.startswith("invalid (confounded: wall time +25% per FLOP") and \
        own_code.verdict.endswith(f"code of its own, and {UNSEEN_WORK})")  # its FLOPs are its code's to count
    faster = superiority(timed(baseline(), QUIET), timed(variant(-0.02), [70, 71, 69, 70, 72]))
    assert checks(faster)["wall time"].text.endswith("skips work it claims?")
    assert "wall time" not in checks(superiority(timed(baseline(), QUIET), timed(variant(-0.02), [105, 99, 103, 98, 100])))
    assert "wall time" not in checks(superiority(baseline(), variant(-0.02)))  # no clock, no judgement


def test_hidden_compute_within_the_walls_noise_shows_on_the_cpu_clock():
    """Work hidden in a busy machine's noise: +30% a run, which the wall's margin there (±13% and
    more) lets pass as a code arm's +16%; the CPU time of its box does not count waiting for a
    core, and its margin is the work's own. (A hunt's 1.4x steps, its own evaluations skipped,
    read +18% by either clock on a quiet machine, and `better` by 0.16 bpb: README, "Hidden compute".)"""
    busy = [3.4, 4.1, 3.0, 3.9, 3.3]  # a loaded machine's wall; the CPU time of the same work barely moves
    cpu = lambda runs, seconds: [dict(r, train_cpu_seconds=c) for r, c in zip(runs, seconds)]
    base = cpu(timed(baseline(), busy), [3.00, 3.02, 2.98, 3.01, 3.00])
    hidden = cpu(timed(variant(-0.16, git_commit="def456"), [4.0, 4.4, 3.9, 4.3, 3.8]), [3.90, 3.93, 3.88, 3.91, 3.92])
    assert "wall time" not in checks(superiority(timed(baseline(), busy), timed(variant(-0.16, git_commit="def456"),
                                                                                   [4.0, 4.4, 3.9, 4.3, 3.8])))  # by the wall
    judged = superiority(base, hidden)
    assert judged.verdict.startswith("invalid (confounded: CPU time +30% per FLOP by the runner's clock"), judged.verdict
    honest = cpu(timed(variant(-0.02, git_commit="def456"), [4.0, 3.2, 3.6, 3.1, 4.2]), [3.05, 2.99, 3.03, 2.97, 3.02])
    assert "wall time" not in checks(superiority(base, honest))  # the same work: nothing to say, however the wall swung
    mixed = superiority(base, timed(variant(-0.02, git_commit="def456"), [3.3, 3.9, 3.1, 3.8, 3.4]))
    assert "CPU time" not in str(checks(mixed).get("wall time"))  # (a variant's run without it: the wall)
    lost = [dict(r, train_cpu_seconds=None) if r["seed"] == 0 else r for r in base]  # a baseline run's figure lost
    judged = superiority(lost, hidden)  # its seed sits out: the CPU clock judges the other four
    assert judged.verdict.startswith("invalid (confounded: CPU time +30% per FLOP by the runner's clock (median over 4 seeds"), \
        judged.verdict


def test_code_whose_training_step_is_the_bases_is_held_to_the_baselines_time():
    """A code arm whose every run's step replayed as the base's (the same parameters after two
    steps from the same init) at the baseline's model config does the baseline's work a step:
    +14% per FLOP is steps it did not report (the hunt's 1.4x trainer loop read +33% CPU time,
    and +18% while trainers still evaluated and it skipped theirs), not a slower idea of its own,
    which a replay that differs or another model config may be up to +16%."""
    cpu = lambda runs, seconds, **more: [dict(r, train_cpu_seconds=c, config_fingerprint="c", **{"own_kernels": False, **more})
                                         for r, c in zip(runs, seconds)]
    base = cpu(timed(baseline(), QUIET), [3.00, 3.02, 2.98, 3.01, 3.00])
    slower = [3.42, 3.44, 3.40, 3.43, 3.42]
    loop = superiority(base, cpu(timed(variant(-0.16, git_commit="def456"), QUIET), slower, replay="same"))
    assert loop.verdict.startswith("invalid (confounded: CPU time +14% per FLOP"), loop.verdict
    assert "its training step is the base's (replayed)" in loop.verdict
    idea = superiority(base, cpu(timed(variant(-0.16, git_commit="def456"), QUIET), slower, replay="differs"))
    assert "wall time" not in checks(idea)  # a step of its own may be slower, up to +16%
    bigger = [dict(r, config_fingerprint="other") for r in cpu(timed(variant(-0.16, git_commit="def456"), QUIET),
                                                                slower, replay="same")]
    assert "wall time" not in checks(superiority(base, bigger))  # another model's time per FLOP is its own
    compiles = superiority(base, cpu(timed(variant(-0.16, git_commit="def456"), QUIET), slower, replay="same",
                                     own_kernels=True))
    assert "wall time" not in checks(compiles)  # kernels of its own: each run compiles them, as the baseline's do not
    older = superiority(base, cpu(timed(variant(-0.16, git_commit="def456"), QUIET), slower, replay="same",
                                  own_kernels=None))
    assert "wall time" not in checks(older)  # recorded before the harness said whose kernels ran: +16%, as then
    same = superiority(base, cpu(timed(variant(-0.16, git_commit="def456"), QUIET), [3.02, 2.99, 3.03, 3.0, 3.01],
                                 replay="same"))
    assert "wall time" not in checks(same)  # the baseline's time: nothing to say


def test_the_wall_time_tolerance_follows_the_baselines_own_spread():
    busy = [100, 120, 90, 112, 97]  # a loaded machine: the same work takes 90-120 s
    same_work = superiority(timed(baseline(), busy), timed(variant(-0.02), [115, 105, 100, 95, 110]))
    assert "wall time" not in checks(same_work)  # swings on a busy machine are not an alarm
    doubled = superiority(timed(baseline(), busy), timed(variant(-0.02), [210, 235, 185, 230, 190]))
    assert checks(doubled)["wall time"].invalid
    very_busy = [100, 140, 80, 125, 95]  # the same doubling, on a machine that swings by +/-30%
    assert not checks(superiority(timed(baseline(), very_busy), timed(variant(-0.02), [260, 250, 190, 240, 210])))[
        "wall time"].invalid  # only a warning: the clock cannot tell more there
    repeats = timed(baseline(), QUIET) + [dict(r, purpose="repeat") for r in timed(baseline(), [130, 75, 125, 80, 120])]
    noisy = superiority(repeats, timed(variant(-0.02), [125, 126, 124, 125, 127]))
    assert "wall time" not in checks(noisy)  # the re-runs showed how much the machine moves


def test_a_short_runs_clock_swings_by_a_fraction_of_a_second_and_is_judged_so():
    """CI, equal FLOPs, three seeds of sub-second runs while another worker's tests ran: the
    baseline read 0.51, 0.50 and 0.98 s, the wider model 0.94, 1.01 and 0.82 s (0.4-0.5 s here,
    quiet). Two baseline runs alike made its spread read 0, so the margin was the pairs' own,
    capped near 0, and a start-up's swing was called hidden compute (+80%, invalid). The clock's
    swing in seconds (Tolerances.wall_jitter) bounds how little such runs can tell."""
    short = timed(baseline(), [0.51, 0.50, 0.98])
    swung = superiority(short, timed(variant(-0.02), [0.94, 1.01, 0.82]))
    assert "wall time" not in checks(swung) or not checks(swung)["wall time"].invalid, swung.verdict
    hidden = superiority(timed(baseline(), [2.1, 2.0, 2.4]), timed(variant(-0.02), [10.4, 9.8, 11.0]))
    assert checks(hidden)["wall time"].invalid and "hidden compute" in hidden.verdict  # 5x in 2 s runs: seen
    long = superiority(timed(baseline(), [100, 100, 180]), timed(variant(-0.02), [180, 190, 170]))
    assert checks(long)["wall time"].invalid  # in 100 s runs, the same swing is far under the +80%


def test_a_variant_cannot_widen_its_own_wall_time_margin_by_padding_some_seeds():
    """Twice the work on every seed, and sleeps so the seeds' wall times spread from 2x to 10x
    the baseline's: judged by the pairs' own spread, the margin grew past the +100% and nothing
    was said; the machine's spread (the baseline's) bounds that margin now."""
    padded = superiority(timed(baseline(), QUIET), timed(variant(-0.02), [200, 200, 450, 1000, 1000]))
    assert checks(padded)["wall time"].invalid and "hidden compute" in padded.verdict
    honest = superiority(timed(baseline(), QUIET), timed(variant(-0.02), [96, 108, 100, 94, 103]))
    assert "wall time" not in checks(honest)  # a spread of its own, on equal work: no alarm


def test_hidden_compute_on_fewer_than_half_the_seeds_shows_on_its_seeds():
    """The attack: code that reads its seed trains 2.5x as long on two of five (the program's
    seeds are known, and a fresh one is a seed not among them). The median of the seeds'
    differences is an honest seed's, and its margin the machine's: nothing was said, while the
    mean gain the referee tests counted those two seeds' whole gain. One seed past the invalid
    bar by more than SEED_Z x one pair's noise is hidden work now."""
    some = superiority(timed(baseline(), QUIET), timed(variant(-0.02), [101, 250, 99, 248, 100]))
    assert checks(some)["wall time"].invalid and some.verdict.startswith("invalid (confounded: wall time +146% per "
                                                                         "FLOP on seed 3 by the runner's clock")
    assert checks(some)["wall time"].text.endswith("the machine's noise for one pair): hidden compute on some seeds")
    one_slow_run = superiority(timed(baseline(), QUIET), timed(variant(-0.02), [101, 112, 99, 103, 100]))
    assert not checks(one_slow_run).get("wall time") or not checks(one_slow_run)["wall time"].invalid


def scored_on_train(runs, train_bpb):
    return [dict(r, train_bpb=t) for r, t in zip(runs, train_bpb)]


def test_a_model_far_better_on_the_val_text_than_on_unforeseen_train_text_is_invalid():
    """The harness scores each model on train-split windows drawn at measuring time too. A
    model that learned the val windows, or looks them up, scores far better there than on text
    it could not foresee; an honest change moves both, and regularising shrinks a gap to zero."""
    base = scored_on_train(baseline(), [1.002, 1.006, 0.995, 1.001, 0.999])     # gap about 0
    looks_up = scored_on_train(variant(-0.6), [1.004, 1.010, 0.990, 1.003, 0.998])
    found = checks(superiority(base, looks_up))["held-out gap"]
    assert found.invalid and found.text.startswith("val_bpb 0.599 below its score on unforeseen train-split text") and "trained on or reading the evaluation text" in found.text
    honest = scored_on_train(variant(-0.05), [0.952, 0.961, 0.939, 0.957, 0.944])  # both figures move
    assert "held-out gap" not in checks(superiority(base, honest))
    overfit = scored_on_train(baseline(), [0.70, 0.71, 0.69, 0.705, 0.695])      # gap +0.3: it overfits
    regularised = scored_on_train(variant(-0.02), [0.97, 0.99, 0.96, 0.98, 0.97])  # gap about 0 now: fine
    assert "held-out gap" not in checks(superiority(overfit, regularised))
    assert "held-out gap" not in checks(superiority(baseline(), variant(-0.6)))  # measured before train_bpb



def on_windows(runs, spread, seed=0):
    """The runs scored on 32 train-split windows (the same draw for all), each window's figure
    off the run's train_bpb by a fixed pattern times `spread`: how differently the arm does by
    kind of text."""
    pattern = np.random.default_rng(seed).standard_normal(32)
    pattern -= pattern.mean()
    return [dict(r, train_window_bpb=[round(r["train_bpb"] + spread * x, 5) for x in pattern]) for r in runs]


def test_the_held_out_gap_allows_for_the_draw_of_the_windows():
    """The train-split windows are one draw for the whole lab, so every seed shares its luck. A
    variant that does much better than the baseline on some kinds of text and worse on others
    (barely trained, say) has a gap that moves by draw: its windows' spread widens the margin.
    One that differs from the baseline the same way on every window keeps a narrow margin."""
    base = scored_on_train(baseline(), [1.002, 1.006, 0.995, 1.001, 0.999])
    lower = scored_on_train(variant(-0.2), [1.004, 1.010, 0.990, 1.003, 0.998])  # 0.2 better on val only
    assert checks(superiority(base, lower))["held-out gap"].invalid  # without the windows' figures
    steady = superiority(on_windows(base, 0.1), on_windows(lower, 0.1))  # the same pattern: differences 0
    assert checks(steady)["held-out gap"].invalid and "±0.0" in checks(steady)["held-out gap"].text
    by_kind = superiority(on_windows(base, 0.1), on_windows(lower, 1.5, seed=1))  # another pattern
    assert "held-out gap" not in checks(by_kind)  # a draw's luck could give that much
    looks_up = scored_on_train(variant(-0.6), [1.004, 1.010, 0.990, 1.003, 0.998])
    assert checks(superiority(on_windows(base, 0.1), on_windows(looks_up, 1.5, seed=1)))["held-out gap"].invalid


def on_val_windows(runs, spread, seed=0):
    """The runs' 32 val windows, each off the run's val_bpb by a fixed pattern times `spread`."""
    pattern = np.random.default_rng(seed).standard_normal(32)
    pattern -= pattern.mean()
    return [dict(r, val_window_bpb=[round(r["val_bpb"] + spread * x, 5) for x in pattern]) for r in runs]


def test_the_held_out_gap_allows_for_the_draw_of_the_val_windows_too():
    """The val windows are one draw of the lab's split, as the train-split windows are of the
    train text: in a new lab each time, an honest 3x wider tiny model at equal FLOPs (barely
    trained) read `invalid` in 2 of 7 labs with the train windows' part of the margin alone. A
    variant that differs from the baseline by kind of text on the val windows gets their part
    too; one that differs the same way on every val window does not."""
    base = on_windows(scored_on_train(baseline(), [1.002, 1.006, 0.995, 1.001, 0.999]), 0.1)
    lower = on_windows(scored_on_train(variant(-0.35), [1.004, 1.010, 0.990, 1.003, 0.998]), 0.4, seed=1)
    assert checks(superiority(base, lower))["held-out gap"].invalid  # the train windows' part alone
    by_kind = superiority(on_val_windows(base, 0.1), on_val_windows(lower, 1.5, seed=2))
    assert "held-out gap" not in checks(by_kind)
    steady = superiority(on_val_windows(base, 0.1), on_val_windows(lower, 0.1))  # the same pattern on val
    assert checks(steady)["held-out gap"].invalid
    looks_up = on_windows(scored_on_train(variant(-0.6), [1.004, 1.010, 0.990, 1.003, 0.998]), 0.4, seed=1)
    assert checks(superiority(on_val_windows(base, 0.1), on_val_windows(looks_up, 1.5, seed=2)))["held-out gap"].invalid

def test_a_variant_whose_initial_model_already_scores_below_counting_is_invalid():
    """Untrained, a model scores about log2(V) per token, at best the data's unigram entropy (its
    output bias set to the token counts); below that, its weights were trained before its budget
    began. An init change of the honest kind is far above it."""
    entropy = {"unigram_bpb": 4.9}
    warm = variant(-0.4, **entropy, init_bpb=3.1)
    warm[0] = dict(warm[0], init_bpb=3.05)
    found = checks(superiority(baseline(**entropy), warm))["head-start"]
    assert found.invalid and found.text.startswith("starts trained: its initial model scores 3.050 bits per byte (seeds 0,1,2,3,4)")
    assert "below the data's unigram entropy 4.900" in found.text
    for honest in (8.02, 4.9, 4.7):  # a zero-init head; the bias set to the counts; within 0.25 of them
        assert "head-start" not in checks(superiority(baseline(**entropy), variant(-0.02, **entropy, init_bpb=honest)))
    assert "head-start" not in checks(superiority(baseline(**entropy), variant(-0.02, **entropy)))  # init not probed


def test_a_seconds_budget_compares_wall_time_per_run():
    seconds = {"kind": "seconds", "value": 60}
    base = timed(baseline(budget=seconds), [70, 71, 70, 69, 70])
    hidden = superiority(base, timed(variant(-0.02, budget=seconds, flops=2e12), [140, 141, 139, 140, 142]))
    assert checks(hidden)["wall time"].invalid and "per run by the runner's clock" in hidden.verdict


def test_a_trainer_that_winds_its_clock_back_is_over_its_time_budget():
    """The attack: a code arm's trainer trains 60 s by its clock and reports 45 (or trains before
    its clock starts): result.json says train_seconds 45 of 60, so the trainer's own check passes,
    and the runner sees +21% a run. Under a FLOP budget that is a warning (work per FLOP may differ
    honestly); here the budget is time, and it was spent: invalid."""
    seconds = {"kind": "seconds", "value": 60}
    base = timed(baseline(budget=seconds), [70, 71, 70, 69, 70])
    own = dict(budget=seconds, train_seconds=59.9, git_commit="c0de", git_dirty=False)
    longer = superiority(base, timed(variant(-0.02, **own), [85, 86, 84, 85, 85]))
    assert checks(longer)["wall time"].invalid and longer.verdict.startswith("invalid (confounded: wall time +21% per run")
    assert "over its time budget" in longer.verdict
    bigger = superiority(base, timed(variant(-0.02, budget=seconds), [85, 86, 84, 85, 85]))  # the base trainer's clock
    assert not checks(bigger)["wall time"].invalid  # a bigger model's first step and final evaluation: a warning
    flops = superiority(timed(baseline(), [70, 71, 70, 69, 70]), timed(variant(-0.02), [85, 86, 84, 85, 85]))
    assert not checks(flops)["wall time"].invalid and flops.verdict == "better"  # per FLOP: a warning
    honest = superiority(base, timed(variant(-0.02, **own), [73, 72, 74, 71, 73]))  # a slower final evaluation
    assert "wall time" not in checks(honest) and honest.verdict == "better"


def test_diverged_or_killed_in_one_arm_only():
    var = variant(-0.02)
    var[3] = dict(var[3], status="diverged", val_bpb=None)
    var[4] = dict(var[4], status="killed", val_bpb=None)
    c = superiority(baseline(), var)
    assert c.verdict == "invalid (confounded: variant diverged on seed 3, variant killed on seed 4)"
    base = baseline()
    base[3] = dict(base[3], status="diverged", val_bpb=None)
    both = superiority(base, var[:4])
    assert "dropped" not in checks(both) and both.n == 3


def test_errors_in_one_arm_are_a_warning():
    var = variant(-0.02)
    var[4] = dict(var[4], status="error", val_bpb=None)
    c = superiority(baseline(), var)
    assert checks(c)["dropped"].text == "variant error on seed 4" and not checks(c)["dropped"].invalid
    assert c.verdict == "better" and c.n == 4


@pytest.mark.parametrize("status", ["error", "invalid"])
def test_a_variant_whose_own_code_fails_on_a_seed_is_invalid(status):
    """Code of the agent's own runs in every run of its arm: failing on the seeds it would lose
    (a crash, an exit, a broken result) would leave only the seeds it likes in the pairs."""
    var = variant(-0.02, git_commit="def456")
    var[4] = dict(var[4], status=status, val_bpb=None)
    c = superiority(baseline(), var)
    assert c.verdict == (f"invalid (confounded: variant {status} on seed 4 "
                         "(in its own code, which could choose the seeds that count))")
    base = baseline()
    base[4] = dict(base[4], status=status, val_bpb=None)  # the baseline's code is the program's
    assert superiority(base, variant(-0.02, git_commit="def456")).verdict == "better"
    dirty = variant(-0.02, git_dirty=True)  # code nobody can name is not the baseline's
    dirty[4] = dict(dirty[4], status=status, val_bpb=None)
    assert checks(superiority(baseline(), dirty))["dropped"].invalid


def test_budgets_differ():
    c = superiority(baseline(), variant(-0.02, budget={"kind": "flops", "value": 2e12}))
    assert checks(c)["budget"].text == "budgets differ: baseline flops 1e+12 / variant flops 2e+12"
    assert "budget" not in checks(superiority(baseline(), variant(-0.02)))


def test_tolerances_are_settable():
    loose = Tolerances(wall_time=0.5)
    slower = timed(variant(-0.02), [125, 126, 124, 125, 127])
    assert "wall time" in checks(superiority(timed(baseline(), QUIET), slower))
    assert "wall time" not in checks(superiority(timed(baseline(), QUIET), slower, tolerances=loose))


# --- held-out confirmation ---------------------------------------------------------------

def test_confirmed_on_the_held_out_split():
    c = superiority(baseline(), variant(-0.02))
    assert c.final_verdict == "better (awaiting held-out confirmation)"
    c = confirm(c, baseline(), variant(-0.02))
    assert c.final_verdict == "better" and c.confirmation.metric == "confirm_bpb"


def test_not_confirmed_on_the_held_out_split():
    var = [dict(r, confirm_bpb=b["val_bpb"] + j) for r, b, j in zip(variant(-0.02), baseline(), JITTER)]
    c = confirm(superiority(baseline(), var), baseline(), var)
    assert c.verdict == "better"
    assert c.final_verdict.startswith("better (not confirmed on held-out split: inconclusive")


def test_no_regression_confirmed_even_if_better_there():
    var = [dict(r, confirm_bpb=r["val_bpb"] - 0.02) for r in variant(0.0)]
    c = confirm(non_inferiority(baseline(), var), baseline(), var)
    assert (c.verdict, c.confirmation.verdict, c.final_verdict) == ("no regression", "better", "no regression")


def test_a_gain_only_the_main_split_shows_still_answers_a_non_inferiority_question():
    """A non-inferiority program asks "no regression?". A variant `better` on the main split that
    only holds as `no regression` on the held-out split answered that question twice; only the
    gain did not hold. It read `better (not confirmed ...)`, and its claim was never replicated
    on fresh seeds (the harness plans them for a confirmed verdict only): a CI run of the
    runner's fresh-seed test met it. It stands as `no regression` now, saying where the gain was."""
    var = [dict(r, confirm_bpb=b["val_bpb"] + j) for r, b, j in zip(variant(-0.02), baseline(), JITTER)]
    c = confirm(adjust([non_inferiority(baseline(), var)])[0], baseline(), var)
    assert verdict_kind(c.verdict) == "no regression" and c.final_verdict == c.verdict, c.final_verdict
    assert c.verdict == "no regression (better on the main split only, not on the held-out split)"
    c = judged(baseline(), var, "non-inferiority", 0.01, fresh_seeds=5)  # ... so its fresh seeds are drawn
    assert c.final_verdict == f"{c.verdict} (awaiting replication on 5 fresh seeds)", c.final_verdict
    worse = [dict(r, confirm_bpb=r["confirm_bpb"] + 0.006) for r in var]  # what the held-out split said, kept
    assert confirm(adjust([non_inferiority(baseline(), worse)])[0], baseline(), worse).final_verdict == (
        "no regression (better on the main split only, not on the held-out split: worse by 0.006, within the margin 0.01)")
    same = fresh([v + j for v, j in zip(FRESH_BASELINE, JITTER)])  # better on both splits, not on fresh seeds
    c = judged(baseline() + same[:5], variant(-0.02) + same[5:], "non-inferiority", 0.01, fresh_seeds=5)
    assert c.final_verdict == c.verdict == "no regression (better on the program's seeds only, not on 5 fresh seeds)"
    assert verdict_kind(c.final_verdict) == "no regression" and c.replication.verdict == "no regression"
    assert judged(baseline() + same[:5], variant(-0.02) + same[5:]).final_verdict.startswith(
        "better (not replicated on 5 fresh seeds: inconclusive")  # a superiority claim's question is the gain


def test_missing_confirm_split_is_said():
    strip = lambda runs: [dict(r, confirm_bpb=None) for r in runs]
    c = confirm(superiority(baseline(), variant(-0.02)), strip(baseline()), strip(variant(-0.02)))
    assert c.final_verdict == ("better (not confirmed on held-out split: inconclusive "
                               "(no seed with confirm_bpb in both arms: baseline 0, variant 0))")


def test_verdicts_that_need_no_confirmation_are_final():
    c = confirm(superiority(baseline(), variant(+0.02)), baseline(), variant(+0.02))
    assert c.final_verdict == "worse"


# --- ledger rows -------------------------------------------------------------------------

def ledger_row(r: dict) -> dict:
    """The same run as a row of the runs table: flat params, JSON text, confirm_bpb in result."""
    row = {k: v for k, v in r.items() if k not in ("params", "confirm_bpb")}
    row.update(params_total=r["params"]["total"], params_matmul=r["params"]["matmul"],
               overrides=json.dumps(r["overrides"]), budget=json.dumps(r["budget"]),
               result=json.dumps({"confirm_bpb": r["confirm_bpb"], "params": r["params"]}), git_dirty=0)
    return row


def test_ledger_rows_read_like_result_dicts():
    rows = lambda runs: [ledger_row(r) for r in runs]
    from_dicts = confirm(superiority(baseline(), variant(-0.02)), baseline(), variant(-0.02))
    from_rows = confirm(superiority(rows(baseline()), rows(variant(-0.02))), rows(baseline()), rows(variant(-0.02)))
    assert from_rows.final_verdict == from_dicts.final_verdict == "better"
    assert from_rows.mean == from_dicts.mean and from_rows.findings == from_dicts.findings


# --- simulation --------------------------------------------------------------------------

def simulate(seeds: int, effect: float, rng, trials=200, noise=0.01, shared=0.5) -> float:
    """Share of `trials` comparisons called 'better' under the superiority rule. Each run's
    val_bpb = 1 + seed component + own noise, both normal, the seed component holding a
    `shared` fraction of the variance noise**2 (the seed fixes init and data order in both
    arms); the variant is lower by `effect`."""
    seed_std, own_std = noise * math.sqrt(shared), noise * math.sqrt(1 - shared)
    better = 0
    for _ in range(trials):
        luck = rng.normal(0, seed_std, seeds)
        base = 1 + luck + rng.normal(0, own_std, seeds)
        var = 1 + luck + rng.normal(0, own_std, seeds) - effect
        c = superiority(baseline(base, range(seeds)), variant(0.0, var, range(seeds), jitter=[0] * seeds))
        better += c.verdict == "better"
    return better / trials


def test_simulated_false_positives_and_power():
    """Noise std 0.01 per run, half its variance shared by both arms of a seed, so paired
    differences have std 0.01 too; the planted effect is 0.03, 3x the noise std."""
    rng = np.random.default_rng(20260101)
    rates = {seeds: (simulate(seeds, 0.0, rng), simulate(seeds, 0.03, rng)) for seeds in (5, 3)}
    no_shared = {seeds: (simulate(seeds, 0.0, rng, shared=0), simulate(seeds, 0.03, rng, shared=0)) for seeds in (5, 3)}
    for seeds in (5, 3):
        print(f"\n{seeds} seeds, 200 comparisons each: A/A 'better' {rates[seeds][0]:.1%}, "
              f"3-sigma effect 'better' {rates[seeds][1]:.1%}; without a shared seed component "
              f"(difference std 0.014): A/A {no_shared[seeds][0]:.1%}, effect {no_shared[seeds][1]:.1%}")
    assert rates[5][0] <= 0.05 and rates[3][0] <= 0.05
    assert rates[5][1] >= 0.80


def test_judge_arms_runs_the_whole_pipeline_and_names_unreadable_arms():
    base = baseline()
    wider = [dict(r, arm="wider", params={"total": 2_000_000, "matmul": 1_600_000}) for r in variant(-0.03)]
    arms = {"no-softcap": variant(-0.03), "wider": wider, "broken": [{"arm": "broken"}]}
    judged, unreadable = judge_arms(base, arms, "superiority", 0.0, declares={"wider": frozenset({"params"})})
    assert set(judged) == {"no-softcap", "wider"} and set(unreadable) == {"broken"}
    assert "could not read" in unreadable["broken"]
    assert all(c.adjustment == "holm" and c.family == 2 for c in judged.values())  # one family
    assert judged["no-softcap"].final_verdict == "better"                          # confirmed on held-out
    assert judged["no-softcap"].confirmation is not None
    assert not judged["wider"].confounds                                            # declared: not a confound


def test_one_more_seed_is_said_in_the_singular():
    """`inconclusive (needs 1 more seeds)` read in a report of the main job."""
    spread = [0.012, -0.012, 0.009, -0.009, 0.0]
    assert non_inferiority(baseline(), variant(0.0, jitter=spread)).verdict == "inconclusive (needs 1 more seed)"
    assert non_inferiority(baseline(), variant(0.002, jitter=spread)).verdict == "inconclusive (needs 2 more seeds)"
