"""
The lab's git objects, as the harness keeps and reads them:

    .git/objects                              the shared store: the person's history, the
                                              harness's refs and every commit it took in;
                                              read-only in every box
    .git/agent-objects/<program>/<agent>/     where that agent's box commits (its
                                              GIT_OBJECT_DIRECTORY): writable by that box alone,
                                              an alternate of the shared store (listed in
                                              objects/info/alternates), so every git reads it

An agent's unsubmitted work is loose objects: in one shared folder, any other agent's box could
delete it (`find .git -delete`), and with it that agent's branch and index. In its own folder only
its own box can. When a commit is submitted the harness takes it in (`take_in`): every object it
reaches that the shared store lacks is copied there from the agents' folders, each copy checked
against its name (the hash of its kind, size and content), so junk another agent left under that
name in its own folder spoils nothing, and the agent cannot delete it afterwards either. From then
on the harness reads only the shared store (`verified`), itself rather than through git: a pack's
copy first, as git does, then a loose one read as a plain file of bounded size.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import subprocess
import zlib
from pathlib import Path

import gitdb.exc
from git.objects.fun import tree_entries_from_data
from gitdb.db.pack import PackedDB

from org import OrgError

MAX_OBJECT_BYTES = 1 << 30  # a loose object's file, and what it inflates to
PACK_SECONDS = 600  # packing what a snapshot took in: minutes only for a huge history
AGENT_OBJECTS = "agent-objects"
HEX = "0123456789abcdef"


class ObjectError(OrgError):
    pass


def agent_objects(common_dir: str | Path, program: str, agent: str) -> Path:
    """The folder an agent's box writes its git objects into."""
    return Path(common_dir) / AGENT_OBJECTS / program / agent


