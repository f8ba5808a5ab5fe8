"""
The CUDA C of every kernel trainer/kernels.py launches, as one source compiled once per dtype
(`real` typedef'd to float or double). Kept apart from the Python that launches the kernels, so
each file holds one language and one job; trainer/nvrtc.py compiles it with no GPU for the tests.

    cuda_source("float32")    # the whole module's source for that dtype
    KERNEL_NAMES               # every `extern "C" __global__` entry point in it
"""
from __future__ import annotations

import numpy as np


_PRELUDE = {
    "float32": "typedef float real;\n"
               "#define NEG_INF (-__int_as_float(0x7f800000))\n"
               "#define QNAN __int_as_float(0x7fc00000)\n",
    "float64": "typedef double real;\n"
               "#define NEG_INF (-__longlong_as_double(0x7ff0000000000000LL))\n"
               "#define QNAN __longlong_as_double(0x7ff8000000000000LL)\n",
}

SOURCE = r"""
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float  k_exp(float x)   { return expf(x); }
__device__ __forceinline__ double k_exp(double x)  { return exp(x); }
__device__ __forceinline__ float  k_log(float x)   { return logf(x); }
__device__ __forceinline__ double k_log(double x)  { return log(x); }
__device__ __forceinline__ float  k_tanh(float x)  { return tanhf(x); }
__device__ __forceinline__ double k_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float  k_sqrt(float x)  { return sqrtf(x); }
__device__ __forceinline__ double k_sqrt(double x) { return sqrt(x); }

__device__ __forceinline__ real warp_sum(real v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// ---- RMSNorm over rows of length C, one warp per row -----------------------------------
// y = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps)
extern "C" __global__ void rmsnorm_fwd(const real* __restrict__ x, real* __restrict__ y,
                                       real* __restrict__ rstd, long long rows, int C, real eps) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;                       // the whole warp leaves together
    const real* xr = x + row * C;
    real ss = 0;
    for (int i = lane; i < C; i += 32) ss += xr[i] * xr[i];
    const real r = (real)1 / k_sqrt(warp_sum(ss) / C + eps);
    if (lane == 0) rstd[row] = r;
    real* yr = y + row * C;
    for (int i = lane; i < C; i += 32) yr[i] = xr[i] * r;
}

// dx = rstd * (dy - y * mean(dy * y)); dx may be dy
extern "C" __global__ void rmsnorm_bwd(const real* dy, const real* __restrict__ y,
                                       const real* __restrict__ rstd, real* dx, long long rows, int C) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const real* dyr = dy + row * C;
    const real* yr = y + row * C;
    real dot = 0;
    for (int i = lane; i < C; i += 32) dot += dyr[i] * yr[i];
    const real mean = warp_sum(dot) / C, r = rstd[row];
    real* dxr = dx + row * C;
    for (int i = lane; i < C; i += 32) dxr[i] = r * (dyr[i] - yr[i] * mean);
}

// ---- rotary, half-split layout, one thread per (row, head, j < D/2) ----------------------
// x rows (b, t) are x_row_stride apart, heads D apart inside a row (so a q/k slice of the qkv
// activations is read in place); y is contiguous (rows, H, D). sign = +1 forward, -1 backward:
// y1 = x1 cos + sign x2 sin, y2 = x2 cos - sign x1 sin
extern "C" __global__ void rotary(const real* __restrict__ x, long long x_row_stride,
                                  real* __restrict__ y, const real* __restrict__ cos_t,
                                  const real* __restrict__ sin_t, real sign,
                                  long long rows, int T, int H, int half) {
    const long long n = rows * H * half;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int j = (int)(i % half);
        const long long rh = i / half;
        const int h = (int)(rh % H);
        const long long row = rh / H;
        const int t = (int)(row % T);
        const real* xh = x + row * x_row_stride + (long long)h * 2 * half;
        const real x1 = xh[j], x2 = xh[j + half];
        const real c = cos_t[(long long)t * half + j], s = sign * sin_t[(long long)t * half + j];
        real* yh = y + rh * 2 * half;
        yh[j] = x1 * c + x2 * s;
        yh[j + half] = x2 * c - x1 * s;
    }
}

// ---- ReLU^2 ------------------------------------------------------------------------------
// r = max(h, 0), a = r^2
extern "C" __global__ void relu2_fwd(const real* __restrict__ h, real* __restrict__ a,
                                     real* __restrict__ r, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const real v = h[i] > 0 ? h[i] : (real)0;
        r[i] = v;
        a[i] = v * v;
    }
}

// dh = da * 2r; dh may be da
extern "C" __global__ void relu2_bwd(const real* da, const real* __restrict__ r, real* dh, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        dh[i] = da[i] * (r[i] + r[i]);
}

// ---- softcap + cross-entropy, one block per row of V logits --------------------------------
// z = cap tanh(logit / cap) (cap > 0; z = logit when cap == 0)
__device__ __forceinline__ real softcap(real x, real cap) { return cap > 0 ? cap * k_tanh(x / cap) : x; }

// merge two online-softmax states (m: running max, s: sum of exp(z - m))
__device__ __forceinline__ void lse_merge(real& m, real& s, real m2, real s2) {
    const real mx = m > m2 ? m : m2;
    if (mx == NEG_INF) return;                      // both empty
    s = s * k_exp(m - mx) + s2 * k_exp(m2 - mx);
    m = mx;
}

// losses[row] = logsumexp(z) - z[target], lse[row] = logsumexp(z), in one read of the row.
// A target outside [0, V) gives a NaN loss (and no one-hot term in the backward).
extern "C" __global__ void __launch_bounds__(1024) softcap_ce_fwd(const real* __restrict__ logits,
                                          const long long* __restrict__ targets,
                                          real* __restrict__ losses, real* __restrict__ lse,
                                          int V, real cap) {
    const long long row = blockIdx.x;
    const real* l = logits + row * V;
    real m = NEG_INF, s = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const real z = softcap(l[i], cap);
        if (z > m) { s = s * k_exp(m - z) + 1; m = z; }
        else s += k_exp(z - m);
    }
    for (int o = 16; o > 0; o >>= 1) {
        const real m2 = __shfl_xor_sync(FULL_MASK, m, o), s2 = __shfl_xor_sync(FULL_MASK, s, o);
        lse_merge(m, s, m2, s2);
    }
    __shared__ real sm_m[32], sm_s[32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    if (lane == 0) { sm_m[warp] = m; sm_s[warp] = s; }
    __syncthreads();
    if (warp != 0) return;
    m = lane < nwarps ? sm_m[lane] : NEG_INF;
    s = lane < nwarps ? sm_s[lane] : (real)0;
    for (int o = 16; o > 0; o >>= 1) {
        const real m2 = __shfl_xor_sync(FULL_MASK, m, o), s2 = __shfl_xor_sync(FULL_MASK, s, o);
        lse_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        const real r = m + k_log(s);
        const long long t = targets[row];
        lse[row] = r;
        losses[row] = (t >= 0 && t < V) ? r - softcap(l[t], cap) : QNAN;
    }
}

// dlogits = scale * (exp(z - lse) - onehot(target)) * (1 - tanh^2); grid (rows, ceil(V / block));
// dlogits may be logits
extern "C" __global__ void softcap_ce_bwd(const real* logits, const long long* __restrict__ targets,
                                          const real* __restrict__ lse, real* dlogits,
                                          int V, real cap, real scale) {
    const long long row = blockIdx.x;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= V) return;
    const long long k = row * V + i;
    const real x = logits[k];
    real z = x, dcap = 1;
    if (cap > 0) { const real t = k_tanh(x / cap); z = cap * t; dcap = 1 - t * t; }
    real p = k_exp(z - lse[row]);
    if (i == targets[row]) p -= 1;
    dlogits[k] = p * scale * dcap;
}

// ---- AdamW, in place on p, m, v ----------------------------------------------------------
// p *= decay (= 1 - lr wd); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= step_size * m / (sqrt(v) * inv_bc2 + eps), step_size = lr / (1 - b1^t), inv_bc2 = 1 / sqrt(1 - b2^t)
extern "C" __global__ void adamw(real* __restrict__ p, const real* __restrict__ g,
                                 real* __restrict__ m, real* __restrict__ v, long long n,
                                 real decay, real b1, real one_minus_b1, real b2, real one_minus_b2,
                                 real step_size, real inv_bc2, real eps) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const real gi = g[i];
        const real mi = m[i] * b1 + one_minus_b1 * gi;
        const real vi = v[i] * b2 + one_minus_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const real denom = k_sqrt(vi) * inv_bc2 + eps;
        p[i] = p[i] * decay - step_size * mi / denom;
    }
}

// ---- Muon's elementwise parts --------------------------------------------------------------
// buf = mu buf + (1-mu) g; u = (1-mu) g + mu buf (Nesterov); u may be g
extern "C" __global__ void muon_momentum(const real* g, real* __restrict__ buf, real* u, long long n,
                                         real mu, real one_minus_mu) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const real gi = g[i];
        const real b = buf[i] * mu + one_minus_mu * gi;
        buf[i] = b;
        u[i] = one_minus_mu * gi + mu * b;
    }
}

// cautious weight decay and the step: x += wd p where x p >= 0; p -= lr x.
// p (rows, cols) contiguous; x the same shape, contiguous or (x_transposed = 1) column-major.
extern "C" __global__ void muon_apply(real* __restrict__ p, const real* __restrict__ x,
                                      long long rows, long long cols, int x_transposed,
                                      real lr, real wd) {
    const long long n = rows * cols;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        real xi = x_transposed ? x[(i % cols) * rows + i / cols] : x[i];
        const real pi = p[i];
        if (wd != 0 && xi * pi >= 0) xi += wd * pi;
        p[i] = pi - lr * xi;
    }
}

// ---- matmul inputs rounded to bfloat16 (keep = 7) or TF32 (keep = 10) values, still float ----
// to nearest, ties to even, on the bit pattern; NaN stays NaN. Float in both modules.
extern "C" __global__ void round_mantissa(const float* __restrict__ x, float* __restrict__ y,
                                          long long n, int keep) {
    const unsigned drop = 23 - keep, half = (1u << (drop - 1)) - 1, low = (1u << drop) - 1;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const unsigned u = __float_as_uint(x[i]);
        y[i] = (u & 0x7fffffffu) > 0x7f800000u ? x[i]
                                               : __uint_as_float((u + half + ((u >> drop) & 1u)) & ~low);
    }
}

// ---- embedding backward: dst[idx[n]] += src[n] for every row n of src ---------------------
// Rows are added in order of n, as np.add.at adds them, so the sums are the twin's to the bit
// and the same on every run; atomicAdd's order changes from run to run, and a resumed or repeated
// run must retrace the first exactly. order: the row numbers sorted by idx, stably; rows
// order[starts[u]] .. order[starts[u+1] - 1] all go to row ids[u] of dst. One thread per (u, column).
extern "C" __global__ void scatter_rows(real* __restrict__ dst, const real* __restrict__ src,
                                        const long long* __restrict__ order,
                                        const long long* __restrict__ starts,
                                        const long long* __restrict__ ids, long long n_ids, int C) {
    const long long n = n_ids * C;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long u = i / C, c = i % C;
        real* d = dst + ids[u] * C + c;
        real acc = *d;
        for (long long k = starts[u]; k < starts[u + 1]; k++) acc += src[order[k] * C + c];
        *d = acc;
    }
}
"""

KERNEL_NAMES = ("rmsnorm_fwd", "rmsnorm_bwd", "rotary", "relu2_fwd", "relu2_bwd",
                "softcap_ce_fwd", "softcap_ce_bwd", "adamw", "muon_momentum", "muon_apply",
                "round_mantissa", "scatter_rows")
DTYPES = ("float32", "float64")


def cuda_source(dtype: str = "float32") -> str:
    """The full CUDA source of the module for one dtype ('float32' or 'float64')."""
    return _PRELUDE[np.dtype(dtype).name] + SOURCE
