"""
`org launch`: a program's org, running. Agents in a tmux grid, each in its own git worktree;
the runner serving their experiments; a status pane.

    org launch programs/softcap.yaml [--wait] [--attach] [--backend scripted]

The other commands of a launched org live beside this one: org/serve.py (the runner's pane,
`org serve`), org/status.py (`org status`), org/takeover.py (`org attach|takeover|release|say`),
org/stop.py (`org stop|clean`).

Launching is checks first (tmux, the program, API keys, the agents' git branches; if one
fails nothing is created), then the lab (program branch, ledger, one worktree per agent),
then the grid. Every pane's command runs under a keeper (org/panes.py) that restarts it after
a crash; the runner is `org serve` in a pane of its own. Nothing lives in the launching
process, so it may die at any moment; `--wait` only watches.

`org stop` asks agents and runner to stop at their next safe point, closes the tmux server
and removes the clean worktrees (one with uncommitted work is kept, and said so); branches,
ledger, mail and transcripts stay, so `org launch` again resumes: agents rehydrate from their
transcripts, queued runs run, agents that had finished stay finished.

Files, under .lab/<program>/: panes/<name>.json (each keeper's state; _runner, _status),
panes/stop (a stop was asked: keepers restart nothing), panes/launch.json (the launch's
options), takeover/<agent>.json (the worktree as it was when a person took it over).
"""
from __future__ import annotations

import contextlib
import json
import hashlib
import os
import resource
import struct
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from org import OrgError, empty_file, gateway, held, pid_alive, replace_file, shown
from org.agents.control import Control
from org.agents.sandbox import SECRET_NAME
from org.lab import Lab, agent_branch, agent_refs, branch_owner, child_env, hardened_git_env
from org.experiments import waiting_for_budget
from org.ledger import FINISHED, Ledger
from org.mail import now, write_atomically
from org.panes import Pane, RELEASE_KEY, TAKEOVER_KEY, tmux_path
from org.program import Program
from org.cgroups import cgroup_root, core_limit, cpu_meter, cpu_share, memory_limit, pids_root, process_limit
from org.sandbox import available as sandbox_available
from org.workspace import ProgramSite, check_runs_can_go, lab_root, on_ray, preflight, start, with_backend

RUNNER, STATUS = "_runner", "_status"  # keeper names (agent names cannot start with "_")
TAKEN_OVER = "taken over by a person"  # the pause reason `org status` shows as "taken over"
WAITING_TOOLS = ("read_inbox", "results")
STOP_SECONDS = 30.0  # `org stop`: how long agents get to reach a safe point before a signal
GIT_SECONDS = 120  # a git command in an agent's worktree (status, reset, add)
GIT_MEMORY = 4 << 30  # ... and its address space
MAX_INDEX_BYTES = 64 << 20  # an agent's index: 600,000 files


def add_launch_commands(sub):
    p = sub.add_parser("launch", help="start a program's org: agents in a tmux grid, the runner, a status pane")
    p.add_argument("program", help="programs/<name>.yaml or <name>")
    p.add_argument("--attach", action="store_true", help="attach to the grid once it is up")
    p.add_argument("--wait", action="store_true", help="block until the program is done, then print the report")
    p.add_argument("--backend", choices=["scripted"], help="run every agent as this backend (no model, no key)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the experiments on a Ray cluster (its Jobs API, "
                   "e.g. http://HEAD:8265)")
    p.add_argument("--stagger", type=float, default=1.0, help="seconds between agents' starts (default 1)")
    p.add_argument("--restarts", type=int, default=3, help="restarts of a crashed agent or runner (default 3)")
    p.set_defaults(func=cmd_launch)

def org_argv(*args: str) -> list[str]:
    # -P: never import the harness from the current directory (an agent's worktree holds a copy)
    return [sys.executable, "-P", "-m", "org.cli", *map(str, args)]


# ----------------------------------------------------------------------------------------
# org launch


