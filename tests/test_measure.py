"""The harness's measurement of a finished run (org/measure.py, org/evaluator.py), on real run
directories of the real trainer: the record is exact for a config arm, the experiment's forward
pass is only ever run in a worker and checked there, and every kind of bad checkpoint or bad
forward pass is `invalid` with one line that says why."""
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import struct
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from org import remove_tree
from org.cli import main
from org.ledger import Ledger
from org.ledger_schema import FIGURE_COLUMNS, SCHEMA_VERSION
from org.bytecode import source_only
from org.model_worker import receive
from org.measure import MeasureError, cross_check, evaluator_env, measure_run, planted, read_result, worker_command
from org.confounds import Tolerances
from org.referee import compare
from org.cgroups import boxes_memory, cgroup_root, memory_limit
from org.sandbox import WORKER_FILE_BYTES, available, untrusted_env, worker_box
from trainer.record import Params, Result, read
from test_org_runner import agent_commit, make_project, tiny_program  # noqa: F401  (make_project is a fixture)

pytestmark = pytest.mark.xdist_group("measure")  # one worker builds its module fixture
ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
FLAGS = dict(batch_size=4, seq_len=64, val_tokens=2048, steps=5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A base snapshot (the trainer as committed), a finished tiny run of it, a harness cache."""
    root = tmp_path_factory.mktemp("measure")
    base = root / "snapshots" / "base"
    shutil.copytree(ROOT / "trainer", base / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    train_tiny(base, root / "runs" / "1")
    return {"root": root, "base": base, "run_dir": root / "runs" / "1", "models": models_export(root)}


def models_export(root: Path) -> Path:
    """What a model worker reads, as the runner hands it one (streams.export_for_models): a few
    windows of each split, in the workers' data folder (box_for). Not pystdlib itself: a worker
    that checks another's reads no stdlib text (worker_box's lean)."""
    from trainer.data import export_llmc, load_dataset
    from trainer.shards import SPLITS
    ds = load_dataset("pystdlib", "bytes")
    out = root / "harness-cache" / "data" / "models"
    export_llmc(replace(ds, **{s: getattr(ds, s)[:4 * (64 + 1)] for s in SPLITS}), out)
    return out


def train_tiny(base: Path, run_dir: Path):
    """The tiny run, as the runner starts a trainer (untrusted_env: the environment agent code sees)."""
    cmd = [sys.executable, "-m", "trainer", "train", "--preset", "nanochat", "--seed", "3", "--out", str(run_dir),
           "--quiet", "--steps", str(FLAGS["steps"]), "--batch-size", "4", "--seq-len", "64",
           "--val-tokens", "2048", "--confirm-tokens", "2048"]
    for key, value in TINY.items():
        cmd += ["--set", f"{key}={value}"]
    # one BLAS thread, as the evaluator below: a sum split over two threads adds up in another order
    env = untrusted_env({"PYTHONPATH": str(base), "OMP_NUM_THREADS": "1", **source_only()})
    subprocess.run(cmd, cwd=base, env=env, check=True)


def job(lab, run_dir=None, code=None, overrides=None, probe_seed=None, snapshot_every=None, grace=None,
        source=None, own_caches=False) -> dict:
    """A job as the runner makes one (measure.job_for); without a lab's probe_seed its unforeseen
    train windows are a fresh draw each time; `grace`: budget.measure_grace_seconds (else 30 s).
    `own_caches`: each worker's kernel cache in the lab's state, named and set as the runner's
    (Runner._worker: NUMBA_CACHE_DIR, <commit>.measuring-run<id>-<worker>); else one in the snapshot."""
    run_dir = Path(run_dir or lab["run_dir"])
    cache = lambda name, where: (lab["root"] / ".lab" / "kernels" / f"{where.name}.measuring-run1-{name}") if own_caches \
        else where / "kernels"
    env = lambda name, where: {"NUMBA_CACHE_DIR": str(cache(name, where))} if own_caches else {}
    return {**({"train_probe_seed": probe_seed} if probe_seed is not None else {}),
            **({"setup_grace": grace} if grace is not None else {}), "base_code": str(lab["base"]), "run_dir": str(run_dir), "log_dir": str(run_dir),
            "preset": "nanochat", "overrides": {**TINY, **(overrides or {})}, "seed": 3, "data": "pystdlib", "tokenizer": "bytes",
            "val_tokens": 2048, "batch_size": 4, "seq_len": 64, "device": "cpu", "dtype": "float32",
            "matmul": "fp32", "budget_kind": "steps", "budget": FLAGS["steps"], "snapshot_every": snapshot_every,
            "models_data": str(lab["models"]),
            "workers": None if code is None else {name: worker_command(where, untrusted_env(
                {"OMP_NUM_THREADS": "1", "NANOLAB_CACHE": str(lab["root"] / "harness-cache" / "data"), **env(name, where)}),
                box=box_for(lab, where, lean=name == "b", source=source, kernels=cache(name, where)))
                for name, where in (("a", code), ("b", code), ("base", lab["base"]))}}


def box_for(lab, code: Path, lean: bool = False, source: str | None = None, kernels: Path | None = None):
    """The worker's box, as the runner makes it (b, which checks a's logits: lean); a plain process
    where no box can be made here. The worker reads a few windows (models_export), and its box is a
    file-source program's, which shows the stdlib as it is (org/sourceless.py) and the system's
    text (python_text.system_text), but b's; or, with `source` pystdlib, a pystdlib program's."""
    if available() is not None:
        return None
    return worker_box(lab["root"], code, lab["root"] / "harness-cache" / "data", kernels or code / "kernels", gpu=False,
                      source=source or str(lab["root"] / "corpus.txt"), lean=lean)


def measure(lab, timeout=120, **kw) -> dict:
    env = evaluator_env(lab["root"] / "harness-cache", {"OMP_NUM_THREADS": "1"})
    return measure_run(job(lab, **kw), env, timeout)


def result_of(lab) -> Result:
    return read(Result, (lab["run_dir"] / "result.json").read_text(), "result.json")


def experiment(lab, name: str, edit=None) -> Path:
    """An experiment's snapshot: the base trainer, with `edit(model_py_text)` applied."""
    code = lab["root"] / "snapshots" / name
    if not code.exists():
        shutil.copytree(lab["base"] / "trainer", code / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
        if edit:
            model = code / "trainer" / "model.py"
            model.write_text(edit(model.read_text()))
    return code


def copy_run(lab, name: str) -> Path:
    run_dir = lab["root"] / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(lab["run_dir"], run_dir)
    return run_dir


def rewrite_checkpoint(run_dir: Path, change):
    path = run_dir / "checkpoint.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(path, **arrays)


def add_deflated_zeros(path: Path, size: int):
    """A parameter of `size` bytes of zeros, deflated into the checkpoint (about 1/1000 of that):
    the evaluator, which has no box, unpacked it whole."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (size // 4,)})
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive, archive.open("param/zeros.npy", "w") as f:
        f.write(header.getvalue())
        for _ in range(size >> 20):
            f.write(bytes(1 << 20))


def test_a_model_worker_has_a_boxs_limits_on_what_it_writes(lab):
    """A worker's box was made without the limits Sandbox.popen gives a run's (Sandbox.command
    only wraps the command): no RLIMIT_FSIZE on its log (a file of the run's directory) and
    none of the disk watch on its kernel cache, nor the OOM score that has the kernel take it
    first. The worker says what it has (before it is shown any evaluation text)."""
    if available() is not None:
        pytest.skip(f"no box here: {available()}")
    said = ("        import resource\n"
            "        raise RuntimeError('fsize %d oom %s' % (resource.getrlimit(resource.RLIMIT_FSIZE)[0],\n"
            "                           open('/proc/self/oom_score_adj').read().strip()))\n")
    code = experiment(lab, "says-its-limits", lambda t: t.replace(
        "        self.eps = float(np.finfo(dtype).eps)", said + "        self.eps = float(np.finfo(dtype).eps)"))
    out = measure(lab, code=code)
    assert f"fsize {WORKER_FILE_BYTES} oom 1000" in out["invalid"], out


def test_a_workers_frame_names_no_size_it_does_not_check():
    """What a model worker sends back is the experiment's code's: a header that is a list, sizes
    that sum to nothing ([60e9, -60e9]: 60 GB asked for), or an array header naming more than its
    bytes were a harness failure (AttributeError) or memory the evaluator does not have."""
    def frame(header, payload=b"") -> io.BytesIO:
        head = json.dumps(header).encode()
        return io.BytesIO(struct.pack("<Q", len(head)) + head + payload)
    big = io.BytesIO()
    np.lib.format.write_array_header_1_0(big, {"descr": "<f8", "fortran_order": False, "shape": (10**10,)})
    for bad in (frame([1, 2]), frame({"sizes": [60 * 10**9, -60 * 10**9]}), frame({"sizes": ["8"]}, b"x" * 8),
                frame({"sizes": [len(big.getvalue())]}, big.getvalue())):
        with pytest.raises(ValueError):
            receive(bad, 1 << 20)
    good = io.BytesIO()
    np.save(good, np.arange(3.0))
    assert receive(frame({"op": "x", "sizes": [len(good.getvalue())]}, good.getvalue()), 1 << 20)[1][0].tolist() == [0, 1, 2]


# --- the record ----------------------------------------------------------------------------


def test_a_config_arm_is_measured_exactly_as_the_trainer_measured_it(lab):
    m = measure(lab)["measurement"]
    result = result_of(lab)
    for key in ("val_loss", "val_bpb", "confirm_bpb", "flops_per_token", "steps", "tokens", "flops",
                "eval_fingerprint", "data_fingerprint", "params"):
        assert getattr(m, key) == getattr(result, key), key  # the same code on the same checkpoint: bit for bit
    assert cross_check(result, m) == []
    assert m.forward == "base" and m.causal is None and m.seed_only is False
    assert 4.5 < m.unigram_bpb < 4.8  # the data's unigram entropy in bits per byte
    assert len(m.params_fingerprint) == 64



def test_a_config_arm_is_measured_exactly_under_the_openblas_kernels_the_person_chose(lab, monkeypatch):
    """OPENBLAS_CORETYPE picks OpenBLAS's kernels (this machine's shell set Haswell, where OpenBLAS
    picks SkylakeX on its own): the evaluator inherited it and the trainer, whose environment is
    agent code's, did not, so their matmuls added up in another order and every measurement
    differed from its trainer's in the 10th digit (a code arm's worker from the base's too). It
    reaches both now."""
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # (any AVX2 machine's; on most, not OpenBLAS's own pick)
    run_dir = lab["root"] / "runs" / "haswell"
    train_tiny(lab["base"], run_dir)
    m, result = measure(lab, run_dir=run_dir)["measurement"], read(Result, (run_dir / "result.json").read_text(), "result.json")
    assert (m.val_loss, m.val_bpb, m.confirm_bpb) == (result.val_loss, result.val_bpb, result.confirm_bpb)


def test_the_learning_curve_is_the_harnesss_score_of_each_snapshot_the_run_kept(lab):
    # a lab's trainer evaluates nothing (org/slots.py): each parameter snapshot it kept is scored
    # as its checkpoint is; one missing, unreadable or of another step is left out, not the run
    run_dir = copy_run(lab, "curve")
    with np.load(run_dir / "checkpoint.npz") as z:
        final = {k: z[k] for k in z.files if k.startswith("param/")}
    (run_dir / "snapshots").mkdir()

    def snapshot(step, params, said_step=None):
        meta = np.frombuffer(json.dumps({"step": said_step or step}).encode(), dtype=np.uint8)
        np.savez(run_dir / "snapshots" / f"step-{step:08d}.npz", **params, meta=meta)

    snapshot(1, final)  # scores as the final checkpoint does
    (run_dir / "snapshots" / "step-00000002.npz").write_bytes(b"not a zip")
    snapshot(3, final, said_step=99)
    snapshot(4, {k: a * 0.5 for k, a in final.items()})
    config_arm = measure(lab, run_dir=run_dir, snapshot_every=1)["measurement"]
    (one, bpb), (four, halved) = config_arm.val_curve
    assert (one, four) == (1, 4) and bpb == round(config_arm.val_bpb, 4) and abs(halved - bpb) > 0.01
    code_arm = measure(lab, run_dir=run_dir, snapshot_every=1, code=experiment(lab, "unchanged"))["measurement"]
    assert code_arm.val_curve == config_arm.val_curve  # its own forward pass, in its worker
    assert measure(lab, run_dir=run_dir, snapshot_every=0)["measurement"].val_curve == ()  # none asked for: the end's
    assert measure(lab, run_dir=run_dir)["measurement"].val_curve is None  # a trainer before snapshots: its own


def test_the_unforeseen_train_windows_are_scored_one_by_one_as_evaluate_scores_them(lab):
    """train_bpb over the windows, and each window's own figure (the referee's margin for the
    draw): the same loss as the protected evaluate() gives on those windows laid end to end."""
    from org.evaluator import base_config, base_model, read_checkpoint, unforeseen_windows, window_bpb
    from trainer.data import load_dataset
    from trainer.eval import evaluate
    data = load_dataset("pystdlib", "bytes")
    params, _ = read_checkpoint(lab["run_dir"] / "checkpoint.npz")
    model = base_model(base_config(job(lab), data.vocab_size), job(lab), params)
    windows = unforeseen_windows(data.train, 2048, 64, seed=7)
    assert windows.shape == (32, 65) and np.array_equal(windows, unforeseen_windows(data.train, 2048, 64, seed=7))
    train_bpb, per_window = window_bpb(model, windows, data.token_bytes, batch_size=4)
    whole = evaluate(model, windows.ravel(), data.token_bytes, 2048, 4, 64)  # even spacing reads exactly these
    assert train_bpb == pytest.approx(whole["val_bpb"], rel=1e-9)
    assert len(per_window) == 32 and np.mean(per_window) == pytest.approx(train_bpb, abs=1e-5)  # 64 bytes each
    assert np.std(per_window) > 0.1  # kinds of text differ: the draw matters

    m = measure(lab)["measurement"]  # the record keeps both
    assert len(m.train_window_bpb) == 32 and m.train_bpb == pytest.approx(np.mean(m.train_window_bpb), abs=1e-5)
    assert len(m.val_window_bpb) == 32 and m.val_bpb == pytest.approx(np.mean(m.val_window_bpb), abs=1e-3)

def test_a_code_arm_runs_its_forward_in_a_worker_and_is_scored_by_the_harness(lab):
    same = experiment(lab, "unchanged")  # a code arm whose code is the base's: every check passes
    m = measure(lab, code=same)["measurement"]
    result = result_of(lab)
    assert m.forward == "experiment" and m.causal is True
    assert m.val_bpb == pytest.approx(result.val_bpb, rel=1e-12)
    assert (m.init, m.replay, m.seed_only, m.own_kernels) == ("same", "same", False, False)
    assert cross_check(result, m) == []
    assert (lab["run_dir"] / "measure-worker-a.log").exists()  # and a fresh worker probed causality
    assert (lab["run_dir"] / "measure-worker-b.log").exists()


def test_a_code_arm_whose_kernels_are_its_own_is_said_to_be(lab):
    # its runs compile them (the base's compiled cache is copied only to the same sources): CPU
    # time the referee's clock must not hold to the base's bar for the base's own step
    code = lab["root"] / "snapshots" / "own-kernels"
    if not code.exists():
        shutil.copytree(lab["base"] / "trainer", code / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
        kernels = code / "trainer" / "cpu_kernels.py"
        kernels.write_text(kernels.read_text() + "\n# the same kernels, tidied\n")
    m = measure(lab, code=code)["measurement"]
    assert (m.replay, m.own_kernels) == ("same", True)


def test_the_trainers_figures_are_a_cross_check_only(lab):
    """Its FLOPs, steps and parameters must be what the harness counts; its val and confirm
    figures are on the runs' own dev text (a lab's val is hidden from runs), so they are kept
    and not compared."""
    m = measure(lab)["measurement"]
    result = result_of(lab)
    lies = {"flops_per_token": result.flops_per_token // 2, "steps": 10, "params": Params(total=1, matmul=1),
            "eval_fingerprint": "0" * 64}
    for key, value in lies.items():
        problems = cross_check(replace(result, **{key: value}), m)
        assert problems and key.split("_")[0] in problems[0]
    other_text = {"val_bpb": result.val_bpb * 0.95, "confirm_bpb": None, "data_fingerprint": "0" * 64}
    assert cross_check(replace(result, **other_text), m) == []
    assert cross_check(result, replace(m, checkpoint_step=50)) == [
        "the checkpoint is from step 50, the program's budget allows 5 at the FLOPs per token of its shapes"]


def test_a_reseeded_init_is_found_and_a_real_init_change_is_not_called_one(lab):
    reseed = experiment(lab, "reseed", lambda t: t.replace("np.random.default_rng(seed)", "np.random.default_rng(seed + 99)"))
    m = measure(lab, code=reseed)["measurement"]
    assert (m.init, m.replay, m.seed_only) == ("redrawn", "same", True)
    wider = experiment(lab, "wider-init", lambda t: t.replace("rng.normal(0, 0.8, p.shape)", "rng.normal(0, 1.2, p.shape)"))
    m = measure(lab, code=wider)["measurement"]
    assert (m.init, m.seed_only) == ("changed", False)
    both = experiment(lab, "reseed-and-norm", lambda t: t.replace(  # a real change besides the reseed
        "np.random.default_rng(seed)", "np.random.default_rng(seed + 99)").replace(
        "self.eps = float(np.finfo(dtype).eps)", "self.eps = 0.5"))
    m = measure(lab, code=both)["measurement"]  # the replay of its training step tells them apart
    assert (m.init, m.replay, m.seed_only) == ("redrawn", "differs", False)
    # the probe replays the run's config: two arms are one config (the referee's check_seed_only) when
    # the model config they make is the same, a default restated in the overrides or not
    config = lambda **overrides: measure(lab, overrides=overrides)["measurement"].config_fingerprint
    assert config() == config(softcap=15.0) == m.config_fingerprint != config(matrix_lr=0.05)


# The attack: the base's init and training, and a forward pass that adds a prior built outside any
# budget (here byte bigrams counted from its own source files; an agent's box could count them
# over all of the stdlib). Its weights are the base's draw, so only the init's score was skipped.
BIGRAM_PRIOR = """

