"""
`python -m trainer gpucheck`: the CUDA path checked on a real GPU, in one command and one table.

    python -m trainer gpucheck --out gpucheck/                 # all parts, about 14 minutes on an H200
    python -m trainer gpucheck --parts device kernels steps resume

Parts, in this order:
  device   CuPy and the GPU (compute capability 8.0 or newer, for tf32 and bf16); torch (the
           bench's peers) and pytest (the kernel cases)
  kernels  every CUDA kernel against its NumPy twin on the device: tests/test_kernels.py's
           on-GPU cases, run by pytest; a case that skips with a GPU present counts as failed
  steps    a few training steps on the GPU against the same steps on the CPU, with fp32, tf32
           and bf16 matmuls (the CPU rounds matmul inputs exactly as the GPU kernel does, so
           the two differ only in summation order): the largest loss difference, per precision;
           nanochat without its x0/residual lambdas, which rounding alone sends elsewhere
  resume   two runs with one seed are bit-identical on the GPU, and a run stopped by SIGTERM and
           resumed ends bit-identical to one that ran through (weights and optimizer state)
  d12      a 2-minute nanochat d12 run (sequence 2048, bytes of the embedded corpus): val_bpb
  bench    ms/step, MFU and peak memory at d12 and GPT-2 124M shapes, beside torch eager and
           torch.compile, with fp32, tf32 and bf16 matmuls (trainer/bench.py, one round each;
           torch.compile's six last, as they take longest)

The table goes to stdout and OUT/gpucheck.md. Each row is appended to OUT/gpucheck.jsonl as soon as
it is measured, so a check cut short keeps what it did. Exit status: 0 when every check passed, 1
when one failed, 2 when there is no GPU to check (one line naming what is missing).
Needs a source checkout (the kernel cases and the torch peers live in tests/).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

PARTS = ("device", "kernels", "steps", "resume", "d12", "bench")
REPO = Path(__file__).resolve().parent.parent
MATMULS = ("fp32", "tf32", "bf16")
STEP_TOLERANCE = {"fp32": 2e-4, "tf32": 2e-3, "bf16": 1e-2}   # |loss on the GPU - loss on the CPU|
BENCH_CONFIGS = ("d12", "gpt2-124m")
# the least time left (--seconds) for a part to start, and for one bench measurement (an H200's
# first run: kernels 5 s, steps 21, resume 55, d12 129; a bench measurement 15-30 s, torch.compile's ~60)
PART_SECONDS = {"device": 5, "kernels": 30, "steps": 40, "resume": 90, "d12": 150, "bench": 30}
BENCH_SECONDS = 30


@dataclass
class Setup:
    """What the parts train: a small nanochat on bytes, unless a test shrinks it to run on the CPU."""
    out: Path
    device: str = "cuda"
    data: str = "pystdlib"
    overrides: tuple = (("depth", 4), ("vocab_size", 256), ("sequence_len", 256))
    batch_size: int = 8
    steps: int = 5                 # the steps part
    resume_steps: int = 400        # the resume part: long enough that SIGTERM lands mid-run
    d12: tuple = (("depth", 12), ("vocab_size", 256), ("sequence_len", 2048))
    d12_batch: int = 16
    d12_seconds: float = 120.0
    deadline: float = math.inf     # time.monotonic() by which the check ends (--seconds)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spec(self, **kw):
        from trainer.train import RunSpec
        base = dict(preset="nanochat", overrides=dict(self.overrides), device=self.device, data=self.data,
                    batch_size=self.batch_size, val_tokens=4 * self.batch_size * dict(self.overrides)["sequence_len"],
                    log_every=1, save_final=False)
        return RunSpec(**{**base, **kw})


def run_gpucheck(args) -> int:
    parts = args.parts or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"--parts: unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    if args.seconds is not None and not args.seconds > 0:
        raise ValueError(f"--seconds must be a positive number of seconds, got {args.seconds:g}")
    missing = missing_gpu()
    if missing:
        print(f"gpucheck: no GPU to check: {missing}", file=sys.stderr)
        return 2
    setup = Setup(out=args.out, deadline=time.monotonic() + (args.seconds or math.inf))
    rows = run_parts(setup, parts)
    table = format_table(rows)
    (setup.out / "gpucheck.md").write_text(table + "\n")
    print(table)
    return 1 if any(r["ok"] is False for r in rows) else 0


def missing_gpu() -> str | None:
    """None when CuPy sees a CUDA device; else one line saying what is missing."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a CuPy built for another CUDA
        return (f"CuPy does not import ({type(e).__name__}: {e}); "
                "pip install -e '.[gpu]' on a machine with an NVIDIA GPU and driver")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver: CUDARuntimeError
        return f"CuPy {cupy.__version__} imports, but there is no CUDA driver or device ({type(e).__name__}: {e})"
    return None if count > 0 else f"CuPy {cupy.__version__} imports, but sees no CUDA device"


