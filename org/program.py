"""
Research programs: programs/<name>.yaml, validated into a Program.

A program fixes everything a comparison depends on: the question and the kind of claim, the
baseline and the variants, the data, the per-run budget and the seeds, the trainer settings,
and the files no experiment may touch. Agents change code and config keys; never these.

    program = load_program("programs/softcap.yaml")   # raises ProgramError, one line

Errors name the file, the field and what was expected, e.g.
    programs/x.yaml: budget.per_run: expected exactly one of flops, seconds, tokens, steps
"""
from __future__ import annotations

import collections.abc
import itertools
import math
import re
import reprlib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from org import OrgError, shown

NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # used in branch names and directory names (a ref's file: 255 bytes)
BUDGET_KINDS = ("flops", "seconds", "tokens", "steps")
MAX_SLOTS = 1024  # runs at once on one machine, and threads a run (a machine's cores, and then some)
MAX_GRID_POINTS = 1000  # a tune grid's points: each is a run per tune seed
ROLES = tuple(sorted(p.stem for p in (Path(__file__).parent / "prompts").glob("*.md") if p.stem not in ("rigor", "cli")))

# Keys the program owns: an experiment's overrides may not name them, so no agent can buy
# itself a bigger budget, other seeds, a different evaluation or different data.
PROGRAM_OWNED_KEYS = frozenset({
    "seed", "seeds", "steps", "flops", "tokens", "seconds", "budget", "budget_flops",
    "budget_seconds", "budget_tokens", "data", "tokenizer", "vocab_size", "val_tokens",
    "eval_tokens", "eval_every", "eval_batches", "batch_size", "seq_len", "sequence_len",
    "device", "dtype", "matmul", "out",
})
# and any key whose name speaks of them: an experiment's own code could read a key of its own
OVERRIDE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def command_line_text(text: str) -> bool:
    """Text a command line carries as it is: printable, and so UTF-8 (a lone surrogate is not printable)."""
    return text.isprintable()


OWNED_WORDS = re.compile(r"budget|seed|eval|^val_|flops|^steps$|tokens|^data", re.I)

# the parts of a program that define its measurements: changing them mid-program would make
# old and new runs incomparable, so a started program refuses the change
MEASUREMENT_FIELDS = ("claim", "ladder", "compute_multiplier", "metric", "baseline", "data", "train", "tune",
                      "tune_seeds", "protected", "max_change_kb")
MEASUREMENT_BUDGET = ("per_run", "seeds", "measure_grace_seconds")
# the totals, fixed at start like the rest: only a person's `org budget` changes them, logged
BOUND_BUDGET = ("total_compute_seconds", "total_llm_dollars", "run_timeout_seconds", "agent_cpu_seconds", "agent_llm_dollars",
                "agent_compute_seconds")

# The trainer's evaluation, data and FLOP accounting, and the harness itself.
DEFAULT_PROTECTED = ["trainer/eval.py", "trainer/data.py", "trainer/shards.py", "trainer/tokenizer.py",
                     "trainer/flops.py", "org/"]


class ProgramError(OrgError):
    pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def no_booleans_as_numbers(cls, value, info):
        """YAML's true, yes and on are booleans, which pydantic takes as 1 in a number field
        (`train.seq_len: on` trained on windows of one token, `claim.margin: true` was 1.0), in a
        list of numbers too (`budgets: [true, 2]`)."""
        annotation = cls.model_fields[info.field_name].annotation
        items = value if isinstance(value, list) and typing.get_origin(annotation) is list else [value]
        members = set(typing.get_args(annotation) or (annotation,))  # (int | None: int and None; list[float]: float)
        for item in items:
            if isinstance(item, bool) and bool not in members and {int, float} & members:
                raise ValueError(f"expected a number, got {item}")
        return value


def _scalar_overrides(value: dict[str, Any]) -> dict[str, Any]:
    """Overrides become `--set key=value`: each value must be one plain scalar."""
    for key, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"{key}: expected a number, string or boolean, got {quoted(v)}")  # (an alias tree: cut)
    problem = owned_by_program(value)
    if problem:
        raise ValueError(problem)
    return value