class ObjectStore:
    def __init__(self, common_dir: str | Path):
        self.common = Path(common_dir)
        self.shared = self.common / "objects"
        self._packs = PackedDB(str(self.shared / "pack"))  # (read in Python: never through git)

    # --- the agents' folders -------------------------------------------------------------

    def agent_folder(self, program: str, agent: str) -> Path:
        """agent_objects(), made and listed in the shared store's alternates (once, under a lock:
        every agent's process asks as its box is made). Its pack/ and info/ are read-only in its
        box: git reads an alternate's alternates too, and its packs, which no harness code parses."""
        folder = agent_objects(self.common, program, agent)
        for sub in ("pack", "info"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        alternates = self.shared / "info" / "alternates"
        alternates.parent.mkdir(parents=True, exist_ok=True)
        line = os.path.relpath(folder, self.shared)  # relative to the store, as git reads it: the lab may move
        with open(self.common / AGENT_OBJECTS / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            listed = alternates.read_text().splitlines() if alternates.exists() else []
            if line not in listed:
                tmp = alternates.with_name(f".alternates.{os.getpid()}")
                tmp.write_text("".join(f"{entry}\n" for entry in [*listed, line]))
                tmp.replace(alternates)
        return folder

    # --- taking a commit in --------------------------------------------------------------

    def take_in(self, commit: str):
        """Copy `commit` and every object it reaches that the shared store lacks into the shared
        store, from the agents' folders, each copy checked against its name. Written children
        first: an object in the shared store has all it reaches there too, so the walk stops at
        the first it meets (the program's base, a commit taken in before)."""
        self._packs.update_cache()
        stack, seen = [(commit, b"commit", None)], set()
        while stack:
            oid, kind, data = stack.pop()
            if data is not None:  # its children are in: now it
                self.write_loose(oid, kind, data)
                continue
            if oid in seen or self.has(oid):
                continue
            seen.add(oid)
            data = self.agents_copy(oid, kind)
            stack.append((oid, kind, data))
            stack += [(child, child_kind, None) for child, child_kind in children(oid, kind, data)]

    def has(self, oid: str) -> bool:
        return (self._packs.has_object(bytes.fromhex(oid))
                or (self.shared / oid[:2] / oid[2:]).exists())

    def agents_copy(self, oid: str, kind: bytes) -> bytes:
        """A copy of `oid` from an agent's folder that holds what its name says."""
        copies = sorted((self.common / AGENT_OBJECTS).glob(f"*/*/{oid[:2]}/{oid[2:]}"))
        for path in copies:
            try:
                found = read_loose(path)
            except (ValueError, OSError, zlib.error):
                continue
            if found is not None and found[0] == kind and hash_of(*found) == oid:
                return found[1]
        if copies:
            raise ObjectError(f"object {oid[:10]}: no copy in {self.common / AGENT_OBJECTS} holds what its "
                              f"name says (a {kind.decode()} hashing to it); nothing of that commit runs")
        raise ObjectError(f"object {oid[:10]} ({kind.decode()}) is not in {self.common}")

    def write_loose(self, oid: str, kind: bytes, data: bytes):
        """A loose object in the shared store, whole or not at all (a link is atomic)."""
        path = self.shared / oid[:2] / oid[2:]
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{oid[2:]}.{os.getpid()}")
        tmp.write_bytes(zlib.compress(b"%s %d\0" % (kind, len(data)) + data))
        tmp.chmod(0o444)
        try:
            os.link(tmp, path)
        except FileExistsError:  # taken in meanwhile by another process
            pass
        finally:
            tmp.unlink()

    def pack(self, commits: list[str], root: Path, env: dict):
        """Move the shared store's loose objects of `commits` (and of their history) into a pack
        of their own (named commits, not `git repack`'s every ref: a box writes its own branches,
        and one broken there failed every repack). Borrowed objects stay where they are."""
        revs = "".join(f"{commit}\n" for commit in commits)
        for argv, stdin in ((["pack-objects", "--revs", "--unpacked", "--incremental", "--local", "-q",
                              str(self.shared / "pack" / "pack")], revs),
                            (["prune-packed", "-q"], "")):
            try:
                done = subprocess.run(["git", *argv], cwd=root, input=stdin, capture_output=True, text=True,
                                      env=env, timeout=PACK_SECONDS)
            except subprocess.TimeoutExpired:
                raise ObjectError(f"git {argv[0]} in {root} took over {PACK_SECONDS} s") from None
            if done.returncode:
                raise ObjectError(f"git {argv[0]} in {root} failed: {done.stderr.strip()[:300]}")

    # --- reading the shared store --------------------------------------------------------

    def verified(self, oid: str, kind: bytes) -> bytes:
        """An object's content from the shared store, checked against its name."""
        try:  # as git reads: a pack's copy first
            found = self.packed(oid) or read_loose(self.shared / oid[:2] / oid[2:])
        except (ValueError, OSError, zlib.error, gitdb.exc.ODBError) as e:
            raise ObjectError(f"object {oid[:10]} cannot be read from {self.common}: {e}") from None
        if found is None:
            raise ObjectError(f"object {oid[:10]} is not in {self.common}")
        if found[0] != kind or hash_of(*found) != oid:
            raise ObjectError(f"object {oid[:10]} in {self.common} does not hold what its name says (a "
                              f"{kind.decode()} hashing to it): the lab's object store was changed behind git; "
                              "nothing of that commit runs")
        return found[1]

    def packed(self, oid: str) -> tuple[bytes, bytes] | None:
        """A packed object's (kind, content), or None where no pack holds it."""
        self._packs.update_cache()  # packs made since (pack(), another process's)
        if not self._packs.has_object(bytes.fromhex(oid)):
            return None
        stream = self._packs.stream(bytes.fromhex(oid))
        return stream.type, stream.read()


def read_loose(path: Path) -> tuple[bytes, bytes] | None:
    """A loose object's (kind, content), read here rather than by git: a FIFO under its name
    would have git wait for good, and a small file may inflate to fill the memory. None where
    there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_OBJECT_BYTES:
            raise ValueError(f"its file {path} is not a plain file of at most {MAX_OBJECT_BYTES >> 20} MB")
        inflate = zlib.decompressobj()
        data = inflate.decompress(f.read(), MAX_OBJECT_BYTES + 64)
    header, _, content = data.partition(b"\0")
    kind, _, size = header.partition(b" ")
    if inflate.unconsumed_tail or not size.isdigit() or int(size) != len(content):
        raise ValueError(f"its file {path} is not a loose object of at most {MAX_OBJECT_BYTES >> 20} MB")
    return kind, content


def hash_of(kind: bytes, data: bytes) -> str:
    """An object's name (GitPython reads SHA-1 repositories only)."""
    return hashlib.sha1(b"%s %d\0" % (kind, len(data)) + data).hexdigest()


def children(oid: str, kind: bytes, data: bytes) -> list[tuple[str, bytes]]:
    """The objects a commit or tree names: (name, kind). A gitlink names another repository's.
    An object can hold anything that hashes to its name: one git would not have written is refused."""
    try:
        if kind == b"commit":
            header = [line.split(b" ") for line in data.split(b"\n\n", 1)[0].split(b"\n")]
            named = [(words[1].decode(), b"tree" if words[0] == b"tree" else b"commit")
                     for words in header if words[0] in (b"tree", b"parent")]
            if all(len(name) == 40 and set(name) <= set(HEX) for name, _ in named):
                return named
        elif kind == b"tree":
            return [(binsha.hex(), b"tree" if mode == 0o40000 else b"blob")
                    for binsha, mode, _ in tree_entries_from_data(data) if mode != 0o160000]
        else:
            return []
    except (ValueError, IndexError, UnicodeDecodeError):
        pass
    raise ObjectError(f"{kind.decode()} {oid[:10]} is not one git writes; nothing of that commit runs")
