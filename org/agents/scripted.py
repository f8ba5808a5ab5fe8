"""
The scripted researcher: a backend with no model. It runs the program's declared plan through
the same tools and the same loop as the LLM agents (so its transcript, mail, standups, spend
and pauses look the same), and it is the control every LLM org is compared with.

- solo (researcher): submit every declared variant, wait for the runs, ask the person for the
  seeds a verdict needs (`org extend`, theirs to run), post the referee's verdicts to the board,
  write a standup, finish;
- chief: split the variants among the juniors by message, wait for their reports, then post
  the conclusion to the board and tell everyone;
- junior: wait for an assignment naming declared variants, run them, report to the chief;
- in an improvement program (claim improve), the researcher tries the program's candidates one
  at a time against the frontier: reset the worktree to the frontier's commit, apply the
  candidate's patch and commit it, submit its overrides, wait for the keep decision (a try the
  frontier moved under is stale: submitted again), and post the frontier's story; a chief
  hands the candidates out round-robin, and each junior tries its share so (until the compute
  budget is spent) and reports the decisions.

A plan is a generator: it yields one tool call at a time and is sent what came back since
(the tool's output plus any mail the loop delivered). After a restart a fresh plan is replayed
through the calls on record, each sent what came back then, so it carries on where it stopped:
mail it read before the crash was acknowledged and now lives only in the transcript. A call
the crash cut short (its answer: transcript.INTERRUPTED) is made again, never taken as done: a
junior killed mid-submission had lost its arm, and a chief its conclusion. Each call of the
plans is safe to repeat: a submission that went through is refused as its arm's second, a
message or a post is read twice, a commit finds nothing to commit.
"""
from __future__ import annotations

import json
import re
import shlex

from org.mail import unquote
from org.program import Program
from org.agents.models import Reply, tool_call
from org.agents.roles import chief_of, juniors, role_of
from org.agents.transcript import INTERRUPTED


class ScriptedModel:
    name = "scripted"
    free = True            # spends no LLM dollars
    whole_history = True   # the loop does not trim what it sees: a restart replays all of it

    def __init__(self, program: Program, agent: str, wait_seconds: float = 60):
        self.program, self.agent, self.wait = program, agent, wait_seconds
        self.plan = None
        self.calls = 0
        self.carried = []  # what came back with a call a crash cut short (mail, the restart's note): the next round's

    def turn(self, system, history, tools, on_text) -> Reply:
        try:
            if self.plan is None:  # a fresh start, or a restart: replay the calls on record
                rounds = _rounds(history)
                self.calls = len(rounds) - 1  # call ids stay unique across restarts
                self.plan = self._make_plan(rounds[0])
                name, args = next(self.plan)
                for since in rounds[1:]:
                    if cut_short(since):  # its call stands, made again (the next on record, or now)
                        self.carried += [item for item in since if item["kind"] != "tool"]
                        continue
                    name, args = self.plan.send(self.carried + since)
                    self.carried = []
            else:
                name, args = self.plan.send(self.carried + _since_last_reply(history))
                self.carried = []
        except StopIteration:
            name, args = "finish", {"summary": "the scripted plan is complete"}
        self.calls += 1
        return Reply("", [tool_call(f"scripted_{self.calls}", name, json.dumps(args))])

    def _make_plan(self, before: list[dict]):
        """`before`: the conversation before the first call (kickoff, and mail that came early)."""
        role = role_of(self.program, self.agent)
        team = juniors(self.program)  # solo researchers own their question: no assignments
        improve = self.program.claim.kind == "improve"
        if improve and role == "chief" and team:
            return improve_chief(self.program, team, self.wait)
        if improve and role == "junior" and chief_of(self.program):
            return improve_junior(self.program, chief_of(self.program), self.wait, before)
        if improve:
            return improver(self.program, self.wait)
        if role == "chief" and team:
            return chief(self.program, team, self.wait)
        if role == "junior" and chief_of(self.program):
            return junior(self.program, chief_of(self.program), self.wait, before)
        return researcher(self.program, self.wait)


def _rounds(history: list[dict]) -> list[list[dict]]:
    """The conversation split at this backend's replies: [before the first, after the first, ...];
    an earlier backend's replies (the program switched to scripted) do not count."""
    rounds = [[]]
    for item in history:
        if item["kind"] == "assistant" and any(c["id"].startswith("scripted_") for c in item.get("calls", [])):
            rounds.append([])
        else:
            rounds[-1].append(item)
    return rounds


