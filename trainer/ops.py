"""
The GPT's ops, each a forward/backward pair with the math visible.

Forward functions return (out, cache); backward functions take (dout, cache) and return the
gradients of their inputs (and of their parameters, if any). Caches hold what the backward
needs, computed once in the forward. Shapes: B batch, T time, C channels, H query heads,
KV key/value heads, D head dim, V vocab. Everything works on numpy and cupy arrays alike.
"""
from __future__ import annotations

import math

from trainer.backend import scatter_add_rows, xp_of  # noqa: F401 (an op, the twin of cpu_kernels')

# ----------------------------------------------------------------------------------------
# linear: y = x W^T + b, weights in PyTorch layout (out, in)
# Every matmul of the model goes through a `matmul(a, b, out=None)` argument: plain float32 by
# default, or one that rounds its inputs to TF32 or bfloat16 first (trainer/model.py, --matmul).


def matmul(a, b, out=None):
    return xp_of(a).matmul(a, b, out=out)


def linear_forward(x, w, b=None, matmul=matmul):
    # x (..., in), w (out, in) -> y (..., out); flattened to 2-D so it is one BLAS call
    y = matmul(x.reshape(-1, x.shape[-1]), w.T)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[0])


def linear_backward(dy, x, w, dw, db=None, matmul=matmul):
    """Writes dW (and db) in place, returns dx. dy (..., out), x (..., in)."""
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    matmul(dy2.T, x2, out=dw)               # dW = dy^T x
    if db is not None:
        dy2.sum(axis=0, out=db)
    return matmul(dy2, w).reshape(*dy.shape[:-1], w.shape[1])   # dx = dy W


def round_mantissa(x, keep):
    """x rounded to `keep` stored mantissa bits, to nearest with ties to even, in its own dtype:
    keep=7 gives bfloat16's values, keep=10 TF32's. A matmul of rounded float32 inputs with
    float32 accumulation is what tensor cores compute (products of two such values are exact in
    float32); float64 serves the exact tests. NaN stays NaN; as in a conversion, the largest
    finite values may round to inf. Works on the bit patterns: adding half an ulp of the kept
    width (minus one, plus the kept last bit: ties to even) and clearing the dropped bits."""
    xp = xp_of(x)
    if x.dtype not in (xp.float32, xp.float64):
        raise ValueError(f"rounding matmul inputs needs float32 or float64, got {x.dtype}")
    bits, word = (23, xp.uint32) if x.dtype == xp.float32 else (52, xp.uint64)
    drop, ones = bits - keep, (1 << (8 * x.itemsize)) - 1
    u = x.view(word)
    r = u + word((1 << (drop - 1)) - 1) + ((u >> word(drop)) & word(1))   # wraps only for NaNs
    r &= word((ones << drop) & ones)
    return xp.where(xp.isnan(x), x, r.view(x.dtype))

# ----------------------------------------------------------------------------------------
# norms over the last dim: parameter-free RMSNorm (nanochat) and LayerNorm (GPT-2)


def rmsnorm_forward(x, eps):
    # y = x / sqrt(mean(x^2) + eps)
    rstd = 1.0 / xp_of(x).sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    y = x * rstd
    return y, (y, rstd)


def rmsnorm_backward(dy, cache):
    # dx = rstd * (dy - y * mean(dy * y))
    y, rstd = cache
    return rstd * (dy - y * (dy * y).mean(axis=-1, keepdims=True))


def layernorm_forward(x, w, b, eps=1e-5):
    # y = (x - mean) / sqrt(var + eps) * w + b, biased variance as PyTorch
    xp = xp_of(x)
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xhat = xc * rstd
    y = xhat * w
    if b is not None:
        y += b
    return y, (xhat, rstd, w)


def layernorm_backward(dy, cache, dw, db=None):
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    (dy * xhat).reshape(-1, C).sum(axis=0, out=dw)
    if db is not None:
        dy.reshape(-1, C).sum(axis=0, out=db)
    dxhat = dy * w
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    return rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                   - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))

