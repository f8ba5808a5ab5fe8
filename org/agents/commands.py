"""
The agents' subcommands of `org` (registered by org/cli.py through add_agent_commands):

    org agent NAME --program P            the agent's loop (the process in its pane)
    org tool NAME '{json}'                one tool call, as the agent in $NANOLAB_AGENT
    org results [--experiment N] [--wait S]
    org mail send TO TEXT | org mail read [--wait S] | org mail board
    org agent-hook stop|notify            turn-end hooks of the claude and codex CLIs
    org install-clis                      npm install the pinned claude and codex CLIs

Inside a CLI agent's box (the claude-code and codex backends) NANOLAB_PORT names the socket
of its port (org/agents/port.py): `org tool` and friends send their call there, and the port,
not a flag, says who is calling. Outside a box, --as/--program or NANOLAB_AGENT,
NANOLAB_PROGRAM and NANOLAB_LAB say who and where the caller is.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from org import OneLineParser, OrgError, shown
from org.agents.port import PORT_VAR, call
from org.agents.sandbox import protect_own_environment

LOW_WEIGHT_VAR = "NANOLAB_LOW_WEIGHT"  # `org launch`'s agent panes: `org agent` at the agents' cpu weight (pacing.py)


def add_agent_commands(sub, in_box: bool = False):
    """The agents' subcommands; in a CLI agent's box, only those that go through its port."""
    if not in_box:
        p = sub.add_parser("agent", description="(internal) run one agent of a program: the process in its pane")
        p.add_argument("name", help="the agent's name in the program's org")
        p.add_argument("--program", required=True, help="programs/<name>.yaml or <name>")
        p.add_argument("--api", choices=["chat", "responses"], help="OpenAI API for an openai agent (default chat)")
        p.add_argument("--backend", choices=["scripted"], help="run as this backend whatever the program says")
        p.set_defaults(func=cmd_agent)

    p = sub.add_parser("tool", description="(internal) call one agent tool: org tool NAME '{json arguments}'")
    p.add_argument("tool")
    p.add_argument("arguments", nargs="?", default="{}", help="a JSON object")
    _identity(p)
    p.set_defaults(func=cmd_tool)

    p = sub.add_parser("results", description="(internal) an agent's view of its experiments, runs and verdicts (JSON)")
    p.add_argument("--experiment", type=int)
    p.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for its runs")
    _identity(p)
    p.set_defaults(func=lambda a: _tool_command(a, "results", {"experiment": a.experiment, "wait_seconds": a.wait}))

    p = sub.add_parser("mail", help="agents' mail: send TO TEXT | read [--wait S] | board")
    p.add_argument("action", choices=["send", "read", "board"])
    p.add_argument("rest", nargs="*", metavar="TO TEXT", help="send: TO TEXT...")
    p.add_argument("--wait", type=float, default=0)
    _identity(p)
    p.set_defaults(func=cmd_mail)

    p = sub.add_parser("agent-hook", description="(internal) turn-end hook of the claude and codex CLIs")
    p.add_argument("event", choices=["stop", "notify"])
    p.add_argument("payload", nargs="?", help="codex passes its JSON as an argument")
    _identity(p)
    p.set_defaults(func=cmd_hook)

    if not in_box:
        p = sub.add_parser("install-clis", help="install the pinned claude and codex CLIs with npm (about 800 MB)")
        p.set_defaults(func=cmd_install_clis)


def _identity(p):
    p.add_argument("--as", dest="agent", default=os.environ.get("NANOLAB_AGENT"), help="agent name ($NANOLAB_AGENT)")
    p.add_argument("--program", dest="program", default=os.environ.get("NANOLAB_PROGRAM"),
                   help="program ($NANOLAB_PROGRAM)")


# --- commands ------------------------------------------------------------------------------

def box_main(argv: list[str] | None = None) -> int:
    """`org` inside a CLI agent's box (org/entry.py): its own commands alone, each a call
    through its port."""
    parser = OneLineParser(prog="org", description="the org's commands for an agent in its box")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND")
    add_agent_commands(sub, in_box=True)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OrgError as e:
        print(f"org: {e}", file=sys.stderr)
        return 2


def cmd_agent(args) -> int:
    from org.workspace import lab_root, open_program, with_backend
    program, lab = open_program(args.program, lab_root())
    lab.close()
    if args.backend:  # org launch --backend scripted
        program = with_backend(program, args.backend)
    protect_own_environment()  # this process holds the API keys; its tools' commands must not
    if os.environ.get(LOW_WEIGHT_VAR):  # (set by `org launch`; a test calling this in its own process keeps its weight)
        from org.agents.pacing import join_agents_weight
        join_agents_weight(warm_imports(program, args.name))
    reason = start_agent(args.name, program, lab_root(), api=args.api)
    print(f"{args.name}: {reason}")
    return 0


def warm_imports(program, name: str) -> int:
    """Import, at the process's own weight, what its agent's first calls would import at the agents'
    weight: its SDK (anthropic's: 1.9 CPU-s) and what `results` reads verdicts with (scipy.stats: 0.9).
    There, with runs on both cores, a CLI's first `results` took 100 s (session 44's measurement).
    Returns the process's weight: a CLI's `org agent` is the harness's work for it alone (its port,
    its take-ins), at its command boxes' weight; an SDK or scripted agent's own loop runs in it too,
    at the weight a CLI's box has (at 1 a CLI made no request for a minute: clis.CLI_CPU_WEIGHT)."""
    import importlib
    from org.agents.clis import BACKEND_CLI, CLI_CPU_WEIGHT
    from org.agents.pacing import AGENTS_WEIGHT
    from org.agents.roles import agent_entry
    try:
        backend = agent_entry(program, name).backend
    except KeyError:  # (an agent the program lacks: start_agent says so)
        return AGENTS_WEIGHT
    sdk = {"anthropic": "org.agents.anthropic_api", "openai": "org.agents.openai_api",
           "scripted": "org.agents.scripted"}.get(backend, "org.agents.clis")
    for module in ("scipy.stats", "org.agents.tools", "org.experiments", "org.agents.loop", sdk):
        importlib.import_module(module)
    return AGENTS_WEIGHT if backend in BACKEND_CLI else CLI_CPU_WEIGHT


