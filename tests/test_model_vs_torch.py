"""
The trainer's hand-written forward and backward, checked against PyTorch autograd (as llm.c
checks itself). The reference in tests/reference/torch_gpt.py is written from the model contract
alone; here both load the same random weights by name and must agree on the loss, the logits,
every gradient, and ten optimizer steps.

    model = GPT(make_config("nanochat", **SMALL), seed=0, dtype="float64")
    randomize(model.params, seed=1)                  # zero inits hide bugs
    ref = TorchGPT(model.cfg.to_dict(), "float64"); ref.load_numpy(model.params)
    loss = model.forward(idx, targets); model.backward()
    ref_loss, ref_grads = ref.loss_and_grads(idx, targets)
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is a test-only dependency: pip install -e '.[test]'")

from trainer import GPT, make_config  # noqa: E402
from trainer.optim import make_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ itself is not a package
from reference.torch_gpt import TorchGPT, make_torch_optimizer  # noqa: E402

# tolerances of issue 2: loss relative error and per-tensor max|a-b| / max|b|
LOSS_TOL = {"float64": 1e-9, "float32": 1e-4}
GRAD_TOL = {"float64": 1e-7, "float32": 1e-4}
STEP_LOSS_TOL = {"float64": 1e-8, "float32": 1e-4}

# two small shapes; vocab 61 pads to 128 so the padded rows are exercised
SMALL = dict(vocab_size=61, sequence_len=8, n_layer=2, n_embd=32, n_head=4)   # head_dim 8
WIDER = dict(vocab_size=61, sequence_len=16, n_layer=2, n_embd=64, n_head=4)  # head_dim 16


# ---- helpers ---------------------------------------------------------------------------------
def randomize(params: dict, seed: int) -> None:
    """Every parameter nonzero and O(1): matrices N(0, 0.4) (0.2 for the 4C-fan-in c_proj),
    norm gains 1+N(0, 0.3), biases N(0, 0.3), resid_lambdas ~1, x0_lambdas ~0.3."""
    rng = np.random.default_rng(seed)
    for name, p in sorted(params.items()):
        if name == "resid_lambdas":
            value = 1.0 + 0.2 * rng.standard_normal(p.shape)
        elif name == "x0_lambdas":
            value = 0.3 + 0.1 * rng.standard_normal(p.shape)
        elif p.ndim == 1 and name.endswith(".weight"):
            value = 1.0 + 0.3 * rng.standard_normal(p.shape)
        elif p.ndim == 1:
            value = 0.3 * rng.standard_normal(p.shape)
        else:
            std = 0.2 if name.endswith("mlp.c_proj.weight") else 0.4
            value = std * rng.standard_normal(p.shape)
        p[...] = value  # params are writable views into the trainer's flat buffer


def batch(cfg, B: int, seed: int):
    rng = np.random.default_rng(seed)
    shape = (B, cfg.sequence_len)
    return rng.integers(0, cfg.vocab_size, shape), rng.integers(0, cfg.vocab_size, shape)


def rel_err(a, b) -> tuple[float, float]:
    """(max |a-b|, max |a-b| / max |b|); when b is all zeros the relative error is max |a|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return diff, (diff / scale if scale > 0 else diff)


def table(ours: dict, theirs: dict, tol: float, zero: frozenset = frozenset()) -> tuple[str, list[str]]:
    """A per-tensor table (name, shape, max abs diff, rel err) and the names over tol. Tensors in
    `zero` are exactly 0 in exact arithmetic, so both sides hold only rounding noise: their error
    is measured against the largest value of any tensor instead of their own."""
    lines = [f"{'tensor':44s} {'shape':>14s} {'max|diff|':>11s} {'rel err':>10s}"]
    scale = max((float(np.max(np.abs(b))) for b in theirs.values() if np.size(b)), default=0.0)
    bad = []
    for name in theirs:
        a, b = np.asarray(ours[name]), np.asarray(theirs[name])
        if a.shape != b.shape:
            lines.append(f"{name:44s} {str(a.shape):>14s} shape differs from torch {b.shape}")
            bad.append(name)
            continue
        diff, rel = rel_err(a, b)
        note = ""
        if name in zero:
            rel, note = diff / scale if scale > 0 else diff, "  (exactly 0: rel to largest tensor)"
        flag = "  <-- FAIL" if not rel <= tol else ""
        lines.append(f"{name:44s} {str(tuple(a.shape)):>14s} {diff:11.3e} {rel:10.3e}{flag}{note}")
        if flag:
            bad.append(name)
    return "\n".join(lines), bad


