"""
OpenAI models, and any OpenAI-compatible server (vLLM, llama.cpp, Ollama) through base_url.

Two APIs: Chat Completions (the default: what compatible servers implement) and Responses
(api="responses"). Both stream; the whole history is sent each turn (store=False), so the same
code works against servers that keep no state. OpenAI caches long prompt prefixes by itself;
the cached tokens are read from usage and priced as cache reads.
"""
from __future__ import annotations

import json

import openai

from org.agents.models import Reply, Transient, Usage, api_errors, tool_call


class OpenAIModel:
    def __init__(self, model: str, api_key: str, base_url: str | None = None, api: str = "chat",
                 max_tokens: int = 8192, timeout: float = 600):
        if api not in ("chat", "responses"):
            raise ValueError(f"OpenAI api must be 'chat' or 'responses', got {api!r}")
        self.name, self.api, self.max_tokens = model, api, max_tokens
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    def turn(self, system: str, history: list[dict], tools: list[dict], on_text) -> Reply:
        with api_errors():
            if self.api == "chat":
                stream = self.client.chat.completions.create(
                    model=self.name, messages=chat_messages(system, history), stream=True,
                    tools=[{"type": "function", "function": t} for t in tools],
                    stream_options={"include_usage": True}, max_completion_tokens=self.max_tokens)
                return collect_chat(stream, on_text)
            stream = self.client.responses.create(
                model=self.name, instructions=system, input=response_items(history), stream=True,
                tools=[{"type": "function", **t} for t in tools], store=False,
                max_output_tokens=self.max_tokens)
            return collect_response(stream, on_text)


# --- Chat Completions -------------------------------------------------------------------------

def chat_messages(system: str, history: list[dict]) -> list[dict]:
    messages = [{"role": "system", "content": system}]
    for item in history:
        if item["kind"] == "user":
            messages.append({"role": "user", "content": item["text"]})
        elif item["kind"] == "tool":
            messages.append({"role": "tool", "tool_call_id": item["id"], "content": item["output"]})
        else:
            message = {"role": "assistant", "content": item["text"] or None}
            if item["calls"]:
                message["tool_calls"] = [{"id": c["id"], "type": "function",
                                          "function": {"name": c["name"], "arguments": c["raw"]}}
                                         for c in item["calls"]]
            messages.append(message)
    return messages


def collect_chat(stream, on_text) -> Reply:
    """Text deltas as they come; tool calls arrive in pieces keyed by index."""
    text, calls, usage, finish, chunks = "", {}, Usage(), None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage:
            cached = getattr(chunk.usage.prompt_tokens_details, "cached_tokens", None) or 0
            usage = Usage(input=(chunk.usage.prompt_tokens or 0) - cached,
                          output=chunk.usage.completion_tokens or 0, cache_read=cached)
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        delta = choice.delta
        if delta.content:
            text += delta.content
            on_text(delta.content)
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "raw": ""})
            call["id"] = piece.id or call["id"]
            if piece.function:
                call["name"] += piece.function.name or ""
                call["raw"] += piece.function.arguments or ""
    if chunks == 0:
        raise Transient("the stream held no completion")
    return Reply(text, [tool_call(c["id"] or f"call_{i}", c["name"], c["raw"]) for i, c in sorted(calls.items())],
                 usage, finish)


# --- Responses ----------------------------------------------------------------------------

def response_items(history: list[dict]) -> list[dict]:
    items = []
    for item in history:
        if item["kind"] == "user":
            items.append({"role": "user", "content": item["text"]})
        elif item["kind"] == "tool":
            items.append({"type": "function_call_output", "call_id": item["id"], "output": item["output"]})
        else:
            if item["text"]:
                items.append({"type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": item["text"]}]})
            items += [{"type": "function_call", "call_id": c["id"], "name": c["name"], "arguments": c["raw"]}
                      for c in item["calls"]]
    return items


def collect_response(stream, on_text) -> Reply:
    """Text deltas as they come; the calls and the usage from the final response."""
    final = None
    for event in stream:
        if event.type == "response.output_text.delta":
            on_text(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):
            final = event.response
        elif event.type in ("response.failed", "error"):
            raise Transient(f"the response failed: {json.dumps(_error_of(event))[:300]}")
    if final is None:
        raise Transient("the stream ended without a completed response")
    text = "".join(part.text for item in final.output if item.type == "message"
                   for part in item.content if getattr(part, "type", "") == "output_text")
    calls = [tool_call(item.call_id, item.name, item.arguments or "")
             for item in final.output if item.type == "function_call"]
    u = final.usage
    cached = (getattr(u.input_tokens_details, "cached_tokens", 0) or 0) if u else 0
    usage = Usage(input=(u.input_tokens - cached) if u else 0, output=u.output_tokens if u else 0,
                  cache_read=cached)
    return Reply(text, calls, usage, final.status)


def _error_of(event) -> dict:
    error = getattr(event, "error", None) or getattr(getattr(event, "response", None), "error", None)
    return error.model_dump() if hasattr(error, "model_dump") else {"error": str(error)}
