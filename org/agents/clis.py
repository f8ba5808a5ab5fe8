"""
The claude-code and codex backends: the vendors' own agent CLIs, started in the agent's pane
and worktree, with the org's tools reachable as the `org` command in their shell.

- Claude Code runs interactively. The end of each turn comes from its Stop hook (never from
  reading the screen): `org agent-hook stop` records the turn and then waits for mail; new mail
  goes back as {"decision": "block", "reason": <mail>}, which makes Claude carry on with it.
  While the agent is paused (a person took the pane over) or stopping, the hook lets Claude
  stop, so the person has the prompt.
- Codex runs one `codex exec` per turn (its `resume --last` continues the session). Its
  `notify` command, `org agent-hook notify`, records each finished turn; the next turn starts
  when mail arrives.

Each CLI runs in the agent's box (org/sandbox.py: its worktree writable, no network, .lab/ and
the other worktrees absent), with a home of its own in .lab/<program>/clis/<agent>/home that
passes every first-run screen (onboarding, folder trust, the bypass warning) and turns off
telemetry and updates. Its model calls reach the org's gateway, with the agent's own token,
through the port (org/agents/port.py), which also carries its `org` commands out of the box
as this agent. So it never holds a key, its spend is metered by the gateway like every other
agent's, and it can write nothing of the lab's; in its box the protected paths are read-only
even inside its worktree, since its own file tools are not the harness's, and so is Codex's
config. On top of the box: Claude Code's `permissions.deny` on the protected paths, and Codex's
`shell_environment_policy` keeping tokens out of its shell. Neither CLI's own sandbox is on: the
box is the boundary. (Claude Code's does not engage inside the box: with it switched on, its
commands still ran in the box's PID namespace, with HOME writable. Codex's is bwrap: it needed
user namespaces inside the box, a kernel's worth of attack surface, and it makes links as it
builds its mounts, which no box may: org/seccomp.py.)

The CLIs come from npm, pinned (CLI_PACKAGES); `org install-clis` puts them in cli_dir().
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from org import OrgError, remove_tree, user_cache
from org.agents.control import Control
from org.agents.pacing import Pacer
from org.agents.port import Port
from org.agents.roles import kickoff, system_prompt
from org.agents.spend import Spend, cpu_exhausted
from org.agents.transcript import Transcript, clipped
from org.cgroups import cgroup_root, cpu_seconds
from org.diskwatch import free_bytes, gib
from org.lab import Lab, agent_branch
from org.ledger import Ledger, ledger_path
from org.mail import Mail, a_turns_mail, format_mail
from org.sandbox import AGENT_DISK_RESERVE, end_box

HOOK_WAIT_SECONDS = 3000  # Claude Code's hook timeout is set above this
METER_EVERY_SECONDS = 30  # how often a running CLI's box's CPU time goes on record
TAKE_IN_EVERY_SECONDS = 2  # how often its commits are taken in (org/objects.py): no org command need follow them
# the CLI box's CPU weight, against a run's 100 on a core they share: the CLI itself works there
# (its start-up, each tool call's shell: about 0.6 CPU-s a codex turn), and at a command box's 1
# it got 1% of a busy core, so while runs held every core a CLI made no request for a minute.
# At 10 a CLI works at about its own pace, and what it spins takes 9% of a core a one-thread run
# holds; a run of k threads weighs 1/k on each of its cores, so there a CLI takes 102/(102 + 1024/k).
# It runs at SCHED_IDLE as a command box does (its commands run there), but where no cpu cgroup gives
# it that weight: SCHED_IDLE alone weighs 3 against a run's 1024, and the CLI would make no request.
# There it runs at nice 10 (110 against 1024, about this weight's share), which it cannot lower.
CLI_CPU_WEIGHT = 10
CLI_NICE = 10
CLI_PACKAGES = {"claude": ("@anthropic-ai/claude-code", "2.1.332"), "codex": ("@openai/codex", "0.171.0")}
BACKEND_CLI = {"claude-code": "claude", "codex": "codex"}
OPENAI_TOKEN_VAR = "NANOLAB_OPENAI_TOKEN"  # codex reads its gateway token from this variable


# --- where the CLIs are, and installing them -----------------------------------------------

def cli_dir() -> Path:
    """Where `org install-clis` puts the pinned CLIs (NANOLAB_CLIS, else a user cache folder)."""
    if os.environ.get("NANOLAB_CLIS"):
        return Path(os.environ["NANOLAB_CLIS"]).expanduser()
    return user_cache("clis")


def find_cli(name: str) -> str | None:
    """The CLI's binary: the pinned install first, then PATH."""
    return shutil.which(name, path=str(cli_dir() / "node_modules" / ".bin")) or shutil.which(name)


