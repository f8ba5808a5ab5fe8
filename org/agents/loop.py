"""
The agent loop: the process in an agent's pane (`org agent NAME --program P`).

    agent = Agent("junior-1", program, lab_root, worktree, model)
    reason = agent.run()      # returns why it ended: finished, stopped, budget spent, idle

Each round, at a safe point: honour a pause or stop (control.py), stop if the program's LLM
budget is spent, hand new mail to the model, ask the model (retrying 429/529/5xx with back-off;
if that fails, pause with the reason on show), record its reply, run its tool calls and record
their results. Everything goes to the transcript first, so a restart rebuilds the conversation
from it (plus the board) and carries on; mail is acknowledged only after it is on record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from org import shown
from org.ledger import ledger_path
from org.mail import a_turns_mail, format_mail
from org.program import Program
from org.agents.control import Control
from org.agents.models import Reply, Unavailable, with_backoff
from org.agents.pacing import Pacer
from org.agents.roles import board_excerpt, kickoff, system_prompt, teammates
from org.agents.spend import Spend
from org.agents.tools import TOOLS, Limits, ToolResult, Tools
from org.agents.transcript import Transcript, close_open_calls, trim

NUDGE = ("(harness) You replied without calling a tool. Work happens through tools: continue "
         "with one; to wait for teammates use read_inbox with wait_seconds, for runs results with "
         "wait_seconds; when your part is done, call finish.")


@dataclass
class Settings:
    max_idle_turns: int = 3           # replies in a row without a tool call before the agent stops
    retry_attempts: int = 6           # tries per model call on 429/529/5xx/garbage before pausing
    retry_base_seconds: float = 2.0   # back-off doubles from here...
    retry_max_seconds: float = 60.0   # ...up to here (or what the server's retry-after says)
    max_history_items: int = 400      # older conversation is trimmed from what the model sees
    limits: Limits = field(default_factory=Limits)


class Agent:
    def __init__(self, name: str, program: Program, lab_root: str | Path, worktree: str | Path,
                 model, console: Console | None = None, settings: Settings | None = None,
                 prices: dict | None = None):
        self.name, self.program, self.model = name, program, model
        self.settings = settings or Settings()
        self.tools = Tools(name, program, lab_root, worktree, teammates(program, name),
                           self.settings.limits, interrupted=lambda: self.control.interrupted())
        lab_dir = self.tools.lab_dir
        self.control = Control(lab_dir, name)
        self.mail = self.tools.mail
        self.transcript = Transcript(lab_dir / "transcripts" / f"{name}.jsonl")
        self.spend = None if getattr(model, "free", False) else Spend(
            ledger_path(lab_dir), program.name, name, program.budget.total_llm_dollars, prices)
        self.system = system_prompt(program, name)
        self.show = Display(console or Console(), name)
        self.history: list[dict] = []
        self.delivered: set[str] = set()
        self.pacer = Pacer()  # (the tools' work is the harness's, outside every box: org/agents/pacing.py)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> str:
        """Work until finished, stopped, out of budget or idle; returns why it ended."""
        self.control.clear_stop()
        self.control.set_state("running", "started")
        self.rehydrate()
        idle = 0
        try:
            while True:
                stop = self.control.checkpoint(on_pause=self.on_pause)
                if stop is not None:
                    return self.end(f"stopped: {stop}")
                spent = self.spend.exhausted() if self.spend else None
                if spent:
                    return self.end(spent)
                self.deliver_mail()
                try:
                    reply = self.ask()
                except Unavailable as e:
                    self.pause_self(f"the model is unavailable: {e}")
                    continue
                self.add("assistant", text=reply.text, calls=reply.calls)
                if not reply.calls:
                    idle += 1
                    if idle >= self.settings.max_idle_turns:
                        return self.end(f"idle: the model replied {idle} times in a row without a tool call")
                    self.add("user", text=NUDGE)
                    continue
                idle = 0
                summary = self.do_calls(reply.calls)
                if summary is not None:
                    return self.end(f"finished: {summary}")
        except KeyboardInterrupt:
            self.end("interrupted (Ctrl-C); `org agent` again resumes from the transcript")
            raise

    def rehydrate(self):
        """Start fresh, or rebuild the conversation from the transcript after a restart."""
        board = self.mail.board()
        self.history = self.transcript.conversation()
        self.delivered = self.transcript.delivered_mail()
        if not self.history:
            self.transcript.event("started", model=self.model.name)
            self.add("user", text=kickoff(self.program, self.name, board))
            return
        for item in close_open_calls(self.history):
            self.add(item.pop("kind"), **item)
        self.transcript.event("rehydrated", items=len(self.history), model=self.model.name)
        self.add("user", text="(harness) You were restarted; your conversation so far is above. "
                              + board_excerpt(board))
        self.show.note(f"rehydrated {len(self.history)} items from {self.transcript.path}")

    def ask(self) -> Reply:
        whole = getattr(self.model, "whole_history", False)  # scripted: no context window to fit
        visible = self.history if whole else trim(self.history, self.settings.max_history_items)
        s = self.settings
        reply = with_backoff(lambda: self.model.turn(self.system, visible, TOOLS, self.show.text),
                             s.retry_attempts, s.retry_base_seconds, s.retry_max_seconds, self.on_retry)
        self.show.end_text()
        if self.spend:  # a model behind the org's gateway is metered there, once
            record = self.spend.price if getattr(self.model, "metered", False) else self.spend.record
            cost = record(self.model.name, reply.usage)
            self.transcript.event("spend", model=self.model.name, dollars=cost, **vars(reply.usage))
        return reply

    def do_calls(self, calls: list[dict]) -> str | None:
        """Run each call and record its result; returns finish()'s summary if it was called."""
        summary = None
        for call in calls:  # (one reply may hold any number: each paced, at SCHED_IDLE: org/agents/pacing.py)
            result = self.pacer.run(lambda: self.do_call(call))
            summary = result.finished if result.finished is not None else summary
        return summary

    def do_call(self, call: dict) -> ToolResult:
        """One call, run and on record: its result in the transcript, the mail it read acknowledged."""
        self.show.call(call)
        if call["args"] is None:
            result = ToolResult(f"error: the arguments of {call['name']} are not one JSON object a request can carry "
                                f"({call['raw'][:200]!r}); send one JSON object", error=True)
        else:
            result = self.tools.call(call["name"], call["args"])
        self.add("tool", id=call["id"], name=call["name"], output=result.output, error=result.error,
                 mail_ids=[m["id"] for m in result.acks])
        if result.refused:
            self.transcript.event("refusal", tool=call["name"], args=call["args"], reason=result.output)
        for message in result.acks:
            self.mail.ack(self.name, message)
        self.show.result(result)
        return result

    def deliver_mail(self):
        """New messages, a turn's worth (mail.a_turns_mail), become a user turn; acknowledged once
        they are in the transcript (those it holds already: a crash came between)."""
        messages = self.mail.inbox(self.name)
        fresh, waiting = a_turns_mail([m for m in messages if m["id"] not in self.delivered])
        if fresh:
            self.add("user", text=format_mail(fresh, waiting), mail_ids=[m["id"] for m in fresh])
            self.show.note(f"{len(fresh)} new message(s): " + ", ".join(m["from"] for m in fresh))
        for message in messages:
            if message["id"] in self.delivered:
                self.mail.ack(self.name, message)

    # --- record keeping ----------------------------------------------------------------------

    def add(self, kind: str, **fields):
        line = self.transcript.append(kind, **fields)
        self.history.append({k: v for k, v in line.items() if k != "t"})
        self.delivered.update(fields.get("mail_ids", []))

    def on_retry(self, attempt: int, delay: float, error: str):
        self.transcript.event("retry", attempt=attempt, delay=delay, error=error)
        self.control.set_state("running", f"retrying in {delay:.1f}s: {error}")
        self.show.note(f"model call failed ({error}); retry {attempt} in {delay:.1f}s", "yellow")

    def pause_self(self, reason: str):
        self.transcript.event("paused", reason=reason, by="agent")
        self.control.pause(reason)  # lifted by a person: Control.resume(), `org release`

    def on_pause(self, reason: str):
        self.transcript.event("paused", reason=reason)
        self.show.note(f"paused: {reason} (waiting to be resumed)", "bold yellow")

    def end(self, reason: str) -> str:
        self.transcript.event("stopped", reason=reason)
        self.control.set_state("stopped", reason)
        self.show.note(f"{self.name} stopped: {reason}", "bold")
        self.tools.close()
        return reason