def zero_gradients(cfg) -> frozenset:
    """Gradients that vanish identically: with keys neither rotated nor normalized, a key bias b
    adds q.b to a whole row of attention scores, which the softmax ignores."""
    if cfg.bias and not cfg.fused_qkv and cfg.pos == "learned" and not cfg.qk_norm:
        return frozenset(f"transformer.h.{i}.attn.c_k.bias" for i in range(cfg.n_layer))
    return frozenset()


def build_pair(preset: str, dtype: str, seed: int = 1, **overrides):
    """The trainer's GPT with randomized weights and the torch reference holding the same ones."""
    cfg = make_config(preset, **overrides)
    model = GPT(cfg, seed=0, dtype=dtype)
    randomize(model.params, seed)
    ref = TorchGPT(cfg.to_dict(), dtype=dtype)
    ref.load_numpy(model.params)
    return cfg, model, ref


# ---- forward and backward against autograd --------------------------------------------------
# (id, preset, overrides): each toggle flipped away from its preset, alone or with its partner
CASES = [
    ("nanochat", "nanochat", {}),
    ("nanochat-softcap_off", "nanochat", dict(softcap=0.0)),
    ("nanochat-softcap_2", "nanochat", dict(softcap=2.0)),  # tanh well into its curve
    ("nanochat-no_qk_norm", "nanochat", dict(qk_norm=False)),
    ("nanochat-qk_gain_0.7", "nanochat", dict(qk_gain=0.7)),
    ("nanochat-learned_pos", "nanochat", dict(pos="learned")),
    ("nanochat-rope_base_100", "nanochat", dict(rope_base=100.0)),
    ("nanochat-gelu", "nanochat", dict(mlp="gelu")),
    ("nanochat-tied", "nanochat", dict(tie_embeddings=True)),
    ("nanochat-layernorm", "nanochat", dict(norm="layer")),  # ln_e, ln_1, ln_2, ln_f gains only
    ("nanochat-layernorm_bias", "nanochat", dict(norm="layer", bias=True)),
    ("nanochat-bias", "nanochat", dict(bias=True)),
    ("nanochat-gqa_4to2", "nanochat", dict(n_kv_head=2)),
    ("nanochat-mqa_4to1", "nanochat", dict(n_kv_head=1)),
    ("nanochat-no_lambdas", "nanochat", dict(lambdas=False)),
    ("nanochat-no_embed_norm", "nanochat", dict(embed_norm=False)),
    ("nanochat-fused_qkv_gqa", "nanochat", dict(fused_qkv=True, n_kv_head=2)),
    ("nanochat-vocab_128_unpadded", "nanochat", dict(vocab_size=128)),
    ("nanochat-query_blocks_gqa", "nanochat", dict(sequence_len=128, n_kv_head=2)),  # causal blocks
    ("nanochat-query_blocks", "nanochat", dict(sequence_len=128)),
    ("gpt2", "gpt2", {}),
    ("gpt2-softcap_3", "gpt2", dict(softcap=3.0)),
    ("gpt2-qk_norm", "gpt2", dict(qk_norm=True, qk_gain=1.3)),
    ("gpt2-qk_gain_1.5", "gpt2", dict(qk_gain=1.5)),
    ("gpt2-rope", "gpt2", dict(pos="rope")),
    ("gpt2-relu2", "gpt2", dict(mlp="relu2")),
    ("gpt2-untied", "gpt2", dict(tie_embeddings=False)),
    ("gpt2-rmsnorm", "gpt2", dict(norm="rms")),
    ("gpt2-no_bias", "gpt2", dict(bias=False)),
    ("gpt2-gqa_4to2", "gpt2", dict(n_kv_head=2)),
    ("gpt2-gqa_unfused", "gpt2", dict(n_kv_head=2, fused_qkv=False)),
    ("gpt2-lambdas", "gpt2", dict(lambdas=True)),
    ("gpt2-embed_norm", "gpt2", dict(embed_norm=True)),  # ln_e with gain and bias
    ("gpt2-all_nanochat_toggles", "gpt2", dict(pos="rope", norm="rms", qk_norm=True, qk_gain=1.2,
                                               mlp="relu2", bias=False, tie_embeddings=False,
                                               softcap=15.0, lambdas=True, embed_norm=True)),
]


