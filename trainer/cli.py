"""
`python -m trainer` (or `trainer`): train, eval, data, sample, bench, gpucheck.

Errors in what a person typed end in one line naming the flag, key or file, and exit 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from trainer.config import BUDGET_FLAGS, KEYS, parse_overrides

TRAIN_EXAMPLE = """example:
  python -m trainer train --preset nanochat --set depth=2 --set softcap=0 \\
      --budget-flops 3e12 --seed 1 --out runs/softcap0-s1
  python -m trainer train --resume runs/softcap0-s1          # continue a killed run"""

MATMUL_CHOICES = ("fp32", "tf32", "bf16")  # trainer/model.py's MATMUL_PRECISIONS (not imported: no Numba here)
BUDGET_HELP = {"flops": (float, "F", "train FLOPs (6N+12LCT convention)"),
               "seconds": (float, "S", "training wall-clock seconds"),
               "tokens": (float, "N", "training tokens"), "steps": (int, "N", "optimizer steps")}
OPTIM_FLAGS = ("optimizer", "matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay",
               "embedding_weight_decay", "warmup_frac", "warmdown_frac", "final_lr_frac")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        kernels = os.environ.get("NANOLAB_KERNELS", "1")  # (the kernels read any but "0" as on)
        if kernels not in ("0", "1"):
            raise ValueError(f"NANOLAB_KERNELS must be 0 (the NumPy twins) or 1 (the kernels), got {kernels!r}")
        return args.func(args)
    except ValueError as e:  # bad input: one line, no traceback (a name given may hold escapes: not for the terminal)
        print("error: " + re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "?", str(e)), file=sys.stderr)
        return 1
    except MemoryError as e:  # sizes the config allows and this machine cannot hold (NumPy names the bytes)
        print(f"error: out of memory: {e or 'an allocation failed'}; a smaller --batch-size, model or vocab fits",
              file=sys.stderr)
        return 1


def folder(text: str) -> Path:
    """A run directory named on the command line: Path("") is ".", and a run given `--out ""` landed where it started."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a folder's name")
    return Path(text)


def data_source(text: str) -> str:
    """--data: Path("") is "." too (an empty --data trained on the folder it started in)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected pystdlib, a file, a folder or a glob")
    return text


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag, not a usage dump."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="trainer", description="nanolab's hand-written GPT trainer")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train a model to a budget", epilog=TRAIN_EXAMPLE, formatter_class=fmt)
    p.add_argument("--preset", default="nanochat", help="nanochat | gpt2 (default nanochat)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"config override, repeatable; keys: depth, {', '.join(KEYS)}")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of config keys (and optionally preset)")
    p.add_argument("--seed", type=int, default=0, help="init and data-order seed (default 0)")
    p.add_argument("--out", type=folder, help="run directory for config.json, metrics.jsonl, result.json")
    p.add_argument("--resume", type=folder, metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite the run already in --out (else refused)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--matmul", default="fp32", choices=MATMUL_CHOICES,
                   help="round matmul inputs to TF32 or bfloat16, float32 accumulation (default fp32: as stored)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (sets sequence_len)")
    for key in OPTIM_FLAGS:
        p.add_argument("--" + key.replace("_", "-"), dest=key, metavar="V", help=f"same as --set {key}=V")
    budget = p.add_mutually_exclusive_group()
    for kind, (kind_type, metavar, text) in BUDGET_HELP.items():
        budget.add_argument(BUDGET_FLAGS[kind], dest=f"budget_{kind}", type=kind_type, metavar=metavar, help=text)
    add_data_flags(p)
    p.add_argument("--val-tokens", type=int, default=65536,
                   help="validation tokens for val_bpb (default 65536; 0: no evaluation)")
    p.add_argument("--confirm-tokens", type=int, default=0, help="also report confirm_bpb on this many held-out tokens")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: at the end)")
    p.add_argument("--log-every", type=int, default=10, help="metrics and progress every N steps")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: final only)")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="keep the parameters every N steps in snapshots/ (a learning curve to evaluate later)")
    p.add_argument("--no-save", action="store_true", help="skip the final checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output (for machines)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="val_bpb of a trained run on a split", formatter_class=fmt,
                       epilog="example:\n  python -m trainer eval runs/softcap0-s1 --split confirm")
    p.add_argument("run_dir", type=Path, help="a run directory holding checkpoint.npz")
    p.add_argument("--split", default="val", choices=["val", "confirm"])
    p.add_argument("--tokens", type=int, default=65536, help="tokens to evaluate (default 65536)")
    p.set_defaults(func=cmd_eval)

    from trainer.data import add_data_arguments
    p = sub.add_parser("data", help="prepare and inspect a dataset", formatter_class=fmt,
                       epilog="examples:\n  python -m trainer data --data pystdlib --tokenizer bpe:4096\n"
                              "  python -m trainer data --data my_texts/ --export-bin shards/")
    add_data_arguments(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("sample", help="generate text from a trained run", formatter_class=fmt,
                       epilog="example:\n  python -m trainer sample runs/softcap0-s1 --prompt 'def ' --tokens 200")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bench", help="ms/step, tokens/s, MFU and memory, beside PyTorch eager", formatter_class=fmt,
                       epilog="example:\n  OMP_NUM_THREADS=2 python -m trainer bench --configs d4 gpt2 --steps 5")
    p.add_argument("--configs", nargs="*", default=None, help="named bench configs: d4, gpt2, d12, gpt2-124m (default: d4 gpt2 on the CPU, "
                        "d12 gpt2-124m on a GPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps; the median is shown")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown (default 3)")
    p.add_argument("--matmul", default="fp32", choices=MATMUL_CHOICES,
                   help="matmul inputs as for train; on a GPU the torch peers use TF32 / bf16 autocast too")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gpucheck", help="check the CUDA path on a GPU: kernels, steps against the CPU, resume, "
                       "a d12 run, the bench", formatter_class=fmt,
                       epilog="examples:\n  python -m trainer gpucheck --out gpucheck/      # all parts, ~14 min on an H200\n"
                              "  python -m trainer gpucheck --parts device kernels steps resume\n"
                              "exit status: 0 all passed, 1 a check failed, 2 no GPU (the line says what is missing)")
    p.add_argument("--out", type=Path, default=Path("gpucheck"), help="where the table, rows and runs go (default gpucheck/)")
    p.add_argument("--parts", nargs="+", metavar="PART",
                   help="device, kernels, steps, resume, d12, bench (default: all, in that order)")
    p.add_argument("--seconds", type=float, metavar="S",
                   help="end within S seconds: a part or bench measurement that would not fit is a row saying "
                        "so (a lease's call runs 600 s at most: --seconds 540)")
    p.set_defaults(func=cmd_gpucheck)
    return parser


