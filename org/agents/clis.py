"""
The claude-code and codex backends: the vendors' own agent CLIs, started in the agent's pane
and worktree, with the org's tools reachable as the `org` command in their shell.

- Claude Code runs interactively. The end of each turn comes from its Stop hook (never from
  reading the screen): `org agent-hook stop` records the turn, charges its tokens, and then
  waits for mail; new mail goes back as {"decision": "block", "reason": <mail>}, which makes
  Claude carry on with it. While the agent is paused (a person took the pane over) or stopping,
  the hook lets Claude stop, so the person has the prompt.
- Codex runs one `codex exec` per turn (its `resume --last` continues the session). Its
  `notify` command, `org agent-hook notify`, records each finished turn; the next turn starts
  when mail arrives.

Both get the role prompt, and NANOLAB_AGENT / NANOLAB_PROGRAM / NANOLAB_LAB so `org tool`,
`org results` and `org mail` know who is calling. Caveat: the CLI needs its API key in its
environment, so the key is visible to the shell commands the CLI runs (unlike the API
backends, whose `run` tool strips it); give these agents keys you can afford to expose.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from org.agents.control import Control
from org.agents.roles import kickoff, system_prompt
from org.agents.spend import Spend
from org.agents.models import Usage
from org.agents.tools import format_mail
from org.agents.transcript import Transcript
from org.mail import Mail

HOOK_WAIT_SECONDS = 3000  # Claude Code's hook timeout is set above this


def org_command(*args: str) -> str:
    """`org ARGS` as a shell command that works without the console script on PATH."""
    return shlex.join([sys.executable, "-m", "org.cli", *args])


def cli_env(agent: str, program, root: Path) -> dict:
    env = {**os.environ, "NANOLAB_AGENT": agent, "NANOLAB_PROGRAM": program.name, "NANOLAB_LAB": str(root),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1"}
    if os.geteuid() == 0:
        env["IS_SANDBOX"] = "1"  # Claude Code refuses to skip permissions as root otherwise
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR"):
        env.pop(name, None)
    if os.environ.get("NANOLAB_GATEWAY"):  # launched: the CLI calls the org's gateway with its token
        from org.agents.roles import agent_entry
        from org.gateway import BACKEND_PROVIDER, PROVIDERS, client_config
        backend = agent_entry(program, agent).backend
        via = client_config(root / ".lab" / program.name, agent, backend)
        if via:
            key_var, url_var, _ = PROVIDERS[BACKEND_PROVIDER[backend]]
            env.update({url_var: via[0], key_var: via[1]})
    return env


def claude_argv(entry, program, root: Path) -> list[str]:
    hook = org_command("agent-hook", "stop", "--as", entry.name, "--program", program.name)
    settings = {"hooks": {"Stop": [{"hooks": [{"type": "command", "command": hook,
                                               "timeout": HOOK_WAIT_SECONDS + 60}]}]}}
    return ["claude", "--model", entry.model, "--dangerously-skip-permissions",
            "--append-system-prompt", system_prompt(program, entry.name, cli=True),
            "--settings", json.dumps(settings)]


def codex_argv(entry, program, root: Path, resume: bool) -> list[str]:
    notify = json.dumps([sys.executable, "-m", "org.cli", "agent-hook", "notify", "--as", entry.name,
                         "--program", program.name])
    argv = ["codex", "exec"] + (["resume", "--last"] if resume else [])
    return argv + ["-m", entry.model, "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check",
                   "-c", f"notify={notify}"]


def run_cli(entry, program, root: Path, tree: Path) -> str:
    """Run the agent's CLI in this terminal until it finishes or is stopped; returns why."""
    lab_dir = root / ".lab" / program.name
    control, mail = Control(lab_dir, entry.name), Mail(lab_dir)
    control.clear_stop()
    control.set_state("running", f"{entry.backend} started")
    env = cli_env(entry.name, program, root)
    first = kickoff(program, entry.name, mail.board())
    if entry.backend == "claude-code":
        return _supervise(subprocess.Popen(claude_argv(entry, program, root) + [first], cwd=tree, env=env), control)
    transcript = Transcript(lab_dir / "transcripts" / f"{entry.name}.jsonl")
    prompt, resume = system_prompt(program, entry.name, cli=True) + "\n\n" + first, False
    while True:  # codex: one exec per turn, the next one when mail arrives
        reason = _supervise(subprocess.Popen(codex_argv(entry, program, root, resume) + [prompt], cwd=tree, env=env),
                            control, end_when_done=False)
        if reason:
            return reason
        prompt, stop = next_codex_prompt(mail, control, transcript, entry.name)
        if stop is not None:
            control.set_state("stopped", stop)
            return f"stopped: {stop}"
        resume = True