def check_cli(agent: str, backend: str) -> str | None:
    """None if the agent's CLI is installed at its pinned version, else what to do (one line)."""
    name = BACKEND_CLI[backend]
    package, version = CLI_PACKAGES[name]
    path = find_cli(name)
    if path is None:
        return f"agent {agent} (backend {backend}) needs the {name} CLI, which is not installed; run `org install-clis`"
    try:
        with tempfile.TemporaryDirectory() as home:  # `codex --version` makes ~/.codex: not the person's
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", ""), "HOME": home,
                                                                "DISABLE_AUTOUPDATER": "1"}).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"agent {agent} (backend {backend}): {path} does not start ({e}); run `org install-clis`"
    if version not in out.split() and f"{name}-cli {version}" not in out:
        found = out.strip().splitlines()[0] if out.strip() else "no version"
        return (f"agent {agent} (backend {backend}) needs {name} {version}, found {found!r} at {path}; "
                "run `org install-clis`")
    return None


def install_clis(say=print) -> Path:
    """npm install the pinned CLIs into cli_dir() (about 800 MB, half a minute)."""
    if not any(check_cli("-", backend) for backend in BACKEND_CLI):
        say(f"the pinned CLIs are installed: {cli_dir() / 'node_modules' / '.bin'}")
        return cli_dir()
    npm = shutil.which("npm")
    if npm is None:
        raise OrgError("org install-clis needs npm (Node.js 20 or newer: apt-get install nodejs npm)")
    target = cli_dir()
    target.mkdir(parents=True, exist_ok=True)
    specs = [f"{package}@{version}" for package, version in CLI_PACKAGES.values()]
    say(f"installing {' '.join(specs)} into {target} ...")
    proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(target), *specs],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise OrgError(f"npm install failed: {why}")
    for backend in BACKEND_CLI:
        why = check_cli("-", backend)
        if why:
            raise OrgError(f"npm install finished, but: {why}")
    say(f"installed: {target / 'node_modules' / '.bin'}")
    return target


# --- the CLI's own home, seeded past its first-run screens ---------------------------------

def org_command(*args: str) -> str:
    """`org ARGS` as a shell command that works without the console script on PATH."""
    return shlex.join([sys.executable, "-m", "org.entry", *args])


def claude_settings(program, tree: Path) -> dict:
    """--settings: the Stop hook, no bypass warning, and edits of protected paths refused by Claude
    itself (the box is what enforces; this keeps the agent from trying)."""
    hook = org_command("agent-hook", "stop")
    deny = [f"Edit(/{tree}/{p})" for p in program.protected] + [f"Edit(/{tree}/{p}/**)" for p in program.protected]
    return {"hooks": {"Stop": [{"hooks": [{"type": "command", "command": hook, "timeout": HOOK_WAIT_SECONDS + 60}]}]},
            "skipDangerousModePermissionPrompt": True, "permissions": {"deny": deny}}


# The home is the agent's to write (from its box); these run outside it, as the harness. So
# nothing there is followed: a link planted at one of these names would otherwise have the
# harness write through it (the ledger, the gateway's keys), or read through it.

