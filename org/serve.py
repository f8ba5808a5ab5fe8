"""
`org serve`: the runner's pane of a launched program. It drains the queue until the program is
done, and serves the org's LLM gateway (org/gateway.py) while it does: the keys live in this
process only.
"""
from __future__ import annotations

import signal
import time

from org import OrgError, gateway
from org.lab import Lab
from org.launch import STOP_SECONDS, program_done
from org.recovery import one_runner
from org.stop import wait_for_exit
from org.unseen import known_lab
from org.workspace import ProgramSite, open_site


def add_serve_command(sub):
    p = sub.add_parser("serve", description="(internal) the runner of a launched program: serve the queue until done")
    p.add_argument("program")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    return serve(open_site(args.program))


def serve(launch: ProgramSite, poll: float = 1.0) -> int:
    """Drain the queue again and again until every agent has ended and every run is
    recorded, or a stop is asked (SIGTERM or panes/stop). Killed at any moment, the next
    serve recovers: runs left running are re-queued or recorded, never run twice."""
    from org.runner import Runner
    signal.signal(signal.SIGTERM, _interrupt)
    lab = Lab.open(launch.root)
    known_lab(lab.root)  # (a lab that fell off the list, its folder away for a while, goes back on it)
    say = lambda text: print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)
    scripted = all(agent.backend == "scripted" for agent in launch.program.org.agents)  # code of ours only
    runner = Runner(lab, launch.program, launch.ledger_path, say=say, sandboxed=None if scripted else True,
                    trust_code=scripted)
    llm = start_gateway(launch, say)
    say(f"serving {launch.name}'s queue" + (f" and its LLM gateway on {llm.url}" if llm else ""))
    try:
        with one_runner(lab.state_dir(launch.program.name)):  # (for good: between drains too, where an `org run` took it)
            while not (launch.panes_dir / "stop").exists():
                runner.drain()
                if program_done(launch):
                    say("the program is done: every agent has ended and every run is recorded")
                    return 0
                time.sleep(poll)
        say("stopped (org stop)")
    except KeyboardInterrupt:
        say("stopped; a run it was running goes back to the queue")
    finally:
        if llm:  # agents stopping at a safe point may still be mid-call: serve them to the end
            wait_for_exit(launch, STOP_SECONDS + 10, launch.agents)
            llm.__exit__()
        lab.close()
    return 0


def start_gateway(launch: ProgramSite, say):
    """The org's LLM gateway, in this (the runner's) process, when its agents call a model API:
    the keys are read from the gateway's 0600 file into this process only."""
    from org.agents.sandbox import protect_own_environment
    backends = [a.backend for a in launch.program.org.agents]
    if not any(b in gateway.BACKEND_PROVIDER for b in backends):
        return None
    protect_own_environment()  # no same-user process may read the keys from this one's memory
    try:
        return gateway.Gateway(launch.lab_dir, launch.name, say=say).__enter__()
    except OSError as e:
        raise OrgError(f"the LLM gateway cannot start: {e}; `org launch {launch.name}` again "
                       "writes its files anew") from None


def _interrupt(*_):
    raise KeyboardInterrupt