def owned_by_program(overrides: dict) -> str | None:
    """The one rule for overrides, wherever they enter (program files, `org submit`, the agents'
    tool, the runner's refusal): why they may not be used, or None. Each is a trainer's
    command-line flag too (`--set key=value`): a NUL or a lone surrogate there made the runner's
    Popen raise, which stopped it (a harness bug, it thought), and again at every restart."""
    unfit = unfit_override(overrides)
    if unfit:
        return unfit
    owned = sorted(k for k in overrides if k in PROGRAM_OWNED_KEYS or OWNED_WORDS.search(k))
    if not owned:
        return None
    return (f"{owned[0]!r} is owned by the program: the budget, the seeds, the data and the evaluation "
            "are the program's; experiments change the model or the optimizer only")


def unfit_override(overrides: dict) -> str | None:
    """Why a key or value is no trainer flag's (a typo's, such as softcap=.nan), or None."""
    unfit = next((f"{k}={v!r}" for k, v in overrides.items() if not OVERRIDE_KEY.fullmatch(str(k)) or not
                  (isinstance(v, bool) or isinstance(v, int) and abs(v) < 2 ** 63 or isinstance(v, float) and math.isfinite(v)
                   or isinstance(v, str) and command_line_text(v))), None)  # (NaN and 10**400: every run failed)
    return unfit and (f"{unfit[:80]}: a key is a name (letters, digits, _ and .), a value a finite number, a boolean "
                      "or printable text")


class Claim(Strict):
    # improve: an open-ended program (org/improve.py): tries against a frontier that only
    # confirmed gains move, with the false-discovery rate of its keeps held at alpha
    kind: Literal["non-inferiority", "superiority", "improve"]
    margin: float = Field(0.0, ge=0, description="in metric units; non-inferiority needs > 0")
    alpha: float = Field(0.05, gt=0, lt=1, description="improve: the FDR level of the keep decisions")
    # fresh seeds the harness draws for an arm whose claim stands on the main ones (referee.replicate),
    # or for a try an improve program would keep: None, as many as budget.seeds; 0, none
    fresh_seeds: int | None = Field(None, ge=0, le=1000)  # (1e30 held the budget back for them all)

    @property
    def rule(self) -> str:
        """The referee's rule for one arm against another: a keep is a superiority claim."""
        return "superiority" if self.kind == "improve" else self.kind

    @model_validator(mode="after")
    def _margin(self):
        if self.kind == "non-inferiority" and self.margin <= 0:
            raise ValueError("a non-inferiority claim needs margin > 0 (in val_bpb)")
        return self

    @field_validator("fresh_seeds")
    @classmethod
    def _not_one(cls, n):
        if n == 1:
            raise ValueError("expected 0 (none) or 2 and more: one seed gives no interval")
        return n


class Baseline(Strict):
    preset: str
    overrides: dict[str, Any] = {}

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value):
        return _scalar_overrides(value)


class Change(Strict):
    """What a variant or a candidate has in common: a name and config overrides."""
    name: str = Field(pattern=NAME)
    overrides: dict[str, Any] = {}

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value):
        return _scalar_overrides(value)


class Variant(Change):
    ref: str | None = Field(None, min_length=1)  # a git ref holding a code change; overrides apply on top
    # what the variant changes on purpose, e.g. [params] for "wider at equal FLOPs": the
    # referee then notes the difference instead of calling the comparison confounded
    declares: list[Literal["params", "flops", "tokens", "steps"]] = []
    # a positive control: a change known to have this effect (a softcap of 4 or 5, "terrible" in nanochat's
    # runs). The report checks the verdict: a program that cannot see a known effect proves little
    control: Literal["worse", "better"] | None = None

    @model_validator(mode="after")
    def _changes_something(self):
        if not self.overrides and not self.ref:
            raise ValueError("a variant needs overrides or a ref (or both)")
        if self.name == "baseline":
            raise ValueError("'baseline' is the name of the baseline arm; pick another name")
        return self


