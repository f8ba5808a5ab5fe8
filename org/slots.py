"""
Slots: where a program's runs execute. One per GPU, or `runner.slots` of the CPU's cores, each
with the thread counts its runs are started with and the cores they are kept to; and the
command each run is, there:

    slots = make_slots(program)    # [Slot(0, env={"OMP_NUM_THREADS": "4", ...}, cores=[0..3]), ...]
    train_command(program, overrides, seed, out)   # [python, -m, trainer, train, ...]

The runner (org/runner.py) runs one run at a time on each; a cluster's slots are its kinds of
device (org/cluster.py).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from org.program import Program
from trainer.config import BUDGET_FLAGS, flag_value

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")
CPU_SYSFS = Path("/sys/devices/system/cpu")  # cpuN/topology/thread_siblings_list: N's hyperthreads


@dataclass
class Slot:
    index: int
    env: dict = field(default_factory=dict)  # thread counts, CUDA_VISIBLE_DEVICES
    cores: list[int] | None = None  # where its runs may run: `threads` cores of its share
    share: list[int] | None = None  # its part of the machine: where its runs are measured
    kind: str | None = None  # a cluster's kind of device (org/cluster.py): each seed's runs keep to one
    of: int = 1  # how many slots share the runs' memory (org/cgroups.py: pools)


def make_slots(program: Program) -> list[Slot]:
    """One slot per GPU, or `runner.slots` CPU slots splitting the cores between them. A run is
    kept to `threads` cores of its slot's share: it cannot take another slot's cores, nor more
    than its threads (a time budget would pay it for them). Its measurement, which no budget
    times, may use the whole share; the experiment's model workers in it, its runs' cores."""
    cfg = program.runner
    groups = physical_cores(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else None
    cores = [core for group in groups for core in group] if groups else None
    n_cores = len(cores) if cores else (os.cpu_count() or 1)
    devices = [str(gpu) for gpu in cfg.gpus] if cfg.gpus else [""] * cfg.slots
    per_slot = max(1, n_cores // len(devices))
    width = len(groups[0]) if groups and all(len(g) == len(groups[0]) for g in groups) else 1
    per_slot -= per_slot % width if per_slot >= width else 0  # (shares of 3 of 2-thread cores split one)
    threads = cfg.threads_per_slot or per_slot
    return [Slot(i, {**threads_env(threads), "CUDA_VISIBLE_DEVICES": device},
                 pick(cores, i * per_slot, threads), pick(cores, i * per_slot, per_slot), of=len(devices))
            for i, device in enumerate(devices)]


def physical_cores(cores: list[int]) -> list[list[int]]:
    """The cores as physical cores, each its hyperthreads, so that slots, and a run's cores, take
    whole ones. Linux numbers a machine's first threads 0..n-1 and their siblings n..2n-1: slots
    of consecutive numbers shared every physical core (its units, its caches), each slot's runs
    slowing the other's, and an agent's command on a run's idle sibling shared its core where
    SCHED_IDLE preempts nothing. A core alone where the topology is unknown."""
    def first_sibling(core: int) -> int:
        try:
            text = (CPU_SYSFS / f"cpu{core}" / "topology" / "thread_siblings_list").read_text()
            siblings = {n for part in text.strip().split(",") for n in cpu_range(part)}
        except (OSError, ValueError):
            return core
        return min(siblings & set(cores), default=core)
    groups: dict[int, list[int]] = {}
    for core in sorted(cores, key=lambda core: (first_sibling(core), core)):
        groups.setdefault(first_sibling(core), []).append(core)
    return list(groups.values())


def cpu_range(part: str) -> range:
    """One item of the kernel's CPU lists: '3' or '0-3'."""
    low, _, high = part.partition("-")
    return range(int(low), int(high or low) + 1)


def threads_env(n: int) -> dict:
    return {name: str(n) for name in THREAD_VARS}


def pick(cores: list[int] | None, start: int, n: int) -> list[int] | None:
    """n of the machine's cores from the start-th on, round them (shared if slots ask too many), or None."""
    return sorted({cores[(start + k) % len(cores)] for k in range(n)}) if cores else None


def train_command(program: Program, overrides: dict, seed: int, out: Path, budget: tuple | None = None,
                  data_dir: Path | None = None, snapshots: bool = True) -> list[str]:
    """The trainer invocation: the experiment contributes only `--set` overrides; the budget (the
    run's: a multiple of the program's for a compute multiplier), seed, data and shapes are the
    program's. A lab's run reads `data_dir` (its windows of the lab's train split, streams.export_stream,
    never its val) and evaluates nothing: the harness measures its checkpoint, and every
    `train.eval_every` steps a snapshot of its parameters (its learning curve), on the lab's val.
    Evaluations a trainer was asked for are time its code could spend on steps it does not
    report instead (1.4x the budget's read `better` by 0.16 bpb, unseen by the clock). By hand,
    or where the base commit's trainer predates snapshots (`snapshots`: takes_snapshots), the
    trainer evaluates as it did."""
    kind, amount = budget or (program.budget.per_run.kind, program.budget.per_run.value)
    amount, data, train = int(amount) if kind in ("steps", "tokens") else amount, program.data, program.train
    source, tokenizer = (str(data_dir), "bytes") if data_dir else (data.source, data.tokenizer)
    cmd = [sys.executable, "-m", "trainer", "train", "--preset", program.baseline.preset]
    cmd += [arg for key, value in overrides.items() for arg in ("--set", f"{key}={flag_value(value)}")]
    cmd += ["--seed", str(seed), "--out", str(out), "--quiet", BUDGET_FLAGS[kind], flag_value(amount),
            "--data", source, "--tokenizer", tokenizer,
            "--batch-size", str(train.batch_size), "--seq-len", str(train.seq_len),
            "--device", train.device, "--dtype", train.dtype, "--matmul", train.matmul]
    if data_dir and snapshots:
        return cmd + ["--val-tokens", "0"] + (["--snapshot-every", str(train.eval_every)] if train.eval_every else [])
    return cmd + ["--val-tokens", str(data.val_tokens), "--confirm-tokens", str(data.val_tokens)] + \
        (["--eval-every", str(train.eval_every)] if train.eval_every else [])


def takes_snapshots(base_code: Path) -> bool:
    """Whether the base commit's trainer keeps parameter snapshots and can evaluate nothing
    (trainer/cli.py: --snapshot-every, --val-tokens 0). An older one is asked for its own
    evaluations, as before: a program started on it runs on."""
    try:
        return "--snapshot-every" in (base_code / "trainer" / "cli.py").read_text()
    except OSError:
        return False
