"""
A PyTorch autograd mirror of the trainer's GPT, for tests only.

Written from the model contract (issue 2, "Show it"), not from trainer/model.py, so that it is an
independent check of the hand-written forward and backward: load the trainer's weights by name,
run the same batch, compare loss, logits and every gradient. Also a hand-written Muon and
torch.optim.AdamW grouped as the trainer's optimizer groups its parameters.

    ref = TorchGPT(cfg.to_dict(), dtype=torch.float64)
    ref.load_numpy(model.params)            # names and shapes must match exactly
    loss = ref.forward(idx, targets)        # torch scalar, mean cross-entropy
    loss.backward(); grads = ref.grads()    # name -> numpy array
    opt = make_torch_optimizer(ref, cfg.to_dict()); opt.step(lr_mult=1.0)
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

VOCAB_MULTIPLE = 128  # the embedding table and head are padded to this many rows (llm.c)

# Polar-Express coefficients (a, b, c) of Muon's Newton-Schulz iteration, in order
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float32": torch.float32, "float64": torch.float64}[str(dtype)]


def param_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """name -> shape of every parameter the contract says this config has, in a fixed order."""
    C, H, KV, L = cfg["n_embd"], cfg["n_head"], cfg["n_kv_head"], cfg["n_layer"]
    D = C // H
    Vp = -(-cfg["vocab_size"] // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    layer, bias = cfg["norm"] == "layer", cfg["bias"]
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (Vp, C)}
    if cfg["pos"] == "learned":
        shapes["transformer.wpe.weight"] = (cfg["sequence_len"], C)
    if cfg["embed_norm"] and layer:
        shapes["transformer.ln_e.weight"] = (C,)
        if bias:
            shapes["transformer.ln_e.bias"] = (C,)
    if cfg["lambdas"]:
        shapes["resid_lambdas"] = (L,)
        shapes["x0_lambdas"] = (L,)

    def linear(name, n_out, n_in):
        shapes[name + ".weight"] = (n_out, n_in)
        if bias:
            shapes[name + ".bias"] = (n_out,)

    def layernorm(name):
        if layer:
            shapes[name + ".weight"] = (C,)
            if bias:
                shapes[name + ".bias"] = (C,)

    for i in range(L):
        p = f"transformer.h.{i}."
        layernorm(p + "ln_1")
        if cfg["fused_qkv"]:
            linear(p + "attn.c_attn", (H + 2 * KV) * D, C)
        else:
            linear(p + "attn.c_q", H * D, C)
            linear(p + "attn.c_k", KV * D, C)
            linear(p + "attn.c_v", KV * D, C)
        linear(p + "attn.c_proj", C, H * D)
        layernorm(p + "ln_2")
        linear(p + "mlp.c_fc", 4 * C, C)
        linear(p + "mlp.c_proj", C, 4 * C)
    layernorm("transformer.ln_f")
    if not cfg["tie_embeddings"]:
        shapes["lm_head.weight"] = (Vp, C)
    return shapes


class TorchGPT:
    """The contract's forward pass in plain torch ops; autograd supplies the backward."""

    def __init__(self, cfg: dict, dtype=torch.float64, seed: int = 0, fast: bool = False, device: str = "cpu",
                 matmul=None):
        # fast=True: PyTorch's own fused ops (SDPA, F.rms_norm) — the strong eager peer that
        # `python -m trainer bench` compares with; the tests use the plain ops
        self.fast = fast
        self.cfg = dict(cfg)
        self.dtype, self.device = _dtype(dtype), torch.device(device)  # the bench's peer runs on "cuda" too
        self.matmul = matmul  # a replacement for every matmul (e.g. one rounding its inputs), or None
        c = self.cfg
        if c["n_embd"] % c["n_head"] or c["n_head"] % c["n_kv_head"]:
            raise ValueError("n_embd must divide by n_head and n_head by n_kv_head")
        self.head_dim = c["n_embd"] // c["n_head"]
        self.padded_vocab_size = -(-c["vocab_size"] // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        if "padded_vocab_size" in c and c["padded_vocab_size"] != self.padded_vocab_size:
            raise ValueError(f"cfg says padded_vocab_size={c['padded_vocab_size']}, "
                             f"contract gives {self.padded_vocab_size}")
        if "head_dim" in c and c["head_dim"] != self.head_dim:
            raise ValueError(f"cfg says head_dim={c['head_dim']}, contract gives {self.head_dim}")
        # placeholder values only; tests load the trainer's weights with load_numpy
        gen = torch.Generator().manual_seed(seed)
        self.params: dict[str, torch.Tensor] = {}
        for name, shape in param_shapes(c).items():
            t = 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
            if len(shape) == 1 and not name.endswith(".bias"):
                t += 1.0  # gains and lambdas around 1
            self.params[name] = t.to(device=self.device, dtype=self.dtype).requires_grad_(True)
        self.logits = None

    # ---- weights ---------------------------------------------------------------------------
    def load_numpy(self, params: dict) -> None:
        """Copy arrays in by name; missing or extra names, or wrong shapes, are an error."""
        missing = sorted(set(self.params) - set(params))
        extra = sorted(set(params) - set(self.params))
        if missing or extra:
            raise KeyError(f"parameter names differ from the contract: missing {missing}, extra {extra}")
        with torch.no_grad():
            for name, t in self.params.items():
                a = np.asarray(params[name])
                if tuple(a.shape) != tuple(t.shape):
                    raise ValueError(f"{name}: shape {tuple(a.shape)}, contract {tuple(t.shape)}")
                t.copy_(torch.from_numpy(np.array(a, dtype=np.float64)).to(self.dtype))

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {n: t.detach().cpu().numpy().copy() for n, t in self.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        """name -> gradient (zeros where autograd produced none)."""
        out = {}
        for n, t in self.params.items():
            g = t.grad if t.grad is not None else torch.zeros_like(t)
            out[n] = g.detach().cpu().numpy().copy()
        return out

    def zero_grad(self) -> None:
        for t in self.params.values():
            t.grad = None

    # ---- ops -------------------------------------------------------------------------------
    def rmsnorm(self, x):
        eps = torch.finfo(x.dtype).eps
        if self.fast:
            return F.rms_norm(x, (x.shape[-1],), eps=eps)
        return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)

    def norm(self, x, name):
        """norm=rms: param-free RMSNorm; norm=layer: LayerNorm named `name` (eps 1e-5)."""
        if self.cfg["norm"] == "rms":
            return self.rmsnorm(x)
        p = self.params
        return F.layer_norm(x, (x.shape[-1],), p[name + ".weight"], p.get(name + ".bias"), eps=1e-5)

    def linear(self, x, name):
        w, b = self.params[name + ".weight"], self.params.get(name + ".bias")
        if self.matmul is None:
            return F.linear(x, w, b)
        y = self.matmul(x, w.t())
        return y if b is None else y + b

    def mm(self, a, b):
        return a @ b if self.matmul is None else self.matmul(a, b)

    def rotary(self, x):
        """x (B, T, nh, D), half-split layout, angle[t, j] = t * base^(-2j/D)."""
        T, D = x.shape[1], x.shape[3]
        j = torch.arange(D // 2, dtype=torch.float64)
        inv_freq = float(self.cfg["rope_base"]) ** (-2.0 * j / D)
        angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
        cos = torch.cos(angle).to(x.device, x.dtype)[None, :, None, :]
        sin = torch.sin(angle).to(x.device, x.dtype)[None, :, None, :]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)

    def attn(self, x, i):
        c, p = self.cfg, f"transformer.h.{i}.attn."
        B, T, C = x.shape
        H, KV, D = c["n_head"], c["n_kv_head"], self.head_dim
        if c["fused_qkv"]:
            qkv = self.linear(x, p + "c_attn")
            q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
        else:
            q, k, v = self.linear(x, p + "c_q"), self.linear(x, p + "c_k"), self.linear(x, p + "c_v")
        q, k, v = q.view(B, T, H, D), k.view(B, T, KV, D), v.view(B, T, KV, D)
        if c["pos"] == "rope":
            q, k = self.rotary(q), self.rotary(k)
        if c["qk_norm"]:
            q, k = self.rmsnorm(q), self.rmsnorm(k)  # always param-free RMS over D
        q, k = q * c["qk_gain"], k * c["qk_gain"]
        if self.fast:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV < H)
            return self.linear(y.transpose(1, 2).reshape(B, T, H * D), p + "c_proj")
        # GQA: query head h reads kv head h // (H // KV)
        k = k.repeat_interleave(H // KV, dim=2)
        v = v.repeat_interleave(H // KV, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        att = self.mm(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(D))  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = self.mm(att, v).transpose(1, 2).reshape(B, T, H * D)
        return self.linear(y, p + "c_proj")

    def mlp(self, x, i):
        p = f"transformer.h.{i}.mlp."
        h = self.linear(x, p + "c_fc")
        if self.cfg["mlp"] == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh")
        return self.linear(h, p + "c_proj")

    # ---- model -----------------------------------------------------------------------------
    def forward(self, idx, targets=None):
        """idx, targets: int (B, T). Returns the mean cross-entropy (torch scalar), or the
        logits when targets is None. self.logits holds (B, T, vocab_size) post-softcap."""
        c, p = self.cfg, self.params
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        B, T = idx.shape
        x = p["transformer.wte.weight"][idx]  # (B, T, C)
        if c["pos"] == "learned":
            x = x + p["transformer.wpe.weight"][:T]
        if c["embed_norm"]:
            x = self.norm(x, "transformer.ln_e")
        x0 = x
        for i in range(c["n_layer"]):
            if c["lambdas"]:
                x = p["resid_lambdas"][i] * x + p["x0_lambdas"][i] * x0
            x = x + self.attn(self.norm(x, f"transformer.h.{i}.ln_1"), i)
            x = x + self.mlp(self.norm(x, f"transformer.h.{i}.ln_2"), i)
        x = self.norm(x, "transformer.ln_f")
        w_head = p["transformer.wte.weight"] if c["tie_embeddings"] else p["lm_head.weight"]
        logits = self.mm(x, w_head.T)[..., : c["vocab_size"]]  # (B, T, Vp) sliced to (B, T, V)
        if c["softcap"] > 0:
            logits = c["softcap"] * torch.tanh(logits / c["softcap"])
        self.logits = logits
        if targets is None:
            return logits
        targets = torch.as_tensor(targets, dtype=torch.long, device=self.device)
        return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))

    __call__ = forward

    def loss_and_grads(self, idx, targets) -> tuple[float, dict[str, np.ndarray]]:
        self.zero_grad()
        loss = self.forward(idx, targets)
        loss.backward()
        return loss.item(), self.grads()


# ---- optimizers ------------------------------------------------------------------------------
def param_groups(names) -> dict[str, list[str]]:
    """The contract's grouping by name: matrix / embedding / unembedding / scalar."""
    groups = {"matrix": [], "embedding": [], "unembedding": [], "scalar": []}
    for name, shape in names.items():
        if len(shape) == 1:
            groups["scalar"].append(name)
        elif name in ("transformer.wte.weight", "transformer.wpe.weight"):
            groups["embedding"].append(name)
        elif name == "lm_head.weight":
            groups["unembedding"].append(name)
        elif len(shape) == 2 and name.startswith("transformer.h."):
            groups["matrix"].append(name)
        else:
            raise ValueError(f"{name} {tuple(shape)} falls in no optimizer group")
    return groups


class TorchMuon:
    """Muon written out by hand from the contract: Nesterov momentum, Polar-Express
    Newton-Schulz orthogonalization, shape-aware lr, cautious weight decay."""

    def __init__(self, params, lr, weight_decay, momentum, ns_steps):
        self.params, self.lr, self.wd = list(params), lr, weight_decay
        self.mu, self.ns_steps = momentum, ns_steps
        self.bufs = [torch.zeros_like(p) for p in self.params]

    @staticmethod
    def orthogonalize(u, ns_steps):
        rows, cols = u.shape
        X = u.T if rows > cols else u
        X = X / (1.01 * torch.linalg.matrix_norm(X, ord="fro") + 1e-6)
        for a, b, c in POLAR_EXPRESS[:ns_steps]:
            A = X @ X.T
            Bm = b * A + c * (A @ A)
            X = a * X + Bm @ X
        return X.T if rows > cols else X

    @torch.no_grad()
    def step(self, lr_mult=1.0):
        lr = self.lr * lr_mult
        for p, buf in zip(self.params, self.bufs):
            g = p.grad
            buf.mul_(self.mu).add_((1 - self.mu) * g)
            u = (1 - self.mu) * g + self.mu * buf  # Nesterov
            X = self.orthogonalize(u, self.ns_steps)
            rows, cols = p.shape
            eff_lr = lr * math.sqrt(max(1.0, rows / cols))
            mask = (X * p >= 0).to(p.dtype)  # p before the update
            p.sub_(eff_lr * (X + self.wd * p * mask))


class TorchOptimizer:
    """torch.optim.AdamW for the AdamW groups, TorchMuon for the matrix group when muon."""

    def __init__(self, model: TorchGPT, cfg: dict, fused: bool = False):
        c = cfg
        groups = param_groups({n: tuple(t.shape) for n, t in model.params.items()})
        lrs = {"matrix": c["matrix_lr"], "embedding": c["embedding_lr"],
               "unembedding": c["unembedding_lr"], "scalar": c["scalar_lr"]}
        wds = {"matrix": c["weight_decay"], "embedding": c["embedding_weight_decay"],
               "unembedding": c["embedding_weight_decay"], "scalar": 0.0}
        self.groups = groups
        self.muon = None
        adam_groups = []
        for g, names in groups.items():
            if not names:
                continue
            tensors = [model.params[n] for n in names]
            if g == "matrix" and c["optimizer"] == "muon":
                self.muon = TorchMuon(tensors, lrs[g], wds[g], c["muon_momentum"], c["muon_ns_steps"])
            else:
                adam_groups.append({"params": tensors, "lr": lrs[g], "weight_decay": wds[g],
                                    "base_lr": lrs[g], "group": g})
        self.adamw = torch.optim.AdamW(adam_groups, betas=(c["adam_beta1"], c["adam_beta2"]),
                                       eps=c["adam_eps"], foreach=False, fused=fused)

    def step(self, lr_mult=1.0):
        for group in self.adamw.param_groups:
            group["lr"] = group["base_lr"] * lr_mult
        self.adamw.step()
        if self.muon is not None:
            self.muon.step(lr_mult)


def make_torch_optimizer(model: TorchGPT, cfg: dict, fused: bool = False) -> TorchOptimizer:
    return TorchOptimizer(model, cfg, fused=fused)
