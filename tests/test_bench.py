"""`python -m trainer bench` runs and prints a table a person can paste (no timing asserted)."""
import subprocess
import sys

import pytest

from trainer.backend import array_module


def test_bench_prints_a_markdown_table():
    proc = subprocess.run([sys.executable, "-m", "trainer", "bench", "--configs", "d4", "--steps", "1", "--rounds", "1", "--no-torch"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[2].startswith("| config | impl | ms/step | tokens/s |")
    row = lines[4].split("|")
    assert row[1].strip() == "d4" and row[2].strip() == "nanolab"
    assert float(row[3].split()[0]) > 0 and float(row[8]) > 0  # ms/step and peak memory were measured


def test_unknown_bench_config_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "trainer", "bench", "--configs", "d99"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: unknown bench config 'd99'; choose from d4, gpt2, d12, gpt2-124m"
    if no_gpu():                                  # it once printed a table of n/a, and exited 0
        proc = subprocess.run([sys.executable, "-m", "trainer", "bench", "--device", "cuda"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stderr.startswith("error: --device cuda: no usable CUDA GPU (")
        assert proc.stderr.count("\n") == 1
    for flag in ("--rounds", "--steps"):          # a zero once ended in an IndexError traceback
        proc = subprocess.run([sys.executable, "-m", "trainer", "bench", "--configs", "d4", flag, "0"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stderr.strip() == f"error: {flag} must be at least 1, got 0"


def test_bench_names_the_matmul_precision_and_that_cpu_peers_stay_float32():
    proc = subprocess.run([sys.executable, "-m", "trainer", "bench", "--configs", "d4", "--steps", "1", "--rounds", "1",
                           "--no-torch", "--matmul", "bf16"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "float32, bf16 matmuls (torch peers fp32)" in lines[0]
    assert float(lines[4].split("|")[3].split()[0]) > 0


def test_speed_against_eager_is_paired_by_round():
    """A slow spell that hits one round hits both implementations in it: the ratio is taken per
    round, then the median; not the ratio of the two medians (which would say 1.21x here)."""
    from trainer.bench import format_table, summarize

    def measured(ms):
        return {"config": "d4", "ms_per_step": ms, "tokens_per_s": 2048e3 / ms, "mfu": 0.5,
                "peak_flops": 2e11, "peak_mem_mib": 300.0}
    rounds = {("d4", "nanolab"): [measured(300), measured(330), measured(480)],
              ("d4", "torch-eager"): [measured(400), measured(300), measured(500)]}
    for (_, impl), rows in rounds.items():
        for r in rows:
            r["impl"] = impl
    rows = summarize(rounds)
    assert rows[0]["vs_eager"] == pytest.approx((500 / 480, 300 / 330, 400 / 300))
    table = format_table(rows, "cpu", rounds=3)
    assert "| d4 | nanolab | 330.0 [300-480] | 6,206 | 1.04x [0.91-1.33] |" in table
    assert "| d4 | torch-eager | 400.0 [300-500] | 5,120 | 1.00x |" in table


def no_gpu() -> bool:
    try:
        array_module("cuda")
        return False
    except ValueError:
        return True


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_the_gpus_mfu_yardstick_is_torchs_matmul_at_the_runs_precision_and_leaves_torch_as_it_was(precision):
    """On a GPU every implementation's MFU is over one peak per precision, torch's own matmul (here
    on the CPU, to run the code: a GPU's figures are in README). TF32 mode is the peers' to set."""
    torch = pytest.importorskip("torch")
    from trainer.bench import torch_matmul_peak
    before = torch.backends.cuda.matmul.allow_tf32
    peak = torch_matmul_peak(precision, device="cpu", n=128, seconds=0.05)
    assert 1e6 < peak < 1e16
    assert torch.backends.cuda.matmul.allow_tf32 == before