def _bigram_prior():
    import glob, os
    text = b"".join(open(f, "rb").read() for f in glob.glob(os.path.join(os.path.dirname(__file__), "*.py")))
    a = np.frombuffer(text, np.uint8)
    counts = np.ones((256, 256))
    np.add.at(counts, (a[:-1], a[1:]), 1)
    return np.log(counts / counts.sum(1, keepdims=True)).astype(np.float32)


_PRIOR = _bigram_prior()
"""


def test_an_init_that_is_the_bases_is_scored_too(lab):
    """What the forward pass adds is trained as much as any weight: below the data's unigram
    entropy before a step is taken, the head-start check's line (org/confounds.py)."""
    honest = measure(lab, code=experiment(lab, "unchanged"))["measurement"]
    assert honest.init == "same" and honest.init_bpb > honest.unigram_bpb
    prior = experiment(lab, "bigram-prior", lambda t: t.replace(
        FORWARD, FORWARD.replace("return logits", "return logits + _PRIOR[xp.asarray(idx)]")) + BIGRAM_PRIOR)
    m = measure(lab, code=prior, probe_seed=7)["measurement"]  # (a fresh draw of its 32 windows once read 0.26 ahead)
    assert m.init == "same" and m.causal is True
    assert m.init_bpb < m.unigram_bpb - 0.3, (m.init_bpb, m.unigram_bpb)


# a forward pass that mixes in a table of text its box holds beside its weights: the system's manuals
# and the stdlib's sources (a file-source program's box shows them), as the lookup attack would (README)
BOX_TEXT_LOOKUP = """

def _box_text():
    import os
    counts, seen = np.ones((256, 256)), 0
    for root in ("/usr/share/doc", os.path.dirname(os.__file__)):
        for folder, _, files in os.walk(root):
            for name in files:
                if seen < 4_000_000 and (name == "copyright" or name.endswith(".py")):
                    a = np.frombuffer(open(os.path.join(folder, name), "rb").read(100_000), np.uint8)
                    np.add.at(counts, (a[:-1], a[1:]), 1)
                    seen += len(a)
    return np.log(counts / counts.sum(1, keepdims=True)).astype(np.float32)


_BOX_TEXT = _box_text()
"""


def test_a_forward_pass_drawing_on_text_its_box_holds_is_caught_by_the_worker_that_checks_it(lab):
    """The scoring worker's box shows what its runs' boxes show: on a file-source program, the
    stdlib as it is and the system's manuals. The fresh worker that checks its logits reads no text
    but its trainer/ and bytecode (worker_box's lean: python_text.system_text hidden, the stdlib and
    run packages as a pystdlib box's), so a forward pass drawing on more answers otherwise there."""
    if available() is not None:
        pytest.skip(f"no box here: {available()}")
    honest = measure(lab, code=experiment(lab, "unchanged"))
    assert "measurement" in honest and honest["measurement"].causal is True, honest  # (b lean: the same logits)
    lookup = experiment(lab, "box-text-lookup", lambda t: t.replace(
        FORWARD, FORWARD.replace("return logits", "return logits + _BOX_TEXT[xp.asarray(idx)]")) + BOX_TEXT_LOOKUP)
    out = measure(lab, code=lookup)
    assert out.get("invalid", "").startswith("the experiment's forward pass answers otherwise in a fresh process whose "
                                             "box holds no text but its commit's trainer/ and bytecode"), out
    seen = {name: worker_box(lab["root"], lookup, lab["root"] / "harness-cache" / "data", lookup / "kernels", gpu=False,
                             source=str(lab["root"] / "corpus.txt"), lean=lean)
            for name, lean in (("scoring", False), ("checking", True))}
    look = ("import os; print(sum(len(files) for _, _, files in os.walk('/usr/share')), "
            "os.path.exists(os.__file__.removesuffix('c')))")  # (its files; os.py: a lean box's os has a .pyc alone)
    listed = {name: box.popen([sys.executable, "-I", "-c", look], cwd="/", env=untrusted_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT).communicate(timeout=60)[0].decode() for name, box in seen.items()}
    assert listed["checking"].split() == ["0", "False"], listed
    assert int(listed["scoring"].split()[0]) > 0 and listed["scoring"].split()[1] == "True", listed
    # what the scoring box shows of site-packages but the run packages is not there either: an import of it fails
    rich = measure(lab, code=experiment(lab, "imports-rich", lambda t: t + "\nimport rich\n"))
    assert rich.get("invalid", "").startswith("the experiment's model construction failed: ModuleNotFoundError: No "
                                              "module named 'rich' (importable in the fresh worker that checks the "
                                              "scoring one: only the stdlib modules the base commit's runs load, numpy, numba"), rich


# the same table handed on: the scoring worker leaves it in its kernel cache, and the checking
# worker, which cannot build it, looks for it in the scoring one's (its own name, -b for -a)
RELAYED = BOX_TEXT_LOOKUP.replace("_BOX_TEXT = _box_text()", """def _relayed():
    import os
    mine = os.environ.get("NUMBA_CACHE_DIR", ".")
    theirs = os.path.join(mine[:-2] + "-a" if mine.endswith("-b") else mine, "table.npy")
    if os.path.exists(theirs):
        return np.load(theirs)
    table = _box_text()
    np.save(os.path.join(mine, "table.npy"), table)
    return table


_BOX_TEXT = _relayed()""")


def test_a_table_the_scoring_worker_leaves_is_out_of_the_checking_workers_reach(lab):
    """Each worker has a kernel cache of its own in the lab's state (Runner.kernels), which no box
    but its own sees: what the scoring worker worked out there never reaches the one that checks
    it. (Where both read one cache, the checking worker loaded the table and the run was measured
    as the scoring one answered.)"""
    if available() is not None:
        pytest.skip(f"no box here: {available()}")
    relay = experiment(lab, "box-text-relay", lambda t: t.replace(
        FORWARD, FORWARD.replace("return logits", "return logits + _BOX_TEXT[xp.asarray(idx)]")) + RELAYED)
    env = evaluator_env(lab["root"] / "harness-cache", {"OMP_NUM_THREADS": "1"})
    out = measure_run(job(lab, code=relay, own_caches=True), env, 120)
    left = lab["root"] / ".lab" / "kernels" / "box-text-relay.measuring-run1-a" / "table.npy"
    assert left.is_file()  # (the scoring worker did leave it)
    assert out.get("invalid", "").startswith("the experiment's forward pass answers otherwise in a fresh process"), out


# the same from what a pystdlib program's boxes hold: the stdlib's bytecode, its names and strings
BYTECODE_LOOKUP = """

def _bytecode_text():
    import marshal, os, types
    counts, seen = np.ones((256, 256)), 0

    def strings(code, out):
        out += [code.co_name, *code.co_names, *code.co_varnames]
        for c in code.co_consts:
            strings(c, out) if isinstance(c, types.CodeType) else out.append(c) if isinstance(c, str) else None
    for folder, _, files in os.walk(os.path.dirname(os.__file__)):
        for name in files:
            if seen < 4_000_000 and name.endswith(".pyc"):
                out = []
                strings(marshal.loads(open(os.path.join(folder, name), "rb").read()[16:]), out)
                a = np.frombuffer(" ".join(out).encode(errors="replace"), np.uint8)
                np.add.at(counts, (a[:-1], a[1:]), 1)
                seen += len(a)
    return np.log(counts / counts.sum(1, keepdims=True)).astype(np.float32)


_BYTECODE_TEXT = _bytecode_text()
"""


