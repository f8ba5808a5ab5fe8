"""
Claude through the Anthropic Messages API: tools, streaming, prompt caching.

The reply is streamed as raw events and assembled here (not by the SDK's helper) so that a
model's malformed tool-call JSON becomes a tool error for the model instead of an exception.
Prompt caching: breakpoints on the system prompt, the last tool and the newest message, so
each turn reads the whole conversation so far from the cache and writes only the new part.
"""
from __future__ import annotations

import anthropic

from org.agents.models import Reply, Transient, Usage, api_errors, tool_call

CACHE = {"type": "ephemeral"}


class AnthropicModel:
    def __init__(self, model: str, api_key: str, base_url: str | None = None,
                 max_tokens: int = 8192, timeout: float = 600):
        self.name = model
        self.max_tokens = max_tokens
        # retries are ours (with_backoff), so they show in the transcript and end in a pause
        self.client = anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    def turn(self, system: str, history: list[dict], tools: list[dict], on_text) -> Reply:
        with api_errors():
            stream = self.client.messages.create(
                model=self.name, max_tokens=self.max_tokens, stream=True,
                system=[{"type": "text", "text": system, "cache_control": CACHE}],
                tools=to_tools(tools), messages=to_messages(history))
            return collect(stream, on_text)


def to_tools(tools: list[dict]) -> list[dict]:
    out = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
           for t in tools]
    if out:
        out[-1]["cache_control"] = CACHE
    return out


def to_messages(history: list[dict]) -> list[dict]:
    """Neutral history -> alternating user/assistant messages (tool results travel in a user
    message, ahead of any text), with a cache breakpoint on the newest block."""
    messages = []
    for item in history:
        if item["kind"] == "assistant":
            role = "assistant"
            blocks = [{"type": "text", "text": item["text"]}] if item["text"].strip() else []
            blocks += [{"type": "tool_use", "id": c["id"], "name": c["name"],
                        "input": c["args"] if isinstance(c["args"], dict) else {}} for c in item["calls"]]
            blocks = blocks or [{"type": "text", "text": "(no reply)"}]
        elif item["kind"] == "tool":
            role = "user"
            blocks = [{"type": "tool_result", "tool_use_id": item["id"], "content": item["output"] or "(empty)",
                       "is_error": item["error"]}]
        else:
            role = "user"
            blocks = [{"type": "text", "text": item["text"] or "(empty)"}]
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": role, "content": blocks})
    if messages:
        messages[-1]["content"][-1] = {**messages[-1]["content"][-1], "cache_control": CACHE}
    return messages


def collect(stream, on_text) -> Reply:
    """Assemble a streamed message: text as it arrives, tool calls when their block ends."""
    blocks, usage, stop_reason, started = {}, Usage(), None, False
    for event in stream:
        if event.type == "message_start":
            started = True
            u = event.message.usage
            usage = Usage(input=u.input_tokens or 0, output=u.output_tokens or 0,
                          cache_write=u.cache_creation_input_tokens or 0,
                          cache_write_1h=(u.cache_creation and u.cache_creation.ephemeral_1h_input_tokens) or 0,
                          cache_read=u.cache_read_input_tokens or 0)
        elif event.type == "content_block_start":
            b = event.content_block
            blocks[event.index] = {"type": b.type, "text": "", "json": "",
                                   "id": getattr(b, "id", None), "name": getattr(b, "name", None)}
        elif event.type == "content_block_delta":
            block, delta = blocks[event.index], event.delta
            if delta.type == "text_delta":
                block["text"] += delta.text
                on_text(delta.text)
            elif delta.type == "input_json_delta":
                block["json"] += delta.partial_json
        elif event.type == "message_delta":
            stop_reason = event.delta.stop_reason
            if event.usage and event.usage.output_tokens is not None:
                usage.output = event.usage.output_tokens
    if not started:
        raise Transient("the stream ended before a message started")
    ordered = [blocks[i] for i in sorted(blocks)]
    text = "".join(b["text"] for b in ordered if b["type"] == "text")
    calls = [tool_call(b["id"], b["name"], b["json"]) for b in ordered if b["type"] == "tool_use"]
    return Reply(text, calls, usage, stop_reason)
