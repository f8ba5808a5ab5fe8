"""
Where a program's things live, and how a command opens one: the lab's root (also from inside an
agent's worktree), the program file (a path or a name in programs/), the checks before anything
is created (preflight), the program started (branch, .lab/<name>/, its ledger), and a launched
program's paths (ProgramSite: panes, control, worktrees).

    program, lab, path = preflight("softcap")     # raises OrgError / ProgramError, creates nothing
    with start(program, lab, path) as ledger: ...
    site = open_site("softcap")                   # a launched (or recorded) program
    site.ledger_path, site.worktree("junior-1"), site.keeper("_runner")

Every org command that opens a program comes through here, so none imports another's command
module for it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import git
from pydantic import ValidationError

from org import OrgError, shown
from org.improve import check_candidates
from org.lab import Lab
from org.ledger import LEFT_AS_IT_IS, Ledger, LedgerError, corrupt, ledger_path
from org.ledger_read import open_readonly
from org.panes import Grid, read_state
from org.program import BOUND_BUDGET, MEASUREMENT_BUDGET, MEASUREMENT_FIELDS, NAME, Program, ProgramError, load_program, quoted
from org.program_checks import check_with_trainer, data_source_problem
from org.unseen import known_lab

# --- opening a program: every check first (preflight), then create what it needs (start)

def preflight(arg: str, ref: str | None = None) -> tuple[Program, Lab, Path | None]:
    """Every check that needs no state: the lab, the program file, the trainer's view of its
    configs, uncommitted protected files and git refs. Creates nothing. A started program whose
    file is not at hand (started from a file elsewhere, or its file gone) is its ledger's: path None."""
    lab = Lab.open(lab_root())
    try:
        path = program_path(arg, lab)
    except OrgError:  # no file: a started program, as its ledger recorded it (`org status` reads it so too)
        if not ledger_path(lab.state_dir(arg)).is_file():
            raise
        path = None
    program = load_named(path, arg) if path else recorded_program(lab.root, arg)
    where = path or ledger_path(lab.state_dir(program.name))  # (what bad input names)
    check_with_trainer(program, source=str(where))
    started = ledger_path(lab.state_dir(program.name)).exists()  # (its data's size was enough: it may run on)
    problem = data_source_problem(program.data.source, lab.root, None if started else program.train.seq_len)
    if problem:
        raise ProgramError(f"{where}: data.source: {problem}")
    dirty = lab.dirty_paths(program.protected)
    if dirty:
        raise OrgError(f"protected path {dirty[0]} has uncommitted changes; commit or revert it "
                       "first (runs use committed code, the harness must match it)")
    for i, variant in enumerate(program.variants):
        if variant.ref:
            try:
                lab.resolve(variant.ref)
            except OrgError as e:
                raise ProgramError(f"{where}: variants[{i}].ref: {e}") from None
    if ref:
        lab.resolve(ref)
    recorded, row = ledger_path(lab.state_dir(program.name)), None
    if recorded.exists():
        with Ledger(recorded) as ledger:
            row = ledger.program(program.name)
        if damage := hand_edit(recorded, programs_too=False):  # (before anything is written beside it)
            raise OrgError(damage)
        if row:
            started = json.loads(row["spec"])
            program = as_started(program, started)
            if path:
                check_unchanged(path, started, program.model_dump(mode="json"))
    branch = f"program/{program.name}"
    base = row["base_commit"] if row else lab.resolve(branch if branch in lab.repo.heads else "HEAD")
    if "trainer/__main__.py" not in lab.files(base):  # (else its runs train with any `trainer` the machine has)
        raise OrgError(f"the lab's commit {base[:12]} has no trainer/__main__.py: runs train with the lab's "
                       "committed trainer (`python -m trainer`); commit one first")
    check_candidates(lab, program, base, str(where))
    return program, lab, path


