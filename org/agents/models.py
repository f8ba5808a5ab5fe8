"""
What every model backend returns, how its failures are sorted, and how a backend is chosen.

A backend is an object with `name` (the model id) and
    turn(system, history, tools, on_text) -> Reply
where history is the transcript's neutral conversation (see transcript.py), tools is
tools.TOOLS, and on_text(str) receives the reply's text as it streams.

Failures come out as one of two exceptions:
- Transient: worth retrying after a pause (429, 529 overloaded, 5xx, a dropped connection, a
  reply that does not parse); with_backoff() retries these a bounded number of times;
- Unavailable: retrying will not help (a 400 or 401, or the retries ran out): the agent
  pauses with the reason on show until a person resumes it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

RETRYABLE = (408, 409, 429, 500, 502, 503, 504, 529)


@dataclass
class Usage:
    input: int = 0        # uncached input tokens
    output: int = 0
    cache_write: int = 0  # input tokens written to the prompt cache
    cache_write_1h: int = 0  # of those, the ones cached for an hour (Anthropic: 2x input, not 1.25x)
    cache_read: int = 0   # input tokens read from the prompt cache

    @property
    def tokens_in(self) -> int:
        return self.input + self.cache_write + self.cache_read


@dataclass
class Reply:
    text: str
    calls: list[dict]          # [{"id", "name", "args": dict | None, "raw": str}]
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None


class Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(Exception):
    pass


def tool_call(call_id: str, name: str, raw: str) -> dict:
    """A tool call with its arguments parsed; args is None when the model sent malformed JSON,
    JSON that is not an object, or JSON no request can carry on: a lone surrogate (`"\\ud800"`,
    which no UTF-8 request body encodes: sent on to a teammate by mail, it stopped every later
    call of that teammate's), NaN or Infinity, or nesting deeper than Python recurses (the loop
    answers that with a tool error instead of running anything)."""
    try:
        args = json.loads(raw) if raw.strip() else {}
        json.dumps(args, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError):  # (JSONDecodeError and UnicodeEncodeError are ValueErrors)
        args = None
    args = args if isinstance(args, dict) else None
    return {"id": call_id, "name": name, "args": args, "raw": raw}


@contextmanager
def api_errors():
    """Sort the SDKs' exceptions (both SDKs name them alike) into Transient and Unavailable."""
    try:
        yield
    except _sdk("APIStatusError") as e:
        text = f"{e.status_code} {str(e.message)[:300]}"
        if e.status_code in RETRYABLE or any(w in text.lower() for w in ("overloaded", "rate_limit")):
            raise Transient(text, retry_after(e.response)) from None
        raise Unavailable(text) from None
    except _sdk("APIConnectionError") as e:  # timeouts included
        raise Transient(f"connection failed: {e}") from None
    except (*_sdk("APIResponseValidationError"), ValueError) as e:
        raise Transient(f"the server's reply did not parse: {str(e)[:300]}") from None


def _sdk(error: str) -> tuple:
    """That exception class of each SDK already imported. This module never imports them
    (scripted agents would pay ~3 s and ~100 MB); a backend imports its own SDK."""
    return tuple(getattr(sys.modules[m], error) for m in ("anthropic", "openai") if m in sys.modules)


def retry_after(response) -> float | None:
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except ValueError:
        pass
    return None


def with_backoff(ask, attempts: int, base_seconds: float, max_seconds: float, on_retry) -> Reply:
    """ask() until it succeeds; Transient failures wait (doubling, or as the server says) and
    retry, at most `attempts` tries in all, then Unavailable."""
    for attempt in range(1, attempts + 1):
        try:
            return ask()
        except Transient as e:
            if attempt == attempts:
                raise Unavailable(f"gave up after {attempts} tries; last: {e}") from None
            delay = min(e.retry_after if e.retry_after is not None else base_seconds * 2 ** (attempt - 1),
                        max_seconds)
            on_retry(attempt, delay, str(e))
            time.sleep(delay)


# --- choosing a backend ---------------------------------------------------------------------

API_KEYS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


def missing_credentials(program) -> list[str]:
    """One line per agent whose backend needs a key that neither the environment nor the keys
    file (NANOLAB_KEYS_FILE) holds (for `org launch`)."""
    from org.gateway import BACKEND_PROVIDER, PROVIDERS, read_keys
    keys = read_keys(dict(os.environ))
    problems = []
    for agent in program.org.agents:
        provider = BACKEND_PROVIDER.get(agent.backend)
        if provider and provider not in keys:
            problems.append(f"agent {agent.name} (backend {agent.backend}) needs {PROVIDERS[provider][0]} "
                            "in the environment (or in the file NANOLAB_KEYS_FILE names)")
    return problems


def make_model(agent, api: str | None = None, gateway: tuple[str, str] | None = None):
    """The API backend for a program's agent entry. In a launched org the model is called
    through the org's gateway, `gateway` = (base URL, the agent's token), and the gateway
    meters it; by hand, keys and base URLs come from the environment (ANTHROPIC_API_KEY /
    ANTHROPIC_BASE_URL, OPENAI_API_KEY / OPENAI_BASE_URL). `api` picks OpenAI's 'chat'
    (default) or 'responses' (env NANOLAB_OPENAI_API)."""
    var = API_KEYS[agent.backend]
    if gateway:
        base_url, key = gateway
    else:
        key = os.environ.get(var)
        if not key:
            raise Unavailable(f"agent {agent.name} (backend {agent.backend}) needs {var} in the environment")
        base_url = getattr(agent, "base_url", None) or os.environ.get(var.replace("API_KEY", "BASE_URL"))
    if agent.backend == "anthropic":
        from org.agents.anthropic_api import AnthropicModel
        model = AnthropicModel(agent.model, key, base_url=base_url)
    else:
        from org.agents.openai_api import OpenAIModel
        api = api or getattr(agent, "api", None) or os.environ.get("NANOLAB_OPENAI_API", "chat")
        model = OpenAIModel(agent.model, key, base_url=base_url, api=api)
    model.metered = gateway is not None  # the gateway records its spend; the loop must not again
    return model
