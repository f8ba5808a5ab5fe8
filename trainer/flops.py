"""
FLOP accounting, nanochat's convention, fixed for every ablation (a protected file):

    flops per token = 6 * N_matmul + 12 * n_layer * n_embd * T

N_matmul counts the weights of every Linear layer (block matrices and the head, the padded
vocab included; a tied head counts once as the head) and excludes embedding lookups, norms,
biases and scalars. The attention term is PaLM's: full T x T scores and values, forward and
backward, the causal half not subtracted. A FLOP budget is converted to steps with this number.

The harness recounts it from a checkpoint's parameter shapes (matmul_params_of): every tensor
of two or more dimensions but the embedding tables counts, wherever it sits, so a weight moved
out of the blocks or renamed is still paid for.
"""
from __future__ import annotations

from trainer.config import Config
from trainer.model import param_shapes


EMBEDDING_TABLES = ("transformer.wte.weight", "transformer.wpe.weight")


def matmul_params(cfg: Config) -> int:
    return matmul_params_of(dict(param_shapes(cfg)))


def matmul_params_of(shapes: dict[str, tuple]) -> int:
    """N_matmul from {name: shape}: every tensor of 2+ dims except the embedding tables, plus the
    head (lm_head is such a tensor; a tied head is wte, counted once more as the head)."""
    n = sum(_numel(s) for name, s in shapes.items() if len(s) >= 2 and name not in EMBEDDING_TABLES)
    if "lm_head.weight" not in shapes:
        n += _numel(shapes["transformer.wte.weight"])
    return n


def total_params(cfg: Config) -> int:
    return sum(_numel(shape) for _, shape in param_shapes(cfg))


def flops_per_token(cfg: Config, seq_len: int | None = None) -> int:
    return flops_per_token_of(dict(param_shapes(cfg)), cfg.n_layer, cfg.n_embd, seq_len or cfg.sequence_len)


def flops_per_token_of(shapes: dict[str, tuple], n_layer: int, n_embd: int, seq_len: int) -> int:
    return 6 * matmul_params_of(shapes) + 12 * n_layer * n_embd * seq_len


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
