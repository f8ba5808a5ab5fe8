"""
Optimizers: AdamW, and Muon for the 2-D matrices inside blocks, grouped as nanochat does.

Groups, by parameter name:
  matrix      2-D params inside transformer.h.*   Muon (optimizer=muon) or AdamW, lr matrix_lr
  embedding   wte, wpe                            AdamW, lr embedding_lr
  unembedding lm_head                             AdamW, lr unembedding_lr
  scalar      every 1-D param (biases, gains, lambdas)  AdamW, lr scalar_lr, no weight decay

    opt = make_optimizer(model)
    model.forward(x, y); model.backward(); opt.step(lr_mult=schedule(step))

The update math is here, as plain array code (adamw_update, muon_momentum, muon_apply): the
reference that the fused kernels of the model's backend (trainer/kernels.py on a GPU,
trainer/cpu_kernels.py on the CPU) compute in one pass, and what runs when neither is usable.
"""
from __future__ import annotations

import math

from trainer import ops
from trainer.backend import to_numpy, xp_of

# Polar Express coefficients (a, b, c) for the quintic iterations orthogonalizing Muon's update
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


GROUP_ORDER = ("embedding", "unembedding", "scalar", "matrix")  # the model's flat buffer, in this order


def param_group(name: str, ndim: int) -> str:
    """The optimizer group of a parameter."""
    if ndim == 1:
        return "scalar"          # biases, norm gains, lambdas
    if name.startswith("transformer.h."):
        return "matrix"          # 2-D weights inside blocks
    return "unembedding" if name == "lm_head.weight" else "embedding"


def param_groups(model) -> dict[str, list[str]]:
    groups = {"embedding": [], "unembedding": [], "scalar": [], "matrix": []}
    for name, p in model.params.items():
        groups[param_group(name, p.ndim)].append(name)
    return groups


