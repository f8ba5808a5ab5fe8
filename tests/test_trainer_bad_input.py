"""Bad input to `python -m trainer`: one line naming the flag, file or key, no traceback, nothing lost."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import make_config

pytestmark = pytest.mark.xdist_group("trainer_bad_input")  # one worker builds its module fixture
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2", "--set", "sequence_len=32"]
SMALL = ["--steps", "1", "--data", "pystdlib", "--tokenizer", "bytes", "--batch-size", "2", "--val-tokens", "64"]


def trainer(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NANOLAB_CACHE": str(Path(cwd) / "cache")}
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def assert_one_line(proc, *names):
    """Failed, without a traceback, in one line that names each of `names`."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding one tiny finished run, `run/`, for eval and sample."""
    cwd = tmp_path_factory.mktemp("bad_input")
    proc = trainer(cwd, "train", *SMALL, *TINY, "--out", "run", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return cwd


def train_with_config(cwd, text: bytes):
    (Path(cwd) / "c.yaml").write_bytes(text)
    return trainer(cwd, "train", *SMALL, "--config", "c.yaml", "--out", "new")


def test_config_non_string_key(workdir):
    proc = train_with_config(workdir, b"{1: 2}\n")
    assert_one_line(proc, "--config c.yaml", "1")
    assert not (workdir / "new").exists()


def test_config_not_utf8(workdir):
    assert_one_line(train_with_config(workdir, b"n_layer: 1\n\xff\xfe: 2\n"), "--config c.yaml")


def test_config_key_given_twice_or_malformed_says_which_and_where(workdir):
    """A key given twice in --config took the last without a word (`org`'s program files refuse
    it); malformed YAML was "cannot read (ParserError)", with no line."""
    assert_one_line(train_with_config(workdir, b"n_layer: 1\nsoftcap: 2\nn_layer: 2\n"), "--config c.yaml", "'n_layer' is given twice")
    assert_one_line(train_with_config(workdir, b"n_layer: [1\nsoftcap: 2\n"), "--config c.yaml", "malformed YAML at line 2, column")
    assert not (workdir / "new").exists()


def test_config_non_integral_int_key(workdir):
    assert_one_line(train_with_config(workdir, b"n_layer: 1.7\n"), "n_layer", "1.7")


def test_config_bool_key_not_0_or_1(workdir):
    assert_one_line(train_with_config(workdir, b"qk_norm: 5\n"), "qk_norm", "5")


def test_config_integral_values_still_train(workdir):
    yaml = b"n_layer: 1.0\nn_embd: 32\nn_head: 2\nsequence_len: 32\nqk_norm: 1\nbias: true\nmatrix_lr: 0.02\n"
    (workdir / "ok.yaml").write_bytes(yaml)
    proc = trainer(workdir, "train", *SMALL, "--config", "ok.yaml", "--out", "ok", "--quiet")
    assert proc.returncode == 0, proc.stderr


def test_harness_value_forms_accepted():
    """What the org passes: --set strings and YAML numbers and booleans."""
    cfg = make_config("nanochat", n_layer="2", n_embd=32.0, n_head=2, qk_norm="True", bias=True,
                      lambdas=0, matrix_lr="0.02", softcap=0)
    assert (cfg.n_layer, cfg.n_embd, cfg.qk_norm, cfg.bias, cfg.lambdas) == (2, 32, True, True, False)
    for bad in (dict(n_layer=1.7), dict(n_layer=True), dict(qk_norm=5), dict(qk_norm=None)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_config("nanochat", **bad)


@pytest.mark.parametrize("seed", ["-1", str(2 ** 63)])  # (org's seeds end at 2**63 - 1: the ledger's int)
def test_train_a_seed_out_of_range(workdir, seed):
    proc = trainer(workdir, "train", *SMALL, *TINY, "--seed", seed, "--out", "neg")
    assert_one_line(proc, "--seed", seed)
    assert not (workdir / "neg").exists()


def test_a_kernels_switch_that_is_neither_on_nor_off(workdir):
    """NANOLAB_KERNELS=abc ran on the kernels (only "0" turns them off) and said nothing."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NANOLAB_KERNELS": "abc"}
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", *SMALL, *TINY, "--out", "kernels"],
                          capture_output=True, text=True, cwd=workdir, env=env, timeout=120)
    assert_one_line(proc, "NANOLAB_KERNELS", "'abc'")
    assert not (workdir / "kernels").exists()


@pytest.mark.parametrize("flags, name", [
    (["--seed", "-1"], "--seed"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-k", "-3"], "--top-k"),
    (["--tokens", "-1"], "--tokens"),
    (["--tokens", "0"], "--tokens"),
    (["--prompt", "\udcff"], "--prompt"),  # how Python hands over a non-UTF-8 argv byte (0xff)
])
def test_sample_bad_flags(workdir, flags, name):
    assert_one_line(trainer(workdir, "sample", "run", "--tokens", "3", *flags), name)


def test_sample_greedy_and_no_top_k_still_work(workdir):
    proc = trainer(workdir, "sample", "run", "--tokens", "3", "--temperature", "0", "--top-k", "0")
    assert proc.returncode == 0, proc.stderr


def test_eval_tokens_too_few(workdir):
    proc = trainer(workdir, "eval", "run", "--tokens", "0")
    assert_one_line(proc, "--tokens")
    assert "eval_batches" not in proc.stderr


def test_data_export_bin_is_a_file(workdir):
    (workdir / "taken").write_text("keep me")
    for target in ("taken", "taken/sub"):
        assert_one_line(trainer(workdir, "data", "--export-bin", target), f"--export-bin {target}")
    assert (workdir / "taken").read_text() == "keep me"


@pytest.mark.parametrize("setting, key", [("n_embd=1000000000000", "n_embd"), ("n_layer=1e30", "n_layer"),
                                          ("depth=1e30", "n_layer")])
def test_absurd_model_size(workdir, setting, key):
    proc = trainer(workdir, "train", *SMALL, "--set", "n_head=2", "--set", setting, "--out", "huge")
    assert_one_line(proc, key)
    assert not (workdir / "huge").exists()


@pytest.mark.parametrize("setting, key", [("adam_beta1=1", "adam_beta1"), ("adam_beta2=2", "adam_beta2"),
                                          ("adam_eps=0", "adam_eps"), ("matrix_lr=-1", "matrix_lr"),
                                          ("warmup_frac=-1", "warmup_frac"), ("rope_base=0", "rope_base"),
                                          ("muon_momentum=5", "muon_momentum"), ("weight_decay=-0.1", "weight_decay"),
                                          ("matrix_lr=1e308", "matrix_lr"), ("softcap=1e-400", "softcap"),
                                          ("matrix_lr=1e-45", "matrix_lr")])
def test_optimizer_values_out_of_their_range(workdir, setting, key):
    """adam_beta1=1 divided by zero in AdamW's bias correction (a traceback); the others trained
    on nonsense without a word (a hunt, 2026-12-06); an lr past float32's range printed NumPy's
    overflow warnings, then "diverged" (session 49's); softcap=1e-400 was 0 once read, the softcap
    off, and an lr below float32's normal numbers trained as a denormal or 0. `org` refuses them
    through make_config too."""
    proc = trainer(workdir, "train", *SMALL, *TINY, "--set", setting, "--out", "odd")
    assert_one_line(proc, key)
    assert not (workdir / "odd").exists()


def test_a_bpe_vocabulary_past_its_bound(workdir):
    proc = trainer(workdir, "data", "--data", "pystdlib", "--tokenizer", "bpe:99999999999999999999")  # (OverflowError)
    assert_one_line(proc, "bpe:99999999999999999999", "from 257 to 1048576 ids")


def test_a_fifo_in_a_data_folder_is_passed_over(workdir):
    """A named pipe among a folder's files: the trainer opened it and waited for a writer for ever,
    deaf to SIGTERM (a hunt, 2026-12-06)."""
    folder = workdir / "with-a-fifo"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i}.txt").write_text(f"document {i}: " + "some words of text " * 50)
    os.mkfifo(folder / "a-pipe.txt")
    proc = trainer(workdir, "data", "--data", str(folder), "--cache-dir", str(workdir / "fifo-cache"))
    assert proc.returncode == 0, proc.stderr


def test_an_empty_data_a_key_set_twice_and_a_file_to_resume(workdir):
    """(a hunt, 2026-12-06) an empty --data trained on the folder it started in; a key set twice
    took the last without a word (and a key set and given its own flag, the flag: session 49's
    fuzz); a file to resume was called a corrupt run."""
    assert_one_line(trainer(workdir, "train", *SMALL, *TINY, "--data", "", "--out", "odd"), "--data", "expected pystdlib")
    assert_one_line(trainer(workdir, "train", *SMALL, *TINY, "--set", "softcap=1", "--set", "softcap=2", "--out", "odd"),
                    "softcap is set twice")
    assert_one_line(trainer(workdir, "train", *SMALL, *TINY, "--seq-len", "16", "--out", "odd"),  # (the flag won)
                    "--set sequence_len=32 and --seq-len 16: sequence_len is set twice")
    (workdir / "a-file").write_text("x")
    assert_one_line(trainer(workdir, "train", "--resume", "a-file"), "a-file: not a folder")
    assert not (workdir / "odd").exists()


def test_an_empty_out_is_refused_and_a_resumed_run_takes_no_flags_it_would_ignore(workdir):
    """`--out ""` was the folder the trainer started in (Path("") is "."): a run's four files
    landed there. And `--resume run --steps 5` resumed the run to its own budget, saying nothing."""
    before = sorted(p.name for p in workdir.iterdir())
    assert_one_line(trainer(workdir, "train", *SMALL, *TINY, "--out", ""), "--out", "expected a folder's name")
    assert sorted(p.name for p in workdir.iterdir()) == before
    for flags, named in ((["--steps", "5"], "--steps"), (["--budget-flops", "1e9"], "--budget-flops"), (["--seed", "3"], "--seed"),
                         (["--set", "n_layer=2"], "--set"), (["--val-tokens", "128"], "--val-tokens")):
        proc = trainer(workdir, "train", "--resume", "run", *flags)
        assert_one_line(proc, "--resume run continues the run its config.json describes", f"{named} cannot change it")


def test_sizes_this_machine_cannot_hold_are_one_line_and_leave_no_run_in_the_way(workdir):
    """A batch (or model, or vocab) the config allows and the machine cannot hold was NumPy's
    traceback, and it left --out holding config.json and an empty metrics.jsonl: the same command
    again was refused as "already holds a run", and --resume found no checkpoint. Here the address
    space is capped at 4 GB (a machine short of memory, deterministically: without a cap the kernel
    may kill the trainer instead)."""
    import resource
    cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    argv = [sys.executable, "-m", "trainer", "train", *SMALL, *TINY, "--out", "big", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NANOLAB_CACHE": str(workdir / "cache")}
    proc = subprocess.run([*argv, "--batch-size", str(10**8)], capture_output=True, text=True, cwd=workdir, env=env,
                          timeout=120, preexec_fn=cap)
    assert_one_line(proc, "error: out of memory: Unable to allocate", "a smaller --batch-size")
    assert sorted(p.name for p in (workdir / "big").iterdir()) == ["config.json", "metrics.jsonl"]  # (no step taken)
    again = subprocess.run(argv, capture_output=True, text=True, cwd=workdir, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (workdir / "big" / "result.json").exists()
    refused = subprocess.run(argv, capture_output=True, text=True, cwd=workdir, env=env, timeout=120)
    assert_one_line(refused, "--out big already holds a run")  # (a run that took a step is data)
