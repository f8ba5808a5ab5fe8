"""
Fused CPU kernels (Numba), each with the signature and results of its NumPy twin in ops.py or
kernels.py. The CPU counterpart of trainer/kernels.py.

Why: NumPy runs an op as a chain of ufuncs, each one pass over memory on one core, each with a
fresh temporary (RMSNorm backward: six passes and three temporaries). A kernel here is one loop
over rows, split over the cores with `prange`, that reads its inputs once and writes its
outputs once. On 2 cores that measured 5-30x less time for the norms, rotary and ReLU^2, and
3-4x for AdamW (one pass over p, g, m, v instead of fourteen; now memory-bound).

    function                          twin
    rmsnorm_forward / _backward       ops.rmsnorm_forward / _backward
    layernorm_forward / _backward     ops.layernorm_forward / _backward
    rotary_forward / _backward        ops.rotary_forward / _backward
    relu2_forward / _backward         ops.relu2_forward / _backward
    softmax_forward / _backward       ops.softmax_forward / _backward
    cross_entropy_forward             ops.cross_entropy_forward
    gelu_forward / _backward          ops.gelu_forward / _backward
    scatter_add_rows                  backend.scatter_add_rows
    adamw_update                      optim.adamw_update
    muon_momentum / muon_apply        optim.muon_momentum / muon_apply
    round_mantissa                    ops.round_mantissa

exp and tanh stay NumPy's (SIMD), called between kernels: without Intel's SVML, Numba would
call the scalar libm per element, 5-10x slower. So softmax, cross-entropy and GELU are three
passes (kernel, NumPy's exp or tanh in place, kernel) instead of six to nine. The softcap's
tanh stays the twin (ops.softcap_forward).

Kernels compile on first use, once per dtype and layout, and are cached on disk (`cache=True`,
in trainer/__pycache__). `available()` is False when Numba can't be imported or
NANOLAB_KERNELS=0, and then the model and optimizer use the twins. Threads: as many as the BLAS
was given (backend.cpu_threads).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from trainer import ops
from trainer.backend import contiguous_or_transposed, cpu_threads
from trainer.ops import GELU_K

numba = None    # loaded by available(): a run on the twins (NANOLAB_KERNELS=0, or a GPU's) never imports it (0.5 s)
prange = range  # numba.prange once loaded: each kernel's parallel loop, resolved when it compiles

# reassociation lets LLVM vectorize the row sums; no-NaN/no-inf flags stay off (masks are -inf)
FAST = {"reassoc", "contract", "nsz"}


def available() -> bool:
    """Whether the kernels can run here. The model calls it before the first kernel runs."""
    if os.environ.get("NANOLAB_KERNELS", "1") == "0" or not _load_numba():
        return False
    # Numba's worker threads (OpenMP, started by the first kernel) would otherwise spin for a
    # while after each kernel and take the cores from the BLAS threads of the next matmul: 2x
    # slower matmuls on 2 cores. Set here, not at import, so that an OpenMP user loaded before the
    # model is built (torch in the bench's peers, which never build one on kernels) keeps its own.
    global _threads_started
    if not _threads_started:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        numba.set_num_threads(min(cpu_threads(), numba.config.NUMBA_NUM_THREADS))  # starts them
        _threads_started = True
    return True


_threads_started = False


def _load_numba() -> bool:
    """Whether Numba loads; tried once (available() runs each time the model picks its ops)."""
    global numba, prange
    if numba is None:
        try:
            import numba as loaded
        except ImportError:  # numba is a dependency; a broken install still trains, on the twins
            numba = False
            return False
        numba, prange = loaded, loaded.prange
    return numba is not False


def _kernel(f):
    """f as a parallel Numba kernel, compiled on its first call and cached on disk. Kernels are
    called only where available() said so, which loaded Numba."""
    compiled = None

    @functools.wraps(f)
    def kernel(*args):
        nonlocal compiled
        if compiled is None:
            compiled = _compile(f)
        return compiled(*args)
    return kernel


def _compile(f):
    try:
        return numba.njit(parallel=True, cache=True, fastmath=FAST)(f)
    except RuntimeError:  # no writable cache directory (e.g. a read-only install): compile each run
        return numba.njit(parallel=True, fastmath=FAST)(f)


# ----------------------------------------------------------------------------------------
# RMSNorm: y = x * rstd, rstd = 1/sqrt(mean(x^2) + eps); dx = rstd * (dy - y * mean(dy * y))


@_kernel
def _rmsnorm_fwd(x, eps, y, rstd):                # x, y (N, C); rstd (N,)
    N, C = x.shape
    for i in prange(N):
        ss = x[i, 0] * 0                          # a zero of x's dtype
        for j in range(C):
            ss += x[i, j] * x[i, j]
        r = 1 / np.sqrt(ss / C + eps)
        rstd[i] = r
        for j in range(C):
            y[i, j] = x[i, j] * r


@_kernel
def _rmsnorm_bwd(dy, y, rstd, dx):                # dy, y, dx (N, C); rstd (N,)
    N, C = y.shape
    for i in prange(N):
        dot = y[i, 0] * 0
        for j in range(C):
            dot += dy[i, j] * y[i, j]
        dot /= C
        for j in range(C):
            dx[i, j] = rstd[i] * (dy[i, j] - y[i, j] * dot)


def rmsnorm_forward(x, eps):
    """Twin: ops.rmsnorm_forward. Returns (y, (y, rstd)), rstd of shape (..., 1)."""
    x2 = _rows(x)
    y, rstd = np.empty_like(x2), np.empty(x2.shape[0], dtype=x.dtype)
    _rmsnorm_fwd(x2, x.dtype.type(eps), y, rstd)
    y = y.reshape(x.shape)
    return y, (y, rstd.reshape(x.shape[:-1] + (1,)))


def rmsnorm_backward(dy, cache):
    """Twin: ops.rmsnorm_backward."""
    y, rstd = cache
    dx = np.empty(y.shape, dtype=y.dtype)
    _rmsnorm_bwd(_rows(dy), _rows(y), rstd.reshape(-1), dx.reshape(-1, y.shape[-1]))
    return dx

# ----------------------------------------------------------------------------------------
# LayerNorm: y = xhat * w + b, xhat = (x - mean) * rstd. The backward's dw, db are sums over
# rows: each thread sums its block of rows into its own partial, then the partials are added.


@_kernel
def _layernorm_fwd(x, w, b, eps, y, xhat, rstd):  # x, y, xhat (N, C); w, b (C,); rstd (N,)
    N, C = x.shape
    for i in prange(N):
        mean = x[i, 0] * 0
        for j in range(C):
            mean += x[i, j]
        mean /= C
        var = x[i, 0] * 0
        for j in range(C):
            var += (x[i, j] - mean) * (x[i, j] - mean)
        r = 1 / np.sqrt(var / C + eps)
        rstd[i] = r
        for j in range(C):
            xhat[i, j] = (x[i, j] - mean) * r
            y[i, j] = xhat[i, j] * w[j] + b[j]


@_kernel
def _layernorm_bwd(dy, xhat, rstd, w, dx, dw_parts, db_parts):  # dw_parts, db_parts (P, C)
    N, C = dy.shape
    P = dw_parts.shape[0]
    for p in prange(P):
        dw_parts[p, :] = 0
        db_parts[p, :] = 0
        for i in range(p * N // P, (p + 1) * N // P):
            mean_d, mean_dx = dy[i, 0] * 0, dy[i, 0] * 0   # mean(dxhat), mean(dxhat * xhat)
            for j in range(C):
                d = dy[i, j] * w[j]
                mean_d += d
                mean_dx += d * xhat[i, j]
                dw_parts[p, j] += dy[i, j] * xhat[i, j]
                db_parts[p, j] += dy[i, j]
            mean_d /= C
            mean_dx /= C
            for j in range(C):
                dx[i, j] = rstd[i] * (dy[i, j] * w[j] - mean_d - xhat[i, j] * mean_dx)


def layernorm_forward(x, w, b, eps=1e-5):
    """Twin: ops.layernorm_forward. Returns (y, (xhat, rstd, w)), rstd of shape (..., 1)."""
    x2 = _rows(x)
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)
    _layernorm_fwd(x2, w, np.zeros_like(w) if b is None else b, x.dtype.type(eps), y, xhat, rstd)
    return y.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)


def layernorm_backward(dy, cache, dw, db=None):
    """Twin: ops.layernorm_backward. Writes dw (and db) in place, returns dx."""
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    dx = np.empty(xhat.shape, dtype=xhat.dtype)
    parts = np.empty((2, numba.get_num_threads(), C), dtype=xhat.dtype)
    _layernorm_bwd(_rows(dy), _rows(xhat), rstd.reshape(-1), w, dx.reshape(-1, C), parts[0], parts[1])
    parts[0].sum(axis=0, out=dw)
    if db is not None:
        parts[1].sum(axis=0, out=db)
    return dx

# ----------------------------------------------------------------------------------------
# rotary, half-split: y1 = x1 cos + x2 sin, y2 = x2 cos - x1 sin (the backward: sin negated).
# x may be a strided q or k slice of the fused qkv activations: it is read in place.


@_kernel
def _rotary(x, cos, sin, sign, y):                # x, y (B, T, H, D); cos, sin (T, D/2)
    B, T, H, D = x.shape
    half = D // 2
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        for h in range(H):
            for j in range(half):
                x1, x2 = x[b, t, h, j], x[b, t, h, j + half]
                c, s = cos[t, j], sign * sin[t, j]
                y[b, t, h, j] = x1 * c + x2 * s
                y[b, t, h, j + half] = x2 * c - x1 * s


def _rotary_call(x, cos, sin, sign):
    T, half = x.shape[1], x.shape[-1] // 2
    cos, sin = (np.ascontiguousarray(a.reshape(-1, half)[:T], dtype=x.dtype) for a in (cos, sin))
    y = np.empty(x.shape, dtype=x.dtype)
    _rotary(x, cos, sin, x.dtype.type(sign), y)
    return y


def rotary_forward(x, cos, sin):
    """x (B, T, heads, D), tables (T, 1, D/2). Twin: ops.rotary_forward."""
    return _rotary_call(x, cos, sin, 1.0)


def rotary_backward(dy, cos, sin):
    """Twin: ops.rotary_backward."""
    return _rotary_call(dy, cos, sin, -1.0)

# ----------------------------------------------------------------------------------------
# ReLU^2: a = relu(h)^2, cached r = relu(h); dh = da * 2r


@_kernel
def _relu2_fwd(h, a, r):                          # flat arrays
    for i in prange(h.size):
        r[i] = max(h[i], 0)
        a[i] = r[i] * r[i]


@_kernel
def _relu2_bwd(da, r, dh):
    for i in prange(r.size):
        dh[i] = da[i] * 2 * r[i]


def relu2_forward(h):
    """Twin: ops.relu2_forward. Returns (a, r = relu(h))."""
    h = np.ascontiguousarray(h)
    a, r = np.empty_like(h), np.empty_like(h)
    _relu2_fwd(h.reshape(-1), a.reshape(-1), r.reshape(-1))
    return a, r


def relu2_backward(da, r):
    """Twin: ops.relu2_backward."""
    dh = np.empty_like(r)
    _relu2_bwd(np.ascontiguousarray(da).reshape(-1), r.reshape(-1), dh.reshape(-1))
    return dh

# ----------------------------------------------------------------------------------------
# attention softmax over the last dim, in place on the scores. The exp is NumPy's (SIMD); the
# kernels fuse what is around it: max + subtract before, sum + normalize after.


@_kernel
def _shift_rows(z, e, zmax):                      # z, e (N, V): e = z - max(z), may be z; zmax (N,)
    N, V = z.shape
    for i in prange(N):
        top = -np.inf
        for j in range(V):
            top = max(top, z[i, j])
        zmax[i] = top
        for j in range(V):
            e[i, j] = z[i, j] - top


@_kernel
def _normalize_rows(e, totals):                   # e (N, T) exponentials -> rows summing to 1
    N, T = e.shape
    for i in prange(N):
        total = e[i, 0] * 0
        for j in range(T):
            total += e[i, j]
        totals[i] = total
        for j in range(T):
            e[i, j] /= total


@_kernel
def _softmax_bwd(dp, p):                          # dp, p (N, T): ds = p * (dp - sum(dp * p))
    N, T = p.shape
    for i in prange(N):
        dot = p[i, 0] * 0
        for j in range(T):
            dot += dp[i, j] * p[i, j]
        for j in range(T):
            dp[i, j] = p[i, j] * (dp[i, j] - dot)


def softmax_forward(s, mask):
    """Twin: ops.softmax_forward. s (..., T, T) contiguous, overwritten with the probabilities."""
    rows = s.reshape(-1, s.shape[-1])
    scratch = np.empty(rows.shape[0], dtype=s.dtype)
    s += mask                                     # NumPy's broadcast add: one SIMD pass
    _shift_rows(rows, rows, scratch)
    np.exp(s, out=s)
    _normalize_rows(rows, scratch)
    return s


def softmax_backward(dp, p):
    """Twin: ops.softmax_backward. dp (..., T) contiguous, overwritten with ds."""
    _softmax_bwd(dp.reshape(-1, dp.shape[-1]), p.reshape(-1, p.shape[-1]))
    return dp

# ----------------------------------------------------------------------------------------
# cross-entropy, the softmax's three passes: shift by the row max, exp (NumPy's), normalize


def cross_entropy_forward(z, targets):
    """Twin: ops.cross_entropy_forward. z (N, V) -> (losses (N,), (probs, targets))."""
    z = np.ascontiguousarray(z)
    N = z.shape[0]
    e, zmax, totals = np.empty_like(z), np.empty(N, dtype=z.dtype), np.empty(N, dtype=z.dtype)
    _shift_rows(z, e, zmax)
    np.exp(e, out=e)
    _normalize_rows(e, totals)
    losses = np.log(totals) + zmax - z[np.arange(N), targets]
    return losses, (e, targets)


cross_entropy_backward = ops.cross_entropy_backward    # one scatter and one scaling pass

# ----------------------------------------------------------------------------------------
# GELU (tanh form): the polynomial around NumPy's tanh in one pass each side, and the backward
# (pure arithmetic, given the cached tanh) in one pass


@_kernel
def _gelu_tanh_arg(h, u):                         # u = k (h + 0.044715 h^3), flat
    for i in prange(h.size):
        u[i] = GELU_K * (h[i] + 0.044715 * h[i] * h[i] * h[i])


@_kernel
def _gelu_out(h, t, a):                           # a = 0.5 h (1 + t)
    for i in prange(h.size):
        a[i] = 0.5 * h[i] * (1 + t[i])


@_kernel
def _gelu_bwd(da, h, t, dh):
    for i in prange(h.size):
        dt = GELU_K * (1 + 3 * 0.044715 * h[i] * h[i]) * (1 - t[i] * t[i])
        dh[i] = da[i] * (0.5 * (1 + t[i]) + 0.5 * h[i] * dt)


def gelu_forward(h):
    """Twin: ops.gelu_forward. Returns (a, (h, t = tanh(...)))."""
    h = np.ascontiguousarray(h)
    t, a = np.empty_like(h), np.empty_like(h)
    _gelu_tanh_arg(h.reshape(-1), t.reshape(-1))
    np.tanh(t, out=t)
    _gelu_out(h.reshape(-1), t.reshape(-1), a.reshape(-1))
    return a, (h, t)


def gelu_backward(da, cache):
    """Twin: ops.gelu_backward."""
    h, t = cache
    dh = np.empty_like(h)
    _gelu_bwd(np.ascontiguousarray(da).reshape(-1), h.reshape(-1), t.reshape(-1), dh.reshape(-1))
    return dh

# ----------------------------------------------------------------------------------------
# embedding backward: dst[idx[n]] += src[n]. Each thread owns a band of columns, so repeated
# rows never race and every row is summed in the same order as np.add.at.


@_kernel
def _scatter_add_rows(dst, idx, src, bands):      # dst (V, C), idx (N,), src (N, C)
    C = dst.shape[1]
    for band in prange(bands):
        lo, hi = band * C // bands, (band + 1) * C // bands
        for n in range(idx.size):
            for j in range(lo, hi):
                dst[idx[n], j] += src[n, j]


def scatter_add_rows(dst, idx, src):
    """Twin: backend.scatter_add_rows."""
    _scatter_add_rows(dst, np.ascontiguousarray(idx).astype(np.int64, copy=False), _rows(src),
                      numba.get_num_threads())

# ----------------------------------------------------------------------------------------
# optimizer updates, in place, one pass each; the math as optim.adamw_update etc.


@_kernel
def _adamw(p, g, m, v, decay, beta1, beta2, step, bias2, eps):  # flat arrays
    for i in prange(p.size):
        m[i] = beta1 * m[i] + (1 - beta1) * g[i]
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
        p[i] = p[i] * decay - step * m[i] / (np.sqrt(v[i]) * bias2 + eps)


def adamw_update(p, grad, m, v, *, lr, beta1, beta2, eps, wd, t):
    """AdamW step t (1-based) in place on flat p, m, v. Twin: optim.adamw_update."""
    real = p.dtype.type
    _adamw(p, grad, m, v, real(1 - lr * wd), real(beta1), real(beta2), real(lr / (1 - beta1 ** t)),
           real(1 / np.sqrt(1 - beta2 ** t)), real(eps))


@_kernel
def _muon_momentum(g, buf, mu, u):                # flat: buf = mu buf + (1-mu) g; u = Nesterov
    for i in prange(g.size):
        buf[i] = mu * buf[i] + (1 - mu) * g[i]
        u[i] = (1 - mu) * g[i] + mu * buf[i]


def muon_momentum(grad, buf, mu, out=None):
    """Twin: optim.muon_momentum. `out` may be grad."""
    u = np.empty_like(grad) if out is None else out
    _muon_momentum(grad.reshape(-1), buf.reshape(-1), grad.dtype.type(mu), u.reshape(-1))
    return u


@_kernel
def _muon_apply(p, x, lr, wd):                    # p (rows, cols); x any layout
    rows, cols = p.shape
    for i in prange(rows):
        for j in range(cols):
            step = x[i, j]
            if step * p[i, j] >= 0:               # cautious: decay only where they agree
                step += wd * p[i, j]
            p[i, j] -= lr * step


def muon_apply(p, x, lr, wd):
    """Cautious weight decay and p -= lr x, in place on p. Twin: optim.muon_apply."""
    _muon_apply(p, x, p.dtype.type(lr), p.dtype.type(wd))


# ----------------------------------------------------------------------------------------
# matmul inputs rounded to bfloat16 or TF32 values (--matmul), on the float32 bit patterns.
# uint64 throughout: Numba would turn a mix of signed and unsigned integers into floats.


@_kernel
def _round_mantissa(u, out, drop):                # flat uint32 words of float32 values
    one = np.uint64(1)
    half, low = (one << (drop - one)) - one, (one << drop) - one
    for i in prange(u.size):
        w = np.uint64(u[i])
        if (w & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000):   # NaN stays itself
            out[i] = u[i]
        else:
            out[i] = np.uint32((w + half + ((w >> drop) & one)) & ~low & np.uint64(0xFFFFFFFF))


def round_mantissa(x, keep):
    """Twin: ops.round_mantissa. Keeps a transposed view's layout (w.T, dy.T), so the matmul
    after it reads memory the same way."""
    if x.dtype != np.float32:                     # float64 (the exact tests) on the twin
        return ops.round_mantissa(x, keep)
    src, transposed = contiguous_or_transposed(x)
    y = np.empty_like(src)
    _round_mantissa(src.reshape(-1).view(np.uint32), y.reshape(-1).view(np.uint32), np.uint64(23 - keep))
    return y.T if transposed else y


def _rows(a):
    """a (..., C) as (N, C): a view when a is contiguous, else a contiguous copy."""
    return a.reshape(-1, a.shape[-1]) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1, a.shape[-1])