class Candidate(Change):
    """A try the scripted researcher makes in an improvement program (an LLM org makes its own):
    config overrides, a patch file (applied in its worktree, committed), or both."""
    patch: str | None = Field(None, min_length=1)  # a path in the lab, e.g. programs/improve/reseed.patch
    hypothesis: str | None = None

    @model_validator(mode="after")
    def _changes_something(self):
        if not self.overrides and not self.patch:
            raise ValueError("a candidate needs overrides or a patch (or both)")
        if self.name == "baseline" or self.name.startswith("frontier-"):
            raise ValueError("'baseline' and 'frontier-N' name the program's own arms; pick another name")
        return self


class Multiplier(Strict):
    """Each kept change's compute multiplier: the frontier before it also runs at these multiples
    of the per-run budget (on the first `seeds` seeds), and the report reads off the budget at
    which that frontier reaches the kept change's loss (nanochat's comparison convention)."""
    budgets: list[float] = Field(min_length=1)  # e.g. [0.5, 2]: half and twice the per-run budget
    seeds: int = Field(3, ge=2)

    @field_validator("budgets")
    @classmethod
    def _factors(cls, budgets):
        if any(not 0 < f <= 1000 or f == 1 for f in budgets) or len(set(budgets)) != len(budgets):
            raise ValueError(f"expected distinct multiples of the per-run budget, above 0, up to 1000 and not 1, got {budgets}")
        return budgets


class Data(Strict):
    source: str = "pystdlib"
    tokenizer: str = "bytes"
    val_tokens: int = Field(gt=0)

    @field_validator("tokenizer")
    @classmethod
    def _the_trainers(cls, spec):  # a name it does not know fails every run, and data cannot change later
        from trainer.data import parse_tokenizer_spec
        return parse_tokenizer_spec(spec)


class PerRun(Strict):
    flops: float | None = Field(None, gt=0)
    seconds: float | None = Field(None, gt=0)
    tokens: int | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in BUDGET_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(BUDGET_KINDS)}, "
                             f"got {', '.join(given) or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in BUDGET_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return getattr(self, self.kind)


class Budget(Strict):
    per_run: PerRun
    seeds: list[StrictInt] = Field(min_length=1)  # (strict: `true` is not seed 1, nor "1")
    total_compute_seconds: float = Field(gt=0)  # summed runner wall time over all runs
    total_llm_dollars: float = Field(0.0, ge=0)
    run_timeout_seconds: float = Field(gt=0, le=7 * 86400)  # a run past this is killed (a CPU rlimit: a C long)
    # what a code arm's model workers may take past the base's times (x3, x2.5) when measured: the
    # compile of kernels of its own (7-14 s on 2 cores); the most compute at measurement it gets free
    measure_grace_seconds: float = Field(30.0, ge=0, le=3600)
    # CPU seconds each agent's own box may use, all its commands (or its CLI) together: work no
    # run's budget counts (None: as much as total_compute_seconds)
    agent_cpu_seconds: float | None = Field(None, gt=0)
    agent_llm_dollars: float | None = Field(None, gt=0)  # each agent's own cap in total_llm_dollars (None: shared)
    agent_compute_seconds: float | None = Field(None, gt=0)  # and in total_compute_seconds, its experiments' runs

    @field_validator("seeds")
    @classmethod
    def _distinct_and_not_negative(cls, seeds):
        return check_seeds(seeds)

    @model_validator(mode="after")
    def _a_run_may_spend_its_seconds(self):  # (else every run is killed before its budget is spent)
        check_seconds_fit(self, 1.0, "per_run.seconds")
        return self


MAX_SEED = 2**63 - 1  # the ledger's INTEGER


