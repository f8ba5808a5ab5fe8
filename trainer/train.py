"""
One training run, as the org runs it and as a person runs it by hand:

    python -m trainer train --preset nanochat --set softcap=0 --budget-flops 3e12 --seed 1 --out runs/x

Exactly one budget fixes the run's horizon up front (FLOPs, tokens or steps) or by the clock
(seconds), so schedules know where they are and arms stay comparable. The run leaves the run
contract in --out: config.json, metrics.jsonl and result.json, each written atomically, plus a
checkpoint that `--resume` continues from bit for bit.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from trainer import __version__
from trainer.checkpoint import (SNAPSHOTS, atomic_open, load_checkpoint, save_checkpoint, save_snapshot,
                                thin_snapshots)
from trainer.config import BUDGET_FLAGS, make_config
from trainer.data import STREAM, load_dataset, train_batch
from trainer.eval import eval_fingerprint, evaluate, tokens_fingerprint
from trainer.flops import flops_per_token, matmul_params, total_params
from trainer.model import GPT
from trainer.optim import make_optimizer
from trainer.record import Budget as RunBudget, Params, Result

EXIT_CODES = {"completed": 0, "error": 1, "diverged": 2, "killed": 3}


@dataclass
class RunSpec:
    """Everything that defines a run; saved in config.json so --resume needs nothing else."""
    preset: str = "nanochat"
    overrides: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    matmul: str = "fp32"                # fp32 | tf32 | bf16: what a matmul input is rounded to
    batch_size: int = 8
    data: str = "pystdlib"
    tokenizer: str = "bytes"
    budget_kind: str = "steps"          # flops | seconds | tokens | steps
    budget: float = 10
    val_tokens: int = 65536             # 0 = no evaluation: the harness measures a lab's runs itself
    confirm_tokens: int = 0             # also evaluate the held-out confirm split at the end
    eval_every: int = 0                 # 0 = only at the end
    snapshot_every: int = 0             # keep the parameters every N steps (snapshots/): the harness's curve
    log_every: int = 10
    save_every: int = 0                 # 0 = only the final checkpoint
    save_final: bool = True


class Budget:
    """Turns a budget into a horizon: a fixed step count, or a deadline on the training clock."""

    def __init__(self, spec: RunSpec, flops_per_step: int, tokens_per_step: int):
        kind, value = spec.budget_kind, spec.budget
        self.kind, self.value, self.seconds = kind, value, None
        if kind == "flops":
            self.steps = int(value // flops_per_step)
        elif kind == "tokens":
            self.steps = int(value // tokens_per_step)
        elif kind == "steps":
            self.steps = int(value)
        elif kind == "seconds":
            self.steps, self.seconds = None, float(value)
        else:
            raise ValueError(f"unknown budget kind {kind!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"{BUDGET_FLAGS[kind]} {value:g} is smaller than one step "
                             f"({flops_per_step:.3g} FLOPs, {tokens_per_step} tokens per step)")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"--budget-seconds must be positive, got {value:g}")

    def progress(self, step: int, elapsed: float) -> float:
        """Fraction of the run done: the schedules' clock."""
        return step / self.steps if self.steps is not None else min(elapsed / self.seconds, 1.0)

    def done(self, step: int, elapsed: float) -> bool:
        return step >= self.steps if self.steps is not None else elapsed >= self.seconds


def lr_multiplier(cfg, progress: float) -> float:
    """Linear warmup, constant, linear warmdown to final_lr_frac (fractions of the run)."""
    if cfg.warmup_frac > 0 and progress < cfg.warmup_frac:
        return (progress + 1e-9) / cfg.warmup_frac
    if cfg.warmdown_frac > 0 and progress > 1 - cfg.warmdown_frac:
        into = (progress - (1 - cfg.warmdown_frac)) / cfg.warmdown_frac
        return 1.0 - into * (1.0 - cfg.final_lr_frac)
    return 1.0


class Terminated(Exception):
    pass


