"""
The harness's own measurement of a finished run, in a fresh process: the run's record.

    python -I -B -m org.evaluator < job.json      # prints {"measurement": {...}} or {"invalid": "..."}

The runner starts it once the trainer has exited (org/measure.py writes the job). Its code is
the harness's and the program's base commit's: `trainer` is imported from the base snapshot
(the referee's copy), never from the experiment's, with bytecode from source only and data
and kernel caches of its own. For the run's final checkpoint it:

1. reads the tensors itself (org/checkpoints.py) and checks them: float, finite, and for a
   config arm exactly the base model's names and shapes;
2. recounts compute (org/recount.py): FLOPs per token from the checkpoint's shapes with the
   base commit's trainer/flops.py, and the steps the program's budget allows at that rate (the
   runner holds the checkpoint's own step count and the trainer's against it);
3. evaluates the val and confirm windows of the lab's own split (its key: text no box can tell
   from train) with the base commit's data pipeline and loss (trainer/eval.py): a config arm
   with the base model in this process; a code arm with the experiment's forward pass in a
   worker process (org/model_worker.py), whose logits come back over a pipe, are checked
   (shape, finite) and scored here. A second, fresh worker then probes causality on batches
   drawn at random from every pass (val, confirm and the unforeseen train windows): with the
   tokens after a position t of each row's own changed, its log-probabilities at positions
   <= t must not move (and a row alone must score as in its batch). What a worker says once
   it has been shown those windows is withheld from the reason its agent reads. Each scored
   batch is also run, right after, by the base commit's forward pass in a worker of the same
   kind: the two times' ratio per FLOP (forward_time_ratio, org/remote.py's Yardstick) shows
   compute at evaluation that no training step paid for. The experiment's worker runs only
   while a call of ours is under way (frozen between), and what its other calls take
   (construction, replayed steps, loads) and its scored passes together are held to the base's
   (check_unpaid_time);
4. fingerprints the final parameters (bit-identical arms are `no change`) and, for a code arm,
   compares the experiment's initial parameters at the run's seed with the base commit's. If
   they are only redrawn from the same distributions, and two optimizer steps of the
   experiment's code from the base init land where the base code's do, the change is a
   reseed, not an idea (seed_only); an initial model that is not the base's is scored too:
   one that starts below the data's unigram entropy was trained before its budget began;
5. measures the data's unigram entropy in bits per byte: a baseline above it is not learning;
6. scores each parameter snapshot the run kept, as the checkpoint: its learning curve (val_curve).

With {"probe": true} it is asked, before a code arm trains, only for its model's FLOPs per token
as the experiment's code builds it (probe): what the run's windows are counted at
(org/streams.py), held against the checkpoint's own when the run is measured.

A problem with the run (an unreadable checkpoint, unexpected tensors, a forward pass that
fails, hangs up or returns non-finite logits) is {"invalid": one line}; a failure of the
harness itself is a traceback on stderr and a non-zero exit status.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import sys
import time
from itertools import chain, count, islice
from pathlib import Path

import numpy as np

from org import python_text, sourceless
from org.checkpoints import MAX_CHECKPOINT_BYTES, check_precision, read_checkpoint
from org.recount import recount
from org.remote import Invalid, RemoteModel, Worker, Yardstick

PROBE_FORWARDS = 6       # probe forwards per kept batch, each of its rows with a position t of its own
CAUSAL_TOLERANCE = 1e-3  # nats a log-probability at positions <= t may move (rounding); a peek under it gains less
REPLAY_STEPS = 2
# the experiment worker's time against the base's: its calls but forward passes (x3), its scored
# forward passes together per FLOP (x2.5, the referee's bar for their ratio: org/confounds.py), and
# a grace for them all (a job's setup_grace: budget.measure_grace_seconds), for a commit that changed
# its kernels, whose worker compiles them at construction or first use (7-14 s on 2 cores; 5 s made
# it invalid in CI)
SETUP_FACTOR, SCORED_FACTOR, SETUP_GRACE = 3, 2.5, 30.0
MAX_CURVE_POINTS = 1000  # snapshots scored for a run's learning curve at most
SNAPSHOT_NAME = re.compile(r"step-([0-9]{8,})\.npz")  # trainer/checkpoint.py's save_snapshot: step-%08d.npz
REPLAY_TOLERANCE = 1e-4  # relative: numerics that differ in rounding only are the same step
SAME_DISTRIBUTION_P = 1e-4  # a redrawn tensor whose two-sample KS p-value falls below this is not a redraw


def main() -> int:
    job = json.load(sys.stdin)
    signal.alarm(int(job.get("deadline_seconds", 0)))  # ends us (and, by PDEATHSIG, our workers) even if the runner died
    if job.get("python_text"):  # what the runner found of this machine's Python text: its workers' boxes hide it
        python_text.adopt(job["python_text"])
    base = Path(job["base_code"]).resolve()
    sys.path.insert(0, str(base))
    import trainer
    if not Path(trainer.__file__).resolve().is_relative_to(base):
        raise RuntimeError(f"trainer imported from {trainer.__file__}, not from the base snapshot {base}")
    try:
        out = {"measurement": probe(job) if job.get("probe") else measure(job)}
    except Invalid as e:
        out = {"invalid": str(e)}
    print(json.dumps(out))
    return 0


def measure(job: dict) -> dict:
    from trainer.data import load_dataset
    t0 = time.perf_counter()
    job["curve_until"] = time.monotonic() + (job.get("deadline_seconds") or math.inf) / 3  # (val_curve)
    data = load_dataset(job["data"], job["tokenizer"], split_key=lab_split_key(job))
    params, meta = read_checkpoint(Path(job["run_dir"]) / "checkpoint.npz")
    check_precision(params, job["dtype"])
    job["max_param_bytes"] = 8 * sum(a.size for a in params.values()) + (1 << 20)  # what a worker may send
    cfg = base_config(job, data.vocab_size)
    if cfg is None and job.get("workers"):  # fail closed: no base model to time or charge it against
        raise Invalid(f"the base commit rejects this run's overrides ({config_problem(job, data.vocab_size)}): "
                      "the harness builds the base's model beside a code arm's, to time its forward pass, "
                      "charge its tensors and probe its seed, so a code arm's new option takes a key of its own")
    try:
        out = recount(job, params, meta, cfg)
    except ValueError as e:  # (org/recount.py: the run's problem, one line)
        raise Invalid(str(e)) from None
    out.update(fingerprints(job, params, data), config_fingerprint=config_fingerprint(cfg))
    last = min(meta["step"], out.get("steps") or meta["step"])  # (the curve's: a checkpoint says its own step)
    if job.get("workers"):
        out.update(measure_experiment(job, params, last, cfg, data, out["flops_per_token"]))
    else:
        out.update(score(base_model(cfg, job, params), data, job),
                   forward="base", init="base", replay=None, seed_only=False, causal=None)
        out["val_curve"] = val_curve(job, data, params, last, lambda snapshot: base_model(cfg, job, snapshot))
    out["evaluator_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def probe(job: dict) -> dict:
    """A code arm's model before its run: its initial parameters as the experiment's code builds
    them at the run's config and seed (a worker's prepare, on the workers' few windows), charged
    as the recount charges a checkpoint. A lookup table of its own counts as a matrix, so its
    run is given the windows its FLOPs pay for, not its config's count of x2 or more (read as
    overdrawn). Code that builds another model in its run is held to this one (streams.overdrawn)."""
    from trainer.data import load_dataset
    t0 = time.perf_counter()
    V = load_dataset(job["models_data"]).vocab_size
    cfg = base_config(job, V)
    if cfg is None:
        raise Invalid(f"the base commit rejects this run's overrides ({config_problem(job, V)})")
    job["max_param_bytes"] = MAX_CHECKPOINT_BYTES
    with Worker(job, "a") as worker:
        init = worker.prepare(job, V)
    try:
        fpt = recount(job, init, {"step": 0}, cfg)["flops_per_token"]
    except ValueError as e:  # (org/recount.py: the model's problem, one line)
        raise Invalid(str(e)) from None
    return {"flops_per_token": fpt, "evaluator_seconds": round(time.perf_counter() - t0, 3)}


def lab_split_key(job: dict) -> bytes | None:
    """The lab's own split (streams.split_key_file); None for a job from no lab (a test's)."""
    if not job.get("split_key_file"):
        return None
    from trainer.data import read_split_key
    return read_split_key(job["split_key_file"])


def measure_experiment(job: dict, params: dict, meta_step: int, cfg, data, fpt: float) -> dict:
    """A code arm: its model's construction, training step and forward pass run in workers."""
    V = data.vocab_size
    with Worker(job, "a") as worker, Yardstick(job, cfg, V) as base:  # a: construction, replay, scoring
        init = worker.prepare(job, V)
        if {n: a.shape for n, a in init.items()} != {n: a.shape for n, a in params.items()}:
            raise Invalid(f"the checkpoint's tensors are not the experiment's model's: "
                          f"{shape_diff({n: a.shape for n, a in params.items()}, init)}")
        out = {**seed_probe(worker, init, cfg, job, data), "init_fingerprint": params_fingerprint(init)}
        base_replay = out.pop("base_replay_seconds", 0.0)
        worker.load(params)
        model = RemoteModel(worker, V, base)
        out.update(score(model, data, job))
        # scored at any init: the base's weights under a forward pass that adds a prior built in
        # an agent's box (an n-gram table in its code) start ahead too; last, so the worker meets
        # the unforeseen windows no sooner than the final model does
        out["init_bpb"] = init_score(worker, init, data, job, base)
        # the curve's passes timed against the base's as the scored ones are, and each of its loads held to a
        # load of the base's: untimed, its code had a third of the deadline to spend on anything (another slot's cores)
        loads = []
        out["val_curve"] = val_curve(job, data, params, meta_step,
                                     lambda snapshot: loads.append(base.load_allowance(snapshot)) or remote_at(worker, snapshot, V, base))
    prober = probe_causality(job, params, model.kept, V)
    ratio = base.time_ratio(fpt)
    check_unpaid_time(worker, base, base_replay + sum(loads), fpt, prober, job.get("setup_grace", SETUP_GRACE))
    from org.kernelcache import same_kernels  # (else each of its runs compiled them: CPU time on its clock)
    return {**out, "forward": "experiment", "causal": True, "forward_time_ratio": ratio,
            "own_kernels": not same_kernels(Path(job["base_code"]), Path(job["workers"]["a"]["code"]))}


