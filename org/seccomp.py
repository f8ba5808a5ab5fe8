"""
A seccomp filter for boxes that need no unix socket (a trainer run, a model worker, an agent's
command): what keeps them from the host's daemons after the box has started (org/sandbox.py).

A box's network namespace cuts it off from every TCP port, but not from a unix socket with a name
in the filesystem: connect() reaches it through a read-only mount. The box masks each one bound
when it starts, and empties the folders daemons use (/run, tmux's), but a socket bound later in a
folder the box sees (a daemon started while a run trains: docker's, a database's, another tool's
control socket) would be reachable for the rest of the run. With this filter, the box cannot make
the socket to connect() with:

    socket(AF_UNIX, ...)              fails, EAFNOSUPPORT   (what every client of a named socket needs)
    socketpair(..., SOCK_DGRAM, ...)  fails, EPERM          (a datagram socket may sendto() any name;
                                                             stream pairs, Python's, still work)
    io_uring_setup                    fails, ENOSYS         (its operations never pass through seccomp)
    a syscall of another ABI          fails, EPERM          (i386's int 0x80 and x32: socketcall's
                                                             arguments are a pointer no filter reads)
    everything else                   allowed

    path = no_unix_sockets()   # the compiled program in a file, for bwrap --seccomp FD; None where
                               # this machine's ABI is not one we know (the start-time masks remain)

The program is classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}, as
`bwrap --seccomp` reads it (libseccomp's seccomp_export_bpf format): 8 bytes an instruction.
"""
from __future__ import annotations

import hashlib
import os
import platform
import struct
import threading
from pathlib import Path

# the ABIs we know: (AUDIT_ARCH_*, socket, socketpair, io_uring_setup)
ABIS = {"x86_64": (0xC000003E, 41, 53, 425), "aarch64": (0xC00000B7, 198, 199, 425)}
X32_BIT = 0x40000000  # x86_64's x32 ABI: the same arch, syscall numbers with this bit set
AF_UNIX, SOCK_DGRAM, SOCK_TYPE_MASK = 1, 2, 0xF  # (the type's other bits are SOCK_NONBLOCK, SOCK_CLOEXEC)
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97

# struct seccomp_data's offsets (little-endian: an argument's low 32 bits are at its offset)
NR, ARCH, ARG0, ARG1 = 0, 4, 16, 24
LD_ABS, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JSET, BPF_ALU|AND|K, BPF_RET|K
ALLOW, ERRNO = 0x7FFF0000, 0x00050000


def program(arch: int, socket: int, socketpair: int, io_uring_setup: int) -> list[tuple[int, int, int, int]]:
    """(code, jump if true, jump if false, k) a line: a jump skips that many lines."""
    return [
        (LD_ABS, 0, 0, ARCH),                         # 0
        (JEQ, 0, 15, arch),                           # 1   another ABI: to 17
        (LD_ABS, 0, 0, NR),                           # 2
        (JSET, 13, 0, X32_BIT),                       # 3   x32: to 17
        (JEQ, 3, 0, socket),                          # 4   to 8
        (JEQ, 5, 0, socketpair),                      # 5   to 11
        (JEQ, 9, 0, io_uring_setup),                  # 6   to 16
        (RET, 0, 0, ALLOW),                           # 7
        (LD_ABS, 0, 0, ARG0),                         # 8   socket's domain
        (JEQ, 0, 5, AF_UNIX),                         # 9   not unix: to 15
        (RET, 0, 0, ERRNO | EAFNOSUPPORT),            # 10
        (LD_ABS, 0, 0, ARG1),                         # 11  socketpair's type
        (AND, 0, 0, SOCK_TYPE_MASK),                  # 12
        (JEQ, 0, 1, SOCK_DGRAM),                      # 13  not datagram: to 15
        (RET, 0, 0, ERRNO | EPERM),                   # 14
        (RET, 0, 0, ALLOW),                           # 15
        (RET, 0, 0, ERRNO | ENOSYS),                  # 16
        (RET, 0, 0, ERRNO | EPERM),                   # 17
    ]


def compiled(machine: str | None = None) -> bytes | None:
    """The program as struct sock_filter[] (u16 code, u8 jt, u8 jf, u32 k), or None for an ABI we do not know."""
    abi = ABIS.get(machine or platform.machine())
    return b"".join(struct.pack("=HBBI", *line) for line in program(*abi)) if abi else None


def no_unix_sockets() -> Path | None:
    """The compiled program in a file of the harness's (named by its content; no box writes
    there: it lies under the person's home, read-only in every box), or None (an ABI we do not
    know, or a home we cannot write)."""
    code = compiled()
    if code is None:
        return None
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nanolab" / "seccomp"
    path = folder / f"no-unix-sockets-{hashlib.sha256(code).hexdigest()[:12]}.bpf"
    try:
        if not path.exists() or path.read_bytes() != code:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(code)
            tmp.replace(path)
    except OSError:  # a home we cannot write (a cluster node's): the box masks sockets as it starts
        return None
    return path
