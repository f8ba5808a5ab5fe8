"""
trainer/kernels.py: the CUDA kernels and their NumPy twins.

(a) every kernel compiles with NVRTC, with no GPU (CuPy's low-level wrapper, and libnvrtc via
    ctypes, which needs only the nvidia-cuda-nvrtc-cu12 wheel);
(b) every kernel agrees with its twin: on a CUDA device when there is one, and always in a host
    emulator that compiles the same CUDA source with g++ (one std::thread per CUDA thread,
    barriers for __syncthreads and warp shuffles) and launches it through kernels.py's own
    wrappers, checking every argument against the kernel's C signature;
(c) the NumPy twins written in kernels.py agree with the ops.py / optim.py code they restate.
"""
from __future__ import annotations

import ctypes
import math
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from trainer import cuda_source as CS
from trainer import kernels as K
from trainer import nvrtc
from trainer import ops
from trainer.backend import to_numpy
from trainer.config import make_config
from trainer.model import GPT
from trainer.optim import make_optimizer, orthogonalize

pytestmark = pytest.mark.xdist_group("kernels")  # one worker builds its module fixture
TOL = {"float32": {"rtol": 5e-5, "atol": 5e-6}, "float64": {"rtol": 1e-11, "atol": 1e-12}}


def assert_close(got, want, dtype, what=""):
    tol = TOL[dtype]
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=what)


def kernel_signatures() -> dict[str, list[str]]:
    """name -> parameter types ('real*', 'float*', 'long long*', 'real', 'int', 'long long'), from SOURCE."""
    sigs = {}
    for name, params in re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\)',
                                   CS.SOURCE):
        types = []
        for p in params.split(","):
            words = [w for w in p.replace("*", " * ").split() if w not in ("const", "__restrict__")]
            types.append(" ".join(words[:-1]).replace(" *", "*"))
        sigs[name] = types
    return sigs

# ----------------------------------------------------------------------------------------
# (a) NVRTC, no GPU


def test_source_declares_exactly_the_listed_kernels():
    assert sorted(kernel_signatures()) == sorted(CS.KERNEL_NAMES)


def nvrtc_or_skip(backend):
    if backend == "cupy":
        try:
            import cupy_backends.cuda.libs.nvrtc  # noqa: F401
        except Exception as e:
            pytest.skip(f"cupy's NVRTC wrapper can't be imported ({type(e).__name__}: {e}); "
                        "install the 'gpu' extra to run this backend")
    try:
        nvrtc.nvrtc_compile('extern "C" __global__ void probe() {}', "compute_80", backend=backend)
    except nvrtc.NVRTCCompileError:
        raise
    except Exception as e:  # libnvrtc missing: DynamicLibNotFoundError, OSError
        pytest.skip(f"NVRTC library not loadable via {backend} ({type(e).__name__}: {e}); "
                    "pip install nvidia-cuda-nvrtc-cu12")


@pytest.mark.parametrize("backend", ["cupy", "ctypes"])
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("dtype", CS.DTYPES)
def test_every_kernel_compiles_with_nvrtc(backend, arch, dtype):
    nvrtc_or_skip(backend)
    ptx = nvrtc.nvrtc_compile(CS.cuda_source(dtype), arch, backend=backend)
    assert f".target sm_{arch.split('_')[1]}" in ptx
    missing = [n for n in CS.KERNEL_NAMES if f".entry {n}(" not in ptx]
    assert not missing, f"kernels missing from the PTX: {missing}"
    if dtype == "float64":  # the double module really computes in double
        assert ".f64" in ptx


def find_ptxas():
    import glob
    return shutil.which("ptxas") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/ptxas"), reverse=True)), None)


