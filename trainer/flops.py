"""
FLOP accounting, nanochat's convention, fixed for every ablation (a protected file):

    flops per token = 6 * N_matmul + 12 * n_layer * n_embd * T

N_matmul counts the weights of every Linear layer (block matrices and the head, the padded
vocab included; a tied head counts once as the head) and excludes embedding lookups, norms,
biases and scalars. The attention term is PaLM's: full T x T scores and values, forward and
backward, the causal half not subtracted. A FLOP budget is converted to steps with this number.
"""
from __future__ import annotations

from trainer.config import Config
from trainer.model import param_shapes


def matmul_params(cfg: Config) -> int:
    n = 0
    for name, shape in param_shapes(cfg):
        if name.startswith("transformer.h.") and len(shape) == 2:
            n += shape[0] * shape[1]
    return n + cfg.padded_vocab_size * cfg.n_embd  # the head: lm_head, or wte when tied


def total_params(cfg: Config) -> int:
    return sum(_numel(shape) for _, shape in param_shapes(cfg))


def flops_per_token(cfg: Config, seq_len: int | None = None) -> int:
    T = seq_len or cfg.sequence_len
    return 6 * matmul_params(cfg) + 12 * cfg.n_layer * cfg.n_embd * T


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
