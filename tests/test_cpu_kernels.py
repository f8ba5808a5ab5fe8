"""
trainer/cpu_kernels.py: every Numba CPU kernel against its NumPy twin, in float32 and float64,
on contiguous and strided inputs; and the model and optimizer giving the same numbers on the
kernels as on the twins.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from trainer import cpu_kernels as CK
from trainer import kernels as K
from trainer import ops, optim
from trainer.backend import scatter_add_rows
from trainer.config import make_config
from trainer.model import GPT, elementwise_ops
from trainer.optim import make_optimizer

pytestmark = pytest.mark.skipif(not CK.available(), reason="numba is not importable")

DTYPES = ("float32", "float64")
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}
EPS = 1e-6


def close(got, want, dtype, what=""):
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale, err_msg=what)


def normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_matches_twin_on_rows_heads_and_a_strided_slice(dtype):
    rng = np.random.default_rng(0)
    qkv = normal(rng, (2, 5, 96), dtype)
    for x in [normal(rng, (2, 5, 3, 40), dtype, 3), normal(rng, (33, 8), dtype), qkv[..., 16:56]]:
        dy = normal(rng, x.shape, dtype)
        y, cache = CK.rmsnorm_forward(x, EPS)
        want_y, want_cache = ops.rmsnorm_forward(x, EPS)
        close(y, want_y, dtype, "y")
        close(cache[1], want_cache[1], dtype, "rstd")
        close(CK.rmsnorm_backward(dy, cache), ops.rmsnorm_backward(dy, want_cache), dtype, "dx")
        # a non-contiguous upstream gradient, as attention's dq is
        dyt = normal(rng, x.shape[::-1], dtype).T
        close(CK.rmsnorm_backward(dyt, cache), ops.rmsnorm_backward(dyt, want_cache), dtype, "dx strided")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_twin_and_sums_weight_gradients_over_every_row(dtype, bias):
    rng = np.random.default_rng(1)
    x, dy = normal(rng, (3, 37, 48), dtype, 2), normal(rng, (3, 37, 48), dtype)  # 111 rows: uneven blocks
    w, b = normal(rng, (48,), dtype), normal(rng, (48,), dtype) if bias else None
    y, cache = CK.layernorm_forward(x, w, b)
    want_y, want_cache = ops.layernorm_forward(x, w, b)
    close(y, want_y, dtype, "y")
    dw, db, want_dw, want_db = (np.full(48, 7.0, dtype) for _ in range(4))  # overwritten, not added to
    dx = CK.layernorm_backward(dy, cache, dw, db if bias else None)
    want_dx = ops.layernorm_backward(dy, want_cache, want_dw, want_db if bias else None)
    close(dx, want_dx, dtype, "dx")
    close(dw, want_dw, dtype, "dw")
    if bias:
        close(db, want_db, dtype, "db")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_reads_q_and_k_in_place_from_the_fused_activations(dtype):
    rng = np.random.default_rng(2)
    B, T, H, KV, D = 2, 5, 4, 2, 8
    cos, sin = ops.rotary_tables(T + 2, D, 10000.0, np, dtype)
    cos, sin = cos[:T], sin[:T]                                  # sliced, as the model does
    qkv = normal(rng, (B, T, (H + 2 * KV) * D), dtype)
    q = qkv[..., :H * D].reshape(B, T, H, D)
    k = qkv[..., H * D:(H + KV) * D].reshape(B, T, KV, D)
    for x in (q, k, normal(rng, (B, T, H, D), dtype)):
        close(CK.rotary_forward(x, cos, sin), ops.rotary_forward(x, cos, sin), dtype, "forward")
        close(CK.rotary_backward(x, cos, sin), ops.rotary_backward(x, cos, sin), dtype, "backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_matches_twin(dtype):
    rng = np.random.default_rng(3)
    h = normal(rng, (3, 7, 50), dtype)
    h[0, 0, :5] = 0
    da = normal(rng, h.shape, dtype)
    a, r = CK.relu2_forward(h)
    want_a, want_r = ops.relu2_forward(h)
    close(a, want_a, dtype)
    close(r, want_r, dtype)
    close(CK.relu2_backward(da, r), ops.relu2_backward(da, want_r), dtype)
    close(CK.relu2_forward(h[:, 1:, ::2])[0], ops.relu2_forward(h[:, 1:, ::2])[0], dtype, "strided")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_matches_twin(dtype):
    rng = np.random.default_rng(8)
    h = normal(rng, (3, 7, 50), dtype, 3)
    da = normal(rng, h.shape, dtype)
    a, cache = CK.gelu_forward(h)
    want_a, want_cache = ops.gelu_forward(h)
    close(a, want_a, dtype, "a")
    close(CK.gelu_backward(da, cache), ops.gelu_backward(da, want_cache), dtype, "dh")
    close(CK.gelu_forward(h[:, ::2])[0], ops.gelu_forward(h[:, ::2])[0], dtype, "strided")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_twin_for_wide_and_narrow_vocabularies(dtype):
    rng = np.random.default_rng(9)
    for N, V in [(12, 257), (3, 5000)]:
        z = normal(rng, (N, V), dtype, 10)
        targets = rng.integers(0, V, N)
        targets[0], targets[-1] = 0, V - 1
        losses, cache = CK.cross_entropy_forward(z, targets)
        want_losses, want_cache = ops.cross_entropy_forward(z, targets)
        close(losses, want_losses, dtype, "losses")
        close(cache[0], want_cache[0], dtype, "probs")
        close(CK.cross_entropy_backward(cache, 1 / N), ops.cross_entropy_backward(want_cache, 1 / N), dtype, "dz")


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_softmax_matches_twin_in_place(dtype):
    rng = np.random.default_rng(4)
    T0, T = 9, 7
    mask = np.triu(np.full((T0, T0), -np.inf, dtype=dtype), k=1)[:T, :T]   # causal, a strided slice
    s = normal(rng, (2, 3, T, T), dtype, 4)
    want = ops.softmax_forward(s.copy(), mask)
    p = CK.softmax_forward(s, mask)
    assert p is s                                                # in place
    close(p, want, dtype, "p")
    assert np.all(p[..., 0, 1:] == 0) and np.allclose(p.sum(-1), 1)
    dp = normal(rng, p.shape, dtype)
    want_ds = ops.softmax_backward(dp.copy(), want)
    ds = CK.softmax_backward(dp, p)
    assert ds is dp
    close(ds, want_ds, dtype, "ds")


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_add_accumulates_repeated_rows_like_add_at(dtype):
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 6, 40)                                 # 40 rows into 6: many repeats
    src = normal(rng, (4, 10, 13), dtype).reshape(40, 13)
    dst = normal(rng, (8, 13), dtype)
    want = dst.copy()
    scatter_add_rows(want, idx, src)
    CK.scatter_add_rows(dst, idx, src)
    np.testing.assert_array_equal(dst, want)                     # same order of additions: exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd, t", [(0.1, 3), (0.0, 1)])
def test_adamw_matches_twin(dtype, wd, t):
    rng = np.random.default_rng(6)
    p, g = normal(rng, 231, dtype), normal(rng, 231, dtype)
    m, v = normal(rng, 231, dtype, 0.1), (0.01 * rng.random(231)).astype(dtype)
    want = [a.copy() for a in (p, m, v)]
    hyper = dict(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-10, wd=wd, t=t)
    optim.adamw_update(*want[:1], g, *want[1:], **hyper)
    CK.adamw_update(p, g, m, v, **hyper)
    for got, w, name in zip((p, m, v), want, "pmv"):
        close(got, w, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_muon_updates_match_twins_with_a_transposed_update(dtype):
    rng = np.random.default_rng(7)
    g, buf = normal(rng, (9, 20), dtype), normal(rng, (9, 20), dtype)
    want_buf = buf.copy()
    close(CK.muon_momentum(g, buf, 0.95), optim.muon_momentum(g, want_buf, 0.95), dtype, "u")
    close(buf, want_buf, dtype, "buf")
    g2 = g.copy()
    assert CK.muon_momentum(g2, buf, 0.9, out=g2) is g2                # into the gradient
    close(g2, optim.muon_momentum(g, want_buf, 0.9), dtype, "u into g")
    for transposed, wd in [(True, 0.2), (False, 0.2), (False, 0.0)]:
        p = normal(rng, (12, 5), dtype)
        p[0, :3] = 0                                                # x p = 0 counts as agreeing
        x = np.ascontiguousarray(normal(rng, (5, 12), dtype)).T if transposed else normal(rng, (12, 5), dtype)
        want_p = p.copy()
        optim.muon_apply(want_p, x.copy(), 0.03, wd)
        CK.muon_apply(p, x, 0.03, wd)
        close(p, want_p, dtype, f"muon_apply transposed={transposed} wd={wd}")

# ----------------------------------------------------------------------------------------
# the model and optimizer on the kernels vs on the twins


@pytest.mark.parametrize("keep", [7, 10])
def test_round_mantissa_matches_twin_bit_for_bit_and_keeps_a_transposed_layout(keep):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((60, 70)) * np.exp2(rng.uniform(-130, 120, (60, 70)))).astype(np.float32)
    x[0, :5] = [np.inf, -np.inf, 0.0, 1e-45, 1.0 + 2.0 ** -(keep + 1)]
    for a in (x, x.T, x[:, 1::3]):                     # contiguous, a weight's .T, a strided slice
        got, want = CK.round_mantissa(a, keep), ops.round_mantissa(a, keep)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert CK.round_mantissa(x.T, keep).flags.f_contiguous
    nan = CK.round_mantissa(np.full(3, np.nan, np.float32), keep)
    assert np.isnan(nan).all()
    x64 = x.astype(np.float64)                         # float64 takes the twin
    assert np.array_equal(CK.round_mantissa(x64, keep), ops.round_mantissa(x64, keep))


@pytest.mark.parametrize("preset, overrides", [
    ("nanochat", dict(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=61, sequence_len=8)),
    ("nanochat", dict(n_layer=2, n_embd=32, n_head=4, vocab_size=61, sequence_len=8, optimizer="muon")),
    ("gpt2", dict(n_layer=2, n_embd=32, n_head=4, vocab_size=61, sequence_len=8)),
])
def test_model_and_optimizer_on_kernels_equal_the_twins(preset, overrides):
    """Loss, every gradient, and one optimizer step from the same gradients, in float64.
    (Whole training runs are not compared: AdamW's and Muon's first steps turn rounding-level
    differences in near-zero gradients into full-size steps, by design.)"""
    cfg = make_config(preset, **overrides)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg.vocab_size, (2, 3, cfg.sequence_len))
    runs = []
    for ew in (CK, ops):
        model = GPT(cfg, seed=0, dtype="float64")
        assert model.ew is CK                                  # the default on the CPU
        model.ew = ew
        opt = make_optimizer(model)
        assert opt.adamw_update is (CK.adamw_update if ew is CK else optim.adamw_update)  # the reference math
        model.init_weights(seed=1)
        model.param_buf.data[...] += 0.01 * np.random.default_rng(1).standard_normal(model.param_buf.data.size)
        loss = model.forward(x, y)
        model.backward()
        grads = model.grad_buf.data.copy()
        model.grad_buf.data[...] = np.random.default_rng(2).standard_normal(grads.size)
        opt.step()
        runs.append((loss, grads, model.param_buf.data.copy()))
    (loss, grads, params), (want_loss, want_grads, want_params) = runs
    assert loss == pytest.approx(want_loss, rel=1e-13)
    np.testing.assert_allclose(grads, want_grads, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(params, want_params, rtol=1e-12, atol=1e-13)


def test_nanolab_kernels_0_selects_the_twins_everywhere():
    code = textwrap.dedent("""
        import numpy as np
        from trainer import ops, optim
        from trainer.config import make_config
        from trainer.model import GPT, elementwise_ops
        from trainer.optim import make_optimizer
        model = GPT(make_config("nanochat", n_layer=1, n_embd=16, n_head=2, vocab_size=32, sequence_len=4))
        opt = make_optimizer(model)
        assert elementwise_ops(np) is ops and model.ew is ops and opt.ew is None and opt.chunk
        assert opt.adamw_update is optim.adamw_update and opt.muon_apply is optim.muon_apply
        x = np.zeros((1, 4), dtype=np.int64)
        model.forward(x, x); model.backward(); opt.step()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "NANOLAB_KERNELS": "0"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_every_op_the_model_calls_exists_in_all_three_modules():
    names = ["rmsnorm_forward", "rmsnorm_backward", "layernorm_forward", "layernorm_backward",
             "rotary_forward", "rotary_backward", "relu2_forward", "relu2_backward", "gelu_forward",
             "gelu_backward", "softmax_forward", "softmax_backward", "cross_entropy_forward",
             "cross_entropy_backward", "scatter_add_rows", "round_mantissa"]
    for module in (CK, K, ops):
        missing = [n for n in names if not callable(getattr(module, n, None))]
        assert not missing, f"{module.__name__} lacks {missing}"
    assert elementwise_ops(np) is CK
