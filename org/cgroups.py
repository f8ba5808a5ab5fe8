"""
The cgroups a box starts in (org/sandbox.py): what holds its processes, cores, CPU weight and
memory to their limits, and meters its CPU time. Each limit holds only where this machine lets
us make a group of that controller; process_limit(), core_limit(), cpu_share(), cpu_meter() and
memory_limit() say which do, in words (`org launch` prints them).

    groups = box_cgroups(limits)      # made now: the box's shell joins each before it execs bwrap
    cpu_seconds(proc)                 # the CPU time of everything the box ran
    drop(groups)                      # once the box has ended and they are read (sandbox.end_box)

Each box gets a group of its own under nanolab/ in each hierarchy, with the limits set there, and
starts in a child of it ("box"): its cgroup namespace is rooted at that child, so a box that
mounts its cgroups sees only the child, and cannot raise the limits one level above it.

Memory is shared out, so that no box can take another's (`Limits.memory_pools`, from pools()):

    nanolab/                          the machine's memory less the harness's (HARNESS_MEMORY)
      org-<lab, program>/             runner.memory_gb, or all of nanolab/'s
        slot-<i>/box-*/box            a slot's runs, their measurement's evaluator and workers
        agent-<name>/box-*/box        an agent's commands and its CLI

A box caps only what it holds itself, and the kernel's OOM killer picks its victim by resident
memory: boxes that together held more than the machine (memfds, which no process shows) made it
kill another box's trainer. The shares add up to the org's, and the org's fits the machine, so a
share past its cap loses a process of its own (the largest there, not always the hoarder's):
nothing of the harness's, another agent's or another slot's. Two orgs on one machine each take
all of nanolab/ unless runner.memory_gb says less: between them, it is nanolab/'s cap that holds.
No box starts without its memory group, capped (box_cgroups raises).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from org import OrgError, pid_alive

if TYPE_CHECKING:
    from org.program import Program
    from org.sandbox import Limits

CGROUP_ROOTS: dict = {}  # {controller: Path | None}: where our boxes' cgroups go, found once
HIERARCHIES = {"pids": ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "cpuset": ("/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "cpu": ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "cpuacct": ("/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "memory": ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "freezer": ("/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")}
PROBES = {"pids": ("pids.max",), "cpuset": ("cpuset.cpus",), "cpu": ("cpu.weight", "cpu.shares"),  # (v2, v1)
          "cpuacct": ("cpuacct.usage", "cpu.stat"),  # (v1, v2: cpu.stat's usage_usec)
          "memory": ("memory.max", "memory.limit_in_bytes"), "freezer": ("freezer.state", "cgroup.freeze")}
V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids")  # what nanolab/'s children get on v2 (enable_below)
# the box's shell joins each cgroup named before "--", then becomes bwrap (the rest)
JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"'


def cgroup_root(controller: str) -> Path | None:
    """A folder we may make `controller`'s cgroups in (nanolab/ under the first hierarchy that has
    it and lets us write), or None."""
    if controller not in CGROUP_ROOTS:
        CGROUP_ROOTS[controller] = None
        for base in map(Path, HIERARCHIES[controller]):
            probe = base / "nanolab" / f"probe-{uuid.uuid4().hex[:8]}"
            try:
                probe.parent.mkdir(exist_ok=True)
                enable_below(probe.parent)
                inherit_cpuset(probe.parent)
                probe.mkdir()
                ok = any((probe / name).exists() for name in PROBES[controller])
                probe.rmdir()
            except OSError:
                continue
            if ok:  # resolved: v1 often mounts cpu,cpuacct once, behind two links, and a box needs one group there
                CGROUP_ROOTS[controller] = (base / "nanolab").resolve()
                break
    return CGROUP_ROOTS[controller]


def pids_root() -> Path | None:
    return cgroup_root("pids")


def enable_below(group: Path):
    """cgroup v2: a group's children have a controller's files (memory.max, pids.max, cpu.weight,
    cpuset.cpus) only where it enables that controller in its cgroup.subtree_control, and a new
    group enables none: on a machine of v2 alone nanolab/'s probe found none, and no box had a
    memory cap, a process limit, a CPU weight or its cores. Each its parent gives it, one at a time
    (one refused leaves the others; a container's root that holds processes refuses them all)."""
    control = group / "cgroup.subtree_control"
    with contextlib.suppress(OSError):
        for controller in set(V2_CONTROLLERS) & set((group / "cgroup.controllers").read_text().split()):
            with contextlib.suppress(OSError):
                control.write_text(f"+{controller}")


def inherit_cpuset(group: Path):
    """cgroup v1 starts a cpuset empty, and an empty one can hold no task: give it its parent's
    CPUs and memory nodes (v2 reads an empty one as its parent's already, and its root has none
    to read: a read there failed, and with it every controller of a v2 machine's nanolab/)."""
    if (group / "cgroup.controllers").exists():  # (v2)
        return
    for name in ("cpuset.cpus", "cpuset.mems"):
        mine, parents = group / name, group.parent / name
        if mine.exists() and not mine.read_text().strip() and parents.read_text().strip():
            mine.write_text(parents.read_text())


def box_cgroups(limits: Limits) -> list[Path]:
    """The new cgroups a box starts in: one per hierarchy that can enforce its limits (v1 has a
    hierarchy per controller, v2 one for all). Where a controller has none, that limit is not
    enforced (process_limit(), core_limit(), cpu_share() and memory_limit() say so). Every box
    gets a CPU weight, so that the runs' boxes and the agents' are siblings that share a core by
    their weights, and a memory limit, which counts what its tmpfs mounts and memfds hold too."""
    wanted = {"pids": {"pids.max": str(limits.processes)}, "cpu": {}, "cpuacct": {}, "memory": {}, "freezer": {}}
    if limits.cores:
        wanted["cpuset"] = {"cpuset.cpus": ",".join(map(str, limits.cores))}
    groups: dict[Path, Path] = {}  # {hierarchy's nanolab/: the box's group there}
    for controller, settings in wanted.items():
        root = cgroup_root(controller)
        group = groups.get(root) or (box_group(root, limits) if root else None)
        if controller == "memory" and root and not (group and capped(group, box_memory(limits))):
            unmake({*groups.values(), group} - {None})
            raise OrgError(f"no memory cgroup could be made and capped for a box under {root}: no box starts "
                           "without one (its share would be unbounded)")
        if group is None:
            continue
        if controller == "cpu":
            settings = cpu_weight_setting(group, limits.cpu_weight)
        try:
            inherit_cpuset(group)
            for name, value in settings.items():
                (group / name).write_text(value)
        except OSError:  # e.g. cores this machine no longer has: that limit is not enforced
            unmake({group} - set(groups.values()))
            continue
        groups[root] = group
    return [inner for inner in map(inner_cgroup, groups.values()) if inner]


def unmake(groups: set[Path]):
    """Groups box_cgroups made for a box that will not start in them."""
    for group in groups:
        with contextlib.suppress(OSError):
            group.rmdir()


# --- memory: shared out between the org's slots and agents -------------------------------------

HARNESS_MEMORY = 4  # a quarter of the machine's memory (1 GB at least) is never the boxes': the
                    # harness, tmux and the system's own


def box_memory(limits: Limits) -> int:
    """What one box may hold: its own limit (half the machine by default), within all boxes'."""
    return min(limits.memory_bytes or machine_memory() // 2, boxes_memory())


def boxes_memory() -> int:
    """What every box on this machine may hold together: nanolab/'s memory cap."""
    ram, page = machine_memory(), os.sysconf("SC_PAGE_SIZE")
    return (ram - max(ram // HARNESS_MEMORY, 1 << 30)) // page * page  # (the kernel keeps a limit in pages)


def pools(lab_root: str | Path, program: Program, share: str, slots: int | None = None) -> tuple[tuple[str, int], ...]:
    """The memory groups above a box of this org (a lab's program), outermost first, each with
    what it may hold: the org's (runner.memory_gb, or all the boxes may hold), then the share's:
    a slot's ("slot-<i>", one of `slots`: the program's by default) or an agent's
    ("agent-<name>"). Agents' boxes share half of the org's, split evenly (a quarter where every
    agent is scripted: they run no commands of their own), and the runs the rest, split evenly
    between the slots."""
    total = min(int(program.runner.memory_gb * 2**30) if program.runner.memory_gb else boxes_memory(), boxes_memory())
    agents = program.org.agents
    for_agents = total // 2 if any(a.backend != "scripted" for a in agents) else total // 4
    slots = slots or len(program.runner.gpus) or program.runner.slots
    each = (total - for_agents) // slots if share.startswith("slot-") else for_agents // max(1, len(agents))
    org = "org-" + hashlib.sha1(f"{Path(lab_root).resolve()}\0{program.name}".encode()).hexdigest()[:12]
    return (org, total), (share, each)


def box_group(root: Path, limits: Limits) -> Path | None:
    """A new group for a box in root's hierarchy, in its pools; None where none can be made.
    Another org's sweep may remove an idle pool (or org) between its making and the box's: then
    it is made again, and young, it stays."""
    for _ in range(3):
        pool = pool_group(root, limits)
        group = new_cgroup(pool) if pool else None
        if group:
            return group
    return None


def pool_group(root: Path, limits: Limits) -> Path | None:
    """The folder a box's group goes in: its innermost pool, made now and held to its cap (root
    itself for another hierarchy than memory's, or a box with no pools); None where a pool could
    not be made or capped."""
    if root != cgroup_root("memory"):
        return root
    cap_once(root, boxes_memory())
    sweep(root, "org-*")  # those of orgs gone (a test's)
    group = root
    for name, limit in limits.memory_pools:
        try:
            (group / name).mkdir(exist_ok=True)
        except OSError:
            return None
        group = group / name
        inherit_cpuset(group)
        if (group / "cgroup.subtree_control").exists():  # v2: one tree for all; boxes below need each controller
            enabled = (group.parent / "cgroup.subtree_control").read_text().split()
            write(group, {"cgroup.subtree_control": " ".join(f"+{c}" for c in enabled)})
            if name.startswith("agent-"):  # v2 weighs siblings: an agent's pool at its boxes' low weight
                write(group, cpu_weight_setting(group, max(limits.cpu_weight, pool_weight(group))))
        if not capped(group, limit):
            return None
    return group


def capped(group: Path, limit: int) -> bool:
    """Set group's memory limit, and whether it holds now: v1 refuses to lower a limit below what
    the group holds (EBUSY), and the old one stands."""
    write(group, memory_setting(group, limit))
    name = "memory.max" if (group / "memory.max").exists() else "memory.limit_in_bytes"
    try:
        value = (group / name).read_text().strip()
        return value != "max" and int(value) <= limit
    except (OSError, ValueError):
        return False


def write(group: Path, settings: dict):
    """Write settings in order, or in reverse where that fails (v1 keeps memsw at least the memory
    limit: raising both needs memsw first, lowering memory first)."""
    for order in (list(settings.items()), list(settings.items())[::-1]):
        try:
            for name, value in order:
                (group / name).write_text(value)
            return
        except OSError:
            continue


CAPPED: set = set()  # the nanolab/ roots this process has capped


def cap_once(root: Path, limit: int):
    if root not in CAPPED:
        write(root, memory_setting(root, limit))
        CAPPED.add(root)


def memory_setting(group: Path, limit: int) -> dict:
    """v2's memory.max, with no swap beyond it; v1's memory.limit_in_bytes, and the same bound on
    memory and swap together where swap is accounted (set after it: memsw may not be below it).
    Past the limit the kernel reclaims what it can, then kills a process of the box, never one
    outside it."""
    if (group / "memory.max").exists():
        return {"memory.max": str(limit), **({"memory.swap.max": "0"} if (group / "memory.swap.max").exists() else {})}
    swap = {"memory.memsw.limit_in_bytes": str(limit)} if (group / "memory.memsw.limit_in_bytes").exists() else {}
    return {"memory.limit_in_bytes": str(limit), **swap}


@functools.cache
def machine_memory() -> int:
    """The memory this machine gives the harness: its RAM, or less where the harness's own
    memory cgroup (a container's, or one above it) is capped below that. Read once: every box's
    start asks it a few times."""
    return min([os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), *own_memory_limits()])


def own_memory_limits(proc_cgroup: Path = Path("/proc/self/cgroup"), fs: Path = Path("/sys/fs/cgroup")) -> list[int]:
    """The memory limits of this process's cgroup and of each above it: v1's memory hierarchy
    ("4:memory:/path") or v2's one ("0::/path"); "max" and unreadable ones are no limit, and so
    are our own (nanolab/ and below): the evaluator runs in a slot's, and from its cap it lowered
    nanolab/'s, every box's, to what it could see (no worker box could be made then)."""
    limits = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return limits
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, name = fs / "memory", "memory.limit_in_bytes"
        elif controllers == "":
            base, name = fs, "memory.max"
        else:
            continue
        group = base / path.strip("/")
        for folder in [group, *group.parents]:
            if "nanolab" in folder.relative_to(base).parts:
                continue
            try:
                limits.append(int((folder / name).read_text()))
            except (OSError, ValueError):
                pass
            if folder == base:
                break
    return limits


def cpu_seconds(proc: subprocess.Popen) -> float | None:
    """CPU seconds that everything in proc's box has used, all threads and processes together
    (its cgroup's: v1 cpuacct.usage in ns, v2 cpu.stat's usage_usec); None where the box has no
    such group (cpu_meter() says why) or it is gone."""
    group = getattr(proc, "cpu_group", None)
    if hasattr(proc, "cpu_at_end"):
        return proc.cpu_at_end  # (its box has ended, its groups gone: read then, by end_box)
    if group is None:
        return None
    try:
        if (group / "cpuacct.usage").exists():
            return int((group / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def stopped(groups: list[Path]):
    """Nothing in these cgroups, or below them, runs for a while: every box's freezer group there
    frozen (what no signal undoes: a process of the box sent SIGCONT to its stopped neighbours);
    a process in none of ours gets SIGSTOP, again until no new one shows, SIGCONT at the end."""
    frozen, pids = [], set()
    try:
        for _ in range(16):
            found = members(groups) - pids
            if not found:
                break
            for group in {freezer_of(pid) for pid in found} - {None} - set(frozen):
                with contextlib.suppress(OSError):  # (else its processes are signalled, below)
                    freeze(group, True)
                    frozen.append(group)
            for pid in found:
                if freezer_of(pid) not in frozen:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
            pids |= found
        yield
    finally:
        thaw(frozen, pids)


def thaw(groups: list[Path], pids: set[int]):
    """Undo stopped(): also what an `org takeover` killed mid-freeze left (org release calls it)."""
    for group in groups:
        with contextlib.suppress(OSError):
            freeze(group, False)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def members(groups: list[Path]) -> set[int]:
    """The processes in groups and every group below them."""
    found = set()
    for group in groups:
        for folder, _, _ in os.walk(group):  # (one removed as it is walked, by another's sweep, held no one)
            with contextlib.suppress(OSError, ValueError):
                found |= {int(pid) for pid in Path(folder, "cgroup.procs").read_text().split()}
    return found


def freezer_of(pid: int) -> Path | None:
    """The freezer group of a box's process (v1 "N:freezer:/path", v2 "0::/path"), if it is one of ours."""
    root = cgroup_root("freezer")
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for _, controllers, path in (line.split(":", 2) for line in lines):
        if "freezer" in controllers.split(",") or (controllers == "" and root and (root / "cgroup.freeze").exists()):
            group = root.parent / path.strip("/") if root else None  # (root: <hierarchy>/nanolab)
            if group and group.is_relative_to(root) and group != root:
                return group
    return None


def freezer_group(groups: list[Path]) -> Path | None:
    """Of a box's groups (box_cgroups), the one that freezes it, if it has one."""
    root = cgroup_root("freezer")
    return next((g for g in groups if root and g.is_relative_to(root)
                 and ((g / "freezer.state").exists() or (g / "cgroup.freeze").exists())), None)


def freeze(group: Path, on: bool, wait: float = 5.0):
    """Freeze or thaw one group, and wait (a while) until the kernel says it is so."""
    if (group / "freezer.state").exists():
        (group / "freezer.state").write_text("FROZEN" if on else "THAWED")
        done = lambda: (group / "freezer.state").read_text().strip() == ("FROZEN" if on else "THAWED")
    else:
        (group / "cgroup.freeze").write_text("1" if on else "0")
        done = lambda: f"frozen {int(on)}" in (group / "cgroup.events").read_text()
    deadline = time.monotonic() + wait
    while not done() and time.monotonic() < deadline:
        time.sleep(0.001)


def thaw_left(pids: set[int]):
    """Thaw what a process killed inside stopped() left stopped of these processes' boxes (an
    `org takeover` killed mid-snapshot, an evaluator killed while it timed the base): a frozen
    process does not die even of SIGKILL until thawed (v1), and its memory stays in its pool."""
    thaw(list({freezer_of(pid) for pid in pids} - {None}), pids)


def agent_pool(lab_root: str | Path, program: Program, agent: str) -> Path | None:
    """The memory group every box of an agent's is in (its CLI's, its commands'), or None."""
    return existing_pool(pools(lab_root, program, f"agent-{agent}"))


def existing_pool(memory_pools: tuple) -> Path | None:
    """The innermost memory group of these pools (pools()), if it is there."""
    root = cgroup_root("memory")
    group = root.joinpath(*(name for name, _ in memory_pools)) if root and memory_pools else None
    return group if group and group.is_dir() else None


def cpu_weight_setting(group: Path, weight: int) -> dict:
    """v2's cpu.weight (1-10000, 100 by default), or v1's cpu.shares to match (1024 by default,
    2 at least)."""
    if (group / "cpu.weight").exists():
        return {"cpu.weight": str(weight)}
    return {"cpu.shares": str(max(2, weight * 1024 // 100))}


def oom_kills(groups: list[Path]) -> int:
    """How many processes the OOM killer took in these groups' memory one (v2's memory.events,
    v1's memory.oom_control), or 0."""
    memory = cgroup_root("memory")
    for group in (g for g in groups if memory and g.is_relative_to(memory)):
        for name in ("memory.events", "memory.oom_control"):
            with contextlib.suppress(OSError, ValueError):
                counts = dict(line.split() for line in (group / name).read_text().splitlines())
                return int(counts.get("oom_kill", 0))
    return 0


def pool_weight(group: Path) -> int:
    """The highest weight of the boxes a v2 agent pool holds (0 when none): a CLI's box holds it at
    the CLI's weight while the commands it sends through its port (boxes of their own, at 1) come
    and go, and an agent's later boxes at 1 bring it down once the CLI's is gone."""
    weights = []
    with contextlib.suppress(OSError):
        for child in (c for c in group.iterdir() if c.is_dir()):
            with contextlib.suppress(OSError, ValueError):
                weights.append(int((child / "cpu.weight").read_text()))
    return max(weights, default=0)


def inner_cgroup(group: Path) -> Path | None:
    """The group the box starts in: a child of the one holding its limits. Its cgroup namespace
    is rooted there, so what the box can ever mount shows the child: limits it could raise only
    below its parent's, which it cannot see."""
    inner = group / "box"
    try:
        inner.mkdir()
        inherit_cpuset(inner)
    except OSError:
        return None
    return inner


BOX_GROUP = re.compile(r"box-(\d+)-(\d+)-[0-9a-f]{12}")  # box-<its maker's pid namespace>-<its maker's pid>-<random>
ENDED: set[Path] = set()  # box groups this process dropped that were still busy (a process dying): swept later


def new_cgroup(root: Path) -> Path | None:
    """A new, empty cgroup under root, named by the process that makes it (the harness). Empty
    ones of earlier boxes are removed on the way."""
    sweep(root, "box-*")
    group = root / f"box-{pid_namespace()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
    except OSError:
        return None
    return group


def sweep(root: Path, pattern: str):
    """Remove the groups under root matching pattern that no box uses now, the deepest first (what
    a box made, then "box", then its group; a pool, then its org's). A cgroup can be removed
    only once empty, and only where removable. What a box whose maker has died still holds is
    killed first (orphaned): the next sweep removes its group."""
    for old in root.glob(pattern):
        for pid in members([old]) if orphaned(old) else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            for group in deepest_first(old):
                if removable(group):
                    group.rmdir()
                    ENDED.discard(group)
        except OSError:
            pass  # still in use


def orphaned(group: Path) -> bool:
    """A box's group whose maker (in our pid namespace) is gone: what it holds runs for no one,
    unmetered. bwrap's --die-with-parent does not reach it all: its inner half, made as the harness
    process was killed, waits forever for the outer half to map its user (an eventfd), before it arms
    that signal (an agent killed while one of its commands' boxes was being made: CI's orphans)."""
    return (maker := box_maker(group)) is not None and not pid_alive(maker)


def removable(group: Path) -> bool:
    """A box's group is its maker's while the maker lives: it drops the group once it has read
    the CPU time and OOM kills there (a sweep took one first, and a run was recorded without its
    CPU time). A dead maker's goes at once; any other (a pool, an older nanolab's, one whose maker
    is in another pid namespace) once a minute old: it may be one a box is about to join."""
    if (maker := box_maker(group)) is not None:
        return not pid_alive(maker) or not ENDED.isdisjoint((group, *group.parents))
    return time.time() - group.stat().st_mtime > 60


def box_maker(group: Path) -> int | None:
    """The pid of the process that made the box group `group` is (or is in), where that process is
    in our pid namespace: elsewhere the pid names another process here."""
    box = next((m for part in group.parts if (m := BOX_GROUP.fullmatch(part))), None)
    return int(box[2]) if box and int(box[1]) == pid_namespace() else None


def drop(groups: list[Path]):
    """Remove a box's groups (box_cgroups's, each in the group that holds its limits) once the box
    has ended and what they hold is read. One still busy is left to this process's next sweep."""
    for box in {inner.parent for inner in groups if BOX_GROUP.fullmatch(inner.parent.name)}:
        ENDED.add(box)
        with contextlib.suppress(OSError):
            for group in deepest_first(box):
                group.rmdir()
            ENDED.discard(box)


def deepest_first(group: Path) -> list[Path]:
    return [*sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), group]


@functools.cache
def pid_namespace() -> int:
    """Ours, by its inode: a pid is a process only in its own namespace."""
    return os.stat("/proc/self/ns/pid").st_ino


def process_limit() -> str:
    """How the boxes' process limit is enforced on this machine, in words."""
    from org.sandbox import Limits
    if pids_root():
        return f"at most {Limits.processes} tasks in a pids cgroup per box (under {pids_root()})"
    return "none: no pids cgroup can be made here (cgroupfs read-only, or no pids controller delegated)"


def core_limit() -> str:
    """How a box is kept to its slot's cores on this machine, in words."""
    if cgroup_root("cpuset"):
        return f"a cpuset cgroup per box (under {cgroup_root('cpuset')})"
    return ("an affinity only, which the code inside can widen: no cpuset cgroup can be made here "
            "(cgroupfs read-only, or no cpuset controller delegated)")


def cpu_share() -> str:
    """How agents' commands are kept from taking the runs' CPU time on this machine, in words."""
    if cgroup_root("cpu"):
        return f"a cpu cgroup per box, agents' at the lowest weight (under {cgroup_root('cpu')}), and SCHED_IDLE"
    return ("SCHED_IDLE alone: no cpu cgroup can be made here (cgroupfs read-only, or no cpu controller delegated), "
            "so an agent's command takes a core's gaps and 0.3% of a busy one, but a CLI's box competes with the "
            "runs for their cores (at SCHED_IDLE it would starve)")


def cpu_meter() -> str:
    """How the CPU time of agents' boxes is metered on this machine, in words."""
    if cgroup_root("cpuacct"):
        return f"a cpu accounting cgroup per box (under {cgroup_root('cpuacct')})"
    return ("none: no cpu accounting cgroup can be made here (cgroupfs read-only, or no cpuacct/cpu "
            "controller delegated), so the agents' own compute is not on record")


def memory_limit(program: Program | None = None) -> str:
    """How the boxes' memory is bounded on this machine (and shared out in program's org), in words."""
    if not cgroup_root("memory"):
        return ("none: no memory cgroup can be made here (cgroupfs read-only, or no memory controller delegated); "
                "every box's processes are still the first the kernel kills when memory runs out")
    shares = ""
    if program:
        (_, org), (_, slot) = pools("", program, "slot-0")
        agent = pools("", program, "agent-")[1][1]
        shares = f": this org's {gb(org)} of them, {gb(slot)} a slot's runs and {gb(agent)} an agent's commands and CLI"
    return (f"a memory cgroup per box, tmpfs and memfds included (under {cgroup_root('memory')}); all boxes "
            f"together hold {gb(boxes_memory())} of this machine's {gb(machine_memory())}{shares}")


def gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"