def cmd_launch(args) -> int:
    if not 0 <= args.stagger <= 3600:  # (nan fails too) a keeper sleeps that long before its agent starts
        raise OrgError(f"--stagger {args.stagger}: expected seconds from 0 to 3600")
    if not 0 <= args.restarts <= 1000:
        raise OrgError(f"--restarts {args.restarts}: expected 0 to 1000")
    launch, program_as_filed = check(args.program, args.backend, args.ray)
    grid = launch.grid
    t0 = time.monotonic()
    notes = None
    with one_at_a_time(launch):
        done = finished_before(launch)
        if done:
            print(f"{launch.name} is done: every agent has finished and every run is recorded; "
                  f"`org report {launch.name}` for the report")
        elif grid.running():
            relaunch_broken(launch, refuse=not args.wait)
        else:
            notes = build(launch, program_as_filed, args.stagger, args.restarts, args.backend, args.ray)
    if notes is None:  # done, or running already; --wait waits outside the lock (`org stop` takes it)
        return (print_report(launch) if done else wait_until_done(launch)) if args.wait else 0
    for note in notes:
        print(note)
    n = len(launch.agents)
    print(f"launched {launch.name}: {n} agent{'s' * (n != 1)}, the runner and a status pane "
          f"in tmux session {grid.session_name} ({time.monotonic() - t0:.1f}s)")
    print(f"  watch:     org attach {launch.name}    (or: {shlex.join(grid.attach_argv())})")
    print(f"  status:    org status {launch.name}")
    print(f"  take over: org takeover AGENT  (or C-b {TAKEOVER_KEY} in its pane); "
          f"org release AGENT (C-b {RELEASE_KEY})")
    print(f"  stop:      org stop {launch.name}    (org launch again resumes)")
    sys.stdout.flush()
    if args.wait:
        return wait_until_done(launch)
    if args.attach:
        attach(launch)
    return 0


@contextlib.contextmanager
def one_at_a_time(launch: ProgramSite):
    """One `org launch` or `org stop` of a program at a time (the second waits, then finds
    the first one's work done)."""
    try:
        launch.panes_dir.mkdir(parents=True, exist_ok=True)
        lock = open(launch.panes_dir / "lock", "w")
    except OSError as e:  # (a hand's damage: a file where the folder goes, a folder where the lock does)
        raise OrgError(f"{e.filename}: {e.strerror}: the launch's own state there is not as it left it; "
                       "move it away") from None
    with lock, held(lock):
        yield


def check(arg: str, backend: str | None, ray: str | None = None) -> tuple[ProgramSite, Program]:
    """Every check that needs no state; raises OrgError (one line) and creates nothing."""
    from org.agents.models import missing_credentials
    if tmux_path() is None:
        raise OrgError("tmux is not installed (or not on PATH): org launch runs every agent in a "
                       "tmux pane; install it (e.g. apt-get install tmux) and launch again")
    root = lab_root()
    with contextlib.chdir(root):
        program, lab, path = preflight(arg)
    try:
        launched = with_backend(program, backend) if backend else program
        launch = ProgramSite(root, on_ray(launched, ray) if ray is not None else launched, path and path.resolve())
        if not program.org.agents:
            raise OrgError(f"{path or program.name}: org.agents is empty: nobody to launch (`org run {program.name}` "
                           "runs the declared arms without agents)")
        missing = missing_credentials(launch.program)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise OrgError(f"{missing[0]}{more}; or launch with --backend scripted (no model, no key)")
        check_sandbox(launch.program)
        check_runs_can_go(launch.program)  # (its runs' cluster, or GPUs)
        check_clis(launch.program)
        check_branches(lab, launch)
    finally:
        lab.close()
    return launch, program


def check_sandbox(program: Program):
    """Agents write code and the org runs it: without a sandbox only scripted agents (our own
    code, no model) may run, and the launch says so."""
    why_not = sandbox_available()
    if why_not is None:
        if pids_root() is None:
            print(f"note: the boxes' process limit: {process_limit()}")
        if cgroup_root("cpuset") is None:
            print(f"note: runs keep to their slot's cores by {core_limit()}")
        if cgroup_root("cpu") is None:
            print(f"note: the agents' share of the runs' cores: {cpu_share()}")
        if cgroup_root("cpuacct") is None:
            print(f"note: the agents' own compute: {cpu_meter()}")
        print(f"note: the boxes' memory: {memory_limit(program)}")
        return
    if any(agent.backend != "scripted" for agent in program.org.agents):
        raise OrgError(f"{why_not}. Agents' commands and runs must be sandboxed; install it, or launch "
                       "with --backend scripted")
    print(f"note: {why_not}; every agent is scripted, so the org runs without a sandbox")