# ----------------------------------------------------------------------------------------
# the config


def base_config(job: dict, vocab_size: int):
    """The run's config as the base commit builds it from the run's overrides (the keys the base
    knows; a code arm may add others); None if the base rejects even those."""
    try:
        return make_base_config(job, vocab_size)
    except (ValueError, TypeError):
        return None


def config_problem(job: dict, vocab_size: int) -> str:
    try:
        make_base_config(job, vocab_size)
    except (ValueError, TypeError) as e:
        return str(e)[:200]
    return "none"


def config_fingerprint(cfg) -> str | None:
    """Of the model config as built (a default restated in the overrides, or keys in another
    order, change nothing): two arms of the same config the seed probe may call a reseed."""
    import dataclasses
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True) if cfg is not None else None
    return text and hashlib.sha256(text.encode()).hexdigest()


def make_base_config(job: dict, vocab_size: int):
    from trainer.config import KEYS, make_config
    overrides = {k: v for k, v in job["overrides"].items() if k in KEYS or k == "depth"}
    return make_config(job["preset"], **{**overrides, "sequence_len": job["seq_len"], "vocab_size": vocab_size})


def base_model(cfg, job: dict, params: dict):
    from trainer.model import GPT
    if cfg is None:
        raise Invalid("the base commit cannot build this run's config")
    model = GPT(cfg, seed=0, dtype=job["dtype"], device=job["device"], matmul=job["matmul"])
    try:
        model.load_numpy(params)
    except ValueError as e:
        raise Invalid(f"the checkpoint's tensors do not match the run's config ({e})") from None
    return model


