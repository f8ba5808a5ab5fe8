"""How often the held-out gap check (org/confounds.py) calls an honest arm `invalid`, over many
draws of the train-split windows: README's figure, by hand (not a test):

    python tests/held_out_draws.py 300              # runs the lab first (about 2 minutes)
    python tests/held_out_draws.py 300 LAB_ROOT     # or re-scores a lab it ran before
    python tests/held_out_draws.py --labs 20        # or runs 20 new labs, each with its own split
                                                    # key and windows, and reads the harness's verdict

The lab is test_e2e_referee's equal-FLOPs program: a 3x wider tiny model (barely trained at
the baseline's FLOPs) against the baseline, 3 seeds. Every run's checkpoint is scored again on
each draw (evaluator.unforeseen_windows and window_bpb, as the harness scores it), and the
referee's check is applied with the windows' figures (the draw's part of the margin) and
without them (the seeds' part only)."""
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_e2e_referee import program  # noqa: E402
from test_org_runner import create_project  # noqa: E402
from org import evaluator  # noqa: E402
from org.cli import main as org  # noqa: E402
from org.confounds import Tolerances, check_held_out_gap, draw_margin  # noqa: E402
from org.ledger import Ledger  # noqa: E402
from org.referee import Run, read_arm  # noqa: E402
from org.streams import split_key_file  # noqa: E402
from trainer.data import load_dataset, read_split_key  # noqa: E402

B, T, N = 4, 64, 2048  # tiny_program's batch, sequence and val tokens


def lab() -> Path:
    root = create_project(Path(tempfile.mkdtemp()) / "proj", program("tiny", {"flops": 60 * 147456 * B * T},
                                                                         declares=["params"]))
    os.chdir(root)
    assert org(["run", "tiny"]) == 0
    return root


def models(root: Path, vocab_size: int) -> dict:
    """{arm: [(its ledger row, its final model)]} of the completed runs."""
    out = {}
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
        for arm in ("baseline", "wider"):
            for row in ledger.runs("tiny", arm=arm, status="completed"):
                params, _ = evaluator.read_checkpoint(Path(row["run_dir"]) / "checkpoint.npz")
                job = {"overrides": json.loads(row["overrides"]) if isinstance(row["overrides"], str) else row["overrides"],
                       "preset": "nanochat", "seq_len": T, "dtype": "float32", "device": "cpu", "matmul": "fp32"}
                out.setdefault(arm, []).append((row, evaluator.base_model(evaluator.base_config(job, vocab_size), job, params)))
    return out


def main(draws: int, root: Path | None):
    root = root or lab()
    cache = root / ".lab" / "harness-cache"  # the lab's own split, as its runs were scored on it
    data = load_dataset("pystdlib", "bytes", cache_dir=cache / "data", split_key=read_split_key(split_key_file(cache)))
    arms = models(root, data.vocab_size)
    rng, flagged, flagged_seeds_only = np.random.default_rng(), 0, 0
    for _ in range(draws):
        windows = evaluator.unforeseen_windows(data.train, N, T, int(rng.integers(2**63)))
        runs = {arm: [Run.read(dict(row, **dict(zip(("train_bpb", "train_window_bpb"),
                                                     evaluator.window_bpb(model, windows, data.token_bytes, B)))))
                      for row, model in pairs] for arm, pairs in arms.items()}
        seeds_only = [dataclasses.replace(r, train_window_bpb=None, val_window_bpb=None) for r in runs["wider"]]
        flagged += bool(check_held_out_gap(runs["baseline"], runs["wider"], Tolerances(), runs["baseline"]))
        flagged_seeds_only += bool(check_held_out_gap(runs["baseline"], seeds_only, Tolerances(), runs["baseline"]))
    print(f"lab {root}: the honest wider arm read `invalid (... held-out gap ...)` on {flagged} of {draws} draws "
          f"of the windows; on {flagged_seeds_only} without the draw's part of the margin")


def new_labs(count: int):
    """The rate the harness itself shows: each new lab draws its own split key (so its own val
    text) and its own windows, and the referee reads them as recorded in that lab's ledger."""
    from org.report import build
    invalid = 0
    for i in range(count):
        root = lab()
        ledger = root / ".lab" / "tiny" / "ledger.sqlite"
        report = build(ledger, "tiny")
        runs = {arm: read_arm(report.arm_runs(arm))[0] for arm in ("baseline", "wider")}
        b, v = ({r.seed: r for r in runs[arm]} for arm in ("baseline", "wider"))
        e = [(v[s].val_bpb - v[s].train_bpb) - min(b[s].val_bpb - b[s].train_bpb, 0.0) for s in sorted(b.keys() & v.keys())]
        verdict = report.comparisons["wider"].verdict
        invalid += "held-out gap" in verdict
        print(f"lab {i + 1}/{count} {root}: E {np.median(e):+.3f}, draw margin "
              f"{draw_margin(list(b.values()), list(v.values())):.3f}: {verdict}", flush=True)
    print(f"{invalid} of {count} new labs read the honest wider arm `invalid (... held-out gap ...)`")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--labs"]:
        sys.exit(new_labs(int(sys.argv[2])))
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
