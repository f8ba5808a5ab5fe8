"""How much an agent's command slows a run on the same cores: README's figure, by hand (not a test).

    python tests/interference_bench.py                     # 3 reps, 1000 steps, a run of 2 threads
    python tests/interference_bench.py --reps 5 --threads 1

A trainer run (a tiny model and a fixed number of steps: fixed work) in a run's box on cores
0..threads-1, alone, and beside an agent's command in a box with the agent box's CPU weight (1),
with SCHED_IDLE (what org/sandbox.py agent_box gives it) or without (the weight alone). The
command runs for the whole run on any core: numpy copying 256 MB arrays ("stream"), making and
dropping one (page faults and zeroing in the kernel: "churn"), or a Python loop ("spin"). Modes are interleaved within each rep, so a machine that slows down slows all;
run it on a quiet machine. Prints each run, then the median train seconds of each mode and its
slowdown against the run alone."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # (this checkout's org, whichever is installed)
from org.sandbox import Limits, Sandbox, end_box, untrusted_env  # noqa: E402
from org.slots import threads_env  # noqa: E402
HOG = """\
import sys, time
import numpy as np
mode, until = sys.argv[1], time.time() + float(sys.argv[2])
a = np.ones(32 << 20) if mode == "stream" else None
b = np.empty_like(a) if mode == "stream" else None
while time.time() < until:
    if mode == "stream":
        np.copyto(b, a)
    elif mode == "churn":
        np.ones(32 << 20)
    else:
        sum(range(100_000))
"""
MODES = {"alone": None, **{f"{hog}, weight 1{' + SCHED_IDLE' * idle}": (hog, idle)
                           for idle in (False, True) for hog in ("stream", "churn", "spin")}}
MODEL = ["--set", "n_layer=2", "--set", "n_embd=64", "--set", "n_head=2", "--batch-size", "8", "--seq-len", "64"]


def one_run(mode, steps: int, threads: int, tmp: Path) -> float:
    """The train seconds of one run beside this mode's command (None: alone)."""
    hog = None
    if mode:
        (tmp / "hog.py").write_text(HOG)
        box = Sandbox(writable=[tmp], limits=Limits(cpu_weight=1, idle=mode[1]))
        hog = box.popen([sys.executable, str(tmp / "hog.py"), mode[0], "600"], cwd=tmp, env=untrusted_env(),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # (its arrays made)
    out, cache = Path(tempfile.mkdtemp(dir=tmp)), tmp / "kernels"  # (compiled once, by the warm-up run)
    cache.mkdir(exist_ok=True)
    run = Sandbox(writable=[out, cache], limits=Limits(cpu_seconds=3600, cores=tuple(range(threads))))
    argv = [sys.executable, "-m", "trainer", "train", "--preset", "nanochat", *MODEL, "--seed", "0", "--out", str(out),
            "--quiet", "--steps", str(steps), "--tokenizer", "bytes", "--val-tokens", "2048", "--device", "cpu"]
    try:
        proc = run.popen(argv, cwd=REPO, env={**untrusted_env(), **threads_env(threads), "PYTHONPATH": str(REPO),
                                                "NUMBA_CACHE_DIR": str(cache)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log = proc.communicate()[0].decode()
        end_box(proc)  # (its cgroups)
        if proc.returncode != 0:
            sys.exit(f"the run failed:\n{log[-2000:]}")
        return json.loads((out / "result.json").read_text())["train_seconds"]
    finally:
        if hog:
            hog.kill()
            hog.wait()
            end_box(hog)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="the run's threads, on cores 0..threads-1")
    args = parser.parse_args()
    if args.threads > len(os.sched_getaffinity(0)):
        sys.exit(f"--threads {args.threads}: this machine has {len(os.sched_getaffinity(0))} cores")
    seconds = {name: [] for name in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        one_run(None, 20, args.threads, Path(tmp))  # (untimed: the kernels' first compile, the page cache)
        for rep in range(args.reps):
            for name, mode in MODES.items():
                seconds[name].append(one_run(mode, args.steps, args.threads, Path(tmp)))
                print(f"rep {rep}  {name:32s} {seconds[name][-1]:7.2f} s", flush=True)
    alone = statistics.median(seconds["alone"])
    print(f"\n{'beside':32s} {'median s':>9s} {'slower':>7s}   (a run of {args.threads} thread(s), {args.steps} steps, "
          f"{args.reps} reps)")
    for name, values in seconds.items():
        print(f"{name:32s} {statistics.median(values):9.2f} {statistics.median(values) / alone - 1:+7.0%}")


if __name__ == "__main__":
    main()
