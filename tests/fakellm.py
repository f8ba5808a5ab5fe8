"""
A fake LLM server for tests: real SDK clients talk HTTP to it on 127.0.0.1.

It speaks the Anthropic Messages API (/v1/messages, and its free /v1/messages/count_tokens) and OpenAI's Chat Completions
(/v1/chat/completions) and Responses (/v1/responses), streamed (SSE) or not, and replays
scripted turns: each request takes the next turn of the script for its model.

    with FakeLLM({"claude-test": [[Text("Let me look."), Call("read_file", {"path": "a.txt"})],
                                  [Call("finish", {"summary": "done"})]]}) as llm:
        client = anthropic.Anthropic(api_key="k", base_url=llm.url)
        ...
        llm.requests[0].body["tools"], llm.requests[0].headers["authorization"]

A turn is a list of Text and Call (one reply), a Fail (an HTTP error status), a Garbage (a 200
whose body is not what the API promises) or a Repeat (a turn replayed until a condition on
the request holds). A Call's args may be a string: it is sent
as-is, so a test can send malformed JSON. After the script runs out, every reply is the text
"(script exhausted)". `hold` (an Event) keeps every reply until it is set, so a test can have
calls in flight at once; `pause` is seconds between the events of a stream. Both SDKs run on
httpx2, which HTTP-mocking libraries do not intercept, hence a real server.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Text:
    text: str


@dataclass
class Call:
    name: str
    args: dict | str = field(default_factory=dict)


@dataclass
class Fail:
    status: int
    headers: dict = field(default_factory=lambda: {"retry-after-ms": "1"})


@dataclass
class Garbage:
    body: str = "<html>502 Bad Gateway, sort of</html>"


@dataclass
class Repeat:
    """Reply `turn` again and again until until(request_body) holds; then go on with the
    script (e.g. keep reading the inbox until both juniors have reported)."""
    turn: list
    until: object


def said(body: dict, text: str) -> bool:
    """Whether `text` appears anywhere in a request (its messages, its tool results)."""
    return text in json.dumps(body)


@dataclass
class Recorded:
    path: str
    headers: dict
    body: dict


ERROR_TYPES = {429: "rate_limit_error", 529: "overloaded_error", 500: "api_error", 400: "invalid_request_error"}


class FakeLLM:
    def __init__(self, scripts: dict[str, list] | list, usage: dict | None = None,
                 hold: threading.Event | None = None, pause: float = 0):
        self.hold, self.pause = hold, pause
        self.scripts = {"*": list(scripts)} if isinstance(scripts, list) else {k: list(v) for k, v in scripts.items()}
        self.usage = {"input": 100, "output": 20, "cache_write": 0, "cache_read": 0, **(usage or {})}
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def next_turn(self, model: str, body: dict):
        with self.lock:
            script = self.scripts.get(model, self.scripts.get("*"))
            while script and isinstance(script[0], Repeat) and script[0].until(body):
                script.pop(0)
            if not script:
                return [Text("(script exhausted)")]
            return script[0].turn if isinstance(script[0], Repeat) else script.pop(0)

    def bodies(self, path_suffix: str = "") -> list[dict]:
        return [r.body for r in self.requests if r.path.endswith(path_suffix)]


def _handler(fake: FakeLLM):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.loads(raw or b"{}")
            path = self.path.split("?")[0]
            with fake.lock:
                fake.requests.append(Recorded(path, {k.lower(): v for k, v in self.headers.items()}, body))
            if path == "/v1/messages/count_tokens":
                return self.send_json({"input_tokens": len(raw) // 4})
            if fake.hold:
                fake.hold.wait(30)
            turn = fake.next_turn(body.get("model", ""), body)
            if isinstance(turn, Fail):
                kind = ERROR_TYPES.get(turn.status, "api_error")
                return self.send_json({"type": "error", "error": {"type": kind, "message": f"fake {turn.status}"}},
                                      status=turn.status, headers=turn.headers)
            if isinstance(turn, Garbage):
                return self.send_raw(turn.body.encode(), "application/json")
            reply = [Text(part) if isinstance(part, str) else part for part in turn]
            api = {"/v1/messages": anthropic_reply, "/v1/chat/completions": chat_reply,
                   "/v1/responses": responses_reply}.get(path)
            if api is None:
                return self.send_json({"error": {"message": f"no such endpoint {path}"}}, status=404)
            events = api(body.get("model", "fake"), reply, fake.usage)
            if api is chat_reply and not (body.get("stream_options") or {}).get("include_usage"):
                # as OpenAI's: a streamed completion reports its usage only when asked to
                events["stream"] = [e for e in events["stream"] if not (isinstance(e[1], dict) and "usage" in e[1])]
            if body.get("stream"):
                self.send_sse(events["stream"])
            else:
                self.send_json(events["json"])

        def send_json(self, obj, status=200, headers=None):
            self.send_raw(json.dumps(obj).encode(), "application/json", status, headers)

        def send_raw(self, data: bytes, content_type: str, status=200, headers=None):
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def send_sse(self, events: list[tuple[str | None, object]]):
            # no content-length on a stream: close the connection to end it (else clients hang)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            for name, data in events:
                frame = (f"event: {name}\n" if name else "") + f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
                self.wfile.write(frame.encode())
                self.wfile.flush()
                time.sleep(fake.pause)

    return Handler


def _pieces(s: str) -> list[str]:
    """Split into two chunks, as real streams deliver arguments in pieces."""
    half = len(s) // 2
    return [p for p in (s[:half], s[half:]) if p]


def _raw_args(call: Call) -> str:
    return call.args if isinstance(call.args, str) else json.dumps(call.args)


# --- Anthropic Messages ------------------------------------------------------------------

def anthropic_reply(model: str, reply: list, usage: dict) -> dict:
    u = {"input_tokens": usage["input"], "output_tokens": usage["output"],
         "cache_creation_input_tokens": usage["cache_write"], "cache_read_input_tokens": usage["cache_read"]}
    has_calls = any(isinstance(p, Call) for p in reply)
    stop = "tool_use" if has_calls else "end_turn"
    blocks = [{"type": "text", "text": p.text} if isinstance(p, Text) else
              {"type": "tool_use", "id": f"toolu_{i}_{int(time.time_ns()) % 10**8}", "name": p.name,
               "input": p.args if isinstance(p.args, dict) else {}} for i, p in enumerate(reply)]
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
               "stop_reason": stop, "stop_sequence": None, "usage": u}
    stream = [("message_start", {"type": "message_start", "message": {
        **message, "content": [], "stop_reason": None, "usage": {**u, "output_tokens": 1}}})]
    for i, (part, block) in enumerate(zip(reply, blocks)):
        if isinstance(part, Text):
            stream.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            deltas = [{"type": "text_delta", "text": t} for t in _pieces(part.text)]
        else:
            stream.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block":
                                                   {"type": "tool_use", "id": block["id"], "name": part.name, "input": {}}}))
            deltas = [{"type": "input_json_delta", "partial_json": t} for t in _pieces(_raw_args(part))]
        stream += [("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}) for d in deltas]
        stream.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    stream.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": usage["output"]}}))
    stream.append(("message_stop", {"type": "message_stop"}))
    return {"json": {**message, "content": blocks}, "stream": stream}


# --- OpenAI Chat Completions -------------------------------------------------------------

def chat_reply(model: str, reply: list, usage: dict) -> dict:
    text = "".join(p.text for p in reply if isinstance(p, Text))
    calls = [p for p in reply if isinstance(p, Call)]
    finish = "tool_calls" if calls else "stop"
    u = {"prompt_tokens": usage["input"] + usage["cache_read"], "completion_tokens": usage["output"],
         "total_tokens": usage["input"] + usage["cache_read"] + usage["output"],
         "prompt_tokens_details": {"cached_tokens": usage["cache_read"]}}
    ids = [f"call_{i}" for i in range(len(calls))]
    message = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [{"id": ids[i], "type": "function", "function": {"name": c.name, "arguments": _raw_args(c)}}
                                 for i, c in enumerate(calls)]
    base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": model}
    full = {**base, "object": "chat.completion", "usage": u,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}]}

    def chunk(delta, finish_reason=None):
        return (None, {**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    stream = [chunk({"role": "assistant", "content": ""})]
    stream += [chunk({"content": t}) for t in _pieces(text)]
    for i, c in enumerate(calls):
        stream.append(chunk({"tool_calls": [{"index": i, "id": ids[i], "type": "function",
                                             "function": {"name": c.name, "arguments": ""}}]}))
        stream += [chunk({"tool_calls": [{"index": i, "function": {"arguments": t}}]}) for t in _pieces(_raw_args(c))]
    stream.append(chunk({}, finish))
    stream.append((None, {**base, "object": "chat.completion.chunk", "choices": [], "usage": u}))
    stream.append((None, "[DONE]"))
    return {"json": full, "stream": stream}


# --- OpenAI Responses --------------------------------------------------------------------

def responses_reply(model: str, reply: list, usage: dict) -> dict:
    output = []
    for i, p in enumerate(reply):
        if isinstance(p, Text):
            output.append({"type": "message", "id": f"msg_{i}", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": p.text, "annotations": []}]})
        else:
            output.append({"type": "function_call", "id": f"fc_{i}", "call_id": f"call_{i}", "name": p.name,
                           "arguments": _raw_args(p), "status": "completed"})
    u = {"input_tokens": usage["input"] + usage["cache_read"], "output_tokens": usage["output"],
         "total_tokens": usage["input"] + usage["cache_read"] + usage["output"],
         "input_tokens_details": {"cached_tokens": usage["cache_read"]},
         "output_tokens_details": {"reasoning_tokens": 0}}
    full = {"id": "resp_fake", "object": "response", "created_at": int(time.time()), "model": model,
            "status": "completed", "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": [], "usage": u}
    seq = iter(range(10**6))
    stream = [("response.created", {"type": "response.created", "sequence_number": next(seq),
                                    "response": {**full, "status": "in_progress", "output": [], "usage": None}})]
    for i, (p, item) in enumerate(zip(reply, output)):
        stream.append(("response.output_item.added", {"type": "response.output_item.added", "sequence_number": next(seq),
                                                      "output_index": i, "item": {**item, "status": "in_progress"}}))
        if isinstance(p, Text):
            stream += [("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": next(seq),
                                                       "item_id": f"msg_{i}", "output_index": i, "content_index": 0,
                                                       "delta": t, "logprobs": []}) for t in _pieces(p.text)]
        stream.append(("response.output_item.done", {"type": "response.output_item.done", "sequence_number": next(seq),
                                                     "output_index": i, "item": item}))
    stream.append(("response.completed", {"type": "response.completed", "sequence_number": next(seq), "response": full}))
    return {"json": full, "stream": stream}
