"""
The trainer's whole configuration: model shape, architecture switches and optimizer settings.

Every ablation an org may run is one key here, set with `--set key=value` on the command line
or `make_config(preset, key=value)` in Python. Two presets fill in the defaults:
- nanochat: rotary, QK-norm, parameter-free RMSNorm, ReLU², untied head, no biases, logit
  softcap 15, x0/residual lambdas, Muon for block matrices + AdamW for the rest.
- gpt2: llm.c / nanoGPT GPT-2: learned positions, LayerNorm, GELU, biases, tied head, AdamW.
Any key works with either preset.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

# A run's budget is (kind, value); the trainer's flag for each kind is this one table, read by
# its command line and messages, and by the org's runner and report (org/runner.py, org/report.py)
BUDGET_FLAGS = {"flops": "--budget-flops", "seconds": "--budget-seconds", "tokens": "--budget-tokens", "steps": "--steps"}

PRESETS = ("nanochat", "gpt2")
# ~4 TB of float32 weights: past any one device, so a typo (n_layer=1e30), not a model; checked
# before the model is built, which would otherwise hang or fail deep in numpy
MAX_PARAMS = 10**12


@dataclass
class Config:
    # shape
    vocab_size: int = 256
    sequence_len: int = 256
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_kv_head: int = 4
    # architecture switches
    pos: str = "rope"            # rope | learned
    rope_base: float = 100000.0
    norm: str = "rms"            # rms (parameter-free) | layer (gain + bias, eps 1e-5)
    qk_norm: bool = True         # rmsnorm of q and k per head, after rotary
    qk_gain: float = 1.2         # q and k are each multiplied by this
    mlp: str = "relu2"           # relu2 | gelu (tanh form)
    bias: bool = False           # biases in linears and LayerNorms
    tie_embeddings: bool = False
    softcap: float = 15.0        # logits = softcap*tanh(logits/softcap); 0 = off
    lambdas: bool = True         # x = resid_lambdas[i]*x + x0_lambdas[i]*x0 before each block
    embed_norm: bool = True      # norm right after the token embedding
    fused_qkv: bool = False      # one c_attn (GPT-2 names) instead of c_q, c_k, c_v: same math
    init: str = "nanochat"       # nanochat (zero projections, tiny head) | gpt2 (normal 0.02)
    # optimizer (see trainer/optim.py for the parameter groups)
    optimizer: str = "muon"      # muon (block matrices) + adamw (the rest) | adamw (everything)
    matrix_lr: float = 0.02
    embedding_lr: float = 0.3
    unembedding_lr: float = 0.008
    scalar_lr: float = 0.5
    weight_decay: float = 0.2           # block matrices
    embedding_weight_decay: float = 0.0  # wte, wpe, lm_head
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    adam_eps: float = 1e-10
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5
    # schedule, as fractions of the run's horizon
    warmup_frac: float = 0.0
    warmdown_frac: float = 0.5
    final_lr_frac: float = 0.05

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        # llm.c pads the embedding table to a multiple of 128 for faster matmuls;
        # the extra rows never receive a target and logits are sliced back before the loss
        return -(-self.vocab_size // 128) * 128

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["head_dim"], d["padded_vocab_size"] = self.head_dim, self.padded_vocab_size
        return d


KEYS = tuple(f.name for f in dataclasses.fields(Config))
CHOICES = {"pos": ("rope", "learned"), "norm": ("rms", "layer"), "mlp": ("relu2", "gelu"),
           "optimizer": ("muon", "adamw"), "init": ("nanochat", "gpt2")}

PRESET_DEFAULTS = {
    "nanochat": {},  # the dataclass defaults are nanochat's
    "gpt2": dict(pos="learned", norm="layer", qk_norm=False, qk_gain=1.0, mlp="gelu", bias=True,
                 tie_embeddings=True, softcap=0.0, lambdas=False, embed_norm=False, fused_qkv=True, init="gpt2",
                 optimizer="adamw", matrix_lr=6e-4, embedding_lr=6e-4, unembedding_lr=6e-4,
                 scalar_lr=6e-4, weight_decay=0.1, embedding_weight_decay=0.1, adam_beta1=0.9,
                 adam_beta2=0.95, adam_eps=1e-8, warmup_frac=0.05, warmdown_frac=0.9,
                 final_lr_frac=0.1),
}


def make_config(preset: str = "nanochat", **overrides) -> Config:
    """A validated Config: the preset's defaults, then `depth` (n_embd = 64*depth), then overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    values = dict(PRESET_DEFAULTS[preset])
    depth = overrides.pop("depth", None)
    if depth is not None:  # nanochat's one dial: width 64 per layer, heads of 64
        depth = _coerce("depth", depth, int)
        values.update(n_layer=depth, n_embd=64 * depth, n_head=depth, n_kv_head=depth)
    unknown = sorted(set(overrides) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown config key {unknown[0]!r}; valid keys: depth, {', '.join(KEYS)}")
    if "n_head" in overrides and "n_kv_head" not in overrides:
        overrides["n_kv_head"] = overrides["n_head"]  # GQA is opt-in
    types = {f.name: type(getattr(Config, f.name)) for f in dataclasses.fields(Config)}
    for key, value in overrides.items():
        values[key] = _coerce(key, value, types[key])
    cfg = Config(**values)
    validate(cfg)
    return cfg


def parse_overrides(pairs: list[str]) -> dict:
    """['softcap=0', 'pos=learned'] -> {'softcap': '0', 'pos': 'learned'} (coerced later)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        if key.strip() in out:  # (the last one won, without a word; `org submit` refuses it too)
            raise ValueError(f"--set {pair!r}: {key.strip()} is set twice")
        out[key.strip()] = value.strip()
    return out


def flag_value(value) -> str:
    """A value as a `--set key=value` flag spells it (parse_overrides reads it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e6:
        return f"{value:.0f}"
    return str(value)


# optimizer and schedule values, by the range they must be in (a beta of 1 divided by zero in
# AdamW's bias correction; the rest trained on nonsense without a word)
RANGES = {"[0, 1)": (("adam_beta1", "adam_beta2", "muon_momentum"), lambda v: 0 <= v < 1),
          "[0, 1]": (("warmup_frac", "warmdown_frac"), lambda v: 0 <= v <= 1),
          ">= 0": (("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay",
                    "embedding_weight_decay", "final_lr_frac"), lambda v: v >= 0),
          "> 0": (("adam_eps", "rope_base"), lambda v: v > 0)}


def validate(cfg: Config) -> None:
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ValueError(f"{key} must be one of {'|'.join(choices)}, got {getattr(cfg, key)!r}")
    positive = ("vocab_size", "sequence_len", "n_layer", "n_embd", "n_head", "n_kv_head")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ValueError(f"{key} must be positive, got {getattr(cfg, key)}")
    check_size(cfg)
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    if cfg.n_head % cfg.n_kv_head:
        raise ValueError(f"n_head ({cfg.n_head}) must be divisible by n_kv_head ({cfg.n_kv_head})")
    if cfg.pos == "rope" and cfg.head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {cfg.head_dim}")
    if cfg.softcap < 0:
        raise ValueError(f"softcap must be >= 0 (0 = off), got {cfg.softcap}")
    if not 1 <= cfg.muon_ns_steps <= 5:
        raise ValueError(f"muon_ns_steps must be in 1..5, got {cfg.muon_ns_steps}")
    if cfg.warmup_frac + cfg.warmdown_frac > 1:
        raise ValueError("warmup_frac + warmdown_frac must be at most 1")
    for spelled, (keys, holds) in RANGES.items():
        for key in keys:
            if not holds(getattr(cfg, key)):
                raise ValueError(f"{key} must be {'in ' if spelled[0] in '[(' else ''}{spelled}, got {getattr(cfg, key):g}")


def check_size(cfg: Config) -> None:
    """A rough parameter count (blocks, embeddings and head, positions) against MAX_PARAMS."""
    n = 12 * cfg.n_layer * cfg.n_embd ** 2 + (2 * cfg.vocab_size + cfg.sequence_len) * cfg.n_embd
    if n > MAX_PARAMS:
        raise ValueError(f"n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, vocab_size {cfg.vocab_size} and sequence_len "
                         f"{cfg.sequence_len} make a model of more than {MAX_PARAMS:.0e} parameters")


FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: below it, a value computes as 0 or a denormal


def _coerce(key, value, typ):
    """Turn a command-line string into the key's type; anything else passes through checked."""
    if typ is bool:
        return _coerce_bool(key, value)
    if typ is int and not isinstance(value, str):
        return _exact_int(key, value)
    if typ is float and isinstance(value, bool):  # a run's flag says `true`, which no float reads
        raise ValueError(f"{key} expects float, got {value!r}")
    try:
        if typ is int and isinstance(value, str):
            return int(float(value)) if float(value).is_integer() else int(value)
        out = typ(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int('inf')
        raise ValueError(f"{key} expects {typ.__name__}, got {value!r}") from None
    if typ is float and not math.isfinite(out):  # a NaN softcap once trained as if it were off
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if typ is float and abs(out) > FLOAT32_MAX:  # (an lr of 1e308 was inf in float32: warnings, then "diverged")
        raise ValueError(f"{key} {value!r} is past float32's range, in which the model computes (at most {FLOAT32_MAX:.3g})")
    if typ is float and (0 < abs(out) < FLOAT32_TINY or out == 0 and isinstance(value, str)
                         and any(d in "123456789" for d in value.lower().partition("e")[0])):  # (1e-400 reads as 0: off)
        raise ValueError(f"{key} {value!r} is below float32's smallest normal number ({FLOAT32_TINY:.3g}): "
                         "it would compute as 0; say 0 for 0")
    return out


def _coerce_bool(key, value) -> bool:
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    elif isinstance(value, numbers.Real) and value in (0, 1):  # YAML's true, 0 or 1; a 5 is a typo, not "on"
        return bool(value)
    raise ValueError(f"{key} expects a boolean (true/false), got {value!r}")


def _exact_int(key, value) -> int:
    """A number (from YAML or Python) for an int key: 4 and 4.0 are 4; 1.7 and True are mistakes,
    which int() would silently make 1."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{key} expects int, got {value!r}")
