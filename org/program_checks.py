"""
What a program is checked against beyond its own fields, before it starts: the trainer's word on
its configs (make_config), that one step fits its budget, and that its data source can be read.
Each problem is one ProgramError line naming the file and the field.
"""
from __future__ import annotations

import contextlib
import glob
from pathlib import Path

from org.program import Program, ProgramError


def data_source_problem(source: str, root: Path, window: int | None = None) -> str | None:
    """Why the program's data source cannot be read (every run would fail), or None. A relative
    path is the lab's: runs see the committed tree. `window`: train.seq_len, a window of which
    the text's val split (a twentieth of it) must hold."""
    if source == "pystdlib":
        return None
    found = next((s for s in (str(Path(root) / source), source) if glob.glob(s)), None)
    if found is None:
        return f"{source!r} matches no file or folder (expected pystdlib, a text file or folder, or llm.c .bin shards)"
    try:
        paths = [Path(p).resolve(strict=True) for p in glob.glob(found)]
    except (OSError, RuntimeError):  # (RuntimeError: a loop, Python 3.11)
        return f"{source!r} leads through a symbolic link to no file (a loop, or a target gone)"
    if any(Path(root).resolve().is_relative_to(p) for p in paths):  # ("", "."): its ledger and harness data its text
        return f"{source!r} holds the lab itself (its .lab: the ledger, the harness's data); name the text's own folder"
    if any(not (p.is_file() or p.is_dir()) or p.is_file() and p.stat().st_size == 0 for p in paths):
        return f"{source!r} is not a file of text or a folder (a device, or empty)"
    from trainer.shards import TOKENIZER_FILES, find_shards
    try:
        shards = find_shards(found)
    except ValueError as e:
        return str(e)
    if shards and not any((shards[0].parent / name).is_file() for name in TOKENIZER_FILES):
        # (every run would train, and then have no val_bpb to be judged on)
        return (f"{source!r} is llm.c shards with no {' or '.join(TOKENIZER_FILES)} beside them: val_bpb needs "
                f"the bytes of each token id (llm.c's data scripts write gpt2_tokenizer.bin)")
    return None if shards else text_problem(source, paths, window)


def text_problem(source: str, paths: list[Path], window: int | None) -> str | None:
    """A text source with no text file (as the trainer reads a folder: trainer/data.py's
    folder_documents), or too little text for its val split to hold a window: an empty folder
    and a 2-byte file were started, every run an `error`, and the program's name spent."""
    need = 20 * (window + 1) if window else 1  # (val is a twentieth; a token is a byte at most)
    text, found = 0, False
    for path in text_files(paths):
        with contextlib.suppress(OSError):
            with open(path, "rb") as f:
                head = f.read(8192)
            if not head or b"\0" in head:  # (empty, or binary as git and the trainer tell it)
                continue
            found, text = True, text + path.stat().st_size
        if found and text >= need:
            return None
    if not found:
        return f"{source!r} holds no text files"
    return (f"{source!r} holds {text} bytes of text: its val split (about a twentieth) holds no window of "
            f"train.seq_len {window}; at least {need} bytes")


def text_files(paths: list[Path]):
    """The files the trainer reads of these paths (trainer/data.py's folder_files)."""
    from trainer.data import folder_files
    for path in paths:
        yield from [path] if path.is_file() else folder_files(path)


def check_with_trainer(program: Program, source: str = "program") -> None:
    """Ask the trainer's make_config whether the baseline and each override-only variant make a
    valid config, so a typo fails now rather than in every run. A variant with a ref may add
    config keys in its own code, so its overrides are checked by its runs instead."""
    arms = [("baseline.overrides", {})] + [
        (f"variants[{i}].overrides", v.overrides) for i, v in enumerate(program.variants) if not v.ref]
    arms += [("tune", point) for point in program.grid_points() if point]
    arms += [(f"ladder[{i}]", rung) for i, rung in enumerate(program.ladder)]
    arms += [(f"candidates[{i}].overrides", c.overrides) for i, c in enumerate(program.candidates)
             if c.overrides and not c.patch]  # a patch may add the keys it sets
    for field, overrides in arms:
        problem = trainer_rejects(program, overrides)
        if problem:
            field = "baseline.preset" if "preset" in problem else field
            raise ProgramError(f"{source}: {field}: the trainer rejects it: {problem}")
    check_budget_fits_a_step(program, source)
    for i, rung in enumerate(program.ladder):  # a rung no run can take a step at: every rung run fails
        check_budget_fits_a_step(program, f"{source}: ladder[{i}]", rung, "at this rung")
    for i, factor in enumerate(program.compute_multiplier.budgets if program.compute_multiplier else []):
        check_budget_fits_a_step(program, f"{source}: compute_multiplier.budgets[{i}]", None,
                                 f"of the baseline at {factor:g}x the budget", factor)


def check_budget_fits_a_step(program: Program, source: str, rung: dict | None = None,
                             where: str = "of the baseline", factor: float = 1.0) -> None:
    """A FLOP or token budget smaller than one training step trains nothing: every run fails."""
    per_run, train = program.budget.per_run, program.train
    if per_run.kind not in ("flops", "tokens"):
        return
    tokens = train.batch_size * train.seq_len
    step = tokens
    if per_run.kind == "flops":
        try:
            from trainer.config import make_config
            from trainer.flops import flops_per_token
        except ImportError:
            return
        tokenizer = program.data.tokenizer
        vocab = int(tokenizer.split(":")[1]) if tokenizer.startswith("bpe:") and tokenizer[4:].isdigit() else 256
        overrides = {"vocab_size": vocab, **program.baseline.overrides, **(rung or {}), "sequence_len": train.seq_len}
        try:
            step = tokens * flops_per_token(make_config(program.baseline.preset, **overrides))
        except (ValueError, TypeError) as e:  # (its train.seq_len and data.tokenizer's vocabulary make no model)
            raise ProgramError(f"{source}: train.seq_len {train.seq_len} and data.tokenizer {tokenizer}: the "
                               f"trainer rejects the baseline{'' if rung is None else ' at this rung'}: {e}") from None
    if per_run.value * factor < step:
        raise ProgramError(f"{source}: budget.per_run.{per_run.kind}: {per_run.value * factor:g} is smaller than one "
                           f"step {where} ({step:.3g} {per_run.kind} at batch_size {train.batch_size} "
                           f"x seq_len {train.seq_len})")


def trainer_rejects(program: Program, overrides: dict) -> str | None:
    """The trainer's complaint about baseline + these overrides, or None if they are valid
    (or if no trainer is importable: then the run itself will say)."""
    try:
        from trainer.config import make_config
    except ImportError:
        return None
    try:
        make_config(program.baseline.preset, **{**program.baseline.overrides, **overrides})
    except (ValueError, TypeError) as e:
        return str(e)
    return None
