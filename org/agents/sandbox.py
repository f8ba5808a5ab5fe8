"""
The agent's workspace: its git worktree, and the limits on what its tools may do there.

- the file tools take paths relative to the worktree and open them one component at a time from
  the worktree's own descriptor, never following a link (O_NOFOLLOW on every step): absolute
  paths, '..', and symbolic links anywhere on the way are refused, and so is a swap of a folder
  for a link after a check, since nothing is looked up by name twice. A file with more than one
  hard link is refused (it may be a file outside the worktree under a second name), and so is
  anything that is not a regular file or folder (a FIFO, a device). Reads and writes are bounded
  (MAX_FILE_BYTES);
- protected paths (the program's: evaluation, data, FLOP accounting, the harness) and .git are
  read-only to the file tools; git_commit and the runner refuse commits that change them, which
  also covers edits made through the shell;
- `run` executes a command in the agent's box (org/sandbox.py: only the worktree writable, no
  network, its own processes only), in an environment holding no credentials (*_API_KEY,
  *_TOKEN, ANTHROPIC_*, OPENAI_*, ...) and no git redirection variables (GIT_DIR and friends),
  with a timeout and an output cap; its box's CPU time goes to `meter` (the ledger's agent_cpu).
  Where no box can be made it is a plain process, and only scripted agents are launched
  (org/launch.py).
"""
from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable

from org.agents.pacing import box_ended
from org.cgroups import cpu_seconds
from org.diskwatch import GROWTH_SLACK, free_bytes, gib, usage
from org.sandbox import dies_with, end_box, untrusted_env

# environment variables a command must not see: credentials, and anything pointing git elsewhere
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN(?!IZERS)|SECRET|PASSW|CREDENTIAL|_KEY$|_AUTH)", re.I)
SECRET_PREFIXES = ("ANTHROPIC_", "OPENAI_", "CLAUDE_", "CODEX_", "AWS_", "AZURE_", "GOOGLE_",
                   "GEMINI_", "HF_", "HUGGING", "GH_", "GITHUB_", "GIT_", "NANOLAB_")


MAX_FILE_BYTES = 8 << 20  # the file tools read and write at most this much of one file


class Refused(Exception):
    """A tool call the harness will not carry out; the reason goes back to the model and into
    the transcript."""


def clean_env(extra: dict | None = None, base: dict | None = None) -> dict:
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not SECRET_NAME.search(k) and not k.upper().startswith(SECRET_PREFIXES)}
    env.update(extra or {})
    return env


