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
import hashlib
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
from fnmatch import fnmatch
from pathlib import Path

from org import OrgError, remove_tree
from org.bytecode import source_only
from org.cgroups import JOIN, box_cgroups, existing_pool, members, oom_kills, thaw_left
from org.reaper import process_table, set_aside, with_descendants
from org.remote import keep_tail, no_follow
from org.ledger import FINISHED, budget_of, loads
from org.program import Program
from org.sandbox import Limits
from trainer.record import Measurement, Result, read

# the trainer's val and confirm figures are on its dev text (the lab's val is hidden from runs):
# they are kept, not compared
EXACT = ("flops_per_token", "steps", "eval_fingerprint")
HARNESS_LOGS = "measure*.log"  # the harness's logs in a run's directory (this file's, remote.py's workers')
TRAINER_SAYS = ("completed", "diverged", "killed", "error")  # how a trainer's run ends (trainer/train.py)
MODEL_DATA_WINDOWS = 4  # windows of seq_len + 1 tokens a split that a model worker reads (export_for_models)
MAX_RESULT_BYTES = 1 << 20  # a trainer's result.json (read_result)
# what a trainer's own clock may say it trained past a seconds budget (budget_problem), besides its
# last step: a stall in that step (a CI machine's one stalled step read 0.5 s budgets' baselines
# invalid). Absolute, as a stall is: a share of the budget would make minutes of a long run legal.
STALL_SECONDS = 0.2
MAX_RUN_PATH = 1024  # bytes of a path in a run's directory: what lies deeper goes (planted)
OVERDRAWN = 2  # x the FLOPs a token of its config a code arm's model may take (overdrawn)
MAX_STREAM_TOKENS = 1 << 29  # a run's train windows (export_stream), 1 GB: GPT-2 124M's 1e17 FLOPs take 134M
# what stays of a run once it is on record (leave_the_record): the first of its metrics, the last
# of its log, and a checkpoint no larger than its parameters and an optimizer's state for them
KEPT_METRICS_BYTES, KEPT_LOG_BYTES, CHECKPOINT_FACTOR = 16 << 20, 1 << 20, 4


class MeasureError(OrgError):
    """The harness could not measure (its own failure, not the run's): the run is `error`."""


def job_for(program, run: dict, run_dir: Path, base_code: Path, workers: dict | None,
            harness_cache: Path | None = None, data_dir: Path | None = None) -> dict:
    """What the evaluator needs: everything from the program and the ledger, nothing from the run's
    files but its checkpoint. `workers` for a code arm, whose forward pass runs in the experiment's
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
            "device": train.device, "dtype": train.dtype, "matmul": train.matmul,
            "budget_kind": kind, "budget": value,  # the run's: a multiple of the program's for a compute multiplier
            "workers": workers,
            **({"split_key_file": str(split_key_file(harness_cache)), "runs_data": str(data_dir),
                "models_data": str(models_data(data_dir)),
                "train_probe_seed": probe_seed(harness_cache)} if harness_cache else {})}


def runs_data(harness_cache: Path, data, base_commit: str) -> Path:
    """What a program's runs read (trainer/data.py's export_runs): the lab's train split of its
    data, and its dev split as their val and confirm; the lab's val and confirm are in
    harness_cache/data, where no box sees them. A folder per data source, tokenizer and base
    commit (whose pipeline made it): two programs of a lab on other data never read, or
    overwrite, each other's."""
    name = json.dumps([data.source, data.tokenizer, base_commit])
    return harness_cache / "runs-data" / hashlib.sha256(name.encode()).hexdigest()[:16]


def models_data(runs_data: Path) -> Path:
    """What a model worker reads (export_for_models), beside the runs' export."""
    return runs_data.with_name(runs_data.name + "-models")


