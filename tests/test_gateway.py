"""The LLM gateway: real SDK clients with an agent's token talk to it on 127.0.0.1, it calls the
fake model server with the real key, meters every call for the agent that made it, and refuses
unknown tokens and calls past the program's LLM budget."""
import json
import socket

import anthropic
import openai
import pytest

from agentlab import lab_dir, make_project, tiny_program
from fakellm import Call, FakeLLM, Text
from org.agents.anthropic_api import AnthropicModel
from org.agents.models import make_model
from org.agents.openai_api import OpenAIModel
from org.gateway import Gateway, GatewayError, client_config, gateway_dir, prepare, read_keys, usage_of
from org.ledger import Ledger
from org.program import Agent
from test_launch import eventually

KEYS = {"ANTHROPIC_API_KEY": "sk-ant-REAL-0123456789", "OPENAI_API_KEY": "sk-openai-REAL-0123456789"}
AGENTS = {"claude": "anthropic", "gpt": "openai", "solo": "scripted"}


@pytest.fixture
def org(tmp_path):
    """A started program, the gateway's files written as `org launch` writes them, and the fake
    model server as the upstream of both providers."""
    root, program = make_project(tmp_path, tiny_program([]), trainer=False)
    with FakeLLM([[Text("hello")]] * 50, usage={"input": 1000, "output": 200}) as llm:
        env = {**KEYS, "ANTHROPIC_BASE_URL": llm.url, "OPENAI_BASE_URL": llm.url + "/v1"}
        tokens = prepare(lab_dir(root, program), AGENTS, env)
        with Gateway(lab_dir(root, program), program.name, say=lambda line: None) as gw:
            yield root, program, llm, gw, tokens


def spend(root, program, calls: int = 0) -> list[dict]:
    """The metered calls, once `calls` of them are in: the gateway meters a call as the reply
    closes, which can be a moment after the agent's client has read the reply's last event."""
    def rows() -> list[dict]:
        with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
            return ledger._all("SELECT agent, model, tokens_in, tokens_out, dollars FROM llm_spend")
    eventually(lambda: len(rows()) >= calls, 10, f"{calls} metered calls")
    return rows()


def ask(model) -> str:
    return model.turn("be brief", [{"kind": "user", "text": "hi"}], [], lambda text: None).text


def test_each_agent_calls_through_its_token_and_is_metered_once(org):
    root, program, llm, gw, tokens = org
    assert set(tokens) == {"claude", "gpt"}  # a scripted agent calls no model
    claude = make_model(Agent(name="claude", backend="anthropic", model="claude-sonnet-test"),
                        gateway=client_config(lab_dir(root, program), "claude", "anthropic"))
    gpt = make_model(Agent(name="gpt", backend="openai", model="gpt-5-test"),
                     gateway=client_config(lab_dir(root, program), "gpt", "openai"))
    responses = OpenAIModel("gpt-5-test", tokens["gpt"], base_url=gw.url + "/openai", api="responses")
    assert [ask(m) for m in (claude, gpt, responses)] == ["hello"] * 3  # all streamed
    assert claude.metered and gpt.metered

    # upstream saw the real keys, never a token; the agents' clients never had a key
    sent = [r.headers.get("x-api-key") or r.headers.get("authorization") for r in llm.requests]
    assert sent == [KEYS["ANTHROPIC_API_KEY"], f"Bearer {KEYS['OPENAI_API_KEY']}", f"Bearer {KEYS['OPENAI_API_KEY']}"]
    assert claude.client.api_key == tokens["claude"] and KEYS["ANTHROPIC_API_KEY"] not in json.dumps(tokens)

    rows = spend(root, program, calls=3)
    assert [(r["agent"], r["model"], r["tokens_in"], r["tokens_out"]) for r in rows] == [
        ("claude", "claude-sonnet-test", 1000, 200), ("gpt", "gpt-5-test", 1000, 200), ("gpt", "gpt-5-test", 1000, 200)]
    assert all(r["dollars"] > 0 for r in rows)


