"""
nanolab's research org: programs, the lab (git), the ledger (SQLite) and the budgeted runner.

The harness, not the agent, owns the budget, the seeds, the evaluation and the verdict.
"""
import argparse
import contextlib
import fcntl
import os
import re
import subprocess
import uuid
from pathlib import Path


def user_cache(name: str) -> Path:
    """A folder of the harness's under the person's cache (read-only in every box). A relative
    XDG_CACHE_HOME is ignored, as the XDG spec says: the list of labs was made in whatever folder
    a command ran in."""
    given = os.environ.get("XDG_CACHE_HOME") or ""
    return (Path(given) if os.path.isabs(given) else Path.home() / ".cache") / "nanolab" / name


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


INLINE = str.maketrans({c: "\\" + c for c in "\\`*[]~"})  # CommonMark's inline markup, escaped: plain text
WORDY_UNDERSCORES = re.compile(r"(?<=[^\W_])_+(?=[^\W_])")  # inside a word (val_bpb): no emphasis there


def one_line(text) -> str:
    """Text an agent or its code wrote, as one line of plain text in a markdown report: every kind
    of line break a space (CommonMark ends a line at a lone \\r too, so a hypothesis could start
    headings of its own), no raw HTML (`<!--` hid the rest of the report), no inline markup (an
    image `![](url)` the viewer fetches, a link whose text says anything, `**kept**` that reads as
    the harness's), and no control character (shown): an escape sequence in README.md fires
    under `cat` or `less -R`."""
    text = shown(" ".join(str(text).splitlines())).translate(INLINE).replace("<", "&lt;")
    inside = {i for m in WORDY_UNDERSCORES.finditer(text) for i in range(*m.span())}
    return "".join("\\_" if c == "_" and i not in inside else c for i, c in enumerate(text))


def code_span(text) -> str:
    """Text an agent chose (an override's value, a verdict that quotes a run's reason) as inline
    code, on one line: a backtick of its own would end the span and let markup follow."""
    return "`" + shown(" ".join(str(text).splitlines())).replace("`", "'") + "`"


def shown(text) -> str:
    """Text an agent or its code wrote, as a terminal may show it: every control character but
    newline and tab a `?`. An escape sequence could write the person's clipboard (OSC 52), move
    the cursor over what the harness printed, or retitle the window; a backspace could turn a
    quoted line of the board into a heading of the person's."""
    return CONTROL.sub("?", str(text))


def remove_tree(path: Path, ignore_errors: bool = False):
    """Remove a folder a box made, however deep: shutil.rmtree recurses once a level, and 1100
    nested folders raised RecursionError (past its ignore_errors, which covers OSError only);
    GNU rm walks any depth (and chmod first: a folder the box made unreadable, rm cannot empty
    unless it runs as root). Raises OSError when something is left, unless told to ignore it."""
    for argv in (["chmod", "-R", "u+rwx", "--", str(path)], ["rm", "-rf", "--", str(path)]):
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
    if os.path.lexists(path) and not ignore_errors:
        raise OSError(f"{path} could not be removed")


def replace_file(path: Path, text: str | None):
    """Whatever is at path (a file, a folder a box made there) replaced by a file of text, or gone."""
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)
    if text is not None:
        path.write_text(text)


def write_new(path: Path, data: bytes, mode: int):
    """Create a file that must not exist yet, never through a link; on disk when this returns (a
    snapshot is renamed into place after its files, and reused for good: ext4 can put a rename
    on disk before the data, and a power loss left its files empty)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # the umask's bits back


def write_atomically(path: Path, data: str | bytes):
    """Write to a temporary name beside `path` (its own: two writers at once), fsync, rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def empty_file(path: Path):
    """path an empty file, whatever a box left there. One that is empty already stays: unlinked,
    the read-only bind of it in a box running now (its `frozen`) would go with it."""
    if not (path.is_file() and not path.is_symlink() and path.stat().st_size == 0):
        replace_file(path, "")


@contextlib.contextmanager
def held(file):
    """An exclusive lock (flock) on an open file, or its descriptor, while the block runs. Let go of
    at the block's end, not only when the file closes: a child forked meanwhile holds a copy of the
    file until its exec, and with it the lock."""
    fcntl.flock(file, fcntl.LOCK_EX)
    try:
        yield file
    finally:
        fcntl.flock(file, fcntl.LOCK_UN)


def pid_alive(pid: int | None) -> bool:
    """True while the process exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_identity(pid: int) -> str | None:
    """The boot and the start time (clock ticks since boot) of process `pid`: with the pid, what
    no later process can share. None where /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return None


class OrgError(Exception):
    """A problem the user can fix: the CLI prints it as one line and exits non-zero."""


def seconds_flag(low: float, high: float):
    """An argparse type: seconds from `low` to `high`. nan, inf and words are refused with the range
    (argparse's own line on a ValueError named our function: "invalid wait_seconds value")."""
    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:  # (nan fails too)
            raise argparse.ArgumentTypeError(f"{text}: expected seconds from {low:g} to {high:g}")
        return value
    return seconds


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, like every other error."""

    def error(self, message):
        command = self.prog.removeprefix("org").strip()  # "org launch": "org: launch: ...", as OrgError's
        self.exit(2, f"org: {command + ': ' if command else ''}{message} (see --help)\n")
