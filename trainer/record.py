"""
A run's record: one shape for what is known of a run, from the trainer to the referee.

    trainer/train.py    writes the trainer's word as result.json:    write_json(path, asdict(Result(...)))
    org/evaluator.py    measures the run's checkpoint again:         a Measurement's fields, as JSON
    org/runner.py       reads both back, checked field by field:     read(Result, text, "result.json")
    org/ledger.py       keeps both verbatim beside the columns SQL filters on, and returns every
                        run with them parsed and its figures flat: the harness's when it measured
                        the run, the trainer's word otherwise and for what only the trainer can
                        say (its clock, its device)
    org/referee.py      reads a run's figures from that row (referee.Run), org/report.py the same

The trainer's code is the experiment's, so its record is a claim: the runner parses it with this
file as the harness has it, and a field of the wrong type makes the run invalid, with the field
named. Keys a Result does not know are dropped when it is read (result.json keeps them on disk);
a Measurement, the harness's own, takes none (a nanolab older than its writer measures it again).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TypeVar


@dataclass(frozen=True)
class Params:
    total: int
    matmul: int  # the matmul weights: FLOPs per token are 6x these (plus attention)


@dataclass(frozen=True)
class Budget:
    kind: str    # flops | tokens | steps | seconds
    value: float


@dataclass(frozen=True)
class Figures:
    """What both the trainer and the harness say of a finished run."""
    val_bpb: float | None = None
    val_loss: float | None = None
    confirm_bpb: float | None = None      # the held-out split
    confirm_loss: float | None = None
    eval_tokens: int | None = None
    steps: int | None = None
    tokens: int | None = None
    flops: float | None = None
    flops_per_token: float | None = None
    params: Params | None = None
    eval_fingerprint: str | None = None   # of the evaluation code
    data_fingerprint: str | None = None   # of the val tokens


@dataclass(frozen=True)
class Result(Figures):
    """result.json: the trainer's word, and its own view of the run (how it ended, its clock)."""
    status: str | None = None             # completed | diverged | killed | error
    reason: str | None = None
    budget: Budget | None = None
    seed: int | None = None
    train_seconds: float | None = None
    warmup_seconds: float | None = None
    tokens_per_second: float | None = None
    device: str | None = None
    dtype: str | None = None
    matmul: str | None = None
    batch_size: int | None = None
    sequence_len: int | None = None
    val_tokens: int | None = None
    data: str | None = None
    tokenizer: str | None = None
    git_commit: str | None = None         # its claim; the ledger keeps the runner's
    git_dirty: bool | None = None
    trainer_version: str | None = None


@dataclass(frozen=True)
class Measurement(Figures):
    """The harness's evaluation of the run's checkpoint (org/evaluator.py): the run's record."""
    __pydantic_config__ = {"extra": "forbid"}  # harness code writes it: a key not here is a bug here
    checkpoint_step: int | None = None
    eval_bytes: int | None = None
    unigram_bpb: float | None = None      # what counting tokens gives: the bar for learning
    train_bpb: float | None = None        # on train-split windows drawn when measuring: the held-out gap's other side
    train_window_bpb: tuple[float, ...] | None = None  # each of those windows' own: how much the draw moves it
    val_window_bpb: tuple[float, ...] | None = None    # each val window's own: the val windows are a draw too
    init_bpb: float | None = None         # a code arm's initial model (its own code, the run's seed) on those windows
    params_fingerprint: str | None = None  # of the final parameters
    init_fingerprint: str | None = None   # of a code arm's initial ones, as its own code makes them at the run's seed
    forward: str | None = None            # base | experiment: whose forward pass was scored
    init: str | None = None               # base | redrawn | other tensors | unknown (the seed probe)
    replay: str | None = None             # the probe's replay of one training step: same | different
    seed_only: bool = False               # a redrawn init and the same step: only the seed changed
    config_fingerprint: str | None = None  # of the model config the run's overrides make (what the seed probe built)
    causal: bool | None = None            # the experiment's forward pass passed the causality probe
    forward_time_ratio: float | None = None  # its forward pass's time per FLOP over the base's, as scored
    stream_passes: float | None = None    # windows its steps took over those its stream held: past 1, some twice
    train_cpu_seconds: float | None = None  # what its trainer's box ran, all processes (its cgroup's), by the runner
    val_curve: tuple[tuple[int, float], ...] | None = None  # (step, val_bpb) of each parameter snapshot the run kept
    own_kernels: bool | None = None       # a code arm whose CPU kernels' sources differ from the base's (compiled each run)
    evaluator_seconds: float | None = None


R = TypeVar("R", Result, Measurement)


def read(kind: type[R], data: str | bytes | dict, source: str, strict: bool = True) -> R:
    """`data` (JSON text, or an object already parsed) as a `kind` record, every field's type
    checked (strict=False: numbers in strings and the like converted, for records written long
    ago); ValueError in one line naming `source` and the first field that does not fit."""
    from pydantic import ValidationError
    text = data if isinstance(data, (str, bytes)) else json.dumps(data)
    try:
        return _adapter(kind).validate_json(text, strict=strict)
    except ValidationError as e:
        error = e.errors()[0]
        field = ".".join(map(str, error["loc"])) or "the record"
        raise ValueError(f"{source}: {field}: {error['msg']} (it holds {str(error.get('input'))[:60]!r})") from None


@functools.cache
def _adapter(kind):
    from pydantic import TypeAdapter  # the harness reads records; the trainer only writes them
    return TypeAdapter(kind)