def own_folder(path: Path) -> Path:
    """path as a real folder: whatever else is there (a link, a file) is removed first."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(exist_ok=True)
    return path


def write_own(path: Path, text: str):
    """Write a fresh file at path, never through a link or into a file with other names."""
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_own_json(path: Path, limit: int = 1 << 20) -> dict:
    """The JSON object in a regular file at path (not a link, at most `limit` bytes), else {}."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return {}
        try:
            data = json.loads(f.read(limit + 1)[:limit])
        except (ValueError, RecursionError):  # (10^5 brackets: not a decode error, and it stopped the restart)
            return {}
    return data if isinstance(data, dict) else {}


def seed_shell_profile(home: Path, path: str):
    """Login shells (codex runs `bash -lc`) reset PATH from /etc/profile; ~/.bash_profile puts
    the `org` command and the CLIs back."""
    write_own(home / ".bash_profile", f"export PATH={shlex.quote(path)}\n")


def seed_claude_home(home: Path, tree: Path):
    """~/.claude.json past onboarding and with the worktree trusted (Claude rewrites this file:
    keep what it wrote, set our keys)."""
    state = read_own_json(home / ".claude.json")
    state["hasCompletedOnboarding"] = True
    projects = state.get("projects") if isinstance(state.get("projects"), dict) else {}
    entry = projects.get(str(tree)) if isinstance(projects.get(str(tree)), dict) else {}
    state["projects"] = {**projects, str(tree): {**entry, "hasTrustDialogAccepted": True}}
    write_own(home / ".claude.json", json.dumps(state, indent=1))


def codex_config(model: str, base_url: str, tree: Path) -> str:
    """CODEX_HOME/config.toml: the gateway as its provider, the worktree trusted, the notify hook,
    no update checks, analytics, plugins or daemon, and no token in its shell's environment. Its
    own sandbox off (danger-full-access: the box is its sandbox); read-only in the box."""
    q = json.dumps  # a JSON string is a TOML basic string
    toml_list = lambda items: "[" + ", ".join(q(str(i)) for i in items) + "]"
    notify = toml_list([sys.executable, "-m", "org.entry", "agent-hook", "notify"])
    return "\n".join([
        f"model = {q(model)}", 'model_provider = "nanolab"', "check_for_update_on_startup = false",
        'web_search = "disabled"',  # the provider's search: the network, outside the box (the gateway refuses it)
        f"notify = {notify}", 'sandbox_mode = "danger-full-access"', 'approval_policy = "never"', "",
        "[analytics]", "enabled = false", "",
        "[features]", "plugins = false", "daemon_auto_start = false", "",
        "[model_providers.nanolab]", 'name = "nanolab gateway"', f"base_url = {q(base_url)}",
        f"env_key = {q(OPENAI_TOKEN_VAR)}", 'wire_api = "responses"', "",
        f"[projects.{q(str(tree))}]", 'trust_level = "trusted"', "",
        "[shell_environment_policy]", 'exclude = ["*KEY*", "*TOKEN*", "*SECRET*"]', ""])


