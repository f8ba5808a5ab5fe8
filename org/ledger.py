"""
The ledger: one SQLite file per program (.lab/<program>/ledger.sqlite) that never forgets.

Tables: programs, experiments (who asked for what, on which commit), runs (one trainer
invocation each: seed, slot, status, budget, and the columns SQL filters on; the harness's
measurement as the record and the trainer's result.json beside it as a cross-check, both in
trainer/record.py's shape, which run_row() reads out for every reader), budget_changes, llm_spend and
agent_cpu (the CPU time of the agents' own boxes, and the harness's taking in their submissions,
outside every run's budget); their columns, and
how an older ledger's are brought up to date, are org/ledger_schema.py's. Verdicts are never
stored: the referee computes them from the runs whenever they are shown (report, status, agents).
Rows are inserted and updated, never deleted, so a discarded idea stays queryable (a hold on the
LLM budget for a call that spent nothing excepted).

Crash safety: every change is one transaction (WAL mode, BEGIN IMMEDIATE), a run is claimed
atomically, and a run left 'running' by a runner whose process is gone is found by stale_runs()
and handed back to the queue by the runner.

    with Ledger(".lab/softcap/ledger.sqlite") as ledger:
        ledger.runs("softcap", status="completed")
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
from dataclasses import asdict, fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path

from org import OrgError, pid_alive, process_identity
from org.ledger_schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from trainer.record import Measurement, Result, read

FINISHED = ("completed", "diverged", "killed", "error", "invalid", "refused")
LOCK_WAIT = 60.0  # seconds a write waits for another's transaction to end
SECRET_SEEDS = ("replicate", "canary")  # purposes whose seeds the harness drew and tells no agent


def shown_seed(run: dict) -> int | str:
    """A run's seed as an agent, or a report in the lab, may see it: a fresh seed is "fresh" (its
    agent could work out a table for it in its own box)."""
    return "fresh" if run.get("purpose") in SECRET_SEEDS else run.get("seed")


class LedgerError(OrgError):
    pass


def storable(value):
    """A value SQLite takes: a str's lone surrogates (an agent's bytes, decoded with escapes, or
    sent back by its code as JSON's \\udXXX) as backslash escapes, since sqlite3 refuses to encode
    them; the runner stopped on such a run's reason, at each restart again."""
    return value.encode("utf-8", "backslashreplace").decode() if isinstance(value, str) else value


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


LEFT_AS_IT_IS = "it was left as it is: restore it from a copy, or move it away to start the program afresh"