def add_data_flags(p):
    p.add_argument("--data", default="pystdlib", type=data_source,
                   help="pystdlib (default, embedded), a text file or folder, or llm.c .bin shards")
    p.add_argument("--tokenizer", default="bytes", help="bytes (default) or bpe:N")


RUN_FILES = ("result.json", "checkpoint.npz", "metrics.jsonl", "config.json")  # what a run writes in --out


def took_no_step(out: Path, held: list[str]) -> bool:
    """A run that ended before its first step (out of memory, say) left its config and an empty
    log: no data to lose, and a run again in its --out needs no --force."""
    log = out / "metrics.jsonl"
    return set(held) <= {"config.json", "metrics.jsonl"} and (not log.exists() or (log.is_file() and log.stat().st_size == 0))


def cmd_train(args) -> int:
    from trainer.train import EXIT_CODES, RunSpec, run
    if args.resume:  # (the run as its config.json says: a flag beside it would be ignored, so it is refused)
        defaults = vars(build_parser().parse_args(["train"]))
        given = [k for k, v in vars(args).items() if k not in ("resume", "quiet") and v != defaults.get(k)]
        if given:
            flag = BUDGET_FLAGS.get(given[0].removeprefix("budget_")) if given[0].startswith("budget_") else None
            raise ValueError(f"--resume {args.resume} continues the run its config.json describes; "
                             f"{flag or '--' + given[0].replace('_', '-')} cannot change it (a new run: --out)")
        spec = RunSpec(**read_run_config(args.resume)["spec"])
        result = run(spec, args.resume, resume=True, quiet=args.quiet)
    else:
        if args.out is None:
            raise ValueError("--out DIR is required (where the run's files go)")
        held = [name for name in RUN_FILES if (args.out / name).exists()]
        if held and not args.force and not took_no_step(args.out, held):  # a finished run is data: never lose it to a typo
            raise ValueError(f"--out {args.out} already holds a run ({', '.join(held)}): --resume {args.out} "
                             "continues it, --force overwrites it, or pick another --out")
        result = run(spec_from_args(args), args.out, quiet=args.quiet)
    if result["status"] != "completed":
        print(f"{result['status']}: {result['reason']}", file=sys.stderr)
    return EXIT_CODES[result["status"]]


def spec_from_args(args):
    from trainer.train import RunSpec
    check_seed(args.seed)
    overrides, preset = {}, args.preset
    if args.config:
        overrides, preset = read_config_file(args.config, preset)
    given = parse_overrides(args.set)
    flags = {k: getattr(args, k) for k in OPTIM_FLAGS if getattr(args, k) is not None}
    if args.seq_len is not None:
        flags["sequence_len"] = args.seq_len
    if twice := next((k for k in flags if k in given), None):  # (the flag won, without a word)
        flag = "--seq-len" if twice == "sequence_len" else "--" + twice.replace("_", "-")
        raise ValueError(f"--set {twice}={given[twice]} and {flag} {flags[twice]}: {twice} is set twice")
    overrides.update({**given, **flags})
    chosen = {k: getattr(args, f"budget_{k}") for k in BUDGET_FLAGS if getattr(args, f"budget_{k}") is not None}
    if len(chosen) != 1:
        raise ValueError(f"give exactly one budget: {', '.join(BUDGET_FLAGS.values())}")
    (kind, value), = chosen.items()
    return RunSpec(preset=preset, overrides=overrides, seed=args.seed, device=args.device, dtype=args.dtype,
                   matmul=args.matmul, batch_size=args.batch_size, data=args.data, tokenizer=args.tokenizer,
                   budget_kind=kind, budget=value, val_tokens=args.val_tokens, confirm_tokens=args.confirm_tokens,
                   eval_every=args.eval_every, snapshot_every=args.snapshot_every, log_every=args.log_every,
                   save_every=args.save_every, save_final=not args.no_save)