def cli_env(entry, program, tree: Path, home: Path, port_dir: Path, via: tuple[str, str]) -> dict:
    """The whole environment of the CLI in its box: no key, only the agent's gateway token."""
    from org.agents.sandbox import git_identity
    from org.agents.port import PORT_VAR
    from org.sandbox import untrusted_env
    env = untrusted_env({"HOME": str(home), "PATH": box_path(entry.backend), PORT_VAR: str(port_dir / "org.sock"),
                         "NANOLAB_AGENT": entry.name, "NANOLAB_PROGRAM": program.name,
                         "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
                         "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                         "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1", **git_identity(entry.name)})
    if os.geteuid() == 0:
        env["IS_SANDBOX"] = "1"  # Claude Code refuses to skip permissions as root otherwise
    url, token = via
    if entry.backend == "claude-code":
        env.update({"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": token})  # a bearer token: no key prompt
        # its background and subagent calls on its own model too: the gateway forwards no other
        env.update({name: entry.model for name in ("ANTHROPIC_SMALL_FAST_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                                                   "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL",
                                                   "CLAUDE_CODE_SUBAGENT_MODEL")})
    else:
        # its own temp folder (made by BoxedCLI): codex makes no sandbox helpers under /tmp
        env.update({"CODEX_HOME": str(home / ".codex"), OPENAI_TOKEN_VAR: token, "TMPDIR": str(home / "tmp")})
    return env


def box_path(backend: str) -> str:
    """PATH in the box: the CLI, the interpreter with the `org` command, then the usual."""
    return os.pathsep.join([str(Path(find_cli(BACKEND_CLI[backend]) or "claude").parent),
                            str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])


def claude_argv(entry, program, tree: Path) -> list[str]:
    return [find_cli("claude") or "claude", "--model", entry.model, "--dangerously-skip-permissions",
            "--append-system-prompt", system_prompt(program, entry.name, cli=True),
            "--settings", json.dumps(claude_settings(program, tree))]


def codex_argv(entry, resume: bool) -> list[str]:
    argv = [find_cli("codex") or "codex", "exec"] + (["resume", "--last"] if resume else [])
    return argv + ["--skip-git-repo-check"]  # its sandbox and approvals: config.toml


# --- running it ----------------------------------------------------------------------------

class BoxedCLI:
    """The agent's CLI, boxed, with its port served while this is open:

        with BoxedCLI(entry, program, root, tree) as cli:
            proc = cli.start(argv)      # argv runs in the box, in the worktree
    """

    def __init__(self, entry, program, root: Path, tree: Path):
        from org.gateway import client_config
        self.entry, self.program, self.root, self.tree = entry, program, Path(root), Path(tree).resolve()
        self.lab_dir = self.root / ".lab" / program.name
        self.via = client_config(self.lab_dir, entry.name, entry.backend)
        if self.via is None:
            raise OrgError(f"agent {entry.name} ({entry.backend}): the org's gateway has no token for it; "
                           "CLI agents run under `org launch`")
        self.gateway_port = urllib.parse.urlsplit(self.via[0]).port
        self.folder = self.lab_dir / "clis" / entry.name
        self.home, self.port_dir = self.folder / "home", self.folder / "port"

    def __enter__(self):
        self.home.mkdir(parents=True, exist_ok=True)
        own_folder(self.home / ".codex")
        own_folder(self.home / "tmp")
        self.sandbox = self.box()
        seed_claude_home(self.home, self.tree)
        seed_shell_profile(self.home, box_path(self.entry.backend))
        write_own(self.home / ".codex" / "config.toml", codex_config(self.entry.model, self.via[0], self.tree))
        self.port = Port(self.port_dir, port_handler(self.program, self.entry.name, self.root),
                         ("127.0.0.1", self.gateway_port)).__enter__()
        return self

    def __exit__(self, *exc):
        self.port.__exit__(*exc)

    def box(self):
        from org.lab import Lab
        from org.agents.tools import command_box
        lab = Lab.open(self.root)
        try:
            box = command_box(lab, self.tree, self.program, self.entry.name)
        finally:
            lab.close()
        if box is None:
            raise OrgError(f"agent {self.entry.name} ({self.entry.backend}): no sandbox here, and CLI agents run only in one")
        frozen = [self.tree / p for p in self.program.protected]  # its own Edit/Write tools are not ours
        frozen.append(self.home / ".codex" / "config.toml")  # what Codex's own sandbox kept from its commands
        return box.with_extra(writable=[self.home], sockets=[self.port_dir], frozen=frozen, address_bytes=None,
                              cpu_weight=CLI_CPU_WEIGHT, **({"idle": True} if cgroup_root("cpu") else
                                                             {"idle": False, "nice": CLI_NICE}))

    def start(self, argv: list[str], **popen) -> subprocess.Popen:
        env = cli_env(self.entry, self.program, self.tree, self.home, self.port_dir, self.via)
        relay = [sys.executable, "-P", "-c", "import sys; from org.agents.port import main; sys.exit(main(sys.argv[1:]))",
                 str(self.gateway_port), str(self.port.gateway_socket), "--"]
        return self.sandbox.popen(relay + argv, cwd=self.tree, env=env, **popen)


def port_handler(program, agent: str, root: Path):
    """Answer the box's requests as `agent`: the socket says who calls, nothing in the request."""
    from org.agents.commands import run_tool

    def handle(request: dict) -> dict:
        free = free_bytes(root / ".lab")
        if free < AGENT_DISK_RESERVE:  # (each request may write: the transcript, mail, the ledger)
            return {"output": f"refused: the disk has {gib(free)} free, less than the {gib(AGENT_DISK_RESERVE)} "
                              "the harness keeps for the runs and its ledger; delete files of your own to go on", "rc": 2}
        op = request.get("op")
        if op == "tool" and isinstance(request.get("name"), str) and isinstance(request.get("arguments"), dict):
            output, rc = run_tool(program, agent, root, request["name"], request["arguments"])
            return {"output": output, "rc": rc}
        if op == "board":
            return {"output": Mail(root / ".lab" / program.name).board() or "(the board is empty)", "rc": 0}
        if op == "hook" and request.get("event") in ("stop", "notify"):
            return {"output": on_hook(request["event"], program, agent, root, str(request.get("payload") or "")), "rc": 0}
        return {"output": f"error: not a request of the org's port: {json.dumps(request)[:200]}", "rc": 2}
    return handle


def run_cli(entry, program, root: Path, tree: Path) -> str:
    """Run the agent's CLI, boxed, in this terminal until it finishes or is stopped; returns why."""
    lab_dir = root / ".lab" / program.name
    control, mail = Control(lab_dir, entry.name), Mail(lab_dir)
    control.clear_stop()
    control.set_state("running", f"{entry.backend} started")
    first = kickoff(program, entry.name, mail.board())

    def meter(cpu_seconds: float) -> str | None:  # the CLI and every command it ran: no run's budget counts it
        with Ledger(ledger_path(lab_dir)) as ledger:
            ledger.record_agent_cpu(program.name, entry.name, cpu_seconds, entry.backend)
        return cpu_exhausted(ledger_path(lab_dir), program.name, entry.name)

    spent = cpu_exhausted(ledger_path(lab_dir), program.name, entry.name)
    if spent:
        control.set_state("stopped", spent)
        return f"stopped: {spent}"
    with BoxedCLI(entry, program, root, tree) as cli, contextlib.closing(Lab.open(root)) as lab:
        def take_in():  # the commits it makes in its own shell, where the person's git and its teammates' read them
            with contextlib.suppress(OrgError, OSError):
                lab.take_in_work(cli.tree, agent_branch(program.name, entry.name))
        if entry.backend == "claude-code":
            return _supervise(cli.start(claude_argv(entry, program, cli.tree) + [first]), control, meter=meter,
                              take_in=take_in, pacer=cli.port.pacer)
        transcript = Transcript(lab_dir / "transcripts" / f"{entry.name}.jsonl")
        prompt, resume = system_prompt(program, entry.name, cli=True) + "\n\n" + first, False
        while True:  # codex: one exec per turn, the next one when mail arrives
            reason = _supervise(cli.start(codex_argv(entry, resume) + [prompt], stdin=subprocess.DEVNULL),
                                control, end_when_done=False, meter=meter, take_in=take_in, pacer=cli.port.pacer)
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
            messages, waiting = a_turns_mail(messages)  # (codex takes its prompt as one argument: 128 KiB at most)
            prompt = format_mail(messages, waiting)
            transcript.append("user", text=prompt, mail_ids=[m["id"] for m in messages])
            for m in messages:
                mail.ack(agent, m)
            return prompt, None


def _supervise(proc: subprocess.Popen, control: Control, end_when_done: bool = True,
               meter=lambda cpu_seconds: None, take_in=lambda: None, pacer: Pacer | None = None) -> str | None:
    """Wait for the CLI; a stop request ends it, and so does its box's CPU budget. Returns why
    the agent ended, or None when the process ended a turn and the agent goes on (codex). The
    box's CPU time goes to `meter` as it grows (every METER_EVERY_SECONDS, and at the end),
    which returns why the box may compute no more, or None; `take_in` runs every
    TAKE_IN_EVERY_SECONDS while the agent's `pacer` is not in debt, at SCHED_IDLE
    (org/agents/pacing.py: a branch that names junk costs the harness its inflating), and at the end."""
    pacer = pacer or Pacer()
    booked, last, taken = 0.0, time.monotonic(), time.monotonic()
    taking: threading.Thread | None = None  # (at SCHED_IDLE a take-in may take a while: stop requests and the meter go on)

    def book() -> str | None:
        nonlocal booked
        used = cpu_seconds(proc)
        if used is None or used <= booked:
            return None
        spent, booked = meter(used - booked), used
        return spent
    try:
        while proc.poll() is None:
            stop = control.stop_reason()
            if not stop and time.monotonic() - last > METER_EVERY_SECONDS:
                stop, last = book(), time.monotonic()
            if time.monotonic() - taken > TAKE_IN_EVERY_SECONDS and not (taking and taking.is_alive()) and not pacer.owed():
                taking = threading.Thread(target=pacer.run, args=(take_in,), name="take-in", daemon=True)
                taking.start()
                taken = time.monotonic()
            if stop:
                end(proc)
                control.set_state("stopped", stop)
                return f"stopped: {stop}"
            time.sleep(0.5)
    finally:
        if proc.poll() is not None:  # what its box left, its device files (org/hostfiles.py) and cgroups
            end_box(proc)
        spent = book()  # (what end_box read)
        if taking:
            taking.join()
        pacer.run(take_in, wait=False)  # (booked, but a stop is not held up by the agent's debt)
    stop = control.stop_reason() or spent
    if stop or end_when_done or proc.returncode != 0:
        reason = f"stopped: {stop}" if stop else f"the CLI exited with status {proc.returncode}"
        control.set_state("stopped", reason)
        return reason
    return None


def end(proc: subprocess.Popen, grace: float = 10):
    """SIGTERM to the box's first process (it passes it on to the CLI, which saves its session),
    then the box itself if it is still there after `grace` seconds."""
    try:
        os.kill(getattr(proc, "inner_pid", proc.pid), signal.SIGTERM)
        proc.wait(timeout=grace)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


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
    except (ValueError, RecursionError):  # (a 5000-digit number, 10^5 brackets: no decode error either)
        data = {"unparsed": payload[:2000]}
    data = data if isinstance(data, dict) else {}
    last = data.get("last_assistant_message") or data.get("last-assistant-message")
    transcript.event("turn_end", backend="claude-code" if event == "stop" else "codex", last_message=clipped(last))
    spend = Spend(ledger_path(lab_dir), program.name, agent, program.budget.total_llm_dollars)
    control = Control(lab_dir, agent)
    over = spend.exhausted()  # the gateway metered the turn's calls as they were made
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
    messages, waiting = a_turns_mail(messages)
    transcript.append("user", text=format_mail(messages, waiting), mail_ids=[m["id"] for m in messages])
    for m in messages:
        Mail(lab_dir).ack(agent, m)
    return json.dumps({"decision": "block", "reason": format_mail(messages, waiting)})


def _paused_at_prompt(control: Control):
    """Claude stops at its prompt: a safe point. If a pause was asked for, say it is paused now,
    so `org takeover` (waiting for "paused") hands over the pane only when the turn is over."""
    reason = control.pause_reason()
    if reason is not None and control.stop_reason() is None:
        control.set_state("paused", reason)