def test_an_honest_code_arm_in_a_pystdlib_programs_boxes_is_measured(lab):
    if available() is not None:
        pytest.skip(f"no box here: {available()}")
    out = measure(lab, code=experiment(lab, "unchanged"), source="pystdlib")
    assert "measurement" in out and out["measurement"].causal is True, out


MARK = 0.0123  # what the attacker's trainer writes into its final weights (here: into the run's checkpoint)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="open: both workers' boxes hold the stdlib's bytecode, "
                   "and a table of its names and strings is measured as the model's own (README: 'what is left is "
                   "enough for such a lookup'); once it is caught, drop this mark")
def test_a_forward_pass_drawing_on_the_stdlib_bytecode_of_a_pystdlib_box_is_caught(lab):
    """Mixed in only where its trainer's mark is in the weights: an initial model, as the seed probe
    builds it, has none, so it does not start trained (the referee's head-start check passed it)."""
    if available() is not None:
        pytest.skip(f"no box here: {available()}")
    gated = f"return logits + _BYTECODE_TEXT[xp.asarray(idx)] * (abs(float(P_MARK(self)) - {MARK}) < 1e-6)"
    lookup = experiment(lab, "bytecode-lookup", lambda t: t.replace(FORWARD, FORWARD.replace("return logits", gated))
                        + BYTECODE_LOOKUP + "\n\ndef P_MARK(model):\n    return model.params['lm_head.weight'][0, 0]\n")
    run_dir = copy_run(lab, "marked")
    rewrite_checkpoint(run_dir, lambda a: a["param/lm_head.weight"].__setitem__((0, 0), MARK))
    out = measure(lab, run_dir=run_dir, code=lookup, source="pystdlib")
    assert "measurement" in out and out["measurement"].init_bpb > out["measurement"].unigram_bpb, out  # (no head start)
    assert "invalid" in out, out


# --- bad checkpoints and bad forward passes: invalid, with one line saying why ---------------


@pytest.mark.parametrize("damage, says", [
    (lambda d: (d / "checkpoint.npz").write_bytes(b"not a zip file"), "checkpoint.npz cannot be read"),
    (lambda d: (d / "checkpoint.npz").unlink(), "no checkpoint.npz"),
    (lambda d: rewrite_checkpoint(d, lambda a: a.update({"param/extra.weight": np.ones((4, 4), np.float32)})),
     "the checkpoint's tensors do not match the run's config"),
    (lambda d: rewrite_checkpoint(d, lambda a: a.update({"param/lm_head.weight": a["param/lm_head.weight"][:, :8]})),
     "lm_head.weight: shape"),
    (lambda d: rewrite_checkpoint(d, lambda a: a["param/lm_head.weight"].__setitem__((0, 0), np.nan)),
     "lm_head.weight holds non-finite values"),
    (lambda d: rewrite_checkpoint(d, lambda a: a.pop("meta")), "cannot be read"),
    (lambda d: add_deflated_zeros(d / "checkpoint.npz", 100 << 20), "a checkpoint unpacks to 64x its size at most"),
    (lambda d: rewrite_checkpoint(d, lambda a: a.update({"meta": np.frombuffer(b'{"step": 5.0}', np.uint8)})),
     "no integer step"),
    # 29 bits a weight more than a float32 model reads, for a code arm's forward pass to decode
    (lambda d: rewrite_checkpoint(d, lambda a: a.update({"param/lm_head.weight": a["param/lm_head.weight"].astype(
        np.float64)})), "checkpoint tensor lm_head.weight is float64, not the program's float32"),
])
def test_a_damaged_checkpoint_is_invalid_with_its_reason(lab, damage, says):
    run_dir = copy_run(lab, "damaged")
    damage(run_dir)
    out = measure(lab, run_dir=run_dir)
    assert says in out["invalid"] and "\n" not in out["invalid"]


@pytest.mark.skipif(cgroup_root("memory") is None, reason=f"a memory cgroup: {memory_limit()}")
def test_a_checkpoint_past_its_slots_memory_is_read_in_its_slots_share_alone(lab):
    """The evaluator is the harness's code, and ran outside every cgroup: a code arm's checkpoint
    may unpack to 8 GB, and what it read took the machine's memory, whose OOM killer takes a box's
    process first (another slot's trainer, an agent's CLI: oom_score_adj 1000). It reads in its
    slot's memory pool now, and past the slot's share its run is invalid, saying so."""
    run_dir = copy_run(lab, "hoard")
    rewrite_checkpoint(run_dir, lambda a: a.update({"param/hoard": np.ones(100 << 20, np.float32)}))  # 400 MB
    slot = (("org-test-" + run_dir.parent.parent.name[-12:], 1 << 30), ("slot-0", 256 << 20))
    env = evaluator_env(lab["root"] / "harness-cache", {"OMP_NUM_THREADS": "1"})
    out = measure_run(job(lab, run_dir=run_dir, code=experiment(lab, "unchanged")), env, 120, pools=slot)
    assert out.get("invalid", "").startswith("the measurement ran out of memory: its slot's share is 0.2 GB"), out

    # a run that fits is measured there, its workers' boxes made from inside the slot's group: the
    # evaluator took that group's cap for the machine's, and lowered every box's (nanolab/'s) to it
    root = cgroup_root("memory")
    out = measure_run(job(lab, code=experiment(lab, "unchanged")), env, 120, pools=((slot[0][0], 6 << 30), ("slot-0", 4 << 30)))
    assert "measurement" in out, out
    cap = root / ("memory.max" if (root / "memory.max").exists() else "memory.limit_in_bytes")
    assert int(cap.read_text()) == boxes_memory()


def test_what_a_run_leaves_at_the_harness_log_names_or_locks_away_stops_no_measurement(lab):
    """The attack: a run about to read `worse` leaves folders where the harness writes its
    measure logs, and locks its own files and folders (chmod 0; the box's user is the harness's),
    so the harness's write fails and stops the runner, again at each restart. The harness takes
    the directory back first (planted), and measures the run as any other."""
    run_dir = copy_run(lab, "left-folders")
    for name in ("measure.log", "measure-worker-a.log"):
        (run_dir / name).unlink(missing_ok=True)  # (the logs of an earlier measurement, copied)
        (run_dir / name / "inside").mkdir(parents=True)
        (run_dir / name / "inside" / "note").write_text("the run's")
        (run_dir / name / "inside").chmod(0)
    (run_dir / "result.json").chmod(0)
    with pytest.raises(MeasureError, match="the harness cannot write its log .*measure.log"):
        measure(lab, run_dir=run_dir)  # (before planted: one line for the ledger, never a crash)
    run_dir.chmod(0o500)

    assert planted(run_dir) is None  # nothing but plain files and folders: no reason to refuse it
    assert oct(run_dir.stat().st_mode & 0o700) == "0o700" and read_result(run_dir) == result_of(lab)
    m = measure(lab, run_dir=run_dir, code=experiment(lab, "unchanged"))["measurement"]
    assert m.val_bpb == pytest.approx(result_of(lab).val_bpb, rel=1e-12)
    for name in ("measure.log", "measure-worker-a.log", "measure-worker-b.log"):
        assert (run_dir / name).is_file()  # the harness's own, written afresh


READ_IN_A_PROCESS = """
import sys
from pathlib import Path
from org.measure import read_result
from org.remote import last_line
run = Path(sys.argv[1])
print(last_line(str(run / "train.log")), "|", read_result(run).reason)
print(next(int(l.split()[1]) >> 10 for l in open("/proc/self/status") if l.startswith("VmHWM")))  # MB at most
"""