def export_for_models(runs_data: Path, seq_len: int) -> Path:
    """The runs' export cut to MODEL_DATA_WINDOWS windows a split, with its tokenizer: enough for an
    experiment's trainer to build its model as in its runs (its vocabulary, and its checks of the
    splits' lengths), too little to learn from. A worker's compute is no run's budget: with the
    runs' train split at hand, a forward pass built a trigram model of it in the worker and read
    val_bpb 2.77 against its run's 6.70 (tests/test_sandbox.py)."""
    from trainer.shards import SPLITS, TOKENIZER_FILES, read_llmc_shard, write_llmc_shard
    out, mark = models_data(runs_data), runs_data / "export.json"
    stamp = json.dumps([mark.read_text() if mark.is_file() else None, seq_len, MODEL_DATA_WINDOWS])
    if (out / "export.json").is_file() and (out / "export.json").read_text() == stamp:
        return out
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    for split in SPLITS:
        tokens = read_llmc_shard(runs_data / f"{split}_000000.bin")[:MODEL_DATA_WINDOWS * (seq_len + 1)]
        write_llmc_shard(tmp / f"{split}_000000.bin", tokens)
    for name in TOKENIZER_FILES:
        if (runs_data / name).is_file():
            shutil.copyfile(runs_data / name, tmp / name)
    (tmp / "export.json").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def run_stream(harness_cache: Path, program: str, run: dict) -> Path:
    """The folder of a run's own data (export_stream), removed once its trainer is done with it."""
    return harness_cache / "streams" / program / str(run["id"])


def export_stream(program: Program, run: dict, runs_data: Path, harness_cache: Path, own_code: bool,
                  pace: float | None = None) -> Path:
    """What a run reads, cut from the runs' export (trainer/data.py reads it as a stream): the
    train windows its budget pays for, in the order it takes them, drawn by the lab's secret key
    from the run's seed, twice as many for code of its own (its FLOPs per token may be fewer than
    its config's: the harness counts them from its checkpoint), and of the dev halves only the
    windows its curves score (eval_windows picks the same ones from the cut).
    With the whole train split at hand, code could keep the seed for its init and fix its data
    order to a draw found best over exploratory arms: the order's part of a run's val_bpb holds
    across inits, so it gained on every seed, fresh ones too. Now no run chooses its windows; the
    same seed draws the same ones for every arm (paired, and a canary's re-run reproduces); and a
    table in the low bits of its weights counts only what its budget pays for. `pace`: the
    baseline's FLOPs a second (base_pace), which sizes a seconds budget's windows."""
    out = run_stream(harness_cache, program.name, run)
    remove_tree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_stream(program, run, runs_data, harness_cache, own_code, tmp, pace)
    except BaseException:
        remove_tree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    return out