def git_identity(agent: str) -> dict:
    """Commits carry the agent's name; set per process so no shared git config is touched."""
    email = f"{agent}@nanolab.invalid"
    return {"GIT_AUTHOR_NAME": agent, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": agent, "GIT_COMMITTER_EMAIL": email}


def cap(text: str, limit: int) -> str:
    """Keep the head and the tail of an oversized output, with a note of what was cut."""
    if len(text) <= limit:
        return text
    head, tail = text[:limit // 2], text[-(limit // 2):]
    return (f"{head}\n[... {len(text) - len(head) - len(tail)} characters cut: output over "
            f"{limit} characters; narrow the command or read a range ...]\n{tail}")


class Workspace:
    def __init__(self, root: str | Path, protected: list[str], env: dict | None = None, box=None,
                 meter: Callable[[float], None] | None = None):
        self.root = Path(root).resolve()
        self.protected = [p.strip("/") for p in protected]
        self.env = env or {}  # added to every command's environment (git identity)
        self.box = box  # org.sandbox.Sandbox: where commands run (None: as plain processes)
        self.meter = meter  # given each boxed command's CPU seconds, to put on record
        self.held, self.unwalked = None, 0  # its box's trees at the last walk, and what the file tools wrote since

    # --- paths and files ------------------------------------------------------------------

    def check(self, rel: str, write: bool = False) -> str:
        """`rel` normalised ('a/b/c'), or Refused saying why the file tools will not touch it."""
        rel = (rel or ".").strip()
        if os.path.isabs(rel) or rel.startswith("~"):
            raise Refused(f"{rel}: absolute paths are refused; give a path relative to your worktree")
        parts = [p for p in PurePosixPath(rel).parts if p != "."]
        if ".." in parts:
            raise Refused(f"{rel}: '..' is refused; paths stay inside your worktree")
        name = "/".join(parts) or "."
        owner = self.protected_by(name) if write else None
        if owner:
            raise Refused(f"{name}: protected by the program ({owner}); it is read-only "
                          "so every arm is measured the same way")
        return name

    def open(self, rel: str, flags: int, write: bool = False, make_parents: bool = False) -> int:
        """A descriptor for `rel`, opened beneath the worktree without following any link."""
        name = self.check(rel, write)
        parts = [] if name == "." else name.split("/")
        at = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for i, part in enumerate(parts[:-1]):
            at = self._step(at, part, "/".join(parts[:i + 1]), make_parents)  # consumes `at`
        if not parts:
            return at
        try:  # O_NONBLOCK: opening a FIFO must not hang the agent; it is refused just below
            fd = self._open_at(at, parts[-1], name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.close(at)
        info = os.fstat(fd)
        why = ("it has more than one hard link (it may be another file under a second name)"
               if stat.S_ISREG(info.st_mode) and info.st_nlink > 1 else
               None if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode) else
               "not a regular file or folder")
        if why:
            os.close(fd)
            raise Refused(f"{name}: {why}; the file tools refuse it")
        return fd

    def _step(self, at: int, part: str, so_far: str, make: bool) -> int:
        """Go down one folder from descriptor `at` (and close it); never through a link."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                return self._open_at(at, part, so_far, flags)
            except FileNotFoundError:
                if not make:
                    raise
                os.mkdir(part, 0o755, dir_fd=at)
                return self._open_at(at, part, so_far, flags)
        finally:
            os.close(at)

    @staticmethod
    def _open_at(at: int, part: str, so_far: str, flags: int) -> int:
        try:
            return os.open(part, flags, 0o644, dir_fd=at)
        except OSError as e:
            if e.errno == errno.ELOOP or os.path.islink(f"/proc/self/fd/{at}/{part}"):
                raise Refused(f"{so_far}: a symbolic link; the file tools do not follow links "
                              "(they could lead out of your worktree)") from None
            if e.errno == errno.ENOTDIR and flags & os.O_DIRECTORY:
                raise Refused(f"{so_far}: not a folder") from None
            raise

    def read_bytes(self, rel: str, limit: int = MAX_FILE_BYTES) -> tuple[bytes, int]:
        """(at most `limit` bytes from the start of the file, the file's size)."""
        fd = self.open(rel, os.O_RDONLY)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(f"{rel}: a folder, not a file")
            size = info.st_size
            chunks, got = [], 0
            while got < limit and (chunk := os.read(fd, min(1 << 20, limit - got))):
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks), size
        finally:
            os.close(fd)

    def write_bytes(self, rel: str, data: bytes):
        """Create or replace a file's content; its folders are made as needed."""
        if len(data) > MAX_FILE_BYTES:
            raise Refused(f"{rel}: {len(data)} bytes is over the file tools' limit of {MAX_FILE_BYTES}")
        if self.check(rel, write=True) == ".":
            raise Refused(f"{rel!r} names your worktree itself, not a file")
        self.room_for(rel, len(data))
        fd = self.open(rel, os.O_WRONLY | os.O_CREAT, write=True, make_parents=True)
        try:  # truncated only after the link and type checks: a second name is never emptied
            os.ftruncate(fd, 0)
            _write_all(fd, data)
        finally:
            os.close(fd)

    def room_for(self, rel: str, more: int):
        """Refused where writing `more` bytes would take the disk into the reserve a box of this
        agent may not write into, or its trees past what its work may take (the disk watch's
        bounds): the file tools write from the harness's own process, which no disk watch sees
        (8 MB a call, 2 GB in 7 s, and on to the end of the disk)."""
        reserve = self.box.limits.disk_reserve if self.box else 0
        if more > 0 and free_bytes(self.root) - more < reserve:
            raise Refused(f"{rel}: the disk has {gib(free_bytes(self.root))} free, and the harness keeps the last "
                          f"{gib(reserve)} for its ledger and runs; delete files to go on")
        total = self.box.limits.disk_total if self.box else None
        if total is None or more <= 0:
            return
        self.unwalked += more  # (a walk at most every GROWTH_SLACK written, or where the sum says over)
        if self.held is None or self.unwalked > GROWTH_SLACK or self.held + self.unwalked > total:
            self.held, self.unwalked = usage(self.box.writable, lenient=True)[0], more
        if self.held + self.unwalked > total:
            self.unwalked -= more
            raise Refused(f"{rel}: your trees hold {gib(self.held)}, and an agent's work may take {gib(total)} "
                          "(the same bound as your commands'); delete files to go on")

    def rewrite(self, rel: str, change: Callable[[str], str]):
        """Read a text file, apply `change`, write the result back through the same descriptor."""
        fd = self.open(rel, os.O_RDWR, write=True)
        try:
            size = os.fstat(fd).st_size
            if size > MAX_FILE_BYTES:
                raise Refused(f"{rel}: {size} bytes is over the file tools' limit of {MAX_FILE_BYTES}")
            chunks, got = [], 0  # to the limit, whatever it has grown to since (a process in its box appends)
            while got <= MAX_FILE_BYTES and (chunk := os.read(fd, 1 << 20)):
                chunks.append(chunk)
                got += len(chunk)
            if got > MAX_FILE_BYTES:
                raise Refused(f"{rel}: over the file tools' limit of {MAX_FILE_BYTES} bytes (it grew as it was read)")
            try:
                new = change(b"".join(chunks).decode()).encode()
            except UnicodeDecodeError as e:
                raise Refused(f"{rel}: not UTF-8 text (byte {e.start}); edit_file edits text, run (sed) edits bytes") from None
            if len(new) > MAX_FILE_BYTES:  # (a 1 MB file's every x made 100 characters: 100 MB, in our memory)
                raise Refused(f"{rel}: the edit makes {len(new)} bytes, over the file tools' limit of {MAX_FILE_BYTES}")
            self.room_for(rel, len(new) - got)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            _write_all(fd, new)
        finally:
            os.close(fd)

    def protected_by(self, rel: str) -> str | None:
        """The protected entry covering `rel` (or '.git'), or None."""
        rel = rel.strip("/")
        if rel == ".git" or rel.startswith(".git/"):
            return ".git"
        for entry in self.protected:
            if rel == entry or rel.startswith(entry + "/"):
                return entry
        return None

    # --- commands ------------------------------------------------------------------------

    def run(self, command: list[str] | str, timeout: float, limit: int) -> tuple[int | None, str]:
        """(exit status or None if killed on timeout, capped stdout+stderr). Output goes to a
        file, not memory, so a command printing forever costs disk, not the agent."""
        argv = ["bash", "-c", command] if isinstance(command, str) else command
        with tempfile.TemporaryFile() as out:
            how = dict(cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                       start_new_session=True)
            if self.box:
                proc = self.box.popen(argv, env=untrusted_env(self.env), preexec_fn=dies_with(os.getpid()), **how)
            else:
                proc = subprocess.Popen(argv, env=clean_env(self.env), **how)
            try:
                status = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = None
            if self.box:
                end_box(proc)  # (what a bwrap killed mid-making left running)
            used = cpu_seconds(proc) if self.box else None
            if used is not None:
                box_ended(used)  # (the agent's own, not the harness's work that pacing counts)
                if self.meter:
                    self.meter(used)
            stopped = getattr(proc, "stopped", None)  # its disk (org/diskwatch.py)
            return status, _read_capped(out, limit) + (f"\n[{stopped}]" if stopped else "")


def _write_all(fd: int, data: bytes):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_capped(f, limit: int) -> str:
    size = f.seek(0, os.SEEK_END)
    if size <= limit:
        f.seek(0)
        return f.read().decode(errors="replace")
    f.seek(0)
    head = f.read(limit // 2).decode(errors="replace")
    f.seek(size - limit // 2)
    tail = f.read().decode(errors="replace")
    return (f"{head}\n[... {size - limit} bytes cut: output over {limit} bytes; narrow the "
            f"command or redirect it to a file and read a range ...]\n{tail}")


def protect_own_environment() -> None:
    """Make this process non-dumpable, so commands it runs (same user) cannot read its API keys
    from /proc/<pid>/environ. clean_env keeps the keys out of the commands' own environment;
    this closes the side door. (Root, as in a container, can still read everything.)"""
    try:
        import ctypes
        PR_SET_DUMPABLE = 4
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux/glibc: nothing to do
        pass

