"""Reports from constructed ledgers: the verdict table, the plots, `org report`, and bad input
(no finished runs, one seed, an older ledger schema, corrupt metrics) that still renders."""
import json
import multiprocessing
import os
import re
import sqlite3
import time
from dataclasses import fields
from pathlib import Path

import git
import matplotlib.image
import numpy as np
import pytest

from org.cli import main
from org.ledger import Ledger
from org.program import Program
from org.report import ReportError, build, to_json, write
from trainer.record import Measurement, Result, read

SEEDS = [0, 1, 2, 3, 4]
BASELINE = [2.300, 2.310, 2.290, 2.305, 2.295]  # val_bpb per seed
JITTER = [0.001, -0.001, 0.0005, -0.0005, 0.0]
PNG = b"\x89PNG\r\n\x1a\n"

SPEC = Program.model_validate({
    "name": "softcap", "question": "Can the logit softcap be removed without a regression?",
    "claim": {"kind": "non-inferiority", "margin": 0.01, "fresh_seeds": 0},  # (replication: test_org_runner.py)
    "baseline": {"preset": "nanochat", "overrides": {"depth": 2}},
    "variants": [{"name": "no-softcap", "overrides": {"softcap": 0}},
                 {"name": "wider", "overrides": {"depth": 3}}],
    "data": {"val_tokens": 4096},
    "budget": {"per_run": {"flops": 1e12}, "seeds": SEEDS, "total_compute_seconds": 600,
               "total_llm_dollars": 5, "run_timeout_seconds": 60},
    "train": {"batch_size": 4, "seq_len": 64},
}).model_dump(mode="json")


