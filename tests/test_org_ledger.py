"""The ledger: an SQLite registry that never forgets, with claims that survive crashes."""
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from org import process_identity
from org.ledger import Ledger, budget_of
from org.ledger_schema import SCHEMA_VERSION
from org.ledger_read import read_tables
from trainer.record import Result, read

RESULT = {"status": "completed", "reason": None, "val_bpb": 2.5, "val_loss": 1.7, "steps": 10,
          "tokens": 640, "flops": 1e9, "flops_per_token": 1.5e6, "params": {"total": 300, "matmul": 200},
          "budget": {"kind": "steps", "value": 10}, "train_seconds": 1.5, "tokens_per_second": 426.7,
          "device": "cpu:x86_64x2", "seed": 0, "git_commit": "abc", "git_dirty": False,
          "eval_fingerprint": "e" * 64, "data_fingerprint": "d" * 64, "trainer_version": "0.1.0"}


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.add_program("softcap", {"name": "softcap"}, base_commit="base", branch="program/softcap")
        yield ledger


def add_experiment(ledger, arm, seeds=(0, 1, 2), source="submitted"):
    experiment_id = ledger.add_experiment("softcap", arm, who="alice", source=source, base_commit="base",
                                          code_commit="base", overrides={"softcap": 0}, stage="measuring",
                                          hypothesis="no regression")
    experiment = ledger.experiment(experiment_id)
    for i, seed in enumerate(seeds):
        ledger.add_run(experiment, "main", seed, 1 + i, {"softcap": 0}, ("steps", 10))
    return experiment


def claim_in_a_process_that_dies(path):
    """A runner that claims a run and then vanishes without recording anything."""
    code = f"from org.ledger import Ledger; print(Ledger({str(path)!r}).claim('softcap', 0)['id'])"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout)


def test_schema_wal_and_version(ledger):
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger.db.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert ledger.counts() == {"programs": 1, "experiments": 0, "runs": 0, "llm_spend": 0, "agent_cpu": 0}
    with Ledger(ledger.path) as again:  # reopening migrates nothing and loses nothing
        assert again.program("softcap")["base_commit"] == "base"


def test_runs_are_claimed_round_by_round(ledger):
    baseline = add_experiment(ledger, "baseline", source="declared")
    add_experiment(ledger, "no-softcap")
    order = []
    while (run := ledger.claim("softcap", slot=0)) is not None:
        order.append((run["arm"], run["seed"]))
        assert run["status"] == "running" and run["attempts"] == 1 and run["claim_seq"] == len(order)
    assert order == [("baseline", 0), ("no-softcap", 0), ("baseline", 1), ("no-softcap", 1),
                     ("baseline", 2), ("no-softcap", 2)]
    assert ledger.add_experiment("softcap", "baseline", who="x", source="declared", base_commit="b",
                                 code_commit="b", overrides={}, stage="measuring") is None
    assert ledger.add_run(baseline, "main", 0, 1, {"softcap": 0}, ("steps", 10)) is None  # no duplicates


def test_a_lost_cluster_job_that_names_no_node_changes_nothing(ledger):
    """A Ray job lost with its node names neither node nor device: the runner once died of the
    empty UPDATE this made (`near "WHERE": syntax error`), the flake of the node-death test."""
    add_experiment(ledger, "no-softcap", seeds=(0,))
    run = ledger.claim("softcap", slot=0)
    ledger.set_job(run["id"], job_id="nanolab-1")
    ledger.set_job(run["id"], node=None, machine=None)
    assert ledger.run(run["id"])["job_id"] == "nanolab-1" and ledger.run(run["id"])["node"] is None


def test_claim_can_prefer_an_arm(ledger):
    add_experiment(ledger, "no-softcap")
    add_experiment(ledger, "baseline", source="declared")
    assert ledger.claim("softcap", 0, arm="baseline")["arm"] == "baseline"
    assert ledger.claim("softcap", 0, arm="missing") is None


def test_finish_records_every_result_field(ledger):
    add_experiment(ledger, "no-softcap", seeds=[0])
    run = ledger.claim("softcap", 0)
    ledger.finish(run["id"], "completed", result=read(Result, RESULT, "result.json"), wall_seconds=2.25)
    row = ledger.run(run["id"])
    assert row["status"] == "completed" and row["wall_seconds"] == 2.25 and row["finished_at"]
    assert (row["val_bpb"], row["steps"], row["flops"], row["params"]) == \
        (2.5, 10, 1e9, {"total": 300, "matmul": 200})  # the record's figures, flat in the row
    assert row["eval_fingerprint"] == "e" * 64 and row["device"] == "cpu:x86_64x2"
    assert ledger.runs("softcap", status="completed", arm="no-softcap") == [row]
    assert ledger.compute_seconds("softcap") == 2.25