def prepare(spec: RunSpec, out: Path | None):
    """Validate everything and build data, model and optimizer; create nothing on bad input."""
    data = load_dataset(spec.data, spec.tokenizer)
    overrides = dict(spec.overrides)
    overrides.setdefault("vocab_size", data.vocab_size)
    cfg = make_config(spec.preset, **overrides)
    if cfg.vocab_size < data.vocab_size:
        raise ValueError(f"vocab_size {cfg.vocab_size} is smaller than the data's vocabulary {data.vocab_size}")
    T = cfg.sequence_len
    check_counts(spec, T)
    if len(data.train) <= T + 1:
        raise ValueError(f"the train split has {len(data.train)} tokens, fewer than one sequence of {T + 1}")
    if data.rows is not None and data.rows != T + 1:
        raise ValueError(f"{spec.data}: its train split is a stream of {data.rows}-token windows ({STREAM}), "
                         f"and sequence_len {T} takes {T + 1}")
    for split in ("val", "confirm")[:bool(spec.val_tokens) + bool(spec.confirm_tokens)]:
        if len(getattr(data, split)) <= T:  # evaluated after training: refuse now, not then
            raise ValueError(f"the {split} split has {len(getattr(data, split))} tokens, fewer than one "
                             f"evaluation window of {T + 1}")
    fpt = flops_per_token(cfg)
    budget = Budget(spec, fpt * spec.batch_size * T, spec.batch_size * T)
    model = GPT(cfg, seed=spec.seed, dtype=spec.dtype, device=spec.device, matmul=spec.matmul)
    if out is not None:
        check_writable(out)
    return data, cfg, model, make_optimizer(model), budget


def check_counts(spec: RunSpec, T: int):
    """Every number of a run checked before it trains: a bad one found after training loses the run."""
    flag = BUDGET_FLAGS.get(spec.budget_kind)
    if flag is None:
        raise ValueError(f"unknown budget kind {spec.budget_kind!r}; expected one of {', '.join(BUDGET_FLAGS)}")
    if isinstance(spec.budget, bool) or not isinstance(spec.budget, (int, float)) or not math.isfinite(spec.budget) \
            or spec.budget <= 0:
        raise ValueError(f"{flag} must be a positive finite number, got {spec.budget}")
    if spec.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {spec.batch_size}")
    if spec.val_tokens and spec.val_tokens < T or spec.val_tokens < 0:
        raise ValueError(f"--val-tokens {spec.val_tokens} is less than one evaluation window (sequence_len {T}); "
                         "0 turns evaluation off")
    if not spec.val_tokens and (spec.eval_every or spec.confirm_tokens):
        raise ValueError(f"--{'eval-every' if spec.eval_every else 'confirm-tokens'} evaluates, and --val-tokens 0 "
                         "turns evaluation off")
    if spec.confirm_tokens and spec.confirm_tokens < T:
        raise ValueError(f"--confirm-tokens {spec.confirm_tokens} is less than one evaluation window "
                         f"(sequence_len {T}); 0 turns the confirm split off")
    if spec.log_every < 1:
        raise ValueError(f"--log-every must be at least 1, got {spec.log_every}")
    for flag, value in (("--eval-every", spec.eval_every), ("--save-every", spec.save_every),
                        ("--snapshot-every", spec.snapshot_every), ("--confirm-tokens", spec.confirm_tokens)):
        if value < 0:
            raise ValueError(f"{flag} must be 0 (off) or positive, got {value}")


def check_writable(out: Path):
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out}: not writable ({e.strerror})") from None


