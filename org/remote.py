"""
The experiment's model in a worker process (org/model_worker.py, in the experiment's snapshot and
a box), as the evaluator (org/evaluator.py) talks to it: every answer is checked here, and a
problem with one is the run's Invalid, one line.

    with Worker(job, "a") as worker, Yardstick(job, cfg, V) as base:
        init = worker.prepare(job, V); worker.load(params)
        model = RemoteModel(worker, V, base)    # what the base evaluate() scores
        base.time_ratio(flops_per_token)        # its forward pass's time per FLOP over the base's
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from org.cgroups import box_cgroups, freeze, freezer_group, stopped
from org.model_worker import receive, send
from org.diskwatch import watch
from org.sandbox import Sandbox, dies_with, end_box
from org.recount import flops_per_token

PROBE_BATCHES = 2        # batches of each scoring pass whose logits the fresh worker re-checks
TRIM = 0.1               # of the time ratios, the share at either end left out of their mean
LOG_TAIL_BYTES = 64 << 10  # what last_line reads of a log


class Invalid(Exception):
    """The run cannot be measured; the message is the ledger's one-line reason."""


class Worker:
    """org/model_worker.py in the experiment's snapshot; every answer is checked here. It runs
    only while a call of ours is under way: frozen from its start (its freezer group, where it
    has one) and again as each answer is in, so no work of its own goes on while we score what
    it answered, time the base, or replay the base's steps (a thread it left spinning had half
    the measurement's time, no budget's). setup_seconds: what its calls but forward passes took."""

    def __init__(self, job: dict, name: str):
        w = job["workers"][name]  # each with its own kernel cache: nothing passes from a to b
        log = Path(job["log_dir"]) / f"measure-worker-{name}.log"  # never through a link the run left
        self.log = open(log, "w+b", opener=no_follow)
        # a box's rlimits and disk watch, as Sandbox.popen gives a run's: its log and kernel cache
        # are files of the harness's disk (boxless, as measure.py's tests start it: none)
        box = Sandbox.from_spec(w["box"]) if w.get("box") else None
        self.groups = box_cgroups(box.limits) if box else []  # (everything it starts is in them)
        self.freezer, self.setup_seconds, self.call_seconds = freezer_group(self.groups), 0.0, 0.0
        self.forward_seconds, self.forwards = 0.0, 0  # every forward pass's, one that failed too
        self.hold(True)  # (its shell joins the group before it becomes bwrap: frozen there)
        argv = box.command(w["argv"], cwd=w["code"], env=w["env"], groups=self.groups) if box else w["argv"]
        dies = dies_with(os.getpid())
        self.proc = subprocess.Popen(argv, cwd=w["code"], env=w["env"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log,
                                     preexec_fn=(lambda: (dies(), box.set_limits())) if box else dies)
        if box:
            self.proc.box_groups = self.groups
            watch(self.proc, box.writable, box.limits)
        self.job, self.seen_text = job, False
        self.whose = "the base's" if name == "base" else "the experiment's"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hold(False)  # (a frozen process does not even die of SIGKILL)
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.groups:
            end_box(self.proc)  # (what its box left, and its groups: a sweep leaves a live harness's)
        with self.log:  # (no disk watch sees it: the box's bound on a file, WORKER_FILE_BYTES, holds it meanwhile)
            keep_tail(self.log, LOG_TAIL_BYTES)

    def call(self, what: str, header: dict, arrays=(), max_bytes: int = 0) -> tuple[dict, list]:
        self.seen_text |= what == "forward pass"
        self.hold(False)
        t0 = time.perf_counter()  # (the call's time, its freezing and thawing left out: the base's is too)
        try:
            send(self.proc.stdin, header, arrays)
            reply, out = receive(self.proc.stdout, max_bytes)
            self.call_seconds = time.perf_counter() - t0
            self.hold(True)
        except (EOFError, BrokenPipeError, ValueError, OSError) as e:
            self.proc.kill()
            why = getattr(self.proc, "stopped", None) or self.said(last_line(self.log.name))
            # (a frame's header names a shape and a dtype of the code's choosing: words it said, too)
            raise Invalid(f"{self.whose} model process broke off during {what} ({self.said(str(e)[:200])}): "
                          f"{why}") from None
        finally:
            took = time.perf_counter() - t0
            if what == "forward pass":
                self.forward_seconds, self.forwards = self.forward_seconds + took, self.forwards + 1
            else:
                self.setup_seconds += took
        if "error" in reply:
            raise Invalid(f"{self.whose} {what} failed: {self.said(str(reply['error'])[:300])}")
        names = reply.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) not in (0, len(out)):
            raise Invalid(f"{self.whose} model process answered {what} with names that do not fit its arrays")
        return reply, out

    def hold(self, on: bool):
        """Freeze (or thaw) the worker's box, where it has a freezer group; else nothing."""
        if self.freezer:
            with contextlib.suppress(OSError):
                freeze(self.freezer, on)

    def said(self, words: str) -> str:
        """What the experiment's code said, for the run's reason, which its agent reads: withheld
        once it has been shown evaluation text, which it could spell out there."""
        return "(withheld: it has seen the evaluation text)" if self.seen_text else words

    def prepare(self, job: dict, vocab_size: int) -> dict:
        spec = {"preset": job["preset"], "overrides": {**job["overrides"], "sequence_len": job["seq_len"]},
                "seed": job["seed"], "device": job["device"], "dtype": job["dtype"], "matmul": job["matmul"],
                "batch_size": job["batch_size"], "data": job.get("models_data") or job.get("runs_data") or job["data"],
                "tokenizer": "bytes" if job.get("runs_data") else job["tokenizer"],
                "budget_kind": job["budget_kind"], "budget": job["budget"], "val_tokens": job["val_tokens"],
                "confirm_tokens": job["val_tokens"]}
        reply, arrays = self.call("model construction", {"op": "prepare", "spec": spec, "vocab_size": vocab_size},
                                  max_bytes=self.job["max_param_bytes"])
        return dict(zip(reply["names"], arrays))

    def load(self, params: dict):
        self.call("checkpoint load", {"op": "load", "names": list(params)}, list(params.values()))

    def replay(self, params: dict, batches: list, lr_mult: float) -> dict:
        arrays = list(params.values()) + [a for xy in batches for a in xy]
        reply, out = self.call("optimizer replay", {"op": "replay", "names": list(params), "batches": len(batches),
                                                    "lr_mult": lr_mult}, arrays, self.job["max_param_bytes"])
        return dict(zip(reply["names"], out))

    def forward(self, x: np.ndarray, vocab_size: int) -> np.ndarray:
        rows, T = x.shape
        _, out = self.call("forward pass", {"op": "forward"}, [x], max_bytes=rows * T * vocab_size * 8 + 4096)
        logits = out[0] if out else None
        if logits is None or logits.shape != (rows, T, vocab_size) or logits.dtype.kind != "f":
            got = "nothing" if logits is None else f"{logits.dtype} {logits.shape}"
            raise Invalid(f"{self.whose} forward pass returned {self.said(got)} for {x.shape} tokens, "
                          f"expected float logits ({rows}, {T}, {vocab_size})")
        if not np.isfinite(logits).all():
            raise Invalid(f"{self.whose} forward pass returned non-finite logits")
        return logits


