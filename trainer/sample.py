"""Generate text from a trained model: temperature and top-k sampling, one token at a time."""
from __future__ import annotations

import numpy as np

from trainer.backend import to_numpy


def generate(model, tokenizer, prompt: str, n_tokens: int, temperature: float = 0.8,
             top_k: int = 40, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    ids = list(tokenizer.encode(prompt)) or [0]
    T = model.cfg.sequence_len
    for _ in range(n_tokens):
        window = np.asarray(ids[-T:])[None, :]                       # (1, t)
        logits = to_numpy(model.forward(window))[0, -1].astype(np.float64)  # (V,)
        ids.append(sample_token(logits, temperature, top_k, rng))
    return tokenizer.decode(ids)


def sample_token(logits, temperature, top_k, rng) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    if top_k and top_k < len(logits):
        cutoff = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < cutoff, -np.inf, logits)
    p = np.exp((logits - logits.max()) / temperature)
    return int(rng.choice(len(p), p=p / p.sum()))