def test_a_dead_runners_run_goes_back_to_the_queue(ledger):
    add_experiment(ledger, "no-softcap", seeds=[0, 1])
    run_id = claim_in_a_process_that_dies(ledger.path)
    mine = ledger.claim("softcap", 0)  # this process is alive: its claim is not stale
    stale = ledger.stale_runs("softcap")
    assert [r["id"] for r in stale] == [run_id] and mine["id"] != run_id
    ledger.requeue(run_id, "runner died")
    again = ledger.claim("softcap", 0)
    assert again["id"] == run_id and again["attempts"] == 2 and again["runner_pid"] != stale[0]["runner_pid"]
    assert again["attempt_log"].endswith("attempt 1: runner died\n")


def test_a_run_whose_runners_pid_is_another_process_now_is_stale(ledger):
    """After a reboot, or a container's restart, pids repeat: the dead runner's pid may be a live
    process's, the new runner's own even, and its run waited for that runner for good. A claim
    records its runner's boot and start time too: a live pid with other ones is not its runner."""
    add_experiment(ledger, "no-softcap", seeds=[0, 1])
    mine = ledger.claim("softcap", 0)
    before_reboot = ledger.claim("softcap", 0)
    with sqlite3.connect(ledger.path) as db:  # as the ledger was left: this process's pid, another boot
        db.execute("UPDATE runs SET runner_started = 'another-boot:1234' WHERE id = ?", (before_reboot["id"],))
    assert before_reboot["runner_pid"] == mine["runner_pid"] == os.getpid()
    assert mine["runner_started"] == process_identity(os.getpid()) is not None
    assert [r["id"] for r in ledger.stale_runs("softcap")] == [before_reboot["id"]]
    with sqlite3.connect(ledger.path) as db:  # claimed by an older nanolab: the pid alone decides
        db.execute("UPDATE runs SET runner_started = NULL WHERE id = ?", (before_reboot["id"],))
    assert ledger.stale_runs("softcap") == []


def test_concurrent_claimers_never_share_a_run(ledger):
    add_experiment(ledger, "no-softcap", seeds=range(40))
    code = (f"from org.ledger import Ledger\nl = Ledger({str(ledger.path)!r})\n"
            "while (r := l.claim('softcap', 0)) is not None: print(r['id'])")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    claimed = [int(line) for p in procs for line in p.communicate()[0].split()]
    assert sorted(claimed) == sorted(r["id"] for r in ledger.runs("softcap"))  # each exactly once


def test_a_failed_transaction_leaves_nothing(ledger):
    with pytest.raises(RuntimeError):
        with ledger.tx():
            add_experiment(ledger, "half-done")
            raise RuntimeError("crash mid-transaction")
    assert ledger.experiments("softcap") == [] and ledger.runs("softcap") == []


def test_refused_runs_and_spend_stay_queryable(ledger):
    experiment_id = ledger.add_experiment("softcap", "edit-eval", who="bob", source="submitted",
                                          base_commit="base", code_commit="bad", overrides={},
                                          stage="refused", reason="protected paths differ: trainer/eval.py")
    ledger.add_run(ledger.experiment(experiment_id), "main", 0, 1, {}, ("steps", 10),
                   status="refused", reason="protected paths differ: trainer/eval.py")
    assert ledger.runs("softcap", status="refused")[0]["reason"].endswith("trainer/eval.py")
    ledger.record_spend("softcap", "alice", "claude-x", 1000, 200, 0.02)
    ledger.record_spend("softcap", "alice", "claude-x", 500, 100, 0.01)
    ledger.record_spend("softcap", "bob", "gpt-x", 10, 10, 0.005)
    spend = ledger.spend("softcap")
    assert spend["agents"]["alice"] == {"tokens_in": 1500, "tokens_out": 300, "dollars": pytest.approx(0.03)}
    assert spend["dollars"] == pytest.approx(0.035)


def test_a_calls_hold_is_apart_until_metered_and_a_dead_gateways_is_charged_its_worst_case(ledger):
    """The gateway holds a call's worst case as a row before it goes upstream: apart from the
    spend while in flight, its usage once metered, gone if the provider refused it, and its worst
    case for good if the gateway died first (charge_held, at the next gateway's start)."""
    metered, refused, lost = (ledger.record_spend("softcap", "alice", "claude-x", 4000, 1000, 0.5, held=True)
                              for _ in range(3))
    assert ledger.spend("softcap") == {"agents": {}, "dollars": 0, "held": {"alice": pytest.approx(1.5)}}
    ledger.meter_spend(metered, 1000, 200, 0.02)
    ledger.let_go(refused)
    ledger.let_go(metered)  # (metered: not a hold any more, so it stays)
    assert ledger.spend("softcap")["agents"]["alice"]["dollars"] == pytest.approx(0.02)
    assert ledger.spend("softcap")["held"] == {"alice": pytest.approx(0.5)}
    assert [r["id"] for r in ledger.charge_held("softcap")] == [lost]
    spend = ledger.spend("softcap")
    assert spend["dollars"] == pytest.approx(0.52) and spend["held"] == {} and ledger.charge_held("softcap") == []


