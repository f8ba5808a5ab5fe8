"""The agents from the command line: `org agent` (the process in a pane), the `org tool`,
`org results` and `org mail` commands a CLI agent uses from its shell, the turn-end hook of the
claude and codex backends, and those two CLIs themselves where they are installed."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agentlab import HOG, BackgroundRunner, lab_dir, make_project, run_windows, shares_of_the_core, tiny_program, \
    worktree
from fakellm import Call, FakeLLM, Text
from org.agents.clis import BACKEND_CLI, CLI_CPU_WEIGHT, BoxedCLI, check_cli, claude_argv, codex_argv, next_codex_prompt, on_hook, \
    _supervise, port_handler, run_cli
from org.agents.pacing import AGENTS_WEIGHT, BURST, SHARE, Pacer
from org.agents.commands import LOW_WEIGHT_VAR
from org.agents.port import PORT_VAR, Port, call, relay_one, socket_name
from org import OrgError
from org.agents.control import Control
from org.agents.roles import agent_entry
from org.agents.transcript import Transcript
from org.cli import build_parser, main
from org.gateway import Gateway, prepare
from org.ledger import Ledger
from org.mail import Mail
from org.cgroups import cgroup_root, cpu_meter, cpu_share, sweep
from org.sandbox import available

AGENTS = [{"name": "solo", "backend": "scripted"},
          {"name": "claude", "role": "junior", "backend": "claude-code", "model": "claude-sonnet-test"},
          {"name": "keyless", "backend": "anthropic", "model": "claude-sonnet-test"}]


@pytest.fixture
def project(tmp_path, monkeypatch):
    root, program = make_project(tmp_path, tiny_program(AGENTS, corpus="corpus"))
    monkeypatch.chdir(root)
    return root, program


def test_org_agent_runs_a_scripted_researcher_to_its_conclusion(project, capsys):
    root, program = project
    with BackgroundRunner(root, program):
        assert main(["agent", "solo", "--program", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "solo: finished: - no-softcap vs baseline: " in out
    assert "→ submit_experiment" in out  # the pane shows the tool calls
    assert "Conclusion for tiny" in Mail(lab_dir(root, program)).board()


def test_a_missing_api_key_is_a_clear_error_naming_the_agent(project, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main(["agent", "keyless", "--program", "tiny"]) == 2
    assert "agent keyless (backend anthropic) needs ANTHROPIC_API_KEY" in capsys.readouterr().err
    assert main(["agent", "nobody", "--program", "tiny"]) == 2
    assert "has no agent 'nobody'" in capsys.readouterr().err


def test_the_org_command_gives_a_cli_agent_the_same_tools(project, monkeypatch, capsys):
    root, program = project
    tree = worktree(root, program, "claude")
    monkeypatch.chdir(tree)
    for name, value in {"NANOLAB_AGENT": "claude", "NANOLAB_PROGRAM": "tiny", "NANOLAB_LAB": str(root)}.items():
        monkeypatch.setenv(name, value)

    assert main(["tool", "write_file", json.dumps({"path": "notes.md", "content": "plan"})]) == 0
    assert (tree / "notes.md").read_text() == "plan"
    assert main(["tool", "write_file", json.dumps({"path": "trainer/eval.py", "content": "x"})]) == 1
    assert "refused: trainer/eval.py: protected" in capsys.readouterr().out
    assert main(["tool", "git_commit", '{"message": "notes"}']) == 0
    assert main(["tool", "submit_experiment", json.dumps({"arm": "notes", "hypothesis": "a no-op",
                                                          "overrides": {"steps": 9}})]) == 1
    assert "refused: override 'steps'" in capsys.readouterr().out
    refusals = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl").events("refusal")
    assert [r["tool"] for r in refusals] == ["write_file", "submit_experiment"]

    assert main(["mail", "send", "solo", "Plan", "posted."]) == 0
    assert main(["mail", "send", "--as", "claude", "solo", "Options", "first."]) == 0  # (was "unrecognized arguments")
    assert main(["mail", "send", "solo", "--as", "claude", "Between", "too."]) == 0
    assert [m["text"] for m in Mail(lab_dir(root, program)).inbox("solo")] == ["Plan posted.", "Options first.", "Between too."]
    Mail(lab_dir(root, program)).send("solo", "claude", "Thanks!")
    capsys.readouterr()
    assert main(["mail", "read"]) == 0
    assert "[message from solo" in capsys.readouterr().out and Mail(lab_dir(root, program)).inbox("claude") == []

    assert main(["results"]) == 0
    assert json.loads(capsys.readouterr().out)["program"] == "tiny"
    assert main(["tool", "finish", '{"summary": "done"}']) == 0  # tells the supervisor to end the CLI
    assert Control(lab_dir(root, program), "claude").stop_reason() == "finished: done"


def test_claude_codes_stop_hook_hands_over_new_mail_and_leaves_spend_to_the_gateway(project, tmp_path):
    root, program = project
    claude_log = tmp_path / "session.jsonl"  # what Claude Code logs: usage per assistant message
    claude_log.write_text(json.dumps({"type": "user", "message": {"content": "hi"}}) + "\n" + json.dumps(
        {"type": "assistant", "message": {"model": "claude-sonnet-4", "usage": {
            "input_tokens": 1000, "output_tokens": 100, "cache_read_input_tokens": 0}}}) + "\n")
    payload = json.dumps({"hook_event_name": "Stop", "transcript_path": str(claude_log),
                          "last_assistant_message": "Submitted no-softcap; waiting."})
    mail = Mail(lab_dir(root, program))
    mail.send("solo", "claude", "Verdict is in: no regression.")

    answer = json.loads(on_hook("stop", program, "claude", root, payload))
    assert answer == {"decision": "block", "reason": answer["reason"]} and "Verdict is in" in answer["reason"]
    assert mail.inbox("claude") == []
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:  # the gateway meters calls, not this
        assert "claude" not in ledger.spend("tiny")["agents"]
    transcript = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl")
    assert transcript.events("turn_end")[0]["last_message"] == "Submitted no-softcap; waiting."

    Control(lab_dir(root, program), "claude").pause("taken over")  # a person has the pane: let Claude stop
    assert on_hook("stop", program, "claude", root, payload) is None


def test_claude_code_says_it_is_paused_once_its_turn_ends_and_running_once_handed_back(project):
    root, program = project
    control, mail = Control(lab_dir(root, program), "claude"), Mail(lab_dir(root, program))
    control.set_state("running", "claude-code started")
    control.pause("taken over")  # `org takeover` waits for "paused": the turn must be over first
    assert control.state()["state"] == "running"
    assert on_hook("stop", program, "claude", root, "{}") is None  # Claude stops at its prompt
    assert (control.state()["state"], control.state()["reason"]) == ("paused", "taken over")
    mail.send("human", "claude", "I fixed the loader.")
    control.resume()  # `org release`; the person's prompt starts a turn, whose end calls the hook
    assert "I fixed the loader." in json.loads(on_hook("stop", program, "claude", root, "{}"))["reason"]
    assert control.state()["state"] == "running"


def test_codex_never_reruns_its_prompt_while_paused_or_stopping(project):
    root, program = project
    control, mail = Control(lab_dir(root, program), "claude"), Mail(lab_dir(root, program))
    transcript = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl")
    out = []
    control.pause("taken over")
    waiter = threading.Thread(target=lambda: out.append(next_codex_prompt(mail, control, transcript, "claude", 0.05)))
    waiter.start()
    assert control.wait_for_state("paused", 5)
    mail.send("solo", "claude", "Verdict is in.")  # mail while paused waits for the resume
    waiter.join(0.5)
    assert waiter.is_alive() and out == []
    control.resume("Carry on.")
    waiter.join(5)
    [(prompt, stop)] = out
    assert stop is None and "Verdict is in." in prompt and "Carry on." in prompt and mail.inbox("claude") == []
    control.stop("test over")  # stopping: no prompt, only the reason
    assert next_codex_prompt(mail, control, transcript, "claude", 0.05) == (None, "test over")


def test_codex_gets_its_mail_in_turns_that_fit_one_argument_and_a_message_is_short(project):
    """Codex takes its prompt as one command-line argument (128 KiB at most): 130 KB of mail went
    whole into it, Popen failed with E2BIG, and its pane crashed until its keeper gave up. A
    message holds MAX_MESSAGE_CHARS; a turn takes what fits, and the rest waits, unread."""
    from org.mail import MAX_MESSAGE_CHARS
    root, program = project
    control, mail = Control(lab_dir(root, program), "claude"), Mail(lab_dir(root, program))
    transcript = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl")
    with pytest.raises(OrgError, match=f"one holds {MAX_MESSAGE_CHARS} at most"):
        mail.send("solo", "claude", "x" * (MAX_MESSAGE_CHARS + 1))
    for i in range(6):
        mail.send("solo", "claude", str(i) * MAX_MESSAGE_CHARS)
    first, _ = next_codex_prompt(mail, control, transcript, "claude", 0.05)
    assert len(first.encode()) < 128 << 10 and first.count("[message from solo") == 3 and len(mail.inbox("claude")) == 3
    assert first.endswith("[3 more message(s) wait in your inbox, from solo (3): they come at your next turns]")
    second, _ = next_codex_prompt(mail, control, transcript, "claude", 0.05)
    assert second.count("[message from solo") == 3 and mail.inbox("claude") == []


# --- the real CLIs, boxed, one turn each, through the port and a real gateway -------------------

MISSING = {backend: check_cli("test", backend) for backend in BACKEND_CLI}


@pytest.fixture
def gateway(project, monkeypatch):
    """The org's gateway as `org launch` sets it up, the fake model server as its upstream."""
    root, program = project

    def serve(scripts, backends=None):
        stack = contextlib.ExitStack()
        llm = stack.enter_context(FakeLLM(scripts))
        env = {"ANTHROPIC_API_KEY": "sk-ant-REAL-KEY", "ANTHROPIC_BASE_URL": llm.url,
               "OPENAI_API_KEY": "sk-openai-REAL-KEY", "OPENAI_BASE_URL": llm.url + "/v1"}
        prepare(lab_dir(root, program), backends or {a["name"]: a["backend"] for a in AGENTS}, env)
        stack.enter_context(Gateway(lab_dir(root, program), program.name, say=lambda line: None))
        monkeypatch.setenv("NANOLAB_GATEWAY", "1")
        return llm, stack
    return serve