def check_clis(program: Program):
    """Each claude-code or codex agent's CLI is installed, at the pinned version, and starts."""
    from org.agents.clis import BACKEND_CLI, check_cli
    for agent in program.org.agents:
        why = check_cli(agent.name, agent.backend) if agent.backend in BACKEND_CLI else None
        if why:
            raise OrgError(why)


def check_branches(lab: Lab, launch: ProgramSite):
    """Each agent's branch, if it exists, must grow from the program's branch, be checked out
    nowhere but its worktree, and its worktree path must not be some other directory."""
    name = launch.name
    base = f"program/{name}" if f"program/{name}" in lab.repo.heads else "HEAD"
    if launch.ledger_path.exists():  # an improvement program's branch has moved on: agents grew from its base
        with Ledger(launch.ledger_path) as ledger:
            base = (ledger.program(name) or {}).get("base_commit") or base
    trees = {w["path"].resolve(): w["branch"] for w in lab.worktrees()}
    for agent in launch.agents:
        path = launch.worktree(agent).resolve()
        for branch in (agent_branch(name, agent), agent_refs(name, agent)):  # the second: the older layout
            check_agent_branch(lab, base, branch, agent, path, trees)
        if path.exists() and path not in trees:
            raise OrgError(f"{path} exists but is not a git worktree of {lab.root}: move it away "
                           "and launch again")


def check_agent_branch(lab: Lab, base: str, branch: str, agent: str, path: Path, trees: dict):
    lab.take_in_work(path, branch)  # (no git outside the agent's box reads its own objects)
    broken = lab.branch_problem(branch)  # its agent's box wrote junk there
    if broken:
        raise OrgError(f"{broken}, and launch again")
    if branch in lab.repo.heads and not lab.repo.is_ancestor(base, branch):
        raise OrgError(f"branch {branch} exists with other history (it does not contain {base} at "
                       f"{lab.resolve(base)[:10]}): rename it (git branch -m {branch} old/{agent}) "
                       "or delete it, and launch again")
    elsewhere = [p for p, b in trees.items() if b == branch and p != path]
    if elsewhere:
        raise OrgError(f"branch {branch} is checked out at {elsewhere[0]}: switch that checkout to "
                       "another branch (an agent's branch lives in its own worktree)")


def finished_before(launch: ProgramSite) -> bool:
    """Every agent finished in an earlier launch and nothing is left to run."""
    return launch.ledger_path.exists() and all(
        ended_for_good(launch.control_state(a)) for a in launch.agents) and not runs_left(launch)


def ended_for_good(control: dict) -> bool:
    """Finished or gave up idle: launching again must not redo its work (a stopped, crashed
    or interrupted agent resumes)."""
    reason = control.get("reason") or ""
    return control.get("state") == "stopped" and reason.startswith(("finished", "idle"))


def relaunch_broken(launch: ProgramSite, refuse: bool):
    """A second launch of a running program: restart its dead or crashed panes if it has
    any (a safe recovery), else refuse (or, with --wait, say so and wait for it)."""
    grid = launch.grid
    broken = [p for p in grid.panes() if p["dead"] or launch.keeper(keeper_name(p["label"])).get("state") == "crashed"]
    if not broken:
        running = f"{launch.name} is already running (tmux session {grid.session_name})"
        if refuse:
            raise OrgError(f"{running}: `org attach {launch.name}` to watch it, `org stop {launch.name}` to stop it")
        return print(running)
    for pane in broken:
        orphan = launch.keeper(keeper_name(pane["label"])).get("pid")
        if ours(orphan) and not pane["taken"]:  # its keeper died, it did not: never run an agent twice
            send_signal(orphan, signal.SIGKILL)
        name = keeper_name(pane["label"])  # (not its "crashed": --wait would read it before the new keeper writes)
        write_atomically(launch.panes_dir / f"{name}.json", json.dumps({"name": name, "state": "waiting", "since": now()}))
        grid.server.cmd("respawn-pane", "-k", "-t", pane["id"])  # its first command, under a new keeper
    print(f"{launch.name} is already running; restarted its crashed panes: "
          + ", ".join(p["label"] for p in broken))


def keeper_name(label: str) -> str:
    return {"runner": RUNNER, "status": STATUS}.get(label, label)