def run(spec: RunSpec, out: Path, resume: bool = False, quiet: bool = False) -> dict:
    """Train to the budget; return (and write) result.json's dict."""
    # first: a SIGTERM while the data loads is kept for the loop (in a box the trainer is PID 1,
    # and PID 1 ignores a signal it has no handler for: the runner's SIGKILL came 10 s later)
    stop = install_sigterm()
    try:
        data, cfg, model, opt, budget = prepare(spec, out)
    except BaseException:
        stop.restore()
        raise
    step, elapsed = 0, 0.0
    if resume:
        step, elapsed = restore(out, model, opt)
    else:
        for stale in ("result.json", "metrics.jsonl", "checkpoint.npz"):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / SNAPSHOTS, ignore_errors=True)
    write_json(out / "config.json", {"spec": spec.__dict__, "config": cfg.to_dict(),
                                     "flops_per_token": flops_per_token(cfg)})
    metrics = MetricsLog(out / "metrics.jsonl", keep_until=step if resume else -1)
    log = Progress(quiet, budget, cfg, spec)
    if resume:
        log.resumed(step, elapsed)
    B, T = spec.batch_size, cfg.sequence_len
    fpt = flops_per_token(cfg)
    status, reason, warmup_seconds = "completed", None, 0.0
    snapshot_every = spec.snapshot_every and thin_snapshots(out / SNAPSHOTS, spec.snapshot_every)  # (a resume's)
    try:
        while not budget.done(step, elapsed):
            if stop.requested:
                raise Terminated()
            t0 = time.perf_counter()
            lr_mult = lr_multiplier(cfg, budget.progress(step, elapsed))
            x, y = train_batch(data, B, T, spec.seed, step)
            loss = model.forward(x, y)
            if not math.isfinite(loss):
                status, reason = "diverged", f"loss is {loss} at step {step}"
                break
            model.backward()
            opt.step(lr_mult=lr_mult)
            dt = time.perf_counter() - t0
            if step == 0 and not resume:  # the first step pays for allocation, BLAS spin-up
                warmup_seconds = dt       # and, in a fresh checkout, compiling the CPU kernels
                log.first_step(dt)
            else:
                elapsed += dt
            step += 1
            record = {"step": step, "tokens": step * B * T, "flops": step * B * T * fpt,
                      "elapsed_s": round(elapsed, 4), "train_loss": loss, "lr": lr_mult}
            if step % spec.log_every == 0 or budget.done(step, elapsed):
                metrics.write(record)
                log.step(record, dt)
            if spec.eval_every and step % spec.eval_every == 0 and not budget.done(step, elapsed):
                ev = evaluate(model, data.val, data.token_bytes, spec.val_tokens, B, T)
                metrics.write({"step": step, "tokens": step * B * T, **ev})
            if spec.save_every and step % spec.save_every == 0:
                save_checkpoint(out / "checkpoint.npz", model, opt, step, {"elapsed_s": elapsed})
            if snapshot_every and step % snapshot_every == 0 and not budget.done(step, elapsed):
                save_snapshot(out / SNAPSHOTS / f"step-{step:08d}.npz", model, step)
                snapshot_every = thin_snapshots(out / SNAPSHOTS, snapshot_every)
    except Terminated:  # keep the work: a resume continues from exactly this step
        status, reason = "killed", f"SIGTERM at step {step}"
        if spec.save_every or spec.save_final:
            save_checkpoint(out / "checkpoint.npz", model, opt, step, {"elapsed_s": elapsed})
    finally:
        log.close()
    result = base_result(spec, cfg, data, step, elapsed, warmup_seconds, status, reason)
    if status == "completed" and spec.val_tokens:
        ev = evaluate(model, data.val, data.token_bytes, spec.val_tokens, B, T)
        metrics.write({"step": step, "tokens": step * B * T, **ev})
        result = replace(result, val_loss=ev["val_loss"], val_bpb=ev["val_bpb"], eval_tokens=ev["eval_tokens"])
        if spec.confirm_tokens:
            cf = evaluate(model, data.confirm, data.token_bytes, spec.confirm_tokens, B, T)
            result = replace(result, confirm_loss=cf["val_loss"], confirm_bpb=cf["val_bpb"])
    if status == "completed" and spec.save_final:
        save_checkpoint(out / "checkpoint.npz", model, opt, step, {"elapsed_s": elapsed})
    metrics.close()
    stop.restore()
    written = asdict(result)  # trainer/record.py: the shape the runner reads back
    write_json(out / "result.json", written)
    log.final(written)
    return written


