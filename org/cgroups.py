"""
The cgroups a box starts in (org/sandbox.py): what holds its processes, cores, CPU weight and
memory to their limits, and meters its CPU time. Each limit holds only where this machine lets
us make a group of that controller; process_limit(), core_limit(), cpu_share(), cpu_meter() and
memory_limit() say which do, in words (`org launch` prints them).

    groups = box_cgroups(limits)      # made now: the box's shell joins each before it execs bwrap
    cpu_seconds(proc)                 # the CPU time of everything the box ran

Each box gets a group of its own under nanolab/ in each hierarchy, with the limits set there, and
starts in a child of it ("box"): its cgroup namespace is rooted at that child, so a box that
mounts its cgroups sees only the child, and cannot raise the limits one level above it.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from org.sandbox import Limits

CGROUP_ROOTS: dict = {}  # {controller: Path | None}: where our boxes' cgroups go, found once
HIERARCHIES = {"pids": ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "cpuset": ("/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "cpu": ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "cpuacct": ("/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"),
               "memory": ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")}
PROBES = {"pids": ("pids.max",), "cpuset": ("cpuset.cpus",), "cpu": ("cpu.weight", "cpu.shares"),  # (v2, v1)
          "cpuacct": ("cpuacct.usage", "cpu.stat"),  # (v1, v2: cpu.stat's usage_usec)
          "memory": ("memory.max", "memory.limit_in_bytes")}
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


def inherit_cpuset(group: Path):
    """cgroup v1 starts a cpuset empty, and an empty one can hold no task: give it its parent's
    CPUs and memory nodes (v2 reads an empty one as its parent's already)."""
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
    wanted = {"pids": {"pids.max": str(limits.processes)}, "cpu": {}, "cpuacct": {}, "memory": {}}
    if limits.cores:
        wanted["cpuset"] = {"cpuset.cpus": ",".join(map(str, limits.cores))}
    groups: dict[Path, Path] = {}  # {hierarchy's nanolab/: the box's group there}
    for controller, settings in wanted.items():
        root = cgroup_root(controller)
        group = groups.get(root) or (new_cgroup(root) if root else None)
        if group is None:
            continue
        if controller == "cpu":
            settings = cpu_weight_setting(group, limits.cpu_weight)
        if controller == "memory":
            settings = memory_setting(group, limits.memory_bytes or machine_memory() // 2)
        try:
            inherit_cpuset(group)
            for name, value in settings.items():
                (group / name).write_text(value)
        except OSError:
            continue  # e.g. cores this machine no longer has: that limit is not enforced
        groups[root] = group
    return [inner for inner in map(inner_cgroup, groups.values()) if inner]


def memory_setting(group: Path, limit: int) -> dict:
    """v2's memory.max, with no swap beyond it; v1's memory.limit_in_bytes, and the same bound on
    memory and swap together where swap is accounted (set after it: memsw may not be below it).
    Past the limit the kernel reclaims what it can, then kills a process of the box, never one
    outside it."""
    if (group / "memory.max").exists():
        return {"memory.max": str(limit), **({"memory.swap.max": "0"} if (group / "memory.swap.max").exists() else {})}
    swap = {"memory.memsw.limit_in_bytes": str(limit)} if (group / "memory.memsw.limit_in_bytes").exists() else {}
    return {"memory.limit_in_bytes": str(limit), **swap}


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_seconds(proc: subprocess.Popen) -> float | None:
    """CPU seconds that everything in proc's box has used, all threads and processes together
    (its cgroup's: v1 cpuacct.usage in ns, v2 cpu.stat's usage_usec); None where the box has no
    such group (cpu_meter() says why) or it is gone."""
    group = getattr(proc, "cpu_group", None)
    if group is None:
        return None
    try:
        if (group / "cpuacct.usage").exists():
            return int((group / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6
    except (OSError, ValueError, KeyError):
        return None


def cpu_weight_setting(group: Path, weight: int) -> dict:
    """v2's cpu.weight (1-10000, 100 by default), or v1's cpu.shares to match (1024 by default,
    2 at least)."""
    if (group / "cpu.weight").exists():
        return {"cpu.weight": str(weight)}
    return {"cpu.shares": str(max(2, weight * 1024 // 100))}


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


def new_cgroup(root: Path) -> Path | None:
    """A new, empty cgroup under root. Empty ones of earlier boxes are removed on the way (a
    cgroup can be removed only once it is empty)."""
    for old in root.glob("box-*"):
        try:
            if time.time() - old.stat().st_mtime > 60:
                for group in sorted((p for p in old.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    group.rmdir()  # the deepest first (what the box made, then "box")
                old.rmdir()
        except OSError:
            pass  # still in use
    group = root / f"box-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
    except OSError:
        return None
    return group


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
        return f"a cpu cgroup per box, agents' at the lowest weight (under {cgroup_root('cpu')})"
    return ("none: no cpu cgroup can be made here (cgroupfs read-only, or no cpu controller delegated), so an "
            "agent's command competes with the runs for their cores")


def cpu_meter() -> str:
    """How the CPU time of agents' boxes is metered on this machine, in words."""
    if cgroup_root("cpuacct"):
        return f"a cpu accounting cgroup per box (under {cgroup_root('cpuacct')})"
    return ("none: no cpu accounting cgroup can be made here (cgroupfs read-only, or no cpuacct/cpu "
            "controller delegated), so the agents' own compute is not on record")


def memory_limit() -> str:
    """How a box's memory is bounded on this machine, in words."""
    if cgroup_root("memory"):
        return (f"a memory cgroup per box, at most half of this machine's memory by default, tmpfs and memfds "
                f"included (under {cgroup_root('memory')})")
    return ("none: no memory cgroup can be made here (cgroupfs read-only, or no memory controller delegated); "
            "every box's processes are still the first the kernel kills when memory runs out")