def start(program: Program, lab: Lab, path: Path) -> Ledger:
    """Start the program (idempotently): branch program/<name>, .lab/<name>/ and its ledger."""
    known_lab(lab.root)  # (every other lab's boxes hide its state; first: it may fail, and nothing is made then)
    base = lab.start_program(program.name)
    ledger = Ledger(ledger_path(lab.state_dir(program.name)))
    if not ledger.program(program.name):
        ledger.add_program(program.name, program.model_dump(mode="json"), base, f"program/{program.name}")
    return ledger


JSON_KINDS = {  # (table, column): the JSON org writes there; a column left NULL holds none
    ("programs", "spec"): "object", ("experiments", "overrides"): "object", ("experiments", "chosen"): "object",
    ("experiments", "decision"): "object", ("runs", "overrides"): "object", ("runs", "budget"): "object",
    ("runs", "command"): "array", ("runs", "result"): "object", ("runs", "measurement"): "object"}


def hand_edit(path, programs_too: bool = True) -> str | None:
    """The first thing in a ledger that no org writes, as one line: a JSON column that is not JSON
    or not its kind, or (programs_too) a program this org cannot read, which an older nanolab's may
    be too. Every write is one transaction, so a crash makes none of these: a hand edit does."""
    try:
        db = open_readonly(Path(path))
    except (OrgError, sqlite3.Error):  # gone, or not SQLite: Ledger() says so where it is opened
        return None
    with contextlib.closing(db):
        db.create_function("json_kind", 1, json_kind, deterministic=True)
        for (table, column), kind in JSON_KINDS.items():
            row = db.execute(f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL AND "
                             f"json_kind({column}) != ?", (kind,)).fetchone()
            if row:
                return (f"{path}: {table} row {row[0]}: its {column} is not a JSON {kind} (edited by hand?): "
                        f"{quoted(row[1])}; {LEFT_AS_IT_IS}")
        row = db.execute("SELECT rowid, budget FROM runs WHERE json_valid(budget) AND json_type(budget, '$.kind') IS NOT NULL "
                         "AND coalesce(json_type(budget, '$.value'), 'none') NOT IN ('integer', 'real')").fetchone()
        if row:  # (a KeyError in report: a budget's kind with no number beside it)
            return f"{path}: runs row {row[0]}: its budget has no number value (edited by hand?): {quoted(row[1])}; {LEFT_AS_IT_IS}"
        if found := not_a_number(db):
            table, rowid, column, value = found
            return f"{path}: {table} row {rowid}: its {column} is not a number (edited by hand?): {quoted(value)}; {LEFT_AS_IT_IS}"
        for name, spec in db.execute("SELECT name, spec FROM programs") if programs_too else ():
            try:
                Program.model_validate(json.loads(spec))  # (as recorded_program reads it)
            except ValidationError as e:
                where = ".".join(map(str, e.errors()[0]["loc"])) or "spec"
                return (f"{path}: program {name!r}: its spec is not a program this org reads (edited by hand, "
                        f"or an older nanolab's?): {where}: {shown(e.errors()[0]['msg'])}; {LEFT_AS_IT_IS}")
    return None


def not_a_number(db) -> tuple | None:
    """(table, rowid, column, value) of a number column holding something else ('abc' in a run's
    wall_seconds was a TypeError in every command that reads runs), or None."""
    quote = lambda name: '"' + name.replace('"', '""') + '"'  # noqa: E731 (a hand may name a table anything)
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        for column, declared in db.execute("SELECT name, type FROM pragma_table_info(?)", (table,)).fetchall():
            if declared.upper() in ("REAL", "INTEGER"):
                row = db.execute(f"SELECT rowid, {quote(column)} FROM {quote(table)} WHERE typeof({quote(column)}) "
                                 "NOT IN ('integer', 'real', 'null') LIMIT 1").fetchone()
                if row:
                    return table, row[0], column, row[1]
    return None


def json_kind(text) -> str:
    """What JSON `text` holds, as Python reads it (SQLite's json_valid refuses the NaN that Python's
    JSON writes, and a trainer's result may hold one): object, array, ..., or text (not JSON)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return "text"
    return {dict: "object", list: "array"}.get(type(value), type(value).__name__)


def find_ledger(arg: str) -> tuple[Lab, str, Path]:
    """(lab, program name, ledger path) of a started program, for read-only commands."""
    lab = Lab.open(lab_root())
    is_a_name = re.fullmatch(NAME, arg) and not Path(arg).is_file()  # (else a file: programs/x.yml, mistyped, is no name)
    name = arg if is_a_name else load_program(program_path(arg, lab)).name
    path = ledger_path(lab.state_dir(name))
    if not path.exists():
        raise OrgError(f"no ledger for program {name!r} at {path}; `org run` starts one")
    if recorded_spec(path, name) is None:
        raise OrgError(f"program {name!r} is not in {path}; `org run` starts it")
    return lab, name, path


def program_path(arg: str, lab: Lab) -> Path:
    """The lab's programs/<arg>.yaml, else the file arg names. Never one in an agent's worktree:
    a person whose pane was taken over works there, and the agent wrote what it holds."""
    for candidate in (lab.root / "programs" / f"{arg}.yaml", Path(arg)):
        if candidate.is_file():
            if candidate.resolve().is_relative_to((lab.root / "worktrees").resolve()):
                raise OrgError(f"{arg}: a program file in an agent's worktree is the agent's to write; "
                               f"name the lab's ({lab.root / 'programs'}/<name>.yaml)")
            return candidate
    nor = "" if arg.endswith((".yaml", ".yml")) else f" (nor {lab.root / 'programs' / (arg + '.yaml')})"
    raise OrgError(f"no program file {arg!r}{nor}")


def check_runs_can_go(program: Program):
    """Where the program's runs would go is there, before `org run` or `org launch` creates anything
    (OrgError, one line): its Ray cluster answers, or the GPUs of a local CUDA program are on this
    machine (a program on `runner.gpus: [0]` here without one queued runs that could only fail)."""
    from org.cluster import reach
    from org.hostfiles import NVIDIA_GPUS, nvidia_gpus
    reach(program)
    gpus = program.runner.gpus if program.runner.backend == "local" and program.train.device == "cuda" else []
    if gpus and max(gpus) >= (found := len(nvidia_gpus())):
        raise OrgError(f"program {program.name}: runner.gpus {gpus}: this machine has {found} NVIDIA GPU(s) "
                       f"(the driver's {NVIDIA_GPUS}); its runs train on train.device cuda")


def load_named(path: Path, arg: str) -> Program:
    """The program in `path`. One found by its name (programs/<arg>.yaml) must bear that name: a
    file saying another started that other program, while the commands that read a ledger by
    the name read this one's."""
    program = load_program(path)
    if path.name == f"{arg}.yaml" and program.name != arg:
        raise ProgramError(f"{path}: name: {program.name!r} in a file named for {arg!r}: rename one "
                           "of them (a program's file is programs/<its name>.yaml)")
    return program


def check_unchanged(path: Path, started: dict, now: dict):
    started = as_current_schema(started)
    if started["budget"].get("seeds") != now["budget"].get("seeds"):
        raise ProgramError(f"{path}: budget.seeds: {now['budget'].get('seeds')} in the file, "
                           f"{started['budget'].get('seeds')} for the program; only `org extend "
                           f"{now['name']} --seeds ...` adds seeds to a started program (logged): make the file say so")
    changed = [f for f in MEASUREMENT_FIELDS if started.get(f) != now.get(f)]
    changed += [f"budget.{f}" for f in MEASUREMENT_BUDGET
                if started["budget"].get(f) != now["budget"].get(f)]
    if changed:
        raise ProgramError(f"{path}: {changed[0]}: changed since the program started; its runs "
                           "would not be comparable: revert it, or give the program a new name")
    for f in BOUND_BUDGET:
        if started["budget"].get(f) != now["budget"].get(f):
            file, fixed = (f"{b.get(f):g}" if b.get(f) is not None else "unset" for b in (now["budget"], started["budget"]))
            how = (f"a person changes it with `org budget {now['name']} {f}={file}` (logged)" if file != "unset"
                   else f"write {fixed} in the file")
            raise ProgramError(f"{path}: budget.{f}: {file} in the file, {fixed} fixed for the program; {how}")