def next_codex_prompt(mail: Mail, control: Control, transcript: Transcript, agent: str,
                      poll: float = 1.0) -> tuple[str | None, str | None]:
    """Wait for the next codex turn: (its prompt: new mail, on record and acknowledged, None),
    or (None, why it stops). Paused or stopping never yields a prompt, so the last prompt is
    never run again: a pause blocks in checkpoint() (state "paused"), a stop returns."""
    while True:
        stop = control.checkpoint()  # blocks while a person has the pane
        if stop is not None:
            return None, stop
        messages = _wait_for_mail(mail, control, agent, timeout=None, poll=poll)
        if messages:  # empty: a pause or stop was asked for; the checkpoint above handles it
            prompt = format_mail(messages)
            transcript.append("user", text=prompt, mail_ids=[m["id"] for m in messages])
            for m in messages:
                mail.ack(agent, m)
            return prompt, None


def _supervise(proc: subprocess.Popen, control: Control, end_when_done: bool = True) -> str | None:
    """Wait for the CLI; a stop request ends it. Returns why the agent ended, or None when
    the process ended a turn and the agent goes on (codex)."""
    while proc.poll() is None:
        stop = control.stop_reason()
        if stop:
            proc.terminate()
            proc.wait()
            control.set_state("stopped", stop)
            return f"stopped: {stop}"
        time.sleep(0.5)
    stop = control.stop_reason()
    if stop or end_when_done or proc.returncode != 0:
        reason = f"stopped: {stop}" if stop else f"the CLI exited with status {proc.returncode}"
        control.set_state("stopped", reason)
        return reason
    return None


def _wait_for_mail(mail: Mail, control: Control, agent: str, timeout: float | None,
                   poll: float = 1.0) -> list[dict]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        if control.interrupted():
            return []
        messages = mail.inbox(agent)
        if messages:
            return messages
        time.sleep(poll)
    return []


# --- the turn-end hooks ----------------------------------------------------------------------

def on_hook(event: str, program, agent: str, root: Path, payload: str) -> str | None:
    """Record the finished turn; for Claude Code, hand it new mail (blocking its stop)."""
    lab_dir = root / ".lab" / program.name
    transcript = Transcript(lab_dir / "transcripts" / f"{agent}.jsonl")
    try:
        data = json.loads(payload or "{}")
    except json.JSONDecodeError:
        data = {"unparsed": payload[:2000]}
    last = data.get("last_assistant_message") or data.get("last-assistant-message")
    transcript.event("turn_end", backend="claude-code" if event == "stop" else "codex", last_message=last)
    spend = Spend(lab_dir / "ledger.sqlite", program.name, agent, program.budget.total_llm_dollars)
    control = Control(lab_dir, agent)
    if event == "stop":
        _charge_claude(spend, transcript, data.get("transcript_path"), control.dir)
    over = spend.exhausted()
    if over:
        control.stop(over)
    if event != "stop" or over:
        return None
    if control.pause_reason() is None and control.state()["state"] == "paused":
        control.set_state("running", "resumed")  # handed back: this is its first turn since
    messages = [] if control.interrupted() else _wait_for_mail(Mail(lab_dir), control, agent, HOOK_WAIT_SECONDS)
    if not messages:
        _paused_at_prompt(control)
        return None
    transcript.append("user", text=format_mail(messages), mail_ids=[m["id"] for m in messages])
    for m in messages:
        Mail(lab_dir).ack(agent, m)
    return json.dumps({"decision": "block", "reason": format_mail(messages)})


def _paused_at_prompt(control: Control):
    """Claude stops at its prompt: a safe point. If a pause was asked for, say it is paused now,
    so `org takeover` (waiting for "paused") hands over the pane only when the turn is over."""
    reason = control.pause_reason()
    if reason is not None and control.stop_reason() is None:
        control.set_state("paused", reason)


def _charge_claude(spend: Spend, transcript: Transcript, path: str | None, state_dir: Path):
    """Charge the assistant messages Claude Code logged since the last hook (its own
    transcript holds each message's usage)."""
    if not path or not Path(path).exists():
        return
    mark = state_dir / "claude-charged"
    done = int(mark.read_text()) if mark.exists() else 0
    lines = Path(path).read_text().splitlines()
    for raw in lines[done:]:
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            continue
        message = entry.get("message") or {}
        u = message.get("usage") if entry.get("type") == "assistant" else None
        if u:
            usage = Usage(input=u.get("input_tokens", 0), output=u.get("output_tokens", 0),
                          cache_write=u.get("cache_creation_input_tokens", 0),
                          cache_read=u.get("cache_read_input_tokens", 0))
            cost = spend.record(message.get("model", "unknown"), usage)
            transcript.event("spend", model=message.get("model"), dollars=cost, **vars(usage))
    mark.write_text(str(len(lines)))