def restore(out: Path, model, opt) -> tuple[int, float]:
    path = out / "checkpoint.npz"
    if not path.exists():
        raise ValueError(f"--resume {out}: no checkpoint.npz to resume from")
    params, opt_state, meta = load_checkpoint(path)
    model.load_numpy(params)
    opt.load_state_dict(opt_state)
    return int(meta["step"]), float(meta.get("elapsed_s", 0.0))


def base_result(spec, cfg, data, step, elapsed, warmup_seconds, status, reason) -> Result:
    B, T = spec.batch_size, cfg.sequence_len
    fpt = flops_per_token(cfg)
    commit, dirty = git_state()
    return Result(
        status=status, reason=reason,
        steps=step, tokens=step * B * T, flops=step * B * T * fpt, flops_per_token=fpt,
        params=Params(total=total_params(cfg), matmul=matmul_params(cfg)),
        budget=RunBudget(kind=spec.budget_kind, value=spec.budget),
        train_seconds=round(elapsed, 4), warmup_seconds=round(warmup_seconds, 4),
        tokens_per_second=round(step * B * T / elapsed, 2) if elapsed > 0 else None,
        device=device_name(spec.device), dtype=spec.dtype, matmul=spec.matmul, seed=spec.seed,
        batch_size=B, sequence_len=T,
        git_commit=commit, git_dirty=dirty,
        eval_fingerprint=eval_fingerprint(),
        data_fingerprint=tokens_fingerprint(data.val, spec.val_tokens, T) if spec.val_tokens else None,
        val_tokens=spec.val_tokens, data=spec.data, tokenizer=spec.tokenizer,
        trainer_version=__version__,
    )


def git_state() -> tuple[str | None, bool | None]:
    """The commit the trainer's code came from: the runner's word for snapshots without .git."""
    if os.environ.get("NANOLAB_GIT_COMMIT"):
        return os.environ["NANOLAB_GIT_COMMIT"], False
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here.parent,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return commit, dirty if commit else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def device_name(device: str) -> str:
    if device == "cuda":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return f"cuda:{props['name'].decode()}"
    import platform
    return f"cpu:{platform.machine()}x{os.cpu_count()}"


