"""
The agent's workspace: its git worktree, and the limits on what its tools may do there.

- paths are relative to the worktree: absolute paths, '..' and symlinks that lead out are refused;
- protected paths (the program's: evaluation, data, FLOP accounting, the harness) and .git are
  read-only to the file tools; git_commit and the runner refuse commits that change them, which
  also covers edits made through the shell;
- `run` executes a command in the worktree with a timeout and an output cap, in an environment
  holding no credentials (*_API_KEY, *_TOKEN, ANTHROPIC_*, OPENAI_*, ...) and no git
  redirection variables (GIT_DIR and friends).

The shell is not a jail: it can read files outside the worktree like any process of this user.
What it cannot do is spend the org's keys, or get a change to a protected file measured.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from org.sandbox import untrusted_env

# environment variables a command must not see: credentials, and anything pointing git elsewhere
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN(?!IZERS)|SECRET|PASSW|CREDENTIAL|_KEY$|_AUTH)", re.I)
SECRET_PREFIXES = ("ANTHROPIC_", "OPENAI_", "CLAUDE_", "CODEX_", "AWS_", "AZURE_", "GOOGLE_",
                   "GEMINI_", "HF_", "HUGGING", "GH_", "GITHUB_", "GIT_", "NANOLAB_")


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
    def __init__(self, root: str | Path, protected: list[str], env: dict | None = None, box=None):
        self.root = Path(root).resolve()
        self.protected = [p.strip("/") for p in protected]
        self.env = env or {}  # added to every command's environment (git identity)
        self.box = box  # org.sandbox.Sandbox: where commands run (None: as plain processes)

    # --- paths ---------------------------------------------------------------------------

    def path(self, rel: str, write: bool = False) -> Path:
        """The real path of `rel` inside the worktree, or Refused saying why not."""
        rel = (rel or ".").strip()
        if os.path.isabs(rel) or rel.startswith("~"):
            raise Refused(f"{rel}: absolute paths are refused; give a path relative to your worktree")
        if ".." in Path(rel).parts:
            raise Refused(f"{rel}: '..' is refused; paths stay inside your worktree")
        real = (self.root / rel).resolve()
        if not real.is_relative_to(self.root):
            raise Refused(f"{rel}: resolves to {real}, outside your worktree (a symlink leads out)")
        if write:
            for name in {Path(rel).as_posix(), real.relative_to(self.root).as_posix()}:
                owner = self.protected_by(name)
                if owner:
                    raise Refused(f"{name}: protected by the program ({owner}); it is read-only "
                                  "so every arm is measured the same way")
        return real

    def protected_by(self, rel: str) -> str | None:
        """The protected entry covering `rel` (or '.git'), or None."""
        rel = rel.strip("/")
        if rel == ".git" or rel.startswith(".git/"):
            return ".git"
        for entry in self.protected:
            if rel == entry or rel.startswith(entry + "/"):
                return entry
        return None

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    # --- commands ------------------------------------------------------------------------

    def run(self, command: list[str] | str, timeout: float, limit: int) -> tuple[int | None, str]:
        """(exit status or None if killed on timeout, capped stdout+stderr). Output goes to a
        file, not memory, so a command printing forever costs disk, not the agent."""
        argv = ["bash", "-c", command] if isinstance(command, str) else command
        with tempfile.TemporaryFile() as out:
            how = dict(cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                       start_new_session=True)
            if self.box:
                proc = self.box.popen(argv, env=untrusted_env(self.env), **how)
            else:
                proc = subprocess.Popen(argv, env=clean_env(self.env), **how)
            try:
                status = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = None
            return status, _read_capped(out, limit)


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

