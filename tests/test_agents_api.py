"""An agent through each API backend, end to end: the real SDK client streams from a fake server
on 127.0.0.1 that replays a junior's session (add a config toggle to the trainer, commit, submit,
read the verdict, message the chief) and the real runner measures the experiment."""
import json
import os
import resource
import time

import git
import pytest
from rich.console import Console

from agentlab import BackgroundRunner, lab_dir, make_project, tiny_program, worktree
from fakellm import Call, FakeLLM, Text
from org.agents.anthropic_api import AnthropicModel
from org.agents.loop import Agent, Settings
from org.agents.openai_api import OpenAIModel
from org.agents.pacing import SHARE, Pacer
from org.agents.tools import TOOL_NAMES
from org.agents.transcript import Transcript
from org.ledger import Ledger
from org.mail import Mail

TOGGLE = "    head_scale: float = 1.0      # multiplies the logits; 1 = off\n"
JUNIOR_SESSION = [
    [Text("I'll read the config first."), Call("read_file", {"path": "trainer/config.py", "limit": 40})],
    [Call("edit_file", {"path": "trainer/config.py", "old_text": "    softcap: float = 15.0",
                        "new_text": TOGGLE + "    softcap: float = 15.0"})],
    [Call("git_commit", {"message": "config: add head_scale toggle (off by default)"})],
    [Text("Hypothesis: head_scale=1 is a no-op, so no regression."),
     Call("submit_experiment", {"arm": "head-scale", "hypothesis": "head_scale=1 changes nothing: no regression",
                                "overrides": {"head_scale": 1.0}})],
    [Call("results", {"experiment": 2, "wait_seconds": 120})],
    [Call("send_message", {"to": "chief", "text": "Experiment 2 (head-scale) is measured; see results."})],
    [Call("finish", {"summary": "head-scale measured and reported"})],
]

BACKENDS = {
    "anthropic": lambda url: AnthropicModel("claude-sonnet-test", "sk-ant-test-key", base_url=url),
    "openai-chat": lambda url: OpenAIModel("gpt-5-test", "sk-openai-test-key", base_url=url + "/v1"),
    "openai-responses": lambda url: OpenAIModel("gpt-5-test", "sk-openai-test-key", base_url=url + "/v1",
                                                api="responses"),
}
ENDPOINTS = {"anthropic": "/v1/messages", "openai-chat": "/v1/chat/completions",
             "openai-responses": "/v1/responses"}


@pytest.fixture
def lab(tmp_path):
    agents = [{"name": "chief", "role": "chief"},
              {"name": "junior", "role": "junior", "backend": "anthropic", "model": "claude-sonnet-test"}]
    root, program = make_project(tmp_path, tiny_program(agents, topology="chief", corpus="corpus"))
    return root, program, worktree(root, program, "junior")


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_junior_adds_a_toggle_commits_submits_reads_the_verdict_and_reports(lab, backend):
    root, program, tree = lab
    with FakeLLM(JUNIOR_SESSION) as llm, BackgroundRunner(root, program):
        agent = Agent("junior", program, root, tree, BACKENDS[backend](llm.url),
                      console=Console(quiet=True), settings=Settings(retry_base_seconds=0.01))
        assert agent.run() == "finished: head-scale measured and reported"

    # the change is committed on the agent's branch, and the runner measured that commit
    repo = git.Repo(tree)
    assert TOGGLE in (tree / "trainer" / "config.py").read_text()
    head = repo.head.commit
    assert head.message.startswith("config: add head_scale") and head.author.name == "junior"
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        experiment = ledger.experiment(2)
        assert (experiment["arm"], experiment["who"], experiment["code_commit"]) == ("head-scale", "junior", head.hexsha)
        runs = ledger.runs("tiny", experiment_id=2)
        assert [r["status"] for r in runs] == ["completed", "completed"] and all(r["val_bpb"] for r in runs)
        spend = ledger.spend("tiny")["agents"]["junior"]
    assert spend["tokens_in"] == 100 * len(JUNIOR_SESSION) and spend["tokens_out"] == 20 * len(JUNIOR_SESSION)
    assert spend["dollars"] > 0  # priced from org/prices.yaml

    # the model saw the verdict: the results tool's output went back in the next request
    bodies = llm.bodies(ENDPOINTS[backend])
    assert len(bodies) == len(JUNIOR_SESSION)
    results = json.loads(_tool_output(bodies[5], backend))
    [verdict] = [v for v in results["verdicts"] if v["arm"] == "head-scale"]
    assert verdict["n"] == 2 and verdict["verdict"]
    assert "head-scale" in {e["arm"] for e in results["experiments"]}

    # the chief got the message; the transcript holds the whole session
    assert [m["text"] for m in Mail(lab_dir(root, program)).inbox("chief")] == [
        "Experiment 2 (head-scale) is measured; see results."]
    kinds = [line["kind"] for line in Transcript(lab_dir(root, program) / "transcripts" / "junior.jsonl").lines()]
    assert kinds.count("assistant") == len(JUNIOR_SESSION) and kinds.count("tool") == len(JUNIOR_SESSION)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_requests_carry_the_tools_the_key_streaming_and_cache_breakpoints(lab, backend):
    root, program, tree = lab
    with FakeLLM([[Call("finish", {"summary": "nothing to do"})]]) as llm:
        agent = Agent("junior", program, root, tree, BACKENDS[backend](llm.url), console=Console(quiet=True))
        agent.run()
    [request] = llm.requests
    body = request.body
    assert request.path == ENDPOINTS[backend] and body["stream"] is True
    if backend == "anthropic":
        assert request.headers.get("x-api-key") == "sk-ant-test-key" or \
            request.headers.get("authorization") == "Bearer sk-ant-test-key"
        assert [t["name"] for t in body["tools"]] == TOOL_NAMES
        assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"} and "Rigor" in body["system"][0]["text"]
        assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        assert body["tools"][0]["input_schema"]["required"] == ["path"]
    elif backend == "openai-chat":
        assert request.headers["authorization"] == "Bearer sk-openai-test-key"
        assert [t["function"]["name"] for t in body["tools"]] == TOOL_NAMES
        assert body["messages"][0]["role"] == "system" and body["stream_options"] == {"include_usage": True}
    else:
        assert request.headers["authorization"] == "Bearer sk-openai-test-key"
        assert [t["name"] for t in body["tools"]] == TOOL_NAMES and body["store"] is False
        assert "Rigor" in body["instructions"]


