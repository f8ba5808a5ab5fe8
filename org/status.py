"""
`org status`: what a launched program's agents are doing (working, waiting, taken over, out of
budget, crashed), its runs, compute and dollars against budget, and its verdicts. The status
pane runs `org status --watch`.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from org import pid_alive, seconds_flag, shown
from org.experiments import held_for_checks, stuck_for_budget, waiting_for_budget
from org.launch import RUNNER, TAKEN_OVER, WAITING_TOOLS, finished_before
from org.improve_story import frontier_line
from org.ledger import FINISHED, Ledger
from org.workspace import ProgramSite, open_site


def add_status_command(sub):
    p = sub.add_parser("status", help="agents, runs, spend and verdicts of a launched program")
    p.add_argument("program", nargs="?", help="default: the one program running here")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--every", type=seconds_flag(0.1, 3600), default=2.0, help="seconds between refreshes")
    p.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    from rich.console import Console
    launch = open_site(args.program)
    console = Console()
    if not args.watch:
        console.print(status_view(launch))
        return 0
    try:
        while True:
            view = status_view(launch)
            console.clear()
            console.print(view)
            time.sleep(args.every)
    except KeyboardInterrupt:
        return 0


def agents_table(rows: list[tuple[str, str, str, str]]):
    """One line per agent: (agent, state, doing, restarts). The table spans the terminal and only
    "doing" gives way (cut with an ellipsis): sized to its content, a long "doing" once squeezed
    the agent's name out of the line."""
    from rich.table import Table
    from rich.text import Text
    table = Table(box=None, pad_edge=False, show_edge=False, expand=True)
    widths = {"agent": max((len(r[0]) for r in rows), default=len("agent")), "state": len("out of budget"), "restarts": 8}
    for col in ("agent", "state", "restarts", "doing"):
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=widths.get(col),
                         ratio=1 if col == "doing" else None)
    for agent, state, doing, restarts in rows:
        style = {"crashed": "bold red", "taken over": "bold magenta", "working": "green",
                 "out of budget": "yellow"}.get(state, "")
        table.add_row(Text(agent), Text(state, style=style), restarts, Text(shown(doing)))  # an agent's words: no markup
    return table


def status_view(launch: ProgramSite):
    """Agents' states, the runner, runs, spend against budget, the latest verdicts."""
    from rich.console import Group
    from rich.text import Text
    running = launch.grid.running()
    state = program_state(launch, running)
    colour = {"running": "green", "done": "bold green"}.get(state, "yellow")
    head = Text.from_markup(f"[bold]{launch.name}[/] · [{colour}]{state}[/] · {time.strftime('%H:%M:%S')}")
    rows = [(agent, *agent_state(launch, agent, running), str(launch.keeper(agent).get("restarts", "")))
            for agent in launch.agents]
    parts = [head, agents_table(rows), Text(runner_line(launch, running))]
    if launch.ledger_path.exists():
        parts += [Text(shown(line)) for line in ledger_lines(launch)]
    return Group(*parts)


def program_state(launch: ProgramSite, running: bool) -> str:
    """done (every agent finished, nothing left to run: even while its grid is still open),
    running, stopped (by `org stop`), or not running (e.g. the machine rebooted)."""
    if launch.ledger_path.exists() and finished_before(launch):
        return "done"
    if running:
        return "running"
    return "stopped" if (launch.panes_dir / "stop").exists() else "not running"


def agent_state(launch: ProgramSite, agent: str, running: bool) -> tuple[str, str]:
    """(working | waiting | taken over | paused | out of budget | finished | stopped |
    crashed | gone | starting | restarting | not running, what it is doing or why)."""
    keeper, control = launch.keeper(agent), launch.control_state(agent)
    kstate, cstate, reason = keeper.get("state"), control.get("state"), control.get("reason") or ""
    if kstate == "crashed":
        return "crashed", keeper.get("note", "")
    if running and keeper_gone(keeper):
        return "gone", f"its pane's keeper was killed: `org launch {launch.name}` restarts it"
    reason = reason.splitlines()[0] if reason else ""
    if cstate == "paused":
        return ("taken over" if reason.startswith(TAKEN_OVER) else "paused"), reason
    if cstate == "stopped" or kstate == "ended":
        if reason.startswith("finished"):  # (its summary follows: the agent's words, "LLM budget" in them or not)
            return "finished", reason
        return ("out of budget" if "LLM budget" in reason else "stopped"), reason
    if not running:
        return "not running", reason
    if kstate == "restarting":
        return "restarting", keeper.get("note", "")
    if kstate == "waiting" or cstate != "running":
        return "starting", ""
    call = last_call(launch.lab_dir / "transcripts" / f"{agent}.jsonl")
    if call is None:
        return "working", ""
    args = call.get("args") if isinstance(call.get("args"), dict) else {}  # a model may send a list
    doing = f"{call['name']}(" + ", ".join(f"{k}={json.dumps(v)[:30]}" for k, v in args.items()) + ")"
    wait = args.get("wait_seconds")
    waits = call["name"] in WAITING_TOOLS and isinstance(wait, (int, float)) and wait > 0 and call.get("open")
    return ("waiting" if waits else "working"), doing


