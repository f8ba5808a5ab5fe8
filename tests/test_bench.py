"""`python -m trainer bench` runs and prints a table a person can paste (no timing asserted)."""
import subprocess
import sys


def test_bench_prints_a_markdown_table():
    proc = subprocess.run([sys.executable, "-m", "trainer", "bench", "--configs", "d4", "--steps", "1", "--rounds", "1", "--no-torch"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[2].startswith("| config | impl | ms/step | tokens/s |")
    row = lines[4].split("|")
    assert row[1].strip() == "d4" and row[2].strip() == "nanolab"
    assert float(row[3]) > 0 and float(row[8]) > 0  # ms/step and peak memory were measured


def test_unknown_bench_config_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "trainer", "bench", "--configs", "d99"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: unknown bench config 'd99'; choose from d4, gpt2"


def test_bench_names_the_matmul_precision_and_that_cpu_peers_stay_float32():
    proc = subprocess.run([sys.executable, "-m", "trainer", "bench", "--configs", "d4", "--steps", "1", "--rounds", "1",
                           "--no-torch", "--matmul", "bf16"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "float32, bf16 matmuls (torch peers fp32)" in lines[0]
    assert float(lines[4].split("|")[3]) > 0