def result(seed, val_bpb, params=1_000_000, **changes) -> dict:
    """A trainer's result.json: 100 steps to the FLOP budget."""
    r = {"status": "completed", "val_bpb": val_bpb, "confirm_bpb": val_bpb, "val_loss": val_bpb * 0.69,
         "steps": 100, "tokens": 1_000_000, "flops": 1e12, "flops_per_token": 1e6,
         "params": {"total": params, "matmul": params // 2}, "budget": {"kind": "flops", "value": 1e12},
         "train_seconds": 10.0, "tokens_per_second": 1e5, "device": "cpu:x86_64x2", "seed": seed,
         "git_commit": "base", "git_dirty": False, "eval_fingerprint": "e", "data_fingerprint": "d"}
    r.update(changes)
    return r


def write_metrics(run_dir, final_bpb, lines=None):
    """metrics.jsonl as the trainer writes it: train loss every 10 steps, an eval every 20."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for step in range(10, 101, 10):
        records.append({"step": step, "tokens": step * 10_000, "flops": step * 1e10,
                        "elapsed_s": step * 0.1, "train_loss": 1.6 + 2.0 / step, "lr": 1.0})
        if step % 20 == 0:
            records.append({"step": step, "tokens": step * 10_000, "val_bpb": final_bpb + 0.2 * (100 - step) / 100})
    text = "".join(json.dumps(r) + "\n" for r in records)
    (run_dir / "metrics.jsonl").write_text(lines if lines is not None else text)


def add_arm(ledger, tmp_path, arm, values, who="program", seeds=SEEDS, status="completed", code="base", **changes):
    """An experiment and one run per seed, recorded the way the runner records them (`code`: its commit)."""
    overrides = {"no-softcap": {"softcap": 0}, "wider": {"depth": 3}, "softcap-5": {"softcap": 5},
                 "cap-4": {"softcap": 4}, "cap-6": {"softcap": 6}, "cap-7": {"softcap": 7}}.get(arm, {})
    experiment = ledger.experiment(ledger.add_experiment(
        "softcap", arm, who=who, source="declared" if who == "program" else "submitted",
        base_commit="base", code_commit=code, overrides=overrides, stage="measuring",
        hypothesis=f"{arm} changes nothing that matters"))
    for i, (seed, value) in enumerate(zip(seeds, values)):
        run_id = ledger.add_run(experiment, "main", seed, 1 + i, {"depth": 2, **overrides}, ("flops", 1e12))
        if status == "queued":
            continue
        ledger.claim("softcap", slot=0)
        run_dir = tmp_path / "runs" / str(run_id)
        ledger.mark_started(run_id, 123, ["python", "-m", "trainer"], run_dir, run_dir / "train.log")
        write_metrics(run_dir, value)
        said = result(seed, value, **changes)  # the harness's measurement agrees with the trainer
        measured = {k: v for k, v in said.items() if k in {f.name for f in fields(Measurement)}}
        ledger.finish(run_id, "completed", result=read(Result, said, "result.json"), wall_seconds=12.0,
                      measurement=read(Measurement, measured, "measurement"))


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / ".lab" / "softcap" / "ledger.sqlite") as ledger:
        ledger.add_program("softcap", SPEC, base_commit="base", branch="program/softcap")
        yield ledger


def softcap_program(ledger, tmp_path):
    """The baseline, a variant within the margin, and a wider model that did not declare it."""
    add_arm(ledger, tmp_path, "baseline", BASELINE)
    add_arm(ledger, tmp_path, "no-softcap", [b + 0.002 + j for b, j in zip(BASELINE, JITTER)])
    add_arm(ledger, tmp_path, "wider", [b - 0.05 for b in BASELINE], who="alice", params=2_000_000)
    ledger.record_spend("softcap", "alice", "claude-x", tokens_in=12_000, tokens_out=3_000, dollars=0.42)


def is_png(path, min_bytes=20_000):
    data = path.read_bytes()
    height, width, _ = matplotlib.image.imread(path).shape
    return data.startswith(PNG) and len(data) > min_bytes and width > 600 and height > 400


# --- a report of a finished program ----------------------------------------------------

def test_report_has_verdicts_noise_floor_budget_lineage_spend_and_plots(ledger, tmp_path):
    softcap_program(ledger, tmp_path)
    report = build(ledger.path, "softcap")
    readme = write(report, tmp_path / "reports" / "softcap")
    text = readme.read_text()

    assert report.comparisons["no-softcap"].final_verdict == "no regression (worse by 0.002, within the margin 0.01)"  # confirmed on held-out
    assert report.comparisons["wider"].verdict.startswith("invalid (confounded: params +100.0% (not declared)")
    assert "Can the logit softcap be removed without a regression?" in text
    assert "non-inferiority with margin 0.01" in text and "p better (Holm)" in text
    row = next(line for line in text.splitlines() if line.startswith("| no-softcap"))
    assert "0,1,2,3,4 (5 paired)" in row
    assert "| no regression (worse by 0.002, within the margin 0.01) | no regression (worse by 0.002, within the margin 0.01) (confirmed: held-out split says no regression) |" in row
    assert "**Every number is the harness's.**" in text and "Except" not in text
    assert "2.3020 ± 0.0074" in row  # the variant's mean and seed std
    assert "invalid: params +100.0% (not declared)" in text
    assert "baseline seed-to-seed std of val_bpb: 0.0079 over 5 seeds" in text
    assert "**Every run.** batch 4 × 64 tokens on cpu, float32 with fp32 matmuls" in text
    assert "**1e+12 flops** (`--budget-flops 1e+12` on every run)" in text
    assert "compute 180 s of 600 s" in text and "LLM $0.42 of $5" in text
    assert "| 3 | wider | alice | submitted | measuring | `base` (base) | `depth=3` |" in text
    assert "| alice | claude-x | 12,000 | 3,000 | $0.42 |" in text
    assert "What is missing" not in text  # nothing is
    for name in ("curves_flops.png", "curves_time.png", "final.png"):
        assert is_png(readme.parent / name) and f"]({name})" in text
    # the numbers behind the verdicts, seed by seed, with the held-out split's beside them
    assert "## Per seed" in text
    assert "| 0 | 2.3000 (2.3000) | 2.3030 (2.3030) | 2.2500 (2.2500) | +0.0030 (+0.0030) | -0.0500 (-0.0500) |" in text


def test_the_report_says_what_val_bpb_is_over_where_the_val_split_holds_fewer_tokens_than_asked(ledger, tmp_path):
    """data.val_tokens asks 4096; a lab whose val split holds 1,000 tokens scored each run on 960
    (15 windows of 64). The report said "val_bpb over 4096 tokens" all the same."""
    add_arm(ledger, tmp_path, "baseline", BASELINE, eval_tokens=960)
    text = write(build(ledger.path, "softcap"), tmp_path / "short").read_text()
    assert "val_bpb over 960 tokens (all the lab's val split holds: data.val_tokens asks 4096)." in text

    add_arm(ledger, tmp_path, "no-softcap", BASELINE, eval_tokens=960)  # more runs on that split: said once
    assert write(build(ledger.path, "softcap"), tmp_path / "short").read_text().count("data.val_tokens asks") == 1


def test_a_report_says_the_tokens_asked_where_the_split_holds_them(ledger, tmp_path):
    add_arm(ledger, tmp_path, "baseline", BASELINE, eval_tokens=4096)
    text = write(build(ledger.path, "softcap"), tmp_path / "whole").read_text()
    assert "val_bpb over 4096 tokens." in text and "asks" not in text


def test_a_report_says_how_much_longer_than_the_bases_an_experiments_model_may_take_as_it_is_measured(tmp_path):
    """budget.measure_grace_seconds is free compute for a code arm (its model's time as it is
    measured, past the base's): a person who set it to 300 s must read 300 s, not the default's 30.
    A program of config arms only has no such time, and its report does not speak of it."""
    for grace, said in ((None, "and 30 s more in all"), (300, "and 300 s more in all")):
        spec = {**SPEC, "budget": {k: v for k, v in SPEC["budget"].items() if k != "measure_grace_seconds"}}
        spec["budget"] |= {} if grace is None else {"measure_grace_seconds": grace}  # (None: a ledger before the field)
        with Ledger(tmp_path / str(grace) / "ledger.sqlite") as ledger:
            ledger.add_program("softcap", spec, base_commit="base", branch="program/softcap")
            add_arm(ledger, tmp_path / str(grace), "baseline", BASELINE)
            text = write(build(ledger.path, "softcap"), tmp_path / str(grace) / "report").read_text()
            assert "measure_grace_seconds" not in text and "Not ruled out" not in text  # (the base's code alone)
            add_arm(ledger, tmp_path / str(grace), "no-softcap", BASELINE, code="c0ffee")  # (a commit of its own)
            text = write(build(ledger.path, "softcap"), tmp_path / str(grace) / "report").read_text()
        assert f"3x the base's time to build and load, 2.5x its time per FLOP of scored forward passes, {said} " \
               "(`budget.measure_grace_seconds`), else the run is `invalid`" in text
        # and what no measurement of it rules out (README: the lookup attack), a person's to check in its diff
        assert "**Not ruled out: that forward pass drawing on text its box holds**" in text
        assert "read a code arm's diff before you trust its gain." in text


def test_two_reports_written_at_once_each_write_a_whole_one(ledger, tmp_path):
    """Two `org report`s at once (a person's, the org's): the second failed to rename a temporary
    README both had written to under one name."""
    softcap_program(ledger, tmp_path)
    report, out = build(ledger.path, "softcap"), tmp_path / "reports" / "softcap"
    together = multiprocessing.get_context("fork").Barrier(2)

    def writes():
        for name in ("rename", "replace"):  # each file's last step comes late: the writers overlap there
            setattr(os, name, lambda *a, _was=getattr(os, name), **k: (time.sleep(0.2), _was(*a, **k))[1])
        together.wait()
        for _ in range(3):
            write(report, out)
    writers = [multiprocessing.get_context("fork").Process(target=writes) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert [w.exitcode for w in writers] == [0, 0]
    assert "## Per seed" in (out / "README.md").read_text() and is_png(out / "final.png")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # (no temporary left)


def test_an_agents_words_stay_in_their_cell_of_the_report(ledger, tmp_path):
    """A hypothesis is an agent's: `cell()` took out `|` and `\\n` only, and CommonMark ends a
    line at a lone `\\r` too, so this one wrote a heading of its own and hid the rest of the
    report in an HTML comment."""
    softcap_program(ledger, tmp_path)
    ledger.add_experiment("softcap", "forged", who="alice", source="submitted", base_commit="base",
                          code_commit="base", overrides={"softcap": 3}, stage="measuring",
                          hypothesis="x\r## Verdicts (corrected)\rforged: better\u2028<!--")
    text = write(build(ledger.path, "softcap"), tmp_path / "reports" / "softcap").read_text()
    lines = re.split(r"\r\n|\r|\n", text)  # CommonMark's line endings
    assert not any(line.startswith("## Verdicts (corrected)") for line in lines) and "<!--" not in text
    row = next(line for line in lines if line.startswith("| 4 | forged"))
    assert row.endswith("| x ## Verdicts (corrected) forged: better &lt;!-- |")


def test_an_agents_words_are_plain_text_in_the_report_with_no_link_image_or_emphasis(ledger, tmp_path):
    """Inline markup of an agent's (its hypothesis, an override's value, a file its diff names, a
    run's reason quoted in a verdict) rendered: an image the viewer fetches from the agent's server,
    a link whose text says anything, `**kept**` in the harness's own bold."""
    from markdown_it import MarkdownIt
    softcap_program(ledger, tmp_path)
    sly = "**better (confirmed)** ![plot](http://x.test/p.png) [report](http://x.test/r) _em_ ~~no~~ `code` <b>"
    diff = "diff --git a/[a](http://x.test/d).py b/[a](http://x.test/d).py\n+x\n"
    e = ledger.add_experiment("softcap", "sly", who="alice", source="submitted", base_commit="base", code_commit="base",
                              overrides={"softcap": "3` ![v](http://x.test/v.png) `"}, stage="measuring",
                              hypothesis=sly, diff=diff)
    run = ledger.add_run(ledger.experiment(e), "main", 0, 1, {"softcap": 3}, ("flops", 1e12))
    ledger.claim("softcap", slot=0)
    ledger.finish(run, "invalid", sly)
    text = write(build(ledger.path, "softcap"), tmp_path / "reports" / "softcap").read_text()
    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)
    agents = [line for line in html.splitlines() if "x.test" in line]  # the verdict and the failures table (its run's reason), the lineage (what changed, the hypothesis)
    assert len(agents) == 4 and not any(re.search(r"<(img|a|em|strong|s|del|b)\b", line) for line in agents), agents
    assert "**better (confirmed)** ![plot](http://x.test/p.png) [report](http://x.test/r) _em_ ~~no~~" in html
    assert "<code>softcap=3' ![v](http://x.test/v.png) '</code>" in html  # its backticks cannot end the span
    assert "val_bpb" in text and "val\\_bpb" not in text  # an underscore inside a word stays as it is


def test_the_curves_show_each_variants_paired_difference_where_a_small_effect_is_visible(ledger, tmp_path):
    """On a val_bpb axis a 0.002 difference hides under the lines; the paired panel shows it."""
    from org.plots import plot_curves
    softcap_program(ledger, tmp_path)
    report = build(ledger.path, "softcap")
    for x in (0, 1):                                   # against FLOPs, and against seconds
        top, middle, bottom = plot_curves(report, x).axes
        lines = {line.get_label(): line for line in middle.get_lines()}
        mean = lines["no-softcap − baseline (5 paired seeds)"].get_ydata()
        assert np.allclose(mean, 0.002)                 # variant − baseline, the jitter averaged out
        assert np.allclose(lines["wider − baseline (5 paired seeds)"].get_ydata(), -0.05)
        assert middle.get_ylabel() == "Δ val_bpb (bits per byte)" and "nats" in bottom.get_ylabel()
        low, high = middle.get_ylim()
        assert high - low < 0.1                         # its own scale, not val_bpb's


def test_org_report_prints_a_summary_and_json(ledger, tmp_path, monkeypatch, capsys):
    softcap_program(ledger, tmp_path)
    repo = git.Repo.init(tmp_path)  # `org` works inside the lab's git checkout
    (tmp_path / "README.md").write_text("lab\n")
    repo.index.add(["README.md"])
    repo.index.commit("lab")
    monkeypatch.chdir(tmp_path)

    assert main(["report", "softcap"]) == 0
    out = capsys.readouterr().out
    assert "no-softcap" in out and "no regression" in out and "invalid (confounded" in out
    assert f"report: {tmp_path / 'reports' / 'softcap' / 'README.md'}" in out

    assert main(["report", "softcap", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    verdicts = {v["arm"]: v for v in data["verdicts"]}
    assert verdicts["no-softcap"]["final_verdict"] == "no regression (worse by 0.002, within the margin 0.01)" and verdicts["no-softcap"]["n"] == 5
    assert verdicts["no-softcap"]["adjustment"] == "holm" and verdicts["no-softcap"]["family"] == 2
    assert verdicts["wider"]["confounds"] == ["params +100.0% (not declared)"]
    assert data["noise_floor"]["seeds"] == 5 and data["missing"] == []
    assert sorted(data["plots"]) == ["curves_flops.png", "curves_time.png", "final.png"]

    assert main(["report", "nonesuch"]) == 2
    assert "no ledger for program 'nonesuch'" in capsys.readouterr().err


def test_a_declared_change_is_not_a_confound(tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["variants"][1]["declares"] = ["params"]  # "wider at equal FLOPs" is the claim
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.add_program("softcap", spec, base_commit="base", branch="program/softcap")
        add_arm(ledger, tmp_path, "baseline", BASELINE)
        add_arm(ledger, tmp_path, "wider", [b - 0.05 for b in BASELINE], params=2_000_000)
    c = build(tmp_path / "ledger.sqlite", "softcap").comparisons["wider"]
    assert c.confounds == [] and c.verdict == "better" and c.declared == {"params"}


def test_a_positive_control_shows_whether_the_program_could_see_a_known_effect(tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["variants"] = [{"name": "softcap-5", "overrides": {"softcap": 5}, "control": "worse"},
                        {"name": "cap-4", "overrides": {"softcap": 4}, "control": "worse"},
                        {"name": "cap-6", "overrides": {"softcap": 6}, "control": "worse"},
                        {"name": "cap-7", "overrides": {"softcap": 7}, "control": "better"}]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.add_program("softcap", spec, base_commit="base", branch="program/softcap")
        add_arm(ledger, tmp_path, "baseline", BASELINE)
        add_arm(ledger, tmp_path, "softcap-5", [b + 0.05 + j for b, j in zip(BASELINE, JITTER)])
        add_arm(ledger, tmp_path, "cap-4", [b + 0.003 + j for b, j in zip(BASELINE, JITTER)])  # too small to see
        add_arm(ledger, tmp_path, "cap-6", [b + 0.03 + 40 * j for b, j in zip(BASELINE, JITTER)])  # too noisy
        add_arm(ledger, tmp_path, "cap-7", [b - 0.05 + j for b, j in zip(BASELINE, JITTER)], confirm_bpb=2.35)  # main only
    report = build(tmp_path / "ledger.sqlite", "softcap")
    text = write(report, tmp_path / "out").read_text()
    assert "Positive control `softcap-5` (known to be worse): **worse**, Δ +0.0500: the program can see" in text
    assert ("**Positive control `cap-4` (known to be worse) reads `no regression (worse by 0.003, within the "
            "margin 0.01)`: the program could not see a known effect, so its other verdicts prove little. A larger "
            "budget per run.**") in text  # (more seeds would only narrow a difference that is under the margin)
    cap6 = next(line for line in text.splitlines() if "`cap-6`" in line)
    needs = re.search(r"needs (\d+) more seeds?\b", cap6)[1]
    assert (f"prove little. {needs} more seed{'' if needs == '1' else 's'} (`org extend softcap --seeds "
            f"{','.join(str(s) for s in range(5, 5 + int(needs)))}`: every arm runs on them)") in cap6, cap6
    assert ("**Positive control `cap-7` (known to be better) reads `better (not confirmed on held-out split: worse)`: "
            "the program could not see a known effect") in text  # (seen on the main split only: not seen)
    assert [line.split(":")[0] for line in to_json(report)["controls"]][:2] == [
        "Positive control softcap-5 (known to be worse)", "Positive control cap-4 (known to be worse) reads no regression (worse by 0.003, within the margin 0.01)"]


def test_killed_refused_invalid_and_retried_runs_are_listed_with_reasons(ledger, tmp_path):
    add_arm(ledger, tmp_path, "baseline", BASELINE[:3], seeds=SEEDS[:3])
    experiment = ledger.experiment(ledger.add_experiment(
        "softcap", "greedy", who="mallory", source="submitted", base_commit="base", code_commit="c0ffee",
        overrides={}, stage="measuring", diff="diff --git a/trainer/eval.py b/trainer/eval.py\n+kind = True\n"))
    reasons = {0: ("killed", "wall time over run_timeout_seconds (60s), killed by the runner"),
               1: ("invalid", "spent 2e+12 flops, the program's budget is 1e+12"),
               2: ("refused", "protected paths differ from the program's base commit base: trainer/eval.py")}
    for seed, (status, reason) in reasons.items():
        run_id = ledger.add_run(experiment, "main", seed, 1 + seed, {"depth": 2}, ("flops", 1e12))
        ledger.claim("softcap", slot=0)
        if seed == 0:  # its first runner died: the run went back to the queue once
            ledger.requeue(run_id, "runner pid 99 died during attempt 1; re-queued")
            ledger.claim("softcap", slot=0)
        ledger.finish(run_id, status, reason, result=Result(status=status, steps=50) if seed == 0 else None)

    text = write(build(ledger.path, "softcap"), tmp_path / "out").read_text()
    for seed, (status, reason) in reasons.items():
        assert f"| greedy | {seed} | main | {status} | {reason} |" in text
    assert "took 2 attempts: " in text and "attempt 1: runner pid 99 died during attempt 1; re-queued" in text
    assert "| greedy | 1 killed, 1 invalid, 1 refused |" in text
    assert "code: trainer/eval.py +1 -0" in text and "| mallory | submitted |" in text
    row = next(line for line in text.splitlines() if line.startswith("| greedy"))
    # dropping either would hide it: a run killed in one arm only, an own-code failure of the variant's
    assert ("| invalid (confounded: variant killed on seed 0, variant invalid on seed 1 "
            "(in its own code, which could choose the seeds that count)) |") in row

    fresh = ledger.add_run(experiment, "replicate", 918_273_645, 1, {"depth": 2}, ("flops", 1e12))
    ledger.claim("softcap", slot=0)  # a fresh seed's run failed: the lab's report (agents read it) says "fresh"
    ledger.finish(fresh, "killed", "wall time over run_timeout_seconds (60s), killed by the runner")
    text = write(build(ledger.path, "softcap"), tmp_path / "out").read_text()
    assert "| greedy | fresh | replicate | killed |" in text and "918273645" not in text


# --- bad input: the report renders, says what is missing, invents nothing ---------------

def test_no_finished_runs(ledger, tmp_path):
    add_arm(ledger, tmp_path, "baseline", BASELINE, status="queued")
    add_arm(ledger, tmp_path, "no-softcap", BASELINE, status="queued")
    report = build(ledger.path, "softcap")
    text = write(report, tmp_path / "out").read_text()
    assert report.comparisons["no-softcap"].verdict == "inconclusive (no finished runs)"
    assert "- no finished runs: every verdict is inconclusive" in text
    assert "**Still in progress:** 10 queued; the verdicts below are provisional." in text
    assert "| baseline | none | no completed run |" in text
    assert "None: no completed run has readable metrics" in text
    assert report.plots == [] and not list((tmp_path / "out").glob("*.png"))


def test_an_arm_with_one_seed(ledger, tmp_path):
    add_arm(ledger, tmp_path, "baseline", BASELINE)
    add_arm(ledger, tmp_path, "no-softcap", [2.301], seeds=[0])
    report = build(ledger.path, "softcap")
    text = write(report, tmp_path / "out").read_text()
    assert report.comparisons["no-softcap"].verdict == "inconclusive (one seed: an interval needs two)"
    row = next(line for line in text.splitlines() if line.startswith("| no-softcap"))
    assert "2.3010 (one seed, no std)" in row and "| +0.0010 |" in row  # a difference, no interval
    assert "warning: seeds differ: baseline 0,1,2,3,4 / variant 0, 1 in common" in row
    assert is_png(tmp_path / "out" / "final.png")


def test_a_ledger_from_an_older_schema_is_read_not_migrated(tmp_path):
    """No schema_version, no experiments or llm_spend table, runs without purpose,
    claim_seq, wall_seconds or metrics_path: verdicts still come from what is there."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE programs (name TEXT, spec TEXT, base_commit TEXT)")
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, program TEXT, arm TEXT, seed INTEGER, "
               "status TEXT, overrides TEXT, val_bpb REAL, flops REAL, steps INTEGER, run_dir TEXT, result TEXT)")
    db.execute("INSERT INTO programs VALUES ('softcap', ?, 'base')", (json.dumps(SPEC),))
    for arm, values in (("baseline", BASELINE), ("no-softcap", [b + 0.001 for b in BASELINE])):
        for seed, value in zip(SEEDS, values):
            run_dir = tmp_path / "runs" / f"{arm}-{seed}"
            write_metrics(run_dir, value)
            db.execute("INSERT INTO runs (program, arm, seed, status, overrides, val_bpb, flops, steps, "
                       "run_dir, result) VALUES ('softcap', ?, ?, 'completed', ?, ?, 1e12, 100, ?, ?)",
                       (arm, seed, json.dumps({"softcap": 0} if arm != "baseline" else {}), value,
                        str(run_dir), json.dumps(result(seed, value))))
    db.commit()
    db.close()
    before = path.read_bytes()

    report = build(path, "softcap")
    text = write(report, tmp_path / "out").read_text()
    assert path.read_bytes() == before  # opened read-only: no migration, no schema_version
    assert report.comparisons["no-softcap"].verdict == "no regression (worse by 0.001, within the margin 0.01)"
    assert "**Except 10 of 10 completed runs**, recorded before the harness measured runs" in text
    assert "the ledger has no experiments table (older schema): no lineage" in text
    assert "the ledger has no llm_spend table (older schema): LLM dollars not recorded" in text
    assert "the ledger has no agent_cpu table (older schema): the agents' own compute not recorded" in text
    assert "the ledger's runs table has no column experiment_id, purpose, round" in text
    assert "wall_seconds" in text and "No experiments recorded in this ledger." in text
    assert is_png(tmp_path / "out" / "curves_flops.png")


def test_a_program_missing_from_the_ledger(ledger, tmp_path):
    report = build(ledger.path, "other")
    text = write(report, tmp_path / "out").read_text()
    assert "program 'other' is not in the ledger's programs table" in text
    assert "**Claim.** not recorded: no verdicts can be given" in text
    assert report.comparisons == {} and "No experiments or runs in the ledger yet" in text


def test_corrupt_and_missing_metrics_files(ledger, tmp_path):
    add_arm(ledger, tmp_path, "baseline", BASELINE)
    add_arm(ledger, tmp_path, "no-softcap", [b + 0.002 + j for b, j in zip(BASELINE, JITTER)])
    runs = ledger.runs("softcap")
    good = Path(runs[0]["metrics_path"])
    lines = good.read_text().splitlines()
    huge = [  # numbers past a float, and nesting past the parser: an agent's trainer wrote these
        '{"step": 30, "train_loss": 1' + "0" * 400 + ', "flops": 1, "elapsed_s": 1}',  # kept, not plotted
        '{"step": 1' + "0" * 400 + ', "val_bpb": 2.0, "tokens": 1}', '{"step": 1, "train_loss": ' + "9" * 5000 + "}",
        "[" * 100_000]
    torn = "\n".join(lines[:4] + ["{not json", "[1, 2]"] + huge + lines[4:]) + '\n{"step": 100, "val_b'
    good.write_text(torn)
    (tmp_path / "runs" / str(runs[1]["id"]) / "metrics.jsonl").unlink()

    report = build(ledger.path, "softcap")
    text = write(report, tmp_path / "out").read_text()
    assert f"run {runs[0]['id']} (baseline, seed 0): 6 unreadable lines in {good} skipped" in text
    assert f"run {runs[1]['id']} (baseline, seed 1): no metrics.jsonl at" in text
    assert report.comparisons["no-softcap"].verdict == "no regression (worse by 0.002, within the margin 0.01)"  # verdicts come from the ledger
    assert len(report.curves) == 9 and len(report.curves[runs[0]["id"]].evals) == 5
    assert is_png(tmp_path / "out" / "curves_time.png")


def test_a_file_that_is_not_a_ledger(tmp_path):
    (tmp_path / "ledger.sqlite").write_text("not a database, just text " * 100)
    with pytest.raises(ReportError, match="the ledger is corrupt or not a ledger"):
        build(tmp_path / "ledger.sqlite", "softcap")


def test_an_agents_escape_sequences_reach_neither_the_terminal_nor_the_readme(ledger, tmp_path):
    """An arm whose every run its own trainer called invalid gets the verdict `invalid (<its
    reason>)`, and the reason is the agent's text: ESC [9D moved the cursor back over "invalid (",
    so the row read `better` on the person's screen, and OSC 52 wrote their clipboard; in
    README.md the same bytes fire under `cat` or `less -R`."""
    import io
    from org.report import print_summary
    add_arm(ledger, tmp_path, "baseline", BASELINE)
    sly = "\x1b[9D better \x1b]52;c;cm0gLXJmIH4=\x07\x08\x08"
    experiment = ledger.experiment(ledger.add_experiment(
        "softcap", "sly", who="junior-1", source="submitted", base_commit="base", code_commit="base",
        overrides={"softcap": 0}, stage="measuring", hypothesis=f"it helps {sly}"))
    for i, seed in enumerate(SEEDS):
        run_id = ledger.add_run(experiment, "main", seed, 1 + i, {"depth": 2, "softcap": 0}, ("flops", 1e12))
        ledger.claim("softcap", slot=0)
        ledger.finish(run_id, "invalid", sly)
    report = build(ledger.path, "softcap")
    readme = write(report, tmp_path / "out")
    screen = io.StringIO()
    print_summary(report, readme, file=screen)
    for text in (screen.getvalue(), readme.read_text()):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), repr(text)
        assert "invalid" in text and re.search(r"\?\\?\[9D better", text)  # shown, defused
