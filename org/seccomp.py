"""
The seccomp filters of the boxes (org/sandbox.py): what a box cannot do even where it may write.

Every box makes only regular files and folders. The harness reads what a box wrote: a run's
directory, and in the shared .git an agent's branches, their reflogs and its worktree's HEAD and
index (git reads those for every branch: packing, `git worktree list`, `org stop`). Git opens a
ref that is a FIFO and waits for a writer forever; one that links to /dev/zero (or to the
harness's own terminal) it reads without end. Made there by one command, it hung the runner and
the org with it. So, in every box:

    mknod, mknodat                    fail, EPERM           (a FIFO: no device node is made without
                                                             capabilities anyway)
    symlink, symlinkat                fail, EPERM           (nothing nanolab runs makes links: a
                                                             snapshot refuses a commit with one)
    io_uring_setup                    fails, ENOSYS         (its operations never pass through
                                                             seccomp: it makes links and sockets)
    a syscall of another ABI          fails, EPERM          (i386's int 0x80 and x32: socketcall's
                                                             arguments are a pointer no filter reads)

A box that needs no unix socket (a trainer run, a model worker, an agent's command) is also kept
from the host's daemons after it has started. Its network namespace cuts it off from every TCP
port, but not from a unix socket with a name in the filesystem: connect() reaches it through a
read-only mount. The box masks each one bound when it starts, and empties the folders daemons use
(/run, tmux's), but a socket bound later in a folder the box sees (a daemon started while a run
trains: docker's, a database's) would be reachable for the rest of the run. So, there, also:

    socket(AF_UNIX, ...)              fails, EAFNOSUPPORT   (what every client of a named socket needs)
    socketpair(..., SOCK_DGRAM, ...)  fails, EPERM          (a datagram socket may sendto() any name;
                                                             stream pairs, Python's, still work)
    everything else                   allowed

    path = box_filter(unix_sockets=False)   # the compiled program in a file, for bwrap --seccomp
                                            # FD; None where this machine's ABI is not one we know,
                                            # and there no box starts (org/sandbox.py)

The program is classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}, as
`bwrap --seccomp` reads it (libseccomp's seccomp_export_bpf format): 8 bytes an instruction.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import os
import platform
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from org import user_cache


class Abi(NamedTuple):
    """An ABI we know: its AUDIT_ARCH_*, and the numbers of the calls the filter looks at (None:
    the ABI has no such call; aarch64 has only the *at forms)."""
    arch: int
    socket: int
    socketpair: int
    io_uring_setup: int
    mknod: int | None
    mknodat: int
    symlink: int | None
    symlinkat: int


ABIS = {"x86_64": Abi(0xC000003E, 41, 53, 425, mknod=133, mknodat=259, symlink=88, symlinkat=266),
        "aarch64": Abi(0xC00000B7, 198, 199, 425, mknod=None, mknodat=33, symlink=None, symlinkat=36)}
X32_BIT = 0x40000000  # x86_64's x32 ABI: the same arch, syscall numbers with this bit set
AF_UNIX, SOCK_DGRAM, SOCK_TYPE_MASK = 1, 2, 0xF  # (the type's other bits are SOCK_NONBLOCK, SOCK_CLOEXEC)
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97

# struct seccomp_data's offsets (little-endian: an argument's low 32 bits are at its offset)
NR, ARCH, ARG0, ARG1 = 0, 4, 16, 24
LD_ABS, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JSET, BPF_ALU|AND|K, BPF_RET|K
ALLOW, ERRNO = 0x7FFF0000, 0x00050000


def program(abi: Abi, unix_sockets: bool) -> list[tuple[int, int, int, int]]:
    """(code, jump if true, jump if false, k) a line: a jump skips that many lines."""
    made_files = [n for n in (abi.mknod, abi.mknodat, abi.symlink, abi.symlinkat) if n is not None]
    lines = [
        (LD_ABS, ARCH), (JEQ, abi.arch, None, "eperm"),  # another ABI
        (LD_ABS, NR), (JSET, X32_BIT, "eperm", None),    # x32
        *[(JEQ, n, "eperm", None) for n in made_files],
        (JEQ, abi.io_uring_setup, "enosys", None),
    ]
    if not unix_sockets:
        lines += [(JEQ, abi.socket, "socket", None), (JEQ, abi.socketpair, "socketpair", None)]
    lines += [(RET, ALLOW)]
    if not unix_sockets:
        lines += ["socket", (LD_ABS, ARG0), (JEQ, AF_UNIX, None, "allow"),  # socket's domain
                  (RET, ERRNO | EAFNOSUPPORT),
                  "socketpair", (LD_ABS, ARG1), (AND, SOCK_TYPE_MASK), (JEQ, SOCK_DGRAM, None, "allow"),  # its type
                  (RET, ERRNO | EPERM)]
    lines += ["allow", (RET, ALLOW), "enosys", (RET, ERRNO | ENOSYS), "eperm", (RET, ERRNO | EPERM)]
    return assembled(lines)


def assembled(lines: list) -> list[tuple[int, int, int, int]]:
    """Labels (a str line names the next instruction) turned into forward jumps: a jump's None
    goes on to the next line. (LD_ABS, k), (AND, k), (RET, k) and (JEQ or JSET, k, true, false)."""
    at, count = {}, 0
    for line in lines:
        if isinstance(line, str):
            at[line] = count
        else:
            count += 1
    out = []
    for line in (line for line in lines if not isinstance(line, str)):
        code, k, *jumps = line
        here = len(out)
        jt, jf = (at[j] - here - 1 if j is not None else 0 for j in (jumps or [None, None]))
        out.append((code, jt, jf, k))
    return out


def compiled(unix_sockets: bool, machine: str | None = None) -> bytes | None:
    """The program as struct sock_filter[] (u16 code, u8 jt, u8 jf, u32 k), or None for an ABI we do not know."""
    abi = ABIS.get(machine or platform.machine())
    return b"".join(struct.pack("=HBBI", *line) for line in program(abi, unix_sockets)) if abi else None


def box_filter(unix_sockets: bool) -> Path | None:
    """The compiled program in a file of the harness's (named by its content; no box writes
    there: it lies under the person's home, read-only in every box, or where that home cannot
    be written, as a cluster node's, in a private folder of this process's), or None for an ABI
    we do not know (the sandbox then starts no box)."""
    code = compiled(unix_sockets)
    if code is None:
        return None
    try:
        return written(user_cache("seccomp"), code)
    except OSError:
        return written(private_folder(), code)


def written(folder: Path, code: bytes) -> Path:
    path = folder / f"box-{hashlib.sha256(code).hexdigest()[:12]}.bpf"
    if not path.exists() or path.read_bytes() != code:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(code)
        tmp.replace(path)
    return path


@functools.cache
def private_folder() -> Path:
    """A folder only this user reads and writes (mkdtemp's 0700), for as long as the process lives."""
    folder = Path(tempfile.mkdtemp(prefix="nanolab-seccomp-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder
