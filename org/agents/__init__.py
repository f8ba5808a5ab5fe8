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
    pacing.py         the harness's own CPU time for one agent, held to a share of a core
    roles.py          prompts (org/prompts/*.md) and teammates by role and topology
    spend.py          dollars per call into the ledger (org/prices.yaml); the LLM budget
    control.py        pause / resume / stop from outside (what `org launch` uses)
    commands.py       the `org agent|tool|results|mail|agent-hook` subcommands

Starting, pausing and resuming an agent from the outside:

    commands.start_agent("junior-1", program, lab_root)   # or, in a pane: org agent junior-1 --program P
    control.Control(lab_dir, "junior-1").pause("taken over")      # at its next safe point
    control.Control(lab_dir, "junior-1").resume("carry on from commit abc")
    models.missing_credentials(program)                   # before launch: keys the agents need

(This package imports nothing itself: the `org` command in a CLI agent's box imports commands.py,
port.py and what they need, no heavy library: org/entry.py, tests/test_structure.py.)
"""
