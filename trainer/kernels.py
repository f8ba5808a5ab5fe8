"""
Fused CUDA kernels for the GPU path, each with a NumPy twin that defines what it computes.
(The CPU path's fused kernels are in trainer/cpu_kernels.py, with the same twins.)

Every public function here has the signature and return values of its twin. It runs the CUDA
kernel when its arrays are CuPy arrays (float32/float64) on a machine with a CUDA device, and the
twin otherwise: NumPy arrays always take the twin, so importing and calling this module on a
CPU-only machine without CuPy works (CuPy is imported lazily, only for CuPy arrays).

    function                         twin                              what the kernel saves
    rmsnorm_forward / _backward      ops.rmsnorm_forward / _backward   one warp per row: 1 read
                                                                       of x (+1 from cache), 1 write
    rotary_forward / _backward       ops.rotary_forward / _backward    reads q/k straight out of the
                                                                       qkv slice, no concatenate
    relu2_forward / _backward        ops.relu2_forward / _backward     one pass instead of two
    softcap_cross_entropy_forward    np_softcap_cross_entropy_forward  one pass over the (N, V)
                                     (= ops.softcap_forward +           logits, online max/sum; no
                                        ops.cross_entropy_forward)      softcapped or probs copy
    softcap_cross_entropy_backward   np_softcap_cross_entropy_backward one pass, dlogits recomputed
                                     (= ops.cross_entropy_backward +    from logits and the cached
                                        ops.softcap_backward)           per-row logsumexp
    adamw_update                     optim.adamw_update                one pass over p, g, m, v
    muon_momentum                    optim.muon_momentum               momentum + Nesterov in one pass
    muon_apply                       optim.muon_apply                  cautious decay + step, one pass
    round_mantissa                   ops.round_mantissa                one pass instead of five
                                                                       (float32; --matmul)
    scatter_add_rows                 backend.scatter_add_rows          not speed: the embedding
                                                                       gradient summed in a fixed
                                                                       order (atomics are not)

Kernels are compiled lazily with cupy.RawModule, once per dtype, from trainer/cuda_source.py (the
CUDA C of every kernel, `real` typedef'd to float or double). trainer/nvrtc.py compiles the same source with the
low-level NVRTC library and needs no GPU: the tests use it to check every kernel compiles.
`available(xp)` says whether the kernels will be used for that array module.
Set NANOLAB_KERNELS=0 to force the twins everywhere.
"""
from __future__ import annotations

import math
import os

import numpy as np

from trainer import ops, optim
from trainer.backend import contiguous_or_transposed, xp_of
from trainer.cuda_source import DTYPES, cuda_source

# ----------------------------------------------------------------------------------------
# runtime: lazy RawModules, launching, dispatch

_modules: dict = {}
_available: bool | None = None
_THREADS = 256          # elementwise kernels
_ROWS_PER_BLOCK = 8     # warp-per-row kernels: 256 threads


def available(xp) -> bool:
    """True when `xp` is CuPy with a CUDA device, i.e. the public functions run kernels."""
    global _available
    if getattr(xp, "__name__", "") != "cupy" or os.environ.get("NANOLAB_KERNELS", "1") == "0":
        return False
    if _available is None:
        try:
            _available = xp.cuda.runtime.getDeviceCount() > 0
        except Exception:  # no driver, no device
            _available = False
    return _available


def _function(name: str, dtype):
    import cupy
    key = np.dtype(dtype).name
    if key not in _modules:
        _modules[key] = cupy.RawModule(code=cuda_source(key))
    return _modules[key].get_function(name)


def _launch(name: str, dtype, grid: tuple, block: tuple, args: tuple):
    """Run kernel `name` of the `dtype` module. Scalars in args must be typed numpy scalars
    matching the C signature (np.int32 for int, np.int64 for long long, _real() for real)."""
    _function(name, dtype)(grid, block, args)


def _on_device(a) -> bool:
    """A CuPy array on a machine with a CUDA device (the tests swap this for a host emulator)."""
    return type(a).__module__.startswith("cupy") and available(xp_of(a))


def _use_kernels(*arrays) -> bool:
    a = arrays[0]
    return (a.dtype.name in DTYPES and a.size > 0 and all(b.dtype == a.dtype for b in arrays)
            and _on_device(a))


def _contiguous(*arrays) -> bool:
    return all(a.flags.c_contiguous for a in arrays)


def _real(dtype, value):
    return np.dtype(dtype).type(value)


def _blocks(n: int) -> int:
    """Grid for the elementwise kernels; their grid-stride loops cover the rest."""
    return max(1, min(-(-n // _THREADS), 65535))

# ----------------------------------------------------------------------------------------
# RMSNorm, rotary, ReLU^2: twins in trainer/ops.py


def rmsnorm_forward(x, eps):
    """Parameter-free RMSNorm over the last dim. Twin: ops.rmsnorm_forward.
    Returns (y, (y, rstd)), rstd of shape (..., 1)."""
    if not _use_kernels(x):
        return ops.rmsnorm_forward(x, eps)
    xp = xp_of(x)
    x = xp.ascontiguousarray(x)
    C = x.shape[-1]
    rows = x.size // C
    y = xp.empty_like(x)
    rstd = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)
    _launch("rmsnorm_fwd", x.dtype, (-(-rows // _ROWS_PER_BLOCK),), (32 * _ROWS_PER_BLOCK,),
            (x, y, rstd, np.int64(rows), np.int32(C), _real(x.dtype, eps)))
    return y, (y, rstd)


def rmsnorm_backward(dy, cache):
    """Twin: ops.rmsnorm_backward. dx = rstd * (dy - y * mean(dy * y))."""
    y, rstd = cache
    if not _use_kernels(dy, y, rstd):
        return ops.rmsnorm_backward(dy, cache)
    xp = xp_of(dy)
    dy, y, rstd = (xp.ascontiguousarray(a) for a in (dy, y, rstd))
    C = y.shape[-1]
    rows = y.size // C
    dx = xp.empty_like(y)
    _launch("rmsnorm_bwd", y.dtype, (-(-rows // _ROWS_PER_BLOCK),), (32 * _ROWS_PER_BLOCK,),
            (dy, y, rstd, dx, np.int64(rows), np.int32(C)))
    return dx


def _rotary(x, cos, sin, sign):
    xp = xp_of(x)
    B, T, H, D = x.shape
    half = D // 2
    isz = x.dtype.itemsize
    sB, sT, sH, sD = (s // isz for s in x.strides)
    # read in place when each (b, t) row is H*D contiguous values at a fixed stride (a q or k
    # slice of the fused qkv activations); otherwise copy first
    if not (sD == 1 and sH == D and sT >= H * D and (B == 1 or sB == T * sT)):
        x = xp.ascontiguousarray(x)
        sT = H * D
    cos = xp.ascontiguousarray(cos, dtype=x.dtype).reshape(-1, half)
    sin = xp.ascontiguousarray(sin, dtype=x.dtype).reshape(-1, half)
    if cos.shape[0] < T or sin.shape[0] < T:
        raise ValueError(f"rotary tables have {cos.shape[0]} positions, need {T}")
    y = xp.empty((B, T, H, D), dtype=x.dtype)
    n = B * T * H * half
    _launch("rotary", x.dtype, (_blocks(n),), (_THREADS,),
            (x, np.int64(sT), y, cos, sin, _real(x.dtype, sign),
             np.int64(B * T), np.int32(T), np.int32(H), np.int32(half)))
    return y


def rotary_forward(x, cos, sin):
    """x (B, T, heads, D), tables (T, 1, D/2). Twin: ops.rotary_forward."""
    if not _use_kernels(x) or x.ndim != 4:
        return ops.rotary_forward(x, cos, sin)
    return _rotary(x, cos, sin, 1.0)


def rotary_backward(dy, cos, sin):
    """Twin: ops.rotary_backward (the forward with sin negated)."""
    if not _use_kernels(dy) or dy.ndim != 4:
        return ops.rotary_backward(dy, cos, sin)
    return _rotary(dy, cos, sin, -1.0)


def relu2_forward(h):
    """a = relu(h)^2. Twin: ops.relu2_forward. Returns (a, r = relu(h))."""
    if not _use_kernels(h):
        return ops.relu2_forward(h)
    xp = xp_of(h)
    h = xp.ascontiguousarray(h)
    a, r = xp.empty_like(h), xp.empty_like(h)
    _launch("relu2_fwd", h.dtype, (_blocks(h.size),), (_THREADS,), (h, a, r, np.int64(h.size)))
    return a, r


def relu2_backward(da, r):
    """dh = da * 2r. Twin: ops.relu2_backward."""
    if not _use_kernels(da, r):
        return ops.relu2_backward(da, r)
    xp = xp_of(da)
    da, r = xp.ascontiguousarray(da), xp.ascontiguousarray(r)
    dh = xp.empty_like(r)
    _launch("relu2_bwd", r.dtype, (_blocks(r.size),), (_THREADS,), (da, r, dh, np.int64(r.size)))
    return dh

# ----------------------------------------------------------------------------------------
# softcap + cross-entropy, fused over the vocab. Cache: (logits, lse, targets, cap), where
# logits are the raw (pre-softcap) logits as (N, V) and lse (N,) the logsumexp of each row.


def np_softcap_cross_entropy_forward(logits, targets, cap):
    """Twin of softcap_cross_entropy_forward: ops.softcap_forward (when cap > 0) followed by
    ops.cross_entropy_forward, caching the row logsumexp instead of the probabilities."""
    xp = xp_of(logits)
    V = logits.shape[-1]
    l2, targets = logits.reshape(-1, V), targets.reshape(-1)
    z = cap * xp.tanh(l2 / cap) if cap > 0 else l2
    zmax = z.max(axis=-1, keepdims=True)
    e = xp.exp(z - zmax)
    lse = xp.log(e.sum(axis=-1)) + zmax[:, 0]
    losses = lse - z[xp.arange(len(targets)), targets]
    return losses.reshape(logits.shape[:-1]), (l2, lse, targets, cap)


def np_softcap_cross_entropy_backward(cache, scale, out=None):
    """Twin of softcap_cross_entropy_backward: ops.cross_entropy_backward then
    ops.softcap_backward. Returns dlogits (N, V) of d(scale * sum(losses)); `out` may be the
    cached logits (overwritten)."""
    l2, lse, targets, cap = cache
    xp = xp_of(l2)
    if cap > 0:
        t = xp.tanh(l2 / cap)
        z = cap * t
    else:
        z = l2
    d = xp.exp(z - lse[:, None])
    d[xp.arange(len(targets)), targets] -= 1
    d *= scale
    if cap > 0:
        d *= 1 - t * t
    if out is None:
        return d
    out[...] = d
    return out


def softcap_cross_entropy_forward(logits, targets, cap):
    """logits (..., V) raw, targets (...) ints -> (per-token losses (...), cache); cap 0 = no
    softcap. Twin: np_softcap_cross_entropy_forward."""
    if not _use_kernels(logits):
        return np_softcap_cross_entropy_forward(logits, targets, cap)
    xp = xp_of(logits)
    V = logits.shape[-1]
    l2 = xp.ascontiguousarray(logits).reshape(-1, V)
    targets = xp.ascontiguousarray(targets.reshape(-1), dtype=xp.int64)
    N = l2.shape[0]
    if targets.shape[0] != N:
        raise ValueError(f"{N} rows of logits but {targets.shape[0]} targets")
    losses, lse = xp.empty(N, dtype=l2.dtype), xp.empty(N, dtype=l2.dtype)
    threads = min(1024, 32 * -(-V // 32))
    _launch("softcap_ce_fwd", l2.dtype, (N,), (threads,),
            (l2, targets, losses, lse, np.int32(V), _real(l2.dtype, cap)))
    return losses.reshape(logits.shape[:-1]), (l2, lse, targets, cap)


def softcap_cross_entropy_backward(cache, scale, out=None):
    """dlogits (N, V) of scale * sum(losses), through the softcap. `out` may be the cached
    logits, to write dlogits over them. Twin: np_softcap_cross_entropy_backward."""
    l2, lse, targets, cap = cache
    if not _use_kernels(l2, lse) or (out is not None and not _contiguous(out)):
        return np_softcap_cross_entropy_backward(cache, scale, out)
    xp = xp_of(l2)
    N, V = l2.shape
    if out is not None and out.shape != l2.shape:
        raise ValueError(f"out has shape {out.shape}, dlogits are {l2.shape}")
    d = xp.empty_like(l2) if out is None else out
    _launch("softcap_ce_bwd", l2.dtype, (N, -(-V // _THREADS)), (_THREADS,),
            (l2, xp.ascontiguousarray(targets, dtype=xp.int64), lse, d, np.int32(V),
             _real(l2.dtype, cap), _real(l2.dtype, scale)))
    return d

# ----------------------------------------------------------------------------------------
# optimizer updates, in place. Twins: the reference math in trainer/optim.py.


def adamw_update(p, grad, m, v, *, lr, beta1, beta2, eps, wd, t):
    """In place on p, m, v. Twin: optim.adamw_update."""
    if not (_use_kernels(p, grad, m, v) and _contiguous(p, grad, m, v)):
        return optim.adamw_update(p, grad, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps, wd=wd, t=t)
    def r(value):
        return _real(p.dtype, value)
    _launch("adamw", p.dtype, (_blocks(p.size),), (_THREADS,),
            (p, grad, m, v, np.int64(p.size), r(1 - lr * wd if wd else 1.0), r(beta1), r(1 - beta1),
             r(beta2), r(1 - beta2), r(lr / (1 - beta1 ** t)), r(1 / math.sqrt(1 - beta2 ** t)), r(eps)))


def muon_momentum(grad, buf, mu, out=None):
    """Twin: optim.muon_momentum."""
    if not (_use_kernels(grad, buf) and _contiguous(grad, buf)
            and (out is None or _contiguous(out))):
        return optim.muon_momentum(grad, buf, mu, out)
    u = xp_of(grad).empty_like(grad) if out is None else out
    _launch("muon_momentum", grad.dtype, (_blocks(grad.size),), (_THREADS,),
            (grad, buf, u, np.int64(grad.size), _real(grad.dtype, mu), _real(grad.dtype, 1 - mu)))
    return u


def muon_apply(p, x, lr, wd):
    """p (rows, cols) in place; x (rows, cols), e.g. orthogonalize()'s result (possibly a
    transposed view). Twin: optim.muon_apply."""
    if not (_use_kernels(p, x) and _contiguous(p) and p.ndim == 2):
        return optim.muon_apply(p, x, lr, wd)
    x, transposed = contiguous_or_transposed(x)
    rows, cols = p.shape
    _launch("muon_apply", p.dtype, (_blocks(p.size),), (_THREADS,),
            (p, x, np.int64(rows), np.int64(cols), np.int32(transposed),
             _real(p.dtype, lr), _real(p.dtype, wd)))


def round_mantissa(x, keep):
    """float32 x rounded to `keep` mantissa bits (7: bfloat16, 10: TF32). Twin: ops.round_mantissa.
    A transposed view keeps its layout."""
    if not (_use_kernels(x) and x.dtype == np.float32):
        return ops.round_mantissa(x, keep)
    src, transposed = contiguous_or_transposed(x)
    y = xp_of(x).empty_like(src)
    _launch("round_mantissa", x.dtype, (_blocks(y.size),), (_THREADS,), (src, y, np.int64(y.size), np.int32(keep)))
    return y.T if transposed else y


def scatter_add_rows(dst, idx, src):
    """dst[idx[n]] += src[n] for every row n, in order of n: dst (V, C), idx (N,) ints, src
    (N, C). The same bits on every run, unlike cupyx.scatter_add's atomics. Twin:
    backend.scatter_add_rows."""
    if not (_use_kernels(dst, src) and _contiguous(dst) and dst.ndim == 2):
        return ops.scatter_add_rows(dst, idx, src)
    xp = xp_of(dst)
    C = dst.shape[1]
    src = xp.ascontiguousarray(src).reshape(-1, C)
    idx = xp.ascontiguousarray(idx, dtype=xp.int64).reshape(-1)
    if idx.size != src.shape[0]:
        raise ValueError(f"{idx.size} indices for {src.shape[0]} rows")
    order = idx.argsort(kind="stable") if xp is np else idx.argsort()   # CuPy's sort is stable
    ranked = idx[order]
    starts = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), ranked[1:] != ranked[:-1]]))
    ids = ranked[starts]
    starts = xp.concatenate([starts, xp.asarray([idx.size])]).astype(xp.int64)
    n = ids.size * C
    _launch("scatter_rows", dst.dtype, (_blocks(n),), (_THREADS,),
            (dst, src, order, starts, ids, np.int64(ids.size), np.int32(C)))

# ----------------------------------------------------------------------------------------
# ops with no CUDA kernel of their own: CuPy runs ops.py's code (the model calls every op
# through one module: this one on a GPU, cpu_kernels on the CPU, else ops)

layernorm_forward, layernorm_backward = ops.layernorm_forward, ops.layernorm_backward
gelu_forward, gelu_backward = ops.gelu_forward, ops.gelu_backward
softmax_forward, softmax_backward = ops.softmax_forward, ops.softmax_backward
cross_entropy_forward, cross_entropy_backward = ops.cross_entropy_forward, ops.cross_entropy_backward

# ----------------------------------------------------------------------------------------
# the table: public function -> its twin


TWINS = {
    "rmsnorm_forward": ops.rmsnorm_forward,
    "rmsnorm_backward": ops.rmsnorm_backward,
    "rotary_forward": ops.rotary_forward,
    "rotary_backward": ops.rotary_backward,
    "relu2_forward": ops.relu2_forward,
    "relu2_backward": ops.relu2_backward,
    "softcap_cross_entropy_forward": np_softcap_cross_entropy_forward,
    "softcap_cross_entropy_backward": np_softcap_cross_entropy_backward,
    "adamw_update": optim.adamw_update,
    "muon_momentum": optim.muon_momentum,
    "muon_apply": optim.muon_apply,
    "round_mantissa": ops.round_mantissa,
    "scatter_add_rows": ops.scatter_add_rows,
}

