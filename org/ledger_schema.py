"""
The ledger's schema (org/ledger.py writes it, org/ledger_read.py reads any version of it), and
how a ledger of an older schema is brought up to date when it is opened to write: MIGRATIONS[N]
takes version N to N + 1. Rows are never deleted, so every column an older nanolab wrote is
still there, or was moved into the run's record (FIGURE_COLUMNS, schema 8).
"""
from __future__ import annotations

SCHEMA_VERSION = 16

RUN_STATUSES = ("queued", "running", "completed", "diverged", "killed", "error", "invalid", "refused")

SCHEMA = f"""
CREATE TABLE schema_version (
    version     INTEGER NOT NULL,
    applied_at  TEXT NOT NULL
);
CREATE TABLE programs (
    name              TEXT PRIMARY KEY,
    spec              TEXT NOT NULL,   -- the validated program, JSON
    base_commit       TEXT NOT NULL,   -- protected paths are compared with this commit
    branch            TEXT NOT NULL,   -- program/<name>
    eval_fingerprint  TEXT,            -- from the first completed run: later runs must match
    data_fingerprint  TEXT,
    created_at        TEXT NOT NULL
);
CREATE TABLE experiments (
    id           INTEGER PRIMARY KEY,
    program      TEXT NOT NULL REFERENCES programs(name),
    arm          TEXT NOT NULL,
    who          TEXT NOT NULL,
    hypothesis   TEXT,
    source       TEXT NOT NULL,        -- declared (in the program file) | submitted
    base_commit  TEXT NOT NULL,
    code_commit  TEXT NOT NULL,
    diff         TEXT,                 -- git diff base_commit code_commit
    overrides    TEXT NOT NULL,        -- JSON: config keys set on top of the baseline's
    stage        TEXT NOT NULL,        -- tuning | measuring | refused | failed
    chosen       TEXT,                 -- JSON: the tune grid point picked on validation
    reason       TEXT,                 -- why refused or failed
    versus       TEXT,                 -- improve: the frontier arm it is measured against
    decision     TEXT,                 -- improve: JSON, the keep decision (org/improve.py)
    created_at   TEXT NOT NULL
);
CREATE UNIQUE INDEX declared_once ON experiments(program, arm) WHERE source = 'declared';
CREATE TABLE runs (
    id                 INTEGER PRIMARY KEY,
    experiment_id      INTEGER NOT NULL REFERENCES experiments(id),
    program            TEXT NOT NULL,
    arm                TEXT NOT NULL,
    purpose            TEXT NOT NULL,  -- tune | main | repeat (an interleaved baseline re-run) | replicate | rungN | xF | canary
    seed               INTEGER NOT NULL,
    round              INTEGER NOT NULL,  -- queue order: tuning first, then by seed index
    overrides          TEXT NOT NULL,  -- JSON: every --set of this run
    budget             TEXT NOT NULL,  -- JSON {{kind, value}}: the program's per-run budget, as result.json says it
    status             TEXT NOT NULL DEFAULT 'queued' CHECK (status IN {RUN_STATUSES}),
    reason             TEXT,
    slot               INTEGER,
    runner_host        TEXT,
    runner_pid         INTEGER,
    runner_started     TEXT,           -- its runner's boot and start time: after a reboot its pid may be another's
    trainer_pid        INTEGER,
    job_id             TEXT,           -- a cluster's job (runner.backend ray), chosen when claimed
    node               TEXT,           -- where the trainer ran: this host, or the cluster's node id
    kind               TEXT,           -- the cluster's kind of device it ran on (one per seed)
    machine            TEXT,           -- the device model it trained on, named by harness code there
    claim_seq          INTEGER,        -- order in which runs were claimed
    attempts           INTEGER NOT NULL DEFAULT 0,
    attempt_log        TEXT,           -- why earlier attempts were re-queued, one line each
    command            TEXT,           -- JSON argv
    run_dir            TEXT,
    metrics_path       TEXT,
    log_path           TEXT,
    wall_seconds       REAL,           -- measured by the runner, not the trainer
    lost_seconds       REAL,           -- its attempts that recorded nothing (re-queued): spent all the same
    git_commit         TEXT,           -- the code it ran: the experiment's commit (the runner's word)
    git_dirty          INTEGER,
    result             TEXT,           -- JSON trainer/record.py Result: result.json, the trainer's word
    measurement        TEXT,           -- JSON trainer/record.py Measurement: the harness's, the run's record
    measure_seconds    REAL,           -- runner time on it besides its trainer's: its commit checked and copied, its probe, its measurement
    created_at         TEXT NOT NULL,
    started_at         TEXT,           -- where its uncharged time began (claim, check, probe, trainer): recover charges from it
    adopted_at         TEXT,           -- when a recovering runner took up its measurement (what a later recovery charges from)
    trainer_cpu        REAL,           -- its trainer's box's CPU seconds, on record as it ended (a recovery's measurement has no box to read)
    finished_at        TEXT
);
CREATE UNIQUE INDEX runs_once ON runs(experiment_id, purpose, seed, overrides) WHERE purpose NOT IN ('repeat', 'canary');
CREATE INDEX runs_queue ON runs(program, status, round, id);
CREATE TABLE budget_changes (        -- `org budget`: the only way a started program's totals change
    id          INTEGER PRIMARY KEY,
    program     TEXT NOT NULL,
    field       TEXT NOT NULL,         -- total_compute_seconds | total_llm_dollars | run_timeout_seconds
    old         REAL,
    new         REAL NOT NULL,
    who         TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE llm_spend (
    id          INTEGER PRIMARY KEY,
    program     TEXT NOT NULL,
    agent       TEXT NOT NULL,
    model       TEXT NOT NULL,
    tokens_in   INTEGER NOT NULL,
    tokens_out  INTEGER NOT NULL,
    dollars     REAL NOT NULL,
    held        INTEGER NOT NULL DEFAULT 0,  -- a call in flight, at its worst case until the gateway meters it
    created_at  TEXT NOT NULL
);
CREATE TABLE agent_cpu (             -- the CPU time of an agent's box: one row per command or CLI stretch
    id          INTEGER PRIMARY KEY,
    program     TEXT NOT NULL,
    agent       TEXT NOT NULL,
    seconds     REAL NOT NULL,         -- all its processes' CPU seconds, by the box's cgroup
    what        TEXT NOT NULL,         -- command (the run tool's, git's) | claude-code | codex | submission (its commit taken in)
    created_at  TEXT NOT NULL
);
"""