def _case_params():
    out = []
    for i, (name, preset, overrides) in enumerate(CASES):
        shape = SMALL if i % 2 == 0 else WIDER
        for dtype in ("float64", "float32"):
            out.append(pytest.param(preset, {**shape, **overrides}, dtype, id=f"{name}-{dtype}"))
    return out


def test_the_query_blocks_cases_take_the_causal_block_path():
    from trainer import ops
    assert ops.query_blocks(128) == 2 and ops.query_blocks(16) == 1


@pytest.mark.parametrize("preset,overrides,dtype", _case_params())
def test_forward_backward_match_torch(preset, overrides, dtype):
    cfg, model, ref = build_pair(preset, dtype, **overrides)
    idx, targets = batch(cfg, B=3 if cfg.n_embd > 32 else 2, seed=2)

    loss = model.forward(idx, targets)
    model.backward()
    ref_loss, ref_grads = ref.loss_and_grads(idx, targets)

    assert isinstance(loss, float), f"forward should return a python float, got {type(loss)}"
    assert set(model.grads) == set(ref_grads), "gradient names differ from the parameters"
    report, bad = table(model.grads, ref_grads, GRAD_TOL[dtype], zero_gradients(cfg))
    loss_rel = abs(loss - ref_loss) / abs(ref_loss)
    logits = np.asarray(model.logits)
    ref_logits = ref.logits.detach().numpy()
    assert logits.shape == ref_logits.shape == (*idx.shape, cfg.vocab_size)
    _, logits_rel = rel_err(logits, ref_logits)
    header = (f"{preset} {overrides} {dtype}: loss {loss!r} torch {ref_loss!r} rel {loss_rel:.3e}; "
              f"logits rel {logits_rel:.3e}\n")
    assert loss_rel <= LOSS_TOL[dtype], header + report
    assert logits_rel <= GRAD_TOL[dtype], header + report
    assert not bad, header + f"gradients over {GRAD_TOL[dtype]:g}: {bad}\n" + report


@pytest.mark.parametrize("preset,tie", [("nanochat", False), ("nanochat", True),
                                        ("gpt2", True), ("gpt2", False)],
                         ids=["nanochat-untied", "nanochat-tied", "gpt2-tied", "gpt2-untied"])
def test_padded_vocab_rows_get_zero_gradient_and_logits_are_sliced(preset, tie):
    cfg, model, ref = build_pair(preset, "float64", **SMALL, tie_embeddings=tie)
    V, Vp = cfg.vocab_size, cfg.padded_vocab_size
    assert (V, Vp) == (61, 128)
    assert model.params["transformer.wte.weight"].shape == (Vp, cfg.n_embd)
    idx, targets = batch(cfg, B=2, seed=3)
    model.forward(idx, targets)
    model.backward()
    assert np.asarray(model.logits).shape == (2, cfg.sequence_len, V)
    heads = ["transformer.wte.weight"] + ([] if tie else ["lm_head.weight"])
    for name in heads:
        pad = model.grads[name][V:]
        assert np.all(pad == 0), f"{name}: padded rows {V}..{Vp - 1} got gradient, max {np.abs(pad).max():.3e}"
        assert np.abs(model.grads[name][:V]).max() > 0
    # changing the padded rows must change nothing
    before = model.forward(idx, targets)
    for name in heads:
        model.params[name][V:] = 123.0
    assert abs(model.forward(idx, targets) - before) <= 1e-12 * abs(before), "padded rows leak into the loss"


