"""`org launch` end to end, on a private tmux server, as a person uses it: an org of LLM agents
(a chief and two juniors on the fake LLM server, plus a scripted researcher) runs experiments
through the runner; a person takes a pane over, commits something, hands it back; the org is
stopped and launched again and resumes; the report comes out. Then crashes: SIGKILL of an
agent, of the runner, of the launching process and of the whole org, mid-run; the program
still completes with nothing lost or run twice. Then 16 scripted agents on one grid.

Panes are read with capture-pane, as a person would see them.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import git
import pytest

from fakellm import Call, FakeLLM, Repeat, Text, said
from org.agents.control import Control
from org.cli import main
from org.ledger import Ledger
from org.mail import Mail
from org.panes import Grid, read_state
from org.sandbox import available
from test_launch import eventually, org_project  # noqa: F401  (org_project is a fixture)

AGENTS = [{"name": "chief", "role": "chief", "backend": "anthropic", "model": "claude-chief"},
          {"name": "junior-a", "role": "junior", "backend": "openai", "model": "gpt-junior-a"},
          {"name": "junior-b", "role": "junior", "backend": "openai", "model": "gpt-junior-b"},
          {"name": "scripted-1", "role": "researcher", "backend": "scripted"}]
SECRET = "E2E-SECRET"  # in both API keys: it must reach the model server and nothing an agent runs
KEYS = {"ANTHROPIC_API_KEY": f"sk-ant-{SECRET}-1", "OPENAI_API_KEY": f"sk-openai-{SECRET}-2"}
RELEASED = "A person took over your pane"
CARRY_ON = "carry on after the restart"


def scripts():
    wait = lambda until: Repeat([Call("read_inbox", {"wait_seconds": 2})], until=until)
    return {
        "claude-chief": [
            [Text("Two juniors, one idea each."),
             Call("post_to_board", {"text": "Plan: junior-a tests gelu, junior-b tests learned positions."})],
            [Call("send_message", {"to": "junior-a", "text": "Run mlp=gelu against the baseline."}),
             Call("send_message", {"to": "junior-b", "text": "Run pos=learned against the baseline."})],
            wait(lambda body: said(body, "message from junior-a") and said(body, "message from junior-b")),
            [Call("results", {"wait_seconds": 120})],
            [Call("post_to_board", {"text": "Conclusion: both ideas measured; see the report."})],
            [Call("finish", {"summary": "conclusion posted"})]],
        "gpt-junior-a": [  # taken over and handed back before it submits
            wait(lambda body: said(body, "message from chief")),
            wait(lambda body: said(body, RELEASED)),
            [Call("submit_experiment", {"arm": "gelu", "overrides": {"mlp": "gelu"},
                                        "hypothesis": "gelu is no better than relu^2"})],
            [Call("send_message", {"to": "chief", "text": "gelu submitted."})],
            [Call("finish", {"summary": "gelu submitted"})]],
        "gpt-junior-b": [  # still waiting when the org is stopped; `org say` wakes it after the resume
            wait(lambda body: said(body, "message from chief")),
            [Call("submit_experiment", {"arm": "learned-pos", "overrides": {"pos": "learned"},
                                        "hypothesis": "learned positions are worse than rotary"})],
            wait(lambda body: said(body, CARRY_ON)),
            [Call("send_message", {"to": "chief", "text": "learned-pos submitted."})],
            [Call("finish", {"summary": "learned-pos submitted"})]],
    }


def ledger_runs(root: Path, **where) -> list[dict]:
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
        return ledger.runs("tiny", **where)


def transcript(root: Path, agent: str) -> list[dict]:
    path = root / ".lab" / "tiny" / "transcripts" / f"{agent}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def rehydrated(root: Path, agent: str) -> int:
    return sum(1 for line in transcript(root, agent) if line.get("event") == "rehydrated")


def head_of(root: Path, branch: str) -> str:
    with contextlib.closing(git.Repo(root)) as repo:
        return repo.heads[branch].commit.hexsha


def org(root: Path, *args: str) -> subprocess.Popen:
    """`org ARGS` in its own process, as a person's terminal runs it."""
    return subprocess.Popen([sys.executable, "-m", "org.cli", *args], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.skipif(available() is not None, reason=f"model agents launch only with a sandbox: {available()}")
def test_an_org_is_watched_taken_over_stopped_resumed_and_reported(org_project, monkeypatch, capsys):
    root = org_project(agents=AGENTS, topology="chief",
                       variants=[{"name": "no-softcap", "overrides": {"softcap": 0}}])
    lab = root / ".lab" / "tiny"
    with FakeLLM(scripts()) as llm:
        for name, value in {**KEYS, "ANTHROPIC_BASE_URL": llm.url, "OPENAI_BASE_URL": llm.url + "/v1"}.items():
            monkeypatch.setenv(name, value)  # org launch's; the keys reach only the gateway
        assert main(["launch", "tiny", "--stagger", "0.5"]) == 0
        grid = Grid(root, "tiny")

        # the grid: a labelled pane per agent, in its worktree, and the status pane
        grid_panes = [p for p in grid.panes() if p["window"] == "org"]
        assert [p["label"] for p in grid_panes] == ["chief", "junior-a", "junior-b", "scripted-1", "status"]
        for pane in grid_panes[:-1]:
            assert pane["cwd"] == str(root / "worktrees" / "tiny" / pane["label"])
        eventually(lambda: "→ post_to_board" in grid.capture("chief"), what="the chief's plan on its pane")

        # the keys: not in the tmux server's environment, nor in any process of the grid's
        assert SECRET not in "".join(grid.server.cmd("show-environment", "-g").stdout)
        tmux_pid = int(grid.server.cmd("display-message", "-p", "#{pid}").stdout[0])
        for pid in family(tmux_pid):
            with contextlib.suppress(OSError):
                assert SECRET.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), pid

        # experiments run through the runner
        eventually(lambda: len(ledger_runs(root, status="completed")) >= 2, 90, "runs to complete")
        runner_pid = read_state(lab / "panes" / "_runner.json")["pid"]
        assert {r["runner_pid"] for r in ledger_runs(root, status="completed")} == {runner_pid}

        # take junior-a over once it has its assignment; type in its pane; hand it back
        eventually(lambda: any(r.body.get("model") == "gpt-junior-a" and said(r.body, "message from chief")
                               for r in list(llm.requests)), what="junior-a's assignment")
        assert main(["takeover", "junior-a"]) == 0
        assert "junior-a is paused; its pane is yours" in capsys.readouterr().out
        assert Control(lab, "junior-a").state()["state"] == "paused"
        eventually(lambda: "── junior-a is paused: this pane is yours ──" in grid.capture("junior-a", taken=True),
                   what="the person's shell in junior-a's slot")
        eventually(lambda: any("junior-a" in line and "taken over" in line for line in grid.capture("status").splitlines()),
                   what="the status pane to show the takeover")
        person = grid.find("junior-a", taken=True)["id"]
        grid.type_into(person, "echo 'warmup looks short' > NOTE.md && git add NOTE.md && git commit -qm 'a note' && echo committed")
        eventually(lambda: "\ncommitted" in grid.capture("junior-a", taken=True), what="the person's commit")
        assert main(["release", "junior-a", "--message", "see NOTE.md"]) == 0
        assert grid.find("junior-a", taken=True) is None
        eventually(lambda: any(r.body.get("model") == "gpt-junior-a" and said(r.body, "warmup looks short")
                               for r in list(llm.requests)), what="junior-a to read the person's diff")

        # stop while junior-b waits and junior-a's runs are queued
        gelu = eventually(lambda: ledger_runs(root, arm="gelu"), what="junior-a's experiment")
        eventually(lambda: Control(lab, "junior-a").state()["reason"] == "finished: gelu submitted",
                   what="junior-a to end its turn")  # (a moment after the ledger has its runs)
        assert main(["stop", "tiny"]) == 0
        stopped = capsys.readouterr().out
        assert "stopped tiny" in stopped and "removed the worktrees of" in stopped
        assert not grid.server.is_alive() and not (root / "worktrees" / "tiny" / "chief").exists()
        queued = {r["id"] for r in ledger_runs(root, status="queued")}
        assert {r["id"] for r in gelu} <= queued
        branch_a = head_of(root, "agent/tiny/junior-a/work")
        assert Control(lab, "junior-a").state()["reason"] == "finished: gelu submitted"
        assert Control(lab, "junior-b").state()["reason"] == "stopped: org stop"

        # launch again: same branches and ledger, unfinished agents rehydrate, queued runs run
        waiting = org(root, "launch", "tiny", "--wait", "--stagger", "0.5")
        eventually(lambda: rehydrated(root, "junior-b") == 1, 60, "junior-b to rehydrate")
        assert main(["say", "junior-b", CARRY_ON]) == 0
        out, _ = waiting.communicate(timeout=240)
        assert waiting.returncode == 0, out
        assert "rehydrated" in grid.capture("junior-b")
        assert "junior-a: finished: gelu submitted" in grid.capture("junior-a")
        assert rehydrated(root, "junior-a") == 0 and rehydrated(root, "chief") == 1
        assert head_of(root, "agent/tiny/junior-a/work") == branch_a
        with contextlib.closing(git.Repo(root)) as repo:
            assert repo.git.show(f"{branch_a}:NOTE.md") == "warmup looks short"

        # every model call went through the gateway with the real key, and is metered once
        assert all(KEYS["ANTHROPIC_API_KEY"] == r.headers.get("x-api-key") or
                   f"Bearer {KEYS['OPENAI_API_KEY']}" == r.headers.get("authorization") for r in llm.requests)
        with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
            metered = Counter(r["agent"] for r in ledger._all("SELECT agent FROM llm_spend"))
        agent_of = {"claude-chief": "chief", "gpt-junior-a": "junior-a", "gpt-junior-b": "junior-b"}
        assert metered == Counter(agent_of[r.body["model"]] for r in llm.requests)

    # the report, printed by --wait, and the ledger behind it: every run once, all done
    assert "verdicts" in out and "report: " in out and "gelu" in out and "learned-pos" in out
    assert (root / "reports" / "tiny" / "README.md").exists()
    # the status pane redraws every 2 s, and the runner's keeper marks it ended a moment after the
    # ledger says the program is done (what `--wait` waits for)
    eventually(lambda: "runner: done" in grid.capture("status"), 20, "the status pane to show the runner done")
    assert "tiny · done" in grid.capture("status")   # finished, though its grid is still open to read
    runs = ledger_runs(root)
    assert {r["status"] for r in runs} == {"completed"}
    assert {r["id"] for r in runs if r["id"] in queued} == queued
    mains = Counter((r["arm"], r["seed"]) for r in runs if r["purpose"] == "main")
    assert mains == {(arm, seed): 1 for arm in ("baseline", "no-softcap", "gelu", "learned-pos") for seed in (0, 1)}
    assert "Conclusion: both ideas measured" in Mail(lab).board()