def check_unpaid_time(worker: Worker, base: Yardstick, base_other: float, fpt: float, prober: Worker | None = None,
                      grace: float = SETUP_GRACE):
    """Compute in the experiment's worker that no budget paid for and no time ratio shows: a
    model that builds a table from what text its box still reads (org/sourceless.py hides the
    most of it) as its checkpoint is loaded, or in its first scored forward pass (the ratio is a
    trimmed mean: the slowest tenth of the batches is left out of it, as a stall). Its calls but
    forward passes (construction, replayed steps, loads) may take SETUP_FACTOR times what the
    base's take (its worker's construction; `base_other`: its replay here, a base load for each
    snapshot the curve loaded; for the causality probe's worker `prober`, a construction and a
    load), its forward passes together (scored, the curve's, any that failed; the prober's, at a
    base batch a call) SCORED_FACTOR times the base's per FLOP, and the two `grace` seconds more
    (SETUP_GRACE by default: a code arm with kernels of its own compiles them in both workers,
    7-14 s each on 2 cores)."""
    if base.prepare_seconds is None:
        return
    setup, base_setup = worker.setup_seconds, base.prepare_seconds + base_other
    scored, pairs = worker.forward_seconds, base.times + base.curve_times
    base_scored = sum(theirs for _, theirs in pairs)
    if prober:  # (a worker its code can tell from the others: untimed, it had the rest of the deadline)
        setup, base_setup = setup + prober.setup_seconds, base_setup + base.prepare_seconds + (base.load_seconds or 0.0)
        scored += prober.forward_seconds
        base_scored += prober.forwards * (base_scored / len(pairs) if pairs else 0.0)
    per_flop = fpt / base.fpt
    over = [max(0.0, setup - SETUP_FACTOR * base_setup), max(0.0, scored - SCORED_FACTOR * base_scored * per_flop)]
    if sum(over) <= grace:
        return
    # (no seconds said: the worker times its calls as it likes, having seen the evaluation text,
    # and a reason is read by the agents: 0.1 s figures were a few bits of it each)
    said = ["its model's construction, checkpoint loads and replayed steps"] if over[0] else []
    said += ["its model's scored forward passes (per FLOP)"] if over[1] else []
    raise Invalid(f"{' and '.join(said)} took longer than the base's times allow: compute at measurement that no budget "
                  f"paid for (x{SETUP_FACTOR} the base's for its other calls, x{SCORED_FACTOR} for its scored passes, "
                  f"and {grace:g}s more in all at most)")