def write_json(path: Path, obj) -> None:
    with atomic_open(path) as f:
        f.write((json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


class MetricsLog:
    """metrics.jsonl, one whole line per write; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, keep_until: int):
        kept = []
        if keep_until >= 0 and path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if rec.get("step", 0) <= keep_until:
                    kept.append(line)
        with atomic_open(path) as f:
            f.write("".join(k + "\n" for k in kept).encode())
        self.f = open(path, "a")

    def write(self, record: dict):
        self.f.write(json.dumps(record, default=_jsonable) + "\n")
        self.f.flush()

    def close(self):
        self.f.close()


class SigtermFlag:
    requested = False
    previous = None  # the handler to put back when the run is over

    def restore(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def install_sigterm() -> SigtermFlag:
    """SIGTERM ends the run after the current step, with a valid result.json saying 'killed'."""
    flag = SigtermFlag()

    def handler(signum, frame):
        flag.requested = True
    try:
        flag.previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a notebook helper thread)
        pass
    flag.requested = bool(getattr(flag.previous, "requested", False))  # one while importing (__main__.py)
    return flag

# ----------------------------------------------------------------------------------------
# progress: a line every --log-every steps; a bar too when stderr is a terminal


class Progress:
    def __init__(self, quiet: bool, budget: Budget, cfg, spec: RunSpec):
        self.quiet, self.budget, self.spec = quiet, budget, spec
        self.bar, self.remeasured = None, False
        if quiet:
            return
        self.peak = measure_matmul_peak(spec.device, spec.dtype, precision=spec.matmul)
        self.fpt = flops_per_token(cfg)
        horizon = f"{budget.steps} steps" if budget.steps else f"{budget.seconds:g} s"
        print(f"training {spec.preset} ({total_params(cfg):,} params, {self.fpt:.3g} FLOPs/token "
              f"= 6*N_matmul + 12*L*C*T) on {spec.device}/{spec.dtype}/{spec.matmul} matmuls, "
              f"budget {budget.kind} {budget.value:g} -> {horizon}; matmul peak {self.peak / 1e9:.0f} GFLOP/s",
              file=sys.stderr)
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeRemainingColumn
            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                           TimeRemainingColumn(), transient=True)
            self.task = self.bar.add_task("train", total=1000)
            self.bar.start()

    def resumed(self, step: int, elapsed: float):
        if not self.quiet:
            print(f"resumed from step {step} ({elapsed:.1f}s of training already done)", file=sys.stderr)

    def first_step(self, dt: float):
        if not self.quiet and dt > 2.0:
            print(f"first step took {dt:.1f}s, not counted in the budget (one-time setup; in a fresh "
                  "checkout mostly compiling the CPU kernels, cached after)", file=sys.stderr)

    def step(self, rec: dict, dt: float):
        if self.quiet:
            return
        tok_s = rec["tokens"] / rec["step"] / max(dt, 1e-9)  # this step's throughput
        if tok_s * self.fpt > self.peak and not self.remeasured:  # the peak was measured while
            self.remeasured = True                                    # the machine was busy: again
            self.peak = max(self.peak, measure_matmul_peak(self.spec.device, self.spec.dtype,
                                                           precision=self.spec.matmul, fresh=True))
        mfu = tok_s * self.fpt / self.peak
        frac = self.budget.progress(rec["step"], rec["elapsed_s"])
        eta = rec["elapsed_s"] * (1 - frac) / frac if frac > 0 else float("nan")
        line = (f"step {rec['step']:6d} | loss {rec['train_loss']:.4f} | lr x{rec['lr']:.3f} | "
                f"{tok_s:,.0f} tok/s | MFU {f'{100 * mfu:.1f}%' if mfu <= 1 else 'n/a'} | {rec['elapsed_s']:.1f}s | "
                f"eta {eta:.1f}s")
        if self.bar:
            self.bar.update(self.task, completed=1000 * frac, description=line)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        if self.bar:
            self.bar.stop()
            self.bar = None

    def final(self, result: dict):
        if self.quiet:
            return
        bpb, confirm = result.get("val_bpb"), result.get("confirm_bpb")
        print(f"{result['status']}: {result['steps']} steps, val_loss "
              f"{result.get('val_loss') or float('nan'):.4f}, val_bpb {bpb if bpb is None else round(bpb, 4)}"
              + (f", confirm_bpb {confirm:.4f}" if confirm is not None else "")
              + f", {result['train_seconds']:.1f}s", file=sys.stderr)


_PEAKS: dict = {}


def measure_matmul_peak(device: str = "cpu", dtype: str = "float32", seconds: float = 0.3,
                        precision: str = "fp32", fresh: bool = False) -> float:
    """FLOP/s of a large square matmul on this device, measured now (MFU's denominator), with the
    model's matmul for that --matmul precision."""
    key = (device, dtype, precision)
    if key in _PEAKS and not fresh:
        return _PEAKS[key]
    from trainer.backend import array_module
    from trainer.model import elementwise_ops, model_matmul
    xp = array_module(device)
    matmul = model_matmul(precision, xp, elementwise_ops(xp))
    n = 1024 if device == "cpu" else 8192
    a = xp.ones((n, n), dtype=dtype)
    b = xp.ones((n, n), dtype=dtype)
    matmul(a, b).sum()  # warm up
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        c = matmul(a, b)
        float(c[0, 0])  # synchronize on a GPU
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    _PEAKS[key] = best
    return best