@pytest.mark.parametrize("dtype", CS.DTYPES)
def test_nvrtc_ptx_assembles_within_launch_limits(dtype, tmp_path):
    """A CUDA toolkit's ptxas, where there is one, assembles NVRTC's PTX for sm_90, and every
    kernel fits the block size kernels.py launches it with in registers, with no spills."""
    ptxas = find_ptxas()
    if ptxas is None:
        pytest.skip("no ptxas (CUDA toolkit) on this machine")
    nvrtc_or_skip("auto")
    (tmp_path / "k.ptx").write_text(nvrtc.nvrtc_compile(CS.cuda_source(dtype), "compute_90"))
    out = subprocess.run([ptxas, "-arch=sm_90", "-v", "k.ptx", "-o", "k.cubin"],
                         check=False, capture_output=True, text=True, cwd=tmp_path)
    if "Unsupported .version" in out.stderr:
        pytest.skip(f"ptxas at {ptxas} is older than NVRTC's PTX: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr
    info = {}
    for block in out.stderr.split("Compiling entry function ")[1:]:
        name = block.split("'")[1]
        info[name] = (int(re.search(r"Used (\d+) registers", block).group(1)),
                      int(re.search(r"(\d+) bytes spill stores", block).group(1)))
    assert sorted(info) == sorted(CS.KERNEL_NAMES)
    for name, (regs, spills) in info.items():
        threads = 1024 if name == "softcap_ce_fwd" else 256
        assert regs * threads <= 65536, f"{name}: {regs} registers x {threads} threads won't launch"
        assert spills == 0, f"{name} spills {spills} bytes"


def test_nvrtc_checks_run_wherever_cupy_is_installed():
    """The test extra installs CuPy, whose wheel imports with no GPU: then no NVRTC check above
    may skip (a clean machine once skipped them all while CI stayed green)."""
    import importlib.util
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed here (pip install -e '.[test]' installs it)")
    import cupy_backends.cuda.libs.nvrtc  # noqa: F401  -- nvrtc_or_skip("cupy") skips if this fails
    ptx = nvrtc.nvrtc_compile('extern "C" __global__ void probe() {}', "compute_80", backend="cupy")
    assert ".entry probe(" in ptx


@pytest.mark.parametrize("backend", ["cupy", "ctypes"])
def test_nvrtc_reports_compile_errors(backend):
    nvrtc_or_skip(backend)
    with pytest.raises(nvrtc.NVRTCCompileError, match="error"):
        nvrtc.nvrtc_compile(CS.cuda_source("float32") + "\nextern \"C\" __global__ void bad() { x = ; }",
                        "compute_80", backend=backend)

# ----------------------------------------------------------------------------------------
# the kernel-vs-twin cases, shared by the GPU test and the host-emulator test.
# Each case takes (xp, dtype, rng), calls kernels.py's public functions on xp arrays and
# returns its outputs; `kernels` names the kernels it must launch when the kernel path is on.

EPS = 1e-6


def case(*kernels):
    def mark(f):
        f.kernels = set(kernels)
        return f
    return mark


def asx(xp, dtype, *arrays):
    return [xp.asarray(a, dtype=dtype) for a in arrays]


@case("rmsnorm_fwd", "rmsnorm_bwd")
def case_rmsnorm(xp, dtype, rng):
    out = []
    # (B, T, H, D) head rows, residual-width rows, rows narrower than a warp, a strided slice
    for shape in [(2, 5, 3, 40), (3, 768), (33, 8)]:
        x, dy = asx(xp, dtype, 3 * rng.standard_normal(shape), rng.standard_normal(shape))
        y, cache = K.rmsnorm_forward(x, EPS)
        out += [y, cache[0], cache[1], K.rmsnorm_backward(dy, cache)]
    qkv, dy = asx(xp, dtype, rng.standard_normal((2, 5, 96)), rng.standard_normal((2, 5, 40)))
    y, cache = K.rmsnorm_forward(qkv[..., 16:56], EPS)
    return out + [y, cache[1], K.rmsnorm_backward(dy, cache)]


@case("rotary")
def case_rotary(xp, dtype, rng):
    out = []
    for B, T, H, KV, D in [(2, 5, 4, 2, 8), (1, 3, 2, 2, 64)]:
        cos, sin = ops.rotary_tables(T + 2, D, 10000.0, np, dtype)      # longer than T, sliced
        cos, sin = asx(xp, dtype, cos[:T], sin[:T])
        qkv, dy = asx(xp, dtype, rng.standard_normal((B, T, (H + 2 * KV) * D)),
                      rng.standard_normal((B, T, H, D)))
        q = qkv[..., :H * D].reshape(B, T, H, D)                        # strided, read in place
        k = qkv[..., H * D:(H + KV) * D].reshape(B, T, KV, D)
        odd = xp.ascontiguousarray(qkv[..., :H * D].reshape(B, T, D, H)).transpose(0, 1, 3, 2)
        out += [K.rotary_forward(q, cos, sin), K.rotary_forward(k, cos, sin),
                K.rotary_forward(odd, cos, sin),                         # copied first
                K.rotary_backward(dy, cos, sin), K.rotary_backward(q, cos, sin)]
    return out


@case("relu2_fwd", "relu2_bwd")
def case_relu2(xp, dtype, rng):
    h = rng.standard_normal((3, 7, 50))
    h[0, 0, :5] = 0
    h, da = asx(xp, dtype, h, rng.standard_normal((3, 7, 50)))
    a, r = K.relu2_forward(h)
    return [a, r, K.relu2_backward(da, r), K.relu2_forward(h[:, 1:, ::2])[0]]


@case("softcap_ce_fwd", "softcap_ce_bwd")
def case_cross_entropy(xp, dtype, rng):
    out = []
    for N, V, cap in [(4, 300, 15.0), (4, 300, 0.0), (3, 1100, 15.0), (4, 33, 30.0)]:
        targets = rng.integers(0, V, N)
        targets[0], targets[-1] = 0, V - 1
        logits, = asx(xp, dtype, 20 * rng.standard_normal((N, V)))
        targets = xp.asarray(targets)
        losses, cache = K.softcap_cross_entropy_forward(logits, targets, cap)
        d = K.softcap_cross_entropy_backward(cache, 1.0 / N)
        out += [losses, cache[1], d]
        if V == 1100:                                                   # over the logits
            out += [K.softcap_cross_entropy_backward(cache, 1.0 / N, out=cache[0]), cache[0]]
    logits, = asx(xp, dtype, rng.standard_normal((2, 3, 70)))                   # (B, T, V)
    losses, cache = K.softcap_cross_entropy_forward(logits, xp.asarray(rng.integers(0, 70, (2, 3))), 15.0)
    return out + [losses, K.softcap_cross_entropy_backward(cache, 0.5)]


@case("adamw")
def case_adamw(xp, dtype, rng):
    out = []
    for wd, t in [(0.1, 3), (0.0, 1)]:
        p, g, m, v = asx(xp, dtype, rng.standard_normal((7, 33)), rng.standard_normal((7, 33)),
                         0.1 * rng.standard_normal((7, 33)), 0.01 * rng.random((7, 33)))
        K.adamw_update(p, g, m, v, lr=0.01, beta1=0.8, beta2=0.95, eps=1e-10, wd=wd, t=t)
        out += [p, m, v]
    return out


@case("muon_momentum", "muon_apply")
def case_muon(xp, dtype, rng):
    g, buf = asx(xp, dtype, rng.standard_normal((9, 20)), rng.standard_normal((9, 20)))
    u = K.muon_momentum(g, buf, 0.95)
    out = [u, buf.copy()]
    u2 = K.muon_momentum(g, buf, 0.9, out=g)                            # into the gradient
    out += [u2, buf]
    for rows, cols, transposed, wd in [(12, 5, True, 0.2), (5, 12, False, 0.2), (5, 12, False, 0.0)]:
        p = rng.standard_normal((rows, cols))
        p[0, :3] = 0                                                    # x p = 0 counts as agreeing:
        x = rng.standard_normal((cols, rows)).T if transposed else rng.standard_normal((rows, cols))
        x[1, :3] = 0                                                    # ... and so does x = 0
        p, = asx(xp, dtype, p)
        x = xp.asarray(x, dtype=dtype)
        if transposed:
            x = xp.ascontiguousarray(x.T).T                             # as orthogonalize returns it
        K.muon_apply(p, x, 0.03, wd)
        out.append(p)
    return out


@case("scatter_rows")
def case_scatter_rows(xp, dtype, rng):
    out = []
    for V, N, C in [(11, 40, 7), (300, 64, 33)]:      # repeated rows, and rows no index reaches
        dst, src = asx(xp, dtype, rng.standard_normal((V, C)), rng.standard_normal((N, C)))
        K.scatter_add_rows(dst, xp.asarray(rng.integers(0, V // 2, N)), src)
        out.append(dst)
    return out


CASES = [case_rmsnorm, case_rotary, case_relu2, case_cross_entropy, case_adamw, case_muon, case_scatter_rows]


def run_case(f, xp, dtype):
    return [to_numpy(o) for o in f(xp, dtype, np.random.default_rng(0))]


def compare(got, want, dtype, name):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{name} output {i}: {g.shape} {g.dtype} vs {w.shape} {w.dtype}"
        assert_close(g, w, dtype, f"{name} output {i}")


def recording(launch, launched):
    def wrapped(name, dtype, grid, block, args):
        launched.add(name)
        return launch(name, dtype, grid, block, args)
    return wrapped

# ----------------------------------------------------------------------------------------
# (b) on a CUDA device


@pytest.fixture(scope="module")
def cupy_device():
    try:
        import cupy
    except Exception:
        pytest.skip("no CUDA device (cupy not installed)")
    if not K.available(cupy):
        pytest.skip("no CUDA device")
    return cupy


@pytest.mark.parametrize("dtype", CS.DTYPES)
@pytest.mark.parametrize("f", CASES, ids=lambda f: f.__name__)
def test_kernel_matches_twin_on_gpu(f, dtype, cupy_device, monkeypatch):
    want = run_case(f, np, dtype)
    launched = set()
    monkeypatch.setattr(K, "_launch", recording(K._launch, launched))
    got = run_case(f, cupy_device, dtype)
    assert launched == f.kernels
    compare(got, want, dtype, f.__name__)

# ----------------------------------------------------------------------------------------
# (b) in the host emulator: the same CUDA source and the same Python wrappers, on the CPU

EMULATOR = r"""
#include <math.h>
#include <string.h>
#include <atomic>
#include <barrier>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

struct dim3 { unsigned x = 0, y = 0, z = 0; };
static dim3 blockIdx, blockDim, gridDim;            // blocks run one after another
static thread_local dim3 threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static                           // one block at a time: static is per block
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }

struct Warp { std::barrier<> bar{32}; double slot[32]; std::atomic<bool> gone[32] = {}; };
static std::vector<std::unique_ptr<Warp>> g_warps;
static std::unique_ptr<std::barrier<>> g_block;
static thread_local int t_lane, t_warp;
static std::atomic<int> g_error{0};

template <class T> static T __shfl_xor_sync(unsigned, T v, int o) {
    Warp& w = *g_warps[t_warp];
    w.slot[t_lane] = (double)v;                     // exact for float and double
    w.bar.arrive_and_wait();
    if (w.gone[t_lane ^ o]) g_error = 1;            // reading a lane that has exited
    T r = (T)w.slot[t_lane ^ o];
    w.bar.arrive_and_wait();
    return r;
}
static void __syncthreads() { g_block->arrive_and_wait(); }

template <class... A, size_t... I>
static void call(void (*k)(A...), void** args, std::index_sequence<I...>) { k(*static_cast<A*>(args[I])...); }

template <class... A>
static int launch(void (*k)(A...), unsigned gx, unsigned gy, unsigned bx, void** args) {
    if (bx == 0 || bx % 32 || bx > 1024 || gx == 0 || gy == 0 || gy > 65535) return 2;
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned by = 0; by < gy; ++by)
        for (unsigned b = 0; b < gx; ++b) {
            blockIdx = {b, by, 0};
            g_warps.clear();
            for (unsigned w = 0; w < bx / 32; ++w) g_warps.push_back(std::make_unique<Warp>());
            g_block = std::make_unique<std::barrier<>>(bx);
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < bx; ++t)
                threads.emplace_back([=] {
                    threadIdx = {t, 0, 0};
                    t_lane = t % 32;
                    t_warp = t / 32;
                    call(k, args, std::index_sequence_for<A...>{});
                    g_warps[t_warp]->gone[t_lane] = true;
                    g_warps[t_warp]->bar.arrive_and_drop();
                    g_block->arrive_and_drop();
                });
            for (auto& th : threads) th.join();
        }
    return g_error.exchange(0);
}
"""


class HostEmulator:
    """Compiles kernels.cuda_source(dtype) for the host and runs launches like cupy would."""

    def __init__(self, workdir):
        self.sigs, self.libs, self.builds = kernel_signatures(), {}, {}
        hosts = "".join(f'extern "C" int host_{n}(unsigned gx, unsigned gy, unsigned bx, void** a)'
                        f" {{ return launch({n}, gx, gy, bx, a); }}\n" for n in CS.KERNEL_NAMES)
        for dtype in CS.DTYPES:  # both builds at once
            src, so = workdir / f"kernels_{dtype}.cpp", workdir / f"kernels_{dtype}.so"
            src.write_text(EMULATOR + CS.cuda_source(dtype) + hosts)
            cmd = ["g++", "-std=c++20", "-O0", "-ffp-contract=off", "-w", "-pthread", "-shared", "-fPIC",
                   str(src), "-o", str(so)]
            self.builds[dtype] = (subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), so)

    def lib(self, dtype):
        if dtype not in self.libs:
            build, so = self.builds[dtype]
            _, err = build.communicate()
            assert build.returncode == 0, f"g++ failed on the {dtype} kernels:\n{err}"
            self.libs[dtype] = ctypes.CDLL(str(so))
        return self.libs[dtype]

    def launch(self, name, dtype, grid, block, args):
        dtype = np.dtype(dtype)
        sig = self.sigs[name]
        assert len(args) == len(sig), f"{name}: {len(args)} arguments for {len(sig)} parameters"
        scalar = {"int": (np.int32, ctypes.c_int), "long long": (np.int64, ctypes.c_longlong),
                  "real": (dtype.type, ctypes.c_double if dtype == np.float64 else ctypes.c_float)}
        values = []
        for i, (a, ctype) in enumerate(zip(args, sig)):
            where = f"{name} argument {i} ({ctype})"
            if ctype.endswith("*"):
                want = {"real*": dtype, "float*": np.dtype(np.float32)}.get(ctype, np.dtype(np.int64))
                assert isinstance(a, np.ndarray) and a.dtype == want, f"{where}: got {type(a)} {getattr(a, 'dtype', '')}"
                values.append(ctypes.c_void_p(a.ctypes.data))
            else:  # cupy packs a scalar by its numpy type: it must be exactly the C type
                np_type, c_type = scalar[ctype]
                assert type(a) is np_type, f"{where}: got {type(a).__name__}, need {np_type.__name__}"
                values.append(c_type(a.item()))
        argv = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        gx, gy = (tuple(grid) + (1,))[:2]
        err = getattr(self.lib(dtype.name), f"host_{name}")(ctypes.c_uint(gx), ctypes.c_uint(gy),
                                                            ctypes.c_uint(block[0]), argv)
        assert err == 0, f"{name}: " + ("bad launch shape" if err == 2 else "shuffle read an exited lane")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the host emulator")
    return HostEmulator(tmp_path_factory.mktemp("kernels_emulator"))


@pytest.fixture
def kernels_on_host(emulator, monkeypatch):
    """Route kernels.py's kernel path to the emulator for NumPy arrays; yields launched names."""
    launched = set()
    monkeypatch.setattr(K, "_on_device", lambda a: True)
    monkeypatch.setattr(K, "_launch", recording(emulator.launch, launched))
    return launched


@pytest.mark.parametrize("dtype", CS.DTYPES)
@pytest.mark.parametrize("f", CASES, ids=lambda f: f.__name__)
def test_kernel_matches_twin_in_host_emulator(f, dtype, emulator, monkeypatch):
    want = run_case(f, np, dtype)
    launched = set()
    monkeypatch.setattr(K, "_on_device", lambda a: True)
    monkeypatch.setattr(K, "_launch", recording(emulator.launch, launched))
    got = run_case(f, np, dtype)
    assert launched == f.kernels
    compare(got, want, dtype, f.__name__)


def rounding_inputs(rng):
    """float32 values across the whole range: specials, subnormals, ties, huge, and random."""
    x = (rng.standard_normal(4000) * np.exp2(rng.uniform(-140, 127, 4000))).astype(np.float32)
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -3e-39, 3.4e38, -3.4e38, 1.0 + 2.0 ** -8,
                1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 65504.0]
    x[:len(specials)] = specials
    return x.reshape(40, 100)


def round_all_layouts(x):
    """K.round_mantissa on a contiguous array, a transposed view and a strided slice, both widths."""
    return [K.round_mantissa(a, keep) for keep in (7, 10) for a in (x, x.T, x[:, ::3])]


def assert_same_bits(got, want):
    for g, w in zip(got, want, strict=True):
        g, w = to_numpy(g), to_numpy(w)
        assert g.shape == w.shape and g.dtype == w.dtype == np.float32
        assert (np.isnan(g) == np.isnan(w)).all()
        assert np.array_equal(g[~np.isnan(g)].view(np.uint32), w[~np.isnan(w)].view(np.uint32))


def test_round_mantissa_kernel_is_bit_exact_in_host_emulator(kernels_on_host):
    x = rounding_inputs(np.random.default_rng(0))
    want = [ops.round_mantissa(a, keep) for keep in (7, 10) for a in (x, x.T, x[:, ::3])]
    got = round_all_layouts(x)
    assert kernels_on_host == {"round_mantissa"}
    assert got[1].flags.f_contiguous                       # a transposed view keeps its layout
    assert_same_bits(got, want)


def test_round_mantissa_kernel_is_bit_exact_on_gpu(cupy_device, monkeypatch):
    x = rounding_inputs(np.random.default_rng(0))
    want = [ops.round_mantissa(a, keep) for keep in (7, 10) for a in (x, x.T, x[:, ::3])]
    launched = set()
    monkeypatch.setattr(K, "_launch", recording(K._launch, launched))
    got = round_all_layouts(cupy_device.asarray(x))
    assert launched == {"round_mantissa"}
    assert_same_bits(got, want)


def embedding_gradient_inputs(rng):
    """Many rows into few, with magnitudes from 1e-4 to 1e4: a sum's bits depend on its order."""
    src = (rng.standard_normal((600, 16)) * 10.0 ** rng.uniform(-4, 4, (600, 1))).astype(np.float32)
    return np.zeros((9, 16), np.float32), rng.integers(0, 5, 600), src


def test_embedding_gradient_kernel_adds_in_row_order_bit_for_bit_in_host_emulator(kernels_on_host):
    dst, idx, src = embedding_gradient_inputs(np.random.default_rng(0))
    want = dst.copy()
    np.add.at(want, idx, src)
    shuffled = dst.copy()                                  # another order gives other bits:
    perm = np.random.default_rng(1).permutation(len(idx))  # the check below can fail
    np.add.at(shuffled, idx[perm], src[perm])
    assert not np.array_equal(shuffled, want)
    K.scatter_add_rows(dst, idx, src)
    assert kernels_on_host == {"scatter_rows"}
    assert_same_bits([dst], [want])


def test_embedding_gradient_kernel_is_bit_for_bit_and_repeatable_on_gpu(cupy_device):
    dst, idx, src = embedding_gradient_inputs(np.random.default_rng(0))
    want = dst.copy()
    np.add.at(want, idx, src)
    got = []
    for _ in range(3):
        d = cupy_device.asarray(dst)
        K.scatter_add_rows(d, cupy_device.asarray(idx), cupy_device.asarray(src))
        got.append(d)
    assert_same_bits(got, [want] * 3)


def test_cross_entropy_kernel_gives_nan_for_a_target_out_of_range(kernels_on_host):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 40)).astype(np.float32)
    losses, cache = K.softcap_cross_entropy_forward(logits, np.array([5, -1, 40]), 15.0)
    assert np.isfinite(losses[0]) and np.isnan(losses[1:]).all()
    d = K.softcap_cross_entropy_backward(cache, 1.0)
    assert (d[1:] > 0).all()                  # no one-hot term, and no write out of the row
    assert kernels_on_host == {"softcap_ce_fwd", "softcap_ce_bwd"}