def read_config_file(path, preset):
    import yaml
    try:
        text = Path(path).read_text()
        node, data = yaml.compose(text), yaml.safe_load(text) or {}  # (the node tree: where each key stands)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path}: cannot read ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(f"--config {path}: malformed YAML at {where}{getattr(e, 'problem', None) or type(e).__name__}") from None
    keys = [k.value for k, _ in node.value] if isinstance(node, yaml.MappingNode) else []
    if twice := next((k for k in keys if keys.count(k) > 1), None):  # (YAML keeps the last: a setting nobody meant)
        raise ValueError(f"--config {path}: key {twice!r} is given twice")
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of config keys")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:  # YAML reads `1:` or `true:` as a number or a bool, which no config key is
        raise ValueError(f"--config {path}: key {odd[0]!r} is not a config key name (keys are names like n_layer)")
    preset = data.pop("preset", preset)
    return {k: str(v) if isinstance(v, bool) else v for k, v in data.items()}, preset


def check_seed(seed: int) -> None:
    """numpy's generators take no negative seed; org's end at 2**63 - 1 (the ledger's signed 64-bit
    int). Said before any work."""
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"--seed must be 0 to 2**63 - 1, got {seed}")


def read_run_config(run_dir: Path) -> dict:
    """A run directory's config.json, or one ValueError naming it (missing, corrupt, not a run's)."""
    from trainer.train import RunSpec
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text())
        if set(saved["spec"]) - set(RunSpec.__dataclass_fields__):
            raise ValueError("unknown fields in spec")
        return saved
    except FileNotFoundError:
        raise ValueError(f"{run_dir}: no config.json there (not a run directory)") from None
    except NotADirectoryError:
        raise ValueError(f"{run_dir}: not a folder (a run's directory)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a run's config.json: corrupt or edited ({type(e).__name__})") from None


def load_run(run_dir: Path):
    """(spec, model, dataset) of a finished run, from its config.json and checkpoint.npz."""
    from trainer.checkpoint import load_checkpoint
    from trainer.data import load_dataset
    from trainer.model import GPT
    from trainer.train import RunSpec
    from trainer.config import make_config
    if not (run_dir / "config.json").exists() or not (run_dir / "checkpoint.npz").exists():
        raise ValueError(f"{run_dir}: not a run directory with config.json and checkpoint.npz")
    saved = read_run_config(run_dir)
    spec = RunSpec(**saved["spec"])
    cfg_dict = {k: v for k, v in saved["config"].items() if k not in ("head_dim", "padded_vocab_size")}
    cfg = make_config(spec.preset, **cfg_dict)
    params, _, _ = load_checkpoint(run_dir / "checkpoint.npz")
    model = GPT(cfg, seed=0, dtype=spec.dtype, device=spec.device, matmul=spec.matmul)
    model.load_numpy(params)
    return spec, model, load_dataset(spec.data, spec.tokenizer)


def cmd_eval(args) -> int:
    from trainer.eval import evaluate
    spec, model, data = load_run(args.run_dir)
    T = model.cfg.sequence_len
    if args.tokens < T:  # else the evaluation finds no window and names its own internals
        raise ValueError(f"--tokens {args.tokens} is less than one evaluation window (sequence_len {T})")
    tokens = data.val if args.split == "val" else data.confirm
    res = evaluate(model, tokens, data.token_bytes, args.tokens, spec.batch_size, T)
    print(json.dumps({"split": args.split, **res}, indent=2))
    return 0


def cmd_data(args) -> int:
    from trainer.data import run_data
    if args.export_bin:
        check_export_dir(Path(args.export_bin))
    return run_data(args)


def check_export_dir(path: Path) -> None:
    """Here, not in trainer/data.py: data.py is fingerprinted as evaluation code, and its OS error
    would name the path but not the flag."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"--export-bin {path}: {p} is a file, not a folder")
            return


def cmd_sample(args) -> int:
    from trainer.sample import generate
    check_sample_args(args)
    _, model, data = load_run(args.run_dir)
    print(generate(model, data.tokenizer, args.prompt, args.tokens, args.temperature, args.top_k, args.seed))
    return 0


def check_sample_args(args) -> None:
    """sample's flags, checked before the run loads: numpy would fail on some and take others silently."""
    check_seed(args.seed)
    if args.tokens < 1:
        raise ValueError(f"--tokens must be at least 1, got {args.tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be 0 (off) or positive, got {args.top_k}")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 arrive as lone surrogates
        raise ValueError("--prompt is not valid UTF-8 text") from None


def cmd_bench(args) -> int:
    from trainer.bench import run_bench
    return run_bench(args)


def cmd_gpucheck(args) -> int:
    from trainer.gpucheck import run_gpucheck
    return run_gpucheck(args)