def test_backward_overwrites_gradients():
    cfg, model, _ = build_pair("nanochat", "float64", **SMALL)
    idx, targets = batch(cfg, B=2, seed=4)
    model.forward(idx, targets)
    model.backward()
    first = {n: g.copy() for n, g in model.grads.items()}
    model.forward(idx, targets)
    model.backward()
    for name, g in model.grads.items():
        np.testing.assert_array_equal(g, first[name], err_msg=f"{name} accumulated across backward calls")


# ---- optimizer steps ----------------------------------------------------------------------------
# distinct lr per group and nonzero decays, so a parameter in the wrong group shows in the loss
OPT = dict(matrix_lr=0.02, embedding_lr=0.05, unembedding_lr=0.008, scalar_lr=0.03,
           weight_decay=0.1, embedding_weight_decay=0.05)
LR_MULTS = np.linspace(1.0, 0.3, 10)  # lr_mult must scale every group

STEP_CASES = [
    ("nanochat-muon", "nanochat", dict(optimizer="muon")),
    ("nanochat-adamw", "nanochat", dict(optimizer="adamw", matrix_lr=0.01)),
    ("nanochat-muon_ns3_gqa", "nanochat", dict(optimizer="muon", muon_ns_steps=3, n_kv_head=2)),
    ("gpt2-adamw", "gpt2", dict(optimizer="adamw", matrix_lr=0.01)),
    ("gpt2-muon", "gpt2", dict(optimizer="muon")),
    ("gpt2-untied-adamw", "gpt2", dict(optimizer="adamw", matrix_lr=0.01, tie_embeddings=False)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("preset,overrides", [pytest.param(p, o, id=i) for i, p, o in STEP_CASES])
def test_ten_optimizer_steps_match_torch(preset, overrides, dtype):
    cfg, model, ref = build_pair(preset, dtype, **SMALL, **{**OPT, **overrides})
    idx, targets = batch(cfg, B=2, seed=5)
    opt = make_optimizer(model)
    ref_opt = make_torch_optimizer(ref, cfg.to_dict())
    ours, theirs = [], []
    for lr_mult in LR_MULTS:
        ours.append(model.forward(idx, targets))
        model.backward()
        opt.step(lr_mult=float(lr_mult))
        ref.zero_grad()
        loss = ref.forward(idx, targets)
        loss.backward()
        ref_opt.step(lr_mult=float(lr_mult))
        theirs.append(loss.item())
    rels = [abs(a - b) / abs(b) for a, b in zip(ours, theirs)]
    report, _ = table(model.params, ref.numpy_params(), 0.0)
    steps = "\n".join(f"step {i}: loss {a!r} torch {b!r} rel {r:.3e}"
                      for i, (a, b, r) in enumerate(zip(ours, theirs, rels)))
    assert max(rels) <= STEP_LOSS_TOL[dtype], (
        f"{preset} {overrides} {dtype}\n{steps}\nparameters after 10 steps:\n{report}")
    assert theirs[-1] < theirs[0], "the reference run did not learn; the check would be vacuous"


# ---- the reference itself -----------------------------------------------------------------------
@pytest.mark.parametrize("preset,overrides", [("nanochat", dict(n_kv_head=2)),
                                              ("gpt2", dict(softcap=3.0, qk_norm=True))],
                         ids=["nanochat-gqa", "gpt2-softcap-qknorm"])
def test_reference_gradcheck(preset, overrides):
    """torch's numerical gradcheck on the reference (float64), so its autograd is trustworthy."""
    cfg = make_config(preset, vocab_size=61, sequence_len=6, n_layer=2, n_embd=16, n_head=4, **overrides)
    ref = TorchGPT(cfg.to_dict(), dtype="float64", seed=7)
    names = list(ref.params)
    idx, targets = batch(cfg, B=2, seed=6)

    def loss_of(*tensors):
        ref.params.update(zip(names, tensors))
        return ref.forward(idx, targets)

    inputs = tuple(ref.params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss_of, inputs, fast_mode=True, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_reference_rotary_is_the_contract_formula():
    cfg = make_config("nanochat", **SMALL, rope_base=50.0)
    ref = TorchGPT(cfg.to_dict(), dtype="float64")
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    y = ref.rotary(x)
    for t in range(5):
        for j in range(4):
            a = t * 50.0 ** (-2 * j / 8)
            x1, x2 = x[:, t, :, j], x[:, t, :, j + 4]
            torch.testing.assert_close(y[:, t, :, j], x1 * math.cos(a) + x2 * math.sin(a))
            torch.testing.assert_close(y[:, t, :, j + 4], -x1 * math.sin(a) + x2 * math.cos(a))


# ---- bad input ----------------------------------------------------------------------------------
def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ValueError) as err:
        make_config("nanochat", n_embed=64)
    msg = str(err.value)
    assert "n_embed" in msg and "\n" not in msg
    for key in ("vocab_size", "n_embd", "n_kv_head", "softcap", "embed_norm", "optimizer"):
        assert key in msg, f"{key!r} missing from {msg!r}"


@pytest.mark.parametrize("overrides,words", [
    (dict(n_embd=50, n_head=4), ("n_embd", "n_head")),
    (dict(n_embd=48, n_head=6, n_kv_head=4), ("n_head", "n_kv_head")),
    (dict(n_embd=36, n_head=4, pos="rope"), ("head_dim",)),
], ids=["n_embd_not_divisible_by_n_head", "n_head_not_divisible_by_n_kv_head", "odd_head_dim_with_rope"])
@pytest.mark.parametrize("preset", ["nanochat", "gpt2"])
def test_impossible_shapes_are_one_line_value_errors(preset, overrides, words):
    with pytest.raises(ValueError) as err:
        make_config(preset, **overrides)
    msg = str(err.value)
    assert msg and "\n" not in msg, repr(msg)
    for word in words:
        assert word in msg, f"{word!r} missing from {msg!r}"


def test_odd_head_dim_is_fine_with_learned_positions():
    cfg = make_config("gpt2", vocab_size=61, sequence_len=8, n_layer=1, n_embd=36, n_head=4)
    assert cfg.head_dim == 9
    model = GPT(cfg, seed=0, dtype="float64")
    idx, targets = batch(cfg, B=2, seed=7)
    assert math.isfinite(model.forward(idx, targets))


@pytest.mark.parametrize("preset", ["nanochat", "gpt2"])
def test_fast_torch_peer_is_the_same_model(preset):
    """The bench's PyTorch peer (SDPA, F.rms_norm) computes what the plain reference computes."""
    cfg = make_config(preset, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=61, sequence_len=16)
    model = GPT(cfg, seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 61, (2, 2, 16))
    plain, fast = TorchGPT(cfg.to_dict()), TorchGPT(cfg.to_dict(), fast=True)
    plain.load_numpy(model.state_numpy())
    fast.load_numpy(model.state_numpy())
    loss_plain, grads_plain = plain.loss_and_grads(idx, targets)
    loss_fast, grads_fast = fast.loss_and_grads(idx, targets)
    assert loss_fast == pytest.approx(loss_plain, rel=1e-12)
    for name, g in grads_plain.items():
        assert np.allclose(grads_fast[name], g, rtol=1e-9, atol=1e-12), name

# ---- --matmul tf32 / bf16: every matmul rounds its inputs ------------------------------------
# The contract: each matmul of the forward and of the backward rounds both of its inputs (in a
# backward matmul, the incoming gradient too) to bfloat16 or TF32 values, to nearest even. The
# reference gets that as one autograd function in place of its matmuls, rounding with frexp. In
# float64 both sides then agree to rounding noise; in float32 a last-bit difference between the two
# flips a rounding now and then, so float64 is the exact check. Head dims are powers of 4, so the
# 1/sqrt(D) scale (on q in the trainer, on the scores in the reference) is a power of 2 and
# commutes with rounding.

def rounded(t, keep):
    m, e = torch.frexp(t)                                  # t = m 2^e, |m| in [0.5, 1)
    return torch.ldexp(torch.round(m * 2.0 ** (keep + 1)), e - (keep + 1))   # round: half to even


def sum_to(g, shape):
    """A broadcast operand's gradient: summed over the leading dims it was broadcast along."""
    return g.sum(dim=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g


def rounded_matmul(keep):
    class RoundedMatmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            a, b = rounded(a, keep), rounded(b, keep)
            ctx.save_for_backward(a, b)
            return a @ b

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            g = rounded(g, keep)
            return sum_to(g @ b.transpose(-1, -2), a.shape), sum_to(a.transpose(-1, -2) @ g, b.shape)
    return RoundedMatmul.apply


def test_round_mantissa_gives_torchs_bfloat16_values_bit_for_bit():
    from trainer import cpu_kernels, ops
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * np.exp2(rng.uniform(-140, 120, 200_000))).astype(np.float32)
    x[:6] = [np.inf, -np.inf, 3.4e38, 1e-45, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8]  # ties go to even
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    for round_mantissa in (ops.round_mantissa, cpu_kernels.round_mantissa):
        assert np.array_equal(round_mantissa(x, 7).view(np.uint32), want.view(np.uint32))
    assert np.isnan(ops.round_mantissa(np.array([np.nan], np.float32), 7)).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("keep", [7, 10])
def test_round_mantissa_is_round_half_even_on_the_kept_bits(keep, dtype):
    from trainer import ops
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(100_000) * np.exp2(rng.uniform(-100, 100, 100_000))).astype(dtype)
    ulp = 2.0 ** -keep
    x[:2] = [1.0 + ulp / 2, 1.0 + 3 * ulp / 2]                           # ties: down to 1, up to 1 + 2 ulp
    want = rounded(torch.from_numpy(x), keep).numpy()
    assert np.array_equal(ops.round_mantissa(x, keep), want)
    assert ops.round_mantissa(x, keep)[:2].tolist() == [1.0, 1.0 + 2 * ulp]


@pytest.mark.parametrize("matmul", ["bf16", "tf32"])
@pytest.mark.parametrize("preset,overrides", [
    ("nanochat", WIDER), ("gpt2", WIDER),
    ("nanochat", dict(WIDER, sequence_len=128, n_kv_head=2)),               # GQA, query blocks
], ids=["nanochat", "gpt2", "nanochat-gqa-query_blocks"])
def test_rounded_matmuls_match_torch_with_rounded_matmuls(preset, overrides, matmul):
    cfg = make_config(preset, **overrides)
    assert cfg.head_dim == 16
    model = GPT(cfg, seed=0, dtype="float64", matmul=matmul)
    randomize(model.params, 1)
    ref = TorchGPT(cfg.to_dict(), dtype="float64", matmul=rounded_matmul({"bf16": 7, "tf32": 10}[matmul]))
    ref.load_numpy(model.params)
    idx, targets = batch(cfg, B=2, seed=2)
    loss = model.forward(idx, targets)
    model.backward()
    ref_loss, ref_grads = ref.loss_and_grads(idx, targets)
    report, bad = table(model.grads, ref_grads, 1e-9, zero_gradients(cfg))
    assert abs(loss - ref_loss) / ref_loss < 1e-12, (loss, ref_loss)
    assert not bad, f"{matmul} gradients over 1e-9 of the rounded reference: {bad}\n" + report
    # and the rounding is there: the unrounded model is far from the rounded reference
    plain = GPT(cfg, seed=0, dtype="float64")
    plain.load_numpy(model.state_numpy())
    plain_loss = plain.forward(idx, targets)
    plain.backward()
    _, plain_bad = table(plain.grads, ref_grads, 1e-5)
    assert abs(plain_loss - ref_loss) / ref_loss > 1e-6 and len(plain_bad) > len(ref_grads) // 2