def build(launch: ProgramSite, program_as_filed: Program, stagger: float, restarts: int,
          backend: str | None, ray: str | None = None) -> list[str]:
    """The lab, the worktrees and the grid; returns a line for each recovery it made. A
    failure while the grid is being built kills it: no half-built org stays behind."""
    notes, grid = [], launch.grid
    if grid.stale_socket():
        notes.append(f"removed a stale tmux socket (its server is gone): {grid.socket_path}")
    elif grid.session() is not None:
        notes.append(f"removed tmux session {grid.session_name}, half-built by a launch that was interrupted")
    grid.kill()
    if person_identity(launch.root):
        notes.append("git: no user.name/email configured; agents commit as themselves "
                     "(<agent>@nanolab.invalid), a person in a taken-over pane as 'human'")
    with contextlib.chdir(launch.root):
        lab = Lab.open(".")
        start(program_as_filed, lab, launch.path).close()
    try:
        for agent in launch.agents:
            notes += prepare_worktree(lab, launch, agent)
    finally:
        lab.close()
    backends = {a.name: a.backend for a in launch.program.org.agents}
    if any(b in gateway.BACKEND_PROVIDER for b in backends.values()):
        models = {a.name: a.model for a in launch.program.org.agents}
        gateway.prepare(launch.lab_dir, backends, dict(os.environ), models)  # keys to its file, tokens anew
    (launch.panes_dir / "stop").unlink(missing_ok=True)
    write_atomically(launch.panes_dir / "launch.json", json.dumps({"backend": backend, "ray": ray, "at": now()}))
    for name in [*launch.agents, RUNNER, STATUS]:  # not the last launch's "ended": serve would think it done
        write_atomically(launch.panes_dir / f"{name}.json", json.dumps({"name": name, "state": "waiting", "since": now()}))
    panes = [agent_pane(launch, agent, i * stagger, restarts) for i, agent in enumerate(launch.agents)]
    panes.append(keeper_pane(launch, STATUS, "status", "org status --watch", restarts,
                             "status", launch.path or launch.name, "--watch"))
    runner = keeper_pane(launch, RUNNER, "runner", "the runner: runs every experiment", restarts,
                         "serve", launch.path or launch.name)
    try:
        with environment_without_keys():  # the tmux server, and so every pane, starts from it
            grid.build(panes, runner, {TAKEOVER_KEY: key_command(launch, "takeover"),
                                       RELEASE_KEY: key_command(launch, "release")})
    except BaseException:
        grid.kill()
        raise
    return notes


@contextlib.contextmanager
def environment_without_keys():
    """This process's environment without credentials (and the keys file's name) for a while:
    the keys stay with `org launch`, and reach the gateway through its 0600 file only."""
    saved = {k: v for k, v in os.environ.items() if SECRET_NAME.search(k) or k == gateway.KEYS_FILE}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def prepare_worktree(lab: Lab, launch: ProgramSite, agent: str) -> list[str]:
    """The agent's worktree (made, or kept as a crash or `org stop` left it), with what a
    crash leaves behind cleaned up, and a takeover's pause lifted (its person is gone)."""
    notes, path = [], launch.worktree(agent)
    if path.exists():
        lock = lab.admin_dir(path) / "index.lock"  # checked: git below follows its pointers
        if os.path.lexists(lock):  # nothing of this program runs now, so no git holds it
            replace_file(lock, None)  # (a folder, if its box made one there)
            notes.append(f"removed a stale git lock left by a crash: {lock}")
        notes += mend_worktree(lab, path, agent_branch(launch.name, agent))
        dirty = git(path, "status", "--porcelain").splitlines()
        if dirty:
            notes.append(f"{agent}: kept the {len(dirty)} uncommitted change(s) in {path} from before")
    lab.add_worktree(launch.name, agent)
    control = Control(launch.lab_dir, agent)
    if (control.pause_reason() or "").startswith(TAKEN_OVER):
        control.resume()
        notes.append(f"{agent}: lifted the pause of a takeover from before (nobody holds its pane now)")
    return notes


