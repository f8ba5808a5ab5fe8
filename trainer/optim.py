"""
Optimizers: AdamW, and Muon for the 2-D matrices inside blocks, grouped as nanochat does.

Groups, by parameter name:
  matrix      2-D params inside transformer.h.*   Muon (optimizer=muon) or AdamW, lr matrix_lr
  embedding   wte, wpe                            AdamW, lr embedding_lr
  unembedding lm_head                             AdamW, lr unembedding_lr
  scalar      every 1-D param (biases, gains, lambdas)  AdamW, lr scalar_lr, no weight decay

    opt = make_optimizer(model)
    model.forward(x, y); model.backward(); opt.step(lr_mult=schedule(step))
"""
from __future__ import annotations

import math

from trainer.backend import to_numpy, xp_of

# Polar Express coefficients (a, b, c) for the quintic iterations orthogonalizing Muon's update
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def param_groups(model) -> dict[str, list[str]]:
    groups = {"matrix": [], "embedding": [], "unembedding": [], "scalar": []}
    for name, p in model.params.items():
        if p.ndim == 1:
            groups["scalar"].append(name)
        elif name.startswith("transformer.h."):
            groups["matrix"].append(name)
        elif name == "lm_head.weight":
            groups["unembedding"].append(name)
        else:
            groups["embedding"].append(name)
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
    """AdamW over `adamw_groups`, Muon over `muon_group`; state is one buffer per parameter."""

    def __init__(self, model, adamw_groups, muon_group):
        self.model, self.xp = model, model.xp
        self.adamw_groups = [g for g in adamw_groups if g["names"]]
        self.muon_group = muon_group if muon_group and muon_group["names"] else None
        zeros = lambda name: self.xp.zeros_like(model.params[name])
        self.m = {n: zeros(n) for g in self.adamw_groups for n in g["names"]}
        self.v = {n: zeros(n) for g in self.adamw_groups for n in g["names"]}
        self.momentum = {n: zeros(n) for n in (self.muon_group or {"names": []})["names"]}
        self.t = 0

    def step(self, lr_mult: float = 1.0, muon_momentum: float | None = None):
        self.t += 1
        for g in self.adamw_groups:
            for name in g["names"]:
                self._adamw(name, g["lr"] * lr_mult, g)
        if self.muon_group:
            g = self.muon_group
            mu = g["momentum"] if muon_momentum is None else muon_momentum
            for name in g["names"]:
                self._muon(name, g["lr"] * lr_mult, g["wd"], mu, g["ns_steps"])

    def _adamw(self, name, lr, g):
        p, grad, m, v = self.model.params[name], self.model.grads[name], self.m[name], self.v[name]
        b1, b2 = g["beta1"], g["beta2"]
        if g["wd"]:
            p *= 1 - lr * g["wd"]                      # decoupled weight decay
        m *= b1
        m += (1 - b1) * grad                           # m = b1 m + (1-b1) g
        v *= b2
        v += (1 - b2) * grad * grad                    # v = b2 v + (1-b2) g^2
        # p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), as torch.optim.AdamW
        denom = self.xp.sqrt(v) / math.sqrt(1 - b2 ** self.t) + g["eps"]
        p -= (lr / (1 - b1 ** self.t)) * m / denom

    def _muon(self, name, lr, wd, mu, ns_steps):
        p, grad, buf = self.model.params[name], self.model.grads[name], self.momentum[name]
        buf *= mu
        buf += (1 - mu) * grad                         # buf = mu buf + (1-mu) g
        u = (1 - mu) * grad + mu * buf                 # Nesterov look-ahead
        x = orthogonalize(u, ns_steps)
        rows, cols = p.shape
        lr = lr * math.sqrt(max(1.0, rows / cols))     # shape-aware: tall matrices step further
        if wd:  # cautious weight decay: only where the update and the weight agree in sign
            x += wd * p * (x * p >= 0)
        p -= lr * x

    def state_dict(self) -> dict:
        state = {"t": self.t}
        for kind, bufs in (("m", self.m), ("v", self.v), ("momentum", self.momentum)):
            state.update({f"{kind}/{n}": to_numpy(b) for n, b in bufs.items()})
        return state

    def load_state_dict(self, state: dict):
        self.t = int(state["t"])
        for kind, bufs in (("m", self.m), ("v", self.v), ("momentum", self.momentum)):
            for n, b in bufs.items():
                b[...] = self.xp.asarray(state[f"{kind}/{n}"])


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