def test_bad_status_is_rejected_by_the_schema(ledger):
    experiment = add_experiment(ledger, "x", seeds=[0])
    with pytest.raises(sqlite3.IntegrityError):
        ledger.add_run(experiment, "main", 9, 1, {}, ("steps", 10), status="lost")


def test_a_version_3_ledger_loses_only_its_never_written_verdicts_table(tmp_path):
    """Verdicts are the referee's, computed from the runs each time; the table that was meant to
    store them was never written, so the migration drops it and keeps everything else."""
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.add_program("softcap", {"name": "softcap"}, base_commit="base", branch="program/softcap")
        ledger.record_spend("softcap", "alice", "claude-x", 10, 10, 0.01)
        ledger.db.execute("CREATE TABLE verdicts (id INTEGER PRIMARY KEY, program TEXT)")  # as version 3 had it
        ledger.db.execute("UPDATE schema_version SET version = 3")
    with Ledger(path) as ledger:
        tables = {r[0] for r in ledger.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "verdicts" not in tables and ledger.program("softcap")["base_commit"] == "base"
        assert ledger.db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert ledger.spend("softcap")["dollars"] == 0.01


def test_a_version_10_ledger_runs_a_canary_again_for_each_try_and_anything_else_once(tmp_path):
    """An improvement program's canary re-runs a seed its frontier ran before, once per try that
    climbs against it; the index that makes planning idempotent let it run only once."""
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.add_program("softcap", {"name": "softcap"}, base_commit="base", branch="program/softcap")
        experiment = add_experiment(ledger, "frontier-1", seeds=[7])
        ledger.db.execute("DROP INDEX runs_once")  # as version 10 had it
        ledger.db.execute("CREATE UNIQUE INDEX runs_once ON runs(experiment_id, purpose, seed, overrides) "
                          "WHERE purpose != 'repeat'")
        ledger.db.execute("UPDATE schema_version SET version = 10")
    with Ledger(path) as ledger:
        assert ledger.db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        twice = [ledger.add_run(experiment, "canary", 9, 1, {"softcap": 0}, ("steps", 10)) for _ in range(2)]
        assert None not in twice and len(set(twice)) == 2
        assert ledger.add_run(experiment, "main", 7, 1, {"softcap": 0}, ("steps", 10)) is None  # planned already


def test_a_version_4_ledger_spells_its_budgets_as_kind_and_value(ledger):
    """Before schema 5 a run's budget was the program file's {steps: 10}; result.json's
    {kind, value} is the one spelling now, for old runs too (the report reads old ledgers
    without migrating them: read_tables gives them the same spelling)."""
    experiment = add_experiment(ledger, "baseline", seeds=[0, 1])
    ledger.db.execute("UPDATE runs SET budget = '{\"steps\": 10}'")
    ledger.db.execute("UPDATE schema_version SET version = 4")
    ledger.close()
    rows, _, _ = read_tables(ledger.path, "softcap", ["runs"])
    assert [json.loads(r["budget"]) for r in rows["runs"]] == [{"kind": "steps", "value": 10.0}] * 2
    with Ledger(ledger.path) as again:
        assert [json.loads(r["budget"]) for r in again.runs("softcap")] == [{"kind": "steps", "value": 10}] * 2
        assert [budget_of(r) for r in again.runs("softcap", experiment_id=experiment["id"])] == [("steps", 10.0)] * 2


def test_a_version_7_ledger_keeps_its_runs_figures_in_the_record_alone(ledger):
    """Before schema 8 a run's figures were copied into columns beside its record; the
    migration drops the copies, and every reader gets the same figures from the record."""
    add_experiment(ledger, "baseline", seeds=[0])
    run = ledger.claim("softcap", 0)
    ledger.finish(run["id"], "completed", result=read(Result, RESULT, "result.json"), wall_seconds=2.0)
    before = ledger.run(run["id"])
    for column, kind in (("val_bpb", "REAL"), ("steps", "INTEGER"), ("params_total", "INTEGER")):  # as version 7 had them
        ledger.db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
    ledger.db.execute("UPDATE runs SET val_bpb = 2.5, steps = 10, params_total = 300")
    ledger.db.execute("UPDATE schema_version SET version = 7")
    ledger.close()
    rows, _, _ = read_tables(ledger.path, "softcap", ["runs"])  # a report reads it as it is
    assert (rows["runs"][0]["val_bpb"], rows["runs"][0]["params"]) == (2.5, {"total": 300, "matmul": 200})
    with Ledger(ledger.path) as again:
        assert not {"val_bpb", "steps", "params_total"} & {r[1] for r in again.db.execute("PRAGMA table_info(runs)")}
        after = again.run(run["id"])
        assert after == before and after["result"].val_bpb == after["val_bpb"] == 2.5
        assert after["tokens_per_second"] == 426.7  # unmeasured: the trainer's word, as recorded