def keeper_gone(keeper: dict) -> bool:
    """A keeper's record says its command is on (waiting, running, restarting), but its own process
    is gone (killed): the record is its last word, not the pane's state."""
    return keeper.get("state") in ("waiting", "running", "restarting") and isinstance(keeper.get("keeper"), int) \
        and not pid_alive(keeper["keeper"])


def last_call(transcript: Path) -> dict | None:
    """The agent's latest tool call, with open=True while its result is not in yet (the
    transcript's tail only: transcripts grow long)."""
    try:
        with open(transcript, "rb") as f:
            start = f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode(errors="replace").splitlines()[1 if start else 0:]  # (a cut line goes)
    except OSError:
        return None
    answered = set()
    for raw in reversed(lines):
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if line.get("kind") == "tool":
            answered.add(line.get("id"))
        elif line.get("kind") == "assistant" and line.get("calls"):
            call = line["calls"][-1]
            return {**call, "open": call.get("id") not in answered}
    return None


def runner_line(launch: ProgramSite, running: bool) -> str:
    keeper = launch.keeper(RUNNER)
    state = keeper.get("state", "not started")
    if running and keeper_gone(keeper):
        return f"runner: gone (its pane's keeper was killed: `org launch {launch.name}` restarts it)"
    if state == "ended" or (not running and state != "crashed"):  # stopped, done with the queue, or gone
        state = "stopped" if (launch.panes_dir / "stop").exists() else "done" if state == "ended" else "not running"
        queued = queued_runs(launch)
        if queued:
            state += f" with {queued} run(s) queued (`org launch {launch.name}` resumes)"
    state = {"running": "serving the queue"}.get(state, state)
    restarts = f", {keeper['restarts']} restart(s)" if keeper.get("restarts") else ""
    return f"runner: {state}{restarts}" + (f" ({keeper['note']})" if keeper.get("note") else "")


def queued_runs(launch: ProgramSite) -> int:
    if not launch.started:
        return 0
    with Ledger(launch.ledger_path) as ledger:
        return len(ledger.runs(launch.name, status="queued"))


def ledger_lines(launch: ProgramSite) -> list[str]:
    from org.agents.tools import referee_verdicts
    name = launch.name
    if not launch.started:
        return [f"its ledger {launch.ledger_path} holds no program {name}: `org run` or `org launch` starts it there"]
    with Ledger(launch.ledger_path) as ledger:
        runs = Counter(r["status"] for r in ledger.runs(name))
        compute, spend = ledger.compute_seconds(name), ledger.spend(name)
        budget = ledger.budget(name)  # as fixed at start, with `org budget` changes
        verdicts = referee_verdicts(ledger, launch.program)
        experiments = ledger.experiments(name)
        held = held_for_checks(ledger, launch.program)[0]
        waiting = waiting_for_budget(ledger, launch.program) if runs.get("queued") else []
        stuck = stuck_for_budget(ledger, launch.program, waiting)
    held = f" ({held:.0f}s held for fresh seeds)" if held else ""
    waiting = f" (experiment{'s' * (len(waiting) > 1)} {', '.join(map(str, waiting))} waiting for budget" \
        + (": nothing running will free it; `org budget` raises it)" if stuck else ")") if waiting else ""
    done = sum(n for s, n in runs.items() if s in FINISHED)
    detail = ", ".join(f"{n} {s}" for s, n in sorted(runs.items()) if s in FINISHED)
    lines = [f"runs: {runs.get('queued', 0)} queued{waiting} · {runs.get('running', 0)} running · {done} done"
             + (f" ({detail})" if detail else ""),
             f"compute: {compute:.0f}s of {budget['total_compute_seconds']:g}s{held} · "
             f"LLM: ${spend['dollars']:.4f} of ${budget['total_llm_dollars']:g}"
             + (f" (${sum(spend['held'].values()):.4f} more held for calls in flight)" if spend["held"] else "")]
    if launch.program.claim.kind == "improve":  # the frontier first: what the org has confirmed so far
        lines.append(frontier_line(experiments))
    for v in verdicts[-8:]:
        if "error" in v:
            lines.append(f"verdicts: {v['error']}")
            continue
        delta = "" if v.get("delta") is None else f" (Δ {v['delta']:+.4f}, n={v['n']})"
        lines.append(f"verdict: {v['arm']} vs {v['versus']}: {v['verdict']}{delta}")
    return lines