# columns before schema 8 that copied a run's record (an older ledger read as it is still has them)
FIGURE_COLUMNS = ("val_bpb", "val_loss", "confirm_bpb", "steps", "tokens", "flops", "flops_per_token",
                  "params_total", "params_matmul", "train_seconds", "tokens_per_second", "device",
                  "eval_fingerprint", "data_fingerprint", "trainer_version")
MIGRATIONS = {  # from version N to N + 1
    1: ["ALTER TABLE runs ADD COLUMN confirm_bpb REAL", "ALTER TABLE runs ADD COLUMN measurement TEXT",
        "ALTER TABLE runs ADD COLUMN measure_seconds REAL"],
    2: [SCHEMA[SCHEMA.index("CREATE TABLE budget_changes"):SCHEMA.index("CREATE TABLE llm_spend")]
        .strip().rstrip(";").replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)],
    # the verdicts table was read (by the status pane) but never written: verdicts are the
    # referee's, computed from the runs each time they are shown, so there is nothing to keep
    3: ["DROP TABLE IF EXISTS verdicts"],
    # a run's budget was the program file's {flops: 3e12}; now (kind, value) everywhere, as in result.json
    4: ["UPDATE runs SET budget = (SELECT json_object('kind', key, 'value', value) FROM json_each(runs.budget)) "
        "WHERE json_extract(budget, '$.kind') IS NULL AND (SELECT count(*) FROM json_each(runs.budget)) = 1"],
    5: ["ALTER TABLE runs ADD COLUMN job_id TEXT", "ALTER TABLE runs ADD COLUMN node TEXT"],
    6: ["ALTER TABLE runs ADD COLUMN kind TEXT", "ALTER TABLE runs ADD COLUMN machine TEXT"],
    # a run's figures were columns too, copied from its record: now only the record (result and
    # measurement, as JSON) holds them, and run_row() reads them out for everyone
    7: [f"ALTER TABLE runs DROP COLUMN {c}" for c in FIGURE_COLUMNS],
    8: ["ALTER TABLE experiments ADD COLUMN versus TEXT", "ALTER TABLE experiments ADD COLUMN decision TEXT"],
    9: [SCHEMA[SCHEMA.index("CREATE TABLE agent_cpu"):].strip().rstrip(";").replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)],
    # an improvement program's canary (org/improve.py) runs a seed again for each try that climbs
    10: ["DROP INDEX IF EXISTS runs_once", SCHEMA[SCHEMA.index("CREATE UNIQUE INDEX runs_once"):].split(";")[0]],
    11: ["ALTER TABLE runs ADD COLUMN runner_started TEXT"],
    12: ["ALTER TABLE runs ADD COLUMN lost_seconds REAL"],
    13: ["ALTER TABLE llm_spend ADD COLUMN held INTEGER NOT NULL DEFAULT 0"],
    14: ["ALTER TABLE runs ADD COLUMN adopted_at TEXT"],
    15: ["ALTER TABLE runs ADD COLUMN trainer_cpu REAL"],
}
