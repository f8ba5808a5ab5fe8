"""`python -m trainer gpucheck`: without a GPU it says what is missing; its parts run for real on
the CPU (GPU against CPU becomes CPU against CPU), so only the device itself is left untested."""
import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from trainer.gpucheck import (MATMULS, STEP_TOLERANCE, Setup, cpu_on_twins, format_table, missing_gpu, run_parts,
                              step_spec, train_losses)
from trainer.train import run

TINY = (("n_layer", 1), ("n_embd", 32), ("n_head", 2), ("sequence_len", 32))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for src in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]:
        (root / src.name).write_text(src.read_text(encoding="utf-8", errors="replace"))
    return str(root)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def gpucheck(*args, hide_cupy=False, cwd=None):
    code = ("import sys\n" + ("sys.modules['cupy'] = None\n" if hide_cupy else "") +
            "from trainer.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "gpucheck", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.skipif(missing_gpu() is None, reason="a GPU is here: gpucheck would run, not refuse")
def test_without_a_gpu_gpucheck_says_in_one_line_what_is_missing(tmp_path):
    proc = gpucheck("--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stdout == ""
    line, = proc.stderr.splitlines()
    assert line.startswith("gpucheck: no GPU to check: CuPy")
    assert not (tmp_path / "out").exists()

    proc = gpucheck(hide_cupy=True)
    line, = proc.stderr.splitlines()
    assert proc.returncode == 2
    assert "CuPy does not import" in line and "pip install -e '.[gpu]'" in line


def test_gpucheck_names_a_part_it_does_not_know():
    proc = gpucheck("--parts", "kernels", "speed")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: --parts: unknown part 'speed'; choose from device, kernels, steps, "
                                   "resume, d12, bench")


def test_the_parts_run_on_the_cpu_and_keep_their_rows_as_they_go(corpus, tmp_path):
    setup = Setup(out=tmp_path, device="cpu", data=corpus, overrides=TINY, batch_size=4, steps=3,
                  resume_steps=200, d12=TINY, d12_batch=4, d12_seconds=1.0)
    rows = run_parts(setup, ["steps", "resume", "d12", "kernels"])
    by_part = {}
    for r in rows:
        by_part.setdefault(r["part"], []).append(r)

    # CPU against CPU: the same numbers, so every precision passes its bar
    assert [r["check"] for r in by_part["steps"]] == [f"3 steps, no lambdas, {m} matmuls, cpu vs cpu" for m in ("fp32", "tf32", "bf16")]
    assert all(r["ok"] and r["result"].startswith("max |loss difference| 0.0e+00") for r in by_part["steps"])
    # the resume part really stopped a run mid-way and found it bit-identical after --resume
    repeat, resumed = by_part["resume"]
    assert repeat["ok"] and resumed["ok"], rows
    stopped = int(resumed["check"].split("SIGTERM at step ")[1].split(",")[0])
    assert 20 <= stopped < 200
    assert json.loads((tmp_path / "runs" / "resume-cut" / "result.json").read_text())["steps"] == 200
    d12, = by_part["d12"]
    assert d12["ok"] and d12["result"].startswith("val_bpb ")
    # with no GPU every on-GPU kernel case skips, and a skip counts as a failure, never a pass
    assert len(by_part["kernels"]) >= 14
    assert all(r["ok"] is False and r["result"].startswith("skipped: ") for r in by_part["kernels"])

    logged = [json.loads(x) for x in (tmp_path / "gpucheck.jsonl").read_text().splitlines()]
    assert logged == rows
    table = format_table(rows)
    assert table.splitlines()[0] == "| part | check | result | bar | |"
    assert table.endswith(f"{len(rows)} rows, {len(by_part['kernels'])} failed")


def test_the_steps_check_trains_what_rounding_cannot_send_elsewhere(corpus, tmp_path):
    """The GPU's steps are checked against the CPU's, and two summation orders differ by rounding
    only. On the CPU there are two such orders to hand, Numba's kernels and the NumPy twins: on the
    runs the check trains, they must agree within the bars the GPU is held to. (With nanochat's
    x0/residual lambdas in, their first gradient is rounding noise that AdamW makes a full step:
    the two paths were 1.3 apart here, and a first H200 run failed every precision so.)"""
    setup = Setup(out=tmp_path, device="cpu", data=corpus, overrides=TINY, batch_size=4, steps=5)
    for matmul in MATMULS:
        losses = []
        for on_twins in (True, False):
            out = tmp_path / f"{matmul}-{'twins' if on_twins else 'kernels'}"
            with cpu_on_twins(on_twins):
                run(step_spec(setup, "cpu", matmul), out, quiet=True)
            losses.append(train_losses(out))
        assert len(losses[0]) == len(losses[1]) == 5
        assert max(abs(a - b) for a, b in zip(*losses)) <= STEP_TOLERANCE[matmul], (matmul, losses)


def test_a_check_given_too_few_seconds_says_which_parts_it_left_out(tmp_path):
    """A lease's call ends at its limit, and a check cut there prints no table: --seconds ends it in
    time, each part or bench measurement that would not fit a failed row saying so."""
    setup = Setup(out=tmp_path, device="cpu", deadline=time.monotonic() + 20)
    rows = run_parts(setup, ["steps", "resume", "bench"])
    assert [(r["part"], r["ok"]) for r in rows] == [("steps", False), ("resume", False), ("bench", False)]
    assert rows[1]["result"] == "not run: under 90 s of --seconds left"
    assert [json.loads(x) for x in (tmp_path / "gpucheck.jsonl").read_text().splitlines()] == rows

    from trainer.bench import measure_in_subprocess
    assert measure_in_subprocess("gpt2", "nanolab", "cpu", 5, timeout=1)["error"] == "stopped after 1 s (the time left)"

    proc = gpucheck("--seconds", "nan")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --seconds must be a positive number of seconds, got nan"