def shape_diff(expected: dict, got: dict) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = [n for n in expected if n in got and tuple(got[n].shape) != tuple(expected[n])]
    parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
            ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + \
            [f"{n} {tuple(got[n].shape)} != {tuple(expected[n])}" for n in wrong[:3]]
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------
# fingerprints


def fingerprints(job: dict, params: dict, data) -> dict:
    from trainer.eval import eval_fingerprint, tokens_fingerprint
    return {"params_fingerprint": params_fingerprint(params), "eval_fingerprint": eval_fingerprint(),
            "data_fingerprint": tokens_fingerprint(data.val, job["val_tokens"], job["seq_len"]),
            "unigram_bpb": unigram_bpb(data, job["val_tokens"], job["seq_len"])}


def params_fingerprint(params: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(params):
        a = np.ascontiguousarray(params[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode() + a.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# scoring: the base commit's evaluate(), on the base commit's windows


def score(model, data, job: dict) -> dict:
    """val, confirm and the unforeseen train windows, each over the program's number of tokens,
    by the base commit's evaluate(). For an experiment's model, a few batches of every pass are
    kept for the causality probe: were only val batches probed, a forward pass could answer
    those causally (it can look the val text up) and read the next token on the train windows,
    which would close the held-out gap."""
    from trainer.data import eval_windows
    from trainer.eval import evaluate
    B, T, n = job["batch_size"], job["seq_len"], job["val_tokens"]
    try:
        if isinstance(model, RemoteModel):
            model.probe_next("val", len(eval_windows(data.val, n, T)), B)
        val_scores = WindowScores(model, val_windows(data.val, n, T), data.token_bytes)
        val = evaluate(val_scores, data.val, data.token_bytes, n, B, T)  # each window scored from the same logits
        if isinstance(model, RemoteModel):
            model.probe_next("confirm", len(eval_windows(data.confirm, n, T)), B)
        confirm = evaluate(model, data.confirm, data.token_bytes, n, B, T)
        unforeseen = unforeseen_windows(data.train, n, T, job.get("train_probe_seed"))
        if isinstance(model, RemoteModel):
            model.probe_next("train-split", len(unforeseen), B)
        train = window_bpb(model, unforeseen, data.token_bytes, B)
        val_per_window = (val_scores.result() or (None, None))[1]
    except (FloatingPointError, ValueError, IndexError) as e:
        words = f"{type(e).__name__}: {str(e)[:200]}"  # (of figures the experiment's logits chose)
        raise Invalid(f"evaluation failed: {model.worker.said(words) if isinstance(model, RemoteModel) else words}") from None
    for name, value in (("val_loss", val["val_loss"]), ("confirm_loss", confirm["val_loss"])):
        if not math.isfinite(value):
            raise Invalid(f"{name} is {value}: the model's logits give a non-finite loss")
    return {"val_loss": val["val_loss"], "val_bpb": val["val_bpb"], "eval_tokens": val["eval_tokens"],
            "eval_bytes": val["eval_bytes"], "confirm_loss": confirm["val_loss"], "confirm_bpb": confirm["val_bpb"],
            "train_bpb": train and train[0], "train_window_bpb": train and train[1],
            "val_window_bpb": val_per_window}


def val_curve(job: dict, data, final: dict, final_step: int, model_at) -> tuple | None:
    """(step, val_bpb) of each parameter snapshot the run kept, every `snapshot_every` steps before
    `final_step`, scored as its checkpoint is: a lab's trainer evaluates nothing (slots.train_command).
    For the plots alone: a snapshot missing, unreadable or larger than the final parameters is
    left out; one that cannot be scored ends the curve, as does a third of the evaluator's deadline
    (a pass that would end past it is not begun: a code arm's causality probe comes after it, and a
    curve must not make a run's measurement late). None where the base's trainer predates
    snapshots (snapshot_every None) and evaluated itself; () where bits a byte cannot be told."""
    from trainer.eval import evaluate
    every, points, folder = job.get("snapshot_every"), [], Path(job["run_dir"]) / "snapshots"
    if every is None:
        return None
    shapes, size = {n: a.shape for n, a in final.items()}, sum(a.nbytes for a in final.values()) + (1 << 20)
    names = os.listdir(folder) if every and data.token_bytes is not None and folder.is_dir() else []
    named = (SNAPSHOT_NAME.fullmatch(name) for name in names)  # (as trainer/checkpoint.py's save_snapshot names them)
    kept = sorted(step for step in (int(m[1]) for m in named if m and m[1] == f"{int(m[1]):08d}")  # (one name a step)
                  if 0 < step < final_step and step % every == 0)
    took = 0.0  # the last pass's time
    for step in kept[:MAX_CURVE_POINTS]:
        if time.monotonic() + took > job.get("curve_until", math.inf):
            break
        t0 = time.monotonic()
        try:
            params, meta = read_checkpoint(folder / f"step-{step:08d}.npz", max_bytes=size)
            check_precision(params, job["dtype"])
        except Invalid:
            continue
        if meta["step"] != step or {n: a.shape for n, a in params.items()} != shapes:
            continue
        try:
            ev = evaluate(model_at(params), data.val, data.token_bytes, job["val_tokens"], job["batch_size"],
                          job["seq_len"])
        except (Invalid, FloatingPointError, ValueError, IndexError):
            break
        if math.isfinite(ev["val_bpb"]):  # (at the report's digits; no agent's tool shows the curve)
            points.append((step, round(ev["val_bpb"], 4)))
        took = time.monotonic() - t0
    return tuple(points)


def remote_at(worker: Worker, params: dict, vocab_size: int, base: Yardstick) -> RemoteModel:  # keeps nothing
    return worker.load(params) or RemoteModel(worker, vocab_size, base, curve=True)


def unforeseen_windows(tokens: np.ndarray, n_tokens: int, seq_len: int, seed: int | None) -> np.ndarray:
    """(n_tokens // seq_len, seq_len + 1) windows of `tokens` at offsets drawn from a seed only
    harness code can read (streams.probe_seed: the same windows for every run of the lab, so arms
    compare seed by seed; the OS's randomness when none is given): text of the train split no
    run could know it would be scored on. A model that learned the val windows, or looks them
    up, does far worse here than there (the referee's held-out gap)."""
    k = max(1, min(n_tokens, len(tokens) - 1) // seq_len)
    seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - seq_len, k)
    return np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts])


def window_bpb(model, windows: np.ndarray, token_bytes, batch_size: int) -> tuple[float, tuple] | None:
    """(bits per byte over all the windows, each window's own), windows (k, T + 1): the next-token
    loss by the base commit's cross_entropy_sum, as evaluate() computes it, per row. The windows
    are a random draw, so the referee needs each one's figure: how much two models' difference
    on them moves from one draw to the next is their spread over windows (confounds.
    check_held_out_gap). None when the tokenizer's bytes are unknown."""
    scores = WindowScores(model, windows, token_bytes)
    for i in range(0, len(windows), batch_size):
        scores.forward(model.xp.asarray(windows[i:i + batch_size, :-1]))
    return scores.result()


def val_windows(tokens, n_tokens: int, seq_len: int) -> np.ndarray:
    """(k, T + 1) the val windows evaluate() reads, in its order."""
    from trainer.data import eval_windows
    starts = eval_windows(tokens, n_tokens, seq_len)
    return np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)