# ----------------------------------------------------------------------------------------
# (c) the twins in kernels.py against the code they restate, on the CPU


@pytest.mark.parametrize("dtype", CS.DTYPES)
@pytest.mark.parametrize("cap", [15.0, 0.0])
def test_cross_entropy_twin_matches_ops(cap, dtype):
    rng = np.random.default_rng(0)
    N, V = 12, 257
    logits = (10 * rng.standard_normal((N, V))).astype(dtype)
    targets = rng.integers(0, V, N)
    scale = 1.0 / N
    z, tcache = ops.softcap_forward(logits, cap) if cap > 0 else (logits, None)
    want_losses, ce_cache = ops.cross_entropy_forward(z, targets)
    want_d = ops.cross_entropy_backward(ce_cache, scale)
    if cap > 0:
        want_d = ops.softcap_backward(want_d, tcache)
    losses, cache = K.np_softcap_cross_entropy_forward(logits.copy(), targets, cap)
    assert losses.dtype == want_losses.dtype == np.dtype(dtype)
    assert_close(losses, want_losses, dtype)
    d = K.np_softcap_cross_entropy_backward(cache, scale)
    assert d.dtype == np.dtype(dtype)
    assert_close(d, want_d, dtype)
    K.np_softcap_cross_entropy_backward(cache, scale, out=cache[0])
    assert_close(cache[0], want_d, dtype)


