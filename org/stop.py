"""
`org stop`: agents and runner stop at their next safe point (a signal after the timeout), the
tmux server closes, and the clean worktrees go (one with uncommitted work is kept, and said so).
Branches, ledger, mail and transcripts stay, so `org launch` again resumes.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

from org import OrgError, seconds_flag
from org.recovery import one_runner
from org.agents.control import Control
from org.cgroups import HIERARCHIES, cgroup_root, existing_pool, pools, sweep
from org.lab import Lab, agent_branch, branch_owner, child_env
from org.launch import RUNNER, STOP_SECONDS, git, mend_worktree, one_at_a_time, ours, send_signal
from org.ledger import Ledger
from org.mail import now, write_atomically
from org.takeover import release, thaw_agent
from org.workspace import ProgramSite, open_site


def add_stop_command(sub):
    p = sub.add_parser("stop", help="stop a program's agents and runner; keep branches, ledger, transcripts")
    p.add_argument("program")
    p.add_argument("--timeout", type=seconds_flag(0, 3600), default=STOP_SECONDS, help="seconds to wait for safe points")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("clean", help="remove a stopped program's worktrees and agent branches (the ledger and "
                       "the commits it names stay)")
    p.add_argument("program")
    p.set_defaults(func=cmd_clean)


def cmd_stop(args) -> int:
    launch = open_site(args.program)
    for line in stop(launch, args.timeout):
        print(line)
    return 0


def stop(launch: ProgramSite, timeout: float = STOP_SECONDS) -> list[str]:
    with one_at_a_time(launch):
        return stop_now(launch, timeout)


def stop_now(launch: ProgramSite, timeout: float) -> list[str]:
    """Agents and runner stop at a safe point (a signal after `timeout`), the tmux server
    closes, clean worktrees go; branches, ledger, mail and transcripts stay."""
    from org.runner import Runner
    grid, lines = launch.grid, []
    was_running = grid.running()
    write_atomically(launch.panes_dir / "stop", now())  # keepers restart nothing from here on
    for agent in launch.agents:
        thaw_agent(launch, agent)  # (frozen, a box would outlive its kill on cgroup v1)
        if (launch.lab_dir / "takeover" / f"{agent}.json").exists():
            try:
                release(launch, agent, "the org was stopped while you were taken over")
                lines.append(f"{agent} was taken over: the person's shell is closed; {agent} was told what they changed")
            except OrgError as e:  # (the stop goes on: what its worktree holds stays for the next launch)
                lines.append(f"{agent} was taken over: the person's shell is closed; what they changed could not be read: {e}")
        Control(launch.lab_dir, agent).stop("org stop")
    runner = launch.keeper(RUNNER).get("pid")
    stopping_it = ours(runner)  # (else it died before: a runner killed, or a stop killed after it killed it)
    if stopping_it:
        send_signal(runner, signal.SIGTERM)  # the runner kills its trainers; their runs go back to the queue
    left = wait_for_exit(launch, timeout)
    for pid in left:  # past the safe point's grace: an interrupt, then a kill
        send_signal(pid, signal.SIGINT)
    for pid in wait_for_exit(launch, 5.0):
        send_signal(pid, signal.SIGKILL)
    grid.kill()
    sweep_boxes(launch)
    if launch.ledger_path.exists():  # runs a killed runner left 'running' go back to the queue now
        with contextlib.closing(Lab.open(launch.root)) as lab, Ledger(launch.ledger_path) as ledger:
            try:
                with one_runner(lab.state_dir(launch.program.name), wait=5.0):  # (a person's `org run` may hold it)
                    Runner(lab, launch.program, launch.ledger_path, say=lambda text: None).recover(
                        ledger, why="was stopped by `org stop`" if stopping_it else "died before `org stop`",
                        just_now=stopping_it)  # (its runs ran until now; a trainer that wrote nothing till its end,
                    # charged to its last write, was charged nothing. One that died before ran until its last write)
            except OrgError as e:  # (that runner's; or a measurement the harness failed twice: the next runner recovers it)
                lines.append(f"{e}; its runs are recovered by the next runner")
    lines += remove_worktrees(launch)
    lines.insert(0, f"stopped {launch.name}" if was_running else f"{launch.name} was not running; cleaned up")
    if launch.ledger_path.exists():
        with Ledger(launch.ledger_path) as ledger:
            queued = len(ledger.runs(launch.name, status="queued"))
        lines.append(f"kept: branches agent/{launch.name}/*/work, the ledger ({queued} runs queued), mail and "
                     f"transcripts in {launch.lab_dir}; `org launch {launch.name}` resumes")
    return lines


def cmd_clean(args) -> int:
    for line in clean(open_site(args.program)):
        print(line)
    return 0


def clean(launch: ProgramSite) -> list[str]:
    """A stopped program's agent worktrees and branches go. Each branch's commit stays reachable
    under refs/nanolab/<program>/ (the ledger names those commits, and git would otherwise
    collect them); the program's branch, the ledger, mail and transcripts stay too."""
    name = launch.name
    with one_at_a_time(launch), contextlib.closing(Lab.open(launch.root)) as lab:
        alive = [n for n in (*launch.agents, RUNNER) if ours(launch.keeper(n).get("pid"))]
        if launch.grid.running() or alive:
            raise OrgError(f"{name} is running: `org stop {name}` first")
        agents = [a for a in launch.agents if launch.worktree(a).exists()]
        for agent in agents:
            mend_worktree(lab, launch.worktree(agent), agent_branch(name, agent))
        dirty = [launch.worktree(a) for a in agents if git(launch.worktree(a), "status", "--porcelain").strip()]
        if dirty:
            raise OrgError(f"{dirty[0]} has uncommitted changes: commit or discard them, then clean again")
        for agent in agents:
            lab.remove_worktree(name, agent)
        lab.prune_worktrees()
        checked_out = {w["branch"] for w in lab.worktrees()}  # e.g. by a worktree made by hand: kept
        branches, kept = agent_branches(lab, name, checked_out), []
        for branch, sha in list(branches.items()):  # the harness's now: no git outside a box reads an agent's folder
            try:
                lab.copy_in(branch, sha, branch_owner(branch), b"commit")
            except OrgError as e:  # a commit that cannot be taken in (its objects gone, or junk): the person decides
                kept.append(f"kept branch {branch}: {e}")
                del branches[branch]
        moves = "".join(f"update refs/nanolab/{name}/{branch} {sha}\ndelete refs/heads/{branch} {sha}\n"
                        for branch, sha in branches.items())  # (one git for all: an agent may have made thousands)
        moved = subprocess.run(["git", "update-ref", "--no-deref", "--stdin"], cwd=lab.root, input=moves, text=True,
                               capture_output=True, env=child_env(lab.repo.git.environment()))
        if moved.returncode:
            raise OrgError(f"git update-ref in {lab.root} failed: {moved.stderr.strip()[-300:]}")
    with contextlib.suppress(OSError):
        (launch.root / "worktrees" / name).rmdir()
    return [f"removed {len(agents)} worktree(s) and {len(branches)} branch(es) of {name}; their commits stay "
            f"under refs/nanolab/{name}/", *kept, f"kept: program/{name}, the ledger, mail and transcripts in {launch.lab_dir}"]