def lock_held(error) -> bool:  # a DatabaseError that is another's transaction held past our wait: no damage
    return getattr(error, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def corrupt(path, error) -> str:  # what a DatabaseError from the ledger means
    if lock_held(error):
        return (f"{path}: another process held the ledger's write lock for {LOCK_WAIT:.0f} s (a runner stopped mid-write, "
                "by Ctrl-Z or SIGSTOP? `fg` or `kill -CONT` it); the ledger is sound: try again")
    return f"{path}: the ledger is corrupt or not a ledger ({error}); {LEFT_AS_IT_IS}"


def a_folder(path) -> str:  # what a ledger path that is a folder means
    return f"{path} is a folder, not a ledger: move it away (`org run` makes a new ledger)"


def ledger_path(lab_dir: Path | str) -> Path:  # the ledger of the program whose state is in lab_dir (.lab/<program>/)
    return Path(lab_dir) / "ledger.sqlite"


class Ledger:
    """One connection to a ledger file. Not shared between threads: open one per thread."""
    opened: set[Path] = set()  # ledger files opened: `org` looks in its command's for a hand edit where it fails

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise LedgerError(a_folder(self.path))
        self.db = sqlite3.connect(self.path, timeout=LOCK_WAIT, isolation_level=None)  # we BEGIN ourselves
        self.db.row_factory = sqlite3.Row
        self._depth = 0
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:  # not SQLite, or damaged: say so, and touch nothing
            self.db.close()
            raise LedgerError(corrupt(self.path, e)) from None
        Ledger.opened.add(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.db.close()

    @contextlib.contextmanager
    def tx(self):
        """One atomic transaction; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")  # take the write lock now, so claims never race
        self._depth = 1
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    def _migrate(self):
        if self._version() == SCHEMA_VERSION:  # (no write lock to read a ledger: a held one blocked every `org status`)
            return
        with self.tx():
            if self._version() is None:  # (not executescript: it would COMMIT mid-transaction)
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION, now()))
            version = self._version()
            while version in MIGRATIONS and version < SCHEMA_VERSION:  # an older ledger, brought up to date
                for statement in MIGRATIONS[version]:
                    if not self._has_column_it_adds(statement):
                        self.db.execute(statement)
                version += 1
                self.db.execute("INSERT INTO schema_version VALUES (?, ?)", (version, now()))
        if version != SCHEMA_VERSION:
            raise LedgerError(f"{self.path}: ledger schema version {version}, this org knows {SCHEMA_VERSION}")

    def _version(self) -> int | None:  # (None: a new file)
        found = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone()
        return found and self.db.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    def _has_column_it_adds(self, statement: str) -> bool:
        """An ADD COLUMN whose column is there already, or a DROP COLUMN whose column is not
        (SQLite has no IF [NOT] EXISTS for either): nothing to do."""
        change = re.match(r"ALTER TABLE (\w+) (ADD|DROP) COLUMN (\w+)", statement)
        return bool(change) and (change[3] in columns(self.db, change[1])) == (change[2] == "ADD")

    # --- small helpers -------------------------------------------------------------------

    def _one(self, sql, *args) -> dict | None:
        row = self.db.execute(sql, args).fetchone()
        return dict(row) if row else None

    def _all(self, sql, *args) -> list[dict]:
        return [dict(row) for row in self.db.execute(sql, args)]

    def _insert(self, table: str, fields: dict, or_ignore=False) -> int | None:
        cols, marks = ", ".join(fields), ", ".join("?" for _ in fields)
        tail = " ON CONFLICT DO NOTHING" if or_ignore else ""  # a duplicate is skipped; any other constraint fails loudly
        with self.tx():
            cur = self.db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks}){tail}",
                                  tuple(map(storable, fields.values())))
        return cur.lastrowid if cur.rowcount else None

    def _update(self, table: str, row_id, fields: dict, key="id"):
        if not fields:  # nothing known to set (a lost Ray job names no node): not an empty SET clause
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.tx():
            self.db.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", (*map(storable, fields.values()), row_id))

    # --- programs ------------------------------------------------------------------------

    def add_program(self, name: str, spec: dict, base_commit: str, branch: str):
        self._insert("programs", dict(name=name, spec=json.dumps(spec, sort_keys=True),
                                      base_commit=base_commit, branch=branch, created_at=now()))

    def program(self, name: str) -> dict | None:
        return self._one("SELECT * FROM programs WHERE name = ?", name)

    def budget(self, name: str) -> dict:
        """The program's budget as fixed at start, with every `org budget` change since."""
        return json.loads(self.program(name)["spec"])["budget"]

    def change_budget(self, name: str, changes: dict, who: str) -> list[dict]:
        """Set budget fields of a started program, each change logged; returns the log rows."""
        with self.tx():
            spec = json.loads(self.program(name)["spec"])
            rows = [dict(program=name, field=f, old=spec["budget"].get(f), new=v, who=who, created_at=now())
                    for f, v in changes.items()]
            for row in rows:
                self._insert("budget_changes", row)
                spec["budget"][row["field"]] = row["new"]
            self._update("programs", name, dict(spec=json.dumps(spec, sort_keys=True)), key="name")
        return rows

    def add_seeds(self, name: str, seeds: list[int], who: str) -> list[dict]:
        """More seeds for every arm of a started program (`org extend`), each logged as a budget
        change of `seeds` (old None: the program had no such seed); returns the log rows."""
        with self.tx():
            spec = json.loads(self.program(name)["spec"])
            rows = [dict(program=name, field="seeds", old=None, new=seed, who=who, created_at=now()) for seed in seeds]
            for row in rows:
                self._insert("budget_changes", row)
            spec["budget"]["seeds"] += seeds
            self._update("programs", name, dict(spec=json.dumps(spec, sort_keys=True)), key="name")
        return rows

    def budget_changes(self, name: str) -> list[dict]:
        return self._all("SELECT * FROM budget_changes WHERE program = ? ORDER BY id", name)

    def set_fingerprints(self, name: str, eval_fingerprint: str, data_fingerprint: str):
        self._update("programs", name, dict(eval_fingerprint=eval_fingerprint,
                                            data_fingerprint=data_fingerprint), key="name")

    # --- experiments ---------------------------------------------------------------------

    def add_experiment(self, program: str, arm: str, who: str, source: str, base_commit: str,
                       code_commit: str, overrides: dict, stage: str, hypothesis: str = None,
                       diff: str = None, reason: str = None, versus: str = None) -> int | None:
        """The new experiment's id; None if a declared arm is already there."""
        return self._insert("experiments", dict(
            program=program, arm=arm, who=who, hypothesis=hypothesis, source=source,
            base_commit=base_commit, code_commit=code_commit, diff=diff,
            overrides=json.dumps(overrides, sort_keys=True), stage=stage, reason=reason,
            versus=versus, created_at=now()), or_ignore=True)

    def experiment(self, experiment_id: int) -> dict | None:
        return self._one("SELECT * FROM experiments WHERE id = ?", experiment_id)

    def experiments(self, program: str, stage: str = None) -> list[dict]:
        if stage:
            return self._all("SELECT * FROM experiments WHERE program = ? AND stage = ? ORDER BY id",
                             program, stage)
        return self._all("SELECT * FROM experiments WHERE program = ? ORDER BY id", program)

    def update_experiment(self, experiment_id: int, **fields):
        for key in ("chosen", "decision"):  # (JSON)
            if key in fields:
                fields[key] = json.dumps(fields[key], sort_keys=True)
        self._update("experiments", experiment_id, fields)

    # --- runs ----------------------------------------------------------------------------

    def add_run(self, experiment: dict, purpose: str, seed: int, round: int, overrides: dict,
                budget: tuple[str, float], status: str = "queued", reason: str = None) -> int | None:
        """Enqueue one run with its budget, (kind, value); None if the same (experiment, purpose,
        seed, overrides) exists, so planning can be repeated after a crash without duplicating anything."""
        kind, value = budget
        fields = dict(experiment_id=experiment["id"], program=experiment["program"],
                      arm=experiment["arm"], purpose=purpose, seed=seed, round=round,
                      overrides=json.dumps(overrides, sort_keys=True),
                      budget=json.dumps({"kind": kind, "value": value}, sort_keys=True), status=status, reason=reason,
                      created_at=now())
        if status in FINISHED:
            fields["finished_at"] = fields["created_at"]
        return self._insert("runs", fields, or_ignore=True)

    def run(self, run_id: int) -> dict | None:
        row = self._one("SELECT * FROM runs WHERE id = ?", run_id)
        return row and run_row(row)

    def runs(self, program: str, status: str = None, arm: str = None, purpose: str = None,
             experiment_id: int = None) -> list[dict]:
        where, args = ["program = ?"], [program]
        for col, value in (("status", status), ("arm", arm), ("purpose", purpose),
                           ("experiment_id", experiment_id)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        return [run_row(r) for r in self._all(f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY id", *args)]

    def pending(self, program: str, experiment_ids: list[int]) -> int:
        """How many runs of these experiments are not finished yet (one query: a wait polls it)."""
        marks = ", ".join("?" * len(experiment_ids)) or "NULL"
        return self.db.execute(f"SELECT count(*) FROM runs WHERE program = ? AND experiment_id IN ({marks}) "
                               f"AND status NOT IN ({', '.join('?' * len(FINISHED))})",
                               (program, *experiment_ids, *FINISHED)).fetchone()[0]

    def claim(self, program: str, slot: int, arm: str = None, kind: str = None, purpose: str = None,
              waiting: list[int] = ()) -> dict | None:
        """Atomically take the next queued run (tuning first, then seed by seed; only `arm`'s
        and `purpose`'s if given, none of the `waiting` experiments') for this process; None when
        there is none. A slot of a `kind` of device takes only runs of seeds no other kind has run
        (it becomes theirs): arms compare seed by seed, so each seed's runs all train on one kind."""
        with self.tx():
            run = self._one("SELECT * FROM runs WHERE program = ? AND status = 'queued' "
                            "AND (? IS NULL OR arm = ?) AND (? IS NULL OR purpose = ?) AND (? IS NULL OR NOT EXISTS ("
                            "  SELECT 1 FROM runs other WHERE other.program = runs.program "
                            "  AND other.seed = runs.seed AND other.kind != ?)) "
                            f"AND experiment_id NOT IN ({', '.join('?' * len(waiting))}) "
                            "ORDER BY round, id LIMIT 1", program, arm, arm, purpose, purpose, kind, kind, *waiting)
            if run is None:
                return None
            seq = self.db.execute("SELECT coalesce(max(claim_seq), 0) + 1 FROM runs WHERE program = ?", (program,)).fetchone()[0]
            self._update("runs", run["id"], dict(
                status="running", slot=slot, runner_host=socket.gethostname(),
                runner_pid=os.getpid(), runner_started=process_identity(os.getpid()), trainer_pid=None, claim_seq=seq,
                attempts=run["attempts"] + 1, started_at=now(), reason=None, kind=kind))
        return self.run(run["id"])

    def trainer_ended(self, run_id: int, cpu_seconds: float | None):
        """Its trainer's CPU seconds, read from its box as it ended: its measurement's, whoever measures it."""
        self._update("runs", run_id, dict(trainer_cpu=cpu_seconds))

    def killing(self, run_id: int, why: str):
        """Its runner kills a running run's trainer (past its time): the reason on record before the
        signal, so a recovery after a runner that died before it recorded the kill records it killed
        (re-queued, an over-time run cost its timeout again). A claim clears it."""
        self._update("runs", run_id, dict(reason=why))

    def adopt(self, run_id: int):
        """A recovering runner takes up a run whose runner died after its trainer (to measure it): a
        later recovery charges its runner's time from now, not from the trainer's end again."""
        self._update("runs", run_id, dict(runner_host=socket.gethostname(), runner_pid=os.getpid(),
                                          runner_started=process_identity(os.getpid()), adopted_at=now()))

    def mark_started(self, run_id: int, trainer_pid: int | None, command: list[str], run_dir: Path,
                     log_path: Path, node: str | None = None, machine: str | None = None, started_at: str | None = None):
        self._update("runs", run_id, dict(
            trainer_pid=trainer_pid, command=json.dumps(command), run_dir=str(run_dir),
            metrics_path=str(Path(run_dir) / "metrics.jsonl"), log_path=str(log_path),
            node=node or socket.gethostname(), machine=machine, **({"started_at": started_at} if started_at else {})))

    def set_job(self, run_id: int, job_id: str | None = None, node: str | None = None, machine: str | None = None):
        """A claimed run's cluster job (before it is submitted), later its node and the device its job named."""
        self._update("runs", run_id, {k: v for k, v in dict(job_id=job_id, node=node, machine=machine).items() if v})

    def finish(self, run_id: int, status: str, reason: str = None, result: Result = None,
               wall_seconds: float = None, measurement: Measurement = None, measure_seconds: float = None):
        """Record a run's outcome: the trainer's result and, for a run it measured, the harness's
        measurement (trainer/record.py), and the runner's clock (measure_seconds: charge_measuring)."""
        assert status in FINISHED, status
        # the runner ran a clean snapshot of the experiment's commit, whatever the trainer says
        commit = self.db.execute("SELECT code_commit FROM experiments WHERE id = "
                                 "(SELECT experiment_id FROM runs WHERE id = ?)", (run_id,)).fetchone()[0]
        with self.tx():
            self._update("runs", run_id, dict(
                status=status, reason=reason, wall_seconds=wall_seconds, finished_at=now(), git_commit=commit,
                git_dirty=0, result=result and json.dumps(asdict(result), sort_keys=True),
                measurement=measurement and json.dumps(asdict(measurement), sort_keys=True)))
            if measure_seconds is not None:
                self.charge_measuring(run_id, measure_seconds)

    def charge_measuring(self, run_id: int, seconds: float, before_trainer: bool = False):
        """Runner time spent on a run besides its trainer's, added to its measure_seconds as each part ends
        (on record whether the run is re-queued or its runner dies after it): its commit checked and written out,
        a code arm's probe of its model, then the measurement of its checkpoint. Before its trainer, its
        clock (started_at, what a recovery charges from) starts again now: that time is charged."""
        self.db.execute("UPDATE runs SET measure_seconds = coalesce(measure_seconds, 0) + ?, started_at = "
                        "CASE WHEN ? THEN ? ELSE started_at END WHERE id = ?", (max(seconds, 0.0), before_trainer, now(), run_id))

    def requeue(self, run_id: int, reason: str, lost_seconds: float = 0.0):
        """Hand a run back to the queue (its runner died, or its trainer of a signal nobody here sent);
        attempt_log keeps the reason, lost_seconds the attempt's runner time (the budget pays for it)."""
        with self.tx():
            self.log_attempt(run_id, reason, lost_seconds)
            self._update("runs", run_id, dict(status="queued", reason=reason, slot=None, runner_pid=None,
                                              runner_started=None, trainer_pid=None))

    def log_attempt(self, run_id: int, reason: str, lost_seconds: float = 0.0):
        """A line in the run's attempt_log (what befell its attempt), and what the attempt cost beyond its record."""
        self.db.execute("UPDATE runs SET attempt_log = coalesce(attempt_log, '') || ?, "
                        "lost_seconds = coalesce(lost_seconds, 0) + ? WHERE id = ?",
                        (storable(f"{now()} attempt {self.run(run_id)['attempts']}: {reason}\n"), max(lost_seconds, 0.0), run_id))

    def stale_runs(self, program: str) -> list[dict]:
        """Runs marked running on this host whose runner process is gone: no process has its pid, or
        another has (pids repeat after a reboot: the new runner could hold its dead one's, and wait for
        its runs for good). Where /proc cannot say (no identity then, or now), the pid alone decides."""
        def gone(r):
            now = process_identity(r["runner_pid"])
            return not pid_alive(r["runner_pid"]) or (None not in (r["runner_started"], now) and now != r["runner_started"])
        return [r for r in self.runs(program, status="running") if r["runner_host"] == socket.gethostname() and gone(r)]

    # --- spend ----------------------------------------------------------------------------

    def record_spend(self, program: str, agent: str, model: str, tokens_in: int,
                     tokens_out: int, dollars: float, held: bool = False) -> int:
        return self._insert("llm_spend", dict(program=program, agent=agent, model=model, tokens_in=tokens_in,
                                              tokens_out=tokens_out, dollars=dollars, held=int(held), created_at=now()))

    def meter_spend(self, spend_id: int, tokens_in: int, tokens_out: int, dollars: float):
        """A held call's row becomes what it spent."""
        self._update("llm_spend", spend_id, dict(tokens_in=tokens_in, tokens_out=tokens_out, dollars=dollars, held=0))

    def let_go(self, spend_id: int):
        """A held call that spent nothing (the provider refused it, or it never reached it): its row goes."""
        with self.tx():
            self.db.execute("DELETE FROM llm_spend WHERE id = ? AND held", (spend_id,))

    def spend(self, program: str) -> dict:
        """Dollars and tokens per agent, plus the program's total dollars; `held`: the worst cases
        of its calls in flight, {agent: dollars}, counted apart until they are metered."""
        rows = self._all("SELECT agent, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out, sum(dollars) AS dollars "
                         "FROM llm_spend WHERE program = ? AND NOT held GROUP BY agent", program)
        held = self._all("SELECT agent, sum(dollars) AS dollars FROM llm_spend WHERE program = ? AND held "
                         "GROUP BY agent", program)
        return {"agents": {r.pop("agent"): r for r in rows},
                "dollars": sum(r["dollars"] for r in rows), "held": {r["agent"]: r["dollars"] for r in held}}

    def charge_held(self, program: str) -> list[dict]:
        """The calls a gateway that stopped held, never metered: charged their worst case for good."""
        with self.tx():
            rows = self._all("SELECT * FROM llm_spend WHERE program = ? AND held", program)
            self.db.execute("UPDATE llm_spend SET held = 0 WHERE program = ? AND held", (program,))
        return rows

    def record_agent_cpu(self, program: str, agent: str, seconds: float, what: str) -> int:
        return self._insert("agent_cpu", dict(program=program, agent=agent, seconds=round(seconds, 3),
                                              what=what, created_at=now()))

    def agent_cpu(self, program: str) -> dict[str, float]:
        """CPU seconds each agent's own box has used, {agent: seconds}."""
        rows = self._all("SELECT agent, sum(seconds) AS seconds FROM agent_cpu WHERE program = ? GROUP BY agent", program)
        return {r["agent"]: r["seconds"] for r in rows}

    def compute_seconds(self, program: str) -> float:
        """Runner wall time spent by the program so far: the runs, their measurements, and their
        attempts that recorded nothing."""
        return self.db.execute("SELECT coalesce(sum(wall_seconds), 0) + coalesce(sum(measure_seconds), 0) "
                               "+ coalesce(sum(lost_seconds), 0) FROM runs WHERE program = ?", (program,)).fetchone()[0]

    def counts(self) -> dict:
        """Rows per table, for notes and sanity checks."""
        return {t: self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("programs", "experiments", "runs", "llm_spend", "agent_cpu")}


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


FLAT_FIGURES = tuple(dict.fromkeys(f.name for kind in (Result, Measurement) for f in fields(kind)
                                   if f.name not in ("status", "reason")))


def run_row(row: dict) -> dict:
    """A runs row as every reader takes it: its columns; `result` and `measurement` as records
    (trainer/record.py); the run's figures flat beside them, the harness's for a run it measured,
    else the trainer's word, and what only the trainer says (its clock, its device) from its
    result; tokens per second by the runner's clock. An older ledger's figure columns stand."""
    result, measurement = _record(Result, row.get("result")), _record(Measurement, row.get("measurement"))
    flat = dict.fromkeys(FLAT_FIGURES)  # every reader finds every figure, None until known
    flat.update({k: _plain(v) for k, v in vars(result).items() if k in flat} if result else {})
    flat.update({k: _plain(v) for k, v in vars(measurement).items()} if measurement else {})
    if measurement and measurement.tokens and row.get("wall_seconds"):
        flat["tokens_per_second"] = round(measurement.tokens / row["wall_seconds"], 2)
    kept = {k: v for k, v in row.items() if v is not None or k not in flat}  # an empty column hides nothing
    return {**flat, **kept, "result": result, "measurement": measurement}


def _plain(value):  # a record's field as its JSON has it (vars: asdict's deep copies were 80% of runs())
    return dict(vars(value)) if is_dataclass(value) else value


def _record(kind, text):  # None where there is none or it cannot be read
    if text is None or isinstance(text, kind):
        return text
    try:
        return read(kind, text, "the ledger's record", strict=False)  # strict when it was written
    except ValueError:
        return None


def budget_of(run: dict) -> tuple[str, float] | None:
    """A run's budget, (kind, value), from its row: {kind, value}, or {flops: 3e12} as a ledger
    before schema 5 wrote it (migrated when a ledger is opened to write; a report reads as is)."""
    budget = loads(run.get("budget"))
    if not isinstance(budget, dict) or not budget:
        return None
    if "kind" in budget:
        return budget["kind"], float(budget["value"])
    (kind, value), = budget.items()
    return kind, float(value)


def loads(text):
    try:
        return json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return None
