"""
What of the host a box's uid 0 could change. Where the harness runs as root so does a box (uid
0, without capabilities), and the kernel lets uid 0 change what it owns, root's files:
- the kernel's settings in its /proc (`echo '|cmd' > /proc/sys/kernel/core_pattern`, then a
  crash, ran cmd as root outside every box): bound read-only (kernel_settings_read_only);
- the device files bwrap's --dev binds in, the host's: a box made /dev/null mode 000 for every
  later box and the host's own users, and wrote 450 kbit/s into its times for a box running
  beside it to read. Each box now binds copies of them, made for it alone and owned by nobody:
  it reads and writes the devices, and changes nothing of the files. The copies lie where no box
  looks. (A mode set on a file of a box's /proc held in every procfs: Sandbox.wrap remounts it
  read-only.)

    own_devices()       # bwrap's --dev-bind arguments: copies of BASIC at their paths
    forget(wrapped)     # once the box has ended: its copies go (a dead process's go at the next box)

Where the harness is not root no box is either, and the host's device files are bound as bwrap
binds them; so where copies cannot be made (a container that dropped CAP_MKNOD).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from pathlib import Path

from org import pid_alive, user_cache

BASIC = ("null", "zero", "full", "random", "urandom", "tty")  # what bwrap's --dev binds from the host
NOBODY = 65534


def root() -> Path:
    return user_cache("devices")  # (hidden in every box: Sandbox.wrap)


def kernel_settings_read_only() -> list[str]:
    """bwrap's arguments binding the kernel's settings read-only over the box's own /proc (bwrap
    does so for /proc/sys only where it can first write it)."""
    return [arg for path in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
            for arg in ("--ro-bind-try", path, path)]


def own_devices(host: list[Path] | None = None, inside: list[Path] | None = None) -> list[str]:
    """bwrap's arguments binding, at each path inside, a copy of the host's device file (the host's
    own where none can be made, or it is no character device: a test's stand-in); BASIC's by default."""
    host = host or [Path("/dev") / name for name in BASIC]
    inside = inside or host
    folder = made() if os.geteuid() == 0 else None
    args = []
    for source, target in zip(host, inside):
        with contextlib.suppress(OSError):
            st = os.stat(source)
            if folder and stat.S_ISCHR(st.st_mode):
                copy = folder / source.name
                os.mknod(copy, stat.S_IFCHR | 0o600, st.st_rdev)
                os.chmod(copy, st.st_mode & 0o666)  # (the host's, whatever our umask)
                os.chown(copy, NOBODY, NOBODY)
                source = copy
        args += ["--dev-bind", str(source), str(target)]
    return args


def made() -> Path | None:
    """A new folder for one box's copies, named by this process (a dead one's are swept now)."""
    sweep()
    folder = root() / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        folder.mkdir(parents=True)
        return folder
    except OSError:
        return None


def forget(wrapped: list[str]):
    """The copies a box's command line (wrapped) bound, once the box has ended."""
    mine = {Path(a).parent for a in wrapped if a.startswith(f"{root()}/")}
    for folder in mine:
        shutil.rmtree(folder, ignore_errors=True)


def sweep():
    for folder in root().glob("*-*") if root().is_dir() else ():
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
