"""
What runs read: the export of a program's data that its runs share, and each run's own stream of
train windows, cut by the lab's keys where no box sees them.

    data = runs_data(harness_cache, program.data, base_commit)  # the lab's train split, its dev as val
    stream = export_stream(program, run, data, harness_cache, own_code, pace)  # the windows it may take
    measurement = with_passes(harness_cache, program, run, measurement)  # did its steps go round again?

A run reads only its stream: the windows its budget pays for (stream_rows), in an order the lab's
secret key draws from its seed, so no run chooses its data and every arm's seed reads the same.
The lab's secrets (split_key_file, probe_seed: lab_secret) live beside the data cache, never in a
box. A code arm's windows are counted at its model as its code builds it before the run (the
runner's probe: org/evaluator.py), and overdrawn() says where its run built a model that took more
FLOPs a token than that, and so read windows it could pick among.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from org import OrgError, remove_tree, shown
from org.ledger import budget_of, loads
from org.program import Program
from trainer.record import Measurement

MODEL_DATA_WINDOWS = 4  # windows of seq_len + 1 tokens a split that a model worker reads (export_for_models)
OVERDRAWN = 2  # x the FLOPs a token its windows were counted at that a code arm's model may take (overdrawn)
MAX_STREAM_TOKENS = 1 << 29  # a run's train windows (export_stream), 1 GB: GPT-2 124M's 1e17 FLOPs take 134M


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


def stream_record(harness_cache: Path, program: str, run: dict) -> Path:
    """What was cut for the run (its stream.json: rows, and the FLOPs a token they were counted
    at), beside its folder: kept past the folder, until the run is on record (with_passes)."""
    return run_stream(harness_cache, program, run).with_suffix(".json")


def export_stream(program: Program, run: dict, runs_data: Path, harness_cache: Path, own_code: bool,
                  pace: float | None = None, model_fpt: float | None = None) -> Path:
    """What a run reads, cut from the runs' export (trainer/data.py reads it as a stream): the
    train windows its budget pays for, in the order it takes them, drawn by the lab's secret key
    from the run's seed, twice as many for code of its own (its FLOPs per token may be fewer than
    its config's: the harness counts them from its checkpoint), and of the dev halves only the
    windows a trainer's evaluation would score (eval_windows picks the same ones from the cut; a
    lab's runs evaluate nothing: slots.train_command).
    With the whole train split at hand, code could keep the seed for its init and fix its data
    order to a draw found best over exploratory arms: the order's part of a run's val_bpb holds
    across inits, so it gained on every seed, fresh ones too. Now no run chooses its windows; the
    same seed draws the same ones for every arm (paired, and a canary's re-run reproduces); and a
    table in the low bits of its weights counts only what its budget pays for. `pace`: the
    baseline's FLOPs a second (base_pace), which sizes a seconds budget's windows; `model_fpt`:
    the FLOPs a token of a code arm's model as its code built it before the run (evaluator.probe),
    which its windows are counted at instead of its config's."""
    out = run_stream(harness_cache, program.name, run)
    remove_tree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_stream(program, run, runs_data, harness_cache, own_code, tmp, pace, model_fpt)
    except BaseException:
        remove_tree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    shutil.copyfile(out / "stream.json", stream_record(harness_cache, program.name, run))
    return out


def with_passes(harness_cache: Path, program: Program, run: dict, measurement: Measurement | None) -> Measurement | None:
    """The measurement with the times the run's steps went through its stream (its stream_record's
    rows): past 1 it trained on windows again (a run far faster than the pace its windows were
    counted at, a budget past the train split), which a run counted right never does
    (confounds.check_repeats)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        rows = json.loads(stream_record(harness_cache, program.name, run).read_text())["rows"]
        if measurement and measurement.checkpoint_step is not None:  # (B windows a step: trainer/data.py)
            measurement = replace(measurement, stream_passes=round(measurement.checkpoint_step * program.train.batch_size / rows, 3))
    return measurement


def write_stream(program: Program, run: dict, runs_data: Path, harness_cache: Path, own_code: bool, tmp: Path,
                 pace: float | None, model_fpt: float | None = None):
    import hmac
    import numpy as np
    from trainer.data import eval_windows, load_dataset
    from trainer.shards import TOKENIZER_FILES, ShardWriter
    T, V = program.train.seq_len, program.data.val_tokens
    data = load_dataset(str(runs_data))
    fpt = model_fpt or counted_fpt(program, json.loads(run["overrides"]), data.vocab_size)
    rows = stream_rows(program, json.loads(run["overrides"]), budget_of(run), data, pace, fpt) * (2 if own_code else 1)
    if own_code and budget_kind(program, run) == "seconds" and not pace:
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
        if V < len(tokens) - 1:  # the windows an evaluation scores (eval_windows picks them again from the cut)
            windows[split] = (tokens, eval_windows(tokens, V, T))
        else:  # an evaluation scores about all of it: the whole half
            shutil.copyfile(runs_data / f"{split}_000000.bin", tmp / f"{split}_000000.bin")
    for split, (tokens, at) in windows.items():
        writer = ShardWriter(tmp / f"{split}_000000.bin")
        for a in range(0, len(at), 4096):  # 4096 rows of T + 1 tokens at a time: a stream can be GBs
            writer.write(np.asarray(tokens[at[a:a + 4096, None] + np.arange(T + 1)]).reshape(-1))
        writer.close()
    for name in TOKENIZER_FILES:
        if (runs_data / name).is_file():
            shutil.copyfile(runs_data / name, tmp / name)
    (tmp / "stream.json").write_text(json.dumps({"row_tokens": T + 1, "rows": rows, "flops_per_token": fpt,
                                                 "counted_at": "the model its code built before the run" if model_fpt else "its config"}))


def budget_kind(program: Program, run: dict) -> str:
    """The kind of budget a run trains to: its own (a compute multiplier's), else the program's."""
    return (budget_of(run) or (program.budget.per_run.kind,))[0]


def stream_rows(program: Program, overrides: dict, budget: tuple | None, data, pace: float | None = None,
                fpt: float | None = None) -> int:
    """Rows (windows) a run's budget pays for, as the harness's trainer counts steps (trainer/train.py:
    Budget) at `fpt` FLOPs a token (counted_fpt: stream_config's shape's, unless given). A seconds budget pays for what the baseline's `pace`
    (base_pace) trains in its seconds, twice over (that pace may be of a busier moment); without
    one, the whole train split's worth (capped by export_stream, as is a FLOP budget of a model
    so small that it would take more), which write_stream refuses code of an experiment's own:
    it could fix its data order there (experiments.waiting_for_pace holds it back while the
    baseline has a run to come)."""
    kind, value = budget or (program.budget.per_run.kind, program.budget.per_run.value)
    B, T = program.train.batch_size, program.train.seq_len
    flops_per_step = B * T * (fpt or counted_fpt(program, overrides, data.vocab_size))
    if kind == "seconds":
        return 2 * math.ceil(value * pace / flops_per_step) * B if pace else len(data.train) // (T + 1)
    per_step = {"steps": 1, "tokens": B * T}.get(kind) or flops_per_step
    return max(1, int(value // per_step)) * B


def counted_fpt(program: Program, overrides: dict, vocab_size: int) -> float:
    """FLOPs a token of the run's config (stream_config), as the harness's trainer counts them."""
    from trainer.flops import flops_per_token
    return flops_per_token(stream_config(program, overrides, vocab_size))


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


def overdrawn(harness_cache: Path, program: Program, run: dict, measurement: Measurement, runs_data: Path) -> list[str]:
    """Where a code arm's model took over OVERDRAWN x the FLOPs a token its windows were counted at
    (its stream_record: its model as its code built it before the run, else its config; its
    config's where a run that read a stream has no record left), under a FLOP or seconds budget:
    it read that many times the windows its steps take (twice again, as code of its own gets),
    and its code could pick among them. Code that built softcap's depth 2 in its run and depth 1
    before it (x5.7 the FLOPs a token) read x11, 12M tokens, near half the train split. `run`:
    its ledger row (its command says which data it read)."""
    kind = budget_kind(program, run)
    read = Path(data_given(run) or "").parts[-3:]  # (its stream's folder, wherever the lab is now)
    if kind not in ("flops", "seconds") or not measurement.flops_per_token or read != ("streams", program.name, str(run["id"])):
        return []  # (no stream: nothing to hold)
    try:
        cut = json.loads(stream_record(harness_cache, program.name, run).read_text())
        counted, at = float(cut["flops_per_token"]), str(cut["counted_at"])
    except (OSError, ValueError, KeyError, TypeError):  # (gone: a crash, an older nanolab's run)
        from trainer.data import load_dataset
        counted, at = counted_fpt(program, json.loads(run["overrides"]), load_dataset(str(runs_data)).vocab_size), "its config"
    ratio = measurement.flops_per_token / counted
    return [f"its model takes x{ratio:.1f} the FLOPs a token of {at} ({counted:,.0f}), which its windows were "
            f"counted at: it read x{2 * ratio:.0f} the windows its budget pays for, and could pick among them"] \
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


def base_modules(lab_root: Path, runs_dir: Path, code: Path, data: Path, env: dict, say) -> list[str] | None:
    """The stdlib modules the runs and workers of the base commit `code` load, as listed in a run's
    box of it (sourceless.run_modules): a lab's run and worker boxes hold no other module's
    bytecode (sourceless.runs_tree, built here). None where that cannot be said (said)."""
    from org.sandbox import end_box, run_box
    from org.sourceless import LOADED, run_modules, runs_tree

    def list_loaded() -> bytes:  # (in a folder of runs_dir's own, removed after, as the box's groups)
        runs_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".modules-", dir=runs_dir))
        proc = None
        try:
            box = run_box(lab_root, scratch, code, data, scratch / "kernels", gpu=False, cpu_seconds=300)
            proc = box.popen([sys.executable, "-c", LOADED], cwd=code, env={"PATH": env.get("PATH", ""), "PYTHONPATH": str(code)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                loaded, err = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            if proc.returncode != 0:
                raise ValueError((err.decode(errors="replace").strip().splitlines() or ["?"])[-1])
            return loaded
        finally:
            if proc is not None:
                proc.wait()
                end_box(proc)
            remove_tree(scratch, ignore_errors=True)
    try:
        modules = run_modules(code, list_loaded)
        runs_tree(modules)  # (once, here: not by each box as it starts)
        return modules
    except (OrgError, OSError, ValueError, subprocess.SubprocessError) as e:
        say(f"which stdlib modules the base's runs load could not be said ({shown(e)}): its boxes hold every module's bytecode")
        return None


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