def make_optimizer(model):
    cfg, names = model.cfg, param_groups(model)
    adam = dict(beta1=cfg.adam_beta1, beta2=cfg.adam_beta2, eps=cfg.adam_eps)
    adamw_groups = [
        dict(names=names["embedding"], lr=cfg.embedding_lr, wd=cfg.embedding_weight_decay, **adam),
        dict(names=names["unembedding"], lr=cfg.unembedding_lr, wd=cfg.embedding_weight_decay, **adam),
        dict(names=names["scalar"], lr=cfg.scalar_lr, wd=0.0, **adam),
    ]
    matrices = dict(names=names["matrix"], lr=cfg.matrix_lr, wd=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return Optimizer(model, adamw_groups + [dict(matrices, **adam)], muon_group=None)
    return Optimizer(model, adamw_groups, muon_group=dict(matrices, momentum=cfg.muon_momentum,
                                                         ns_steps=cfg.muon_ns_steps))


class Optimizer:
    """AdamW over `adamw_groups`, Muon over `muon_group`.

    The model lays its flat buffer out group by group (embedding, unembedding, scalar, matrix),
    so each group is one contiguous range and the optimizer state is flat buffers too.
    """

    def __init__(self, model, adamw_groups, muon_group):
        self.model, self.xp = model, model.xp
        self.adamw_groups = [g for g in adamw_groups if g["names"]]
        self.muon_group = muon_group if muon_group and muon_group["names"] else None
        for g in self.adamw_groups + ([self.muon_group] if self.muon_group else []):
            g["range"] = model.param_buf.range_of(g["names"])
        adamw_end = max((g["range"][1] for g in self.adamw_groups), default=0)
        self.m = self.xp.zeros(adamw_end, dtype=model.dtype)      # AdamW first moment
        self.v = self.xp.zeros(adamw_end, dtype=model.dtype)      # AdamW second moment
        n_muon = self.muon_group["range"][1] - self.muon_group["range"][0] if self.muon_group else 0
        self.momentum = self.xp.zeros(n_muon, dtype=model.dtype)  # Muon momentum
        # the one-pass update kernels of the model's backend (CUDA on a GPU, Numba on the CPU);
        # with neither, the reference math below, in cache-sized chunks so that its dozen passes
        # hit cache, not memory
        self.ew = None if model.ew is ops else model.ew
        self.adamw_update = self.ew.adamw_update if self.ew else adamw_update
        self.muon_momentum = self.ew.muon_momentum if self.ew else muon_momentum
        self.muon_apply = self.ew.muon_apply if self.ew else muon_apply
        self.chunk = None if self.ew else 1 << 16
        self.t = 0

    def step(self, lr_mult: float = 1.0, muon_momentum: float | None = None):
        self.t += 1
        for g in self.adamw_groups:
            hyper = dict(lr=g["lr"] * lr_mult, beta1=g["beta1"], beta2=g["beta2"], eps=g["eps"],
                         wd=g["wd"], t=self.t)
            P, G = self.model.param_buf.data, self.model.grad_buf.data
            start, end = g["range"]
            step = self.chunk or end - start
            for s in range(start, end, max(step, 1)):
                e = min(s + step, end)
                self.adamw_update(P[s:e], G[s:e], self.m[s:e], self.v[s:e], **hyper)
        if self.muon_group:
            g = self.muon_group
            mu = g["momentum"] if muon_momentum is None else muon_momentum
            base = g["range"][0]
            for name in g["names"]:
                start, _ = self.model.param_buf.offsets[name]
                p, grad = self.model.params[name], self.model.grads[name]
                buf = self.momentum[start - base:start - base + p.size].reshape(p.shape)
                self._muon(p, grad, buf, g["lr"] * lr_mult, g["wd"], mu, g["ns_steps"])

    def _muon(self, p, grad, buf, lr, wd, mu, ns_steps):
        # buf = mu buf + (1-mu) g, then the Nesterov look-ahead u = (1-mu) g + mu buf
        u = self.muon_momentum(grad, buf, mu)
        x = orthogonalize(u, ns_steps)
        rows, cols = p.shape
        lr = lr * math.sqrt(max(1.0, rows / cols))     # shape-aware: tall matrices step further
        # cautious weight decay (only where update and weight agree in sign), then p -= lr x
        self.muon_apply(p, x, lr, wd)

    def state_dict(self) -> dict:
        return {"t": self.t, "m": to_numpy(self.m), "v": to_numpy(self.v), "momentum": to_numpy(self.momentum)}

    def load_state_dict(self, state: dict):
        self.t = int(state["t"])
        for key in ("m", "v", "momentum"):
            getattr(self, key)[...] = self.xp.asarray(state[key])


def orthogonalize(g, steps: int = 5):
    """Approximate the nearest semi-orthogonal matrix to g (its polar factor U V^T)."""
    transposed = g.shape[0] > g.shape[1]
    x = g.T if transposed else g                           # wide: (rows <= cols)
    x = x / (1.01 * xp_of(x).sqrt((x * x).sum()) + 1e-6)   # spectral norm <= Frobenius norm < 1
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = x @ x.T                                        # (rows, rows)
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    return x.T if transposed else x


# --- the update math, in place ---------------------------------------------------------

def adamw_update(p, grad, m, v, *, lr, beta1, beta2, eps, wd, t):
    """AdamW step t (1-based) as torch.optim.AdamW, in place on p, m, v."""
    if wd:
        p *= 1 - lr * wd                               # decoupled weight decay
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    denom = xp_of(v).sqrt(v)
    denom *= 1 / math.sqrt(1 - beta2 ** t)
    denom += eps
    p -= (lr / (1 - beta1 ** t)) * m / denom          # as torch.optim.AdamW


def muon_momentum(grad, buf, mu, out=None):
    """buf = mu buf + (1-mu) grad in place; returns the Nesterov look-ahead
    u = (1-mu) grad + mu buf (written to `out` if given; `out` may be grad)."""
    buf *= mu
    buf += (1 - mu) * grad
    u = (1 - mu) * grad + mu * buf
    if out is None:
        return u
    out[...] = u
    return out


def muon_apply(p, x, lr, wd):
    """Cautious weight decay (x += wd p where x and p agree in sign) and the step p -= lr x, in
    place on p. `lr` is the final one (shape factor included); x is scratch and may be overwritten."""
    if wd:
        x += wd * p * (x * p >= 0)
    p -= lr * x