def cut_short(items: list[dict]) -> bool:
    return any(item["kind"] == "tool" and item.get("output") == INTERRUPTED for item in items)


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
    yield from ask_for_seeds(program, status)
    yield "post_to_board", {"text": conclusion(program, status)}
    yield "write_standup", {"text": "Done: every declared arm measured; the verdicts are on the board."}
    yield "finish", {"summary": verdict_lines(status)}


def chief(program: Program, juniors: list[str], wait: float):
    assigned = yield from hand_out(
        program.name, juniors, program.variants, "arm", "each declared variant against the baseline, one change "
        "per arm.", "Please run these arms against the baseline and report the experiment id and the verdict:",
        lambda v: f"- {v.name}: overrides {json.dumps(v.overrides)}" + (f", ref {v.ref}" if v.ref else ""))
    waiting = set(assigned)
    while waiting:
        received = yield "read_inbox", {"wait_seconds": wait}
        waiting -= {sender for sender, _ in _messages(received)}
    status = yield from wait_for_runs(wait)
    yield from ask_for_seeds(program, status)
    yield "post_to_board", {"text": conclusion(program, status)}
    yield "send_message", {"to": "all", "text": "The conclusion is on the board. Thank you; we are done."}
    yield "write_standup", {"text": "Collected every junior's report; conclusion posted to the board."}
    yield "finish", {"summary": verdict_lines(status)}


def ask_for_seeds(program: Program, status: dict):
    """A verdict that needs N more seeds: ask the person for them, with the command (seeds are the
    program's: only a person adds them, logged, with `org extend`; the runs then queue at once)."""
    needs = {v["arm"]: int(m[1]) for v in status["verdicts"]
             if (m := re.search(r"needs (\d+) more seeds?\b", v.get("verdict") or ""))}
    if not needs:
        return
    first = max(program.budget.seeds) + 1
    seeds = ",".join(str(s) for s in range(first, first + max(needs.values())))
    yield "send_message", {"to": "human", "text": "; ".join(f"{arm} needs {n} more seed{'' if n == 1 else 's'}" for arm, n in needs.items())
                           + f" to settle its verdict. `org extend {program.name} --seeds {seeds}` would add them "
                           "to every arm (logged); the verdicts on the board are as they stand now."}


def hand_out(program: str, juniors: list[str], items: list, what: str, plan: str, ask: str, describe) -> dict:
    """Split the items round-robin among the juniors: post the plan, send each its share with
    `ask`, release the juniors left without one; returns {junior: its items}."""
    assigned = {j: items[i::len(juniors)] for i, j in enumerate(juniors)}
    assigned = {j: xs for j, xs in assigned.items() if xs}
    shares = "; ".join(f"{j}: {', '.join(x.name for x in xs)}" for j, xs in assigned.items())
    yield "post_to_board", {"text": f"Plan for {program}: {plan} Assignments: {shares or 'none'}."}
    for name, share in assigned.items():
        yield "send_message", {"to": name, "text": ask + "\n" + "\n".join(describe(x) for x in share)}
    for name in (j for j in juniors if j not in assigned):  # more juniors than items
        yield "send_message", {"to": name, "text": f"{RELEASE}: every {what} is taken. Thank you."}
    return assigned


def junior(program: Program, chief_name: str, wait: float, before: list[dict]):
    mine = assignment(program, chief_name, before)  # the chief's mail may come before our first call
    released = released_by(chief_name, before)
    while not mine and not released:
        received = yield "read_inbox", {"wait_seconds": wait}
        mine, released = assignment(program, chief_name, received), released_by(chief_name, received)
    if not mine:
        yield "write_standup", {"text": f"{chief_name} had no arm for me; nothing to run."}
        yield "finish", {"summary": f"released by {chief_name}: no arm to run"}
        return
    ids = yield from submit_all(program, mine)
    status = yield from wait_for_runs(wait)
    yield "send_message", {"to": chief_name, "text": f"Done: experiments {ids}.\n{verdict_lines(status)}"}
    yield "write_standup", {"text": f"Ran {', '.join(v.name for v in mine)} as assigned; reported to {chief_name}."}
    yield "finish", {"summary": verdict_lines(status)}