def tool_results(llm) -> str:
    return "\n".join(json.dumps(r.body) for r in llm.requests)


@pytest.mark.skipif(available() is not None, reason=f"CLI agents run only in a sandbox: {available()}")
@pytest.mark.skipif(bool(MISSING["claude-code"]), reason=f"{MISSING['claude-code']} (CI installs it)")
def test_claude_code_boxed_edits_through_its_tools_and_reaches_only_the_org(project, gateway):
    root, program = project
    tree = worktree(root, program, "claude")
    evaluation = (tree / "trainer" / "eval.py").read_text()
    probe = ("org mail send solo hello-from-the-box; echo token=${ANTHROPIC_AUTH_TOKEN:0:8}; "
             f"ls {lab_dir(root, program)}; cat /proc/1/cmdline | tr '\\0' ' '")
    llm, stack = gateway({"claude-sonnet-test": [
        [Call("Edit", {"file_path": str(tree / "trainer" / "eval.py"), "old_string": "The evaluation every verdict",
                       "new_string": "An evaluation"})],
        [Call("Bash", {"command": probe, "description": "probe"})],
        [Text("Done for now.")]]})
    with stack:
        entry = agent_entry(program, "claude")
        Control(lab_dir(root, program), "claude").clear_stop()
        with BoxedCLI(entry, program, root, tree) as cli:
            proc = cli.start(claude_argv(entry, program, cli.tree) + ["-p", "Start."], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            stopper = threading.Timer(20, lambda: Control(lab_dir(root, program), "claude").stop("test over"))
            stopper.start()  # its Stop hook waits for mail: end the wait
            try:
                out = proc.communicate(timeout=120)[0].decode()
            finally:
                stopper.cancel()
    results = tool_results(llm)
    assert proc.returncode == 0, out
    assert (tree / "trainer" / "eval.py").read_text() == evaluation  # Claude's own deny rule
    assert "permission" in results.lower() or "denied" in results.lower()
    assert "token=nanolab" in results  # a gateway token, never a key
    assert "sk-ant-REAL" not in results and "sk-ant-REAL" not in out
    assert "clis\\n" in results and "ledger.sqlite" not in results  # only its own port and home in .lab
    assert [m["text"] for m in Mail(lab_dir(root, program)).inbox("solo")] == ["hello-from-the-box"]
    assert Mail(lab_dir(root, program)).inbox("solo")[0]["from"] == "claude"
    assert Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl").events("turn_end")
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:  # metered by the gateway, once per call
        assert [r["agent"] for r in ledger._all("SELECT agent FROM llm_spend")] == ["claude"] * len(llm.requests)
    assert all(r.headers["x-api-key"] == "sk-ant-REAL-KEY" for r in llm.requests)


@pytest.mark.skipif(available() is not None, reason=f"CLI agents run only in a sandbox: {available()}")
@pytest.mark.skipif(bool(MISSING["codex"]), reason=f"{MISSING['codex']} (CI installs it)")
def test_codex_boxed_reports_its_turn_through_notify_and_its_shell_holds_no_token(project, gateway):
    root, program = project
    entry = agent_entry(program, "claude").model_copy(update={"backend": "codex", "model": "gpt-test"})
    tree = worktree(root, program, "claude")
    probe = ("org mail send solo hi-from-codex; echo token=[$NANOLAB_OPENAI_TOKEN]; env | grep -ci key; "
             "echo x >> trainer/eval.py || echo protected-refused; echo y >> $CODEX_HOME/config.toml || echo config-refused; "
             "touch /tmp/x && echo tmp-ok; ln -s /dev/zero zero || echo link-refused; "
             "echo note > notes.md && git add notes.md && git commit -qm notes && echo committed")
    llm, stack = gateway({"gpt-test": [[Call("exec_command", {"cmd": probe})], [Text("Looked around; nothing to do yet.")]]},
                         backends={"claude": "codex"})
    with stack:
        with BoxedCLI(entry, program, root, tree) as cli:
            proc = cli.start(codex_argv(entry, resume=False) + ["Start."], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    assert [r.path for r in llm.requests] == ["/v1/responses"] * 2
    results = tool_results(llm)
    assert "token=[]" in results and "sk-openai-REAL" not in results  # its shell: no token, no key
    assert "protected-refused" in results and "config-refused" in results  # the box (codex's own sandbox is off)
    assert "link-refused" in results  # as in every box: org/seccomp.py
    assert "tmp-ok" in results  # the box's /tmp is its own
    assert "committed" in results and (tree / "notes.md").exists()
    [turn] = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl").events("turn_end")
    assert turn["backend"] == "codex" and "nothing to do yet" in turn["last_message"]
    assert Mail(lab_dir(root, program)).inbox("solo")[0]["from"] == "claude"


@pytest.mark.skipif(available() is not None, reason=f"CLI agents run only in a sandbox: {available()}")
@pytest.mark.skipif(bool(MISSING["codex"]), reason=f"{MISSING['codex']} (CI installs it)")
def test_a_commit_a_cli_makes_in_its_own_shell_is_read_by_the_lab_while_it_works(project, gateway):
    """A CLI agent's box writes its commits into a folder no git outside its box reads
    (org/objects.py). An SDK agent's are taken in as each tool call ends; a CLI's shell commits
    with no `org` command after it, so the pane's supervisor takes them in every few seconds:
    the person's `git log --all` and the agent's teammates read its branch while its turn goes
    on. Before, it said "bad object" until the agent's next `org` command."""
    root, program = project
    entry = agent_entry(program, "claude").model_copy(update={"backend": "codex", "model": "gpt-test"})
    tree = worktree(root, program, "claude")
    work = "echo note > notes.md && git add notes.md && git commit -qm notes && echo committed && sleep 8"
    llm, stack = gateway({"gpt-test": [[Call("exec_command", {"cmd": work, "yield_time_ms": 30000})],
                                       [Text("Committed my notes.")]]}, backends={"claude": "codex"})
    control = Control(lab_dir(root, program), "claude")
    transcript = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl")
    seen_mid_turn = []

    def watch():  # the person's git, which reads the shared store only
        while not control.stop_reason():
            if subprocess.run(["git", "log", "-1", "--format=%s", "agent/tiny/claude/work"], cwd=root,
                              capture_output=True, text=True).stdout.strip() == "notes":
                seen_mid_turn.append(not transcript.events("turn_end"))
                control.stop("test over")  # run_cli then ends where it waits for mail
                return
            time.sleep(0.2)
    watcher = threading.Thread(target=watch)
    with stack:
        watcher.start()
        stopper = threading.Timer(30, lambda: control.stop("timed out"))
        stopper.start()
        try:
            why = run_cli(entry, program, root, tree)
        finally:
            stopper.cancel()
            watcher.join()
    assert seen_mid_turn == [True], (why, tool_results(llm))
    log = subprocess.run(["git", "log", "--all", "--format=%s"], cwd=root, capture_output=True, text=True)
    assert log.returncode == 0 and "notes" in log.stdout.split(), log.stderr


@pytest.mark.skipif(available() is not None, reason=f"CLI agents run only in a sandbox: {available()}")
@pytest.mark.skipif(cgroup_root("cpu") is None, reason=f"a cpu cgroup: {cpu_share()}")
def test_a_cli_box_gets_enough_of_a_core_a_run_holds_to_work_and_little_more(project, gateway, tmp_path):
    """A CLI's box holds the CLI itself, not only its commands. At a command box's CPU weight it
    got 1% of a core a run held: while runs trained on every core, a codex turn (0.6 CPU-s) made
    no request in a minute, and the commit test above failed. Its box gets about a tenth of such
    a core: what it spins there takes little more from the run. Measured as in
    test_sandbox.py's test of a command box: the CPU time each got in the run's windows. And
    it runs at SCHED_IDLE, as a command box does: the gaps of a run's threads are not its."""
    root, program = project
    core = max(os.sched_getaffinity(0))
    llm, stack = gateway({})
    with stack, BoxedCLI(agent_entry(program, "claude"), program, root, worktree(root, program, "claude")) as cli:
        hog = cli.start([sys.executable, "-c", HOG.format(core={core}, seconds=8)], stdin=subprocess.DEVNULL)
        time.sleep(1)
        windows = run_windows(tmp_path, core)
        assert hog.wait(timeout=60) == 0
        policy = cli.start([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)  # (its commands: as a command box's)
        assert policy.communicate(timeout=60)[0].split() == [str(os.SCHED_IDLE).encode()]
    run_cpu, cli_cpu = shares_of_the_core(cli.tree / "hog.log", windows)
    print(f"in the run's windows: the run got {run_cpu:.2f} CPU s, the CLI's box {cli_cpu:.3f}")
    assert 0.02 * run_cpu < cli_cpu < 0.2 * run_cpu, (run_cpu, cli_cpu)  # (what else shares the core moves it)


@pytest.mark.skipif(available() is not None, reason=f"CLI agents run only in a sandbox: {available()}")
def test_links_planted_in_a_cli_home_never_turn_the_harness_writes(project, tmp_path):
    """The CLI's home is the agent's to write; the harness seeds it from outside the box. Links
    planted there (to the ledger, to a folder of the harness's) are replaced, never written
    through, and their targets are neither read nor changed."""
    root, program = project
    tree = worktree(root, program, "claude")
    prepare(lab_dir(root, program), {"claude": "claude-code"}, {"ANTHROPIC_API_KEY": "sk-ant-REAL-KEY"})
    home = lab_dir(root, program) / "clis" / "claude" / "home"
    home.mkdir(parents=True)
    ledger = lab_dir(root, program) / "ledger.sqlite"
    before = ledger.read_bytes()
    elsewhere = tmp_path / "harness-folder"
    elsewhere.mkdir()
    (home / ".claude.json").symlink_to(ledger)
    (home / ".bash_profile").symlink_to(ledger)
    (home / ".codex").symlink_to(elsewhere)
    (home / "tmp").symlink_to(elsewhere)
    with BoxedCLI(agent_entry(program, "claude"), program, root, tree):
        pass
    assert ledger.read_bytes() == before and list(elsewhere.iterdir()) == []
    for name in (".claude.json", ".bash_profile", ".codex", "tmp"):
        assert not (home / name).is_symlink()
    assert json.loads((home / ".claude.json").read_text())["hasCompletedOnboarding"] is True
    assert (home / ".codex" / "config.toml").read_text().startswith('model = "claude-sonnet-test"')


def test_the_port_says_who_calls_whatever_the_command_claims(project, monkeypatch, capsys):
    """Inside a box, `org tool --as solo` still acts as the agent whose port it is."""
    root, program = project
    worktree(root, program, "claude")
    with Port(lab_dir(root, program) / "clis" / "claude" / "port", port_handler(program, "claude", root), None) as port:
        monkeypatch.setenv(PORT_VAR, str(port.org_socket))
        monkeypatch.setenv("NANOLAB_AGENT", "solo")
        assert main(["tool", "--as", "solo", "--program", "tiny", "send_message",
                     json.dumps({"to": "solo", "text": "from whom?"})]) == 0
        assert main(["mail", "--as", "solo", "send", "solo", "again"]) == 0
        assert main(["tool", "write_file", json.dumps({"path": "trainer/eval.py", "content": "x"})]) == 1
        assert "refused: trainer/eval.py: protected" in capsys.readouterr().out
        assert call({"op": "shell", "cmd": "id"})["rc"] == 2  # nothing but the org's requests
    inbox = Mail(lab_dir(root, program)).inbox("solo")
    assert [(m["from"], m["text"]) for m in inbox] == [("claude", "from whom?"), ("claude", "again")]


def test_what_a_box_says_through_its_port_is_recorded_in_bounds(project, monkeypatch):
    """The attack: a CLI's box sends its port, at no model's cost, hook calls with a 16 MB last
    message and tool calls refused with 16 MB of arguments: each went whole, fsynced, into the
    agent's transcript, on the harness's disk, which no box's watch sees. Each is clipped now; and
    with the disk down to the agents' reserve, the port refuses what would write."""
    from org.agents import clis
    from org.agents.transcript import RECORD_CHARS
    root, program = project
    worktree(root, program, "claude")
    handle = port_handler(program, "claude", root)
    huge = "x" * (4 << 20)
    handle({"op": "hook", "event": "notify", "payload": json.dumps({"last_assistant_message": huge})})
    answer = handle({"op": "tool", "name": "write_file", "arguments": {"path": "trainer/eval.py", "content": huge}})
    assert answer["rc"] == 1 and "protected" in answer["output"]
    transcript = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl")
    assert transcript.path.stat().st_size < 4 * RECORD_CHARS
    assert transcript.events("turn_end")[0]["last_message"].endswith(f"... ({4 << 20} characters)")
    monkeypatch.setattr(clis, "AGENT_DISK_RESERVE", 1 << 62)  # (a disk as good as full)
    answer = handle({"op": "tool", "name": "send_message", "arguments": {"to": "solo", "text": "hi"}})
    assert answer["rc"] == 2 and answer["output"].startswith("refused: the disk has") and "delete files" in answer["output"]
    assert Mail(lab_dir(root, program)).inbox("solo") == []


def test_a_request_line_is_a_mb_at_most_and_a_long_turn_still_ends(project, monkeypatch, capsys):
    """The harness holds each connection's request line, 32 at once, outside every box: 16 MB
    lines took it 1.6 GB (session 43's red team). A line is 1 MB at most now, refused in one line past that; a
    file that long is written in the box. A CLI's turn-end hook, whose last message may be longer,
    sends that message clipped (its record was clipped anyway), and the turn still ends."""
    from org.agents.port import MAX_REQUEST
    root, program = project
    worktree(root, program, "claude")
    with Port(lab_dir(root, program) / "clis" / "claude" / "port", port_handler(program, "claude", root), None) as port:
        long = {"path": "notes.txt", "content": "x" * MAX_REQUEST}
        assert call({"op": "tool", "name": "write_file", "arguments": long}, str(port.org_socket)) == {
            "output": "error: a request to the org is one line of at most 1 MB; write a longer file in your own shell",
            "rc": 2}
        with socket.socket(socket.AF_UNIX) as conn, socket_name(port.org_socket) as name:  # (by hand, past `org`'s check)
            conn.connect(name)
            line = json.dumps({"op": "board", "pad": "x" * 2 * MAX_REQUEST}).encode() + b"\n"
            def send():
                with contextlib.suppress(OSError):
                    conn.sendall(line)
            sending = threading.Thread(target=send)
            sending.start()  # (the port answers after its first MB, and closes on the rest)
            assert b"one line of at most 1 MB" in conn.makefile("rb").readline()
            sending.join()
        with socket.socket(socket.AF_UNIX) as conn, socket_name(port.org_socket) as name:  # a client that sends, then reads
            conn.connect(name)
            conn.sendall(line)  # (the rest was closed unread: this client got a reset, and no answer)
            assert b"one line of at most 1 MB" in conn.makefile("rb").readline()
        monkeypatch.setenv(PORT_VAR, str(port.org_socket))
        assert main(["agent-hook", "notify", json.dumps({"type": "agent-turn-complete",
                                                         "last-assistant-message": "y" * (2 * MAX_REQUEST)})]) == 0
    [ended] = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl").events("turn_end")
    assert ended["backend"] == "codex" and ended["last_message"].startswith("yyy") and len(ended["last_message"]) < 10_000


def hold_every_connection(server: socket.socket, held: list):
    """A gateway that accepts and never answers, until it is closed."""
    try:
        while True:
            held.append(server.accept())
    except OSError:  # closed
        pass


def test_a_box_that_opens_connections_by_the_hundred_holds_a_few_threads(tmp_path, monkeypatch):
    """A CLI's box reaches its port's two sockets, and each connection was a thread of its
    supervisor for as long as the box held it open (two for the gateway's relay, and one more in
    the gateway, in the runner's process): 200 connections to each held 600 threads here. Each
    socket now serves MAX_CONNECTIONS at once and closes what comes past them; a request line
    never sent to org.sock ends after ORG_READ_SECONDS."""
    from org.agents import port as port_module
    upstream = socket.create_server(("127.0.0.1", 0))  # a gateway that accepts and waits
    held, answered = [], []
    threading.Thread(target=hold_every_connection, args=(upstream, held), daemon=True).start()
    with Port(tmp_path / "port", lambda request: {"output": "ok", "rc": 0}, upstream.getsockname()) as port:
        before = threading.active_count()
        for path in (port.org_socket, port.gateway_socket):
            for _ in range(200):
                conn = socket.socket(socket.AF_UNIX)
                conn.connect(str(path))
                answered.append(conn)
        time.sleep(1.0)
        grown = threading.active_count() - before
        assert grown <= 3 * port_module.MAX_CONNECTIONS + 4, grown
        for conn in answered:
            conn.close()
        time.sleep(0.5)
        assert call({"op": "board"}, str(port.org_socket))["output"] == "ok"  # the port serves on
    upstream.close()
    monkeypatch.setattr(port_module, "ORG_READ_SECONDS", 1)
    with Port(tmp_path / "port", lambda request: {"output": "ok", "rc": 0}, None) as port:
        silent = socket.socket(socket.AF_UNIX)
        silent.connect(str(port.org_socket))
        silent.settimeout(10)
        started = time.monotonic()
        assert b"error: TimeoutError" in silent.recv(1000) and time.monotonic() - started < 5  # let go
        silent.close()


def test_a_lab_in_a_deep_folder_keeps_its_ports(tmp_path):
    """A socket's address holds 107 bytes, a lab's folder may be deeper: both sockets still serve,
    and the `org` command and the box's relay still reach them."""
    folder = tmp_path / ("deep" * 15) / ("deeper" * 10) / "port"
    assert len(str(folder / "gateway.sock")) > 107
    upstream = socket.create_server(("127.0.0.1", 0))  # the gateway: echoes what it is sent

    def echo():
        conn, _ = upstream.accept()
        with conn:
            conn.sendall(conn.recv(100))
    threading.Thread(target=echo, daemon=True).start()
    with upstream, Port(folder, lambda request: {"output": request["op"], "rc": 0}, upstream.getsockname()) as port:
        assert call({"op": "board"}, str(port.org_socket)) == {"output": "board", "rc": 0}
        inside, relayed = socket.socketpair()  # the CLI's connection to the box's 127.0.0.1:PORT
        threading.Thread(target=relay_one, args=(relayed, str(port.gateway_socket)), daemon=True).start()
        with inside:
            inside.sendall(b"POST /v1/responses")
            assert inside.recv(100) == b"POST /v1/responses"


def burn(seconds: float):
    """CPU time of this thread, as the harness's work for an agent is."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def test_an_agent_that_floods_its_port_gets_a_fifth_of_a_harness_core(tmp_path):
    """The harness answers an agent's port outside every box, at a run's priority: a CLI that
    called `org results` in a loop, 4 at a time, kept harness threads busy on the runs' cores (a
    2-thread run took 3.6x as long: hunt42). Past a burst, each answer's CPU time is now waited
    out, 4 times over, before the next starts, however many connections the agent opens."""
    def costly(request: dict) -> dict:
        burn(0.05)
        return {"output": "ok", "rc": 0}

    def caller():
        for _ in range(5):
            assert call({"op": "board"}, str(port.org_socket)) == {"output": "ok", "rc": 0}
    with Port(tmp_path / "port", costly, None, Pacer(burst=0.2)) as port:
        start = time.monotonic()
        callers = [threading.Thread(target=caller) for _ in range(4)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join()
        elapsed = time.monotonic() - start
    # 20 answers of 0.05 CPU-s: 1 s unpaced; paced, 0.2 CPU-s at once and the rest at SHARE (4 s)
    assert SHARE == 0.2 and elapsed > 0.6 * (20 * 0.05 - 0.2) / SHARE, elapsed

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.1: pass\n"
    with Port(tmp_path / "port", lambda request: {"output": str(subprocess.run([sys.executable, "-c", spin]).returncode),
                                                  "rc": 0}, None, Pacer(burst=0)) as port:  # (half a `results` was git's)
        start = time.monotonic()
        assert [call({"op": "board"}, str(port.org_socket))["output"] for _ in range(4)] == ["0"] * 4
        elapsed = time.monotonic() - start
    assert elapsed > 3 * 0.1 / SHARE, elapsed  # (its children's CPU time counts: 0.4 s or more unpaced)

    box = subprocess.Popen([sys.executable, "-c", spin.replace("0.1", "1.5")])  # (a CLI's box, which ends)
    os.waitid(os.P_PID, box.pid, os.WEXITED | os.WNOWAIT)  # (ended, not yet reaped)
    with Port(tmp_path / "port", lambda request: {"output": str(box.wait()), "rc": 0}, None, Pacer(burst=0)) as port:
        call({"op": "board"}, str(port.org_socket))  # (an answer as the process reaps it: its 1.5 CPU-s)
        start = time.monotonic()
        call({"op": "board"}, str(port.org_socket))
    assert time.monotonic() - start < 1.5 / SHARE / 2  # (not this answer's: at most twice its wall time)


def test_a_request_that_is_dear_to_read_is_paced_too(tmp_path):
    """The port parsed each request line before its pacing began: 16 MB lines of `[{},...]`, 4 at
    once, kept a harness core busy at no cost to the agent, and a 2-thread run took 34x as long
    (session 43's red team). Reading a request is now part of its answer's cost."""
    dear = b"[" + b"{}," * ((1 << 20) // 3 - 2) + b"{}]\n"  # (a line's most, 1 MB: about 0.06 CPU-s to parse)
    with Port(tmp_path / "port", lambda request: {"output": "ok", "rc": 0}, None, Pacer(burst=0)) as port:
        with socket.socket(socket.AF_UNIX) as conn, socket_name(port.org_socket) as name:
            conn.connect(name)
            conn.sendall(dear)
            assert conn.makefile("rb").readline()
        cost, start = port.pacer.last, time.monotonic()
        assert call({"op": "board"}, str(port.org_socket))["output"] == "ok"
    assert cost > 0.02 and time.monotonic() - start > 0.8 * cost / SHARE, (cost, time.monotonic() - start)


def test_the_harnesss_work_for_an_agent_runs_at_sched_idle(tmp_path, monkeypatch):
    """Paced alone, a flood of `org results` took a fifth of a core at a run's priority, and a
    2-thread run beside it took 21-24% longer (session 43's red team). The port's answers and a CLI's take-ins
    now run at SCHED_IDLE, and so does what they start (git): below the agent's process's other
    threads, in its cpu group at its boxes' weight (the test below; SCHED_IDLE is weighed only
    within a group)."""
    child = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"]

    def policies(request=None) -> dict:
        return {"output": f"{os.sched_getscheduler(0)} {subprocess.run(child, capture_output=True, text=True).stdout.strip()}",
                "rc": 0}
    with Port(tmp_path / "port", policies, None) as port:
        assert call({"op": "board"}, str(port.org_socket))["output"] == f"{os.SCHED_IDLE} {os.SCHED_IDLE}"
    monkeypatch.setattr("org.agents.clis.TAKE_IN_EVERY_SECONDS", 0.0)
    seen = []
    _supervise(subprocess.Popen(["sleep", "1"]), Control(tmp_path, "a"), take_in=lambda: seen.append(policies()["output"]))
    assert seen and set(seen) == {f"{os.SCHED_IDLE} {os.SCHED_IDLE}"}, seen
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # (the supervisor's own thread is not)


@pytest.mark.skipif(cgroup_root("cpu") is None or cgroup_root("cpu") == cgroup_root("memory"),
                    reason=f"a cgroup v1 cpu hierarchy: {cpu_share()}")
def test_an_agents_process_is_at_its_boxes_cpu_weight_in_a_launch(project):
    """SCHED_IDLE weighs nothing across cgroups: the runs' boxes are groups of their own, and a
    thread at SCHED_IDLE in the harness's group slowed a 2-thread run 9x (session 43's red team).
    `org launch` sets LOW_WEIGHT_VAR in each agent's pane, on which `org agent` calls
    join_agents_weight (commands.py): that moves the process (the harness's work for that agent,
    and all it starts) into a cpu group of its own at the agents' boxes' weight, which goes once
    the process has ended. Here: the pane's variable, and what join_agents_weight does."""
    from org.launch import agent_pane
    from org.workspace import ProgramSite
    root, program = project
    pane = agent_pane(ProgramSite(root, program, None), "solo", 0.0, 3)
    assert pane.env[LOW_WEIGHT_VAR] == "1"
    show = ("import os, sys; from org.agents.pacing import join_agents_weight; group = join_agents_weight(); "
            "print(group, (group / 'cpu.shares').read_text().strip(), '/' + group.name in open('/proc/self/cgroup').read())")
    out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == ["10", "True"], out  # (v1's shares for weight 1: a run's are 1024)
    group = Path(out[0])
    sweep(group.parent, "box-*")  # (as the next box's making does: its maker is gone)
    assert not group.exists()


def test_an_agent_imports_what_its_first_calls_need_before_it_takes_the_agents_weight(project, monkeypatch):
    """At the agents' weight with runs on both cores, a CLI's first `results` (scipy.stats, 0.9
    CPU-s) took 100 s, and an SDK agent's first turn would import its SDK (anthropic's: 1.9 CPU-s)
    there too. `org agent` imports them at its own weight, then joins its group, at a weight by
    what runs in it."""
    from org.agents import commands, pacing
    root, program = project
    done = []
    warm = commands.warm_imports
    monkeypatch.setattr(commands, "warm_imports", lambda program, name: done.append(("warmed", name)) or warm(program, name))
    monkeypatch.setattr(pacing, "join_agents_weight", lambda weight: done.append(("joined", weight)))
    monkeypatch.setattr(commands, "start_agent", lambda *args, **kwargs: "(not started)")
    monkeypatch.setenv(LOW_WEIGHT_VAR, "1")
    for agent in ("claude", "keyless", "solo"):
        assert main(["agent", agent, "--program", "tiny"]) == 0
    # a CLI's process is the harness's work for it, at its command boxes' weight; an SDK's or the scripted
    # researcher's own loop runs there, at its CLI's box's (at 1 a CLI made no request for a minute)
    assert done == [("warmed", "claude"), ("joined", AGENTS_WEIGHT), ("warmed", "keyless"), ("joined", CLI_CPU_WEIGHT),
                    ("warmed", "solo"), ("joined", CLI_CPU_WEIGHT)]
    show = ("import sys; from org.agents.commands import warm_imports; from org.workspace import load_program; "
            f"program = load_program({str(root / 'programs' / 'tiny.yaml')!r}); before = 'scipy.stats' in sys.modules; "
            "warm_imports(program, 'claude'); print(before, 'scipy.stats' in sys.modules, 'org.agents.clis' in sys.modules, "
            "'anthropic' in sys.modules); warm_imports(program, 'keyless'); print('anthropic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.split() == ["False", "True", "True", "False", "True"], out


def test_an_honest_agents_calls_are_not_held_up(tmp_path):
    """Pacing bounds a flood, not the few dear calls of an honest agent: its first BURST CPU
    seconds go at once (session 42's pacing waited 4 times each call's cost after it)."""
    working = []  # the wall time of each call's work: on a loaded machine 0.3 CPU-s takes longer

    def answer(request):
        began = time.monotonic()
        burn(0.3)
        working.append(time.monotonic() - began)
        return {"output": "ok", "rc": 0}
    with Port(tmp_path / "port", answer, None) as port:
        start = time.monotonic()
        for _ in range(int(BURST / 0.3) - 1):
            call({"op": "board"}, str(port.org_socket))
        held = time.monotonic() - start - sum(working)
    assert held < 1.5, (held, working)  # (paced: 1.2 s a call past the first, 4.8 s in all)


def test_a_command_an_agent_runs_through_its_port_is_its_own_cpu_not_the_harnesss(project):
    """`org tool run` runs the command in the agent's command box, whose CPU is the agent's (its
    box's meter), not the harness's work: pacing counted it as the harness's, and a CLI that ran a
    1.5 CPU-s command through its port waited 6 s for its next call."""
    if available() is not None or cgroup_root("cpuacct") is None:
        pytest.skip(f"needs boxes and their CPU meter: {available() or cpu_meter()}")
    root, program = project
    worktree(root, program, "claude")
    spin = "python3 -c 'import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass'"
    with Port(lab_dir(root, program) / "clis" / "claude" / "port", port_handler(program, "claude", root), None,
              Pacer(burst=0)) as port:
        assert call({"op": "tool", "name": "run", "arguments": {"command": spin}}, str(port.org_socket))["rc"] == 0
        start = time.monotonic()
        call({"op": "board"}, str(port.org_socket))
    assert time.monotonic() - start < 1.5, time.monotonic() - start  # (the box's 1.5 CPU-s paced: 6 s)


def test_taking_in_a_clis_commits_is_paced_by_what_it_costs(tmp_path, monkeypatch):
    """A CLI's commits are taken in every 2 s, outside its box. A branch pointed each second at a
    commit naming a fresh junk blob that inflates to 1 GB kept the harness inflating, and a run
    took 8.7x as long (session 42's red team). Past a burst, what each take-in costs is now waited out 4 times over."""
    monkeypatch.setattr("org.agents.clis.TAKE_IN_EVERY_SECONDS", 0.0)
    taken, cli = [], subprocess.Popen(["sleep", "120"])

    def take_in():  # (at SCHED_IDLE: on a busy machine, a take-in waits for an idle core)
        taken.append(time.monotonic())
        burn(0.3)
        if len(taken) == 4:
            cli.terminate()  # the CLI ends: a last take-in, unpaced
    _supervise(cli, Control(tmp_path, "a"), take_in=take_in, pacer=Pacer(burst=0))
    # between two starts, what the first cost is paid back at SHARE a second, however long a loaded
    # machine stretched the work itself (between two ends, a slow take-in then a quick one is less)
    gaps = [later - earlier for earlier, later in zip(taken, taken[1:-1])]  # (the last: as the CLI ends)
    assert gaps and min(gaps) >= 0.3 / SHARE - 0.05, taken  # (unpaced: 0.8 s, the supervisor's 0.5 s and the work)


def test_a_port_that_is_gone_is_one_line_not_a_traceback(project, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(PORT_VAR, str(tmp_path / "gone.sock"))
    assert main(["mail", "board"]) == 2
    assert main(["tool", "read_inbox"]) == 2
    out = capsys.readouterr()
    assert out.out.count("error: cannot reach the org through") == 2 and "Traceback" not in out.out + out.err


def test_codex_notify_takes_its_json_after_the_options():
    """codex appends its JSON as the last argument of the notify command."""
    args = build_parser().parse_args(["agent-hook", "--as", "a", "--program", "p", "notify", '{"type": "x"}'])
    assert (args.event, args.payload, args.agent) == ("notify", '{"type": "x"}', "a")


def test_a_claude_json_its_cli_wrote_with_no_end_of_brackets_is_read_as_nothing(tmp_path):
    """~/.claude.json is the CLI's, written in its box, and the harness seeds it at every (re)start:
    10^5 nested brackets there raised RecursionError (no decode error) and the agent never started
    again; a hook's payload of a 5000-digit number, ValueError (nor that)."""
    from org.agents.clis import seed_claude_home
    (tmp_path / ".claude.json").write_text("[" * 100_000)
    seed_claude_home(tmp_path, tmp_path / "tree")
    state = json.loads((tmp_path / ".claude.json").read_text())
    assert state["hasCompletedOnboarding"] and state["projects"][str(tmp_path / "tree")]["hasTrustDialogAccepted"]