class WindowScores:
    """A model as a pass over `windows` (k, T + 1), in order, gives it: each window's bits and
    bytes are kept as its logits come back. window_bpb drives it over the unforeseen train
    windows; score() hands it to evaluate() in the model's place for the val pass, so that each
    val window's figure (the referee's margin for the draw of the val windows) comes from the
    very logits val_bpb is summed from: a second pass could be answered otherwise, to widen it."""

    def __init__(self, model, windows: np.ndarray, token_bytes):
        self.model, self.xp, self.windows = model, model.xp, windows
        self.tb = None if token_bytes is None else np.asarray(token_bytes)
        self.bits, self.nbytes, self.in_order = [], [], True

    def forward(self, x):
        from trainer.backend import to_numpy
        from trainer.eval import cross_entropy_sum
        logits = self.model.forward(x)                                          # (b, T, V)
        rows = self.windows[len(self.bits):len(self.bits) + len(x)]             # (b, T + 1)
        self.in_order &= rows.shape[0] == len(x) and np.array_equal(to_numpy(x), rows[:, :-1])
        if self.tb is not None and self.in_order:
            for r, row in enumerate(rows):
                self.bits.append(float(to_numpy(cross_entropy_sum(logits[r], self.xp.asarray(row[1:])))) / math.log(2))
                self.nbytes.append(int(self.tb[row[1:]].sum()))
        return logits

    def result(self) -> tuple[float, tuple] | None:
        """(bits per byte over all the windows, each window's own); None without the tokenizer's
        bytes, or when the pass did not read exactly the windows, in order."""
        if self.tb is None or not self.in_order or len(self.bits) != len(self.windows):
            return None
        if not all(map(math.isfinite, self.bits)):
            raise ValueError("a window scores a non-finite loss")
        per_window = tuple(round(b / max(n, 1), 5) for b, n in zip(self.bits, self.nbytes))
        return sum(self.bits) / sum(self.nbytes), per_window


