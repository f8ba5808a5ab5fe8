"""
The GPT: parameters in one flat buffer with named views, a forward that caches what the
backward needs, and a hand-written backward. No autograd.

    model = GPT(make_config("nanochat", depth=2), seed=0, dtype="float64")
    loss = model.forward(idx, targets)   # idx, targets (B, T) ints -> mean cross-entropy
    model.backward()                     # fills model.grads (same names as model.params)

Parameter names follow the PyTorch modules of nanochat and nanoGPT's GPT-2 (weights in
Linear layout (out, in)), so either's state_dict maps 1:1.
"""
from __future__ import annotations

import math

import numpy as np

from trainer import cpu_kernels, kernels, ops
from trainer.backend import array_module, to_numpy
from trainer.config import Config
from trainer.optim import GROUP_ORDER, param_group


def param_shapes(cfg: Config) -> list[tuple[str, tuple]]:
    """Every parameter's name and shape, in buffer order."""
    C, D, V = cfg.n_embd, cfg.head_dim, cfg.padded_vocab_size
    QD, KD = cfg.n_head * D, cfg.n_kv_head * D
    layer_norm = cfg.norm == "layer"

    def norm(name):
        return [(f"{name}.weight", (C,))] + ([(f"{name}.bias", (C,))] if cfg.bias else [])

    def linear(name, n_out, n_in):
        return [(f"{name}.weight", (n_out, n_in))] + ([(f"{name}.bias", (n_out,))] if cfg.bias else [])

    shapes = [("transformer.wte.weight", (V, C))]
    if cfg.pos == "learned":
        shapes += [("transformer.wpe.weight", (cfg.sequence_len, C))]
    if cfg.embed_norm and layer_norm:
        shapes += norm("transformer.ln_e")
    if cfg.lambdas:
        shapes += [("resid_lambdas", (cfg.n_layer,)), ("x0_lambdas", (cfg.n_layer,))]
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}"
        shapes += norm(f"{h}.ln_1") if layer_norm else []
        if cfg.fused_qkv:
            shapes += linear(f"{h}.attn.c_attn", QD + 2 * KD, C)
        else:  # q, k, v kept adjacent (weights, then biases) so they also form one fused matrix
            qkv = [(f"{h}.attn.c_{n}", d) for n, d in (("q", QD), ("k", KD), ("v", KD))]
            shapes += [(f"{n}.weight", (d, C)) for n, d in qkv]
            shapes += [(f"{n}.bias", (d,)) for n, d in qkv] if cfg.bias else []
        shapes += linear(f"{h}.attn.c_proj", C, QD)
        shapes += norm(f"{h}.ln_2") if layer_norm else []
        shapes += linear(f"{h}.mlp.c_fc", 4 * C, C)
        shapes += linear(f"{h}.mlp.c_proj", C, 4 * C)
    shapes += norm("transformer.ln_f") if layer_norm else []
    if not cfg.tie_embeddings:
        shapes += [("lm_head.weight", (V, C))]
    return shapes


def elementwise_ops(xp):
    """The one choice of backend: where the model's norms, rotary, activations and softmax (and
    the optimizer's updates) come from: fused CUDA kernels on a GPU (trainer/kernels.py), fused
    Numba kernels on the CPU (trainer/cpu_kernels.py), or their NumPy twins (trainer/ops.py; the
    optimizer's reference math in trainer/optim.py) when neither is usable. The kernel modules
    have their twins' functions with the same signatures."""
    if kernels.available(xp):
        return kernels
    return cpu_kernels if xp is np and cpu_kernels.available() else ops


MATMUL_PRECISIONS = {"fp32": 23, "tf32": 10, "bf16": 7}  # mantissa bits a matmul input keeps


