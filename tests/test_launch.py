"""`org launch` and the commands around it, on real tmux servers (a private socket per test) and
real git repositories: the grid, bad input (nothing half-built, or a recovery that says what it
did), `org stop`, `org say`, and a key in a pane that takes it over.

Each test builds a small committed project (a copy of the trainer, programs/tiny.yaml, a tiny
corpus) with scripted agents, so no model and no key is needed. Whatever a test launched is
stopped afterwards and its tmux server killed.
"""
import contextlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from datetime import datetime
from pathlib import Path

import git
import pytest
import yaml

from agentlab import tiny_program
from org.agents.control import Control
from org.cgroups import cgroup_root
from org.cli import main
from org.lab import Lab
from org.ledger import Ledger
from org import pid_alive
from org.mail import Mail
from org.panes import Grid, read_state

ROOT = Path(__file__).resolve().parents[1]
SOLO = [{"name": "solo", "role": "researcher", "backend": "scripted"}]


@pytest.fixture
def org_project(tmp_path, monkeypatch):
    """org_project(agents, **program changes) -> the root of a committed project, not started;
    the current directory is the root."""
    made = []

    def make(agents=SOLO, topology="solo", identity=True, **changes) -> Path:
        root = tmp_path / "proj"
        shutil.copytree(ROOT / "trainer", root / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("the cat sat on the mat and the dog sat on the log. " * 400)
        program = tiny_program(agents, topology=topology, corpus=str(corpus), **changes)
        (root / "programs").mkdir()
        (root / "programs" / "tiny.yaml").write_text(yaml.safe_dump(program, sort_keys=False))
        (root / ".gitignore").write_text("__pycache__/\n")
        repo = git.Repo.init(root, initial_branch="main")
        if identity:
            with repo.config_writer() as cw:
                cw.set_value("user", "name", "Test").set_value("user", "email", "test@example.com")
        repo.git.add(A=True)
        repo.git.commit("-m", "project", env={"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
                                               "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com"})
        repo.close()
        monkeypatch.chdir(root)
        made.append(root)
        return root

    yield make
    for root in made:  # stop whatever is still up: agents, runner, trainers, the tmux server
        if Grid(root, "tiny").server.is_alive() or (root / ".lab" / "tiny" / "panes").exists():
            main(["stop", "tiny", "--timeout", "5"])
        Grid(root, "tiny").kill()


def eventually(check, timeout=60.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("org: ") and err.count("\n") == 1, err
    return err


def branches(root: Path) -> list[str]:
    with contextlib.closing(git.Repo(root)) as repo:
        return sorted(h.name for h in repo.heads)


def nothing_created(root: Path, branches_before: list[str]) -> bool:
    with contextlib.closing(git.Repo(root)) as repo:
        trees = repo.git.worktree("list").splitlines()
    return (not (root / ".lab").exists() and not (root / "worktrees").exists() and len(trees) == 1
            and branches(root) == branches_before and not Grid(root, "tiny").server.is_alive())


# ----------------------------------------------------------------------------------------
# checks first: a clear line, a non-zero exit, nothing created


def no_tmux_on_path(root, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"  # git, but no tmux
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bin_dir))


def an_agent_without_its_key(root, monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    program = yaml.safe_load((root / "programs" / "tiny.yaml").read_text())
    program["org"]["agents"].append({"name": "claude", "backend": "anthropic", "model": "claude-test"})
    (root / "programs" / "tiny.yaml").write_text(yaml.safe_dump(program))
    git.Repo(root).git.commit("-am", "an anthropic agent")


def a_keys_file_others_can_read(root, monkeypatch, tmp_path):
    an_agent_without_its_key(root, monkeypatch, tmp_path)
    (tmp_path / "keys.env").write_text("ANTHROPIC_API_KEY=sk-ant-test\n")
    (tmp_path / "keys.env").chmod(0o644)
    monkeypatch.setenv("NANOLAB_KEYS_FILE", str(tmp_path / "keys.env"))


def a_branch_with_other_history(root, monkeypatch, tmp_path):
    repo = git.Repo(root)
    repo.git.checkout("--orphan", "elsewhere")
    repo.git.commit("-m", "unrelated history", "--allow-empty")
    repo.git.branch("agent/tiny/solo")
    repo.git.checkout("main")


def no_sandbox_for_a_model_agent(root, monkeypatch, tmp_path):
    an_agent_without_its_key(root, monkeypatch, tmp_path)
    bin_dir = tmp_path / "bin"  # git and tmux, but no bwrap
    bin_dir.mkdir()
    for tool in ("git", "tmux"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


def a_claude_code_agent(root, monkeypatch, tmp_path, claude_says: str | None):
    """A claude-code agent, its key set, and a CLI folder holding a `claude` that prints
    `claude_says` for its version (None: no claude at all, on PATH or there)."""
    program = yaml.safe_load((root / "programs" / "tiny.yaml").read_text())
    program["org"]["agents"].append({"name": "cc", "backend": "claude-code", "model": "claude-test"})
    (root / "programs" / "tiny.yaml").write_text(yaml.safe_dump(program))
    git.Repo(root).git.commit("-am", "a claude-code agent")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    clis = tmp_path / "clis"
    (clis / "node_modules" / ".bin").mkdir(parents=True)
    monkeypatch.setenv("NANOLAB_CLIS", str(clis))
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                if not (Path(p) / "claude").exists()))
    if claude_says is not None:
        fake = clis / "node_modules" / ".bin" / "claude"
        fake.write_text(f"#!/bin/sh\necho '{claude_says}'\n")
        fake.chmod(0o755)


def no_agents(root, monkeypatch, tmp_path):
    program = yaml.safe_load((root / "programs" / "tiny.yaml").read_text())
    program["org"]["agents"] = []
    (root / "programs" / "tiny.yaml").write_text(yaml.safe_dump(program))
    git.Repo(root).git.commit("-am", "no agents")


BAD_ENVIRONMENTS = {
    "tmux missing": (no_tmux_on_path, "tmux is not installed (or not on PATH)"),
    "an API key missing": (an_agent_without_its_key,
                           "agent claude (backend anthropic) needs ANTHROPIC_API_KEY in the environment (or "
                           "in the file NANOLAB_KEYS_FILE names); or launch with --backend scripted"),
    "a keys file others can read": (a_keys_file_others_can_read, "keys.env: readable by others (mode 644); chmod 600"),
    "a branch with other history": (a_branch_with_other_history,
                                    "branch agent/tiny/solo exists with other history"),
    "no agents": (no_agents, "org.agents is empty: nobody to launch"),
    "no sandbox for a model agent": (no_sandbox_for_a_model_agent,
                                     "no sandbox: the bwrap command is not installed; install bubblewrap"),
    "a CLI missing": (lambda *a: a_claude_code_agent(*a, claude_says=None),
                      "agent cc (backend claude-code) needs the claude CLI, which is not installed; "
                      "run `org install-clis`"),
    "a CLI of another version": (lambda *a: a_claude_code_agent(*a, claude_says="1.0.3 (Claude Code)"),
                                 "agent cc (backend claude-code) needs claude 2.1.332, found '1.0.3 (Claude Code)'"),
}


@pytest.mark.parametrize("case", BAD_ENVIRONMENTS)
def test_launch_checks_everything_first_and_creates_nothing(case, org_project, monkeypatch, tmp_path, capsys):
    root = org_project()
    setup, expected = BAD_ENVIRONMENTS[case]
    setup(root, monkeypatch, tmp_path)
    before = branches(root)
    assert main(["launch", "tiny"]) == 2
    assert expected in one_line_error(capsys)
    assert nothing_created(root, before)


# ----------------------------------------------------------------------------------------
# the grid


def test_the_status_table_keeps_every_agents_name_however_long_what_it_does():
    """Sized to its content, a long "doing" once squeezed the agent column out of the line (it
    failed a CI run: `org status` printed no agent's name)."""
    import io
    from rich.console import Console
    from org.status import agents_table
    rows = [("solo", "working", "run(" + "x" * 200 + ")", "0"), ("second", "waiting", "results(wait_seconds=60)", "1"),
            ("third", "finished", "finished: [/x]", "0")]  # an agent's words, not rich's markup (MarkupError)
    for width in (80, 50):
        out = io.StringIO()
        Console(file=out, width=width).print(agents_table(rows))
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("agent") and lines[1].startswith("solo    working") and lines[2].startswith("second")
        assert lines[1].endswith("…") and max(map(len, lines)) <= width  # only "doing" gave way
        assert lines[3].rstrip().endswith("finished: [/x]")


def test_an_agents_state_is_read_whatever_its_last_call_holds(tmp_path):
    """`org status` reads each agent's last tool call from its transcript, written before the
    call is checked: `wait_seconds: "x"` there raised TypeError, and the status pane crashed
    until its keeper gave up; an escape sequence in it reached the person's terminal."""
    from types import SimpleNamespace
    from org.status import agent_state
    (tmp_path / "transcripts").mkdir()
    calls = [{"id": "1", "name": "read_inbox", "args": {"wait_seconds": 1800}},
             {"id": "2", "name": "read_inbox", "args": {"wait_seconds": "x", "note": "\x1b]52;c;eA==\x07"}}]
    lines = [{"kind": "system"}, {"kind": "assistant", "text": "", "calls": calls}]
    (tmp_path / "transcripts" / "solo.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    site = SimpleNamespace(keeper=lambda agent: {"state": "running"}, control_state=lambda agent: {"state": "running"},
                           lab_dir=tmp_path)
    state, doing = agent_state(site, "solo", True)
    assert state == "working" and doing.startswith('read_inbox(wait_seconds="x"')
    (tmp_path / "transcripts" / "solo.jsonl").write_text(json.dumps(lines[1]) + "\n")  # its first line: not a cut one
    assert agent_state(site, "solo", True)[1].startswith('read_inbox(wait_seconds="x"')
    long = [{"kind": "system", "text": "x" * 70_000}, lines[1]]  # a tail starts mid-line: that line goes
    (tmp_path / "transcripts" / "solo.jsonl").write_text("".join(json.dumps(line) + "\n" for line in long))
    assert agent_state(site, "solo", True)[1].startswith('read_inbox(wait_seconds="x"')


def test_an_agents_own_summary_does_not_say_what_stopped_it():
    """`out of budget` is the harness's word: an agent that finished with "LLM budget" in its summary
    read as out of budget (so a person might raise the budget of an agent that was done)."""
    from types import SimpleNamespace
    from org.status import agent_state
    for reason, state in (("finished: done; the LLM budget held", "finished"),
                          ("the program's LLM budget is spent ($1.0000 of $1)", "out of budget"),
                          ("stopped by a person", "stopped")):
        site = SimpleNamespace(keeper=lambda agent: {"state": "ended"},
                               control_state=lambda agent, reason=reason: {"state": "stopped", "reason": reason})
        assert agent_state(site, "solo", False) == (state, reason)


def test_a_pane_whose_keeper_was_killed_reads_gone_not_its_last_word():
    """A keeper killed (with its command): its record still said `running` or `waiting`, and `org
    status` showed the runner "serving the queue" and the agent waiting, while the pane was dead."""
    import subprocess
    from types import SimpleNamespace
    from org.status import agent_state, runner_line
    dead = subprocess.Popen(["true"])
    dead.wait()
    for last in ("running", "waiting", "restarting"):
        site = SimpleNamespace(keeper=lambda agent, last=last: {"state": last, "keeper": dead.pid, "pid": dead.pid},
                               control_state=lambda agent: {"state": "running"}, name="softcap")
        assert agent_state(site, "solo", True) == ("gone", "its pane's keeper was killed: `org launch softcap` restarts it")
        assert runner_line(site, True) == "runner: gone (its pane's keeper was killed: `org launch softcap` restarts it)"
    alive = SimpleNamespace(keeper=lambda agent: {"state": "waiting", "keeper": os.getpid()},
                            control_state=lambda agent: {"state": "running"}, name="softcap")
    assert agent_state(alive, "solo", True)[0] == "starting" and runner_line(alive, True) == "runner: waiting"


def test_the_grid_has_a_labelled_pane_per_agent_in_its_worktree(org_project, capsys):
    root = org_project(agents=SOLO + [{"name": "second", "backend": "scripted"}])
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    out = capsys.readouterr().out
    grid = Grid(root, "tiny")
    assert "launched tiny: 2 agents" in out and "org attach tiny" in out and grid.socket in out
    panes = {p["label"]: p for p in grid.panes()}
    assert [p["label"] for p in grid.panes() if p["window"] == "org"] == ["solo", "second", "status"]
    assert panes["runner"]["window"] == "runner"
    for agent in ("solo", "second"):
        assert Path(panes[agent]["cwd"]) == root / "worktrees" / "tiny" / agent
        header = grid.server.cmd("display-message", "-p", "-t", panes[agent]["id"], "#{E:pane-border-format}").stdout[0]
        assert header.strip() == f"{agent} · researcher · scripted · C-b T takes over"
    assert "run-shell" in "".join(grid.server.cmd("list-keys", "-T", "prefix", "T").stdout)
    # the agents run: the status pane (as a person sees it) and `org status` say so
    eventually(lambda: "solo" in grid.capture("status") and "runner:" in grid.capture("status"), what="the status pane")
    eventually(lambda: Control(root / ".lab" / "tiny", "solo").state()["state"] in ("running", "stopped"),
               what="the agent to start")
    assert main(["status", "tiny"]) == 0
    status = capsys.readouterr().out
    assert "tiny · running" in status and "solo" in status and "runner:" in status and "runs:" in status

    # a second launch is refused; once a pane has died, launching again restarts that pane
    assert main(["launch", "tiny"]) == 2
    assert "tiny is already running (tmux session org-tiny)" in one_line_error(capsys)
    os.kill(int(panes["status"]["pid"]), signal.SIGKILL)
    eventually(lambda: grid.find("status")["dead"], what="the status pane to die")
    assert main(["launch", "tiny"]) == 0
    assert "restarted its crashed panes: status" in capsys.readouterr().out
    eventually(lambda: not grid.find("status")["dead"] and "runner:" in grid.capture("status"), what="a new status pane")


def test_launch_wait_again_waits_for_a_running_org_and_reports_a_done_one(org_project, capsys):
    """README's command run again (its wait stopped with Ctrl-C, or run twice): it waits or reports."""
    root = org_project()
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    capsys.readouterr()
    assert main(["launch", "tiny", "--wait"]) == 0  # running: it waits for it
    out = capsys.readouterr().out
    assert "tiny is already running (tmux session org-tiny)" in out and "waiting for tiny to finish" in out
    assert "verdicts" in out and (root / "reports" / "tiny" / "README.md").exists()
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:  # it said how far the runs were as they went
        runs = str(len(ledger.runs("tiny")))
    shown = re.findall(r"^  \d\d:\d\d (\d+) of (\d+) runs done, (\d+) running; compute \d+ s of \d+ s$", out, re.M)
    assert shown and shown[-1] == (runs, runs, "0"), out  # (a line as runs start and end: none the same twice)
    assert len(shown) == len(set(shown)) and [int(s[0]) for s in shown] == sorted(int(s[0]) for s in shown), out
    assert Grid(root, "tiny").running()  # its panes stay up for reading

    assert main(["launch", "tiny", "--wait"]) == 0  # done, its grid still open: the report again
    out = capsys.readouterr().out
    assert "tiny is done: every agent has finished" in out and "verdicts" in out and "already running" not in out
    assert main(["launch", "tiny"]) == 0
    assert "tiny is done" in capsys.readouterr().out


def test_an_agent_that_keeps_crashing_is_marked_crashed_and_launch_restarts_it(org_project, capsys):
    root = org_project(budget={**tiny_program([])["budget"], "per_run": {"steps": 400}})
    assert main(["launch", "tiny", "--stagger", "0", "--restarts", "1"]) == 0
    grid, keeper = Grid(root, "tiny"), lambda: read_state(root / ".lab" / "tiny" / "panes" / "solo.json")
    for restarts in (0, 1):  # one restart allowed, so the second crash is the last
        pid = eventually(lambda: keeper().get("state") == "running" and keeper().get("restarts") == restarts
                         and keeper()["pid"], what=f"the agent's start number {restarts + 1}")
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: keeper().get("state") == "crashed", what="the keeper to give up")
    eventually(lambda: "solo CRASHED: signal 9, after 1 restarts" in grid.capture("solo").replace("\n", ""),
               what="the pane to say so")  # (the keeper records the state, then prints)
    eventually(lambda: "crashed" in grid.capture("status"), what="the status pane to show it")
    assert main(["status", "tiny"]) == 0
    assert "crashed" in capsys.readouterr().out
    assert main(["launch", "tiny"]) == 0
    assert "restarted its crashed panes: solo" in capsys.readouterr().out
    eventually(lambda: keeper().get("state") == "running", what="the agent to run again")