def unigram_bpb(data, n_tokens: int, seq_len: int) -> float | None:
    """Bits per byte of the val windows' targets under the train split's token frequencies
    (add-one smoothed): what a model that learned nothing but counts would score."""
    if data.token_bytes is None:
        return None
    targets = val_windows(data.val, n_tokens, seq_len)[:, 1:].ravel()
    counts = np.ones(data.vocab_size)  # (a chunk at a time: the train split may be a memmap of billions)
    for a in range(0, len(data.train), 1 << 22):
        counts += np.bincount(data.train[a:a + (1 << 22)], minlength=data.vocab_size)
    bits = -np.log2(counts[targets] / counts.sum()).sum()
    return float(bits / data.token_bytes[targets].sum())


# ----------------------------------------------------------------------------------------
# the experiment's model, in a worker process


def probe_causality(job: dict, params: dict, kept: list, vocab_size: int) -> Worker:
    """In a fresh worker (no state carried over from the scoring one), run each kept batch again:
    as it was scored (the worker's box is lean, sandbox.worker_box: no text but its trainer/ and
    bytecode, so a forward pass that mixed in a table of the scoring box's text, the system's
    manuals or the stdlib's sources, answers otherwise); then PROBE_FORWARDS times, each row with
    the tokens after a position t of its own changed: its log-probabilities at positions <= t
    must be the scoring pass's; then every row must score alone as in its batch (last: no answer
    for its prefixes precedes their probes; one forward's worth of work, as rows of one).
    The t are dealt from shuffled decks of the T - 1 positions (each once before any twice) by an
    rng no worker sees, to 6 kept batches (2 of each pass) x PROBE_FORWARDS x B rows a run. A
    forward pass that reads the next token at one position is found when a row's t is that one:
    at the programs' B = 8, T = 256 (288 checks, 255 positions), on a GPU's B = 32, T = 1024
    (1152, 1023) and the tests' B = 4, T = 64 (144, 63) every position is checked, so it is found
    in every run (with 3 forwards a batch it escaped 0.44 of runs at B = 8, T = 256)."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    T = max(job["seq_len"], 2)  # t in 0..T-2 (for T = 1, t = 0: nothing after it to change)
    deck = chain.from_iterable(rng.permutation(T - 1) for _ in count())  # each t once before any twice
    with Worker(job, "b") as worker:  # b: fresh, so nothing it answers was seen by a (its times: check_unpaid_time)
        try:
            worker.prepare(job, vocab_size)
        except Invalid as e:  # (its lean box: sandbox.worker_box)
            raise Invalid(sourceless.import_hint(str(e), "the fresh worker that checks the scoring one")) from None
        worker.load(params)
        for pass_name, x, logits in kept:  # first as a scored them, in a box of no text but trainer/ and bytecode
            if moved(worker.forward(x, vocab_size), logits):
                raise Invalid(f"the experiment's forward pass answers otherwise in a fresh process whose box holds no text "
                              f"but its commit's trainer/ and bytecode: its logits hang on more than its weights and its input "
                              f"(text its box held, what earlier calls showed it, or chance; a batch of the {pass_name} text)")
            for _ in range(PROBE_FORWARDS):
                ts = np.fromiter(islice(deck, len(x)), np.int64, len(x))
                again = worker.forward(changed_after(x, ts, rng, vocab_size), vocab_size)
                for i, t in enumerate(ts):
                    if moved(again[i, :t + 1], logits[i, :t + 1]):
                        raise Invalid(f"the experiment's forward pass is not causal: a window's logits at some "
                                      f"position change with its later tokens, or with other rows' later tokens (a "
                                      f"batch of the {pass_name} text)")  # (not which: a number it would choose)
            for r in range(len(x)):  # every row (one row at random missed one that read the next row 1/B of times)
                if moved(worker.forward(x[r:r + 1], vocab_size)[0], logits[r]):
                    raise Invalid(f"the experiment's forward pass is not row-independent: a window of the {pass_name} "
                                  f"text scores differently alone than in its batch (or differently in a fresh process)")
    return worker  # (its times, for check_unpaid_time)


def changed_after(x: np.ndarray, ts: np.ndarray, rng, vocab_size: int) -> np.ndarray:
    """x with every token of row i after position ts[i] changed, each to another token."""
    after = np.arange(x.shape[1]) > ts[:, None]
    return np.where(after, (x + rng.integers(1, vocab_size, size=x.shape)) % vocab_size, x)


def moved(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two answers for the same positions are over CAUSAL_TOLERANCE nats apart, read as the
    score reads them (log-softmax, in float64): an offset moves neither. NaN counts as apart."""
    return not np.abs(log_softmax(a) - log_softmax(b)).max() <= CAUSAL_TOLERANCE


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------------------
# seed-only changes