def test_prompt_cache_tokens_are_priced_as_cache_reads_and_writes(lab):
    root, program, tree = lab
    usage = {"input": 10, "output": 100, "cache_write": 1000, "cache_read": 100_000}
    with FakeLLM([[Call("finish", {"summary": "done"})]], usage=usage) as llm:
        Agent("junior", program, root, tree, BACKENDS["anthropic"](llm.url), console=Console(quiet=True)).run()
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        spend = ledger.spend("tiny")["agents"]["junior"]
    # claude-sonnet: $3 input, $15 output, $3.75 cache write, $0.30 cache read per million tokens
    assert spend["tokens_in"] == 101_010
    assert spend["dollars"] == pytest.approx((10 * 3 + 100 * 15 + 1000 * 3.75 + 100_000 * 0.30) / 1e6)


def _tool_output(body: dict, backend: str) -> str:
    """The last tool result in a request, in each API's own shape."""
    if backend == "anthropic":
        blocks = [b for m in body["messages"] for b in m["content"] if isinstance(b, dict) and b["type"] == "tool_result"]
        return blocks[-1]["content"]
    if backend == "openai-chat":
        return [m for m in body["messages"] if m["role"] == "tool"][-1]["content"]
    return [i for i in body["input"] if i.get("type") == "function_call_output"][-1]["output"]


def test_an_agents_mail_reaches_its_model_a_turns_worth_at_a_time(lab):
    """Six messages as long as one may be, waiting as the junior starts: its first request took
    in all of them (and a thousand would have gone at once, past any model's context: every
    later call of the agent's failed). A turn takes in 64 KB of mail, the rest at the next."""
    from org.mail import MAX_MESSAGE_CHARS
    root, program, tree = lab
    mail = Mail(lab_dir(root, program))
    for i in range(6):
        mail.send("chief", "junior", str(i) * MAX_MESSAGE_CHARS)
    session = [[Call("read_file", {"path": "trainer/config.py", "limit": 1})], [Call("finish", {"summary": "read"})]]
    with FakeLLM(session) as llm:
        agent = Agent("junior", program, root, tree, BACKENDS["anthropic"](llm.url), console=Console(quiet=True))
        assert agent.run() == "finished: read"
    first, second = (json.dumps(body) for body in llm.bodies(ENDPOINTS["anthropic"]))
    assert first.count("[message from chief") == 3 and "[3 more message(s) wait in your inbox, from chief (3)" in first
    assert second.count("[message from chief") == 6 and all(str(i) * MAX_MESSAGE_CHARS in second for i in range(6))
    assert mail.inbox("junior") == [] and len(mail.read_messages("junior")) == 6


def test_a_reply_that_floods_tool_calls_gets_a_fifth_of_a_harness_core(lab):
    """One reply may hold any number of tool calls, and each is the harness's work, outside every
    box at a run's priority (its take-in of the agent's commits after it included): a reply of
    240 calls ran them back to back. Past a burst, each now waits out what the last cost, 4 times
    over, at SCHED_IDLE (org/agents/pacing.py)."""
    root, program, tree = lab
    calls = [Call("results", {}), Call("list_files", {"path": "trainer"}), Call("read_file", {"path": "trainer/model.py"})]
    flood = [calls * 80, [Call("finish", {"summary": "flooded"})]]
    with FakeLLM(flood) as llm:
        agent = Agent("junior", program, root, tree, BACKENDS["anthropic"](llm.url), console=Console(quiet=True))
        agent.pacer = Pacer(burst=0)
        results, policies = agent.tools.handlers["results"], set()  # (and at SCHED_IDLE: which thread runs them)
        agent.tools.handlers["results"] = lambda **args: (policies.add(os.sched_getscheduler(0)), results(**args))[1]
        since = process_cpu(), time.monotonic()  # (every thread's: the calls run in threads of their own)
        assert agent.run() == "finished: flooded"
        spent, elapsed = process_cpu() - since[0], time.monotonic() - since[1]
    assert policies == {os.SCHED_IDLE} and os.sched_getscheduler(0) == os.SCHED_OTHER
    assert spent > 0.5, spent  # (enough of the harness's work to be paced)
    # a fifth of a core paced, and the SDK's and the fake server's work, which is not (unpaced: 0.94)
    assert spent < 2 * SHARE * elapsed, (spent, elapsed)


def process_cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime
