"""
What a box may write to disk. No cgroup bounds it, and RLIMIT_FSIZE only bounds each file, so
the harness watches: Sandbox.popen starts a thread for every box with writable trees, which
every POLL_SECONDS adds up those trees (the blocks each file takes, or its size where more: a
sparse file's; a block at least, a folder's or an empty file's; a hard-linked one once; and the
number of entries) and kills the box, saying
why on proc.stopped, when

- they hold more than Limits.disk_bytes, or more than Limits.disk_files entries, beyond what
  they held when it started: no box fills the disk, nor its table of files, on its own;
- they hold more than Limits.disk_total in all (an agent's: its commands one after another) and
  grew by more than GROWTH_SLACK since it started (so one may always start, and delete);
- the filesystem under them has less than Limits.disk_reserve free and they grew by more than
  GROWTH_SLACK since it started: boxes one after another (an agent's commands), or side by
  side, cannot take the last of the disk the harness writes its ledger and reports to. A box
  that only deletes files goes on. So with the filesystem's inodes: ENTRY_RESERVE.

    watch(proc, box.writable, box.limits)     # once the box has started
    proc.stopped                              # None, or the one line saying why it was killed

Between two looks a box writes at the disk's speed, so the bounds hold to within POLL_SECONDS
of writing (or ten times a look's own time, for trees of many files: the watch takes a tenth of
a core at most). The reserve holds to within POLL_SECONDS whatever the trees hold: the disk's
free room is read between looks, and a fall into the reserve brings the next look forward.
Trees two boxes share (an agent's objects folder, written by its CLI's box and its commands'
boxes) count for both.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

POLL_SECONDS = 1.0
GROWTH_SLACK = 64 << 20  # a run's log and metrics, an agent's small edits: never the reason a box dies
# an entry takes a block or an inode, whatever it holds: counted as nothing, empty files and
# folders made 100,000 at a command (each box's bound) took 400 MB of disk, or every inode
ENTRY_BYTES = 4096
ENTRY_RESERVE = 100_000  # free inodes no box makes entries into: the harness's ledger, runs, reports


def watch(proc, trees: list[Path], limits) -> threading.Thread | None:
    """Start watching proc's box (a Popen whose death kills it) until it exits."""
    proc.stopped = None
    trees = [Path(t) for t in trees if Path(t).exists()]
    if not trees:
        return None
    try:
        start = usage(trees, lenient=True)
    except Exception as e:  # (the box runs already: it is not let run unwatched, whatever failed)
        proc.stopped = f"killed by the harness: its writable trees cannot be measured ({str(e)[:160]})"
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)  # bwrap's: the box dies with it
        return None
    thread = threading.Thread(target=_watch, args=(proc, trees, limits, start), daemon=True,
                              name=f"diskwatch-{proc.pid}")
    thread.start()
    return thread


def _watch(proc, trees: list[Path], limits, start: tuple[int, int]):
    took, free = 0.0, room(trees)
    while not ended_before_look(proc, trees, limits, max(POLL_SECONDS, 10 * took), free):  # a tenth of a core at most
        t0 = time.monotonic()
        try:
            held, entries = usage(trees)
            held += held_open(box_pids(proc), {os.stat(t).st_dev for t in trees})
            free = room(trees)
            why = over(start, (held, entries), free[0], limits, free[1])
        except Exception as e:  # a tree made to be unmeasurable (a folder it may not read), or anything else: fail closed
            why = f"its writable trees cannot be measured ({type(e).__name__}: {str(e)[:120]})"
        took = time.monotonic() - t0
        if why and proc.poll() is None:
            proc.stopped = f"killed by the harness: {why}"
            try:
                os.kill(proc.pid, signal.SIGKILL)  # bwrap's: the box dies with it
            except ProcessLookupError:
                pass
            return


def ended_before_look(proc, trees: list[Path], limits, seconds: float, free: tuple[int, int]) -> bool:
    """Wait for the next look, `seconds` away: ten times a look's own time for trees of many files
    (a million: half a minute, and a box writes a GB a second). The disk's free room (statvfs: no
    walk) is read every POLL_SECONDS meanwhile: under the reserve, and GROWTH_SLACK or 1,000 entries
    less than at the last look, it looks now. True: the box ended."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and proc.poll() is None:
        time.sleep(min(POLL_SECONDS, left))
        (room_bytes, room_entries) = room(trees)
        if (room_bytes < limits.disk_reserve and free[0] - room_bytes > GROWTH_SLACK
                or room_entries < ENTRY_RESERVE and free[1] - room_entries > 1000):
            break
    return proc.poll() is not None


def over(start: tuple[int, int], now: tuple[int, int], free: int, limits, entries_free: int = 1 << 62) -> str | None:
    """Why a box must stop, from (bytes, entries) in its trees when it started and now, and the
    bytes and inodes free under them; None while it keeps within its bounds."""
    grew, more = now[0] - start[0], now[1] - start[1]
    if grew > limits.disk_bytes:
        return f"its writable trees grew by {gib(grew)}, more than the {gib(limits.disk_bytes)} a box may write"
    if more > limits.disk_files:
        return f"it made {more} files and folders, more than the {limits.disk_files} a box may make"
    if limits.disk_total is not None and now[0] > limits.disk_total and grew > GROWTH_SLACK:
        return (f"its writable trees hold {gib(now[0])}, more than the {gib(limits.disk_total)} an agent's work "
                "may take (delete files to go on)")
    if free < limits.disk_reserve and grew > GROWTH_SLACK:
        return (f"it wrote {gib(grew)} while the disk has {gib(free)} free, less than the {gib(limits.disk_reserve)} "
                "the harness keeps for its ledger (delete files to go on)")
    if entries_free < ENTRY_RESERVE and more > 1000:
        return (f"it made {more} files and folders while the disk has room for {entries_free} more, fewer than the "
                f"{ENTRY_RESERVE} the harness keeps (delete files to go on)")
    return None


def usage(trees: list[Path], lenient: bool = False) -> tuple[int, int]:
    """(bytes the trees' entries hold, their number): each inode once, links not followed. A file
    counts its size where that is more than the blocks it takes: a sparse file of 1 GB takes
    none, and every git of the harness's hashed it whole (a status of 4 took 9 s). Any entry, a
    folder or an empty file, counts ENTRY_BYTES at least. A folder we may not read leaves what lies
    below it unseen: an error (the box is killed, fail closed), unless `lenient` (a box's start:
    so a box can run the `chmod` that restores it; its first look fails closed on it)."""
    try:
        return walk(trees, lenient)
    except OSError as e:  # (a tree nested past the kernel's path length: GNU find walks any depth)
        if e.errno != errno.ENAMETOOLONG:
            raise
        return found_usage(trees, lenient)


def walk(trees: list[Path], lenient: bool = False) -> tuple[int, int]:
    """usage() by a walk of our own, without recursion: os.walk's raised RecursionError in a folder
    1,100 deep, which a box makes in a second, as the next box started."""
    seen, held, entries = set(), 0, 0
    folders = [str(tree) for tree in trees]
    while folders:
        try:
            with os.scandir(folders.pop()) as found:
                listed = list(found)
        except FileNotFoundError:  # deleted while we looked
            continue
        except PermissionError:
            if lenient:
                continue
            raise
        for entry in listed:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            entries += 1
            held += counted(st.st_dev, st.st_ino, st.st_blocks, st.st_size, stat.S_ISREG(st.st_mode), seen)
            if stat.S_ISDIR(st.st_mode):
                folders.append(entry.path)
    return held, entries


def found_usage(trees: list[Path], lenient: bool = False) -> tuple[int, int]:
    """usage() by GNU find: each entry's device, inode, blocks and size, counted as walk counts them.
    Its error lines end with the C locale's reason, which no name can forge (find quotes names)."""
    done = subprocess.run(["find", *map(str, trees), "-mindepth", "1", "-printf", r"%D %i %b %s %y\n"],
                          capture_output=True, env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")}, timeout=600)
    excused = (": No such file or directory",) + ((": Permission denied",) if lenient else ())  # (deleted as it looked)
    errors = [line for line in done.stderr.decode(errors="replace").splitlines() if not line.endswith(excused)]
    if done.returncode and (errors or not done.stderr):
        raise OSError(f"find: {(errors or [f'exit status {done.returncode}'])[0][:200]}")
    seen, held, entries = set(), 0, 0
    for line in done.stdout.decode().splitlines():
        dev, ino, blocks, size, kind = line.split()
        entries += 1
        held += counted(int(dev), int(ino), int(blocks), int(size), kind == "f", seen)
    return held, entries


def counted(dev: int, ino: int, blocks: int, size: int, regular: bool, seen: set) -> int:
    """The bytes an entry adds: its blocks, or its size where more (a regular file's), ENTRY_BYTES at least; an inode once."""
    if (dev, ino) in seen:
        return 0
    seen.add((dev, ino))
    return max(blocks * 512, size if regular else 0, ENTRY_BYTES)


def box_pids(proc) -> set[int]:
    """The box's processes: those in its cgroup (Sandbox.popen's box_groups), or its first."""
    from org.cgroups import members
    groups = getattr(proc, "box_groups", None) or []
    return members(groups[:1]) if groups else {proc.pid}


def held_open(pids: set[int], devices: set[int]) -> int:
    """What the processes hold on these filesystems that no name there reaches: a file deleted
    while open or mapped, or made nameless (O_TMPFILE). Its blocks are the disk's until the last
    descriptor closes and the last mapping goes, and no walk of the trees sees them: a box that
    wrote 1 GB into each of thousands of such files filled the disk unseen; then one that kept
    only a page of each mapped (the descriptor closed)."""
    seen, held = set(), 0
    for pid in pids:
        for path in [*open_deleted(pid), *mapped_deleted(pid)]:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev in devices and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                held += max(st.st_blocks * 512, st.st_size)
    return held


def open_deleted(pid: int) -> list[str]:
    """/proc/PID/fd/N of each deleted file the process holds open."""
    fds = f"/proc/{pid}/fd"
    found = []
    with contextlib.suppress(OSError):  # (gone while we looked)
        for fd in os.listdir(fds):
            with contextlib.suppress(OSError):
                if os.readlink(f"{fds}/{fd}").endswith(" (deleted)"):
                    found.append(f"{fds}/{fd}")
    return found


def mapped_deleted(pid: int) -> list[str]:
    """/proc/PID/map_files/RANGE of each deleted file the process has mapped (stat follows it to
    the file only with CAP_SYS_ADMIN: a harness run as root, where boxes are root too; elsewhere
    such files go uncounted)."""
    with contextlib.suppress(OSError):
        maps = Path(f"/proc/{pid}/maps").read_text(errors="replace").splitlines()
        return [f"/proc/{pid}/map_files/{line.split(maxsplit=1)[0]}" for line in maps if line.endswith(" (deleted)")]
    return []


def room(trees: list[Path]) -> tuple[int, int]:
    """(bytes, entries) free on the filesystems under the trees, the least of each."""
    return min(free_bytes(t) for t in trees), min(free_entries(t) for t in trees)


def free_bytes(path: Path) -> int:
    try:
        fs = os.statvfs(path)
    except OSError:
        return 1 << 62
    return fs.f_bavail * fs.f_frsize


def free_entries(path: Path) -> int:
    try:
        fs = os.statvfs(path)
    except OSError:
        return 1 << 62
    return fs.f_favail if fs.f_files else 1 << 62  # (no fixed table of inodes: btrfs, say)


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MB"