def test_a_pane_that_ran_a_while_before_it_crashed_has_its_restarts_back(tmp_path):
    """An org runs for days, and its runner now stops on what a person mends (a full disk): its
    keeper's restarts, counted over its whole life, ran out. They are counted in a row: a crash
    after `healthy` seconds of running starts the count again."""
    runs, state = tmp_path / "runs", tmp_path / "runner.json"
    crash = ("import pathlib, sys, time; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; "
             "p.write_text(str(n + 1)); time.sleep(1.5 if n == 1 else 0); sys.exit(1)")  # (the second runs 1.5 s)
    keep = ("import json, sys; from pathlib import Path; from org.panes import keep; "
            "keep(json.loads(sys.argv[1]), Path(sys.argv[2]), 'runner', restarts=1, healthy=1.0)")
    keeper = subprocess.Popen([sys.executable, "-c", keep, json.dumps([sys.executable, "-c", crash, str(runs)]), str(state)],
                              env={k: v for k, v in os.environ.items() if not k.startswith("TMUX")},  # (no grid to wait for)
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        eventually(lambda: state.exists() and read_state(state).get("state") == "crashed", what="the keeper to give up")
    finally:
        os.killpg(keeper.pid, signal.SIGKILL)
        keeper.wait()
    assert runs.read_text() == "3"  # (a quick crash, a healthy one, a quick one: one restart in a row each time)


def test_a_stale_socket_and_a_half_built_session_are_cleaned_up(org_project, capsys):
    root = org_project()
    grid = Grid(root, "tiny")
    tmux = ["tmux", "-L", grid.socket, "-f", "/dev/null"]
    subprocess.run(tmux + ["new-session", "-d", "-s", "elsewhere"], check=True)
    server = int(subprocess.run(tmux + ["display-message", "-p", "#{pid}"], capture_output=True, text=True).stdout)
    os.kill(server, signal.SIGKILL)  # a crashed server leaves its socket behind
    eventually(lambda: not pid_alive(server), what="tmux to die")
    assert grid.stale_socket()
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    assert f"removed a stale tmux socket (its server is gone): {grid.socket_path}" in capsys.readouterr().out
    assert grid.running()
    main(["stop", "tiny"])

    subprocess.run(tmux + ["new-session", "-d", "-s", "org-tiny"], check=True)  # a launch killed half-way
    assert not grid.running()
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    assert "removed tmux session org-tiny, half-built by a launch that was interrupted" in capsys.readouterr().out
    assert grid.running() and [p["label"] for p in grid.panes() if p["window"] == "org"] == ["solo", "status"]


def test_in_a_grid_a_killed_launch_left_half_built_nothing_starts(org_project, monkeypatch, capsys):
    """A launch SIGKILLed after it opened its agents' panes but before the runner's (it has no
    chance to clean up): no agent may work with no runner to run its experiments."""
    root = org_project()
    grid, panes = Grid(root, "tiny"), root / ".lab" / "tiny" / "panes"
    with monkeypatch.context() as killed:
        killed.setattr(Grid, "_mark_ready", lambda self, session: None)  # killed before its last step
        assert main(["launch", "tiny", "--stagger", "0"]) == 0
    capsys.readouterr()
    assert not grid.running()
    keepers = eventually(lambda: all(read_state(panes / f"{n}.json").get("keeper") for n in ("solo", "_runner"))
                         and [read_state(panes / f"{n}.json") for n in ("solo", "_runner")], what="the keepers")
    time.sleep(2)  # (an agent's keeper took a tenth of that to start it)
    assert [k["state"] for k in keepers] == ["waiting", "waiting"] and not any(k.get("pid") for k in keepers)
    assert read_state(panes / "solo.json")["state"] == "waiting"
    assert Control(root / ".lab" / "tiny", "solo").state()["state"] == "unknown"  # never started
    eventually(lambda: "waiting for `org launch` to finish building this grid" in grid.capture("solo").replace("\n", ""),
               what="the pane to say why")

    assert main(["launch", "tiny", "--stagger", "0"]) == 0  # the next launch removes it and starts whole
    assert "removed tmux session org-tiny, half-built by a launch that was interrupted" in capsys.readouterr().out
    eventually(lambda: read_state(panes / "solo.json").get("state") in ("running", "ended"), what="the agent to start")


def test_after_a_crash_launch_keeps_a_dirty_worktree_and_removes_a_stale_git_lock(org_project, capsys):
    root = org_project()
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    tree = root / "worktrees" / "tiny" / "solo"
    (tree / "idea.py").write_text("# half-written when the machine died\n")
    lock = Path(git.Repo(tree).git_dir) / "index.lock"
    lock.write_text("")
    Grid(root, "tiny").server.kill()  # the crash: tmux and every pane's process gone
    capsys.readouterr()
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    out = capsys.readouterr().out
    assert "removed a stale tmux socket" in out
    assert f"removed a stale git lock left by a crash: {lock}" in out
    assert f"solo: kept the 1 uncommitted change(s) in {tree} from before" in out
    assert (tree / "idea.py").exists() and not lock.exists()


def test_stop_removes_clean_worktrees_and_keeps_branches_ledger_and_work(org_project, capsys):
    root = org_project(agents=SOLO + [{"name": "second", "backend": "scripted"}])
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    grid = Grid(root, "tiny")
    (root / "worktrees" / "tiny" / "second" / "draft.md").write_text("not committed yet\n")
    keepers = [root / ".lab" / "tiny" / "panes" / f"{name}.json" for name in ("solo", "second", "_runner")]
    pids = eventually(lambda: all(read_state(k).get("pid") for k in keepers) and [read_state(k)["pid"] for k in keepers],
                      what="both agents and the runner to start")
    capsys.readouterr()
    assert main(["stop", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stopped tiny\n")
    assert "removed the worktrees of solo (their branches stay)" in out
    assert f"kept {root / 'worktrees' / 'tiny' / 'second'}: 1 uncommitted change(s)" in out
    assert not grid.server.is_alive() and not grid.socket_path.exists()
    assert not any(pid_alive(p) for p in pids)
    assert not (root / "worktrees" / "tiny" / "solo").exists()
    assert (root / "worktrees" / "tiny" / "second" / "draft.md").exists()
    with contextlib.closing(git.Repo(root)) as repo:
        assert {"agent/tiny/solo/work", "agent/tiny/second/work", "program/tiny"} <= {h.name for h in repo.heads}
    assert (root / ".lab" / "tiny" / "ledger.sqlite").exists()
    assert (root / ".lab" / "tiny" / "transcripts" / "solo.jsonl").exists()
    assert Control(root / ".lab" / "tiny", "solo").state()["state"] == "stopped"
    assert main(["status", "tiny"]) == 0
    status = capsys.readouterr().out
    assert "tiny · stopped" in status and "runner: stopped" in status  # not "done": it did not finish
    assert main(["stop", "tiny"]) == 0  # stopping twice is harmless
    assert "tiny was not running" in capsys.readouterr().out


ORPHANED_IN_ITS_POOL = """import subprocess
from org.cgroups import cgroup_root, new_cgroup, pool_group, pools
from org.sandbox import Limits
from org.workspace import open_site
site = open_site("tiny")
pool = pool_group(cgroup_root("memory"), Limits(memory_pools=pools(site.root, site.program, "agent-solo")))
group = new_cgroup(pool)  # (named by this process, its maker, about to end)
inner = subprocess.Popen(["sleep", "600"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
(group / "cgroup.procs").write_text(str(inner.pid))
print(group, inner.pid)"""


@pytest.mark.skipif(cgroup_root("memory") is None, reason="memory cgroups: an agent's boxes have a pool of their own")
def test_stop_kills_what_a_box_whose_maker_died_left_in_the_orgs_pools(org_project, capsys):
    """An agent killed as one of its commands' boxes was being made leaves bwrap's inner half
    waiting for good, in a group of its agent's memory pool (cgroups.orphaned). A later box in that
    pool sweeps it, but after `org stop` none comes: the stop sweeps the org's pools itself. Here
    a maker in the agent's pool leaves a process in its box's group and dies, with the org stopped
    already: no box of its agent comes to sweep it (that is when a stop's own sweep runs: after its
    agents are killed)."""
    root = org_project()
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    assert main(["stop", "tiny"]) == 0
    made = subprocess.run([sys.executable, "-c", ORPHANED_IN_ITS_POOL], capture_output=True, text=True, check=True, cwd=root)
    group, pid = Path(made.stdout.split()[0]), int(made.stdout.split()[1])
    try:
        assert pid_alive(pid) and group.exists() and "agent-solo/box-" in str(group)
        assert main(["stop", "tiny"]) == 0
        eventually(lambda: not pid_alive(pid), what="the orphaned process to be killed", timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_stop_charges_the_runs_of_a_runner_that_died_before_it_only_until_they_stopped(org_project, capsys):
    """A runner killed (by a person, the OOM killer, or a stop that was itself killed after it killed
    the runner) leaves its runs `running`. A stop long after charged them until its own time, as if
    they had run all along; they ran until their last write."""
    root = org_project(budget={**tiny_program([])["budget"], "per_run": {"steps": 20000}})  # (2000: done in 2 s here)
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    panes, ledger_path = root / ".lab" / "tiny" / "panes", root / ".lab" / "tiny" / "ledger.sqlite"

    def in_flight():
        with Ledger(ledger_path) as ledger:
            return next((r for r in ledger.runs("tiny", status="running") if r["trainer_pid"]), None)
    run = eventually(in_flight, what="a run in flight")
    time.sleep(2.0)  # (two seconds of training, its logs written: more than a pulse's charge can fall short by)
    (panes / "stop").write_text("")  # (its keeper restarts nothing, as after a stop)
    os.kill(read_state(panes / "_runner.json")["pid"], signal.SIGKILL)
    killed = time.time()
    eventually(lambda: not pid_alive(run["trainer_pid"]), what="its trainer to die with it")
    time.sleep(4.0)  # the org lies dead a while
    assert main(["stop", "tiny"]) == 0
    with Ledger(ledger_path) as ledger:
        requeued = ledger.run(run["id"])
    ran = killed - datetime.fromisoformat(run["started_at"]).timestamp()  # (from its trainer's start)
    assert requeued["status"] == "queued" and "died before `org stop`" in requeued["reason"], requeued
    # not the 4 s it lay dead (its trainer writes until the kill reaches it through bwrap: up to a second late)
    assert 0.5 < requeued["lost_seconds"] <= ran + 1.0, (requeued, ran)


def test_say_drops_a_message_from_you_into_an_inbox(org_project, capsys):
    root = org_project()
    assert main(["say", "solo", "look", "at", "the", "warmup", "--program", "tiny"]) == 0
    assert "in solo's inbox" in capsys.readouterr().out
    [message] = Mail(root / ".lab" / "tiny").inbox("solo")
    assert (message["from"], message["text"]) == ("human", "look at the warmup")
    assert main(["say", "nobody", "hi", "--program", "tiny"]) == 2
    assert "tiny has no agent 'nobody' (agents: solo)" in one_line_error(capsys)
    assert main(["say", "solo", " ", "--program", "tiny"]) == 2  # (it was delivered, empty)
    assert "nothing to say to solo: the message is empty" in one_line_error(capsys)
    assert len(Mail(root / ".lab" / "tiny").inbox("solo")) == 1
    Control(root / ".lab" / "tiny", "solo").set_state("stopped", "finished: conclusion posted")
    assert main(["say", "solo", "one more idea", "--program", "tiny"]) == 0  # delivered, and said for what
    assert "but solo has ended (finished: conclusion posted) and does not run again" in capsys.readouterr().out
    assert main(["takeover", "solo", "--program", "tiny"]) == 2
    assert "tiny is not running; `org launch tiny` first" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------
# a key in a pane takes it over (and another hands it back), as a person at the terminal does


@contextlib.contextmanager
def attached_terminal(grid: Grid):
    """`org attach tiny` in a pseudo-terminal, like a person's terminal; yields what they type into."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.execvp(sys.executable, [sys.executable, "-m", "org.cli", "attach", "tiny"])
    try:
        eventually(lambda: grid.server.cmd("list-clients").stdout, what="the client to attach")
        yield fd
    finally:
        os.close(fd)
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


def test_a_key_takes_a_pane_over_and_another_hands_it_back(org_project, monkeypatch, tmp_path, capsys):
    # a fresh machine: no git identity anywhere, so the person's commits are by "human"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    root = org_project(identity=False, budget={**tiny_program([])["budget"], "per_run": {"steps": 400}})
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    assert "git: no user.name/email configured" in capsys.readouterr().out
    grid, control = Grid(root, "tiny"), Control(root / ".lab" / "tiny", "solo")
    eventually(lambda: control.state()["state"] == "running", what="the agent to start")
    grid.server.cmd("select-pane", "-t", grid.find("solo")["id"])
    with attached_terminal(grid) as terminal:
        os.write(terminal, b"\x02T")  # C-b T, in the agent's pane
        eventually(lambda: control.state()["state"] == "paused", what="the agent to pause")
        screen = eventually(lambda: "this pane is yours" in grid.capture("solo", taken=True)
                            and grid.capture("solo", taken=True), what="the person's shell")
        assert "── solo is paused: this pane is yours ──" in screen
        assert control.state()["reason"] == "taken over by a person"
        assert grid.find("solo", taken=True)["cwd"] == str(root / "worktrees" / "tiny" / "solo")
        assert [p["label"] for p in grid.panes() if p["window"] == "org"] == ["solo", "status"]
        eventually(lambda: "taken over" in grid.capture("status"), what="the status pane to say so")

        os.write(terminal, b"echo '# the person was here' > NOTE.md && git add NOTE.md && git commit -qm note && echo committed\r")
        eventually(lambda: "\ncommitted" in grid.capture("solo", taken=True), what="the person's commit")
        with contextlib.closing(git.Repo(root / "worktrees" / "tiny" / "solo")) as repo:
            assert repo.head.commit.author.name == "human"

        os.write(terminal, b"\x02R")  # C-b R hands it back
        eventually(lambda: control.state()["state"] == "running", what="the agent to resume")
        # (`org release` resumes the agent, then hands the pane back: on a loaded machine, a moment later)
        eventually(lambda: grid.find("solo", taken=True) is None, what="the pane to be handed back")
        assert grid.find("solo")["window"] == "org"
        assert not (root / ".lab" / "tiny" / "takeover" / "solo.objects").exists()  # the snapshots' scratch store
    transcript = root / ".lab" / "tiny" / "transcripts" / "solo.jsonl"
    told = eventually(lambda: "A person took over your pane" in transcript.read_text() and transcript.read_text(),
                      what="the release message in the agent's transcript")
    assert "Their commits on your branch" in told and "+# the person was here" in told


def test_a_junk_copy_in_another_agents_folder_drops_no_branch_at_clean(org_project, capsys):
    """Each agent's box commits into a folder of its own, which no git outside it reads: second's
    unsubmitted commit read to `org clean` as a branch naming no commit, which it dropped as junk
    its box wrote (and so would a junk copy in solo's folder, were the folders git's alternates).
    Clean takes each branch in from its owner's folder (copies that hash to their names) first."""
    from org.lab import child_env
    from org.objects import agent_objects
    root = org_project(agents=SOLO + [{"name": "second", "backend": "scripted"}])
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    assert main(["stop", "tiny"]) == 0
    common = root / ".git"
    agent_objects(common, "tiny", "second").mkdir(parents=True, exist_ok=True)  # (as its first box makes it)
    own = child_env({"GIT_OBJECT_DIRECTORY": str(agent_objects(common, "tiny", "second")),
                     "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(common / "objects"), "GIT_AUTHOR_NAME": "second",
                     "GIT_AUTHOR_EMAIL": "s@example.com", "GIT_COMMITTER_NAME": "second",
                     "GIT_COMMITTER_EMAIL": "s@example.com"})
    work = subprocess.run(["git", "commit-tree", "program/tiny^{tree}", "-p", "program/tiny", "-m", "second's work"],
                          cwd=root, env=own, check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "update-ref", "refs/heads/agent/tiny/second/work", work], cwd=root, env=own, check=True)
    junk = agent_objects(common, "tiny", "solo") / work[:2] / work[2:]
    junk.parent.mkdir(parents=True, exist_ok=True)  # (solo's folder: made by its first box, if it ran one)
    junk.write_bytes(zlib.compress(b"blob 4\x00junk"))
    capsys.readouterr()
    assert main(["clean", "tiny"]) == 0
    with contextlib.closing(git.Repo(root)) as repo:
        assert repo.git.rev_parse("refs/nanolab/tiny/agent/tiny/second/work") == work
        assert repo.commit(work).message.strip() == "second's work"


def test_only_an_index_an_agents_git_writes_is_read_as_it_is(tmp_path):
    """An agent's box writes its worktree's index. A sparse one names folders, which every git
    of the harness's expands (10 KB of them named 4 million files: a status of hours, GBs of
    memory), and a split one reads another file: `org stop`/`launch` make such an index again
    from HEAD (mend_worktree), as they do an index git cannot read."""
    from org.launch import plain_index
    tree = tmp_path / "tree"
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    for name in ("a/x", "b/y"):
        (tree / name).parent.mkdir()
        (tree / name).write_text(name)
    run = lambda *argv: subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", *argv], cwd=tree, check=True)
    run("add", "-A")
    run("commit", "-qm", "x")
    (tree / "c").write_text("c")
    run("add", "-N", "c")  # (an extended entry: version 3)
    index = tree / ".git" / "index"
    assert plain_index(index) and plain_index(tmp_path / "none")
    run("-c", "index.sparse=true", "sparse-checkout", "set", "--cone", "--sparse-index", "a")
    assert not plain_index(index)
    run("sparse-checkout", "disable")
    run("update-index", "--index-version", "4")
    assert not plain_index(index)
    index.write_bytes(b"DIRC junk")
    assert not plain_index(index)


def test_git_in_an_agents_worktree_runs_no_driver_of_the_persons_config(tmp_path, monkeypatch):
    """The harness's git in an agent's worktree (status, add -A and diff for a takeover, stop,
    launch) read the person's ~/.gitconfig, and the lab's filters ran: a .gitattributes the agent
    wrote there could name any filter or diff driver of theirs (git-lfs's, nbstripout's, a
    textconv) to run on the agent's files, outside every box."""
    from org.launch import git as worktree_git
    from org.takeover import change_note, snapshot_tree
    tree, ran, home = tmp_path / "tree", tmp_path / "ran", tmp_path / "home"
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    (tree / ".gitattributes").write_text("a.txt filter=lfs diff=lfs\nb.txt filter=nb diff=nb\n")
    (tree / "a.txt").write_text("one\n")
    (tree / "b.txt").write_text("one\n")
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", "add", "-A"], cwd=tree, check=True)
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x"], cwd=tree, check=True)
    home.mkdir()
    (home / ".gitconfig").write_text(f'[filter "lfs"]\n\tclean = touch {ran} && cat\n'
                                     f'[diff "lfs"]\n\ttextconv = touch {ran} && cat\n')
    monkeypatch.setenv("HOME", str(home))
    for key, value in (("filter.nb.clean", f"touch {ran} && cat"), ("diff.nb.textconv", f"touch {ran} && cat")):
        subprocess.run(["git", "config", key, value], cwd=tree, check=True)  # the lab's own (nbstripout's, say)
    (tree / "a.txt").write_text("two, as the agent left it\n")
    (tree / "b.txt").write_text("two, as the agent left it\n")
    worktree_git(tree, "status", "--porcelain")
    before, _ = snapshot_tree(tree, tmp_path / "objects")
    (tree / "b.txt").write_text("three\n")
    head = worktree_git(tree, "rev-parse", "HEAD")
    assert "+three" in change_note(tree, {"tree": before, "head": head, "at": "then"}, None, tmp_path / "objects")
    assert not ran.exists()


def test_a_takeovers_snapshot_writes_nothing_into_the_labs_store_and_leaves_large_files_out(tmp_path, monkeypatch):
    """A takeover snapshots the worktree (`git add -A` into a scratch index) to tell the agent, at
    release, what the person changed. It wrote every file the agent left there into the lab's
    shared store, uncounted and for good: 16 GB of worktree, an agent's bound, copied again at
    each takeover and release. Now the snapshot's objects go to a scratch store the release
    removes, and files past a size (each, and in all) are left out and named."""
    from org import takeover
    monkeypatch.setattr(takeover, "SNAPSHOT_FILE_BYTES", 1 << 20)
    monkeypatch.setattr(takeover, "SNAPSHOT_BYTES", 2 << 20)
    tree = tmp_path / "tree"
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    (tree / "train.py").write_text("lr = 1\n")
    (tree / "weights.bin").write_bytes(os.urandom(1 << 20))
    for args in (["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", *args], cwd=tree, check=True)
    store = sorted((tree / ".git" / "objects").rglob("*"))
    (tree / "checkpoint.pt").write_bytes(os.urandom(3 << 20))  # past the bound for one file
    for k in range(4):
        (tree / f"shard{k}.npy").write_bytes(os.urandom((600 + k) << 10))  # past the bound for all: the largest go
    (tree / "weights.bin").write_bytes(os.urandom(1 << 20))
    objects = tmp_path / "objects"
    before, left_out = takeover.snapshot_tree(tree, objects)
    assert left_out == ["checkpoint.pt", "shard3.npy", "weights.bin"]  # (weights.bin stays as HEAD has it)
    (tree / "train.py").write_text("lr = 2\n")  # the person's edit
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
    note = takeover.change_note(tree, {"tree": before, "left_out": left_out, "head": head, "at": "then"}, None, objects)
    assert "-lr = 1\n+lr = 2" in note and ": checkpoint.pt, shard3.npy, weights.bin\n" in note
    assert "shard0.npy |" not in note  # (in the diff's stat): in both snapshots, as it was
    assert sorted((tree / ".git" / "objects").rglob("*")) == store  # the lab's store: not one object more

    (tree / "shard0.npy").write_bytes(os.urandom(2 << 20))  # past the bound now, not then: no change shown
    note = takeover.change_note(tree, {"tree": before, "left_out": left_out, "head": head, "at": "then"}, None, objects)
    assert "shard0.npy |" not in note and "checkpoint.pt, shard0.npy, shard3.npy, weights.bin" in note

    (tree / "x" / ".GIT").mkdir(parents=True)  # a name git refuses to add: no snapshot, and no traceback
    (tree / "x" / ".GIT" / "f").write_text("x")
    taken = takeover.snapshot_or_why(tree, tmp_path / "other")
    assert taken["tree"] is None and "x/.GIT/f" in taken["why"] and not (tmp_path / "other").exists()
    note = takeover.change_note(tree, {**taken, "head": head, "at": "then"}, None, tmp_path / "other")
    assert "cannot be shown as a diff" in note and "?? x/" in note


def test_what_an_agent_leaves_broken_in_git_stops_no_stop_launch_or_clean(org_project, capsys):
    """An agent's box writes its branches, their reflogs and its worktree's HEAD and index: it
    can leave any of them holding junk. `org stop` and `org launch` (resuming) mend the worktree,
    and say so; a branch naming no commit is a line saying how to mend it; `org clean` drops a
    junk branch (it names no commit to keep). Never a traceback."""
    root = org_project(agents=SOLO + [{"name": "second", "backend": "scripted"}])
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    common, admin, tree = root / ".git", root / ".git" / "worktrees" / "solo", root / "worktrees" / "tiny" / "solo"
    for path in (common / "refs/heads/agent/tiny/solo/work", common / "refs/heads/agent/tiny/solo/idea",
                 common / "logs/refs/heads/agent/tiny/solo/work", admin / "HEAD", admin / "index"):
        path.write_text("junk\n")
    capsys.readouterr()

    assert main(["stop", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"kept {tree}: branch agent/tiny/solo/work names no commit" in out
    assert main(["launch", "tiny", "--stagger", "0"]) == 2
    err = capsys.readouterr().err
    assert f"branch agent/tiny/solo/work names no commit: {common}/refs/heads/agent/tiny/solo/work holds 'junk'" in err
    assert "Remove that file" in err and "`git branch agent/tiny/solo/work <commit>`" in err and "Traceback" not in err

    (common / "refs/heads/agent/tiny/solo/work").unlink()  # as the line says
    with contextlib.closing(git.Repo(root)) as repo:
        repo.git.branch("agent/tiny/solo/work", "program/tiny")
    (admin / "index.lock").mkdir()  # (unlink() raised IsADirectoryError: a traceback, every launch)
    assert main(["launch", "tiny", "--stagger", "0"]) == 0
    out = capsys.readouterr().out
    assert f"removed a stale git lock left by a crash: {admin / 'index.lock'}" in out
    assert f"{tree}: its HEAD named none of its branches; it points at agent/tiny/solo/work again" in out
    assert f"{tree}: git could not read its index; it was made again from HEAD" in out

    second = root / "worktrees" / "tiny" / "second"
    (admin / "locked").mkdir()  # git keeps a locked worktree: `remove --force` failed (or unlink()), a traceback
    (common / "worktrees" / "second" / "HEAD").write_text("ref: refs/heads/program/tiny\n")  # the program's branch
    assert main(["stop", "tiny"]) == 0  # (checked out there, it never moved, and the person could not check it out)
    out = capsys.readouterr().out
    assert f"{second}: its HEAD named none of its branches; it points at agent/tiny/second/work again" in out
    assert "removed the worktrees of solo, second" in out
    named = common / "refs/heads/agent/tiny/solo/x^{" / "(.*)(.*)(.*)(.*)(.*)\\5\\4\\3\\2\\1x}"
    named.parent.mkdir()  # a name git refuses, which rev-parse read as a search of commit messages
    named.write_text((common / "refs/heads/agent/tiny/solo/work").read_text())
    with contextlib.closing(git.Repo(root)) as repo:  # a branch naming a file of the lab's: no commit to keep
        blob = repo.git.ls_tree("-r", "program/tiny").split()[2]
    (common / "refs/heads/agent/tiny/solo/blob").write_text(blob + "\n")
    (common / "refs/heads/agent/tiny/solo/main").write_text("ref: refs/heads/program/tiny\n")  # deleted as a
    program_tip = (common / "refs/heads/program/tiny").read_text()  # branch, it deleted the program's
    assert main(["clean", "tiny"]) == 0
    assert f"kept branch agent/tiny/solo/blob: git ref 'agent/tiny/solo/blob': object {blob[:10]} is a blob" \
        in capsys.readouterr().out
    with contextlib.closing(git.Repo(root)) as repo:
        assert [h.name for h in repo.heads if h.name.startswith("agent/")] == ["agent/tiny/solo/blob"]
        assert not named.exists() and not (common / "refs/heads/agent/tiny/solo/main").exists()
        assert "refs/nanolab/tiny/agent/tiny/solo/work" in repo.git.for_each_ref("refs/nanolab")
        assert repo.git.rev_parse("program/tiny") == program_tip.strip()
    with contextlib.closing(Lab.open(root)) as lab:
        lab.pack_loose(lab.harness_refs())  # as each program start does