def mend_worktree(lab: Lab, path: Path, branch: str) -> list[str]:
    """What an agent's box may leave broken in its worktree's git, mended (its files stay as they
    are): a HEAD naming no commit points at its branch again; an index git cannot read is made
    again from HEAD. Each mend says so. OrgError if its branch names no commit: nothing of it
    can be mended until that is."""
    notes, admin = [], lab.admin_dir(path)  # checked: git below follows its pointers
    empty_file(admin / "config.worktree")  # (its filters ran in our git, where the lab reads worktree configs)
    lab.take_in_work(path, branch)  # (no git outside the agent's box reads its own objects)
    problem = lab.branch_problem(branch)
    if problem:
        raise OrgError(problem)
    if lab.worktree_head(path, branch_owner(branch)) is None:  # the program's branch, another's, junk
        replace_file(admin / "HEAD", f"ref: refs/heads/{branch}\n")
        notes.append(f"{path}: its HEAD named none of its branches; it points at {branch} again")
    try:
        git(path, "rev-parse", "-q", "--verify", "HEAD^{commit}")
    except OrgError:
        replace_file(admin / "HEAD", f"ref: refs/heads/{branch}\n")
        notes.append(f"{path}: its HEAD named no commit; it points at {branch} again")
    try:
        if not plain_index(admin / "index"):
            raise OrgError("an index of a kind no box's git writes")
        git(path, "status", "--porcelain")
    except OrgError:
        replace_file(admin / "index", None)
        git(path, "reset", "-q")
        notes.append(f"{path}: git could not read its index; it was made again from HEAD")
    return notes


def plain_index(path: Path) -> bool:
    """Whether an index file is one an agent's git writes (version 2 or 3, every entry a file's,
    read as git reads it: each name's length from its flags, its checksum right), or missing. Not
    so: a sparse index (folder entries git expands: 10 KB of them named 4M files), a split one
    (`link`: it reads another file), version 4, junk."""
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK | os.O_NOFOLLOW)) as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        sign, version, count = struct.unpack_from(">4sII", data)
        at, end = 12, len(data) - 20
        for _ in range(count):  # 62 bytes (64 with v3's extended flags), the name, 1-8 NULs to 8 bytes
            mode, flags = struct.unpack_from(">I", data, at + 24)[0], struct.unpack_from(">H", data, at + 60)[0]
            named = at + (64 if flags & 0x4000 else 62)
            length = flags & 0xFFF if flags & 0xFFF < 0xFFF else data.index(b"\0", named) - named
            size = (named - at + length + 8) & ~7
            if mode >> 12 == 0o04 or b"\0" in data[named:named + length] or data[named + length:at + size].strip(b"\0"):
                return False  # (a folder's entry: a sparse index)
            at += size
        extensions = set()
        while at < end:
            name, size = struct.unpack_from(">4sI", data, at)
            extensions.add(name)
            at += 8 + size
    except (struct.error, ValueError):
        return False
    return sign == b"DIRC" and version in (2, 3) and len(data) <= MAX_INDEX_BYTES and at == end and \
        hashlib.sha1(data[:end]).digest() == data[end:] and not {b"sdir", b"link"} & extensions


def agent_pane(launch: ProgramSite, agent: str, delay: float, restarts: int) -> Pane:
    from org.agents.roles import agent_entry
    from org.agents.commands import LOW_WEIGHT_VAR
    from org.agents.sandbox import git_identity
    entry = agent_entry(launch.program, agent)
    control = launch.control_state(agent)
    env = {"NANOLAB_AGENT": agent, "NANOLAB_PROGRAM": launch.name, "NANOLAB_LAB": str(launch.root),
           "PYTHONUNBUFFERED": "1", "PATH": pane_path(), **git_identity(agent)}  # CLIs' commits too
    env[LOW_WEIGHT_VAR] = "1"  # what the harness does for it, at its boxes' cpu weight (org/agents/pacing.py)
    if entry.backend in gateway.BACKEND_PROVIDER:
        env["NANOLAB_GATEWAY"] = "1"  # its model calls go through the org's gateway, with its token
    hint = f"{entry.role} · {entry.backend} · C-b {TAKEOVER_KEY} takes over"
    if ended_for_good(control):  # finished before: show it, do not redo it
        argv = keeper_argv(launch, agent, 0, restarts, ended=shown(control["reason"])[:500])  # (tmux's command line)
    else:
        backend = ["--backend", entry.backend] if entry.backend == "scripted" else []
        argv = keeper_argv(launch, agent, delay, restarts) + org_argv(
            "agent", agent, "--program", launch.path or launch.name, *backend)
    return Pane(agent, argv, launch.worktree(agent), env, hint)