def seed_probe(worker: Worker, init: dict, cfg, job: dict, data) -> dict:
    """How the experiment's initial parameters at the run's seed relate to the base commit's,
    and whether its training step is the base commit's (a replay from the base init)."""
    from trainer.data import get_batch
    from trainer.model import GPT
    from trainer.optim import make_optimizer
    if cfg is None:
        return {"init": "unknown", "replay": None, "seed_only": False}
    base = GPT(cfg, seed=job["seed"], dtype=job["dtype"], device=job["device"], matmul=job["matmul"])
    base_init = base.state_numpy()
    if {n: a.shape for n, a in base_init.items()} != {n: a.shape for n, a in init.items()}:
        return {"init": "other tensors", "replay": None, "seed_only": False}
    differ = [n for n in base_init if not np.array_equal(base_init[n], init[n])]
    kind = "same" if not differ else (
        "redrawn" if all(same_distribution(base_init[n], init[n]) for n in differ) else "changed")
    batches = [get_batch(data.train, job["batch_size"], job["seq_len"], job["seed"], k) for k in range(REPLAY_STEPS)]
    theirs = worker.replay(base_init, batches, lr_mult=1.0)
    t0 = time.perf_counter()
    optimizer = make_optimizer(base)
    for x, y in batches:
        base.forward(x, y)
        base.backward()
        optimizer.step(lr_mult=1.0)
    ours = base.state_numpy()
    base_replay = time.perf_counter() - t0
    same_step = all(n in theirs and theirs[n].shape == ours[n].shape and
                    np.abs(theirs[n] - ours[n]).max() <= REPLAY_TOLERANCE * max(1e-3, np.abs(ours[n]).max())
                    for n in ours)
    replay = "same" if same_step else "differs"
    return {"init": kind, "replay": replay, "seed_only": kind == "redrawn" and replay == "same",
            "base_replay_seconds": base_replay}


