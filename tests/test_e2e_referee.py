"""The referee and the report end to end: the real tiny trainer through the real runner
(`org run`), then verdicts and `org report` from the ledger it filled."""
import pytest
import yaml

from org.cli import main
from org.plots import plot_curves, read_curves
from org.report import build
from test_org_runner import fix_lab_keys, make_project, tiny_program  # noqa: F401  (make_project is a fixture)

pytestmark = pytest.mark.slow
SEEDS = [0, 1, 2]
WIDER = {"n_embd": 96}  # 3x the width: ~9x the matmul parameters and FLOPs per token


def program(name: str, per_run: dict, declares=(), **changes) -> dict:
    wider = {"name": "wider", "overrides": WIDER, **({"declares": list(declares)} if declares else {})}
    budget = {**tiny_program()["budget"], "per_run": per_run, "seeds": SEEDS}
    return tiny_program(name=name, question="Is a wider model better?", claim={"kind": "superiority", "fresh_seeds": 0},
                        variants=[wider], budget=budget, **changes)


def test_the_spurious_width_result_is_caught_and_equal_flops_is_valid(make_project):
    # 60 steps for both: the wider model trains on 9x the compute and looks better
    root = make_project(program("width-steps", {"steps": 60}))
    # (the barely trained wider arm's held-out gap moved with the lab's draws: in 2 of 7 labs,
    # before the val windows' margin, it read invalid at equal FLOPs)
    fix_lab_keys(root / ".lab" / "harness-cache", "the width lab")
    assert main(["run", "programs/tiny.yaml"]) == 0
    report = build(root / ".lab" / "width-steps" / "ledger.sqlite", "width-steps")
    steps = report.comparisons["wider"]
    assert steps.mean < 0 and steps.variant_mean < steps.baseline_mean  # it looks better ...
    assert steps.verdict.startswith("invalid (confounded: flops +")  # ... on more FLOPs and params
    assert {f.check for f in steps.confounds} == {"flops", "params"}
    assert "params" in steps.verdict and "(not declared)" in steps.verdict

    # the same FLOPs as the baseline's 60 steps, and a claim that declares the bigger model
    flops = report.arm_runs("baseline")[0]["flops"]
    spec = program("width-flops", {"flops": flops}, declares=["params"])
    (root / "programs" / "width-flops.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["run", "programs/width-flops.yaml"]) == 0
    equal = build(root / ".lab" / "width-flops" / "ledger.sqlite", "width-flops").comparisons["wider"]
    assert equal.confounds == [] and not equal.verdict.startswith("invalid")  # a valid comparison
    warned = {f.check for f in equal.warnings}  # fewer steps of a bigger model; and, by the machine's
    assert {"tokens", "steps"} <= warned <= {"tokens", "steps", "wall time"}  # load, its time per FLOP may differ
    assert equal.n == len(SEEDS) and equal.lower is not None  # a real interval, whatever it says


def test_the_report_of_a_small_program(make_project, capsys):
    variants = [{"name": "no-softcap", "overrides": {"softcap": 0}}, {"name": "cap30", "overrides": {"softcap": 30}}]
    root = make_project(tiny_program(
        variants=variants, budget={**tiny_program()["budget"], "per_run": {"steps": 40}, "seeds": SEEDS},
        train={"batch_size": 4, "seq_len": 64, "eval_every": 10},
        runner={"baseline_every": 1, "threads_per_slot": 1}))  # re-runs of the baseline measure drift
    assert main(["run", "tiny"]) == 0
    capsys.readouterr()
    assert main(["report", "tiny"]) == 0
    out = capsys.readouterr().out
    readme = root / "reports" / "tiny" / "README.md"
    assert f"report: {readme}" in out and "no-softcap" in out

    text = readme.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| no-softcap"))
    assert "0,1,2 (3 paired)" in row and "What is missing" not in text
    assert "baseline seed-to-seed std of val_bpb" in text and "runs of re-run seeds" in text  # drift measured
    assert "`softcap=0`" in text and "**40 steps** (`--steps 40` on every run)" in text
    for name in ("curves_flops.png", "curves_time.png", "final.png"):
        png = root / "reports" / "tiny" / name
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 20_000
    report = build(root / ".lab" / "tiny" / "ledger.sqlite", "tiny")
    assert all(len(c.evals) == 4 for c in report.curves.values())  # steps 10, 20, 30 and the final
    for run in (r for r in report.runs if r["id"] in report.curves):  # the harness's, on the lab's val
        assert [step for step, _ in run["val_curve"]] == [10, 20, 30]
        assert list(report.curves[run["id"]].evals[:, 2]) == [bpb for _, bpb in run["val_curve"]] + [run["val_bpb"]]
        assert "val_bpb" not in (root / ".lab" / "tiny" / "runs" / str(run["id"]) / "metrics.jsonl").read_text()
    title = lambda: plot_curves(report, x=0).axes[0].get_title()  # noqa: E731
    assert "(the harness's, on the lab's val)" in title()
    next(r for r in report.runs if r["id"] in report.curves)["val_curve"] = None  # recorded before the harness kept curves
    report.curves.clear()
    read_curves(report)
    assert "(the harness's, or older runs' trainers', on the lab's val)" in title()
    assert report.noise.reruns >= 2 and report.comparisons["cap30"].n == 3
    assert report.comparisons["cap30"].family == 2  # Holm over both variants