class RemoteModel:
    """The experiment's forward pass as the base evaluate() sees a model; keeps the logits of
    a few batches of each pass, drawn at random, for the causality probe."""
    xp = np

    def __init__(self, worker: Worker, vocab_size: int, yardstick: Yardstick | None = None, curve: bool = False):
        self.worker, self.vocab_size, self.yardstick, self.curve = worker, vocab_size, yardstick, curve
        self.rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        self.keep, self.calls, self.kept, self.pass_name = set(), 0, [], None

    def probe_next(self, name: str, n_windows: int, batch_size: int):
        """The next evaluate() pass reads n_windows windows in batches of batch_size: keep
        PROBE_BATCHES of its batches (drawn here, so no forward pass can know which)."""
        n_batches = -(-n_windows // batch_size)
        self.keep = set(self.rng.choice(n_batches, size=min(PROBE_BATCHES, n_batches), replace=False))
        self.calls, self.pass_name = 0, name

    def forward(self, x):
        x = np.ascontiguousarray(np.asarray(x, dtype=np.int64))
        logits = self.worker.forward(x, self.vocab_size)
        if self.yardstick:
            seconds = self.worker.call_seconds
            # nothing of the experiment's box runs while the base's pass is timed on the same cores: a
            # process of its own could spin there meanwhile, lengthen the base's time, lower the ratio
            # (frozen already, where it has a freezer group; else stopped by signals)
            with contextlib.nullcontext() if self.worker.freezer else stopped(self.worker.groups):
                self.yardstick.after(x, seconds, self.curve)
        if self.calls in self.keep:
            self.kept.append((self.pass_name, x, logits))
        self.calls += 1
        return logits


class Yardstick:
    """The base commit's forward pass, in a worker of the same kind as the experiment's (box, pipe,
    cores), run on each batch the experiment's forward pass scores, right after it: R, the mean
    over batches of their times' ratio (less the highest and lowest TRIM of them: a stall either
    side), per FLOP of each recount, is about 1 for a forward pass
    that does the work its FLOPs say. Compute at evaluation that no training step paid for (a model
    that trains on each window as it scores it, dynamic evaluation: causal and row-local, so the
    probe passes it) makes it more: the referee's confounds.check_eval_compute judges it. The
    scored calls themselves are timed: calls made only to time could be told from them, by their
    count, and answered cheaply; and the base's run right after each, so a machine that gets busier
    or quieter moves both. (A median let extra work on 2 of every 5 batches through.) Without a
    base worker or a config the base can build, there is no R; a base worker that fails makes
    the run Invalid: its failure can be the experiment's doing (GPU memory it holds, frozen)."""

    def __init__(self, job: dict, cfg, vocab_size: int):
        from trainer.config import KEYS
        from trainer.model import param_shapes
        self.worker, self.V, self.failed, self.prepare_seconds, self.load_seconds = None, vocab_size, None, None, None
        self.load_bytes = 0  # of the base's parameters, loaded once (load_allowance)
        self.times: list[tuple[float, float]] = []  # per scored batch: (the experiment's seconds, the base's)
        self.curve_times: list[tuple[float, float]] = []  # the learning curve's: no part of R (64 of them drowned it)
        if cfg is None or "base" not in job["workers"]:
            return
        shapes = dict(param_shapes(cfg))
        self.fpt = flops_per_token(shapes, cfg, job["seq_len"])
        base_job = {**job, "overrides": {k: v for k, v in job["overrides"].items() if k in KEYS or k == "depth"},
                    "max_param_bytes": 8 * sum(int(np.prod(s)) for s in shapes.values()) + (1 << 20)}
        self.worker = Worker(base_job, "base")
        made = {}
        if self.call(lambda: made.update(self.worker.prepare(base_job, vocab_size))):
            self.prepare_seconds = self.worker.setup_seconds
        if made and self.call(lambda: self.worker.load(made)):  # what a load of the experiment's is held to
            self.load_seconds = self.worker.setup_seconds - self.prepare_seconds
            self.load_bytes = sum(a.nbytes for a in made.values())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.worker:
            self.worker.__exit__(*exc)

    def after(self, x: np.ndarray, seconds: float, curve: bool = False):
        """The experiment took `seconds` on x (a batch of the learning curve's: `curve`): time the base on it."""
        if self.call(lambda: self.worker.forward(x, self.V)):
            (self.curve_times if curve else self.times).append((seconds, self.worker.call_seconds))

    def load_allowance(self, params: dict) -> float:
        """A base load's time, for the experiment's load of `params` (at their bytes, where more)."""
        if not self.load_seconds:
            return 0.0
        return self.load_seconds * max(1.0, sum(a.nbytes for a in params.values()) / self.load_bytes)

    def call(self, what) -> bool:
        if self.worker is None:
            return False
        try:
            what()
            return True
        except Invalid as e:  # said by time_ratio(), once the experiment's scoring is done
            self.worker.__exit__(None, None, None)
            self.worker, self.failed = None, str(e)
            return False

    def time_ratio(self, fpt: float) -> float | None:
        if self.failed:
            raise Invalid(f"the harness's base worker, which times the experiment's forward pass against the "
                          f"base's, failed ({self.failed[:300]}): its compute at evaluation cannot be checked")
        if not self.times or not fpt:
            return None
        ratios = np.sort([theirs / ours for theirs, ours in self.times])
        cut = int(len(ratios) * TRIM)
        return round(float(ratios[cut:len(ratios) - cut].mean()) * self.fpt / fpt, 3)


def no_follow(path, flags):
    """open()'s opener for a file the harness writes in a run's directory: never through a link."""
    return os.open(path, flags | os.O_NOFOLLOW)


def keep_tail(f, n: int):
    """Cut an open log (read and write) to its last n bytes: a worker's is the run's for good,
    and each measured run would keep one as large as the box let it write."""
    size = os.fstat(f.fileno()).st_size
    if size > n:
        f.seek(size - n)
        tail = f.read(n)
        f.seek(0)
        f.truncate()
        f.write(tail)


def last_line(path: str) -> str:
    """A log's last words, read from its last LOG_TAIL_BYTES: a run may leave gigabytes of log,
    and the runner reads them in its own memory, which no box bounds."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
            tail = f.read(LOG_TAIL_BYTES).decode(errors="replace")
    except OSError:
        return "no log"
    lines = [l for l in tail.splitlines() if l.strip()]
    return lines[-1].strip()[:300] if lines else "it printed nothing"