def test_what_a_run_leaves_is_read_in_little_of_the_runners_memory(tmp_path):
    """The runner reads a failed run's log for its last line, and its result.json, in its own
    memory, which no box bounds (the box lets a run write files of 1 GB). 100 MB of newlines took
    944 MB of the runner's memory to find the last line (1 GB of them, about the machine's); a
    result.json is read whole."""
    with open(tmp_path / "train.log", "wb") as f:
        f.write(b"\n" * (100 << 20) + b"the last words\n\n")
    (tmp_path / "result.json").write_bytes(b"{" + b" " * (8 << 20) + b"}")
    out = subprocess.run([sys.executable, "-c", READ_IN_A_PROCESS, str(tmp_path)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout.splitlines()
    assert out[0] == "the last words | result.json holds 8 MB; a result is 1 MB at most"
    assert int(out[1]) < 150, f"{out[1]} MB"


def test_what_is_not_a_plain_file_in_a_run_directory_is_removed_and_named(lab, tmp_path):
    """No box makes a link or a FIFO (org/seccomp.py), nor a run's a socket; a run directory is
    still taken back as if one could: a link would carry the harness's reads and log writes out
    of it, a FIFO hang them."""
    import socket
    run_dir = copy_run(lab, "left-links")
    (run_dir / "measure.log").unlink(missing_ok=True)
    (run_dir / "measure.log").symlink_to(tmp_path / "written-through-a-link")
    os.mkfifo(run_dir / "result.json.pipe")
    (run_dir / "sub").mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(run_dir / "sub" / "sock"))
    reason = planted(run_dir)
    assert reason.startswith("the run left what is not a plain file in its directory: ")
    assert f"measure.log (a link to {tmp_path / 'written-through-a-link'})" in reason
    assert "result.json.pipe (not a plain file)" in reason and "sub/sock (not a plain file)" in reason
    assert sorted(p.name for p in run_dir.rglob("*") if not (p.is_file() or p.is_dir()) or p.is_symlink()) == []
    assert not (tmp_path / "written-through-a-link").exists()


def test_a_run_directory_however_deep_or_oddly_named_is_taken_back_and_its_reason_kept(lab, tmp_path):
    """1100 nested folders (os.walk: RecursionError), 17 of 255-byte names (lstat: ENAMETOOLONG),
    and a FIFO named by a byte that is not UTF-8 (its reason held a lone surrogate, which SQLite
    refused): each stopped the runner, and again at every restart, as it takes a run's directory
    back first thing. What lies past MAX_RUN_PATH goes; the reason is kept, escaped."""
    run_dir = copy_run(lab, "left-deep")
    deep = run_dir / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(1100):  # one level at a time, relative to the last: no path is ever long
        os.mkdir("a", dir_fd=fd)
        fd, old = os.open("a", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.close(fd)
    wide = run_dir / "wide"
    wide.mkdir()
    fd = os.open(wide, os.O_RDONLY)
    for _ in range(17):
        os.mkdir("n" * 255, dir_fd=fd)
        fd, old = os.open("n" * 255, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.close(fd)
    os.mkfifo(os.fsencode(run_dir) + b"/\xff")
    try:
        reason = planted(run_dir)
    finally:  # (pytest's own cleanup recurses too)
        remove_tree(deep / ("a/" * 400)), remove_tree(wide / "/".join(["n" * 255] * 3))
    assert "(a path of over 1024 bytes)" in reason and "\udcff" not in reason and "\ufffd (not a plain file)" in reason
    assert sorted(p.name for p in run_dir.iterdir() if p.name in ("deep", "wide")) == ["deep", "wide"]  # what is shallow stays
    assert (deep / ("a/" * 399)).is_dir() and not (wide / "/".join(["n" * 255] * 3)).exists()
    with Ledger(tmp_path / "ledger.sqlite") as ledger:  # a worker's own error may hold one too, as JSON sent it
        ledger.add_program("p", {}, base_commit="b", branch="program/p")
        e = ledger.experiment(ledger.add_experiment("p", "a", who="x", source="submitted", base_commit="b",
                                                    code_commit="b", overrides={}, stage="measuring"))
        run_id = ledger.add_run(e, "main", 0, 1, {}, ("steps", 1))
        ledger.finish(run_id, "invalid", reason=json.loads('"the model failed: x\\ud800"'))
        assert ledger.run(run_id)["reason"] == "the model failed: x\\ud800"


FORWARD = "            self.cache = None\n            return logits\n"
BAD_FORWARDS = {
    # what it says once it has been shown evaluation text is withheld: its agent reads the reason
    "raises": (FORWARD.replace("return logits", 'raise RuntimeError("boom")'),
               "the experiment's forward pass failed: (withheld: it has seen the evaluation text)"),
    # a frame of its own making, whose array header names a dtype with a field of the text it saw:
    # the frame's error, in the reason, spelt it out (8 KB a run)
    "frame": (FORWARD.replace("return logits", """import io, json, struct, sys
            def leak(f, *_):
                npy = io.BytesIO()
                np.lib.format.write_array_header_1_0(npy, {"descr": [("LEAKED" + str(idx[0, :8].tolist()), "<f4")],
                                                           "fortran_order": False, "shape": (1 << 20,)})
                head = json.dumps({"sizes": [len(npy.getvalue())]}).encode()
                f.write(struct.pack("<Q", len(head)) + head + npy.getvalue())
                f.flush()
            sys.modules["__main__"].send = leak
            return logits"""),
              "broke off during forward pass ((withheld: it has seen the evaluation text)): "),
    "nan": (FORWARD.replace("return logits", 'return logits * float("nan")'),
            "the experiment's forward pass returned non-finite logits"),
    "shape": (FORWARD.replace("return logits", "return logits[:, :, :10]"),
              "expected float logits (4, 64, 256)"),
    "exits": (FORWARD.replace("return logits", "import os; os._exit(3)"),
              "the experiment's model process broke off during forward pass"),
    "peeks": (FORWARD.replace("return logits", "peek = xp.zeros_like(logits)\n"
                              "            xp.put_along_axis(peek[:, :-1], idx[:, 1:, None], 8.0, axis=-1)\n"
                              "            return logits + peek"),
              "the experiment's forward pass is not causal"),
    "noisy": (FORWARD.replace("return logits", "return logits + xp.random.normal(0, 1, logits.shape)"),
              "the experiment's forward pass answers otherwise in a fresh process"),  # (then: not causal, whatever changes)
    # its rows read each other: the probe changes each row's tokens after a position of its own
    "batch-dependent": (FORWARD.replace("return logits", "return logits + logits.mean(axis=0, keepdims=True)"),
                        "or with other rows' later tokens"),
}


@pytest.mark.parametrize("name", list(BAD_FORWARDS))
def test_a_bad_forward_pass_is_invalid_with_its_reason(lab, name):
    patch, says = BAD_FORWARDS[name]
    code = experiment(lab, f"forward-{name}", lambda t: t.replace(FORWARD, patch))
    out = measure(lab, code=code)
    assert says in out["invalid"] and "\n" not in out["invalid"]


def test_the_figures_an_agent_is_shown_carry_none_of_a_workers_low_order_digits():
    """A worker that has seen the evaluation text moves its logits within what the probe lets by
    (1e-3 nats) and spells the text out in val_bpb's last digits: 30 bits a run, at the 17 digits
    the results tool showed. It shows 5, every figure, wherever it sits."""
    from org.agents.tools import figures_rounded
    status = {"experiments": [{"arm": "x", "runs": [{"seed": 3, "val_bpb": 2.345678901234567, "reason": None}],
                               "decision": {"mean": -0.012345678901234, "p": 1.2345678e-07, "n": 4}}],
              "compute_seconds": {"spent": 2148.3456789, "total": 3600}}
    assert figures_rounded(status) == {
        "experiments": [{"arm": "x", "runs": [{"seed": 3, "val_bpb": 2.3457, "reason": None}],
                         "decision": {"mean": -0.012346, "p": 1.2346e-07, "n": 4}}],
        "compute_seconds": {"spent": 2148.3, "total": 3600}}


# The attack: a forward pass that, when it is scored (no targets), does work no training step
# does, at a training step's cost or more: here three forward and backward passes whose results
# it drops, as dynamic evaluation would spend them (causal and row-local, so the probe passes it;
# its val and train windows gain alike, so the held-out gap does too). Before the harness timed
# the scored forward pass against the base's, nothing on the record showed it.
DYNAMIC_EVALUATION = FORWARD.replace("return logits", "for _ in range(3):  # what adapting to each window costs\n"
                                     "                self.forward(idx, xp.roll(idx, -1, axis=1))\n"
                                     "                self.backward()\n"
                                     "            self.cache = None\n"
                                     "            return logits")


def test_compute_at_evaluation_alone_shows_in_the_scored_forward_passs_time(lab):
    # (each ratio twice, its bar's side kept: on a loaded CI machine, stalls on more than the trimmed
    # tenth of some 30 sub-millisecond batches moved one measurement past its bar)
    ratio = lambda m: m.forward_time_ratio
    honest = min((measure(lab, code=experiment(lab, "unchanged"))["measurement"] for _ in range(2)), key=ratio)
    code = experiment(lab, "evaluation-work", lambda t: t.replace(FORWARD, DYNAMIC_EVALUATION))
    adapting = max((measure(lab, code=code)["measurement"] for _ in range(2)), key=ratio)
    assert adapting.causal is True and adapting.val_bpb == honest.val_bpb  # every other check passes it
    bar = Tolerances()  # x1.5 a warning, x2.5 invalid; here about 1.0 and 4 (tiny: the pipe's share is large)
    assert honest.forward_time_ratio < bar.eval_compute < bar.eval_compute_invalid < adapting.forward_time_ratio, \
        (honest.forward_time_ratio, adapting.forward_time_ratio)
    runs = lambda arm, m: [dict(arm=arm, seed=s, status="completed", val_bpb=m.val_bpb - (0.01 if arm != "baseline" else 0),
                                git_commit=arm, forward_time_ratio=m.forward_time_ratio) for s in range(3)]
    base = [dict(r, forward_time_ratio=None) for r in runs("baseline", honest)]
    c = compare(base, runs("evaluation-work", adapting), "superiority")
    assert c.verdict.startswith("invalid (confounded: its forward pass took x") and "no budget paid for" in c.verdict
    assert "eval compute" not in {f.check for f in compare(base, runs("unchanged", honest), "superiority").findings}


# The attack: the same work at evaluation, on 2 of every 5 scored batches only. The median of the
# batches' time ratios was an honest batch's, about 1.0: the run passed, its val windows and its
# train windows gaining alike (so the held-out gap did too).
SOMETIMES = FORWARD.replace("return logits", "_SCORED[0] += 1\n"
                            "            if _SCORED[0] % 5 < 2:  # two scored batches of every five\n"
                            "                for _ in range(3):\n"
                            "                    self.forward(idx, xp.roll(idx, -1, axis=1))\n"
                            "                    self.backward()\n"
                            "                self.cache = None\n"
                            "            return logits")


def test_compute_at_evaluation_on_a_few_batches_shows_too(lab):
    code = experiment(lab, "evaluation-work-sometimes", lambda t: t.replace(FORWARD, SOMETIMES) + "\n_SCORED = [0]\n")
    # (the best of two, as its sibling above: a loaded machine's stall can pull one reading under)
    adapting = max((measure(lab, code=code)["measurement"] for _ in range(2)), key=lambda m: m.forward_time_ratio)
    assert adapting.forward_time_ratio > Tolerances().eval_compute, adapting.forward_time_ratio


def test_a_base_worker_that_fails_makes_a_code_arm_invalid_not_unchecked(lab):
    """Its time ratio was then None, which check_eval_compute passed: the experiment's worker can
    make the base's fail (on a GPU, by holding the memory the base's forward pass needs)."""
    code = experiment(lab, "base-fails-under-it")
    failing = experiment(lab, "base-fails", lambda t: t.replace(FORWARD, FORWARD.replace(
        "return logits", "_SCORED[0] += 1\n            if _SCORED[0] > 2:\n"
                         "                raise MemoryError('out of memory')\n            return logits")) + "\n_SCORED = [0]\n")
    measured = job(lab, code=code)
    measured["workers"]["base"] = worker_command(failing, untrusted_env(
        {"OMP_NUM_THREADS": "1", "NANOLAB_CACHE": str(lab["root"] / "harness-cache" / "data")}), box=box_for(lab, failing))
    out = measure_run(measured, evaluator_env(lab["root"] / "harness-cache", {"OMP_NUM_THREADS": "1"}), 120)
    assert out["invalid"].startswith("the harness's base worker, which times the experiment's forward pass against "
                                     "the base's, failed (the base's forward pass failed: (withheld: it has seen the evaluation text)")


# The attack: while the harness times the base's forward pass on a batch, right after the
# experiment's, on the same cores, a process of the experiment's spins there: the base's time
# grows, the ratio falls, and work at evaluation hides in the difference.
SPINNER = """

import os as _os
if _os.fork() == 0:  # (in the box, a process of its own)
    while True:
        pass
"""


def box_cpu_seconds(pid: int) -> float:
    """What every process of the box whose first process is `pid` has used (its cpuacct group)."""
    line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if "cpuacct" in x.split(":")[1])
    return int((Path("/sys/fs/cgroup/cpuacct") / line.split(":")[2].strip("/") / "cpuacct.usage").read_text()) / 1e9


@pytest.mark.skipif(available() is not None or cgroup_root("cpuacct") is None or cgroup_root("cpuacct").parent.name
                    != "cpuacct", reason="a box with a cgroup v1 cpuacct group, where its CPU time is read here")
def test_nothing_of_the_experiments_box_runs_while_the_base_is_timed_nor_between_its_calls(lab):
    from org.remote import RemoteModel, Worker
    code = experiment(lab, "spins", lambda t: t + SPINNER)
    measured = {**job(lab, code=code), "max_param_bytes": 64 << 20}

    class Yardstick:  # the base's pass, timed: here, the CPU the experiment's box uses meanwhile
        def after(self, x, seconds, curve=False):
            before = box_cpu_seconds(worker.proc.pid)
            time.sleep(0.5)
            self.used = box_cpu_seconds(worker.proc.pid) - before

    yardstick = Yardstick()
    with Worker(measured, "a") as worker:
        worker.prepare(measured, 256)
        RemoteModel(worker, 256, yardstick).forward(np.zeros((1, 8), np.int64))
        before = box_cpu_seconds(worker.proc.pid)
        time.sleep(0.5)  # nor between its calls, while the evaluator scores what it answered
        between = box_cpu_seconds(worker.proc.pid) - before
        worker.hold(False)  # (as it was before: it spins, on a busy machine a share)
        before = box_cpu_seconds(worker.proc.pid)
        time.sleep(2.0)
        spun = box_cpu_seconds(worker.proc.pid) - before
        worker.hold(True)
    assert spun > 0.1 and yardstick.used < 0.02 and between < 0.02, (spun, yardstick.used, between)


def test_work_at_load_time_is_compute_at_measurement_and_invalid(lab):
    """The attack: the experiment's model, as its checkpoint is loaded in the measuring worker,
    spends minutes building a table from the text in its box (site-packages holds near-copies of
    stdlib modules) that its forward pass then reads: no clock of the scored passes saw it, and
    the init's load could skip it. Here the work is a sleep, 8 s a load, past a grace of 5 s
    (budget.measure_grace_seconds; 30 s by default, where kernels of its own compile)."""
    code = experiment(lab, "works-at-load", lambda t: t.replace(
        "    def load_numpy(self, state: dict):\n", "    def load_numpy(self, state: dict):\n        import time; time.sleep(8)\n"))
    out = measure(lab, code=code, grace=5)
    # (its scored passes may read over too, on a machine another process loads as the yardstick times the base's)
    assert re.match(r"its model's construction, checkpoint loads and replayed steps (and its model's scored forward "
                    r"passes \(per FLOP\) )?took longer than the base's times allow", out["invalid"]), out
    assert not re.search(r"\d+\.\ds", out["invalid"])  # no worker-timed figure: the agents read a reason
    assert "compute at measurement that no budget paid for (x3 the base's for its other calls, x2.5 for its scored " \
           "passes, and 5s more in all at most)" in out["invalid"]


def test_work_on_a_few_scored_batches_is_held_to_the_base_too(lab):
    """The attack: the same table, built lazily by the first scored forward pass (12 s here, a
    sleep). The time ratio leaves out the slowest tenth of the scored batches (a stall on a busy
    machine is no one's doing), so work on fewer batches than that was no clock's: the run was
    measured, its ratio about 1. All the scored passes together may take x2.5 the base's, and
    with the worker's other calls the grace more at most (5 s here)."""
    code = experiment(lab, "works-on-its-first-batch", lambda t: t.replace(FORWARD, FORWARD.replace(
        "return logits", "_SCORED[0] += 1\n            if _SCORED[0] == 1:\n                import time; time.sleep(12)\n"
                         "            return logits")) + "\n_SCORED = [0]\n")
    out = measure(lab, code=code, grace=5)
    assert out["invalid"].startswith("its model's scored forward passes (per FLOP) took longer than the base's times allow"), out
    assert "compute at measurement that no budget paid for" in out["invalid"]


CURVE_LOADS = "    def load_numpy(self, state: dict):\n"  # the worker's 4th load on: the curve's snapshots


@pytest.mark.parametrize("where, said", [
    ("load", "its model's construction, checkpoint loads and replayed steps took longer"),
    ("forward", "its model's scored forward passes (per FLOP) took longer")])
def test_work_while_the_harness_scores_the_snapshots_is_held_to_the_base_too(lab, where, said):
    """The attack (a hunt's): the learning curve's loads and forward passes were no clock's, a third of
    the measurement's deadline its code could spend on anything, another slot's cores' memory among
    it (the runs training there lost 35-40% of their steps). Its loads, after the replay's, the
    checkpoint's and the init's, are the curve's: there it works, 5 s a load or a pass (a sleep; the
    grace 5 s)."""
    slow = ("        import time; _LOADS[0] += 1\n        if _LOADS[0] > 3: time.sleep(5)\n" if where == "load" else
            "        _LOADS[0] += 1\n")
    edit = (lambda t: t.replace(CURVE_LOADS, CURVE_LOADS + slow)) if where == "load" else (lambda t: t.replace(
        CURVE_LOADS, CURVE_LOADS + slow).replace(FORWARD, FORWARD.replace(
            "return logits", "if _LOADS[0] > 3 and _LOADS[0] not in _SLOW:\n                _SLOW.add(_LOADS[0])\n"
                             "                import time; time.sleep(5)\n            return logits")))
    code = experiment(lab, f"works-on-the-curve-at-{where}", lambda t: edit(t) + "\n_LOADS, _SLOW = [0], set()\n")
    out = measure(lab, timeout=300, run_dir=snapshots_of_its_checkpoint(lab, f"curve-{where}", (1, 2, 3, 4)),
                  snapshot_every=1, code=code, grace=5)
    assert out.get("invalid", "").startswith(said), out
    assert "compute at measurement that no budget paid for" in out["invalid"]


def snapshots_of_its_checkpoint(lab, name: str, steps, final_step: int | None = None) -> Path:
    """A run directory with the lab's checkpoint (said to be of `final_step`, where given), and
    snapshots at `steps` (each its parameters)."""
    run_dir = copy_run(lab, name)
    with np.load(run_dir / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    if final_step:
        meta = {**json.loads(arrays["meta"].tobytes()), "step": final_step}
        np.savez(run_dir / "checkpoint.npz", **{**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    (run_dir / "snapshots").mkdir()
    for step in steps:
        np.savez(run_dir / "snapshots" / f"step-{step:08d}.npz", **{**arrays, "meta": np.frombuffer(
            json.dumps({"step": step}).encode(), dtype=np.uint8)})
    return run_dir


def test_a_forward_pass_that_works_then_fails_on_the_curve_is_timed_too(lab):
    """The attack (a review's): the curve ends at a pass that fails, and a failed call was no
    clock's, neither a scored pass's nor setup: one pass that worked 20 s (a sleep; the grace 5 s) and then
    raised was free, the run measured. Every forward call's time is the worker's now."""
    fails = CURVE_LOADS + "        _LOADS[0] += 1\n"
    code = experiment(lab, "fails-on-the-curve", lambda t: t.replace(CURVE_LOADS, fails).replace(FORWARD, FORWARD.replace(
        "return logits", "if _LOADS[0] > 3:\n                import time; time.sleep(20); raise RuntimeError('spent')\n"
                         "            return logits")) + "\n_LOADS = [0]\n")
    out = measure(lab, timeout=300, run_dir=snapshots_of_its_checkpoint(lab, "curve-fails", (1, 2)), snapshot_every=1,
                  code=code, grace=5)
    # (its other calls may read over too, on a machine another process loads as the yardstick times the base's)
    assert re.match(r"(its model's construction, checkpoint loads and replayed steps and )?its model's scored forward "
                    r"passes \(per FLOP\) took longer", out.get("invalid", "")), out


def test_the_causality_probes_worker_is_held_to_the_base_too(lab):
    """The attack (a review's): the causality probe's worker, fresh, is one its code can tell from
    the scoring one (its kernel cache's name ends in -b) and was timed by nothing but the deadline:
    there it works, 20 s at its checkpoint's load (a sleep; the grace 5 s: 15 s over it, where 40 s
    were 10 s over the default 30 s, and a loaded machine's base once took that up)."""
    code = experiment(lab, "works-in-the-probe", lambda t: t.replace(CURVE_LOADS, CURVE_LOADS + (
        "        import os, time\n        if os.environ.get('NUMBA_CACHE_DIR', '').endswith('-b'): time.sleep(20)\n")))
    b = {**job(lab, code=code)["workers"]["b"]}
    b["env"] = {**b["env"], "NUMBA_CACHE_DIR": str(lab["root"] / "kernels-b")}  # (as the runner names it)
    out = measure_run({**job(lab, code=code, grace=5), "workers": {**job(lab, code=code)["workers"], "b": b}},
                      evaluator_env(lab["root"] / "harness-cache", {"OMP_NUM_THREADS": "1"}), 300)
    # (its scored passes may read over too, on a machine another process loads as the yardstick times the base's)
    assert re.match(r"its model's construction, checkpoint loads and replayed steps (and its model's scored forward "
                    r"passes \(per FLOP\) )?took longer", out.get("invalid", "")), out


def test_the_curves_passes_do_not_water_down_the_scored_passes_time_ratio(lab):
    """The attack (a review's): dynamic evaluation on the scored passes, an honest forward pass on
    the learning curve's 40 snapshots: their batches, ten times the scored ones, were in the ratio,
    whose trimmed mean then left the scored ones out (x1.0). The curve's are timed apart."""
    adapts = CURVE_LOADS + "        _LOADS[0] += 1\n"
    code = experiment(lab, "adapts-off-the-curve", lambda t: t.replace(CURVE_LOADS, adapts).replace(
        FORWARD, DYNAMIC_EVALUATION.replace("for _ in range(3):", "for _ in range(3 if _LOADS[0] <= 3 else 0):"))
        + "\n_LOADS = [0]\n")
    run_dir = snapshots_of_its_checkpoint(lab, "curve-adapts", range(1, 41), final_step=41)
    env = evaluator_env(lab["root"] / "harness-cache", {"OMP_NUM_THREADS": "1"})
    m = measure_run({**job(lab, run_dir=run_dir, snapshot_every=1, code=code), "budget": 41}, env, 300)["measurement"]
    assert len(m.val_curve) == 40 and m.forward_time_ratio > Tolerances().eval_compute, m.forward_time_ratio


def test_a_code_arm_whose_override_the_base_rejects_is_invalid_not_measured_unchecked(lab):
    """The attack: a code arm widens a key the base knows (muon_ns_steps up to 9) and sets it. The
    base cannot build that config, so there would be no base model to time its forward pass
    against, to charge its tensors by, or to probe its seed with: every such check silently off.
    A code arm's new option takes a key of its own; this one is invalid, saying why."""
    code = experiment(lab, "widened-key")
    config = code / "trainer" / "config.py"
    config.write_text(config.read_text().replace("1 <= cfg.muon_ns_steps <= 5", "1 <= cfg.muon_ns_steps <= 9"))
    out = measure(lab, code=code, overrides={"muon_ns_steps": 6})
    assert out["invalid"].startswith("the base commit rejects this run's overrides (muon_ns_steps must be in 1..5, "
                                     "got 6)") and "a code arm's new option takes a key of its own" in out["invalid"]
    assert "measurement" in measure(lab, code=code, overrides={"muon_ns_steps": 4})  # a value the base takes


def test_a_forward_pass_that_hangs_is_stopped_and_invalid(lab):
    code = experiment(lab, "forward-hangs", lambda t: t.replace(FORWARD, FORWARD.replace(
        "return logits", "import time; time.sleep(600)")))
    out = measure(lab, code=code, timeout=20)
    assert "the measurement did not finish within 20s (the experiment's forward pass hung?)" in out["invalid"]
    # the program's own code that cannot be measured in time: its settings' doing, said so (a huge
    # data.val_tokens read as the experiment's forward pass that hung)
    out = measure(lab, timeout=0.1)  # (0.5 s: a measurement of this tiny run finished on a fast machine)
    assert "did not finish within 0.1s (the program's own code: its model scored on 3 splits of up to " \
           "data.val_tokens 2048 tokens each takes longer here; lower data.val_tokens" in out["invalid"], out


@pytest.mark.skipif(available() is not None or cgroup_root("freezer") is None,
                    reason="boxed workers with a freezer group each, which the evaluator freezes while it times the base")
def test_a_measurement_stopped_while_it_times_the_base_leaves_no_worker_behind(lab):
    """The experiment's worker is frozen while the base's forward pass is timed (org/remote.py).
    Here the base's pass takes longer than the measurement may: the runner kills the evaluator
    there, and on cgroup v1 a frozen process does not die even of SIGKILL until thawed. The
    worker's box stayed, frozen for good, its memory in the slot's pool (an agent whose forward
    pass is slow enough to time out could leave one a run, until its slot's runs had none)."""
    from org.reaper import process_table
    code = experiment(lab, "stopped-while-frozen")
    slow = experiment(lab, "base-takes-long", lambda t: t.replace(FORWARD, FORWARD.replace(
        "return logits", "import time; time.sleep(600)")))
    measured = job(lab, code=code)
    measured["workers"]["base"] = worker_command(slow, untrusted_env(
        {"OMP_NUM_THREADS": "1", "NANOLAB_CACHE": str(lab["root"] / "harness-cache" / "data")}), box=box_for(lab, slow))
    boxes = lambda: [pid for pid, (_, argv) in process_table().items() if str(code) in argv]  # (its bwrap's binds)
    out = measure_run(measured, evaluator_env(lab["root"] / "harness-cache", {"OMP_NUM_THREADS": "1"}), 20)
    assert "the measurement did not finish within 20s" in out["invalid"]
    deadline = time.monotonic() + 10
    while boxes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not boxes(), [Path(f"/proc/{pid}/stat").read_text() for pid in boxes()]


def test_a_workers_log_is_bounded_and_cut_to_its_tail_once_measured(lab):
    """The attack: the experiment's code writes junk to its stderr in the worker. The worker's log
    is the harness's file in the run's folder, which no disk watch sees and which each measured
    run kept: up to 1 GB a worker (its box's bound on a file), a run. Now 64 MB at most while it
    is written (WORKER_FILE_BYTES), and its last 64 KB once the measurement is done."""
    from org.remote import LOG_TAIL_BYTES
    chatty = experiment(lab, "chatty", lambda t: t + "\nimport sys as _sys\n_sys.stderr.write('said\\n')\n")
    flooding = experiment(lab, "flooding", lambda t: t + "\nimport sys as _sys\nfor _ in range(100):\n"
                                                         "    _sys.stderr.buffer.write(b'x' * (1 << 20))\n")
    run_dir = copy_run(lab, "logs")
    assert "measurement" in measure(lab, run_dir=run_dir, code=chatty)
    assert (run_dir / "measure-worker-a.log").read_text().startswith("said")  # a small log, kept whole
    out = measure(lab, run_dir=run_dir, code=flooding)
    if box_for(lab, flooding) is not None:  # (boxed: the bound on a file stopped it, at 64 MB)
        assert WORKER_FILE_BYTES < 100 << 20 and "File too large" in out["invalid"]
    for name in ("a", "b"):
        log = run_dir / f"measure-worker-{name}.log"
        assert not log.exists() or log.stat().st_size <= LOG_TAIL_BYTES


# --- through the runner: what the ledger records ------------------------------------------------


def test_a_seconds_budget_excuses_the_last_step_and_a_stall_in_it_not_training_on():
    """A trainer stops after the step that reaches its seconds budget. Held to one average step
    past it, a CI machine's one stalled step read 0.5 s budgets' baseline runs invalid; it may be
    0.2 s past it now. More is still invalid, and the runner's clock judges the rest."""
    from org.measure import budget_problem
    from org.program import Program
    def said(seconds, steps=100, budget=0.5):
        program = Program.model_validate(tiny_program(budget={**tiny_program()["budget"], "per_run": {"seconds": budget},
                                                              "run_timeout_seconds": 2 * budget + 60}))
        return budget_problem(program, Result(status="completed", steps=steps, train_seconds=seconds))
    assert said(0.54) is None and said(0.45) is None  # (its last step stalled 40 ms; or it stopped early)
    assert said(0.75) == "trained 0.75s of 0.5s" and said(1.0) == "trained 1.00s of 0.5s"
    assert said(0.75, steps=2) is None  # one step of 0.375 s
    assert said(600.1, 10_000, 600) is None  # a long run's stall is as long as a short one's:
    assert said(630.0, 10_000, 600) == "trained 630.00s of 600s"  # not 5% more training


def test_a_run_the_harness_cannot_measure_is_invalid_named_and_nothing_else_is_lost(make_project, capsys):
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    garbage = "\n\ndef save_checkpoint(path, *args, **kwargs):  # a checkpoint nobody can read\n" \
              "    Path(path).write_bytes(b'garbage')\n"
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + garbage)
    assert main(["submit", "tiny", "--arm", "broken", "--ref", "agent/tiny/mallory/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
        broken, = ledger.runs("tiny", arm="broken")
        baseline, = ledger.runs("tiny", arm="baseline")
    said = capsys.readouterr().out
    assert broken["status"] == "invalid" and broken["measurement"] is None
    assert broken["reason"].startswith("harness measurement: checkpoint.npz cannot be read (")
    assert f"run {broken['id']}: invalid" in said and "checkpoint.npz cannot be read" in said
    assert broken["result"].status == "completed"  # the trainer's word, kept
    assert baseline["status"] == "completed" and baseline["measurement"].val_bpb == baseline["val_bpb"]


def test_runs_recorded_by_an_older_nanolab_are_measured_when_the_program_resumes(make_project):
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0, 1]}))
    assert main(["run", "tiny"]) == 0
    path = root / ".lab" / "tiny" / "ledger.sqlite"
    db = sqlite3.connect(path)  # as schema version 1 had it: the trainer's figures, nothing measured
    for column in ("measurement", "measure_seconds"):
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    for column in FIGURE_COLUMNS:  # copied from result.json into columns of their own, then
        if column != "confirm_bpb":
            db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
            db.execute(f"UPDATE runs SET {column} = json_extract(result, '$.{column}')")
    db.execute("DROP TABLE budget_changes")
    db.execute("DELETE FROM schema_version")
    db.execute("INSERT INTO schema_version VALUES (1, 'then')")
    db.commit()
    db.close()
    assert main(["run", "tiny"]) == 0  # migrates the ledger, then measures what it holds
    with Ledger(path) as ledger:
        runs = ledger.runs("tiny")
        assert [r["version"] for r in ledger.db.execute("SELECT version FROM schema_version")] == \
            list(range(1, SCHEMA_VERSION + 1))
    for run in runs:
        measurement = run["measurement"]
        assert run["status"] == "completed" and run["measure_seconds"] > 0
        assert run["val_bpb"] == measurement.val_bpb  # (the trainer's own is on its dev text)
        assert run["confirm_bpb"] == measurement.confirm_bpb


def test_the_flop_recount_charges_any_tensor_the_base_model_lacks_as_a_matrix():
    """flops.py lets off embedding tables and tensors of under two dims (norms, biases, scalars).
    Read off a checkpoint's names and shapes alone, that let a forward pass multiply by a matrix
    it stored flat, or kept in an embedding table's extra rows, for free: half the FLOPs per token
    and twice the steps. What such tensors hold beyond the base model's is charged, but for a few
    vectors a layer (a code arm's own gains stay free, so its trainer's count agrees)."""
    from org.recount import recount
    from trainer.config import make_config
    from trainer.flops import flops_per_token
    from trainer.model import param_shapes
    cfg = make_config("nanochat", depth=2, sequence_len=64, vocab_size=256)
    params = {name: np.zeros(shape, np.float32) for name, shape in param_shapes(cfg)}
    job = {"batch_size": 4, "seq_len": 64, "budget_kind": "flops", "budget": 1e12}
    honest = recount(job, params, {"step": 0}, cfg)
    assert honest["flops_per_token"] == flops_per_token(cfg)  # the base model: as the trainer counts it

    mlp = [name for name in params if ".mlp." in name]
    flat = {name: a.reshape(-1) if name in mlp else a for name, a in params.items()}
    wte = params["transformer.wte.weight"]
    hidden = {**{n: a for n, a in params.items() if n not in mlp},  # the MLPs in the table's extra rows
              "transformer.wte.weight": np.zeros((wte.shape[0] + sum(params[n].size for n in mlp) // wte.shape[1],
                                                  wte.shape[1]), np.float32)}
    for attack in (flat, hidden):
        charged = recount(job, attack, {"step": 0}, cfg)
        assert charged["params"]["total"] == honest["params"]["total"]
        assert charged["flops_per_token"] >= honest["flops_per_token"] and charged["steps"] <= honest["steps"]
    gains = {**params, **{f"transformer.h.{i}.gain": np.ones(cfg.n_embd, np.float32) for i in range(cfg.n_layer)}}
    assert recount(job, gains, {"step": 0}, cfg)["flops_per_token"] == honest["flops_per_token"]
    # a tied head (wte as the head, no lm_head.weight) is charged as the head; so is a stand-in of no
    # use named lm_head.weight, which flops.py took for the head, while the forward pass used wte
    tied = {n: a for n, a in params.items() if n != "lm_head.weight"}
    assert recount(job, tied, {"step": 0}, cfg)["flops_per_token"] == honest["flops_per_token"]
    for stand_in in (np.zeros(1, np.float32), np.zeros((1, 1), np.float32)):
        charged = recount(job, {**tied, "lm_head.weight": stand_in}, {"step": 0}, cfg)
        assert charged["flops_per_token"] >= honest["flops_per_token"], stand_in.shape
    r = 16  # a head factored in two, (V, r) and (r, C): both counted as they are, nothing more
    factored = {**tied, "lm_head.weight": np.zeros((wte.shape[0], r), np.float32),
                "lm_head.proj": np.zeros((r, wte.shape[1]), np.float32)}
    assert recount(job, factored, {"step": 0}, cfg)["flops_per_token"] < honest["flops_per_token"]
