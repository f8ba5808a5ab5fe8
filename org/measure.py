"""
The runner's side of the harness's measurement: every completed run is measured again by
harness code, and that measurement, not the trainer's result.json, is the run's record.

    outcome = measure_run(job, env, timeout, pin)       # {"measurement": Measurement} or {"invalid": "..."}
    problems = cross_check(result, outcome["measurement"])   # the trainer's figures (a Result) as a cross-check

measure_run starts org/evaluator.py in a fresh process (the base commit's trainer on its path,
caches of its own, bytecode from source only; see that file for what it measures). The
trainer's own figures are kept in the ledger beside the record; where they disagree with it
beyond float tolerance the run is `invalid`, with both numbers in the reason.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from org import OrgError
from org.ledger import budget_of
from trainer.record import Measurement, Result, read

VALUE_TOLERANCE = 1e-4  # relative: the same code on the same checkpoint differs only in rounding
EXACT = ("flops_per_token", "steps", "eval_fingerprint", "data_fingerprint")
CLOSE = ("val_loss", "val_bpb", "confirm_loss", "confirm_bpb")


class MeasureError(OrgError):
    """The harness could not measure (its own failure, not the run's): the run is `error`."""


def job_for(program, run: dict, run_dir: Path, base_code: Path, worker: dict | None) -> dict:
    """What the evaluator needs: everything from the program and the ledger, nothing from the run's
    files but its checkpoint. `worker` (worker_command) for a code arm, whose forward pass runs in
    the experiment's snapshot; None for a config arm."""
    (kind, value), data, train = budget_of(run) or (program.budget.per_run.kind, program.budget.per_run.value), \
        program.data, program.train
    return {"base_code": str(base_code), "run_dir": str(run_dir), "log_dir": str(run_dir),
            "preset": program.baseline.preset, "overrides": json.loads(run["overrides"]),
            "seed": run["seed"], "data": data.source, "tokenizer": data.tokenizer,
            "val_tokens": data.val_tokens, "batch_size": train.batch_size, "seq_len": train.seq_len,
            "device": train.device, "dtype": train.dtype, "matmul": train.matmul,
            "budget_kind": kind, "budget": value,  # the run's: a multiple of the program's for a compute multiplier
            "worker": worker}


def worker_command(code: Path, env: dict, box=None) -> dict:
    """How the evaluator starts the experiment's model worker: in `box` (org.sandbox) when given."""
    argv = [sys.executable, "-I", "-B", "-m", "org.model_worker", str(code)]
    env = {**env, **source_only(code)}
    return {"code": str(code), "argv": box.wrap(argv, cwd=code, env=env) if box else argv, "env": env}


def source_only(code: Path) -> dict:
    """Bytecode from source only: whatever .pyc lies beside a snapshot's sources is never read
    (Python keeps its own under a prefix of ours instead)."""
    return {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(code.parent / ".pycache" / code.name)}


def evaluator_env(cache: Path, slot_env: dict) -> dict:
    """Caches of the harness's own, so nothing a run wrote is ever loaded into the measuring process."""
    from org.lab import child_env
    return child_env({**slot_env, "NANOLAB_CACHE": str(cache / "data"), "NUMBA_CACHE_DIR": str(cache / "numba"),
                      "PYTHONPYCACHEPREFIX": str(cache / "pycache"), "PYTHONDONTWRITEBYTECODE": "1"})


def measure_run(job: dict, env: dict, timeout: float, pin=None) -> dict:
    """Run the evaluator; {"measurement": a Measurement} or {"invalid": reason}. MeasureError if
    the harness itself failed (its traceback is in <run_dir>/measure.log)."""
    job["deadline_seconds"] = timeout + 5  # the evaluator's own limit, should the runner die first
    log_path = Path(job["log_dir"]) / "measure.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-m", "org.evaluator"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, env=env, cwd=job["log_dir"],
                                start_new_session=True, preexec_fn=pin)
        try:
            out, _ = proc.communicate(json.dumps(job).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            return {"invalid": f"the measurement did not finish within {timeout:g}s "
                               "(the experiment's forward pass hung?)"}
        finally:
            _kill_group(proc.pid)  # a worker that outlived the evaluator goes with it
    try:
        outcome = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise MeasureError(f"the harness's evaluator failed (exit {proc.returncode}); see {log_path}") from None
    if not isinstance(outcome, dict) or not ({"measurement", "invalid"} & set(outcome)):
        raise MeasureError(f"the harness's evaluator answered {str(outcome)[:100]}; see {log_path}")
    if "measurement" in outcome:
        try:
            outcome["measurement"] = read(Measurement, outcome["measurement"], "the harness's measurement")
        except ValueError as e:
            raise MeasureError(f"{e}; see {log_path}") from None
    return outcome


def _kill_group(pid: int):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def cross_check(result: Result, measurement: Measurement) -> list[str]:
    """Where the trainer's own figures disagree with the harness's record. The trainer must report
    what the harness measures: a different loss, split, FLOP count or step count means the
    experiment's code changed what it reports (a missing figure is a disagreement too)."""
    problems = []
    if measurement.checkpoint_step != measurement.steps:
        problems.append(f"the checkpoint is from step {measurement.checkpoint_step}, the program's "
                        f"budget allows {measurement.steps} at the FLOPs per token of its shapes")
    for key in EXACT:
        if getattr(result, key) != getattr(measurement, key):
            problems.append(f"the trainer reported {key} {_show(getattr(result, key))}, "
                            f"the harness measures {_show(getattr(measurement, key))}")
    for key in ("total", "matmul"):
        mine, theirs = getattr(measurement.params, key, None), getattr(result.params, key, None)
        if theirs != mine:
            problems.append(f"the trainer reported {theirs} {key} params, the checkpoint holds {mine}")
    for key in CLOSE:
        mine, theirs = getattr(measurement, key), getattr(result, key)
        if mine is None and theirs is None:
            continue
        if not _close(theirs, mine):
            problems.append(f"the trainer reported {key} {_show(theirs)}, the harness measures "
                            f"{_show(mine)} from its checkpoint")
    return problems


def _close(a, b) -> bool:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (a, b)):
        return False
    return abs(a - b) <= VALUE_TOLERANCE * max(1.0, abs(b))


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str) and len(value) > 16:
        return value[:12]
    return str(value)