def agent_branches(lab: Lab, name: str, checked_out: set[str]) -> dict[str, str]:
    """{branch: sha} of the program's agents' branches, as git lists them (a ref file whose name
    or content git refuses, which its agent's box may write, is deleted: git refuses to, and a
    name such as `x^{/(.*)(.*)\\2\\1x}` handed to rev-parse searched commit messages for good;
    so is a symbolic one: `ref: refs/heads/main` there, deleted as a branch, deleted main)."""
    prefix = f"refs/heads/agent/{name}/"
    lines = lab.repo.git.for_each_ref("--format=%(refname) %(objectname) %(symref)", prefix).splitlines()
    listed = dict(line.split(" ")[:2] for line in lines if line.endswith(" "))  # (a symbolic one: a box's too)
    for head in lab.repo.heads:
        if head.path.startswith(prefix) and head.path not in listed:
            with contextlib.suppress(OSError):  # (in packed-refs: git's to mend)
                (Path(lab.repo.common_dir) / head.path).unlink()
    return {ref.removeprefix("refs/heads/"): sha for ref, sha in listed.items()
            if ref.removeprefix("refs/heads/") not in checked_out}


def sweep_boxes(launch: ProgramSite):
    """What a box whose maker has died holds is killed (cgroups.orphaned), and the empty groups of
    ended boxes go: in every hierarchy's nanolab/ and in this org's memory pools. An agent killed
    here as one of its commands' boxes was being made left bwrap's inner half waiting for good in
    its pool, where only the next box of that agent would have swept it."""
    org = existing_pool(pools(launch.root, launch.program, "slot-0")[:1])  # (the org's own group)
    folders = {cgroup_root(c) for c in HIERARCHIES} - {None} | {p for p in (org.iterdir() if org else ()) if p.is_dir()}
    for folder in folders:
        sweep(folder, "box-*")


def wait_for_exit(launch: ProgramSite, timeout: float, names: list[str] | None = None) -> list[int]:
    """Wait until no agent or runner process (or none of `names`) is alive; returns those still
    alive at the end."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [launch.keeper(n).get("pid") for n in (names if names is not None else [*launch.agents, RUNNER])]
        alive = [p for p in pids if ours(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def remove_worktrees(launch: ProgramSite) -> list[str]:
    """Remove each agent's worktree, or keep it (and say so) if it holds uncommitted work."""
    lines, removed = [], []
    lab = Lab.open(launch.root)
    try:
        for agent in launch.agents:
            path = launch.worktree(agent)
            if not path.exists():
                continue
            try:
                lines += mend_worktree(lab, path, agent_branch(launch.name, agent))  # what its box left broken
                dirty = git(path, "status", "--porcelain").splitlines()
                if dirty:
                    lines.append(f"kept {path}: {len(dirty)} uncommitted change(s); `org launch` resumes with them")
                    continue
                lab.remove_worktree(launch.name, agent)
            except OrgError as e:
                lines.append(f"kept {path}: {e}")
                continue
            removed.append(agent)
        lab.prune_worktrees()
    finally:
        lab.close()
    if removed:
        lines.append(f"removed the worktrees of {', '.join(removed)} (their branches stay)")
    return lines