def as_current_schema(spec: dict) -> dict:
    """A program as an older nanolab recorded it, read by this one: fields added since (such as
    train.matmul) take their defaults, so they do not count as changes."""
    try:
        return Program.model_validate(spec).model_dump(mode="json")
    except ValueError:  # pydantic's ValidationError: compare what was recorded
        return spec


def open_program(arg: str, root: str | Path = "."):
    """Validate and start a program (idempotently), as `org run` does; returns (program, lab)."""
    with contextlib.chdir(root):
        program, lab, path = preflight(arg)
        start(program, lab, path).close()
    return program, lab


def lab_root() -> Path:
    """The main checkout (also from inside an agent's worktree, whose .git points there)."""
    if os.environ.get("NANOLAB_LAB"):  # (set in every pane: the lab it belongs to)
        root = Path(os.environ["NANOLAB_LAB"])
        if not root.is_dir():
            raise OrgError(f"NANOLAB_LAB={shown(root)}: no such folder (unset it to use the checkout you are in)")
        return root
    try:
        repo = git.Repo(".", search_parent_directories=True)
    except git.InvalidGitRepositoryError:
        raise OrgError(f"not inside a git checkout: {Path.cwd()}") from None
    return Path(repo.common_dir).resolve().parent


# --- a launched program: where its things are

@dataclass
class ProgramSite:
    root: Path
    program: Program     # as launched (with --backend applied)
    path: Path | None    # the program file (None: known only from the ledger)

    @property
    def name(self) -> str:
        return self.program.name

    @property
    def lab_dir(self) -> Path:
        return self.root / ".lab" / self.name

    @property
    def panes_dir(self) -> Path:
        return self.lab_dir / "panes"

    @property
    def ledger_path(self) -> Path:
        return ledger_path(self.lab_dir)

    @property
    def grid(self) -> Grid:
        return Grid(self.root, self.name)

    @property
    def agents(self) -> list[str]:
        return [a.name for a in self.program.org.agents]

    @property
    def started(self) -> bool:
        """Whether its ledger records it (read as it is: an empty file is not started, and stays empty)."""
        return started_spec(self.root, self.name) is not None

    def keeper(self, name: str) -> dict:
        return read_state(self.panes_dir / f"{name}.json")

    def control_state(self, agent: str) -> dict:
        return read_state(self.lab_dir / "control" / agent / "state.json")  # read, never create

    def worktree(self, agent: str) -> Path:
        return self.root / "worktrees" / self.name / agent


def open_site(arg: str | None) -> ProgramSite:
    """The program a command is about: a file, a name in programs/, or (failing both) the
    program recorded in .lab/<name>/ledger.sqlite. With no name: $NANOLAB_PROGRAM (set in
    every pane), else the only program with a lab directory."""
    root = lab_root()
    arg = arg or os.environ.get("NANOLAB_PROGRAM") or only_program(root)
    lab = Lab.open(root)
    try:
        path = program_path(arg, lab)
    except OrgError:  # no file (or an agent's): the program the ledger recorded
        if not ledger_path(root / ".lab" / arg).exists():
            raise  # (a link into a worktree was "no programs/NAME.yaml", beside the file)
        path = None
    finally:
        lab.close()
    try:
        program = load_named(path, arg) if path else None
    except OrgError:
        if not ledger_path(root / ".lab" / arg).exists():
            raise  # nothing recorded to fall back on: the file's own error, naming it
        path, program = None, None
    program = as_started(program, started_spec(root, program.name)) if program else recorded_program(root, arg)
    options = read_state(root / ".lab" / program.name / "panes" / "launch.json")
    if options.get("backend"):
        program = with_backend(program, options["backend"])
    if options.get("ray"):
        program = on_ray(program, options["ray"])
    return ProgramSite(root, program, path.resolve() if path else None)