def test_a_non_streamed_call_is_metered_too(org):
    root, program, llm, gw, tokens = org
    client = anthropic.Anthropic(api_key=tokens["claude"], base_url=gw.url + "/anthropic", max_retries=0)
    reply = client.messages.create(model="claude-sonnet-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].text == "hello"
    assert [(r["agent"], r["tokens_in"], r["tokens_out"]) for r in spend(root, program, calls=1)] == [("claude", 1000, 200)]


def test_unknown_tokens_and_the_real_key_itself_are_refused(org):
    root, program, llm, gw, tokens = org
    for key in ("nanolab-claude-guessed", KEYS["ANTHROPIC_API_KEY"], ""):
        client = anthropic.Anthropic(api_key=key or "x", base_url=gw.url + "/anthropic", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError, match="unknown gateway token"):
            client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    client = openai.OpenAI(api_key=tokens["claude"], base_url=gw.url + "/nowhere", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert llm.requests == [] and spend(root, program) == []


def test_past_the_llm_budget_every_call_is_refused_until_a_person_raises_it(org):
    root, program, llm, gw, tokens = org
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        ledger.record_spend(program.name, "gpt", "gpt-5-test", 10, 10, program.budget.total_llm_dollars)
    model = AnthropicModel("claude-sonnet-test", tokens["claude"], base_url=gw.url + "/anthropic")
    with pytest.raises(anthropic.PermissionDeniedError, match="LLM budget is spent"):
        model.client.messages.create(model="claude-sonnet-test", max_tokens=5,
                                     messages=[{"role": "user", "content": "hi"}])
    assert llm.requests == []
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        ledger.change_budget(program.name, {"total_llm_dollars": 2 * program.budget.total_llm_dollars}, "ada")
    assert ask(model) == "hello"


def test_the_gateway_files_are_private_and_the_keys_file_must_be(tmp_path, org):
    root, program, *_ = org
    folder = gateway_dir(lab_dir(root, program))
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for name in ("keys.json", "tokens.json", "port"):
        assert oct((folder / name).stat().st_mode & 0o777) == "0o600", name
    keys = tmp_path / "keys.env"
    keys.write_text("# the org's keys\nexport ANTHROPIC_API_KEY='sk-ant-from-file'\n")
    keys.chmod(0o600)
    assert read_keys({"NANOLAB_KEYS_FILE": str(keys)}) == {"anthropic": "sk-ant-from-file"}
    keys.chmod(0o644)
    with pytest.raises(GatewayError, match=r"keys.env: readable by others \(mode 644\); chmod 600"):
        read_keys({"NANOLAB_KEYS_FILE": str(keys)})
    with pytest.raises(GatewayError, match="cannot read it"):
        read_keys({"NANOLAB_KEYS_FILE": str(tmp_path / "missing")})


def test_a_relaunch_keeps_the_port_while_it_is_free_and_gives_new_tokens(tmp_path):
    folder = tmp_path / "lab"
    first = prepare(folder, AGENTS, KEYS)
    port = (gateway_dir(folder) / "port").read_text()
    assert prepare(folder, AGENTS, KEYS) != first and (gateway_dir(folder) / "port").read_text() == port
    with socket.socket() as taken:  # someone else holds it now
        taken.bind(("127.0.0.1", int(port)))
        prepare(folder, AGENTS, KEYS)
    assert (gateway_dir(folder) / "port").read_text() != port


def test_usage_is_read_from_each_api_shape():
    anthropic_stream = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
                        b'{"input_tokens":7,"output_tokens":1,"cache_read_input_tokens":50}}}\n\n'
                        b'data: {"type":"message_delta","usage":{"output_tokens":42}}\n\n')
    u = usage_of(anthropic_stream, "text/event-stream", "anthropic")
    assert (u.input, u.output, u.cache_read) == (7, 42, 50)
    chat = b'data: {"choices":[]}\n\ndata: {"usage":{"prompt_tokens":30,"completion_tokens":5,' \
           b'"prompt_tokens_details":{"cached_tokens":10}}}\n\ndata: [DONE]\n\n'
    u = usage_of(chat, "text/event-stream; charset=utf-8", "openai")
    assert (u.input, u.output, u.cache_read) == (20, 5, 10)
    u = usage_of(b'{"usage":{"input_tokens":9,"output_tokens":3}}', "application/json", "openai")
    assert (u.input, u.output) == (9, 3)
    assert usage_of(b"<html>", "text/html", "openai").tokens_in == 0