def model_matmul(precision: str, xp, ew):
    """The matmul every op of the model uses (--matmul). 'fp32' takes the inputs as stored.
    'tf32' and 'bf16' round both inputs to that format's values (ew.round_mantissa, to nearest
    even) and accumulate in the storage dtype: in float32 that is what tensor cores compute,
    since products of such values are exact in float32. Storage stays float32 (or float64, where
    the tests check the rounding exactly). On a GPU, float32 matmuls then run on tensor cores in
    TF32 mode (compute capability 8.0+; older GPUs give the same numbers without the speed); on
    the CPU it is an emulation for studying the numerics, slower than fp32."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"--matmul must be one of {', '.join(MATMUL_PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return ops.matmul
    keep = MATMUL_PRECISIONS[precision]

    def rounded_matmul(a, b, out=None):
        return xp.matmul(ew.round_mantissa(a, keep), ew.round_mantissa(b, keep), out=out)
    if xp is np:
        return rounded_matmul
    import cupy._core
    from cupy._core._routines_linalg import COMPUTE_TYPE_TF32  # CuPy's switch behind CUPY_TF32=1

    def tensor_core_matmul(a, b, out=None):  # TF32 mode for these matmuls only, not Muon's
        if a.dtype != xp.float32:
            return rounded_matmul(a, b, out)
        before = cupy._core.get_compute_type(a.dtype)
        cupy._core.set_compute_type(a.dtype, COMPUTE_TYPE_TF32)
        try:
            return rounded_matmul(a, b, out)
        finally:
            cupy._core.set_compute_type(a.dtype, before)
    return tensor_core_matmul


def buffer_order(shapes):
    """Lay parameters out group by group so every optimizer group is one contiguous range
    (a stable sort: q, k, v stay adjacent inside the matrix group)."""
    return sorted(shapes, key=lambda s: GROUP_ORDER.index(param_group(s[0], len(s[1]))))


class FlatBuffer:
    """One contiguous array and named views into it; `span` gives a view over adjacent names."""

    def __init__(self, shapes, xp, dtype):
        self.offsets, offset = {}, 0
        for name, shape in shapes:
            self.offsets[name] = (offset, shape)
            offset += math.prod(shape)
        self.data = xp.zeros(offset, dtype=dtype)
        self.views = {name: self.view(name) for name, _ in shapes}

    def view(self, name):
        offset, shape = self.offsets[name]
        return self.data[offset:offset + math.prod(shape)].reshape(shape)

    def range_of(self, names) -> tuple[int, int]:
        """[start, end) of the buffer holding exactly these (adjacent) parameters."""
        start = min(self.offsets[n][0] for n in names)
        end = max(self.offsets[n][0] + math.prod(self.offsets[n][1]) for n in names)
        assert end - start == sum(math.prod(self.offsets[n][1]) for n in names), "not contiguous"
        return start, end

    def span(self, first, last, shape):
        start, end = self.offsets[first][0], self.offsets[last][0] + math.prod(self.offsets[last][1])
        return self.data[start:end].reshape(shape)


class GPT:
    def __init__(self, cfg: Config, seed: int = 0, dtype: str = "float32", device: str = "cpu",
                 matmul: str = "fp32"):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.xp = xp = array_module(device)
        shapes = buffer_order(param_shapes(cfg))
        self.param_buf = FlatBuffer(shapes, xp, dtype)
        self.grad_buf = FlatBuffer(shapes, xp, dtype)
        self.params, self.grads = self.param_buf.views, self.grad_buf.views
        self.blocks = [self._block_views(self.param_buf, i) for i in range(cfg.n_layer)]
        self.grad_blocks = [self._block_views(self.grad_buf, i) for i in range(cfg.n_layer)]
        self.ew = elementwise_ops(xp)
        self.fused = self.ew is kernels  # softcap + cross-entropy as one CUDA kernel
        self.matmul = model_matmul(matmul, xp, self.ew)
        self.eps = float(np.finfo(dtype).eps)  # RMSNorm eps as torch's F.rms_norm default
        if cfg.pos == "rope":
            self.cos, self.sin = ops.rotary_tables(cfg.sequence_len, cfg.head_dim, cfg.rope_base, xp, dtype)
        T = cfg.sequence_len
        self.mask = xp.triu(xp.full((T, T), -xp.inf, dtype=dtype), k=1)  # additive causal mask
        self.init_weights(seed)
        self.cache = None

    def _block_views(self, buf: FlatBuffer, i: int) -> dict:
        """Layer i's tensors under short names; q, k, v as one (QD+2KD, C) matrix either way."""
        cfg, h = self.cfg, f"transformer.h.{i}"
        C, QD, KD = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        v = buf.views
        b = {"attn_w": v[f"{h}.attn.c_proj.weight"], "attn_b": v.get(f"{h}.attn.c_proj.bias"),
             "fc_w": v[f"{h}.mlp.c_fc.weight"], "fc_b": v.get(f"{h}.mlp.c_fc.bias"),
             "proj_w": v[f"{h}.mlp.c_proj.weight"], "proj_b": v.get(f"{h}.mlp.c_proj.bias"),
             "ln_1": (v.get(f"{h}.ln_1.weight"), v.get(f"{h}.ln_1.bias")),
             "ln_2": (v.get(f"{h}.ln_2.weight"), v.get(f"{h}.ln_2.bias"))}
        if cfg.fused_qkv:
            b["qkv_w"], b["qkv_b"] = v[f"{h}.attn.c_attn.weight"], v.get(f"{h}.attn.c_attn.bias")
        else:
            b["qkv_w"] = buf.span(f"{h}.attn.c_q.weight", f"{h}.attn.c_v.weight", (QD + 2 * KD, C))
            b["qkv_b"] = buf.span(f"{h}.attn.c_q.bias", f"{h}.attn.c_v.bias", (QD + 2 * KD,)) if cfg.bias else None
        return b

    # ------------------------------------------------------------------------------------
    # init: nanochat's by default (zero output projections, tiny head, lambdas 1.15->1.05 and
    # 0.20->0.05); GPT-2's normal(0.02) with scaled residual projections for the gpt2 preset.

    def init_weights(self, seed: int):
        cfg, rng = self.cfg, np.random.default_rng(seed)  # drawn on the CPU: same init on any device
        C, L = cfg.n_embd, cfg.n_layer
        gpt2 = cfg.init == "gpt2"
        for name, p in self.params.items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                val = np.zeros(p.shape)
            elif ".ln_" in name:
                val = np.ones(p.shape)
            elif name == "resid_lambdas":
                val = 1.15 - 0.10 * np.arange(L) / max(L - 1, 1)
            elif name == "x0_lambdas":
                val = 0.20 - 0.15 * np.arange(L) / max(L - 1, 1)
            elif gpt2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") else 0.02
                val = rng.normal(0, 0.01 if "wpe" in name else std, p.shape)
            elif "wte" in name:
                val = rng.normal(0, 0.8, p.shape)
            elif "wpe" in name:
                val = rng.normal(0, 0.02, p.shape)
            elif name == "lm_head.weight":
                val = rng.normal(0, 0.001, p.shape)
            elif name.endswith("c_proj.weight"):
                val = np.zeros(p.shape)
            else:  # c_q/c_k/c_v/c_attn uniform with std 1/sqrt(C); c_fc at 0.4x that
                s = math.sqrt(3 / C) * (0.4 if "c_fc" in name else 1.0)
                val = rng.uniform(-s, s, p.shape)
            p[...] = self.xp.asarray(val, dtype=self.dtype)

    # ------------------------------------------------------------------------------------
    # forward

    def forward(self, idx, targets=None):
        """idx (B, T) -> mean cross-entropy over all B*T targets (or the logits if no targets)."""
        cfg, xp, P = self.cfg, self.xp, self.params
        idx = xp.asarray(idx)
        B, T = idx.shape
        if T > cfg.sequence_len:
            raise ValueError(f"sequence of {T} tokens is longer than sequence_len {cfg.sequence_len}")
        cache = {"idx": idx, "blocks": []}
        x = P["transformer.wte.weight"][idx]                          # (B, T, C)
        if cfg.pos == "learned":
            x += P["transformer.wpe.weight"][:T]
        if cfg.embed_norm:
            x, cache["norm_e"] = self._norm_forward(x, "transformer.ln_e")
        x0 = cache["x0"] = x
        for i, blk in enumerate(self.blocks):
            c = {}
            if cfg.lambdas:
                c["x_in"] = x
                x = P["resid_lambdas"][i] * x + P["x0_lambdas"][i] * x0
            h, c["norm_1"] = self._norm_forward(x, blk["ln_1"])
            a, c["attn"] = self._attention_forward(h, blk)
            x = x + a
            h, c["norm_2"] = self._norm_forward(x, blk["ln_2"])
            m, c["mlp"] = self._mlp_forward(h, blk)
            x = x + m
            cache["blocks"].append(c)
        x, cache["norm_f"] = self._norm_forward(x, "transformer.ln_f")
        cache["x_f"] = x
        # (B, T, V), the padded vocab rows sliced off
        logits = ops.linear_forward(x, self._head()[:cfg.vocab_size], matmul=self.matmul)
        if targets is not None and self.fused:  # GPU: softcap + cross-entropy in one kernel pass
            self.logits = None  # raw logits stay in the cache; the softcapped ones are never stored
            targets = xp.asarray(targets).reshape(-1)
            losses, cache["fused_ce"] = kernels.softcap_cross_entropy_forward(
                logits.reshape(B * T, -1), targets, cfg.softcap)
            self.token_losses = losses.reshape(B, T)
            self.cache = cache
            return float(losses.mean())
        if cfg.softcap > 0:
            logits, cache["softcap"] = ops.softcap_forward(logits, cfg.softcap)
        self.logits = logits
        if targets is None:
            self.cache = None
            return logits
        targets = xp.asarray(targets).reshape(-1)
        losses, cache["ce"] = self.ew.cross_entropy_forward(logits.reshape(B * T, -1), targets)
        self.token_losses = losses.reshape(B, T)                      # nats, for val_bpb
        self.cache = cache
        return float(losses.mean())

    def _head(self):
        return self.params["transformer.wte.weight" if self.cfg.tie_embeddings else "lm_head.weight"]

    def _norm_forward(self, x, where):
        """where: a (weight, bias) pair of a layer's LayerNorm, or a top-level norm's name."""
        if self.cfg.norm == "rms":
            return self.ew.rmsnorm_forward(x, self.eps)
        w, b = where if isinstance(where, tuple) else (self.params[f"{where}.weight"], self.params.get(f"{where}.bias"))
        return self.ew.layernorm_forward(x, w, b)

    def _attention_forward(self, x, blk):
        cfg = self.cfg
        B, T, _ = x.shape
        H, KV, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        qkv = ops.linear_forward(x, blk["qkv_w"], blk["qkv_b"], self.matmul)  # (B, T, (H+2KV)*D)
        q = qkv[..., :H * D].reshape(B, T, H, D)
        k = qkv[..., H * D:(H + KV) * D].reshape(B, T, KV, D)
        v = qkv[..., (H + KV) * D:].reshape(B, T, KV, D)
        c = {"x": x}
        if cfg.pos == "rope":
            q = self.ew.rotary_forward(q, self.cos[:T], self.sin[:T])
            k = self.ew.rotary_forward(k, self.cos[:T], self.sin[:T])
        if cfg.qk_norm:
            q, c["q_norm"] = self.ew.rmsnorm_forward(q, self.eps)
            k, c["k_norm"] = self.ew.rmsnorm_forward(k, self.eps)
        if cfg.qk_gain != 1.0:
            q, k = q * cfg.qk_gain, k * cfg.qk_gain
        y, c["sdpa"] = ops.attention_forward(q, k, v, self.mask[:T, :T], self.ew.softmax_forward,
                                             self.matmul)
        y = y.reshape(B, T, H * D)
        c["y"] = y
        return ops.linear_forward(y, blk["attn_w"], blk["attn_b"], self.matmul), c

    def _mlp_forward(self, x, blk):
        h = ops.linear_forward(x, blk["fc_w"], blk["fc_b"], self.matmul)      # (B, T, 4C)
        if self.cfg.mlp == "relu2":
            a, act = self.ew.relu2_forward(h)
        else:
            a, act = self.ew.gelu_forward(h)
        return ops.linear_forward(a, blk["proj_w"], blk["proj_b"], self.matmul), {"x": x, "act": act, "a": a}

    # ------------------------------------------------------------------------------------
    # backward: the forward in reverse, writing every gradient in model.grads

    def backward(self):
        if self.cache is None:
            raise RuntimeError("backward() needs a forward() with targets first")
        cfg, xp, P, G, cache = self.cfg, self.xp, self.params, self.grads, self.cache
        idx = cache["idx"]
        B, T = idx.shape
        if "fused_ce" in cache:  # dlogits written over the cached raw logits
            ce = cache["fused_ce"]
            dlogits = kernels.softcap_cross_entropy_backward(ce, 1.0 / (B * T), out=ce[0]).reshape(B, T, -1)
        else:
            dlogits = self.ew.cross_entropy_backward(cache["ce"], 1.0 / (B * T)).reshape(B, T, -1)
            if cfg.softcap > 0:
                dlogits = ops.softcap_backward(dlogits, cache["softcap"])
        # head: logits = x_f W[:V]^T; padded rows of W get no gradient
        head, V = self._head(), cfg.vocab_size
        dhead = G["transformer.wte.weight" if cfg.tie_embeddings else "lm_head.weight"]
        dhead[V:] = 0
        dx = ops.linear_backward(dlogits, cache["x_f"], head[:V], dhead[:V], matmul=self.matmul)
        dx = self._norm_backward(dx, cache["norm_f"], "transformer.ln_f")
        dx0 = xp.zeros_like(dx) if cfg.lambdas else None
        for i in reversed(range(cfg.n_layer)):
            c, blk, gblk = cache["blocks"][i], self.blocks[i], self.grad_blocks[i]
            dh = self._mlp_backward(dx, c["mlp"], blk, gblk)
            dx = dx + self._norm_backward(dh, c["norm_2"], gblk["ln_2"])
            dh = self._attention_backward(dx, c["attn"], blk, gblk)
            dx = dx + self._norm_backward(dh, c["norm_1"], gblk["ln_1"])
            if cfg.lambdas:  # x = resid_lambdas[i] * x_in + x0_lambdas[i] * x0
                G["resid_lambdas"][i] = (dx * c["x_in"]).sum()
                G["x0_lambdas"][i] = (dx * cache["x0"]).sum()
                dx0 += P["x0_lambdas"][i] * dx
                dx = P["resid_lambdas"][i] * dx
        if cfg.lambdas:
            dx += dx0
        if cfg.embed_norm:
            dx = self._norm_backward(dx, cache["norm_e"], "transformer.ln_e")
        dx2 = dx.reshape(B * T, -1)
        if cfg.pos == "learned":
            dx.sum(axis=0, out=G["transformer.wpe.weight"][:T])
            G["transformer.wpe.weight"][T:] = 0
        dwte = G["transformer.wte.weight"]
        if not cfg.tie_embeddings:
            dwte[...] = 0
        self.ew.scatter_add_rows(dwte, idx.reshape(-1), dx2)
        self.cache = None  # a second backward without a forward is an error, not a silent reuse

    def _norm_backward(self, dy, cache, where):
        if self.cfg.norm == "rms":
            return self.ew.rmsnorm_backward(dy, cache)
        dw, db = where if isinstance(where, tuple) else (self.grads[f"{where}.weight"], self.grads.get(f"{where}.bias"))
        return self.ew.layernorm_backward(dy, cache, dw, db)

    def _attention_backward(self, dout, c, blk, gblk):
        cfg = self.cfg
        B, T, _ = dout.shape
        H, KV, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        dy = ops.linear_backward(dout, c["y"], blk["attn_w"], gblk["attn_w"], gblk["attn_b"], self.matmul)
        dq, dk, dv = ops.attention_backward(dy.reshape(B, T, H, D), c["sdpa"], self.ew.softmax_backward,
                                            self.matmul)
        if cfg.qk_gain != 1.0:
            dq, dk = dq * cfg.qk_gain, dk * cfg.qk_gain
        if cfg.qk_norm:
            dq = self.ew.rmsnorm_backward(dq, c["q_norm"])
            dk = self.ew.rmsnorm_backward(dk, c["k_norm"])
        if cfg.pos == "rope":
            dq = self.ew.rotary_backward(dq, self.cos[:T], self.sin[:T])
            dk = self.ew.rotary_backward(dk, self.cos[:T], self.sin[:T])
        dqkv = self.xp.concatenate([dq.reshape(B, T, H * D), dk.reshape(B, T, KV * D),
                                    dv.reshape(B, T, KV * D)], axis=-1)
        return ops.linear_backward(dqkv, c["x"], blk["qkv_w"], gblk["qkv_w"], gblk["qkv_b"],
                                   self.matmul)

    def _mlp_backward(self, dout, c, blk, gblk):
        da = ops.linear_backward(dout, c["a"], blk["proj_w"], gblk["proj_w"], gblk["proj_b"], self.matmul)
        if self.cfg.mlp == "relu2":
            dh = self.ew.relu2_backward(da, c["act"])
        else:
            dh = self.ew.gelu_backward(da, c["act"])
        return ops.linear_backward(dh, c["x"], blk["fc_w"], gblk["fc_w"], gblk["fc_b"], self.matmul)

    # ------------------------------------------------------------------------------------

    def state_numpy(self) -> dict:
        """name -> numpy copy of every parameter (for checkpoints and tests)."""
        return {name: to_numpy(p).copy() for name, p in self.params.items()}

    def load_numpy(self, state: dict):
        missing, extra = set(self.params) - set(state), set(state) - set(self.params)
        if missing or extra:
            raise ValueError(f"state does not match the model: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(extra)[:3]}")
        for name, p in self.params.items():
            if tuple(state[name].shape) != p.shape:
                raise ValueError(f"{name}: shape {tuple(state[name].shape)} != model's {p.shape}")
            p[...] = self.xp.asarray(state[name], dtype=self.dtype)
