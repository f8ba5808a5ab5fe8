"""
Compute, recounted from a checkpoint's shapes, never as the run reports it: step 2 of the
harness's measurement (org/evaluator.py, in its process: `trainer` is the base commit's).

    recount(job, params, meta, cfg) -> {"flops_per_token", "steps", "checkpoint_step", "tokens",
                                        "flops", "params": {"total", "matmul"}}

nanochat's convention (trainer/flops.py): 6 * N_matmul + 12 * n_layer * n_embd * T a token, with
N_matmul counted from the tensors' shapes, whatever their names, and what the convention lets off
checked against the base model (charged). A problem with the run is a ValueError, one line.
"""
from __future__ import annotations

import re

import numpy as np

FREE_ALLOWANCE = 8  # vectors of n_embd a layer that a code arm may add uncharged (charged)


def recount(job: dict, params: dict, meta: dict, cfg) -> dict:
    """FLOPs per token from the checkpoint's shapes, the steps the budget allows at that rate (the
    checkpoint's own step count beside them, for the runner to hold against), parameter counts."""
    B, T = job["batch_size"], job["seq_len"]
    shapes = charged({name: tuple(a.shape) for name, a in params.items()}, cfg)
    fpt = flops_per_token(shapes, cfg, T)
    steps = budget_steps(job, fpt * B * T)
    steps = meta["step"] if steps is None else steps  # under a seconds budget the clock decided
    return {"flops_per_token": fpt, "steps": steps, "checkpoint_step": meta["step"], "tokens": steps * B * T,
            "flops": steps * B * T * fpt,
            "params": {"total": sum(int(a.size) for a in params.values()), "matmul": matmul_params(shapes)}}


def charged(shapes: dict, cfg) -> dict:
    """The shapes the recount charges. flops.py lets off embedding tables and tensors of under two
    dims (norms, biases, scalars); read off names and shapes alone, that let a forward pass
    multiply by a matrix stored flat, or kept in a table's extra rows, for free. So what such
    tensors hold beyond the base model's is charged as a matrix of that size, past FREE_ALLOWANCE
    (a few vectors a layer: a gain of a code arm's own stays free). A table of a code arm's own
    is charged too: the harness cannot tell a lookup from a product."""
    from trainer import flops
    from trainer.model import param_shapes
    if cfg is None:
        return shapes
    tables = getattr(flops, "EMBEDDING_TABLES", ("transformer.wte.weight", "transformer.wpe.weight"))

    def free(items) -> int:
        return sum(int(np.prod(s)) for name, s in items if len(s) < 2 or name in tables)

    extra = free(shapes.items()) - free(param_shapes(cfg))
    if extra > FREE_ALLOWANCE * cfg.n_layer * cfg.n_embd:
        shapes = {**shapes, "(tensors flops.py lets off, beyond the base model's)": (extra, 1)}
    # flops.py charges wte as the head (tied) where no lm_head.weight is: one named so, a (1,) of
    # no use, made the head free (8.6% of a d2's FLOPs a token; 19.5% of a d12's at 32K words)
    # (a head of its own maps to every word: its rows are the base's wte's, however it is factored)
    head, words = shapes.get("lm_head.weight"), dict(param_shapes(cfg)).get("transformer.wte.weight")
    if head is not None and words is not None and (len(head) < 2 or head[0] < words[0]):
        matrix = int(np.prod(head)) if len(head) >= 2 else 0
        shapes = {**shapes, "(the head, as wte: lm_head.weight is no head)": (max(0, int(np.prod(words)) - matrix), 1)}
    return shapes


def matmul_params(shapes: dict) -> int:
    from trainer import flops
    if hasattr(flops, "matmul_params_of"):
        return flops.matmul_params_of(shapes)
    raise ValueError("the base commit's trainer/flops.py cannot count FLOPs from shapes (an older nanolab)")


def flops_per_token(shapes: dict, cfg, seq_len: int) -> int:
    """6 * N_matmul (from the checkpoint's shapes) + 12 * n_layer * n_embd * T, as flops.py."""
    from trainer import flops
    layers = {m.group(1) for name in shapes if (m := re.match(r"transformer\.h\.(\d+)\.", name))}
    n_layer = max(cfg.n_layer if cfg else 0, len(layers))
    n_embd = cfg.n_embd if cfg else shapes.get("transformer.wte.weight", (0, 0))[-1]
    return flops.flops_per_token_of(shapes, n_layer, n_embd, seq_len) if hasattr(flops, "flops_per_token_of") \
        else 6 * matmul_params(shapes) + 12 * n_layer * n_embd * seq_len


def budget_steps(job: dict, flops_per_step: int) -> int | None:
    """The steps the program's per-run budget buys (None under a seconds budget: the clock decides)."""
    kind, value = job["budget_kind"], float(job["budget"])
    tokens_per_step = job["batch_size"] * job["seq_len"]
    return {"flops": lambda: int(value // flops_per_step), "tokens": lambda: int(value // tokens_per_step),
            "steps": lambda: int(value), "seconds": lambda: None}[kind]()