# ----------------------------------------------------------------------------------------
# crashes


def family(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def a_run_in_flight(root: Path) -> dict:
    """A run whose trainer started less than a second ago (so it is still running when killed)."""
    def fresh(run):
        started = datetime.fromisoformat(run["started_at"])
        return run["trainer_pid"] and (datetime.now(timezone.utc) - started).total_seconds() < 1.0
    return eventually(lambda: next((r for r in ledger_runs(root, status="running") if fresh(r)), None),
                      90, "a run just started")


@pytest.mark.slow
def test_sigkill_of_an_agent_the_runner_and_the_whole_org_loses_nothing(org_project):
    budget = {"per_run": {"steps": 2000}, "seeds": [0, 1, 2], "total_compute_seconds": 600,
              "total_llm_dollars": 0, "run_timeout_seconds": 60}
    root = org_project(budget=budget)
    lab, keeper = root / ".lab" / "tiny", lambda name: read_state(root / ".lab" / "tiny" / "panes" / f"{name}.json")
    orchestrator = org(root, "launch", "tiny", "--wait", "--stagger", "0")
    eventually(lambda: Control(lab, "solo").state()["state"] == "running", 60, "the agent to start")
    assert main(["say", "solo", "a note from the person"]) == 0

    # an agent, mid-run: its keeper restarts it, and it rehydrates
    a_run_in_flight(root)
    os.kill(keeper("solo")["pid"], signal.SIGKILL)
    eventually(lambda: keeper("solo").get("restarts") == 1 and rehydrated(root, "solo") == 1, 60, "the agent's restart")

    # the runner, mid-run: restarted; the run goes back to the queue
    killed = [a_run_in_flight(root)["id"]]
    os.kill(keeper("_runner")["pid"], signal.SIGKILL)
    eventually(lambda: keeper("_runner").get("restarts") == 1 and keeper("_runner")["state"] == "running",
               60, "the runner's restart")

    # the launching process: the org runs on without it
    done = len(ledger_runs(root, status="completed"))
    orchestrator.kill()
    orchestrator.wait()
    eventually(lambda: len(ledger_runs(root, status="completed")) > done, 90, "a run to complete without it")

    # the whole org at once: tmux, keepers, agent, runner, trainer
    killed.append(a_run_in_flight(root)["id"])
    grid = Grid(root, "tiny")
    server = int(grid.server.cmd("display-message", "-p", "#{pid}").stdout[0])
    for pid in family(server):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    eventually(lambda: grid.stale_socket(), 10, "tmux to die")

    relaunch = org(root, "launch", "tiny", "--wait", "--stagger", "0")
    out, _ = relaunch.communicate(timeout=240)
    assert relaunch.returncode == 0, out
    assert "removed a stale tmux socket" in out and "verdicts" in out

    runs = ledger_runs(root)
    assert {r["status"] for r in runs} == {"completed"}
    mains = Counter((r["arm"], r["seed"]) for r in runs if r["purpose"] == "main")
    assert mains == {(arm, seed): 1 for arm in ("baseline", "no-softcap") for seed in (0, 1, 2)}
    retried = [r for r in runs if r["id"] in killed]  # killed mid-run: recorded nowhere, run again
    assert len(retried) == len(set(killed)) and all(r["attempts"] >= 2 and r["attempt_log"] for r in retried)
    assert all(Path(f"{r['run_dir']}.attempt1").exists() for r in retried)  # the killed attempt, kept aside
    with Ledger(lab / "ledger.sqlite") as ledger:
        assert Counter(e["arm"] for e in ledger.experiments("tiny")) == {"baseline": 1, "no-softcap": 1}
    note = [line for line in transcript(root, "solo") if "a note from the person" in (line.get("text") or "")]
    assert len(note) == 1  # delivered once, through three restarts
    assert Mail(lab).board().count("Conclusion for tiny") == 1


# ----------------------------------------------------------------------------------------
# scale


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_sixteen_scripted_agents_fill_one_grid(org_project, capsys):
    agents = [{"name": f"r{i:02d}", "backend": "scripted"} for i in range(16)]
    root = org_project(agents=agents, budget={"per_run": {"steps": 3}, "seeds": [0], "total_compute_seconds": 600,
                                              "total_llm_dollars": 0, "run_timeout_seconds": 60})
    t0 = time.monotonic()
    assert main(["launch", "tiny", "--stagger", "0.25"]) == 0
    launched = time.monotonic() - t0
    grid, lab = Grid(root, "tiny"), root / ".lab" / "tiny"
    assert [p["label"] for p in grid.panes() if p["window"] == "org"] == [a["name"] for a in agents] + ["status"]
    peak = {}  # agent -> the most its keeper and agent held at once, sampled while they start and work

    def all_started():
        for a in agents:
            k = read_state(lab / "panes" / f"{a['name']}.json")
            peak[a["name"]] = max(peak.get(a["name"], 0), rss_mb(k.get("keeper", 0)) + rss_mb(k.get("pid", 0)))
        return all(Control(lab, a["name"]).state()["state"] != "unknown" for a in agents) and time.monotonic() - t0
    started = eventually(all_started, 180, "all 16 agents to start")
    keepers = [read_state(lab / "panes" / f"{a['name']}.json") for a in agents]
    per_agent = list(peak.values())
    with capsys.disabled():
        print(f"\n16 scripted agents: `org launch` returned in {launched:.1f}s, all agents up after "
              f"{started:.1f}s; RSS per agent (keeper + agent) {min(per_agent):.0f}-{max(per_agent):.0f} MB, "
              f"mean {sum(per_agent) / len(per_agent):.0f} MB; keeper alone {rss_mb(keepers[0]['keeper']):.0f} MB")
