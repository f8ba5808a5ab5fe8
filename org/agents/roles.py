"""
Roles: which prompt an agent gets, and who its teammates are.

The prompts are the org's code and live as editable files in org/prompts/: rigor.md (every
agent), then the role's file (researcher.md for solo work, chief.md, junior.md; or <role>.md
for any other role a program names), then cli.md for agents driving the claude/codex CLIs.
They are string.Template texts: $name, $program, $question, ... are filled from the program.
"""
from __future__ import annotations

import json
from pathlib import Path
from string import Template

from org.program import Program
from org.sourceless import RUN_PACKAGES

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
# what a run's code may import, on every program: its boxes hold no Python text but the stdlib's
# bytecode and the packages runs need (org/sourceless.py, sandbox.run_box)
RUN_IMPORTS = (f"they import only the stdlib modules the base commit's runs load (collections, json, re, functools, "
               f"heapq, random and the like; not statistics, decimal, queue or asyncio), {', '.join(RUN_PACKAGES)} "
               f"and what those require, not torch")


def role_of(program: Program, name: str) -> str:
    """The prompt file an agent gets: its own role's if there is one, else by topology."""
    role = agent_entry(program, name).role
    if (PROMPTS / f"{role}.md").exists():
        return role
    return "junior" if program.org.topology == "chief" else "researcher"


def agent_entry(program: Program, name: str):
    for agent in program.org.agents:
        if agent.name == name:
            return agent
    known = ", ".join(a.name for a in program.org.agents) or "none"
    raise KeyError(f"program {program.name} has no agent {name!r} (agents: {known})")


def teammates(program: Program, name: str) -> list[str]:
    return [a.name for a in program.org.agents if a.name != name]


def chief_of(program: Program) -> str | None:
    return next((a.name for a in program.org.agents if a.role == "chief"), None)


def juniors(program: Program) -> list[str]:
    """Who takes the chief's assignments: the juniors, not solo researchers beside them."""
    return [a.name for a in program.org.agents if role_of(program, a.name) == "junior"]


def system_prompt(program: Program, name: str, cli: bool = False, prompts: Path = PROMPTS) -> str:
    files = ["rigor", role_of(program, name)] + (["cli"] if cli else [])
    text = "\n\n".join((prompts / f"{f}.md").read_text().strip() for f in files)
    return Template(text).safe_substitute(fields(program, name))


def fields(program: Program, name: str) -> dict:
    variants = "; ".join(f"{v.name} ({json.dumps(v.overrides)}{', ref ' + v.ref if v.ref else ''})"
                         for v in program.variants) or "none"
    claim = program.claim.kind + (f" with margin {program.claim.margin:g}"
                                  if program.claim.kind == "non-inferiority" else "")
    if program.claim.kind == "improve":
        claim += (f" (open-ended: each experiment is a try against the current frontier, which results() "
                  f"names with its commit; build on that commit. A try is kept only if the referee says better "
                  f"under an online false-discovery rule at FDR {program.claim.alpha:g}, on the held-out split "
                  "too; a try measured against a frontier that has since moved is stale: submit it again)")
    chief = chief_of(program)
    return {
        "name": name, "program": program.name, "question": program.question.strip(), "claim": claim,
        "metric": program.metric, "preset": program.baseline.preset,
        "baseline_overrides": json.dumps(program.baseline.overrides) or "{}", "variants": variants,
        "per_run": f"{program.budget.per_run.kind} {program.budget.per_run.value:g}",
        "seeds": program.budget.seeds, "llm_dollars": f"{program.budget.total_llm_dollars:g}",
        "protected": ", ".join(program.protected) or "none", "max_change_kb": f"{program.max_change_kb:g}",
        "agent_cpu_seconds": f"{program.budget.agent_cpu_seconds or program.budget.total_compute_seconds:g}",
        "run_imports": RUN_IMPORTS,
        "teammates": ", ".join(teammates(program, name)) or "none",
        "chief": chief or "none",
        "juniors": ", ".join(juniors(program)) or "none",
    }


def kickoff(program: Program, name: str, board: str) -> str:
    return (f"Start work on program {program.name} as {name} ({role_of(program, name)}).\n\n"
            + board_excerpt(board))


def board_excerpt(board: str, chars: int = 6000) -> str:
    if not board.strip():
        return "The board is empty."
    tail = board[-chars:]
    if len(board) > chars and "\n" in tail:  # whole lines only: a cut mid-line could begin with the end
        tail = tail[tail.index("\n") + 1:]     # of a quoted line (`> ## ... · human`), read as a heading
    return "The board so far" + (" (latest part)" if len(board) > chars else "") + f":\n\n{tail}"
