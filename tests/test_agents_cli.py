"""The agents from the command line: `org agent` (the process in a pane), the `org tool`,
`org results` and `org mail` commands a CLI agent uses from its shell, the turn-end hook of the
claude and codex backends, and those two CLIs themselves where they are installed."""
import json
import shutil
import subprocess
import threading

import pytest

from agentlab import BackgroundRunner, lab_dir, make_project, tiny_program, worktree
from fakellm import FakeLLM, Text
from org.agents.clis import claude_argv, cli_env, codex_argv, next_codex_prompt, on_hook
from org.agents.control import Control
from org.agents.roles import agent_entry
from org.agents.transcript import Transcript
from org.cli import main
from org.ledger import Ledger
from org.mail import Mail

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
    assert [m["text"] for m in Mail(lab_dir(root, program)).inbox("solo")] == ["Plan posted."]
    Mail(lab_dir(root, program)).send("solo", "claude", "Thanks!")
    capsys.readouterr()
    assert main(["mail", "read"]) == 0
    assert "[message from solo" in capsys.readouterr().out and Mail(lab_dir(root, program)).inbox("claude") == []

    assert main(["results"]) == 0
    assert json.loads(capsys.readouterr().out)["program"] == "tiny"
    assert main(["tool", "finish", '{"summary": "done"}']) == 0  # tells the supervisor to end the CLI
    assert Control(lab_dir(root, program), "claude").stop_reason() == "finished: done"


def test_claude_codes_stop_hook_charges_the_turn_and_hands_over_new_mail(project, tmp_path):
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
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        assert ledger.spend("tiny")["agents"]["claude"]["dollars"] == pytest.approx((1000 * 3 + 100 * 15) / 1e6)
    transcript = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl")
    assert transcript.events("turn_end")[0]["last_message"] == "Submitted no-softcap; waiting."

    Control(lab_dir(root, program), "claude").pause("taken over")  # a person has the pane: let Claude stop
    assert on_hook("stop", program, "claude", root, payload) is None
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:  # the same messages are not charged twice
        assert ledger.spend("tiny")["agents"]["claude"]["tokens_in"] == 1000


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


@pytest.mark.skipif(shutil.which("claude") is None,
                    reason="the Claude Code CLI is not installed (npm install -g @anthropic-ai/claude-code)")
def test_claude_code_ends_its_turn_through_the_stop_hook_and_continues_with_mail(project, tmp_path):
    root, program = project
    tree = worktree(root, program, "claude")
    home = tmp_path / "home"
    home.mkdir()
    Mail(lab_dir(root, program)).send("solo", "claude", "Please say hello.")
    with FakeLLM([[Text("Waiting for mail.")], [Text("Hello.")]]) as llm:
        env = {**cli_env("claude", program, root), "HOME": str(home), "ANTHROPIC_BASE_URL": llm.url,
               "ANTHROPIC_API_KEY": "sk-ant-test", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        argv = claude_argv(agent_entry(program, "claude"), program, root) + ["-p", "Start."]
        Control(lab_dir(root, program), "claude").clear_stop()
        stopper = threading.Timer(30, lambda: Control(lab_dir(root, program), "claude").stop("test over"))
        stopper.start()
        try:
            subprocess.run(argv, cwd=tree, env=env, timeout=120, capture_output=True)
        finally:
            stopper.cancel()
    assert any("Please say hello." in json.dumps(r.body) for r in llm.requests)
    assert Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl").events("turn_end")


@pytest.mark.skipif(shutil.which("codex") is None,
                    reason="the Codex CLI is not installed (npm install -g @openai/codex)")
def test_codex_reports_each_turn_through_notify(project, tmp_path):
    # written from the notes on codex 0.169 (a custom provider on a Responses server); not yet
    # run on a machine with codex installed
    root, program = project
    entry = agent_entry(program, "claude").model_copy(update={"backend": "codex"})
    tree = worktree(root, program, "claude")
    with FakeLLM([[Text("Looked around; nothing to do yet.")]]) as llm:
        provider = ["-c", "model_provider=fake", "-c", 'model_providers.fake.name="fake"',
                    "-c", f'model_providers.fake.base_url="{llm.url}/v1"',
                    "-c", 'model_providers.fake.env_key="FAKE_KEY"', "-c", 'model_providers.fake.wire_api="responses"']
        env = {**cli_env("claude", program, root), "CODEX_HOME": str(tmp_path / "codex"), "FAKE_KEY": "k"}
        (tmp_path / "codex").mkdir()
        argv = codex_argv(entry, program, root, resume=False) + provider + ["Start."]
        subprocess.run(argv, cwd=tree, env=env, timeout=120, capture_output=True)
    assert llm.requests and llm.requests[0].path == "/v1/responses"
    [turn] = Transcript(lab_dir(root, program) / "transcripts" / "claude.jsonl").events("turn_end")
    assert turn["backend"] == "codex" and "nothing to do yet" in turn["last_message"]
