"""
The evaluation every verdict rests on (a protected file: agents cannot change it).

    val_bpb = sum of next-token cross-entropy in nats / (ln 2 * UTF-8 bytes of the target tokens)

over a fixed number of tokens of a split, in fixed windows, the same for every run. The loss is
computed here from the model's logits, not taken from the model, so a change to the model's
loss code cannot change the metric.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from trainer.backend import to_numpy, xp_of
from trainer.data import eval_batches, eval_windows

# what a run's result.json fingerprints as "the evaluation code": this file, the data pipeline
# and the FLOP accounting that turns a budget into steps
EVAL_FILES = ("eval.py", "data.py", "flops.py")


def evaluate(model, tokens, token_bytes, n_tokens: int, batch_size: int, seq_len: int) -> dict:
    """val_loss (mean nats per token) and val_bpb (None when the tokenizer's bytes are unknown)."""
    xp = model.xp
    nats, n, nbytes = 0.0, 0, 0
    tb = None if token_bytes is None else xp.asarray(token_bytes)
    for x, y in eval_batches(tokens, n_tokens, batch_size, seq_len):
        logits = model.forward(x)                                    # (B, T, V)
        y = xp.asarray(y)
        nats += float(cross_entropy_sum(logits, y))
        n += y.size
        if tb is not None:
            nbytes += int(tb[y].sum())
    if n == 0:
        raise ValueError(f"the evaluation split has fewer than {seq_len + 1} tokens")
    val_bpb = nats / (math.log(2) * nbytes) if nbytes else None
    return {"val_loss": nats / n, "val_bpb": val_bpb, "eval_tokens": n, "eval_bytes": nbytes}


def cross_entropy_sum(logits, targets):
    """Summed -log softmax(logits)[target], computed in float64."""
    xp = xp_of(logits)
    z = logits.reshape(-1, logits.shape[-1]).astype(xp.float64)
    t = targets.reshape(-1)
    zmax = z.max(axis=-1)
    lse = xp.log(xp.exp(z - zmax[:, None]).sum(axis=-1)) + zmax
    return (lse - z[xp.arange(len(t)), t]).sum()


def eval_fingerprint() -> str:
    """sha256 over the evaluation code, so results computed by different evaluations never mix."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in EVAL_FILES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()


def tokens_fingerprint(tokens, n_tokens: int, seq_len: int) -> str:
    """sha256 of exactly the tokens an evaluation of n_tokens in windows of seq_len reads."""
    rows = eval_windows(tokens, n_tokens, seq_len)[:, None] + np.arange(seq_len + 1)
    return hashlib.sha256(np.ascontiguousarray(to_numpy(tokens[rows])).tobytes()).hexdigest()