# ----------------------------------------------------------------------------------------
# rotary embeddings, half-split layout: (x1, x2) = first and second half of each head


def rotary_tables(T, D, base, xp, dtype):
    # angle[t, j] = t * base^(-2j/D), j < D/2; tables (T, 1, D/2) broadcast over heads
    inv_freq = base ** (-xp.arange(0, D, 2, dtype=xp.float64) / D)
    angle = xp.arange(T, dtype=xp.float64)[:, None] * inv_freq[None, :]
    return xp.cos(angle)[:, None, :].astype(dtype), xp.sin(angle)[:, None, :].astype(dtype)


def rotary_forward(x, cos, sin):
    # x (B, T, heads, D): y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return xp_of(x).concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


def rotary_backward(dy, cos, sin):
    # the transpose of a rotation: dx1 = dy1 cos - dy2 sin, dx2 = dy1 sin + dy2 cos
    h = dy.shape[-1] // 2
    dy1, dy2 = dy[..., :h], dy[..., h:]
    return xp_of(dy).concatenate([dy1 * cos - dy2 * sin, dy1 * sin + dy2 * cos], axis=-1)

# ----------------------------------------------------------------------------------------
# causal self-attention with grouped key/value heads (GQA), in blocks of queries
# Query head h reads kv head h // G, G = H/KV. Grouping the G query heads of one kv head
# together, (B, KV, G*n, D), turns GQA into plain batched matmuls with no repeated k or v.
# Causality in blocks: the queries of block i (times [i*n, (i+1)*n)) only see keys before
# (i+1)*n, so the scores above the diagonal blocks are never computed. With 2 blocks that
# skips 1/4 of the attention matmuls and softmax; the diagonal blocks keep the mask.


def softmax_forward(s, mask):
    # in place on the scores s (..., T, T): p = softmax(s + mask) over the last dim
    s += mask
    s -= s.max(axis=-1, keepdims=True)
    p = xp_of(s).exp(s, out=s)
    p /= p.sum(axis=-1, keepdims=True)
    return p


def softmax_backward(dp, p):
    # in place on dp: ds = p * (dp - sum(dp * p)); masked entries have p = 0
    dp -= (dp * p).sum(axis=-1, keepdims=True)
    dp *= p
    return dp


def query_blocks(T: int) -> int:
    """Query blocks for T positions: 2 for long sequences (measured on 2 cores at T=256: 2 blocks
    beat 1, while 4 made the matmuls too small to pay); short ones gain nothing."""
    return 2 if T % 2 == 0 and T >= 128 else 1


def attention_forward(q, k, v, mask, softmax=softmax_forward, matmul=matmul):
    # q (B, T, H, D), k v (B, T, KV, D), mask (T, T) causal additive (0 or -inf) -> y (B, T, H, D)
    xp = xp_of(q)
    B, T, H, D = q.shape
    KV = k.shape[2]
    G, nb = H // KV, query_blocks(T)
    n = T // nb
    # queries as (B, KV, block, G*n, D): each block's G*n rows contiguous. The 1/sqrt(D) scale
    # goes on q, not on the (T, T) scores: a smaller pass
    qb = (q.reshape(B, nb, n, KV, G, D).transpose(0, 3, 1, 4, 2, 5) * (1.0 / math.sqrt(D))).reshape(B, KV, nb, G * n, D)
    kt = k.transpose(0, 2, 3, 1)                                   # (B, KV, D, T)
    vt = v.transpose(0, 2, 1, 3)                                   # (B, KV, T, D)
    yb = xp.empty_like(qb)
    probs = []
    for i in range(nb):
        lo, hi = i * n, (i + 1) * n                                # queries [lo, hi) see keys [0, hi)
        s = matmul(qb[:, :, i], kt[..., :hi])                      # (B, KV, G*n, hi) scaled scores
        p = softmax(s.reshape(B, KV, G, n, hi), mask[lo:hi, :hi]).reshape(B, KV, G * n, hi)
        yb[:, :, i] = matmul(p, vt[:, :, :hi])                     # (B, KV, G*n, D)
        probs.append(p)
    y = yb.reshape(B, KV, nb, G, n, D).transpose(0, 2, 4, 1, 3, 5).reshape(B, T, H, D)
    return y, (qb, kt, vt, probs)