def keeper_pane(launch: ProgramSite, keeper: str, label: str, hint: str, restarts: int, *command) -> Pane:
    env = {"NANOLAB_PROGRAM": launch.name, "NANOLAB_LAB": str(launch.root), "PYTHONUNBUFFERED": "1",
           "PATH": pane_path()}
    return Pane(label, keeper_argv(launch, keeper, 0, restarts) + org_argv(*command), launch.root, env, hint)


def keeper_argv(launch: ProgramSite, name: str, delay: float, restarts: int, ended: str | None = None) -> list[str]:
    argv = [sys.executable, "-P", "-m", "org.panes", "keep", "--state", str(launch.panes_dir / f"{name}.json"),
            "--name", name.strip("_"), "--delay", f"{delay:g}", "--restarts", str(restarts)]
    return argv + (["--ended", ended] if ended is not None else ["--"])


def pane_path() -> str:
    """This Python's bin first, so `org` and `python` in a pane are ours."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def key_command(launch: ProgramSite, verb: str) -> str:
    """The shell command a key runs: `org takeover|release <the pane's agent>`, its last line
    shown in the tmux status line."""
    log = launch.panes_dir / "keys.log"
    org = shlex.join(org_argv(verb, "#{@agent}", "--program", launch.name))
    tmux = shlex.join([tmux_path(), "-L", launch.grid.socket])
    return (f"cd {shlex.quote(str(launch.root))} && {org} > {shlex.quote(str(log))} 2>&1; "
            f"{tmux} display-message \"$(tail -n 1 {shlex.quote(str(log))} | sed 's/#/##/g')\"")  # ## : no #(...) run


# ----------------------------------------------------------------------------------------
# is the program done? (`org launch --wait` and the runner both ask)


def program_done(launch: ProgramSite) -> bool:
    """Every agent has ended (or crashed for good) and no run is left to run."""
    states = [launch.keeper(a).get("state") for a in launch.agents]
    return all(s in ("ended", "crashed") for s in states) and not runs_left(launch)


def runs_left(launch: ProgramSite) -> bool:
    if not launch.started:
        return True
    with Ledger(launch.ledger_path) as ledger:
        if ledger.runs(launch.name, status="running"):
            return True
        if ledger.compute_seconds(launch.name) >= ledger.budget(launch.name)["total_compute_seconds"]:
            return False
        waiting = waiting_for_budget(ledger, launch.program)
        return any(r["experiment_id"] not in waiting for r in ledger.runs(launch.name, status="queued"))


def wait_until_done(launch: ProgramSite, poll: float = 2.0) -> int:
    """--wait: watch (doing nothing the org depends on) until the program is done."""
    print(f"waiting for {launch.name} to finish (Ctrl-C stops waiting, not the org)...", flush=True)
    t0, said = time.monotonic(), None
    try:
        while True:
            counts, line = progress(launch)
            if counts != said:  # (a line as a run starts or ends, not as compute ticks)
                minutes, seconds = divmod(int(time.monotonic() - t0), 60)
                print(f"  {minutes:02d}:{seconds:02d} {line}", flush=True)
                said = counts
            runner = launch.keeper(RUNNER).get("state")
            if runner == "ended" and program_done(launch):
                return print_report(launch)
            if runner == "crashed":
                print(f"the runner crashed; see its pane (org attach {launch.name}); `org launch` restarts it", file=sys.stderr)
                return 1
            if not launch.grid.running():
                print(f"{launch.name} was stopped before it was done; `org launch` resumes it", file=sys.stderr)
                return 1
            time.sleep(poll)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; {launch.name} runs on (org status {launch.name})")
        return 130


def progress(launch: ProgramSite) -> tuple[tuple, str]:
    """(the runs' counts, a line of them and of the compute spent): what --wait shows as it goes."""
    if not launch.started:
        return (), "not started yet"
    with Ledger(launch.ledger_path) as ledger:
        status = [r["status"] for r in ledger.runs(launch.name)]
        spent, budget = ledger.compute_seconds(launch.name), ledger.budget(launch.name)["total_compute_seconds"]
    counts = (sum(s in FINISHED for s in status), status.count("running"), len(status))
    runs = f"{counts[0]} of {counts[2]} runs done, {counts[1]} running" if status else "no run queued yet"
    return counts, f"{runs}; compute {spent:.0f} s of {budget:g} s"


def print_report(launch: ProgramSite) -> int:
    from org.report import run_report
    code = run_report(launch.ledger_path, launch.name, launch.root / "reports" / launch.name)
    if launch.grid.running():
        print(f"the panes stay up for reading: org attach {launch.name}; org stop {launch.name} closes them")
    return code


# ----------------------------------------------------------------------------------------
# shared with the org's other commands (status, takeover, stop, serve)


def git(cwd: Path, *args: str, env: dict | None = None, raw: bool = False) -> str | bytes:
    """git in an agent's worktree, bounded: its box may leave files, a HEAD or an index that make
    a status hash, list or expand for hours (sparse 1 GB files, a sparse index of 4M entries, a
    tree of 52 KB nesting 10^9 files that `reset` read at 500 MB/s). No filter or diff driver runs
    on what the agent wrote: the person's global config is not read (git-lfs's, say), and the
    lab's own filters are `cat`, as for every git of the harness's (Lab.harden). `raw`: its output
    as bytes, as it printed them (a file name a box chose: any bytes)."""
    base = {"GIT_CONFIG_GLOBAL": os.devnull, **(env or {})}
    listed = bounded_git(cwd, ["config", "--name-only", "--get-regexp", r"^filter\."], {**hardened_git_env(), **base})
    filters = sorted({key[len("filter."):key.rindex(".")] for key in listed.stdout.split()})  # (exit 1: none)
    out = bounded_git(cwd, blind_to_submodules(args), {**hardened_git_env(filters), **base}, raw)
    if out.returncode != 0:
        stderr = out.stderr.decode(errors="replace") if raw else out.stderr
        raise OrgError(f"git {' '.join(args[:2])} in {cwd} failed: {stderr.strip()[-300:]}")
    return out.stdout if raw else out.stdout.rstrip()


def blind_to_submodules(args) -> list[str]:
    """A status or diff told --ignore-submodules=all: a .gitmodules the agent commits may say
    `ignore = none` for its nested repository, which git reads over any config (diff.ignoreSubmodules
    is a default); only the command line is stronger. Else git looks inside, running its filters."""
    args, at = list(args), 0
    while at < len(args) and args[at].startswith("-"):  # git's own options: `-c key=value`
        at += 2 if args[at] == "-c" else 1
    if at < len(args) and args[at] in ("status", "diff"):
        args.insert(at + 1, "--ignore-submodules=all")
    return args


def bounded_git(cwd: Path, args: list[str], env: dict, raw: bool = False) -> subprocess.CompletedProcess:
    """git, GIT_SECONDS and GIT_MEMORY at most (its packs mapped a GB at a time to fit)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (GIT_MEMORY, GIT_MEMORY))
    text = {} if raw else {"text": True, "errors": "replace"}  # a file name a box chose: any bytes
    try:
        return subprocess.run(["git", "-c", "core.packedGitLimit=1g", *args], cwd=cwd, env=child_env(env),
                              capture_output=True, timeout=GIT_SECONDS, preexec_fn=limit, **text)
    except subprocess.TimeoutExpired:
        raise OrgError(f"git {' '.join(args[:2])} in {cwd} took over {GIT_SECONDS} s") from None


def attach(launch: ProgramSite):
    grid = launch.grid
    if not grid.running():
        raise OrgError(f"{launch.name} is not running; `org launch {launch.name}` starts it")
    if not sys.stdin.isatty():
        raise OrgError(f"attaching needs a terminal; from one: {shlex.join(grid.attach_argv())}")
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}  # from inside tmux too
    os.execvpe(grid.attach_argv()[0], grid.attach_argv(), env)


def person_identity(root: Path) -> dict:
    """The person's git identity from git config, or a plain stand-in (git identity is not
    configured on a fresh machine, and commits must still work)."""
    name = subprocess.run(["git", "config", "user.name"], cwd=root, capture_output=True, text=True).stdout.strip()
    email = subprocess.run(["git", "config", "user.email"], cwd=root, capture_output=True, text=True).stdout.strip()
    if name and email:
        return {}
    return {"GIT_AUTHOR_NAME": "human", "GIT_AUTHOR_EMAIL": "human@nanolab.invalid",
            "GIT_COMMITTER_NAME": "human", "GIT_COMMITTER_EMAIL": "human@nanolab.invalid"}


def ours(pid: int | None) -> bool:
    """Alive and an `org` process: a pid from an old keeper record may since belong to another."""
    try:
        return pid_alive(pid) and b"org.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def send_signal(pid: int, sig: int):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