def improver(program: Program, wait: float):
    yield "write_standup", {"text": f"Plan: try {', '.join(c.name for c in program.candidates) or 'nothing'} "
                                    "one at a time against the frontier; keep what the referee keeps."}
    notes = yield from try_all(program.candidates, wait)
    status = yield from read_status()
    text = frontier_story(program, status, notes)
    yield "post_to_board", {"text": text}
    yield "write_standup", {"text": "Done: every candidate tried against the frontier; the story is on the board."}
    yield "finish", {"summary": text}


def improve_chief(program: Program, juniors: list[str], wait: float):
    """Hand the candidates out round-robin; each junior tries its share against the frontier
    (their tries race: one measured against a frontier that moved is stale and tried again)."""
    assigned = yield from hand_out(
        program.name, juniors, program.candidates, "candidate", "the candidates against the frontier, each kept "
        "only if the referee keeps it.", "Please try these candidates against the frontier, one at a time, and "
        "report each decision:",
        lambda c: f"- {c.name}: overrides {json.dumps(c.overrides)}" + (f", patch {c.patch}" if c.patch else ""))
    waiting, reports = set(assigned), []
    while waiting:
        received = yield "read_inbox", {"wait_seconds": wait}
        for sender, body in _messages(received):
            if sender in waiting:
                waiting.discard(sender)
                reports.append(body.strip())
    status = yield from read_status()
    text = frontier_story(program, status, reports)
    yield "post_to_board", {"text": text}
    yield "send_message", {"to": "all", "text": "The conclusion is on the board. Thank you; we are done."}
    yield "write_standup", {"text": "Collected every junior's tries; the frontier's story is on the board."}
    yield "finish", {"summary": text}


def improve_junior(program: Program, chief_name: str, wait: float, before: list[dict]):
    mine = assignment(program, chief_name, before, program.candidates)
    released = released_by(chief_name, before)
    while not mine and not released:
        received = yield "read_inbox", {"wait_seconds": wait}
        mine = assignment(program, chief_name, received, program.candidates)
        released = released_by(chief_name, received)
    if not mine:
        yield "write_standup", {"text": f"{chief_name} had no candidate for me; nothing to try."}
        yield "finish", {"summary": f"released by {chief_name}: no candidate to try"}
        return
    notes = yield from try_all(mine, wait)
    yield "send_message", {"to": chief_name, "text": "\n".join(notes)}
    yield "write_standup", {"text": f"Tried {', '.join(c.name for c in mine)} as assigned; reported to {chief_name}."}
    yield "finish", {"summary": "\n".join(notes)}


def frontier_story(program: Program, status: dict, notes: list[str]) -> str:
    front = status["frontier"]
    return (f"Conclusion for {program.name}: {program.question.strip()}\nThe frontier is {front['arm']} "
            f"(kept: {', '.join(front['kept']) or 'nothing'}).\n" + "\n".join(notes))


def try_all(candidates, wait: float):
    """Each candidate against the frontier of the moment, until the budget can pay for no more;
    returns a line per try."""
    notes, out = [], None
    for candidate in candidates:
        for attempt in range(1, 4):  # again only if the frontier moved under it (stale)
            arm = candidate.name if attempt == 1 else f"{candidate.name}-again{attempt}"
            status = yield from read_status()
            compute = status["compute_seconds"]
            out = out or ("the compute budget is spent" if compute["spent"] >= compute["total"] else None)
            if out:
                notes.append(f"- {arm}: not tried: {out}")
                break
            outcome = yield from try_candidate(candidate, arm, status["frontier"], wait)
            notes.append(f"- {arm}: {outcome}")
            out = outcome.startswith(UNAFFORDABLE) and "the budget left pays for no try"
            if not outcome.startswith("stale"):
                break
    return notes


