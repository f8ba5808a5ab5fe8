"""Trainer runs: budgets, the run contract, resume, diverged/killed statuses and bad input."""
import json
import math
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from trainer import checkpoint
from trainer.checkpoint import load_checkpoint
from trainer.config import make_config
from trainer.flops import flops_per_token
from trainer.train import RunSpec, run

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "sequence_len": 32}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text folder (30 stdlib modules) so every run starts in well under a second."""
    root = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for src in sorted(stdlib.glob("*.py"))[:30]:
        (root / src.name).write_text(src.read_text(encoding="utf-8", errors="replace"))
    return str(root)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def spec(corpus, **kw):
    base = dict(overrides=dict(TINY), data=corpus, budget_kind="steps", budget=4, val_tokens=2048,
                batch_size=4, log_every=1)
    base.update(kw)
    return RunSpec(**base)


def trainer_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def start_run(corpus, out, steps, extra=()):
    args = ["train", "--data", corpus, "--steps", str(steps), "--batch-size", "4", "--val-tokens", "2048",
            "--log-every", "1", "--out", str(out), "--quiet", *extra] + [f"--set={k}={v}" for k, v in TINY.items()]
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_steps(out, n):
    metrics, deadline = out / "metrics.jsonl", time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= n):
        time.sleep(0.01)


def test_run_contract_files(corpus, tmp_path):
    result = run(spec(corpus), tmp_path, quiet=True)
    assert result["status"] == "completed"
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for key in ("val_bpb", "val_loss", "steps", "tokens", "flops", "flops_per_token", "params",
                "train_seconds", "tokens_per_second", "device", "seed", "git_commit", "git_dirty",
                "eval_fingerprint", "data_fingerprint", "trainer_version"):
        assert key in on_disk, key
    assert on_disk["params"]["matmul"] < on_disk["params"]["total"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["n_embd"] == 32 and config["spec"]["seed"] == 0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"step", "tokens", "flops", "elapsed_s", "train_loss", "lr"} <= set(steps[0])
    assert "val_bpb" in lines[-1]


def test_a_run_the_harness_measures_evaluates_nothing_and_keeps_snapshots_of_its_parameters(corpus, tmp_path):
    # a lab's run (org/slots.py): evaluations it was asked for are time its code could train in
    # unseen, so it is asked for none; its learning curve is the harness's, of these snapshots
    result = run(spec(corpus, budget=10, val_tokens=0, snapshot_every=4), tmp_path, quiet=True)
    assert result["status"] == "completed" and result["val_bpb"] is None and result["data_fingerprint"] is None
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in lines if "val_bpb" in r]
    final, _, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    kept = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert kept == ["step-00000004.npz", "step-00000008.npz"]  # not the last step: that is the checkpoint
    for name, step in zip(kept, (4, 8)):
        params, opt, meta = load_checkpoint(tmp_path / "snapshots" / name)
        assert meta == {"step": step} and not opt
        assert {n: a.shape for n, a in params.items()} == {n: a.shape for n, a in final.items()}
        assert any(not np.array_equal(params[n], final[n]) for n in final)


def test_a_long_runs_snapshots_thin_out_to_a_coarser_curve_not_a_full_disk(corpus, tmp_path, monkeypatch):
    # a run may keep MOST_SNAPSHOTS, and SNAPSHOT_BYTES in all (its box's disk is limited): past
    # that the interval doubles and what is off it goes; here at most 4
    monkeypatch.setattr(checkpoint, "MOST_SNAPSHOTS", 4)
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "step-00000003.npz").write_bytes(b"of an earlier run here")
    run(spec(corpus, budget=20, val_tokens=0, snapshot_every=1), tmp_path, quiet=True)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [f"step-{s:08d}.npz" for s in (4, 8, 12, 16)]
    each = (tmp_path / "snapshots" / "step-00000004.npz").stat().st_size
    monkeypatch.setattr(checkpoint, "MOST_SNAPSHOTS", 64)
    monkeypatch.setattr(checkpoint, "SNAPSHOT_BYTES", 2 * each + 64)  # by their bytes too (a meta of more digits)
    run(spec(corpus, budget=20, val_tokens=0, snapshot_every=1), tmp_path, quiet=True)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["step-00000008.npz", "step-00000016.npz"]
    monkeypatch.setattr(checkpoint, "SNAPSHOT_BYTES", each - 1)  # none fits: none is kept
    run(spec(corpus, budget=20, val_tokens=0, snapshot_every=1), tmp_path, quiet=True)
    assert not list((tmp_path / "snapshots").iterdir())


def test_bf16_matmuls_are_recorded_and_stay_near_the_float32_run(corpus, tmp_path):
    fp32 = run(spec(corpus), tmp_path / "fp32", quiet=True)
    bf16 = run(spec(corpus, matmul="bf16"), tmp_path / "bf16", quiet=True)
    assert (fp32["matmul"], bf16["matmul"]) == ("fp32", "bf16")
    from trainer.cli import MATMUL_CHOICES
    from trainer.model import MATMUL_PRECISIONS
    assert MATMUL_CHOICES == tuple(MATMUL_PRECISIONS)  # the flag offers what the model knows
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["spec"]["matmul"] == "bf16"  # for --resume
    assert bf16["val_loss"] != fp32["val_loss"]
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.01)  # bf16 rounding, not another model


def test_val_bpb_is_loss_over_ln2_for_bytes(corpus, tmp_path):
    result = run(spec(corpus), tmp_path, quiet=True)
    assert result["val_bpb"] == pytest.approx(result["val_loss"] / math.log(2), rel=1e-12)


@pytest.mark.parametrize("kind", ["flops", "tokens"])
def test_budget_is_never_exceeded_and_used_to_within_one_step(corpus, tmp_path, kind):
    cfg = make_config("nanochat", vocab_size=256, **TINY)
    tokens_per_step = 4 * 32
    per_step = {"flops": flops_per_token(cfg) * tokens_per_step, "tokens": tokens_per_step}[kind]
    budget = 5.5 * per_step
    result = run(spec(corpus, budget_kind=kind, budget=budget), tmp_path, quiet=True)
    used = result[kind]
    assert used <= budget
    assert budget - used < per_step
    assert result["steps"] == 5


def test_budget_smaller_than_one_step_is_refused_before_anything_is_written(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="smaller than one step"):
        run(spec(corpus, budget_kind="flops", budget=1e3), out, quiet=True)
    assert not out.exists()


def test_seconds_budget_stops_on_the_clock(corpus, tmp_path):
    result = run(spec(corpus, budget_kind="seconds", budget=0.5), tmp_path, quiet=True)
    assert result["status"] == "completed"
    assert 0.5 <= result["train_seconds"] < 2.0
    assert result["warmup_seconds"] > 0  # the first step is timed apart and reported


def test_same_seed_same_losses_other_seed_other_losses(corpus, tmp_path):
    losses = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run(spec(corpus, seed=seed), tmp_path / name, quiet=True)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(line)["train_loss"] for line in lines if "train_loss" in line])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_resume_after_sigterm_is_bit_identical(corpus, tmp_path):
    STEPS = 150  # (room past step 3 for a loaded machine's late look)
    whole = tmp_path / "whole"
    run(spec(corpus, budget=STEPS), whole, quiet=True)

    cut = tmp_path / "cut"
    proc = start_run(corpus, cut, steps=STEPS)
    wait_for_steps(cut, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    killed = json.loads((cut / "result.json").read_text())
    assert proc.returncode == 3, err
    assert killed["status"] == "killed" and 3 <= killed["steps"] < STEPS
    assert "killed" in err

    resumed = trainer_cli("train", "--resume", str(cut), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, _, _ = load_checkpoint(whole / "checkpoint.npz")
    b, _, _ = load_checkpoint(cut / "checkpoint.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    result = json.loads((cut / "result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == STEPS
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()
             if "train_loss" in line]
    assert steps == list(range(1, STEPS + 1))  # no step lost or logged twice


def test_a_sigterm_while_the_trainer_imports_ends_the_run_with_a_result(corpus, tmp_path):
    """The runner's timeout can land before the run has begun (seconds of imports on a busy
    machine): the run still ends at its first step, with a result saying so."""
    proc = start_run(corpus, tmp_path, steps=30)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 60
    while "numpy" not in maps.read_text() and time.time() < deadline:  # importing its modules
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "killed" and result["steps"] <= 1, result


def test_resume_after_sigkill_from_a_periodic_checkpoint_is_bit_identical(corpus, tmp_path):
    STEPS = 200  # (past step 10: room for a loaded machine's late look)
    run(spec(corpus, budget=STEPS), tmp_path / "whole", quiet=True)
    cut = tmp_path / "cut"
    proc = start_run(corpus, cut, steps=STEPS, extra=["--save-every", "4"])
    wait_for_steps(cut, 10)
    proc.kill()  # no handler runs: the last periodic checkpoint is all that survives
    proc.communicate(timeout=60)
    assert not (cut / "result.json").exists()

    resumed = trainer_cli("train", "--resume", str(cut), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, oa, _ = load_checkpoint(tmp_path / "whole" / "checkpoint.npz")
    b, ob, _ = load_checkpoint(cut / "checkpoint.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(np.array_equal(oa[k], ob[k]) for k in oa)
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()
             if "train_loss" in line]
    assert steps == list(range(1, STEPS + 1))


def test_nan_loss_is_diverged_with_nonzero_exit(corpus, tmp_path):
    out = tmp_path / "boom"
    proc = trainer_cli("train", "--data", corpus, "--steps", "20", "--batch-size", "4", "--val-tokens", "2048",
                       "--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2", "--set", "sequence_len=32",
                       "--set", "softcap=0", "--embedding-lr", "1e36", "--matrix-lr", "1e36",
                       "--out", str(out), "--quiet")
    result = json.loads((out / "result.json").read_text())
    assert proc.returncode == 2
    assert result["status"] == "diverged" and "loss is" in result["reason"]
    assert result["val_bpb"] is None


def test_eval_and_sample_read_a_finished_run(corpus, tmp_path):
    run(spec(corpus, budget=3), tmp_path, quiet=True)
    ev = trainer_cli("eval", str(tmp_path), "--split", "confirm", "--tokens", "1024")
    assert ev.returncode == 0, ev.stderr
    out = json.loads(ev.stdout)
    assert out["split"] == "confirm" and out["val_bpb"] > 0
    sample = trainer_cli("sample", str(tmp_path), "--prompt", "def ", "--tokens", "20")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("def ")


@pytest.mark.parametrize("args, message", [
    ([], "exactly one budget"),
    (["--steps", "2", "--budget-flops", "1e9"], "not allowed with"),
    (["--steps", "2", "--set", "softcapp=0"], "unknown config key 'softcapp'; valid keys"),
    (["--steps", "2", "--set", "n_head=3"], "divisible by n_head"),
    (["--steps", "2", "--data", "/nonexistent/corpus"], "/nonexistent/corpus"),
    (["--steps", "2", "--device", "cuda"], "--device cuda"),
    (["--budget-tokens", "3"], "smaller than one step"),
    # found before training, not after it (each of these once failed or passed only at the end)
    (["--budget-flops", "nan"], "--budget-flops must be a positive finite number, got nan"),
    (["--budget-seconds", "inf"], "--budget-seconds must be a positive finite number, got inf"),
    (["--steps", "-3"], "--steps must be a positive finite number, got -3"),
    (["--steps", "2", "--val-tokens", "3"], "--val-tokens 3 is less than one evaluation window"),
    (["--steps", "2", "--val-tokens", "0", "--eval-every", "1"], "--eval-every evaluates, and --val-tokens 0"),
    (["--steps", "2", "--snapshot-every", "-1"], "--snapshot-every must be 0 (off) or positive, got -1"),
    (["--steps", "2", "--confirm-tokens", "-4"], "--confirm-tokens -4 is less than one evaluation window"),
    (["--steps", "2", "--log-every", "-1"], "--log-every must be at least 1, got -1"),
    (["--steps", "2", "--eval-every", "-1"], "--eval-every must be 0 (off) or positive, got -1"),
    (["--steps", "2", "--save-every", "-2"], "--save-every must be 0 (off) or positive, got -2"),
    (["--steps", "2", "--set", "softcap=nan"], "softcap must be a finite number, got 'nan'"),  # trained as off
    (["--steps", "2", "--set", "matrix_lr=inf"], "matrix_lr must be a finite number, got 'inf'"),
])
def test_bad_input_is_one_line_and_writes_nothing(corpus, tmp_path, args, message):
    out = tmp_path / "out"
    base = ["train", "--out", str(out), "--quiet", "--set", "n_layer=1", "--set", "n_embd=32"]
    if "--data" not in args:
        base += ["--data", corpus]
    proc = trainer_cli(*base, *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("stream, message", [
    ("{", "stream.json: no row_tokens, the length of the train split's windows"),
    ('{"row_tokens": "65"}', "stream.json: row_tokens '65' does not cut the train split's 6500 tokens"),
    ('{"row_tokens": true}', "stream.json: row_tokens True does not cut"),
    ('{"row_tokens": 64}', "stream.json: row_tokens 64 does not cut the train split's 6500 tokens into whole windows"),
    ('{"row_tokens": 65}', "its train split is a stream of 65-token windows (stream.json), and sequence_len 32 takes 33"),
])
def test_a_stream_file_that_does_not_fit_is_one_line(corpus, tmp_path, stream, message):
    """A lab's run reads its windows from a folder the harness cut (org/streams.py: export_stream);
    by hand, a stream.json left in a folder of shards, or written wrong, says what is wrong with it."""
    from trainer.shards import read_llmc_shard, write_llmc_shard
    shards = tmp_path / "shards"
    assert trainer_cli("data", "--data", corpus, "--export-bin", str(shards)).returncode == 0
    train = np.array(read_llmc_shard(shards / "train_000000.bin")[:6500])
    write_llmc_shard(shards / "train_000000.bin", train)  # 100 windows of 65 tokens
    (shards / "stream.json").write_text(stream)
    proc = trainer_cli("train", "--data", str(shards), "--steps", "2", "--seq-len", "32", "--val-tokens", "256",
                       "--out", str(tmp_path / "out"), "--quiet", "--set", "n_layer=1", "--set", "n_embd=32")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], proc.stderr


def test_progress_says_it_resumed_shows_the_confirm_score_and_no_mfu_over_100(corpus, tmp_path, monkeypatch, capsys):
    """A peak measured while the machine was busy once made the MFU read 300%: it is measured
    again, and an MFU that still exceeds 100% is not shown."""
    from trainer import train
    peaks = iter([1e3, 1e4])                                  # FLOP/s: far below any real step
    monkeypatch.setattr(train, "measure_matmul_peak", lambda *a, **k: next(peaks))
    run(spec(corpus, budget=4, confirm_tokens=2048, save_every=2), tmp_path, quiet=False)
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("step ")]
    assert len(steps) == 4 and all("MFU n/a" in line for line in steps), err
    assert next(peaks, None) is None                         # measured once more, not every step
    final = err.strip().splitlines()[-1]
    assert final.startswith("completed: 4 steps") and "confirm_bpb " in final

    config = json.loads((tmp_path / "config.json").read_text())
    config["spec"]["budget"] = 6
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(train, "measure_matmul_peak", lambda *a, **k: 1e15)
    run(RunSpec(**config["spec"]), tmp_path, resume=True, quiet=False)
    err = capsys.readouterr().err
    assert "resumed from step 4 (" in err and "MFU n/a" not in err


def test_a_finished_run_is_never_overwritten_by_accident(corpus, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", corpus, "--steps", "1", "--batch-size", "2", "--val-tokens", "512", "--out", str(out),
            "--quiet", "--set", "n_layer=1", "--set", "n_embd=32"]
    assert trainer_cli(*args).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = trainer_cli(*args, "--seed", "1")
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert f"--out {out} already holds a run (result.json, checkpoint.npz, metrics.jsonl, config.json)" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    forced = trainer_cli(*args, "--seed", "1", "--force")
    assert forced.returncode == 0 and json.loads((out / "result.json").read_text())["seed"] == 1


def test_unwritable_out_is_one_line(corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = trainer_cli("train", "--data", corpus, "--steps", "1", "--out", str(blocker / "run"), "--quiet",
                       "--set", "n_layer=1", "--set", "n_embd=32")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "not writable" in proc.stderr


def test_a_slow_first_step_is_explained_once_and_left_out_of_the_budget(capsys):
    from trainer.train import Budget, Progress
    spec = RunSpec(preset="nanochat", overrides={"depth": 1}, budget_kind="steps", budget=3)
    log = Progress(False, Budget(spec, 1, 1), make_config("nanochat", depth=1), spec)
    capsys.readouterr()
    log.first_step(0.3)                      # a warm cache: nothing to say
    assert capsys.readouterr().err == ""
    log.first_step(7.2)                      # a fresh checkout compiling the CPU kernels
    err = capsys.readouterr().err
    assert err.startswith("first step took 7.2s, not counted in the budget") and "compiling" in err


def test_a_corrupt_run_is_named_as_such_and_left_as_it_is(corpus, tmp_path):
    out = tmp_path / "run"
    assert trainer_cli("train", "--data", corpus, "--steps", "2", "--batch-size", "2", "--val-tokens", "512",
                       "--out", str(out), "--quiet", "--set", "n_layer=1", "--set", "n_embd=32").returncode == 0
    checkpoint, config = out / "checkpoint.npz", out / "config.json"
    good = {p: p.read_bytes() for p in (checkpoint, config)}
    damages = {"truncated checkpoint": (checkpoint, good[checkpoint][:1000]), "garbage checkpoint": (checkpoint, b"junk\n"),
               "corrupt config": (config, b'{"spec": 5'), "foreign config": (config, b"[1, 2]")}
    for damage, (path, data) in damages.items():
        for p, content in good.items():
            p.write_bytes(content)
        path.write_bytes(data)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        for args in (["eval", str(out)], ["sample", str(out), "--tokens", "5"], ["train", "--resume", str(out), "--quiet"]):
            proc = trainer_cli(*args)
            assert proc.returncode == 1, (damage, args, proc.stderr)
            line, = proc.stderr.strip().splitlines()          # one line, no traceback
            assert line.startswith(f"error: {path}: not a ") and "corrupt" in line, (damage, line)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, damage