def init_score(worker: Worker, init: dict, data, job: dict, base: Yardstick | None = None) -> float | None:
    """Bits per byte of the experiment's initial model, as its own code builds it at the run's
    seed, on the unforeseen train windows. A model no budget has trained yet scores about
    log2(vocab) per token, at best the data's unigram entropy (its output bias set to the
    counts); below that, it started trained (the referee's head-start check)."""
    B, T, n = job["batch_size"], job["seq_len"], job["val_tokens"]
    worker.load(init)
    model = RemoteModel(worker, data.vocab_size, base)  # timed too; keeps nothing: the probe is of the final model
    try:
        scored = window_bpb(model, unforeseen_windows(data.train, n, T, job.get("train_probe_seed")),
                            data.token_bytes, B)
    except (FloatingPointError, ValueError, IndexError):
        return None
    return scored and scored[0]


def same_distribution(a: np.ndarray, b: np.ndarray) -> bool:
    """Two draws of one init: the same sizes, and a two-sample Kolmogorov-Smirnov test that does
    not tell them apart (constant or tiny tensors must be equal to count as the same)."""
    from scipy import stats
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.size < 64 or a.std() == 0 or b.std() == 0:
        return False
    rng = np.random.default_rng(0)
    if a.size > 100_000:
        a, b = rng.choice(a, 100_000, replace=False), rng.choice(b, 100_000, replace=False)
    return stats.ks_2samp(a, b).pvalue > SAME_DISTRIBUTION_P


if __name__ == "__main__":
    sys.exit(main())
