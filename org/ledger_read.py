"""
Reading a ledger for a report: read-only, any schema version (a ledger from an older nanolab
is read as it is, never migrated). The schema and the writer are org/ledger.py's.

    rows, changes, missing = read_tables(path, "softcap", ("programs", "runs"))
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import quote

from org.ledger import Ledger, LedgerError, a_folder, budget_of, columns, corrupt, run_row
from org.ledger_schema import SCHEMA


def read_tables(path: Path, program: str, tables) -> tuple[dict, list[dict], list[str]]:
    """({table: the program's rows}, the `org budget` log, what this ledger's schema lacks, in words)."""
    db = open_readonly(path)
    try:
        have = {t: columns(db, t) for t in tables}
        missing = schema_gaps(have, tables)
        rows = {t: select(db, t, have[t], program) for t in tables}
        changes = select(db, "budget_changes", columns(db, "budget_changes"), program)  # none before v3
    finally:
        db.close()
    return rows, changes, missing


def open_readonly(path: Path) -> sqlite3.Connection:
    """The ledger, opened so that nothing (not even a migration) can write to it."""
    if not path.is_file():
        raise LedgerError(a_folder(path) if path.is_dir() else f"no ledger at {path}")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:  # WAL without a writable -shm: read the file as it is
        db = sqlite3.connect(uri + "&immutable=1", uri=True)
    except sqlite3.DatabaseError as e:
        raise LedgerError(corrupt(path, e)) from None
    db.row_factory = sqlite3.Row
    Ledger.opened.add(path)  # (where a command fails, `org` looks in it for a hand edit)
    return db


def schema_gaps(have: dict[str, list[str]], tables) -> list[str]:
    """Tables and columns of the current schema that this ledger lacks, in words."""
    current = sqlite3.connect(":memory:")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            current.execute(statement)
    gaps = []
    for table in tables:
        if not have[table]:
            gaps.append(f"the ledger has no {table} table (older schema): {MISSING_TABLE[table]}")
            continue
        lost = [c for c in columns(current, table) if c not in have[table] and c not in UNREAD_COLUMNS]
        if lost:
            gaps.append(f"the ledger's {table} table has no column {', '.join(lost)} (older schema): "
                        "whatever depends on it is shown as not recorded")
    return gaps


UNREAD_COLUMNS = ("held", "runner_started", "adopted_at", "trainer_cpu")  # the gateway's and recovery's: nothing a report shows depends on them
MISSING_TABLE = {
    "programs": "question, claim and budget unknown, so no verdicts",
    "experiments": "no lineage (who proposed what, on which commit)",
    "runs": "no runs, so no verdicts, noise floor or plots",
    "llm_spend": "LLM dollars not recorded",
    "agent_cpu": "the agents' own compute not recorded",
}


def select(db: sqlite3.Connection, table: str, cols: list[str], program: str) -> list[dict]:
    if not cols:
        return []
    key = "name" if table == "programs" else "program"
    where = f" WHERE {key} = ?" if key in cols else ""
    order = " ORDER BY id" if "id" in cols else ""
    rows = [dict(r) for r in db.execute(f"SELECT * FROM {table}{where}{order}", (program,) if where else ())]
    for row in rows if table == "runs" else ():  # as schema 5 spells a budget, whatever wrote it
        budget = budget_of(row)
        row["budget"] = budget and json.dumps({"kind": budget[0], "value": budget[1]}, sort_keys=True)
    return [run_row(r) for r in rows] if table == "runs" else rows