def start_agent(name: str, program, root: Path, api: str | None = None, console=None) -> str:
    """Make the agent's worktree and run its backend until it ends; returns why it ended."""
    from org.lab import Lab
    from org.agents.roles import agent_entry
    try:
        entry = agent_entry(program, name)
    except KeyError as e:
        raise OrgError(e.args[0]) from None
    lab = Lab.open(root)
    tree = lab.add_worktree(program.name, name)
    lab.close()
    if entry.backend in ("claude-code", "codex"):
        from org.agents.clis import run_cli
        return run_cli(entry, program, root, tree)
    from org.agents.loop import Agent
    from org.agents.models import Unavailable, make_model
    from org.agents.scripted import ScriptedModel
    try:
        via = None
        if os.environ.get("NANOLAB_GATEWAY") and entry.backend != "scripted":  # set by `org launch`
            from org.gateway import client_config
            via = client_config(root / ".lab" / program.name, name, entry.backend)
            if via is None:
                raise OrgError(f"agent {name}: the org's gateway has no token for it; `org launch` again")
        model = ScriptedModel(program, name) if entry.backend == "scripted" else make_model(entry, api, via)
    except (Unavailable, ValueError) as e:
        raise OrgError(str(e)) from None
    return Agent(name, program, root, tree, model, console=console).run()


def cmd_tool(args) -> int:
    try:
        arguments = json.loads(args.arguments)
    except (ValueError, RecursionError) as e:  # (JSONDecodeError; a number of 5,000 digits; brackets 30,000 deep)
        raise OrgError(f"arguments must be a JSON object: {str(e)[:200] or 'nested too deep'}") from None
    if not isinstance(arguments, dict):
        raise OrgError(f"arguments must be a JSON object, not {type(arguments).__name__}: {args.arguments[:200]}")
    return _tool_command(args, args.tool, arguments)