def attention_backward(dy, cache, softmax_backward=softmax_backward, matmul=matmul):
    qb, kt, vt, probs = cache                                      # qb holds the scaled q
    xp = xp_of(dy)
    B, T, H, D = dy.shape
    KV, nb = kt.shape[1], len(probs)
    G, n = H // KV, T // nb
    dyb = dy.reshape(B, nb, n, KV, G, D).transpose(0, 3, 1, 4, 2, 5).reshape(B, KV, nb, G * n, D)
    dqb = xp.empty_like(qb)
    dk, dv = xp.zeros((B, KV, T, D), dtype=dy.dtype), xp.zeros((B, KV, T, D), dtype=dy.dtype)
    for i, p in enumerate(probs):
        hi = (i + 1) * n
        dv[:, :, :hi] += matmul(p.transpose(0, 1, 3, 2), dyb[:, :, i])  # sums over the G heads too
        dp = matmul(dyb[:, :, i], vt[:, :, :hi].transpose(0, 1, 3, 2))   # (B, KV, G*n, hi)
        ds = softmax_backward(dp, p)                               # in place
        dqb[:, :, i] = matmul(ds, kt[..., :hi].transpose(0, 1, 3, 2))
        dk[:, :, :hi] += matmul(ds.transpose(0, 1, 3, 2), qb[:, :, i])
    dqb *= 1.0 / math.sqrt(D)                                      # through the scale on q
    dq = dqb.reshape(B, KV, nb, G, n, D).transpose(0, 2, 4, 1, 3, 5).reshape(B, T, H, D)
    return dq, dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)


# ----------------------------------------------------------------------------------------
# MLP nonlinearities


def relu2_forward(h):
    # a = relu(h)^2
    r = xp_of(h).maximum(h, 0)
    return r * r, r


def relu2_backward(da, r):
    return da * (2 * r)


GELU_K = math.sqrt(2 / math.pi)


def gelu_forward(h):
    # a = 0.5 h (1 + tanh(k (h + 0.044715 h^3))), the tanh form of GPT-2
    t = xp_of(h).tanh(GELU_K * (h + 0.044715 * h * h * h))
    return 0.5 * h * (1 + t), (h, t)


def gelu_backward(da, cache):
    h, t = cache
    dt = GELU_K * (1 + 3 * 0.044715 * h * h) * (1 - t * t)
    return da * (0.5 * (1 + t) + 0.5 * h * dt)

# ----------------------------------------------------------------------------------------
# logit softcap and cross-entropy


def softcap_forward(logits, cap):
    # z = cap * tanh(logits / cap)
    t = xp_of(logits).tanh(logits / cap)
    return cap * t, t


def softcap_backward(dz, t):
    return dz * (1 - t * t)


def cross_entropy_forward(z, targets):
    # z (N, V) logits, targets (N,) -> per-token losses (N,) = logsumexp(z) - z[target]
    xp = xp_of(z)
    rows = xp.arange(z.shape[0])
    zmax = z.max(axis=-1, keepdims=True)
    target_logits = z[rows, targets]
    e = z - zmax                                                   # one (N, V) temporary,
    xp.exp(e, out=e)                                               # reused for exp and probs
    s = e.sum(axis=-1, keepdims=True)
    losses = (xp.log(s) + zmax)[:, 0] - target_logits
    e /= s
    return losses, (e, targets)


def cross_entropy_backward(cache, scale):
    # d(scale * sum losses)/dz = scale * (softmax(z) - onehot(target)), written over the probs
    probs, targets = cache
    xp = xp_of(probs)
    dz = probs
    dz[xp.arange(len(targets)), targets] -= 1
    dz *= scale
    return dz