def run_parts(setup: Setup, parts) -> list[dict]:
    setup.out.mkdir(parents=True, exist_ok=True)
    rows = []

    def keep(row):  # logged at once: a check cut short keeps every row it had
        rows.append(row)
        with (setup.out / "gpucheck.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
    for part in parts:
        print(f"gpucheck: {part} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            if setup.left() < PART_SECONDS[part]:  # it would be cut part way: say so, and leave the time
                raise OutOfTime(f"not run: under {PART_SECONDS[part]} s of --seconds left")
            for row in PART_FUNCTIONS[part](setup):
                keep(row)
        except OutOfTime as e:
            keep(make_row(part, "(the part itself)", str(e), "runs", False))
        except Exception as e:  # a part that breaks is a failed row, and the other parts still run
            keep(make_row(part, "(the part itself)", f"raised {type(e).__name__}: {e}", "", False))
        print(f"gpucheck: {part} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows


class OutOfTime(Exception):
    """The check's --seconds would run out before this part or measurement ended."""


def make_row(part, check, result, bar, ok) -> dict:
    """ok: True passed, False failed, None a figure with no bar."""
    return {"part": part, "check": check, "result": result, "bar": bar, "ok": ok}


def format_table(rows) -> str:
    mark = {True: "pass", False: "FAIL", None: ""}
    lines = ["| part | check | result | bar | |", "|---|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['check']} | {r['result']} | {r['bar']} | {mark[r['ok']]} |" for r in rows]
    failed = sum(r["ok"] is False for r in rows)
    return "\n".join(lines + ["", f"{len(rows)} rows, {failed} failed"])

# ----------------------------------------------------------------------------------------
# the parts: each yields its rows


def part_device(setup: Setup):
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    major, minor = props["major"], props["minor"]
    yield make_row("device", "GPU", f"{props['name'].decode()}, compute {major}.{minor}, "
                   f"{props['totalGlobalMem'] / 2**30:.0f} GiB, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
                   f"driver {cupy.cuda.runtime.driverGetVersion()}, CuPy {cupy.__version__}",
                   "compute >= 8.0", major >= 8)
    try:
        import torch
        has_cuda = torch.cuda.is_available()
        yield make_row("device", "torch (bench peers)", f"{torch.__version__}, CUDA {'yes' if has_cuda else 'no'}",
                       "", None if has_cuda else False)
    except ImportError:
        yield make_row("device", "torch (bench peers)", "not installed: the bench runs nanolab alone", "", None)
    try:
        import pytest
        yield make_row("device", "pytest (kernel cases)", pytest.__version__, "", None)
    except ImportError:
        yield make_row("device", "pytest (kernel cases)", "not installed", "installed", False)


def part_kernels(setup: Setup):
    cases = REPO / "tests" / "test_kernels.py"
    if not cases.exists():
        yield make_row("kernels", "tests/test_kernels.py", "missing: gpucheck needs a source checkout", "", False)
        return
    xml = setup.out / "kernels.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                    str(cases), "-k", "on_gpu", f"--junitxml={xml}"], cwd=REPO, capture_output=True, timeout=900)
    yield from kernel_rows(xml)


def kernel_rows(xml: Path):
    """One row per pytest case in a junit XML file: passed, or what failed or skipped."""
    cases = list(ET.parse(xml).getroot().iter("testcase")) if xml.exists() else []
    for case in cases:
        bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        message = ((bad.get("message") or bad.text or "").strip().splitlines() or [""])[0][:160] if bad is not None else ""
        yield make_row("kernels", case.get("name"), "agrees with its twin" if bad is None else f"{bad.tag}: {message}",
                       "twin's values (same bits where stated)", bad is None)
    if not cases:
        yield make_row("kernels", "pytest", f"ran no case (see {xml})", "every on-GPU case", False)


def part_steps(setup: Setup):
    """The runs leave out the x0/residual lambdas. At nanochat's init (zero output projections, a
    norm before the head) the loss does not depend on their scale, so their first gradient is pure
    rounding noise (~1e-11), and AdamW (eps 1e-10) turns it into a full step of either sign: after
    one step no two summation orders agree (the first H200 run: 2.6 apart by step 3, CPU on Numba
    against CPU on the twins too). Without them, the CPU's two paths agree to 1e-7 in fp32.
    The CPU side runs on the NumPy twins when the other side is a GPU: the twins are what the CUDA
    kernels were written against, and Numba's kernels would compile for a minute and more on a
    fresh machine, time a lease is short of."""
    from trainer.train import run
    for matmul in MATMULS:
        losses = {}
        for device in ("cpu", setup.device):
            out = setup.out / "runs" / f"steps-{matmul}-{device}"
            with cpu_on_twins(device == "cpu" and setup.device != "cpu"):
                run(step_spec(setup, device, matmul), out, quiet=True)
            losses[device] = train_losses(out)
        diff = max(abs(a - b) for a, b in zip(losses["cpu"], losses[setup.device], strict=True))
        yield make_row("steps", f"{setup.steps} steps, no lambdas, {matmul} matmuls, {setup.device} vs cpu"
                       + (" (NumPy twins)" if setup.device != "cpu" else ""),
                       f"max |loss difference| {diff:.1e} (losses {losses[setup.device][0]:.4f} .. "
                       f"{losses[setup.device][-1]:.4f})", f"<= {STEP_TOLERANCE[matmul]:g}",
                       diff <= STEP_TOLERANCE[matmul])


def step_spec(setup: Setup, device: str, matmul: str):
    overrides = {**dict(setup.overrides), "lambdas": False}
    return setup.spec(device=device, matmul=matmul, budget_kind="steps", budget=setup.steps, overrides=overrides)


@contextlib.contextmanager
def cpu_on_twins(on: bool):
    """NANOLAB_KERNELS=0 for the runs inside (read each time the model picks its ops)."""
    before = os.environ.get("NANOLAB_KERNELS")
    if on:
        os.environ["NANOLAB_KERNELS"] = "0"
    try:
        yield
    finally:
        if on and before is None:
            del os.environ["NANOLAB_KERNELS"]
        elif on:
            os.environ["NANOLAB_KERNELS"] = before


def train_losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["train_loss"] for x in lines if '"train_loss"' in x]


def part_resume(setup: Setup):
    from trainer.train import run
    spec = setup.spec(budget_kind="steps", budget=setup.resume_steps, save_final=True)
    whole = [setup.out / "runs" / f"resume-whole-{i}" for i in (1, 2)]
    for out in whole:
        run(spec, out, quiet=True)
    differ = state_difference(whole[0], whole[1])
    yield make_row("resume", f"two {setup.resume_steps}-step runs, one seed", differ or "bit-identical",
                   "bit-identical", differ is None)
    cut = setup.out / "runs" / "resume-cut"
    stopped_at = run_and_stop(spec, cut, after_steps=setup.resume_steps // 10)
    if stopped_at is None:
        yield make_row("resume", "SIGTERM mid-run, then --resume", "the run ended before the signal landed",
                       "stopped mid-run", False)
        return
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", "--resume", str(cut), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    steps = [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines() if '"train_loss"' in x]
    differ = (f"--resume failed: {proc.stderr.strip()[-200:]}" if proc.returncode != 0 else
              "steps lost or logged twice" if steps != list(range(1, setup.resume_steps + 1)) else
              state_difference(whole[0], cut))
    yield make_row("resume", f"SIGTERM at step {stopped_at}, then --resume", differ or "bit-identical to the run through",
                   "bit-identical", differ is None)


def run_and_stop(spec, out: Path, after_steps: int) -> int | None:
    """Start a run in its own process, SIGTERM it once it logged `after_steps` steps; the step
    its checkpoint holds, or None when it finished first."""
    out.mkdir(parents=True, exist_ok=True)
    code = ("import json, sys; from pathlib import Path; from trainer.train import RunSpec, run; "
            "run(RunSpec(**json.loads(sys.argv[1])), Path(sys.argv[2]), quiet=True)")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec.__dict__), str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= after_steps:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    proc.communicate(timeout=300)
    result = json.loads((out / "result.json").read_text())
    return result["steps"] if result["status"] == "killed" else None


def state_difference(a: Path, b: Path) -> str | None:
    """None when two runs' checkpoints hold the same bits; else the first tensor that differs."""
    from trainer.checkpoint import load_checkpoint
    import numpy as np
    pa, oa, _ = load_checkpoint(a / "checkpoint.npz")
    pb, ob, _ = load_checkpoint(b / "checkpoint.npz")
    for kind, x, y in (("weight", pa, pb), ("optimizer state", oa, ob)):
        for k in x:
            if not np.array_equal(np.asarray(x[k]), np.asarray(y[k])):
                diff = float(np.max(np.abs(np.asarray(x[k], float) - np.asarray(y[k], float))))
                return f"{kind} {k} differs (max {diff:.1e})"
    return None


def part_d12(setup: Setup):
    from trainer.train import run
    spec = setup.spec(overrides=dict(setup.d12), batch_size=setup.d12_batch, budget_kind="seconds",
                      budget=setup.d12_seconds, val_tokens=2**20, log_every=50)
    r = run(spec, setup.out / "runs" / "d12", quiet=False)
    ok = r["status"] == "completed" and r["val_bpb"] is not None and r["val_bpb"] < 8.0
    result = (f"val_bpb {r['val_bpb']:.4f} after {r['steps']} steps ({r['tokens_per_second'] or 0:,.0f} tokens/s)"
              if r["val_bpb"] is not None else f"{r['status']}: {r['reason']}")
    shape = " ".join(f"{k}={v}" for k, v in setup.d12)
    yield make_row("d12", f"nanochat {shape}, batch {setup.d12_batch}, {setup.d12_seconds:g} s, bytes", result,
                   "completes, val_bpb < 8 (chance)", ok)


def part_bench(setup: Setup):
    """torch.compile's measurements go last: each compiles for most of a minute, and a check cut
    short by its lease should have every precision's nanolab and eager figures first."""
    from trainer.bench import IMPLS, measure_in_subprocess, torch_available
    impls = IMPLS if torch_available() else ("nanolab",)
    passes = [[i for i in ("torch-eager", "nanolab") if i in impls],  # eager first: the others' ratios to it
              [i for i in ("torch-compile",) if i in impls]]
    eager = {}
    for pass_impls in passes:
        for matmul in MATMULS:
            for name in BENCH_CONFIGS:
                for impl in pass_impls:
                    check = f"{name} {impl} {matmul}"
                    if setup.left() < BENCH_SECONDS:
                        yield make_row("bench", check, f"not run: under {BENCH_SECONDS} s of --seconds left", "runs", False)
                        continue
                    r = measure_in_subprocess(name, impl, setup.device, 5, matmul, timeout=setup.left())
                    if "error" in r:
                        yield make_row("bench", check, f"failed: {r['error']}", "runs", False)
                        continue
                    if impl == "torch-eager":
                        eager[name, matmul] = r["ms_per_step"]
                    base = eager.get((name, matmul)) if impl != "torch-eager" else None
                    vs = f", {base / r['ms_per_step']:.2f}x eager" if base else ""
                    yield make_row("bench", check, f"{r['ms_per_step']:.1f} ms/step, {r['tokens_per_s']:,.0f} tok/s, "
                                   f"model {r['mfu'] * r['peak_flops'] / 1e12:.3g} TFLOP/s, MFU {100 * r['mfu']:.0f}% "
                                   f"of {r['peak_of']} matmul's {r['peak_flops'] / 1e12:.3g}{vs}, "
                                   f"{r['peak_mem_mib']:,.0f} MiB", "", None)


PART_FUNCTIONS = {"device": part_device, "kernels": part_kernels, "steps": part_steps,
                  "resume": part_resume, "d12": part_d12, "bench": part_bench}