class Display:
    """What a person watching the pane sees: the model's text as it streams, tool calls and a
    glimpse of their results, and the harness's notes."""

    def __init__(self, console: Console, name: str):
        self.console, self.name, self.streaming = console, name, False

    def text(self, delta: str):
        self.console.print(shown(delta), end="", markup=False, highlight=False, soft_wrap=True)
        self.streaming = True

    def end_text(self):
        if self.streaming:
            self.console.print()
            self.streaming = False

    def call(self, call: dict):
        args = call["raw"][:200] if call["args"] is None else ", ".join(
            f"{k}={_short(v)}" for k, v in call["args"].items())
        self.console.print(f"[bold cyan]→ {escape(shown(call['name']))}[/]({escape(shown(args))})", highlight=False)

    def result(self, result: ToolResult):
        style = "red" if result.error else "dim"
        lines = result.output.splitlines() or [""]
        glimpse = "\n".join(lines[:6]) + (f"\n… {len(lines) - 6} more lines" if len(lines) > 6 else "")
        self.console.print(shown(glimpse), style=style, markup=False, highlight=False)

    def note(self, text: str, style: str = "magenta"):
        self.console.print(f"[{self.name}] {shown(text)}", style=style, markup=False, highlight=False)


def _short(value, chars: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= chars else text[:chars] + "…"
