"""
An attempt at a run that ended: every process it left behind, found, killed, and waited for
until gone; its directory dated and set aside.

A runner that dies (SIGKILL, a crash) cannot kill its trainers; the next runner does, before it
reads what their run directories hold (org/runner.py: Runner.recover). Reading first is a race:
a process still running, or one still in the middle of its last system call, can write
result.json a moment later into the directory just read and set aside (a box's bind mount
follows the folder when it is renamed).

    run_processes(pid, run_dir)  the recorded pid if it still names run_dir (pids are reused),
                                 any trainer writing there (a box's is reparented once bwrap is
                                 gone), the harness's evaluator measuring it, and all they started
    reap(pid, run_dir)           stop them all (SIGSTOP: a stopped process forks no more),
                                 SIGKILL them, and wait until the kernel has finished each
    last_change(run_dir, skip)   when the attempt last wrote there (a time it cannot set back)
    set_aside(run_dir)           <id> -> <id>.attempt<N>: kept, never reused (its logs: the runner
                                 leaves only those, measure.leave_the_record)
    died_of(returncode, boxed)   the signal a trainer died of, by name, or None
    with pulsing(folder): ...    a runner touches <pid>.alive every second while it drains, and
    last_pulse(folder, pid, id)  says when a killed one last lived: its runs were worked on until
                                 then, though their files may say nothing of it (a trainer warming
                                 up writes nothing; the harness's measure log is written at its end)

A process that rewrites its own command line and has lost its parent escapes the search. In a
box it cannot outlive the box's PID 1 (the trainer): the kernel ends a PID namespace's processes
before its PID 1 is finished, and reap() waits for that.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from fnmatch import fnmatch
from pathlib import Path

from org.cgroups import thaw_left
from org import pid_alive, process_identity

KILL_GRACE_SECONDS = 10  # after SIGTERM the trainer finishes its step and writes result.json
PULSE_SECONDS = 1.0  # how often a runner says it lives: a killed one's runs are charged to within this


def run_processes(pid: int | None, run_dir: Path) -> set[int]:
    """The live processes of the run at run_dir: the recorded one (bwrap, or the trainer where
    no box is made) if its command line still names run_dir, any trainer writing there (`--out
    run_dir`: a box's, reparented once bwrap is gone), and all they started. Someone's `tail`
    of the run's log is none of them."""
    table = process_table()  # {pid: (parent pid, argv)}
    return with_descendants(table, [p for p, (_, argv) in table.items()
                                    if (p == pid and any(names(arg, run_dir) for arg in argv)) or trains_into(argv, run_dir)])


def with_descendants(table: dict[int, tuple[int, list[str]]], roots: list[int]) -> set[int]:
    """roots and every process they started (and those started), in a process_table()."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    frontier, found = list(roots), set()
    while frontier:
        p = frontier.pop()
        if p not in found and p != os.getpid():  # (a pid reused by the process reading it)
            found.add(p)
            frontier += children.get(p, [])
    return found


def names(arg: str, run_dir: Path) -> bool:
    """Whether an argument is run_dir or a path in it (runs/3 is not runs/30)."""
    return arg == str(run_dir) or arg.startswith(f"{run_dir}/")


def trains_into(argv: list[str], run_dir: Path) -> bool:
    """A trainer writing into run_dir (`--out`), or the harness's evaluator measuring it (`--run`)."""
    return any(flag in ("--out", "--run") and path == str(run_dir) for flag, path in zip(argv, argv[1:]))


def process_table() -> dict[int, tuple[int, list[str]]]:
    """{pid: (parent pid, argv)} of every process this one can see, zombies left out."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue  # gone while we looked
        if state != "Z":
            table[int(entry.name)] = (int(parent), argv)
    return table


def reap(pid: int | None, run_dir: Path, seconds: float = 10.0) -> set[int]:
    """Stop, kill and wait for the processes of the run at run_dir (`pid`: the one recorded);
    those still there after `seconds` (stuck in the kernel), for the caller to say."""
    stopped: set[int] = set()
    while found := run_processes(pid, run_dir) - stopped:  # a stopped one forks no more: this ends
        for p in found:
            _signal(p, signal.SIGSTOP)
        stopped |= found
    for p in stopped:
        _signal(p, signal.SIGKILL)
    thaw_left(stopped)  # a worker frozen by an evaluator killed while it timed the base dies only thawed (v1)
    deadline = time.monotonic() + seconds
    while any(map(pid_alive, stopped)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {p for p in stopped if pid_alive(p)}


def _signal(pid: int, sig: int):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def last_change(run_dir: Path, skip: str = "", most: int = 100_000) -> float:
    """When the run last changed anything in its directory (the checkpoint it is measured on
    included): the latest inode change time there. Unlike a modification time, no code in a box
    can set it back (utime sets a file's times and moves its change time to now). Read before the
    harness touches the directory: its measure logs (`skip`, a pattern of top-level names) and
    measure.planted's chmods move those times to now, and a run recovered after a night's
    downtime was charged the night. Never through a link. What it cannot read all of (a folder
    the run made unreadable, a path too long, past `most` entries) charges up to now: a run's code
    could otherwise hide its last writes there."""
    latest, seen, folders = 0.0, 0, [run_dir]  # (the folder's own time moved when a measure log was made)
    try:
        while folders:  # a stack: a run may nest folders a thousand deep
            folder = folders.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    seen += 1
                    if seen > most:
                        return time.time()
                    if folder == run_dir and skip and fnmatch(entry.name, skip) and entry.is_file(follow_symlinks=False):
                        continue  # the harness's log (a folder of that name is the run's)
                    latest = max(latest, entry.stat(follow_symlinks=False).st_ctime)
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
        return min(latest or run_dir.lstat().st_ctime, time.time())
    except OSError:
        return time.time()


def set_aside(run_dir: Path) -> Path | None:
    """Rename a run directory that holds no recorded result to <id>.attempt<N> (the first free
    N), so a re-run starts clean and the evidence of the failed attempt is kept; its new name."""
    if run_dir.exists():
        n = next(n for n in itertools.count(1) if not run_dir.with_name(f"{run_dir.name}.attempt{n}").exists())
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.attempt{n}"))
        return run_dir.with_name(f"{run_dir.name}.attempt{n}")
    return None


def died_of(returncode: int | None, boxed: bool) -> str | None:
    """The signal a trainer died of, by name, from its exit status; None for a plain exit. A
    box's init reports a child's death by signal N as 128 + N (the trainer's own exits are 0-3)."""
    number = -returncode if returncode is not None and returncode < 0 else \
        returncode - 128 if boxed and returncode is not None and 128 < returncode < 128 + 65 else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def died_reason(signal_name: str, attempts: int, own_code: bool) -> str:
    if own_code:  # a second try would let nondeterministic code crash until it likes its outcome
        return f"the trainer died of {signal_name}; the experiment's own code is not run again"
    return f"the trainer died of {signal_name} on each of {attempts} attempts"


@contextlib.contextmanager
def pulsing(folder: Path):
    """This process pulses in folder while the block runs (a runner's drain: its runs are claimed
    only then). A block left by an exception keeps the last pulse: its runs may still be marked
    running, and their recovery reads when it stopped."""
    stop = threading.Event()
    thread = threading.Thread(target=keep_pulsing, args=(folder, stop), daemon=True, name="pulse")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    (folder / f"{os.getpid()}.alive").unlink(missing_ok=True)


def keep_pulsing(folder: Path, stop: threading.Event):
    """Until `stop`: this process's <pid>.alive in folder, holding its identity (a later process
    with the pid is not it), touched every PULSE_SECONDS."""
    pulse, identity = folder / f"{os.getpid()}.alive", process_identity(os.getpid()) or ""
    while True:
        with contextlib.suppress(OSError):
            try:
                os.utime(pulse)
            except FileNotFoundError:  # (made whole: a sweep never reads it half-written; no fsync: `org serve`
                # drains every second, and a pulse a crash of the machine loses costs nothing)
                folder.mkdir(parents=True, exist_ok=True)
                (made := folder / f".{pulse.name}.tmp").write_text(identity)
                os.replace(made, pulse)
        if stop.wait(PULSE_SECONDS):
            return


def last_pulse(folder: Path, pid: int | None, identity: str | None) -> float | None:
    """When the runner (pid, identity) last said it lived; None where it cannot be told (no
    identity on record: a file of that pid may be another's)."""
    pulse = folder / f"{pid}.alive"
    try:
        return pulse.stat().st_mtime if identity and pulse.read_text() == identity else None
    except OSError:
        return None


def sweep_pulses(folder: Path):
    """The pulses of runners that are gone (read by the recovery of their runs, which comes first)."""
    for pulse in folder.glob("*.alive"):
        pid = int(pulse.stem) if pulse.stem.isdigit() else None
        with contextlib.suppress(OSError):
            if not pid or not pid_alive(pid) or pulse.read_text() != (process_identity(pid) or ""):
                pulse.unlink()
