"""Bad input from models and servers: the agent answers with a tool error, backs off, pauses with
a reason or stops cleanly; it never crashes and never loses a message. Also: restarts rebuild
the conversation, and pause/resume/stop work from outside the agent's process."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from agentlab import lab_dir, make_project, tiny_program, worktree
from fakellm import Call, Fail, FakeLLM, Garbage, Text, said
from org.agents.anthropic_api import AnthropicModel
from org.agents.control import Control
from org.agents.loop import Agent, Settings
from org.agents.openai_api import OpenAIModel
from org.agents.tools import Limits
from org.agents.transcript import Transcript
from org.mail import Mail

FAST = Settings(retry_attempts=3, retry_base_seconds=0.01, max_idle_turns=2,
                limits=Limits(output_chars=2000, poll_seconds=0.05))
MODELS = {
    "anthropic": lambda url: AnthropicModel("claude-sonnet-test", "k", base_url=url),
    "openai-chat": lambda url: OpenAIModel("gpt-5-test", "k", base_url=url + "/v1"),
    "openai-responses": lambda url: OpenAIModel("gpt-5-test", "k", base_url=url + "/v1", api="responses"),
}


@pytest.fixture
def lab(tmp_path):
    agents = [{"name": "solo", "backend": "anthropic", "model": "claude-sonnet-test"}, {"name": "chief", "role": "chief"}]
    root, program = make_project(tmp_path, tiny_program(agents), trainer=False)
    return root, program, worktree(root, program, "solo")


def run_agent(lab, script, backend="anthropic", settings=FAST, **fake):
    """(why the agent ended, the fake server, the transcript)"""
    root, program, tree = lab
    with FakeLLM(script, **fake) as llm:
        agent = Agent("solo", program, root, tree, MODELS[backend](llm.url), console=Console(quiet=True),
                      settings=settings)
        reason = agent.run()
    return reason, llm, Transcript(lab_dir(root, program) / "transcripts" / "solo.jsonl")


FINISH = [Call("finish", {"summary": "done"})]


@pytest.mark.parametrize("backend", list(MODELS))
def test_rate_limits_overload_and_garbage_are_retried_with_back_off(lab, backend):
    reason, llm, transcript = run_agent(lab, [Fail(429), Fail(529), FINISH], backend)
    assert reason == "finished: done" and len(llm.requests) == 3
    assert [e["error"][:3] for e in transcript.events("retry")] == ["429", "529"]
    reason, llm, transcript = run_agent(lab, [Garbage(), Garbage("data: {half"), FINISH], backend)
    assert reason == "finished: done"
    assert len(transcript.events("retry")) == 4  # two more


def test_when_retries_run_out_the_agent_pauses_with_the_reason_and_resumes_with_a_message(lab):
    root, program, tree = lab
    control = Control(lab_dir(root, program), "solo")
    ended = []
    script = [Fail(529), Fail(529), Fail(529), FINISH]
    with FakeLLM(script) as llm:
        agent = Agent("solo", program, root, tree, MODELS["anthropic"](llm.url), console=Console(quiet=True),
                      settings=FAST)
        thread = threading.Thread(target=lambda: ended.append(agent.run()))
        thread.start()
        assert control.wait_for_state("paused", timeout=20)
        assert "gave up after 3 tries" in control.state()["reason"] and "529" in control.state()["reason"]
        control.resume("The API is back; carry on.")
        thread.join(20)
    assert ended == ["finished: done"]
    assert said(llm.requests[-1].body, "The API is back; carry on.")


def test_malformed_arguments_unknown_tools_and_wrong_types_get_tool_errors(lab):
    """And what a model writes is never the pane's markup: a tool named `[/x]`, or a command
    `echo [/x]`, raised rich's MarkupError in the agent's own loop (it crashed), as did a JSON
    list for the arguments (AttributeError)."""
    script = [[Call("read_file", '{"path": "trainer/config.py"'),  # truncated JSON
               Call("delete_everything", {}),
               Call("read_file", {"path": 42}),
               Call("edit_file", {"path": "trainer/config.py"}),
               Call("run", '["ls"]'),
               Call("[/x]", {}),
               Call("run", {"command": "echo '[/x]'"}),
               Call("send_message", '{"to": "all", "text": "hi \\ud800"}'),  # no request body encodes it
               Call("run", '{"command": "sleep 1", "timeout_seconds": NaN}'),    # a timeout that never ends
               Call("run", '{"command": ' + "[" * 5000 + "]" * 5000 + "}")],      # deeper than Python recurses
              FINISH]
    reason, llm, transcript = run_agent(lab, script)
    assert reason == "finished: done"
    outputs = [l["output"] for l in transcript.lines() if l["kind"] == "tool"][:10]
    assert all("not one JSON object a request can carry" in o for o in outputs[7:10]), outputs[7:]
    assert "not one JSON object" in outputs[0] and "not one JSON object" in outputs[4]
    assert "unknown tool 'delete_everything'" in outputs[1] and "read_file" in outputs[1]
    assert "path must be a JSON string" in outputs[2]
    assert "missing ['old_text', 'new_text']" in outputs[3]
    assert "unknown tool '[/x]'" in outputs[5] and "[/x]" in outputs[6]
    assert all(o.startswith("error: ") for o in outputs[:6])
    tool_results = [b for m in llm.requests[1].body["messages"] for b in m["content"]
                    if isinstance(b, dict) and b["type"] == "tool_result"]
    assert len(tool_results) == 10 and all(b["is_error"] for b in tool_results[:6] + tool_results[7:])


def test_a_cli_agents_tool_call_with_a_nan_timeout_is_refused_not_run_forever(lab):
    """`org tool run '{"command": ..., "timeout_seconds": NaN}'` (a CLI agent's port parses JSON as
    Python does): min(max(nan, 1), 600) is NaN, and wait(timeout=nan) never times out, so the
    command ran unbounded, its CPU booked only once it ended, past agent_cpu_seconds."""
    from org.agents.commands import run_tool
    root, program, tree = lab
    started = time.monotonic()
    output, rc = run_tool(program, "solo", root, "run", {"command": "sleep 30", "timeout_seconds": float("nan")})
    assert rc == 1 and "timeout_seconds must be a finite number" in output, output
    assert time.monotonic() - started < 20


def test_text_no_file_or_inbox_can_hold_and_odd_paths_get_one_clear_line(lab, capsys):
    """Found by a hunt (session 35), each through `org tool` as a CLI agent sends it:
    - a lone surrogate in a message was "sent", and its reader's `org tool read_inbox` was a
      traceback (the message acknowledged, lost); in `finish` it was a traceback, nothing recorded;
    - NaN and 10**400 as override values were queued, and every run failed;
    - an edit that grew a 1 MB file to 100 MB went through (our memory), and "." as a path, a
      folder to edit or a file of bytes read `failed: OSError ...` or a decode error;
    - a name outside ASCII in a protected folder passed git_commit (git quoted it);
    - arguments nested 30,000 deep were a traceback."""
    from org.agents.commands import run_tool
    root, program, tree = lab
    tool = lambda name, args: run_tool(program, "solo", root, name, args)
    for name, args, says in [
        ("send_message", {"to": "chief", "text": "see \ud800 here"}, "text is not UTF-8 text (a lone surrogate at character 4)"),
        ("finish", {"summary": "done \ud800"}, "summary is not UTF-8 text"),
        ("read_file", {"path": "a\0b"}, "path holds a NUL character"),
        ("submit_experiment", {"arm": "nan", "hypothesis": "h", "overrides": {"softcap": float("nan")}},
         "softcap=nan: a key is a name (letters, digits, _ and .), a value a finite number"),
        ("submit_experiment", {"arm": "huge", "hypothesis": "h", "overrides": {"softcap": 10 ** 400}}, "a value a finite number"),
        ("write_file", {"path": ".", "content": "x"}, "'.' names your worktree itself, not a file"),
        ("edit_file", {"path": "trainer", "old_text": "a", "new_text": "b"}, "trainer: a folder, not a file"),
        ("send_message", {"to": "chief", "text": "  "}, "text is empty"),  # (delivered, empty)
        ("submit_experiment", {"arm": "x", "hypothesis": "h", "ref": ""}, "ref is empty (leave ref out to measure your HEAD)"),
        ("results", {"experiment": 999}, "no experiment 999"),  # (it answered with everything)
    ]:
        output, rc = tool(name, args)
        assert rc == 1 and says in output and "Traceback" not in output, (name, output)
    assert Mail(lab_dir(root, program)).inbox("chief") == []  # (nothing half-sent)
    started = time.monotonic()  # (a timeout of 0 was the default's 120 s)
    assert tool("run", {"command": "sleep 5", "timeout_seconds": 0})[0].startswith("killed after 1s (timeout)")
    assert time.monotonic() - started < 30  # (not the default's 120 s: a loaded machine's box start-up aside)
    (tree / "big.txt").write_text("x" * (1 << 20))
    (tree / "bytes.bin").write_bytes(b"\xff\xfe" * 10)
    output, _ = tool("edit_file", {"path": "big.txt", "old_text": "x", "new_text": "y" * 100, "replace_all": True})
    assert "the edit makes 104857600 bytes, over the file tools' limit" in output and (tree / "big.txt").stat().st_size == 1 << 20
    (tree / "empty.txt").write_text("")
    assert tool("read_file", {"path": "empty.txt", "offset": 3})[0] == "[offset 3 is past the file's 0 lines]"
    (tree / "five.txt").write_text("".join(f"line {i}\n" for i in range(1, 6)))
    assert tool("read_file", {"path": "five.txt", "offset": 2, "limit": 0})[0] == \
        "line 2\n\n[... 3 more lines; read on with offset=3]"  # (it said offset=2: the same line, for good)
    output, _ = tool("edit_file", {"path": "bytes.bin", "old_text": "a", "new_text": "b"})
    assert "bytes.bin: not UTF-8 text (byte 0); edit_file edits text" in output, output
    (tree / "org").mkdir()
    (tree / "org" / "é.py").write_text("print('mine')\n")
    output, _ = tool("git_commit", {"message": "a module of mine"})
    assert "the commit would change protected paths: org/é.py" in output, output
    from org.cli import main
    assert main(["tool", "read_file", '{"path": ' + "[" * 30000 + "]" * 30000 + "}"]) == 2
    assert "org: arguments must be a JSON object: " in capsys.readouterr().err


def test_oversized_output_is_cut_with_a_note(lab):
    root, program, tree = lab
    (tree / "big.txt").write_text("".join(f"line {i}\n" for i in range(50_000)))
    reason, llm, transcript = run_agent(lab, [[Call("read_file", {"path": "big.txt"})],
                                              [Call("run", {"command": "cat big.txt"})], FINISH])
    read, ran = [l["output"] for l in transcript.lines() if l["kind"] == "tool"][:2]
    assert len(read) < 2300 and "characters cut" in read and read.startswith("line 0\n")
    assert len(ran) < 2300 and "bytes cut" in ran and ran.rstrip().endswith("line 49999")


def test_a_model_that_never_calls_a_tool_is_nudged_then_stopped(lab):
    reason, llm, transcript = run_agent(lab, [[Text("I think the softcap matters.")]] * 5)
    assert reason == "idle: the model replied 2 times in a row without a tool call"
    assert len(llm.requests) == 2 and said(llm.requests[1].body, "You replied without calling a tool")
    assert transcript.events("stopped")[-1]["reason"] == reason


def test_the_llm_budget_stops_the_agent_cleanly(tmp_path):
    agents = [{"name": "solo", "backend": "anthropic", "model": "claude-sonnet-test"}]
    program = tiny_program(agents)
    program["budget"]["total_llm_dollars"] = 0.5
    root, program = make_project(tmp_path, program, trainer=False)
    lab = (root, program, worktree(root, program, "solo"))
    # each call: 100k input tokens at $3 and 10k output at $15 per million = $0.45
    script = [[Call("list_files", {})]] * 5
    reason, llm, transcript = run_agent(lab, script, usage={"input": 100_000, "output": 10_000})
    assert reason == "the program's LLM budget is spent ($0.9000 of $0.5)"
    assert len(llm.requests) == 2
    assert Control(lab_dir(root, program), "solo").state()["state"] == "stopped"


def test_an_agent_killed_mid_call_is_restarted_from_its_transcript_and_the_board(lab):
    root, program, tree = lab
    transcript = Transcript(lab_dir(root, program) / "transcripts" / "solo.jsonl")
    Mail(lab_dir(root, program)).post("chief", "Decision: test no-softcap first.")
    first = [[Call("write_file", {"path": "notes.md", "content": "softcap plan"})],
             [Call("run", {"command": "sleep 5"})]]
    with FakeLLM(first) as llm:  # the agent's own process, SIGKILLed while its second call runs
        proc = subprocess.Popen([sys.executable, "-c", AGENT_PROCESS.format(
            program=root / "programs" / "tiny.yaml", root=root, tree=tree, url=llm.url)])
        deadline = time.monotonic() + 60
        while not any(l["kind"] == "assistant" and l["calls"][0]["name"] == "run" for l in transcript.lines()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    # nothing of its box outlives it: bwrap itself once stayed behind, for good
    eventually_gone = time.monotonic() + 10
    while boxes_in(tree) and time.monotonic() < eventually_gone:
        time.sleep(0.1)
    assert not boxes_in(tree)
    reason, llm, transcript = run_agent(lab, [FINISH])
    assert reason == "finished: done"
    messages = llm.requests[0].body["messages"]
    text = json.dumps(messages)
    assert "softcap plan" in text and "wrote notes.md" in text  # the earlier session
    assert "interrupted: the agent restarted before this call returned" in text  # the open call, closed
    assert "You were restarted" in text and "Decision: test no-softcap first." in text  # the board
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]


def boxes_in(tree) -> list[int]:
    """Pids of the bwrap processes whose command line names this worktree."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"bwrap") and str(tree).encode() in argv:
            pids.append(int(cmdline.parent.name))
    return pids