@pytest.mark.parametrize("dtype", CS.DTYPES)
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_optimizer_twins_match_optimizer(optimizer, dtype):
    """adamw_update / muon_momentum / muon_apply per parameter == Optimizer.step on a tiny GPT."""
    cfg = make_config("nanochat", vocab_size=61, sequence_len=6, n_layer=2, n_embd=16, n_head=4,
                      optimizer=optimizer, weight_decay=0.1, embedding_weight_decay=0.05)
    model = GPT(cfg, seed=0, dtype=dtype)
    opt = make_optimizer(model)
    assert bool(opt.muon_group) == (optimizer == "muon")
    p = {n: v.copy() for n, v in model.params.items()}
    m, v, buf = ({n: np.zeros_like(x) for n, x in p.items()} for _ in range(3))
    rng = np.random.default_rng(0)
    for t, mu in enumerate([None, 0.9, None], start=1):
        model.grad_buf.data[...] = rng.standard_normal(model.grad_buf.data.shape)
        opt.step(lr_mult=0.7, muon_momentum=mu)
        for g in opt.adamw_groups:
            for n in g["names"]:
                K.adamw_update(p[n], model.grads[n], m[n], v[n], lr=g["lr"] * 0.7, beta1=g["beta1"],
                               beta2=g["beta2"], eps=g["eps"], wd=g["wd"], t=t)
        if opt.muon_group:
            g = opt.muon_group
            for n in g["names"]:
                u = K.muon_momentum(model.grads[n], buf[n], g["momentum"] if mu is None else mu)
                x = orthogonalize(u, g["ns_steps"])
                rows, cols = p[n].shape
                K.muon_apply(p[n], x, g["lr"] * 0.7 * math.sqrt(max(1.0, rows / cols)), g["wd"])
    for n in p:
        assert_close(p[n], model.params[n], dtype, n)


def test_every_public_function_has_a_twin_and_takes_it_on_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    y, cache = K.rmsnorm_forward(x, EPS)
    want_y, want_cache = ops.rmsnorm_forward(x, EPS)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(K.rmsnorm_backward(x, cache), ops.rmsnorm_backward(x, want_cache))
    for name, twin in K.TWINS.items():
        assert callable(getattr(K, name)) and callable(twin)
        assert twin.__name__ in (getattr(K, name).__doc__ or ""), f"{name}'s docstring should name its twin"


def test_import_without_cupy():
    code = textwrap.dedent("""
        import sys
        sys.modules["cupy"] = None          # import cupy raises ImportError
        sys.modules["cupy_backends"] = None
        import numpy as np
        from trainer import kernels as K
        assert not K.available(np)
        a, r = K.relu2_forward(np.array([-1.0, 2.0]))
        assert a.tolist() == [0.0, 4.0]
        assert "cupy" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
