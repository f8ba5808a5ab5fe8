"""
An agent's transcript: one JSON object per line in .lab/<program>/transcripts/<agent>.jsonl.

The conversation is kept in a backend-neutral form, so every backend can rebuild its API's
messages from it and an agent restarted after a crash picks up where it was:

    {"kind": "user", "text": "...", "mail_ids": [...]}                  kickoff, mail, nudges
    {"kind": "assistant", "text": "...", "calls": [{"id", "name", "args", "raw"}]}
    {"kind": "tool", "id": "...", "name": "...", "output": "...", "error": false}

Everything else the harness wants on record is an event: {"kind": "event", "event":
"refusal" | "retry" | "paused" | "spend" | "stopped" | ..., ...}. Every line has a time "t".
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from org.mail import now

CONVERSATION = ("user", "assistant", "tool")
# what an event keeps of a field a box wrote, through its port, at no model's cost (a CLI's last
# message, a refused call's arguments): 16 MB a request went whole onto the harness's disk
RECORD_CHARS = 8_000


def clipped(value):
    """value, or the first RECORD_CHARS of its JSON, saying how long it was."""
    text = value if isinstance(value, str) else json.dumps(value)
    return value if len(text) <= RECORD_CHARS else f"{text[:RECORD_CHARS]}... ({len(text)} characters)"


class Transcript:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, kind: str, **fields) -> dict:
        line = {"t": now(), "kind": kind, **fields}
        with open(self.path, "a") as f:  # one write per line, flushed: a crash loses at most it
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return line

    def event(self, event: str, **fields) -> dict:
        return self.append("event", event=event, **fields)

    def lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for raw in self.path.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
        return out

    def events(self, event: str | None = None) -> list[dict]:
        return [l for l in self.lines() if l["kind"] == "event" and (event is None or l["event"] == event)]

    def conversation(self) -> list[dict]:
        return [{k: v for k, v in l.items() if k != "t"} for l in self.lines() if l["kind"] in CONVERSATION]

    def delivered_mail(self) -> set[str]:
        """Ids of messages already in the conversation (a crash may leave them in the inbox)."""
        return {i for l in self.lines() for i in l.get("mail_ids", [])}


INTERRUPTED = "interrupted: the agent restarted before this call returned; check its effect before repeating it"


def close_open_calls(history: list[dict]) -> list[dict]:
    """Tool results for calls a crash left unanswered (every API insists on one per call)."""
    answered = {item["id"] for item in history if item["kind"] == "tool"}
    missing = []
    for item in history:
        if item["kind"] == "assistant":
            missing += [c for c in item.get("calls", []) if c["id"] not in answered]
    return [{"kind": "tool", "id": c["id"], "name": c["name"], "error": True, "output": INTERRUPTED} for c in missing]


def trim(history: list[dict], max_items: int) -> list[dict]:
    """About the last `max_items` items. The cut never separates a tool result from its call,
    and the kept part starts with a user message (as every API wants)."""
    if len(history) <= max_items:
        return history
    start = len(history) - max_items
    while start < len(history) and history[start]["kind"] == "tool":
        start += 1
    kept = history[start:]
    if not kept or kept[0]["kind"] != "user":
        kept = [{"kind": "user", "text": "(Earlier conversation trimmed; the board, your standups "
                                         "and results hold the record.)"}] + kept
    return kept
