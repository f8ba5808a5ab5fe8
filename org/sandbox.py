"""
The sandbox: agent-written code runs in Linux namespaces made by bubblewrap (`bwrap`, the
Debian package bubblewrap; what Claude Code and Codex use underneath). Every command an agent
runs, every trainer run and every model worker of a measurement executes agent code, so each
goes through here:

    box = Sandbox(writable=[worktree], hidden=[lab / ".lab", lab / "worktrees"])
    proc = box.popen(["bash", "-c", cmd], cwd=worktree, env=env, stdout=...)
    proc.inner_pid       # the command itself (PID 1 of its namespace), for a polite SIGTERM

Inside a box:
- the whole filesystem is read-only; `hidden` trees are replaced by empty directories (absent),
  and so is every other lab's state on this machine (org/unseen.py: other_labs),
  `readonly` ones are bound back read-only (a snapshot inside a hidden tree), then `writable`
  ones read-write (an agent's objects inside a read-only .git), then `frozen` ones read-only again
  (protected files inside a worktree); /tmp and /dev/shm are private, empty and capped, the rest
  of /dev read-only;
- no host unix socket but its own (connect() works through a read-only mount: docker's, the
  org's tmux server, whose run-shell runs commands outside every box): runtime folders are empty
  and each other socket bound at its start is /dev/null, but those in its writable trees and in
  `sockets` (a CLI's port: its way to the org and the gateway). A box with `unix_sockets` off
  (a trainer run, a model worker, an agent's command) cannot make one at all (org/seccomp.py), so
  a socket bound after it started is out of its reach too;
- it makes only regular files and folders (and, where it may, sockets): no FIFO and no link,
  which the harness's git would open and wait on, or read without end (org/seccomp.py);
- its own user, PID, IPC, UTS, cgroup and network namespaces: no other process is visible or
  killable, no network at all (only its own loopback) unless `net`;
- no capabilities, even where the harness runs as root (a box that kept root's remounted /
  read-write and unmounted what hides the lab), and no user namespace of its own to get them
  back in (bwrap 0.8+; a CLI's own sandbox stays off: org/agents/clis.py). The limits
  below sit on a cgroup one level above the box's cgroup-namespace root, so even a box that
  mounts its cgroups in a namespace of its own cannot raise them;
- the environment is exactly `env` (nothing inherited); a new session (no typing into the
  terminal it came from); it dies with the process that started it (even one that died while
  bwrap was still making the box: the command's first step checks, ALIVE_CHECK), and when the
  command (PID 1 there) exits, every process it started dies with it;
- disk: its writable trees may grow by `Limits.disk_bytes` and `disk_files` at most, and not at
  all into the last `disk_reserve` of the disk (org/diskwatch.py: a thread watches, and kills it);
- rlimits, inherited through exec: CPU seconds, file size, open files, address space; and an
  OOM score of 1000: when the machine runs out of memory, a box's processes die first (its
  /proc is read-only: it cannot lower it);
- at most `Limits.memory_bytes` of memory (its tmpfs mounts and memfds included), in a memory
  cgroup of its own where one can be made. `memory_limit()` says whether it holds;
- a GPU box (`gpu`) gets only the GPUs its CUDA_VISIBLE_DEVICES names: their /dev/nvidiaN and
  the driver's shared files, no other GPU's (`hostfiles.gpu_devices`);
- at most `Limits.processes` processes and threads, in a pids cgroup of its own where this
  machine lets us make one (cgroup v1's pids hierarchy, or v2 with the pids controller
  delegated to us). Elsewhere there is no process limit: RLIMIT_NPROC counts every process of
  the harness's user at bwrap's first fork (and never binds root), so it cannot stand in.
  `process_limit()` says which holds;
- only `Limits.cores`, when given (a runner's slot), in a cpuset cgroup of its own where one can
  be made: an affinity alone is advice, which the code inside widens with one
  sched_setaffinity call and then runs on the other slots' cores. `core_limit()` says which holds;
- a CPU weight (`Limits.cpu_weight`), in a cpu cgroup of its own: an agent's command box has
  the lowest, so what it spins on a run's core takes almost nothing from the run (at a run's
  weight, half: time a seconds budget counts, or a baseline's slowness that hides compute); a
  CLI's box a little more (CLI_CPU_WEIGHT, org/agents/clis.py). `cpu_share()` says if it holds.
  A weight leaves a run's threads that wake the core taken (a 2-thread run 7-27% slower beside
  a weight-1 command), so agents' command boxes run at SCHED_IDLE too (`Limits.idle`), which they
  cannot leave; a CLI's box where a cpu cgroup weighs it (else at nice 10: SCHED_IDLE would starve it);
- metered: `cpu_seconds(proc)` is the CPU time of everything the box ran, from a cpuacct (v1)
  or cpu (v2) cgroup of its own, which nothing inside can leave. An agent's own box runs what
  it likes outside every run's budget (training a model to commit, say), so the harness puts
  what each agent's box used on record. `cpu_meter()` says whether it holds.

`check()` says in one line why a box cannot be made here (bwrap missing or failing), so a
launch refuses before it starts anything.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from org import OrgError, empty_file, shown
from org.cgroups import JOIN, box_cgroups, cgroup_root, cpu_seconds, drop, members
from org.diskwatch import watch
from org import hostfiles, python_text, sourceless
from org.unseen import code_private, home_credentials, lab_private, other_labs, source_files
from org.seccomp import ABIS, box_filter

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"


class SandboxError(OrgError):
    """No box: bubblewrap missing or failing, or what a box must hold cannot be made (one line why)."""


AGENT_DISK_RESERVE = 8 << 30  # free disk an agent's box may not write into (a run's: Limits.disk_reserve)
# a model worker's largest file: its log, which no disk watch sees (the harness opens it, in the
# run's folder; org/remote.py cuts it to its tail after), or one of its kernel cache's (a few MB)
WORKER_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int | None = None        # RLIMIT_CPU, over all the box's threads together
    file_bytes: int = 8 << 30             # RLIMIT_FSIZE: no single file larger (a checkpoint fits)
    open_files: int = 4096                # RLIMIT_NOFILE
    address_bytes: int | None = None      # RLIMIT_AS (None: what the machine allows; CUDA needs that)
    tmp_bytes: int = 1 << 30              # the private /tmp (a tmpfs: RAM)
    shm_bytes: int = 256 << 20            # its /dev/shm (a tmpfs: RAM); the rest of /dev is read-only
    memory_bytes: int | None = None       # memory cgroup: RAM, tmpfs and memfds together (None: half the machine's)
    memory_pools: tuple = ()              # ((group, bytes), ...): the groups above its own, outermost first, and
                                          # what each holds with every box in it (org/cgroups.py: pools())
    disk_bytes: int = 16 << 30            # what its writable trees may grow by (org/diskwatch.py)
    disk_files: int = 100_000             # files and folders it may add there
    disk_reserve: int = 1 << 30           # free disk it may not write into: the harness's
    disk_total: int | None = None         # what its writable trees may hold in all (an agent's work)
    processes: int = 512                  # processes and threads in the box, all together
    cores: tuple[int, ...] | None = None  # the only CPUs it may run on (None: any)
    cpu_weight: int = 100                 # its CPU time against other boxes' on a busy core (cgroup v2's
                                          # scale: 1-10000, 100 the default); agents' command boxes 1
    idle: bool = False                    # SCHED_IDLE for good: any thread that wakes takes its core at once
    nice: int = 0                         # a nice value it cannot lower (a CLI's box with no cpu cgroup: 10)


class Sandbox:
    def __init__(self, writable=(), readonly=(), hidden=(), net: bool = False, gpu: bool = False,
                 limits: Limits | None = None, frozen=(), sockets=(), unix_sockets: bool = True,
                 sourceless_stdlib: bool = False, env: dict | None = None, stdlib_modules=None):
        self.writable = [Path(p) for p in writable]
        self.sockets = [Path(p) for p in sockets]  # read-only, and the unix sockets there reachable
        self.readonly = [Path(p) for p in readonly]
        # (a link's target: bwrap cannot mount over an absolute link, ~/.bashrc -> ~/dotfiles/bashrc)
        self.hidden = [Path(p).resolve() if Path(p).is_symlink() else Path(p) for p in hidden]
        self.frozen = [Path(p) for p in frozen]  # read-only although inside a writable tree
        self.net, self.gpu, self.limits = net, gpu, limits or Limits()
        self.unix_sockets = unix_sockets  # False: no socket(AF_UNIX) in the box (org/seccomp.py)
        self.sourceless_stdlib = sourceless_stdlib  # the stdlib as bytecode only (org/sourceless.py), of
        self.stdlib_modules = None if stdlib_modules is None else list(stdlib_modules)  # these modules alone (runs_tree)
        self.env = dict(env or {})  # variables the box sets over its command's own

    def spec(self) -> dict:
        """The box as plain data, to make the same box elsewhere (a cluster's job: org/cluster.py)."""
        return {"writable": [str(p) for p in self.writable], "readonly": [str(p) for p in self.readonly],
                "hidden": [str(p) for p in self.hidden], "frozen": [str(p) for p in self.frozen],
                "net": self.net, "gpu": self.gpu, "limits": asdict(self.limits), "sockets": [str(p) for p in self.sockets],
                "unix_sockets": self.unix_sockets, "sourceless_stdlib": self.sourceless_stdlib, "env": self.env,
                "stdlib_modules": self.stdlib_modules}

    @classmethod
    def from_spec(cls, spec: dict) -> "Sandbox":
        limits = {**spec["limits"], "cores": tuple(spec["limits"]["cores"] or ()) or None,
                  "memory_pools": tuple(map(tuple, spec["limits"].get("memory_pools", ())))}
        return cls(spec["writable"], spec["readonly"], spec["hidden"], net=spec["net"], gpu=spec["gpu"], limits=Limits(**limits),
                   frozen=spec["frozen"], sockets=spec.get("sockets", ()), unix_sockets=spec.get("unix_sockets", True),
                   sourceless_stdlib=spec.get("sourceless_stdlib", False), env=spec.get("env"), stdlib_modules=spec.get("stdlib_modules"))

    def with_extra(self, writable=(), readonly=(), frozen=(), sockets=(), **limits) -> "Sandbox":
        """This box with more trees bound in, and some of its limits changed. A box given `sockets`
        makes unix sockets (to connect to them): the host's it sees are masked as it starts."""
        return Sandbox(self.writable + [Path(p) for p in writable], self.readonly + [Path(p) for p in readonly],
                       self.hidden, net=self.net, gpu=self.gpu, limits=replace(self.limits, **limits),
                       frozen=self.frozen + [Path(p) for p in frozen],
                       sockets=self.sockets + [Path(p) for p in sockets], unix_sockets=self.unix_sockets or bool(sockets),
                       sourceless_stdlib=self.sourceless_stdlib, env=self.env, stdlib_modules=self.stdlib_modules)

    def wrap(self, argv: list[str], cwd: str | Path, env: dict, seccomp_fd: int | None = None) -> list[str]:
        """bwrap's command line running argv in the box, in cwd, with exactly env (and the seccomp
        filter bwrap reads from seccomp_fd, which command() opens)."""
        env = {**env, **self.env}
        # no capabilities, and no user namespace of its own to get them back in: as root, a box
        # that kept them remounted / read-write, unmounted what hides the lab, and rewrote the
        # limits of its own cgroups
        box = [bwrap(), "--die-with-parent", "--new-session", "--as-pid-1", "--unshare-all", "--cap-drop", "ALL",
               *no_nested_userns()]
        box += ["--share-net"] if self.net else []
        box += ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
        # bwrap's /dev is a tmpfs of its own, of half the machine's RAM: a box that filled it held
        # memory no process of its own shows, so the kernel's OOM killer took the harness's
        try:  # (a run's, a pystdlib worker's, a checking one's: the stdlib, site-packages and any Python text as bytecode or absent)
            bytecode_only, emptied = python_text.binds(self.stdlib_modules, self.gpu) if self.sourceless_stdlib else ([], [])
        except Exception as e:  # (a cache it cannot write, a package's metadata: no box, one line why)
            raise SandboxError(f"the standard library and site-packages without their source (org/sourceless.py) cannot "
                               f"be made ({' '.join(shown(e).splitlines())}): a run's box would read text it is not handed") from None
        box += ["--ro-bind", "/", "/", *bytecode_only, "--dev", "/dev", *hostfiles.own_devices(),  # (org/hostfiles.py)
                "--proc", "/proc", *hostfiles.kernel_settings_read_only(),
                "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp",
                "--size", str(self.limits.shm_bytes), "--tmpfs", "/dev/shm"]
        if self.gpu:
            devices, env["CUDA_VISIBLE_DEVICES"] = hostfiles.gpu_devices(env.get("CUDA_VISIBLE_DEVICES"))
            box += hostfiles.own_devices(devices, [Path("/dev") / d.relative_to(hostfiles.DEVICES) for d in devices])
        runtime = runtime_dirs()
        used = used_within(runtime, env)
        here = [p.resolve() if p.is_symlink() else p for p in home_credentials()]  # (as __init__ does)
        unseen = list(dict.fromkeys(self.hidden + other_labs() + here + [hostfiles.root()]))
        if self.sourceless_stdlib:  # (a spec made on another machine hides its other Pythons: this one's too, not its own)
            unseen = list(dict.fromkeys(unseen + source_files("pystdlib")))
            own = [sourceless.stdlib_dir(), *sourceless.site_dirs()]
            unseen = [p for p in unseen if not any(o.is_relative_to(p) or p.is_relative_to(o) for o in own)]
        hidden = sorted({p for p in unseen if p.is_dir()} | set(runtime), key=lambda p: len(p.parts))  # outer first
        back = self.readonly + self.sockets + used  # (read-only, over what is hidden)
        within = [p for p in unseen if any(p != tree and p.is_relative_to(tree) for tree in back)]  # hidden after
        for path in hidden:  # mounts apply in order: hide first, then expose what is needed
            box += hiding(path) if path not in within else []
        for path in unseen:  # (its files: its folders are in `hidden`)
            box += hiding(path) if not path.is_dir() and path not in within else []
        link = next(filter(None, (through_link(p, self.writable) for p in self.readonly + self.sockets + self.frozen)), None)
        if link:  # bwrap's mounts follow links: a bind meant for the tree's file lands where one points
            raise SandboxError(f"no box is made: {link} is a link, in a tree the box's owner writes, and a box "
                               f"binds nothing through one; remove it (`rm {link}`)")
        # (a writable tree may lie inside a read-only one: .git/agent-objects/...); what the box runs, back
        for path in back:
            if path.exists():
                box += ["--ro-bind", str(path), str(path)]
        for path in within:  # (the other agents' objects in the .git bound back: hidden once it is)
            box += hiding(path)
        for path in self.writable:
            box += ["--bind", str(path), str(path)]
        for path in self.frozen:
            if path.exists():
                box += ["--ro-bind", str(path), str(path)]
        # a box whose filter forbids unix sockets needs no masks: nor can it lose the race with a
        # host socket that goes away as bwrap binds over it (its start then failed)
        for path in self.host_sockets(hidden + emptied, used) if self.unix_sockets or seccomp_fd is None else []:
            box += ["--ro-bind", "/dev/null", str(path)]
        # once all is bound, nothing new is written there (/proc: a mode set there was every procfs's); none a folder hidden after covers
        for path in [*(e for e in emptied if not any(e.is_relative_to(h) for h in hidden)), *hidden, Path("/dev"), Path("/proc")]:
            box += ["--remount-ro", str(path)]
        box += ["--clearenv"]
        for key, value in env.items():
            box += ["--setenv", key, str(value)]
        return box + ["--chdir", str(cwd), "--", *argv]

    def host_sockets(self, emptied: list[Path], brought_back: list[Path]) -> list[Path]:
        """The host's unix sockets the box would see: not those of its own (its writable trees and
        its `sockets`), nor those in what it sees empty (/tmp, `emptied`) that no bind brings back."""
        own = resolved(self.writable + self.sockets)
        empty, back = resolved([Path("/tmp"), *emptied]), resolved(self.readonly + self.frozen + brought_back)
        return [s for s in bound_sockets() if not inside(s, own) and (inside(s, back) or not inside(s, empty))]

    def command(self, argv: list[str], cwd, env: dict, info_fd: int | None = None,
                groups: list[Path] | None = None) -> list[str]:
        """wrap()'s command line, started inside cgroups of the box's own (made now, unless given):
        bwrap starts in them, so everything in the box counts against its pids.max, keeps to its
        cores and is metered."""
        seccomp = box_filter(self.unix_sockets)
        if seccomp is None:
            raise SandboxError(no_filter())
        fd = 8 if info_fd == 9 else 9  # the shell opens the filter there, for bwrap to read
        wrapped = self.wrap(argv, cwd, env, seccomp_fd=fd)
        if info_fd is not None:
            wrapped[1:1] = ["--info-fd", str(info_fd)]
        groups = box_cgroups(self.limits) if groups is None else groups
        return ["/bin/sh", "-c", f'exec {fd}< "$1" || exit 126; shift; ' + JOIN, "nanolab-box", str(seccomp),
                *(str(g / "cgroup.procs") for g in groups), "--", *wrapped]

    def popen(self, argv: list[str], cwd, env: dict, preexec_fn=None, **kwargs) -> subprocess.Popen:
        """Start argv in the box. The Popen is bwrap's (kill it and the box goes); .inner_pid is
        the command's own pid, the one to send a SIGTERM it can catch; cpu_seconds(it) is the CPU
        time of everything the box has run so far. Made again where bwrap failed to: a host socket
        it masks (host_sockets) went away before bwrap's bind ("Can't mkdir parents ...")."""
        for attempt in range(1, START_TRIES + 1):
            proc = self.start_once(argv, cwd, env, preexec_fn, kwargs)
            if proc.began or attempt == START_TRIES:
                return proc
            proc.kill()  # (bwrap: ended already, or ending, the pipe's last holder)
            proc.wait()
            end_box(proc)
            for pipe in filter(None, (proc.stdin, proc.stdout, proc.stderr)):
                pipe.close()
            time.sleep(0.2 * attempt)

    def start_once(self, argv: list[str], cwd, env: dict, preexec_fn, kwargs: dict) -> subprocess.Popen:
        read, write = os.pipe()
        alive, held = box_pipe()  # (the harness holds its end while it lives)
        begins, begun = box_pipe(box_writes=True)

        def before_exec():
            self.set_limits()
            if preexec_fn:
                preexec_fn()
        groups, wrapped = [], []
        try:
            groups = box_cgroups(self.limits)
            wrapped = self.command(["bash", "-c", ALIVE_CHECK.format(fd=alive, began=begins), "nanolab-box", *argv],
                                   cwd, env, info_fd=write, groups=groups)
            proc = subprocess.Popen(wrapped, pass_fds=(write, alive, begins), preexec_fn=before_exec, **kwargs)
        except BaseException:  # (no box: a link in a writable tree, say; its groups, device copies and pipes go now)
            drop(groups)
            hostfiles.forget(wrapped)
            for fd in (read, held, begun):
                os.close(fd)
            raise
        finally:
            for fd in (write, alive, begins):
                os.close(fd)
        for fd in (held, begun):  # (begun: open while the box lives, as a write to a closed pipe would kill it)
            weakref.finalize(proc, os.close, fd)
        with os.fdopen(read, "rb") as info:  # bwrap writes it once the namespaces exist
            try:
                proc.inner_pid = json.loads(info.read().decode() or "{}").get("child-pid", proc.pid)
            except ValueError:
                proc.inner_pid = proc.pid
        metered = cgroup_root("cpuacct")  # the box's group in that hierarchy holds its CPU time
        proc.cpu_group = next((g for g in groups if metered and g.is_relative_to(metered)), None)
        proc.box_groups = groups
        watch(proc, self.writable, self.limits)  # proc.stopped: why the harness killed it, if it did
        proc.began = began(begun)
        return proc

    def set_limits(self):
        lim = self.limits
        for which, value in ((resource.RLIMIT_CPU, lim.cpu_seconds), (resource.RLIMIT_FSIZE, lim.file_bytes),
                             (resource.RLIMIT_NOFILE, lim.open_files), (resource.RLIMIT_AS, lim.address_bytes)):
            if value is not None:
                hard = resource.getrlimit(which)[1]
                value = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(which, (value, value))
        if lim.idle or lim.nice:  # for good (sched(7): with RLIMIT_NICE and RLIMIT_RTPRIO 0 a thread may not
            for which in (resource.RLIMIT_NICE, resource.RLIMIT_RTPRIO):  # leave SCHED_IDLE nor lower its nice,
                resource.setrlimit(which, (0, 0))  # nor raise them: that needs CAP_SYS_RESOURCE, which no box has)
            os.setpriority(os.PRIO_PROCESS, 0, lim.nice)
            if lim.idle:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        if lim.cores:  # where no cpuset can be made, at least the box starts on its cores
            os.sched_setaffinity(0, lim.cores)
        # the first the kernel kills when memory runs out, before any process of the harness (no box
        # lowers it again: its /proc is read-only; a /proc we may not write: the box starts all the same)
        with contextlib.suppress(OSError):
            Path("/proc/self/oom_score_adj").write_text("1000")


def dies_with(parent: int):
    """The function to run in a child before exec: SIGKILL it when the thread that started it
    ends, however it ends (bwrap arms its own --die-with-parent only once its setup is done, and
    ALIVE_CHECK covers the gap). A parent that died between the fork and the prctl never sends
    the signal: the child sees another parent, and ends there."""
    import ctypes
    PR_SET_PDEATHSIG = 1

    def arm():
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
    return arm


def end_box(proc: subprocess.Popen, tries: int = 100):
    """Kill what is left of a box whose bwrap has ended: every process in its cgroups, which none
    can leave. bwrap killed while it was still making the box (the OOM killer, a timeout) left its
    inner half running on: it finished the box and ran the command, a trainer that wrote its
    result after the runner had read the run as dead (CI saw one counted `completed`)."""
    hostfiles.forget(proc.args if isinstance(proc.args, list) else [])
    groups = getattr(proc, "box_groups", None) or []
    for _ in range(tries if groups else 0):
        pids = members(groups[:1])  # (and those of any group it made below)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    if groups:
        proc.cpu_at_end = cpu_seconds(proc)  # (what its groups held, read before they go)
        drop(groups)

# The box's command starts here: when the process that started the box died while bwrap was still
# making it (its mounts take a while), bwrap's own --die-with-parent was armed too late and the box
# ran on, its parent gone, its command never timed out nor metered (CI saw an agent's box outlive
# the agent). By the time this runs every such signal is armed, so a parent alive now is one whose
# death will end the box; a dead one has closed the pipe's other end, which reads as input here.
# Then it tells the harness that the box was made (`began`), or runs nothing: a box made again must not run it twice.
ALIVE_CHECK = 'if read -r -t 0 -u {fd}; then exit 125; fi; exec {fd}<&-; echo >&{began} || exit 125; exec {began}>&-; exec "$@"'
START_TRIES, BEGIN_WAIT = 5, 30.0


def began(begun: int) -> bool:
    """Whether a box's command began (ALIVE_CHECK's line). The pipe's end without one: bwrap failed to make
    the box, and ended. No word in BEGIN_WAIT seconds (a box made slowly at idle priority): taken as begun."""
    poll = select.poll()  # (not select(): a harness with many files open has descriptors past 1024)
    poll.register(begun, select.POLLIN)
    return not poll.poll(BEGIN_WAIT * 1000) or os.read(begun, 1) == b"\n"


def box_pipe(box_writes: bool = False) -> tuple[int, int]:
    """(the box's end of a pipe, the harness's), the box's above its shell's own (Sandbox.command: 8, 9)."""
    read, write = os.pipe()
    box, harness = (write, read) if box_writes else (read, write)
    try:
        return fcntl.fcntl(box, fcntl.F_DUPFD_CLOEXEC, 10), harness
    finally:
        os.close(box)

# --- unix sockets: none of the host's ----------------------------------------------------

def runtime_dirs() -> list[Path]:
    """Where daemons and sessions keep their sockets, empty in every box: /run, /var/run (mostly a
    link to it), XDG_RUNTIME_DIR, tmux's folder (TMUX_TMPDIR's tmux-UID: the org's tmux server);
    under /tmp, private already. GPU boxes use /dev/nvidia*, /proc, /sys and the driver's libraries."""
    tmux = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
    found: list[Path] = []
    for path in (Path("/run"), Path("/var/run"), os.environ.get("XDG_RUNTIME_DIR"), tmux):
        real = Path(os.path.realpath(path)) if path else None
        if real and real.is_dir() and not inside(real, [Path("/tmp"), *found]):
            found.append(real)
    return found


def used_within(runtime: list[Path], env: dict) -> list[Path]:
    """What the box runs that lies in a runtime folder (its PATH's and LD_LIBRARY_PATH's folders,
    the interpreter's prefix: all of NixOS's programs are under /run/current-system), bound back."""
    wanted = [*env.get("PATH", "").split(":"), *env.get("LD_LIBRARY_PATH", "").split(":"), sys.prefix, sys.base_prefix]
    return sorted({Path(os.path.normpath(p)) for p in wanted if p.startswith("/") and inside(Path(p), runtime)})


def bound_sockets() -> list[Path]:
    """The unix sockets with a name in the filesystem that processes of this network namespace
    have bound, as they stand now (/proc/net/unix; a relative name cannot be placed)."""
    try:
        lines = Path("/proc/net/unix").read_text(errors="replace").splitlines()[1:]
    except OSError:
        return []
    names = {fields[7] for fields in (line.split(maxsplit=7) for line in lines)
             if len(fields) == 8 and fields[7].startswith("/")}
    return sorted({p for p in resolved(names) if p.is_socket()})  # (a name stays while a connection lives)


def resolved(paths) -> list[Path]:
    return [Path(os.path.realpath(p)) for p in paths]


def inside(path: Path, trees: list[Path]) -> bool:
    return any(path.is_relative_to(tree) for tree in trees)


def hiding(path: Path) -> list[str]:
    """bwrap's arguments that hide a path: a folder as an empty tmpfs, a file as an empty one."""
    if path.is_dir():
        return ["--size", "65536", "--tmpfs", str(path)]
    return ["--ro-bind", "/dev/null", str(path)] if path.exists() else []


def through_link(path: Path, trees: list[Path]) -> Path | None:
    """The link a path inside one of `trees` passes through there (at or below the tree), or None."""
    for tree in trees:
        if Path(path).is_relative_to(tree):
            at = Path(tree)
            for part in Path(path).relative_to(tree).parts:
                at = at / part
                if at.is_symlink():
                    return at
    return None


def bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError(f"no sandbox: the bwrap command is not installed; {INSTALL_HINT}")
    return path


NESTED_USERNS: dict = {}  # {"flags": [...]}: found once


def no_nested_userns() -> list[str]:
    """bwrap's flags that stop a box from making user namespaces (bwrap 0.8+), or [] where this
    bwrap cannot: there, cgroups nested one deeper than the box's root still keep its limits."""
    if "flags" not in NESTED_USERNS:
        flags = ["--unshare-user", "--disable-userns"]
        try:
            ok = subprocess.run([bwrap(), *flags, "--ro-bind", "/", "/", "/bin/true"], capture_output=True,
                                timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        NESTED_USERNS["flags"] = flags if ok else []
    return NESTED_USERNS["flags"]


def check(tries: int = START_TRIES) -> None:
    """SandboxError, one line, unless a box can be made and runs a command here. Tried again: a
    host socket masked in the box (host_sockets) that went away before bwrap bound over it failed
    the box once, and `org run` then ran a program's trainers unboxed (it warns, for machines
    with no bwrap)."""
    if platform.machine() not in ABIS:
        raise SandboxError(no_filter())
    for attempt in range(tries):
        try:
            proc = subprocess.run(Sandbox().wrap(["/bin/true"], cwd="/", env={"PATH": "/usr/bin:/bin"}),
                                  capture_output=True, text=True, timeout=30)
            hostfiles.forget(proc.args)
        except (OSError, subprocess.SubprocessError) as e:
            raise SandboxError(f"no sandbox: bwrap could not be started ({e}); {INSTALL_HINT}") from None
        if proc.returncode == 0:
            return
        time.sleep(0.2 * (attempt + 1))
    why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    raise SandboxError(f"no sandbox: bwrap fails here ({why}); it needs unprivileged user namespaces "
                       "(sysctl kernel.unprivileged_userns_clone=1) or root")


def no_filter() -> str:
    """Why no box starts on a machine whose ABI org/seccomp.py does not know: without its filter
    a box makes FIFOs and links, on which the harness's git would hang (it fails closed)."""
    return (f"no sandbox: org/seccomp.py has no filter for this machine's ABI ({platform.machine()}; it knows "
            f"{', '.join(ABIS)}), and a box without one could hang the harness")


WORKING_BWRAP: set = set()  # (bwrap, ABI) a box ran with in this process: not tried again


def available() -> str | None:
    """None if boxes work here, else why not (one line). Once a box ran, not tried again: each
    try is a whole box, whose network namespace the kernel's threads tear down (30 ms), and a
    CLI's port asked at every call."""
    if (shutil.which("bwrap"), platform.machine()) in WORKING_BWRAP:
        return None
    try:
        check()
    except SandboxError as e:
        return str(e)
    WORKING_BWRAP.add((shutil.which("bwrap"), platform.machine()))
    return None


# ----------------------------------------------------------------------------------------
# the boxes nanolab makes: what each kind of agent code may see and write

# of the harness's environment, agent code sees only these (never a key or a token); OpenBLAS's kernels: the evaluator's
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TERM", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "NANOLAB_KERNELS", "OPENBLAS_CORETYPE")


def untrusted_env(extra: dict | None = None) -> dict:
    """The whole environment of a process running agent code: HOME is its private /tmp."""
    return {**{k: os.environ[k] for k in PASSED_ENV if k in os.environ}, "HOME": "/tmp", **(extra or {})}


def run_box(lab_root: Path, run_dir: Path, snapshot: Path, data: Path, kernels: Path, gpu: bool,
            cpu_seconds: int, cores=None, source: str = "pystdlib", pools=(), stdlib_modules=None) -> Sandbox:
    """A trainer run: its run directory and its commit's kernel cache are writable; its snapshot's
    trainer/ (what `python -m trainer` imports; the rest is the harness's code and tests) and the
    runs' data (the lab's train split, never its val) are read-only; the data source, Python text (the stdlib and
    run packages as bytecode), the system's (system_text) and, with no GPU, CUDA's headers are absent; no net, no unix socket."""
    kernels.mkdir(parents=True, exist_ok=True)
    return Sandbox(writable=[run_dir, kernels], readonly=[snapshot / "trainer", data],
                   hidden=code_private(lab_root) + [snapshot] + source_files(source) + python_text.system_text(),
                   gpu=gpu, unix_sockets=False, sourceless_stdlib=True, stdlib_modules=stdlib_modules,
                   limits=Limits(cpu_seconds=cpu_seconds, cores=tuple(cores) if cores else None, memory_pools=pools))


def worker_box(lab_root: Path, snapshot: Path, data: Path, kernels: Path, gpu: bool, cores=None,
               source: str = "pystdlib", pools=(), lean: bool = False, stdlib_modules=None) -> Sandbox:
    """A model worker of a measurement: reads its snapshot's trainer/ and the runs' data (its model is built as in its
    runs), not the data source; writes only its kernel cache (Numba uses no other), removed once done; no network, no unix
    socket. `lean` (the worker that checks the scoring one's logits): its runs' box, no text but its trainer/ and bytecode;
    the scoring one's shows more (the system's text; on a file program the stdlib as it is): drawing on it is caught."""
    kernels.mkdir(parents=True, exist_ok=True)
    return Sandbox(writable=[kernels], readonly=[snapshot / "trainer", data],
                   hidden=code_private(lab_root) + [snapshot] + source_files(source) + (python_text.system_text() if lean else []),
                   gpu=gpu, unix_sockets=False, sourceless_stdlib=source == "pystdlib" or lean, stdlib_modules=stdlib_modules,
                   # (its log and its kernel cache: nothing else it writes is the disk's)
                   limits=Limits(cores=tuple(cores) if cores else None, file_bytes=WORKER_FILE_BYTES, disk_bytes=2 << 30, memory_pools=pools))


def agent_box(lab_root: Path, worktree: Path, git_dir: Path, common_dir: Path, own_refs: str, own_objects: Path,
              pools=()) -> Sandbox:
    """An agent's command: its worktree, and what committing there writes in the shared .git
    (objects, into `own_objects`, a folder of its own that no other box or git reads: org/objects.py;
    its worktree's own admin dir but its pointers; its own folder of branches `own_refs` under
    refs/heads/ with their reflogs), are writable; the rest of .git (the shared objects, config,
    hooks, info, the other branches, the other worktrees' admin dirs and the other agents' objects)
    is read-only; the lab's state and the other agents' worktrees are absent; no network, no unix
    socket (a CLI's box, given its port, makes them: org/agents/clis.py); the lowest CPU weight and
    SCHED_IDLE, so it runs on what the runs leave of a core."""
    common = Path(common_dir)
    refs, reflogs = common / "refs" / "heads" / own_refs, common / "logs" / "refs" / "heads" / own_refs
    for folder in (refs, reflogs, own_objects / "pack", own_objects / "info"):
        folder.mkdir(parents=True, exist_ok=True)
    empty_file(Path(git_dir) / "config.worktree")  # read by every git there if the lab has extensions.worktreeConfig
    # the other agents' folders of objects and their worktrees' admin dirs (index and all) hold
    # what each has staged and not committed: hidden inside the shared .git (wrap: after it is bound)
    theirs = [Path(own_objects).parents[1], common / "worktrees"]  # (<common>/agent-objects/<program>/<agent>)
    return Sandbox(writable=[worktree, own_objects, refs, reflogs, git_dir],
                   readonly=[common], hidden=lab_private(lab_root) + theirs,
                   # the pointers between the worktree and git_dir: rewritten, the next box's git_dir (Lab.admin_dir)
                   # could be any folder, and the harness's git calls would follow them; its folder's packs and
                   # info (its alternates): what the harness takes in is read object by object (org/objects.py)
                   frozen=[worktree / ".git", git_dir / "gitdir", git_dir / "commondir", git_dir / "config.worktree",
                           own_objects / "pack", own_objects / "info"],  # (a filter there ran in the harness's git)
                   env={"GIT_OBJECT_DIRECTORY": str(own_objects),  # then the shared store (quoted: a path's ':')
                        "GIT_ALTERNATE_OBJECT_DIRECTORIES": json.dumps(str(common / "objects"), ensure_ascii=False)},
                   unix_sockets=False,
                   # what it writes stays (its worktree): commands of 16 GB each took the disk to the runs'
                   # reserve (every run that wrote was killed), and one agent's could take it from the others':
                   # an agent's boxes stop 8 GB short of full (the runs keep the rest), its trees at 16 GB
                   limits=Limits(file_bytes=1 << 30, address_bytes=16 << 30, cpu_weight=1, idle=True, disk_bytes=4 << 30,
                                 disk_total=16 << 30, disk_reserve=AGENT_DISK_RESERVE, memory_pools=pools))