def try_candidate(candidate, arm: str, front: dict, wait: float):
    """One try: the worktree at the frontier's commit, the patch committed, the overrides
    submitted; returns its decision in words."""
    yield "run", {"command": f"git reset -q --hard {front['commit']}"}
    if candidate.patch:
        received = yield "run", {"command": f"git apply {shlex.quote(candidate.patch)}"}
        if not (_tool_output(received) or "").startswith("exit status 0"):
            return f"the patch {candidate.patch} does not apply on the frontier ({front['arm']}): not tried"
        yield "git_commit", {"message": f"{candidate.name}: {candidate.patch}"}
    received = yield "submit_experiment", {
        "arm": arm, "overrides": dict(candidate.overrides),
        "hypothesis": candidate.hypothesis or f"{candidate.name} lowers val_bpb against {front['arm']}"}
    found = re.search(r"experiment (\d+)", _text(received))
    if not found:
        return f"not submitted: {(_tool_output(received) or '?').strip()[:300]}"
    stuck = False
    while True:
        received = yield "results", {"experiment": int(found.group(1)), "wait_seconds": wait}
        try:
            status = json.loads(_tool_output(received))
        except (TypeError, json.JSONDecodeError):
            continue
        mine = next(e for e in status["experiments"] if e["experiment"] == int(found.group(1)))
        decision = mine.get("decision")
        if decision and decision["outcome"] != "climbing":  # climbing: passed here, now at the ladder's rungs
            numbers = "" if decision["delta"] is None else f" (Δ {decision['delta']:+.4f}, n={decision['n']}"
            numbers += "" if decision["p"] is None or not numbers else f", p {decision['p']:.2g}"
            numbers += "" if decision["level"] is None or not numbers else f" against level {decision['level']:.2g}"
            return f"{decision['outcome']}{numbers + ')' if numbers else ''}: {decision['verdict']}"
        stuck, was_stuck = out_of_budget(status), stuck
        if status["pending_runs"] and stuck and was_stuck:  # (twice: not a moment between two runs)
            compute = status["compute_seconds"]
            return "undecided: the compute budget ran out before its runs" if compute["spent"] >= compute["total"] else (
                f"{UNAFFORDABLE}: the compute budget left cannot pay for its runs besides what it holds back for a "
                f"keep's fresh seeds (or past its agent's share), and no run is running (`org budget` raises it)")
        if not status["pending_runs"]:  # decided in the transaction that finished its last run
            return f"undecided: its runs are finished, but the harness recorded no decision ({mine['stage']})"


def read_status():
    while True:
        received = yield "results", {}
        try:
            return json.loads(_tool_output(received))
        except (TypeError, json.JSONDecodeError):
            continue


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
    """results(wait_seconds) until no run is pending (or the compute budget pays for none of them,
    twice: not a moment between two runs)."""
    stuck = False
    while True:
        received = yield "results", {"wait_seconds": wait}
        try:
            status = json.loads(_tool_output(received))
        except (TypeError, json.JSONDecodeError):
            continue
        stuck, was_stuck = out_of_budget(status), stuck
        if status["pending_runs"] == 0 or stuck and was_stuck:
            return status


UNAFFORDABLE = "not run"  # a try whose runs the budget left cannot pay for


def out_of_budget(status: dict) -> bool:
    """The compute budget is spent, or what is queued waits for it for good: no run is running
    whose end could free any (experiments.stuck_for_budget; `org budget`, a person's, raises it)."""
    compute = status["compute_seconds"]
    return compute["spent"] >= compute["total"] or bool(compute.get("stuck"))


# --- reading what came back --------------------------------------------------------------

RELEASE = "No arm for you in this program"  # the chief's words to a junior it has nothing for
MAIL_HEADER = re.compile(r"^\[message from ([\w-]+) at [^\]\n]*\]\n", re.M)  # tools.format_mail


def _messages(items: list[dict]) -> list[tuple[str, str]]:
    """(sender, text) of each message in what came back; board excerpts and notes are not mail."""
    out = []
    for item in items:  # one by one: a message's text ends with its item
        parts = MAIL_HEADER.split(item.get("output") or item.get("text") or "")
        out += [(parts[i], unquote(parts[i + 1])) for i in range(1, len(parts), 2)]
    return out


def assignment(program: Program, chief_name: str, items: list[dict], named=None):
    """The declared variants (or the candidates: `named`) the chief's messages name (the board
    names everyone's)."""
    text = "\n".join(body for sender, body in _messages(items) if sender == chief_name)
    return [v for v in (program.variants if named is None else named)
            if re.search(rf"(?<![\w-]){re.escape(v.name)}(?![\w-])", text)]


def released_by(chief_name: str, items: list[dict]) -> bool:
    """The chief said it has no arm for us (the words its plan uses, so chatter does not count)."""
    return any(sender == chief_name and RELEASE.lower() in body.lower() for sender, body in _messages(items))


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