def write_stream(program: Program, run: dict, runs_data: Path, harness_cache: Path, own_code: bool, tmp: Path,
                 pace: float | None):
    import hmac
    import numpy as np
    from trainer.data import eval_windows, load_dataset
    from trainer.shards import TOKENIZER_FILES, ShardWriter
    T, V = program.train.seq_len, program.data.val_tokens
    data = load_dataset(str(runs_data))
    rows = stream_rows(program, json.loads(run["overrides"]), budget_of(run), data, pace) * (2 if own_code else 1)
    if own_code and (budget_of(run) or (program.budget.per_run.kind,))[0] == "seconds" and not pace:
        raise ValueError("under a seconds budget the baseline's pace counts its windows, and the baseline has no "
                         "completed run (its code could pick among the whole split's)")
    rows = min(rows, len(data.train) // (T + 1), MAX_STREAM_TOKENS // (T + 1))  # (a tiny model's many steps)
    rows = max(rows, 2)  # (the trainer wants more than one window's tokens in a train split)
    if shutil.disk_usage(tmp).free < 4 * rows * (T + 1):  # (uint16 tokens, and room to spare)
        raise OSError(f"{rows * (T + 1) / 1e6:.0f}M tokens of windows, and {shutil.disk_usage(tmp).free / 1e9:.1f} "
                      f"GB free at {tmp.parent}")
    key = lab_secret(harness_cache, "stream-key", os.urandom(32)).read_bytes()
    draw = np.random.default_rng(list(hmac.digest(key, f"train windows, seed {run['seed']}".encode(), "sha256")))
    starts = draw.integers(0, len(data.train) - T, size=rows)
    windows = {"train": (data.train, starts)}
    for split in ("val", "confirm"):
        tokens = getattr(data, split)
        if V < len(tokens) - 1:  # the windows its curves score (eval_windows picks them again from the cut)
            windows[split] = (tokens, eval_windows(tokens, V, T))
        else:  # its curves score about all of it: the whole half
            shutil.copyfile(runs_data / f"{split}_000000.bin", tmp / f"{split}_000000.bin")
    for split, (tokens, at) in windows.items():
        writer = ShardWriter(tmp / f"{split}_000000.bin")
        for a in range(0, len(at), 4096):  # 4096 rows of T + 1 tokens at a time: a stream can be GBs
            writer.write(np.asarray(tokens[at[a:a + 4096, None] + np.arange(T + 1)]).reshape(-1))
        writer.close()
    for name in TOKENIZER_FILES:
        if (runs_data / name).is_file():
            shutil.copyfile(runs_data / name, tmp / name)
    (tmp / "stream.json").write_text(json.dumps({"row_tokens": T + 1, "rows": rows}))


def stream_rows(program: Program, overrides: dict, budget: tuple | None, data, pace: float | None = None) -> int:
    """Rows (windows) a run's budget pays for, as the harness's trainer counts steps (trainer/train.py:
    Budget) at stream_config's shape. A seconds budget pays for what the baseline's `pace`
    (base_pace) trains in its seconds, twice over (that pace may be of a busier moment); without
    one, the whole train split's worth (capped by export_stream, as is a FLOP budget of a model
    so small that it would take more), which write_stream refuses code of an experiment's own:
    it could fix its data order there (experiments.waiting_for_pace holds it back while the
    baseline has a run to come)."""
    from trainer.flops import flops_per_token
    kind, value = budget or (program.budget.per_run.kind, program.budget.per_run.value)
    B, T = program.train.batch_size, program.train.seq_len
    flops_per_step = B * T * flops_per_token(stream_config(program, overrides, data.vocab_size))
    if kind == "seconds":
        return 2 * math.ceil(value * pace / flops_per_step) * B if pace else len(data.train) // (T + 1)
    per_step = {"steps": 1, "tokens": B * T}.get(kind) or flops_per_step
    return max(1, int(value // per_step)) * B


def stream_config(program: Program, overrides: dict, vocab_size: int):
    """The model shape a run's windows are counted at: its config's, less a key only the
    experiment's own code knows (as the harness's evaluator builds it: evaluator.make_base_config),
    or the baseline's where a value the base cannot take is left (overdrawn checks it against the
    model)."""
    from org.evaluator import make_base_config
    job = lambda keys: {"preset": program.baseline.preset, "overrides": keys, "seq_len": program.train.seq_len}
    try:
        return make_base_config(job(overrides), vocab_size)
    except (ValueError, TypeError):
        return make_base_config(job(program.baseline.overrides), vocab_size)


def overdrawn(program: Program, run: dict, measurement: Measurement, runs_data: Path | None, base_code: Path) -> list[str]:
    """Where code of an experiment's own (runs_data given) built a model of over OVERDRAWN x the
    FLOPs a token of the config its windows were counted at, under a FLOP or seconds budget: it
    read that many times the windows its steps take (twice again, as its own code's are), and its
    code could pick among them: a config saying depth 1 with code that builds softcap's depth 2
    (x5.7 the FLOPs a token) read x11, 12M tokens, near half the train split."""
    kind = (budget_of(run) or (program.budget.per_run.kind,))[0]
    if runs_data is None or kind not in ("flops", "seconds") or not measurement.flops_per_token \
            or not reads_streams(base_code):
        return []
    from trainer.data import load_dataset
    from trainer.flops import flops_per_token
    counted = flops_per_token(stream_config(program, json.loads(run["overrides"]), load_dataset(str(runs_data)).vocab_size))
    ratio = measurement.flops_per_token / counted
    return [f"its model takes x{ratio:.1f} the FLOPs a token of its config ({counted:,}), which its windows were counted "
            f"at: it read x{2 * ratio:.0f} the windows its budget pays for, and could pick among them (a shape its "
            f"code changes belongs in its config; a table of its own counts as a matrix: org/recount.py)"] \
        if ratio > OVERDRAWN else []


ANY_KIND = "*"


def base_pace(baseline_runs: list[dict], kind: str | None = ANY_KIND) -> float | None:
    """FLOPs a second of training in the baseline's completed runs on a `kind` of device (the
    program's own code, so its clock is trusted), the fastest; None before one has completed."""
    return max((r["flops"] / r["train_seconds"] for r in baseline_runs if r["status"] == "completed" and r["flops"]
                and r["train_seconds"] and kind in (ANY_KIND, r.get("kind"))), default=None)


def data_given(run: dict) -> str | None:
    """The --data a run's trainer was given, from the command line the ledger keeps (mark_started)."""
    command = loads(run.get("command")) or []
    return command[command.index("--data") + 1] if "--data" in command[:-1] else None


def reads_streams(base_code: Path) -> bool:
    """Whether the base commit's trainer takes a stream's rows in order (trainer/data.py:
    train_batch). An older one draws its windows at random from whatever it reads, across the
    rows of a stream: its program's runs read the runs' export, as they did."""
    with contextlib.suppress(OSError):
        return "def train_batch(" in (base_code / "trainer" / "data.py").read_text()
    return False


def split_key_file(harness_cache: Path) -> Path:
    """The key of the lab's own split (trainer/data.py): which documents are its val and confirm.
    Every box can read the data's source; without the key none can tell them from train."""
    return lab_secret(harness_cache, "split-key", os.urandom(32))


def probe_seed(harness_cache: Path) -> int:
    """The seed of the train-split windows every measurement also scores (evaluator.
    unforeseen_windows), made once per lab from the OS's randomness and kept where no box sees
    it (beside the data cache, not in it): a run that knew them could learn them too."""
    return int(lab_secret(harness_cache, "train-probe-seed",
                          str(int.from_bytes(os.urandom(8), "little")).encode()).read_text())


def lab_secret(harness_cache: Path, name: str, content: bytes) -> Path:
    """harness_cache/name, written with `content` by the first to ask (whole: a link is atomic)."""
    path = harness_cache / name
    if not path.exists():
        harness_cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(content)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another slot made it first: theirs it is
            pass
        finally:
            tmp.unlink()
    return path


def worker_command(code: Path, env: dict, box=None) -> dict:
    """How the evaluator starts the experiment's model worker: in `box` (org.sandbox) when given,
    made as it starts (remote.Worker): its cgroups, made now, would be swept as abandoned by the
    time a later worker starts, minutes into a measurement."""
    argv = [sys.executable, "-I", "-B", "-m", "org.model_worker", str(code)]
    return {"code": str(code), "argv": argv, "env": {**env, **source_only()}, "box": box.spec() if box else None}


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
            return {"invalid": f"the measurement did not finish within {timeout:g}s "
                               "(the experiment's forward pass hung?)"}
        finally:
            end_evaluator(proc.pid)  # a worker that outlived the evaluator goes with it
    if proc.returncode and oom_kills(groups):
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
    from what the program fixes is 'invalid'."""
    if result.status != "completed":
        return (result.status if result.status in FINISHED else "error"), result.reason
    problems = [budget_problem(program, result, budget_of(run))]
    expected = {"seed": run["seed"], "batch_size": program.train.batch_size,
                "sequence_len": program.train.seq_len, "val_tokens": program.data.val_tokens,
                "data": data or program.data.source, "tokenizer": "bytes" if data else program.data.tokenizer,
                "dtype": program.train.dtype, "matmul": program.train.matmul}
    problems += [f"{k} is {getattr(result, k)!r}, the program fixes {v!r}"
                 for k, v in expected.items() if getattr(result, k) not in (None, v)]
    if fingerprints:
        problems += [f"{k} {str(getattr(result, k))[:12]} differs from the program's {str(v)[:12]}"
                     for k, v in fingerprints.items() if v and getattr(result, k) != v]
    if result.val_bpb is None:
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
