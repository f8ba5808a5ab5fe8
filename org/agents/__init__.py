"""
The org's researchers: one loop per agent, the tools it works with, and its backends.

    loop.py           the agent loop (`org agent NAME --program P`): prompt, tool calls, transcript,
                      mail, pause/stop, spend, back-off, restart from the transcript
    tools.py          the tools (files, run, git_commit, submit_experiment, results, mail, board...)
    sandbox.py        the worktree's limits: paths, protected files, a clean shell environment
    transcript.py     the JSONL transcript and the backend-neutral conversation
    models.py         Reply/Usage, retry and back-off, choosing an API backend
    anthropic_api.py  Claude (Messages API, streaming, prompt caching)
    openai_api.py     OpenAI and compatible servers (Chat Completions or Responses)
    scripted.py       no model: the program's declared plan through the same tools
    clis.py           the claude and codex CLIs in the pane, boxed (turn ends from their hooks)
    port.py           a boxed CLI's way out: its `org` commands and its gateway connection
    roles.py          prompts (org/prompts/*.md) and teammates by role and topology
    spend.py          dollars per call into the ledger (org/prices.yaml); the LLM budget
    control.py        pause / resume / stop from outside (what `org launch` uses)
    commands.py       the `org agent|tool|results|mail|agent-hook` subcommands

Starting, pausing and resuming an agent from the outside:

    start_agent("junior-1", program, lab_root)            # or, in a pane: org agent junior-1 --program P
    Control(lab_dir, "junior-1").pause("taken over")      # at its next safe point
    Control(lab_dir, "junior-1").resume("carry on from commit abc")
    org.agents.models.missing_credentials(program)        # before launch: keys the agents need

(Kept light on purpose: `org` imports this package for every command, the SDKs only when an
agent starts.)
"""
from org.agents.commands import start_agent
from org.agents.control import Control

__all__ = ["start_agent", "Control"]