def check_seconds_fit(budget: Budget, factor: float, field: str):
    """A seconds budget (times `factor`) that run_timeout_seconds kills every run before it is spent."""
    if budget.per_run.kind == "seconds" and budget.per_run.seconds * factor >= budget.run_timeout_seconds:
        raise ValueError(f"{field}: {budget.per_run.seconds * factor:g} s of training is not less than "
                         f"run_timeout_seconds {budget.run_timeout_seconds:g}: every run would be killed before its "
                         "budget is spent")


def check_seeds(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"expected distinct seeds, got {seeds}")
    if seeds and not 0 <= min(seeds) <= max(seeds) <= MAX_SEED:  # the trainer's generators take no negative seed
        raise ValueError(f"expected seeds from 0 to 2**63-1, got {seeds}")
    return seeds


def fresh_seed_count(claim: dict, seeds: list) -> int:
    """How many fresh seeds a standing claim (an improve program's keep) is replicated on: claim.fresh_seeds,
    or as many as the program's seeds and 2 at least. From a program, or a spec a ledger recorded."""
    given = claim.get("fresh_seeds")
    return max(2, len(seeds or ())) if given is None else given


RESERVED_AGENT_NAMES = ("human", "all", "program")  # mail's people, broadcast, the program's arms


class Agent(Strict):
    name: str = Field(pattern=NAME)
    role: str = "researcher"  # the prompt it gets (org/prompts/<role>.md: org/agents/roles.py)
    backend: Literal["anthropic", "openai", "claude-code", "codex", "scripted"] = "scripted"
    model: str | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name):
        if name in RESERVED_AGENT_NAMES:
            raise ValueError(f"{name!r} is reserved (mail from people, to everyone, the program's own "
                             "experiments); give the agent another name")
        return name

    @field_validator("role")
    @classmethod
    def _a_role_with_a_prompt(cls, role):
        if role not in ROLES:  # (a typo, `cheif`, gave the agent a junior's prompt, and said nothing)
            raise ValueError(f"expected one of {', '.join(ROLES)} (a prompt in org/prompts/), got {quoted(role, 80)}")
        return role

    @model_validator(mode="after")
    def _model_given(self):
        if self.backend != "scripted" and not self.model:
            raise ValueError(f"backend {self.backend} needs a model")
        return self


class Org(Strict):
    topology: Literal["solo", "chief"] = "solo"
    agents: list[Agent] = []

    @model_validator(mode="after")
    def _roles(self):
        names = [a.name for a in self.agents]
        if len(set(names)) != len(names):
            raise ValueError(f"expected distinct agent names, got {names}")
        chiefs = [a.name for a in self.agents if a.role == "chief"]
        if self.topology == "chief" and len(chiefs) != 1:
            raise ValueError(f"topology chief needs exactly one agent with role chief, got {len(chiefs)}")
        return self


class Runner(Strict):
    slots: int = Field(1, ge=1, le=MAX_SLOTS)  # CPU slots; ignored when gpus are given (one slot per GPU)
    threads_per_slot: int | None = Field(None, ge=1, le=MAX_SLOTS)  # default: CPU cores / slots (1 on a cluster)
    gpus: list[StrictInt] = []  # GPU indices (nvidia-smi's), one timed run each, in a box holding only that GPU
    baseline_every: int = Field(4, ge=1)  # re-run the baseline after this many other runs
    backend: Literal["local", "ray"] = "local"  # ray: each run a Ray job (org/cluster.py)
    address: str | None = None  # ray: the cluster's Jobs API, e.g. http://10.0.0.1:8265
    memory_gb: float | None = Field(None, ge=0.25, le=2**20)  # all the org's boxes together (default: the machine's less a
                                                 # quarter); runs and agents each get a share (org/cgroups.py)

    @field_validator("gpus")
    @classmethod
    def _distinct_gpus(cls, gpus):
        if len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
            raise ValueError(f"expected distinct GPU indices from 0, got {gpus}")
        return gpus

    @model_validator(mode="after")
    def _address_for_ray(self):
        if self.backend == "ray" and not self.address:
            raise ValueError("backend ray needs address: the cluster's Jobs API, e.g. http://HEAD:8265")
        return self


class Train(Strict):
    """Trainer settings every run of the program shares (passed as trainer flags)."""
    batch_size: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    matmul: Literal["fp32", "tf32", "bf16"] = "fp32"  # matmul inputs rounded to TF32 or bfloat16
    eval_every: int | None = Field(None, ge=0)


class Program(Strict):
    name: str = Field(pattern=NAME)
    question: str
    claim: Claim
    metric: Literal["val_bpb"] = "val_bpb"  # lower is better
    baseline: Baseline
    variants: list[Variant] = []
    candidates: list[Candidate] = []  # improve: the scripted researcher's tries, in order
    ladder: list[dict[str, Any]] = []  # improve: rungs (overrides, e.g. {depth: 4}) a keep must also hold at
    compute_multiplier: Multiplier | None = None  # improve: budgets the frontier before a keep also runs at
    data: Data
    budget: Budget
    tune: dict[str, list[Any]] = {}  # a grid over config keys, e.g. {matrix_lr: [0.01, 0.02]}
    tune_seeds: list[StrictInt] = []  # default: the first seed of budget.seeds
    org: Org = Org()
    runner: Runner = Runner()
    train: Train
    protected: list[str] = Field(default_factory=lambda: list(DEFAULT_PROTECTED))
    max_change_kb: float = Field(16, gt=0)  # what a commit may carry over the base, compressed (org/commit_checks.py)

    @field_validator("tune_seeds")
    @classmethod
    def _tune_seeds(cls, seeds):
        return check_seeds(seeds)

    @field_validator("protected")
    @classmethod
    def _paths_in_the_repo(cls, paths):
        for path in paths:  # git pathspecs relative to the repository's root
            # (a leading ':' is git's pathspec magic: ':(bogus)x' was a traceback in every command's check)
            if not path.strip() or Path(path).is_absolute() or ".." in Path(path).parts or not command_line_text(path) \
                    or path.startswith(":"):
                raise ValueError(f"{quoted(path, 200)}: expected a path inside the repository, e.g. trainer/eval.py")
        return paths

    @field_validator("tune")
    @classmethod
    def _grid(cls, grid):
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: expected a non-empty list of values")
        if (points := math.prod(map(len, grid.values()))) > MAX_GRID_POINTS:  # (each a run per tune seed; and listed whole)
            raise ValueError(f"{points} points: a grid holds at most {MAX_GRID_POINTS}")
        _scalar_overrides({k: v for k, vs in grid.items() for v in vs})
        return grid

    @field_validator("ladder")
    @classmethod
    def _rungs(cls, rungs):
        for rung in rungs:
            if not rung:
                raise ValueError("a rung needs overrides, e.g. {depth: 4}")
            _scalar_overrides(rung)
        return rungs

    @model_validator(mode="after")
    def _arms(self):
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"expected distinct variant names, got {names}")
        tries = [c.name for c in self.candidates]
        if len(set(tries)) != len(tries):
            raise ValueError(f"expected distinct candidate names, got {tries}")
        improve = self.claim.kind == "improve"
        if improve and (self.variants or self.tune):  # tries are judged against the frontier, one by one
            raise ValueError("a claim of kind improve takes candidates, not variants or a tune grid")
        if (self.candidates or self.ladder or self.compute_multiplier) and not improve:
            raise ValueError("candidates, a ladder and a compute multiplier belong to an improvement program: "
                             "set claim.kind to improve")
        if self.compute_multiplier and self.compute_multiplier.seeds > len(self.budget.seeds):
            raise ValueError(f"compute_multiplier.seeds: {self.compute_multiplier.seeds} is more than the "
                             f"program's {len(self.budget.seeds)} seeds")
        for i, factor in enumerate(self.compute_multiplier.budgets if self.compute_multiplier else []):
            check_seconds_fit(self.budget, factor, f"compute_multiplier.budgets[{i}] ({factor:g}x budget.per_run.seconds)")
        if self.data.val_tokens < self.train.seq_len:  # (every run was an `error`, in the data's words)
            raise ValueError(f"data.val_tokens {self.data.val_tokens} holds no window of train.seq_len "
                             f"{self.train.seq_len}: give at least {self.train.seq_len}")
        if self.train.device == "cuda" and self.runner.backend == "local" and not self.runner.gpus:
            raise ValueError("train.device cuda needs runner.gpus, the GPUs its runs take one each (e.g. [0]): "
                             "a run's box holds only its slot's GPU")
        return self

    @property
    def arms(self) -> list[str]:
        return ["baseline"] + [v.name for v in self.variants]

    @property
    def fresh_seeds(self) -> int:
        return fresh_seed_count(self.claim.model_dump(), self.budget.seeds)

    @property
    def tuning_seeds(self) -> list[int]:
        return self.tune_seeds or self.budget.seeds[:1]

    def grid_points(self) -> list[dict]:
        """Every combination of the tune grid ([{}] when there is nothing to tune)."""
        keys = list(self.tune)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.tune.values())]

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def load_program(path: str | Path) -> Program:
    """Read and validate a program file; any problem is one ProgramError line."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=UniqueKeyLoader)
    except OSError as e:
        raise ProgramError(f"{path}: cannot read program file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ProgramError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        raise ProgramError(f"{path}: malformed YAML {_yaml_where(e)}") from None
    except (ValueError, RecursionError) as e:  # (a number of 5,000 digits; brackets nested 5,000 deep)
        raise ProgramError(f"{path}: YAML this program cannot hold ({shown(str(e)[:200] or 'nested too deep')})") from None
    if not isinstance(raw, dict):
        raise ProgramError(f"{path}: expected a mapping of program fields at the top level")
    try:
        return Program.model_validate(raw)
    except ValidationError as e:
        raise ProgramError(f"{path}: {_describe(e.errors()[0])}") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: by default
    the second silently wins, and a program would run with a setting nobody meant."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: its keys are merged (flatten_mapping), and
                continue                                     # a key given here too overrides them, as YAML means
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):  # `? [a, b]`: YAML allows it, a program cannot use it
                raise yaml.constructor.ConstructorError(None, None, f"a key that is a {type(key).__name__}",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is None:
        return f"({problem})"
    return f"at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _describe(err: dict) -> str:
    """One pydantic error as 'field: expected ...'."""
    loc = err["loc"]
    field = _field_path(loc) or "(top level)"
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        return f"{field}: unknown field; expected one of {', '.join(allowed)}"
    if kind == "missing":
        return f"{field}: missing; this field is required"
    if kind == "string_pattern_mismatch":  # only NAME uses a pattern
        return (f"{field}: expected lowercase letters, digits, '-' and '_', 64 at most, the first a letter or "
                f"digit (it names branches and directories), got {quoted(err['input'], 200)}")
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    msg = re.sub(r"^Input should be ", "expected ", msg)
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], dict):
        msg = re.sub(r", got .*$", "", msg) + f", got {quoted(err['input'], 200)}"  # (pydantic's own said twice)
    return f"{field}: {shown(msg[:500])}"


CONTAINERS = reprlib.Repr()  # (its keywords are Python 3.12's)
CONTAINERS.maxlevel, CONTAINERS.maxdict, CONTAINERS.maxlist, CONTAINERS.maxstring = 4, 8, 8, 80


def quoted(value, limit: int = 200) -> str:
    """A value as an error line shows it: repr'd, no control character, at most `limit` characters of it.
    A list or mapping is cut as it is repr'd: YAML's aliases nest one in itself 10x a level, and
    a 753-byte file's repr took 370 MB at 7 levels (each level 10x more)."""
    text = CONTAINERS.repr(value) if isinstance(value, (list, dict, tuple, set)) else repr(value)
    return shown(text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)")


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed_fields(loc: tuple) -> list[str]:
    """The field names of the model at `loc` (walks Program's annotations through lists)."""
    model = Program
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        args = getattr(annotation, "__args__", None) or ()
        nested = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return list(model.model_fields)