def only_program(root: Path) -> str:
    """The one program this lab has (or the one running): a ledger that records none is not one."""
    ledgers = sorted(ledger_path(p) for p in (root / ".lab").glob("*") if ledger_path(p).exists())
    names = [path.parent.name for path in ledgers if holds_program(path, path.parent.name)]
    running = [n for n in names if Grid(root, n).running()]
    if len(running) == 1 or len(names) == 1:
        return (running or names)[0]
    others = [str(path) for path in ledgers if path.parent.name not in names]
    raise OrgError(f"which program? name one (programs here: {', '.join(names) or 'none'})"
                   + f"; no program is recorded in {', '.join(others)}" * bool(others))


KEPT_DEFAULTS = ("max_change_kb",)  # defaults changed since (64 KB, then 16): a started program keeps its own


def as_started(program: Program, started: dict | None) -> Program:
    """The program as its file says, with what the file leaves unset and the program was started
    with kept (KEPT_DEFAULTS): a new default would otherwise stop every started program."""
    kept = {f: started[f] for f in KEPT_DEFAULTS if started and f in started and f not in program.model_fields_set}
    return program.model_copy(update=kept) if kept else program


def started_spec(root: Path, name: str) -> dict | None:
    """The program as its ledger recorded it at its start, or None."""
    path = ledger_path(root / ".lab" / name)
    return recorded_spec(path, name) if path.exists() else None


def holds_program(path: Path, name: str) -> bool:
    """Whether the ledger at `path` records program `name` (not: an empty file, or not a ledger)."""
    try:
        return path.exists() and recorded_spec(path, name) is not None
    except (OrgError, sqlite3.Error, ValueError):
        return False


def recorded_spec(path: Path, name: str) -> dict | None:
    """The program as the ledger at `path` recorded it, or None. Read as it is: a command that only
    reads (status, runs, report) writes no schema into an empty file, nor migrates an old one."""
    with contextlib.closing(open_readonly(path)) as db:
        try:
            row = db.execute("SELECT spec FROM programs WHERE name = ?", (name,)).fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # an empty file, or not yet a ledger
                return None
            raise LedgerError(corrupt(path, e)) from None  # (a programs table of another shape, say)
    return json.loads(row["spec"]) if row else None


def recorded_program(root: Path, name: str) -> Program:
    path = ledger_path(root / ".lab" / name)
    if not path.exists():
        raise OrgError(f"no program {name!r}: no programs/{name}.yaml and no ledger at {path}")
    if (spec := started_spec(root, name)) is None:
        raise OrgError(f"program {name!r} is not in {path}")
    return Program.model_validate(spec)


def on_ray(program: Program, address: str) -> Program:
    """The program with its runs on the Ray cluster at `address` (--ray): where runs execute is
    not part of what they measure, so it is the same program."""
    if not address.strip():  # an empty --ray once ran everything here instead
        raise OrgError("--ray: expected the Ray cluster's Jobs API address, e.g. http://HEAD:8265")
    runner = program.runner.model_copy(update={"backend": "ray", "address": address})
    return program.model_copy(update={"runner": runner})


def with_backend(program: Program, backend: str) -> Program:
    """The program with every agent on `backend` (--backend scripted: no model, no key)."""
    agents = [a.model_copy(update={"backend": backend}) for a in program.org.agents]
    return program.model_copy(update={"org": program.org.model_copy(update={"agents": agents})})
