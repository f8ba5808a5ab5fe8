"""
The scripted researcher: a backend with no model. It runs the program's declared plan through
the same tools and the same loop as the LLM agents (so its transcript, mail, standups, spend
and pauses look the same), and it is the control every LLM org is compared with.

- solo (researcher): submit every declared variant, wait for the runs, post the referee's
  verdicts to the board, write a standup, finish;
- chief: split the variants among the juniors by message, wait for their reports, then post
  the conclusion to the board and tell everyone;
- junior: wait for an assignment naming declared variants, run them, report to the chief.

A plan is a generator: it yields one tool call at a time and is sent what came back since
(the tool's output plus any mail the loop delivered). After a restart it starts again from
the top, which is safe: submitting a declared variant twice returns the same experiment.
"""
from __future__ import annotations

import json
import re

from org.program import Program
from org.agents.models import Reply, tool_call
from org.agents.roles import chief_of, role_of, teammates


class ScriptedModel:
    name = "scripted"
    free = True  # spends no LLM dollars

    def __init__(self, program: Program, agent: str, wait_seconds: float = 60):
        self.program, self.agent, self.wait = program, agent, wait_seconds
        self.plan = None
        self.calls = 0

    def turn(self, system, history, tools, on_text) -> Reply:
        since = _since_last_reply(history)
        try:
            if self.plan is None:
                self.plan = self._make_plan()
                name, args = next(self.plan)
            else:
                name, args = self.plan.send(since)
        except StopIteration:
            name, args = "finish", {"summary": "the scripted plan is complete"}
        self.calls += 1
        return Reply("", [tool_call(f"scripted_{self.calls}", name, json.dumps(args))])

    def _make_plan(self):
        role = role_of(self.program, self.agent)
        juniors = teammates(self.program, self.agent)
        if role == "chief" and juniors:
            return chief(self.program, juniors, self.wait)
        if role == "junior" and chief_of(self.program):
            return junior(self.program, chief_of(self.program), self.wait)
        return researcher(self.program, self.wait)


def _since_last_reply(history: list[dict]) -> list[dict]:
    for i in range(len(history) - 1, -1, -1):
        if history[i]["kind"] == "assistant":
            return history[i + 1:]
    return history


# --- the plans ---------------------------------------------------------------------------

def researcher(program: Program, wait: float):
    names = [v.name for v in program.variants]
    yield "write_standup", {"text": f"Plan: measure {', '.join(names) or 'the baseline'} against "
                                    f"the baseline on seeds {program.budget.seeds}, one change per arm, "
                                    "at the program's budget; then report the referee's verdicts."}
    yield from submit_all(program, program.variants)
    status = yield from wait_for_runs(wait)
    yield "post_to_board", {"text": conclusion(program, status)}
    yield "write_standup", {"text": "Done: every declared arm measured; the verdicts are on the board."}
    yield "finish", {"summary": verdict_lines(status)}


def chief(program: Program, juniors: list[str], wait: float):
    assigned = {j: program.variants[i::len(juniors)] for i, j in enumerate(juniors)}
    assigned = {j: vs for j, vs in assigned.items() if vs}
    plan = "; ".join(f"{j}: {', '.join(v.name for v in vs)}" for j, vs in assigned.items())
    yield "post_to_board", {"text": f"Plan for {program.name}: each declared variant against the "
                                    f"baseline, one change per arm. Assignments: {plan or 'none'}."}
    for junior_name, variants in assigned.items():
        lines = [f"- {v.name}: overrides {json.dumps(v.overrides)}" + (f", ref {v.ref}" if v.ref else "")
                 for v in variants]
        yield "send_message", {"to": junior_name, "text": "Please run these arms against the "
                               "baseline and report the experiment id and the verdict:\n" + "\n".join(lines)}
    waiting = set(assigned)
    while waiting:
        received = yield "read_inbox", {"wait_seconds": wait}
        waiting -= set(re.findall(r"\[message from ([\w-]+)", _text(received)))
    status = yield from wait_for_runs(wait)
    yield "post_to_board", {"text": conclusion(program, status)}
    yield "send_message", {"to": "all", "text": "The conclusion is on the board. Thank you; we are done."}
    yield "write_standup", {"text": "Collected every junior's report; conclusion posted to the board."}
    yield "finish", {"summary": verdict_lines(status)}


def junior(program: Program, chief_name: str, wait: float):
    mine = []
    while not mine:
        received = yield "read_inbox", {"wait_seconds": wait}
        text = _text(received)
        mine = [v for v in program.variants if re.search(rf"(?<![\w-]){re.escape(v.name)}(?![\w-])", text)]
    ids = yield from submit_all(program, mine)
    status = yield from wait_for_runs(wait)
    yield "send_message", {"to": chief_name, "text": f"Done: experiments {ids}.\n{verdict_lines(status)}"}
    yield "write_standup", {"text": f"Ran {', '.join(v.name for v in mine)} as assigned; reported to {chief_name}."}
    yield "finish", {"summary": verdict_lines(status)}


def submit_all(program: Program, variants):
    ids = {}
    for v in variants:
        received = yield "submit_experiment", {
            "arm": v.name, "overrides": dict(v.overrides), **({"ref": v.ref} if v.ref else {}),
            "hypothesis": f"{v.name} ({json.dumps(v.overrides)}) versus the baseline: "
                          f"{program.claim.kind} claim on {program.metric}, as the program declares"}
        found = re.search(r"experiment (\d+)", _text(received))
        ids[v.name] = int(found.group(1)) if found else None
    return ids


def wait_for_runs(wait: float):
    """results(wait_seconds) until no run is pending (or the compute budget is spent)."""
    while True:
        received = yield "results", {"wait_seconds": wait}
        try:
            status = json.loads(_tool_output(received))
        except (TypeError, json.JSONDecodeError):
            continue
        compute = status["compute_seconds"]
        if status["pending_runs"] == 0 or compute["spent"] >= compute["total"]:
            return status


# --- reading what came back --------------------------------------------------------------

def _tool_output(items: list[dict]) -> str | None:
    return next((i["output"] for i in items if i["kind"] == "tool"), None)


def _text(items: list[dict]) -> str:
    return "\n".join(i.get("output") or i.get("text") or "" for i in items)


def verdict_lines(status: dict) -> str:
    lines = []
    for v in status["verdicts"]:
        if "error" in v:
            lines.append(v["error"])
            continue
        delta = "" if v.get("delta") is None else f", delta {v['delta']:+.4f} (n={v['n']})"
        lines.append(f"- {v['arm']} vs {v['versus']}: {v['verdict']}{delta}")
    return "\n".join(lines) or "- no verdicts: no variant has finished runs"


def conclusion(program: Program, status: dict) -> str:
    claim = program.claim.kind + (f" (margin {program.claim.margin:g})" if program.claim.kind == "non-inferiority" else "")
    return (f"Conclusion for {program.name}: {program.question.strip()}\n"
            f"Claim: {claim} on {program.metric}, seeds {program.budget.seeds}.\n"
            f"{verdict_lines(status)}\n"
            f"Compute: {status['compute_seconds']['spent']}s of {status['compute_seconds']['total']:g}s.")