AGENT_PROCESS = """
from rich.console import Console
from org.agents.anthropic_api import AnthropicModel
from org.agents.loop import Agent
from org.program import load_program
program = load_program("{program}")
model = AnthropicModel("claude-sonnet-test", "k", base_url="{url}")
Agent("solo", program, "{root}", "{tree}", model, console=Console(quiet=True)).run()
"""


def test_mail_on_record_but_not_acknowledged_is_not_delivered_twice(lab):
    root, program, tree = lab
    mail = Mail(lab_dir(root, program))
    sent = mail.send("chief", "solo", "Please run no-softcap.")
    transcript = Transcript(lab_dir(root, program) / "transcripts" / "solo.jsonl")
    transcript.append("user", text="[message from chief]\nPlease run no-softcap.", mail_ids=[sent["id"]])
    later = mail.send("chief", "solo", "Also write a standup.")  # the crash came before this one
    reason, llm, _ = run_agent(lab, [FINISH])
    text = json.dumps(llm.requests[0].body)
    assert text.count("Please run no-softcap.") == 1 and text.count("Also write a standup.") == 1
    assert mail.inbox("solo") == [] and {m["id"] for m in mail.read_messages("solo")} == {sent["id"], later["id"]}


def test_takeover_pauses_a_waiting_agent_promptly_and_release_resumes_it_with_a_message(lab):
    root, program, tree = lab
    control = Control(lab_dir(root, program), "solo")
    script = [[Call("read_inbox", {"wait_seconds": 600})], FINISH]
    ended = []
    with FakeLLM(script) as llm:
        agent = Agent("solo", program, root, tree, MODELS["anthropic"](llm.url), console=Console(quiet=True),
                      settings=FAST)
        thread = threading.Thread(target=lambda: ended.append(agent.run()))
        thread.start()
        assert control.wait_for_state("running", timeout=10) and asked(llm, 1)
        control.pause("taken over by a person")  # the agent is inside a 600-second wait
        assert control.wait_for_state("paused", timeout=10)
        assert control.state()["reason"] == "taken over by a person" and len(llm.requests) == 1
        control.resume("I renamed the arm to no-cap; carry on.")
        thread.join(20)
    assert ended == ["finished: done"]
    assert said(llm.requests[1].body, "I renamed the arm to no-cap; carry on.")


def asked(llm: FakeLLM, n: int, timeout: float = 10.0) -> bool:
    """Whether the model has been asked n times within timeout: "running" is said before the
    first request, and a busy machine once let a stop arrive in between."""
    deadline = time.monotonic() + timeout
    while len(llm.requests) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(llm.requests) >= n


def test_stop_ends_the_agent_at_the_next_safe_point(lab):
    root, program, tree = lab
    control = Control(lab_dir(root, program), "solo")
    ended = []
    with FakeLLM([[Call("read_inbox", {"wait_seconds": 600})], FINISH]) as llm:
        agent = Agent("solo", program, root, tree, MODELS["anthropic"](llm.url), console=Console(quiet=True),
                      settings=FAST)
        thread = threading.Thread(target=lambda: ended.append(agent.run()))
        thread.start()
        assert control.wait_for_state("running", timeout=10) and asked(llm, 1)  # in its 600-second wait
        control.stop("the org is shutting down")
        thread.join(20)
    assert ended == ["stopped: the org is shutting down"] and len(llm.requests) == 1
    assert control.state()["state"] == "stopped"
