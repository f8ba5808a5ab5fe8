"""
The runner's side of the harness's measurement: every completed run is measured again by
harness code, and that measurement, not the trainer's result.json, is the run's record.

    outcome = measure_run(job, env, timeout, cores, pools)  # {"measurement": Measurement} or {"invalid": "..."}
    problems = cross_check(result, outcome["measurement"])   # the trainer's figures (a Result) as a cross-check

measure_run starts org/evaluator.py in a fresh process (the base commit's trainer on its path,
caches of its own, bytecode from source only; see that file for what it measures), on its slot's
cores and, where boxes are made, in cgroups of its own in its slot's memory pool. The
trainer's own figures are kept in the ledger beside the record; where its FLOPs, steps,
evaluation code or parameters disagree with it the run is `invalid`, with both in the reason.
(Its val and confirm figures are on the runs' own dev text, not the lab's: kept, not compared.)
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import stat
import subprocess
import sys
import zipfile
from fnmatch import fnmatch
from pathlib import Path

from org import OrgError, model_worker, python_text, remove_tree
from org.bytecode import source_only
from org.cgroups import JOIN, box_cgroups, drop, existing_pool, members, oom_kills, thaw_left
from org.reaper import process_table, set_aside, with_descendants
from org.remote import keep_tail, no_follow
from org.ledger import FINISHED, budget_of
from org.program import Program
from org.sandbox import Limits
from org.slots import takes_snapshots
from org.streams import models_data, probe_seed, split_key_file
from trainer.record import Measurement, Result, read

# the trainer's val and confirm figures are on its dev text (the lab's val is hidden from runs):
# they are kept, not compared
EXACT = ("flops_per_token", "steps", "eval_fingerprint")
HARNESS_LOGS = "measure*.log"  # the harness's logs in a run's directory (this file's, remote.py's workers')
TRAINER_SAYS = ("completed", "diverged", "killed", "error")  # how a trainer's run ends (trainer/train.py)
MAX_RESULT_BYTES = 1 << 20  # a trainer's result.json (read_result)
# what a trainer's own clock may say it trained past a seconds budget (budget_problem), besides its
# last step: a stall in that step (a CI machine's one stalled step read 0.5 s budgets' baselines
# invalid). Absolute, as a stall is: a share of the budget would make minutes of a long run legal.
STALL_SECONDS = 0.2
MAX_RUN_PATH = 1024  # bytes of a path in a run's directory: what lies deeper goes (planted)
# what stays of a run once it is on record (leave_the_record): the first of its metrics, the last
# of its log, and a checkpoint no larger than its parameters and an optimizer's state for them
KEPT_METRICS_BYTES, KEPT_LOG_BYTES, CHECKPOINT_FACTOR = 16 << 20, 1 << 20, 4


class MeasureError(OrgError):
    """The harness could not measure (its own failure, not the run's): the run is `error`."""


def job_for(program, run: dict, run_dir: Path, base_code: Path, workers: dict | None,
            harness_cache: Path | None = None, data_dir: Path | None = None) -> dict:
    """What the evaluator needs: everything from the program and the ledger, nothing from the run's
    files but its checkpoint and its snapshots (the curve). `workers` for a code arm, whose forward pass runs in the experiment's
    snapshot: {"a": worker_command(...), "b": ...}, the first worker and the fresh one that checks
    it; None for a config arm. With the lab's `harness_cache`, the lab's own split (its key) and
    `data_dir`, what the program's runs read (runs_data: the experiment's model is built on that,
    as in its runs)."""
    (kind, value), data, train = budget_of(run) or (program.budget.per_run.kind, program.budget.per_run.value), \
        program.data, program.train
    return {"base_code": str(base_code), "run_dir": str(run_dir), "log_dir": str(run_dir),
            "preset": program.baseline.preset, "overrides": json.loads(run["overrides"]),
            "seed": run["seed"], "data": data.source, "tokenizer": data.tokenizer,
            "val_tokens": data.val_tokens, "batch_size": train.batch_size, "seq_len": train.seq_len,
            "snapshot_every": (train.eval_every or 0) if takes_snapshots(base_code) else None,  # (slots.train_command)
            "device": train.device, "dtype": train.dtype, "matmul": train.matmul,
            "budget_kind": kind, "budget": value,  # the run's: a multiple of the program's for a compute multiplier
            "setup_grace": program.budget.measure_grace_seconds,
            "workers": workers, "python_text": python_text_survey(workers),
            **({"split_key_file": str(split_key_file(harness_cache)), "runs_data": str(data_dir),
                "models_data": str(models_data(data_dir)),
                "train_probe_seed": probe_seed(harness_cache)} if harness_cache else {})}


def python_text_survey(workers: dict | None) -> dict | None:
    """Where the workers' boxes are a pystdlib program's, what they hide of this machine's Python
    text as the runner found it (python_text.survey), for the evaluator to take, not find again."""
    if not any(w["box"] and w["box"].get("sourceless_stdlib") for w in (workers or {}).values()):
        return None
    try:
        return python_text.survey()
    except Exception:  # (the evaluator's own walk then says why those boxes cannot be made)
        return None


def worker_command(code: Path, env: dict, box=None) -> dict:
    """How the evaluator starts the experiment's model worker: in `box` (org.sandbox) when given,
    made as it starts (remote.Worker): its cgroups, made now, would be swept as abandoned by the
    time a later worker starts, minutes into a measurement. It runs from its source on the command
    line: no box holds the harness's checkout (org/unseen.py's harness_text)."""
    argv = [sys.executable, "-I", "-B", "-c", worker_source(), str(code)]
    return {"code": str(code), "argv": argv, "env": {**env, **source_only()}, "box": box.spec() if box else None}


@functools.cache
def worker_source() -> str:
    """org/model_worker.py's text, which `python -c` runs as __main__ (sys.argv: ["-c", SNAPSHOT])."""
    return Path(model_worker.__file__).read_text()


def evaluator_env(cache: Path, slot_env: dict) -> dict:
    """Caches of the harness's own, so nothing a run wrote is ever loaded into the measuring process."""
    from org.lab import child_env
    return child_env({**slot_env, "NANOLAB_CACHE": str(cache / "data"), "NUMBA_CACHE_DIR": str(cache / "numba"),
                      **source_only()})


def evaluator_argv(run_dir: str) -> list[str]:
    """The evaluator's command line names its run (the job itself comes on stdin): a runner that
    dies leaves it measuring in a session of its own, and the next runner's recovery finds it
    by that (org/reaper.py) before it measures the run again beside it."""
    return [sys.executable, "-I", "-B", "-m", "org.evaluator", "--run", str(run_dir)]


def measure_run(job: dict, env: dict, timeout: float, cores: list[int] | None = None, pools: tuple | None = None) -> dict:
    """Run the evaluator; {"measurement": a Measurement} or {"invalid": reason}. MeasureError if
    the harness itself failed (its traceback is in <run_dir>/measure.log). `pools`: the slot's
    memory pools (org/cgroups.py), where the evaluator holds what it reads: a code arm's checkpoint
    may unpack to 8 GB, and outside every cgroup it took the machine's memory, whose OOM killer
    takes a box's process first (another slot's trainer, an agent's CLI)."""
    job["deadline_seconds"] = timeout + 5  # the evaluator's own limit, should the runner die first
    if pools:  # (and one that met it inside stopped() left its worker frozen: end_evaluator)
        thaw_left(members([pool]) if (pool := existing_pool(pools)) else set())
    log_path = Path(job["log_dir"]) / "measure.log"
    try:
        groups = box_cgroups(Limits(memory_pools=pools, cores=tuple(cores) if cores else None)) if pools else []
    except OrgError as e:  # (a runner that boxes its runs has made such groups already)
        raise MeasureError(f"the harness cannot place its evaluator: {e}") from None
    argv = evaluator_argv(job["run_dir"])
    try:
        log = open(log_path, "wb", opener=no_follow)
    except OSError as e:  # (planted() clears the harness's names; should something still stand there)
        raise MeasureError(f"the harness cannot write its log {log_path}: {e.strerror}") from None
    join = ["/bin/sh", "-c", JOIN, "nanolab-evaluator", *(str(g / "cgroup.procs") for g in groups), "--"] if groups else []
    with log:
        proc = subprocess.Popen(join + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                cwd=job["log_dir"], start_new_session=True,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
        try:
            out, _ = proc.communicate(json.dumps(job).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            end_evaluator(proc.pid)
            proc.communicate()
            drop(groups)
            why = ("the experiment's forward pass hung?" if job.get("workers") else  # (its own code, else the program's)
                   f"the program's own code: its model scored on 3 splits of up to data.val_tokens {job.get('val_tokens')} "
                   "tokens each takes longer here; lower data.val_tokens, or raise budget.run_timeout_seconds")
            return {"invalid": f"the measurement did not finish within {timeout:g}s ({why})", "timed_out": True}
        finally:
            end_evaluator(proc.pid)  # a worker that outlived the evaluator goes with it
    ran_out = proc.returncode and oom_kills(groups)
    drop(groups)  # (read: a sweep leaves a live harness's groups to it)
    if ran_out:
        return {"invalid": f"the measurement ran out of memory: its slot's share is {pools[-1][1] / 2**30:.1f} GB "
                           "(a checkpoint or forward pass that large cannot be measured here)"}
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


def keep_failed_logs(log_dir: Path, kept_root: Path, run_id: int) -> Path | None:
    """Move a failed measurement's logs (HARNESS_LOGS) from `log_dir` into kept_root/<run>-<n>/,
    their last KEPT_LOG_BYTES: the next attempt writes the same names, and planted() clears those
    names in a run's directory before a recovery measures it (there they might be the run's own).
    None where they cannot be (a full disk: one cause of a failed measurement), left in place."""
    try:
        taken = [int(p.name.rpartition("-")[2]) for p in kept_root.glob(f"{run_id}-*")] if kept_root.is_dir() else []
        kept = kept_root / f"{run_id}-{max(taken, default=0) + 1}"
        kept.mkdir(parents=True)
    except (OSError, ValueError):
        return None
    for log in log_dir.glob(HARNESS_LOGS):
        with contextlib.suppress(OSError):
            with open(log, "r+b", opener=no_follow) as f:  # (a link or a folder there: left to planted())
                keep_tail(f, KEPT_LOG_BYTES)
            os.replace(log, kept / log.name)
    return kept


def end_evaluator(pid: int):
    """Kill the evaluator (its process group: it and its workers' bwraps). Killed while it timed
    the base (org/remote.py), it left the experiment's worker frozen, which not even SIGKILL ends
    until thawed (cgroup v1): its box would stay, its memory held in the slot's pool for good."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGSTOP)  # (it starts and freezes nothing more)
        workers = with_descendants(process_table(), [pid])
        os.killpg(pid, signal.SIGKILL)
        thaw_left(workers)


def cross_check(result: Result, measurement: Measurement) -> list[str]:
    """Where the trainer's own figures disagree with the harness's record. The trainer must report
    what the harness measures: a different FLOP count per token, step count, evaluation code or
    parameter count, or a checkpoint of another step, means the experiment's code changed what it
    reports (a missing figure is a disagreement too). Its val and confirm figures are on its own
    dev text, kept and not compared."""
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
    return problems


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str) and len(value) > 16:
        return value[:12]
    return str(value)


# ----------------------------------------------------------------------------------------
# what a run left: read and checked before it is measured


def check_result(program: Program, run: dict, result: Result, fingerprints: dict | None,
                 data: str | None = None) -> tuple[str, str | None]:
    """(status, reason) for a finished trainer result. A completed run whose budget, seed,
    shapes, data (`data`: the lab's runs' folder; else the program's source) or evaluation differ
    from what the program fixes is 'invalid'. A lab's run evaluates nothing (slots.train_command):
    its val figures, if it wrote any, are nobody's."""
    if result.status != "completed":
        return (result.status if result.status in FINISHED else "error"), result.reason
    problems = [budget_problem(program, result, budget_of(run))]
    expected = {"seed": run["seed"], "batch_size": program.train.batch_size,
                "sequence_len": program.train.seq_len,
                "data": data or program.data.source, "tokenizer": "bytes" if data else program.data.tokenizer,
                "dtype": program.train.dtype, "matmul": program.train.matmul,
                **({} if data else {"val_tokens": program.data.val_tokens})}
    problems += [f"{k} is {getattr(result, k)!r}, the program fixes {v!r}"
                 for k, v in expected.items() if getattr(result, k) not in (None, v)]
    if fingerprints:
        problems += [f"{k} {str(getattr(result, k))[:12]} differs from the program's {str(v)[:12]}"
                     for k, v in fingerprints.items() if v and getattr(result, k) != v]
    if result.val_bpb is None and not data:
        problems.append("no val_bpb in result.json")
    problems = [p for p in problems if p]
    return ("invalid", "; ".join(problems)) if problems else ("completed", None)


def budget_problem(program: Program, result: Result, budget: tuple | None = None) -> str | None:
    """The result's spend must match the run's budget (the program's per-run budget unless the
    harness set a multiple of it) to within one step (a seconds budget: or STALL_SECONDS)."""
    (kind, value), stated = budget or (program.budget.per_run.kind, program.budget.per_run.value), result.budget
    if stated and (stated.kind != kind or stated.value != float(value)):
        return f"budget {stated.kind} {stated.value:g} is not the program's {kind} {value:g}"
    steps = result.steps or 0
    if steps < 1:
        return "no training steps"
    if kind == "steps":
        return None if steps == value else f"{steps} steps, the program fixes {value:g}"
    seconds = result.train_seconds or 0.0
    if kind == "seconds":  # (it stops after the step that reaches the budget: that step, or a busy machine's stall)
        return None if seconds - value <= max(seconds / steps, STALL_SECONDS) + 1e-6 else f"trained {seconds:.2f}s of {value:g}s"
    spent = getattr(result, kind) or 0
    if not (value - spent / steps < spent <= value * (1 + 1e-9)):
        return f"spent {spent:.4g} {kind}, the program's budget is {value:.4g}"
    return None


def planted(run_dir: Path) -> str | None:
    """Take a run's directory back from the run's code, before the harness opens anything there
    (result.json, the checkpoint; it writes its measure logs there):
    - what is not a plain file or folder (a symbolic link, a FIFO, a socket) is removed: a link
      would carry those reads and writes anywhere outside the box, a FIFO hang them. None when
      the directory holds plain files only; else the reason the run is invalid;
    - every file and folder gets its owner's permissions back: the box's user is the harness's,
      and a folder it made unreadable (chmod 0) would stop a harness that is not root;
    - whatever stands at the harness's log names (HARNESS_LOGS) goes: a folder there would stop
      its write, and with it the runner, at each restart;
    - what lies past MAX_RUN_PATH bytes of path goes too: os.walk raised RecursionError on 1100
      nested folders, and lstat ENAMETOOLONG on 17 of 255-byte names, at each restart again.
    Names are read with their bytes escaped (a FIFO named b"\\xff" made a reason SQLite refused)."""
    found = []
    if not run_dir.is_dir() or run_dir.is_symlink():
        return None
    owners(run_dir, 0o700)
    folders = [run_dir]
    while folders:  # a stack, not os.walk's recursion: a run may nest folders a thousand deep
        with os.scandir(folders.pop()) as entries:
            for entry in list(entries):
                path, mode = Path(entry.path), entry.stat(follow_symlinks=False).st_mode
                name = os.fsencode(path.relative_to(run_dir)).decode(errors="replace")
                if len(os.fsencode(path.relative_to(run_dir))) > MAX_RUN_PATH:  # its own path, and below it
                    found.append(f"{name[:60]}... (a path of over {MAX_RUN_PATH} bytes)")
                    remove_tree(path) if stat.S_ISDIR(mode) else path.unlink()
                elif stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                    owners(path, 0o700 if stat.S_ISDIR(mode) else 0o600)  # (a folder before it is listed)
                    folders += [path] if stat.S_ISDIR(mode) else []
                else:
                    link = os.fsencode(os.readlink(path)).decode(errors="replace") if stat.S_ISLNK(mode) else ""
                    found.append(f"{name} ({f'a link to {link}' if link else 'not a plain file'})")
                    path.unlink()
    for path in run_dir.glob(HARNESS_LOGS):  # links are gone: a file or a folder the run made
        remove_tree(path) if path.is_dir() else path.unlink()
    if not found:
        return None
    return (f"the run left what is not a plain file in its directory: {', '.join(found)[:300]}; the harness "
            "removed it and does not read that run (a run's directory holds plain files only)")


def leave_the_record(run_dir: Path, checkpoint: bool):
    """What stays of a run once the ledger holds its record: result.json and config.json (1 MB at
    most), its metrics (the first KEPT_METRICS_BYTES), its log's last KEPT_LOG_BYTES, the
    harness's logs and, where asked (a completed run's), its checkpoint, when it holds little
    more than the parameters and an optimizer's state for them (CHECKPOINT_FACTOR x the
    parameters' bytes). Everything else goes,
    its private kernel cache among it: a run's box may write 16 GB (Limits.disk_bytes), and a run
    that wrote them and failed at once left them for good, seconds of budget a run, until the
    disk was down to the agents' reserve (every CLI's port refused; every run that wrote, the
    baseline's too, was killed). Nothing of the run's runs now (reaped); planted() went first."""
    if not run_dir.is_dir() or run_dir.is_symlink():
        return
    kept = {"result.json", "config.json", "metrics.jsonl", "train.log"} | ({"checkpoint.npz"} if checkpoint else set())
    with os.scandir(run_dir) as entries:
        for entry in list(entries):
            if entry.is_dir(follow_symlinks=False):
                remove_tree(Path(entry.path), ignore_errors=True)
            elif not (entry.is_file(follow_symlinks=False) and (entry.name in kept or fnmatch(entry.name, HARNESS_LOGS))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    for name in ("result.json", "config.json"):  # (the trainer's: a checkpoint resumes from the two)
        with contextlib.suppress(OSError):
            if (run_dir / name).lstat().st_size > MAX_RESULT_BYTES:
                (run_dir / name).unlink()
    with contextlib.suppress(OSError), open(run_dir / "metrics.jsonl", "r+b", opener=no_follow) as f:
        if os.fstat(f.fileno()).st_size > KEPT_METRICS_BYTES:  # its first lines, whole
            f.truncate(f.read(KEPT_METRICS_BYTES).rfind(b"\n") + 1)
    with contextlib.suppress(OSError), open(run_dir / "train.log", "r+b", opener=no_follow) as f:
        keep_tail(f, KEPT_LOG_BYTES)
    if checkpoint and not checkpoint_is_its_tensors(run_dir / "checkpoint.npz"):
        (run_dir / "checkpoint.npz").unlink(missing_ok=True)


def tidy_runs(runs_dir: Path, runs: list[dict], say):
    """What a runner that died just after a run's record (or in put_aside, just after the rename)
    left of its runs: every finished run's directory and every attempt set aside comes down to
    its record (leave_the_record, which is safe twice). Else all a run wrote stayed for good.
    Folders of runs_dir only, by their ids; what it cannot tidy, it says (a runner still starts)."""
    finished = [r for r in runs if r["status"] not in ("queued", "running")
                and not (r["status"] == "completed" and r["measurement"] is None)]  # (remeasure reads its checkpoint)
    failed = []
    for folder, checkpoint in ([(runs_dir / str(r["id"]), r["status"] == "completed") for r in finished] +
                               [(aside, False) for aside in runs_dir.glob("*.attempt*")]):
        try:
            leave_the_record(folder, checkpoint)
        except OSError as e:
            failed.append(f"{folder.name} ({e.strerror})")
    if failed:
        say(f"could not tidy the directories of runs {', '.join(failed)[:300]}")


def put_aside(run_dir: Path):
    """An attempt that recorded nothing set aside (reaper.set_aside), its logs left there."""
    if aside := set_aside(run_dir):
        leave_the_record(aside, checkpoint=False)


def checkpoint_is_its_tensors(path: Path) -> bool:
    """The checkpoint holds little but its parameters (whose names and shapes the evaluator
    checked) and as much again CHECKPOINT_FACTOR - 1 times (an optimizer's moments): bytes past
    that, in members of other names or between them, are a run's files kept in its place."""
    try:
        with zipfile.ZipFile(path) as archive:
            params = sum(m.file_size for m in archive.infolist() if m.filename.startswith("param/"))
        return path.stat().st_size <= CHECKPOINT_FACTOR * params + (1 << 20)
    except (OSError, zipfile.BadZipFile):
        return False


def owners(path: Path, bits: int):
    mode = stat.S_IMODE(path.lstat().st_mode)
    if mode & bits != bits:
        os.chmod(path, mode | bits)


def read_result(run_dir: Path) -> Result | None:
    """The trainer's result.json as a record (trainer/record.py); None when there is none. One
    that does not fit the record reads as an invalid run that names the field."""
    try:
        with open(run_dir / "result.json", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_RESULT_BYTES:  # read in the runner's memory, which no box bounds
                return Result(status="invalid", reason=f"result.json holds {size >> 20} MB; a result "
                                                         f"is {MAX_RESULT_BYTES >> 20} MB at most")
            text = f.read().decode()
    except (OSError, UnicodeDecodeError):
        return None
    try:  # read() raises ValueError naming the field
        result = read(Result, text, "result.json")
    except ValueError as e:
        return Result(status="invalid", reason=str(e))
    if result.status not in TRAINER_SAYS:  # refused or invalid are the harness's words: said by a trainer, the
        return Result(status="error", reason=f"result.json says status {str(result.status)[:40]!r}, which "
                      "a trainer does not end with")  # seed left the pairs with no finding (check_dropped)
    return result