def cmd_mail(args) -> int:
    if args.action == "send":
        if len(args.rest) < 2:
            raise OrgError("usage: org mail send TO TEXT")
        return _tool_command(args, "send_message", {"to": args.rest[0], "text": " ".join(args.rest[1:])})
    if args.action == "read":
        return _tool_command(args, "read_inbox", {"wait_seconds": args.wait})
    if os.environ.get(PORT_VAR):
        answer = call({"op": "board"})
        print(answer.get("output", ""))
        return answer.get("rc", 2)
    program, _ = _who(args, need_agent=False)
    from org.mail import Mail
    from org.workspace import lab_root
    print(shown(Mail(lab_root() / ".lab" / program.name).board()) or "(the board is empty)")
    return 0


def _tool_command(args, name: str, arguments: dict) -> int:
    """Run one tool as the agent and print what it says. Inside a CLI agent's box the call goes
    out through its port, which alone says who is calling."""
    arguments = {k: v for k, v in arguments.items() if v is not None}
    if os.environ.get(PORT_VAR):
        answer = call({"op": "tool", "name": name, "arguments": arguments})
        output, rc = answer.get("output", ""), answer.get("rc", 2)
    else:
        from org.workspace import lab_root
        program, agent = _who(args)
        output, rc = run_tool(program, agent, lab_root(), name, arguments)
    print(output)
    return rc


def run_tool(program, agent: str, root: Path, name: str, arguments: dict) -> tuple[str, int]:
    """One tool call as `agent`: (its output, exit status). Refusals go on the agent's record,
    printed mail is acknowledged, and `finish` tells the CLI's supervisor to end the CLI."""
    from org.agents.roles import teammates
    from org.agents.tools import Tools
    tools = Tools(agent, program, root, root / "worktrees" / program.name / agent, teammates(program, agent))
    try:
        result = tools.call(name, arguments)
        if result.refused:
            from org.agents.transcript import Transcript, clipped
            Transcript(tools.lab_dir / "transcripts" / f"{agent}.jsonl").event(
                "refusal", tool=name, args=clipped(arguments), reason=clipped(result.output))
        for message in result.acks:
            tools.mail.ack(agent, message)
        if result.finished is not None:
            from org.agents.control import Control
            Control(tools.lab_dir, agent).stop(f"finished: {result.finished}")
    finally:
        tools.close()
    return result.output, 1 if result.error else 0


def _who(args, need_agent: bool = True):
    from org.workspace import lab_root
    if not args.program:
        raise OrgError("which program? pass --program or set NANOLAB_PROGRAM")
    if need_agent and not args.agent:
        raise OrgError("which agent? pass --as NAME or set NANOLAB_AGENT")
    from org.workspace import open_site
    program = open_site(args.program).program  # (its file, never one in a worktree, else its ledger's)
    root = lab_root()
    if need_agent:  # the tools act as this agent (sender of its mail, author of its experiments)
        from org.agents.roles import agent_entry
        try:
            agent_entry(program, args.agent)
        except KeyError as e:
            raise OrgError(e.args[0]) from None
        tree = root / "worktrees" / program.name / args.agent
        if not tree.is_dir():
            raise OrgError(f"agent {args.agent} has no worktree yet ({tree}); `org launch {program.name}` makes it")
    return program, args.agent


def cmd_hook(args) -> int:
    payload = args.payload if args.payload is not None else sys.stdin.read()
    if os.environ.get(PORT_VAR):
        out = call({"op": "hook", "event": args.event, "payload": hook_payload(payload)}).get("output")
    else:
        from org.agents.clis import on_hook
        from org.workspace import lab_root
        program, agent = _who(args)
        out = on_hook(args.event, program, agent, lab_root(), payload)
    if out:
        print(out)
    return 0


def hook_payload(payload: str, chars: int = 64_000) -> str:
    """The payload of a CLI's hook as its port takes it (one line of MAX_REQUEST at most): each
    value clipped as its record is (transcript.clipped), the turn's last message among them."""
    if len(payload) <= chars:
        return payload
    from org.agents.transcript import clipped
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return payload[:chars]
    return json.dumps({k: clipped(v) for k, v in data.items()})[:4 * chars]  # (a cut one is recorded unparsed)


def cmd_install_clis(args) -> int:
    from org.agents.clis import install_clis
    install_clis()
    return 0
