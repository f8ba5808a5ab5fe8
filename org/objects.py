"""
The lab's git objects, as the harness keeps and reads them:

    .git/objects                              the shared store: the person's history, the
                                              harness's refs and every commit it took in;
                                              read-only in every box
    .git/agent-objects/<program>/<agent>/     where that agent's box commits: its
                                              GIT_OBJECT_DIRECTORY, the shared store its
                                              alternate; writable by that box alone, and read
                                              by no other box and by no git outside one

An agent's unsubmitted work is loose objects: in one shared folder, any other agent's box could
delete it (`find .git -delete`), and with it that agent's branch and index. In its own folder only
its own box can. No git outside that box reads the folder: git reads an object from the first
store holding a file under its name, and checks no name, so a junk copy in one agent's folder
would stand for another's work; and before it writes an object git looks in every store it
reads, and writes nothing where one has a file under that name, so the harness's merges and the
person's commits would have stood on files an agent can change. The harness takes an agent's
commit in instead (`take_in`): as each of its tool calls ends, every 2 s while a CLI's box runs,
when it is submitted, and before `org stop`, `launch`, `clean` or `takeover` reads the agent's
branch, every object it reaches that the shared store lacks is
copied there from the agent's folder, checked against its name (the hash of its kind, size and
content), children first. The harness reads the shared store itself (`verified`): a pack's copy
first, as git does, then a loose one read as a plain file of bounded size.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zlib
from pathlib import Path

import gitdb.exc
from git.objects.fun import tree_entries_from_data
from gitdb.db.pack import PackedDB

from org import OrgError

MAX_OBJECT_BYTES = 1 << 30    # a loose object's file, and what it inflates to
MAX_LISTING_BYTES = 8 << 20   # a commit or a tree (300,000 entries): git writes far smaller ones
MAX_TAKEN_BYTES = 8 << 30     # what one take_in inflates in all, junk copies included
MAX_TAKEN_OBJECTS = 500_000   # what one take_in walks (names on its stack)
# what an agent's object may inflate to, past a MB, for each byte of its file: code and text
# compress 3-10x; a MB of zeros named anew by each commit made the harness inflate a GB (5.8 s of
# CPU, outside every box) at each take-in, every 2 s
MAX_INFLATION = 64
DISK_RESERVE = 8 << 30        # free disk no take_in writes into (an agent's box's: org/sandbox.py)
PACK_SECONDS = 600  # packing what a snapshot took in: minutes only for a huge history
AGENT_OBJECTS = "agent-objects"
TREE_MODES = {0o100644: b"blob", 0o100755: b"blob", 0o120000: b"blob", 0o40000: b"tree", 0o160000: b"commit"}
NAMED = re.compile(rb"^(tree|parent) ([0-9a-f]{40})$", re.M)  # the objects a commit's header names
FIELDS = re.compile(rb"^(tree|parent) ", re.M)                  # ... every line that would name one


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
        self.taken = self.written = 0  # what the last take_in read, and wrote
        self.commits_written = []  # and the commits it wrote (whose box made them: Lab.made_by)
        self.junk = set()  # (path, inode, size, mtime) of each agent's copy found junk, never read again

    def agent_folder(self, program: str, agent: str) -> Path:
        """agent_objects(), made, with its pack/ and info/ (read-only in its box: packs and
        alternates its own git would read). A folder its box made unreadable is mended."""
        folder = agent_objects(self.common, program, agent)
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
        for sub in ("pack", "info"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return folder

    # --- taking a commit in --------------------------------------------------------------

    def take_in(self, oid: str, owner: Path | None, allowance: int, kind: bytes = b"commit") -> int:
        """Copy `oid` (a commit, or a `kind`) and every object it reaches that the shared store
        lacks into the shared store, from the folder `owner` of the agent whose box made them (no
        folder: nothing is copied), each copy checked against its name; `allowance` bytes at most.
        Written children first: an object in the shared store has all it reaches there too, so the
        walk stops at the first it meets (the program's base, a commit taken in before). The walk
        holds names only, each object read again as it is written. Returns the bytes it wrote."""
        folders = [owner] if owner else []
        stack, seen, self.taken, self.written, pushed = [(oid, kind, False)], {}, 0, 0, 1
        self.commits_written = []
        while stack:
            name, kind, expanded = stack.pop()
            if not expanded and self.met_before(name, kind, seen):
                continue
            if kind == b"blob" and not expanded:  # it names nothing: read once, as it is written
                seen[name] = kind
                stack.append((name, kind, True))
                continue
            data = self.agents_copy(name, kind, folders)
            if expanded:  # all it names is in: now it
                if self.written + len(data) > allowance:
                    raise ObjectError(f"taking in {oid[:10]} would put more than the {gib(allowance)} this agent "
                                      "may still add into the lab's objects; nothing more of its work is taken in")
                self.write_loose(name, kind, data)
                self.written += len(data)  # (counted as it goes: a take-in that fails later wrote this)
                self.commits_written += [name] if kind == b"commit" else []
                continue
            seen[name] = kind
            named = [(child, child_kind, False) for child, child_kind in children(name, kind, data)
                     if not self.met_before(child, child_kind, seen)]
            pushed += len(named)
            if pushed > MAX_TAKEN_OBJECTS:
                raise ObjectError(f"taking in {oid[:10]} reached over {MAX_TAKEN_OBJECTS} objects; nothing of it runs")
            stack += [(name, kind, True), *named]
        return self.written

    def met_before(self, oid: str, kind: bytes, seen: dict[str, bytes]) -> bool:
        """Whether the walk has `oid` already, as the `kind` its parent names: a commit naming a
        blob as its parent was taken in, and every pack of the lab's history failed after."""
        found = seen.get(oid) or self.kind_of(oid)
        if found is not None and found != kind:
            raise ObjectError(f"object {oid[:10]} is a {found.decode()}, named as a {kind.decode()}; "
                              "nothing of that commit runs")
        return found is not None

    def kind_of(self, oid: str) -> bytes | None:
        """The kind of an object in the shared store (its header only), or None where it lacks it."""
        if self.is_packed(oid):
            return self._packs.info(bytes.fromhex(oid)).type
        try:
            return read_loose(self.shared / oid[:2] / oid[2:], header_only=True)[0]
        except TypeError:  # (None: no such file)
            return None
        except (ValueError, OSError, zlib.error) as e:
            raise ObjectError(f"object {oid[:10]} cannot be read from {self.common}: {e}") from None

    def size_of(self, oid: str) -> int:
        """The size of an object in the shared store, from its header (a pack's, or a loose one's)."""
        if self.is_packed(oid):
            return self._packs.info(bytes.fromhex(oid)).size
        try:
            return int(read_loose(self.shared / oid[:2] / oid[2:], header_only=True)[1])
        except (TypeError, ValueError, OSError, zlib.error) as e:  # (None: no such file)
            raise ObjectError(f"object {oid[:10]} cannot be read from {self.common}: {e}") from None

    def has(self, oid: str) -> bool:
        return (self.shared / oid[:2] / oid[2:]).exists() or self.is_packed(oid)

    def is_packed(self, oid: str) -> bool:
        if self._packs.has_object(bytes.fromhex(oid)):
            return True
        self._packs.update_cache()  # a pack made since (another process's)
        return self._packs.has_object(bytes.fromhex(oid))

    def agents_copy(self, oid: str, kind: bytes, folders: list[Path]) -> bytes:
        """A copy of `oid` in one of `folders` that holds what its name says. What every copy
        read inflates to counts against MAX_TAKEN_BYTES, junk included."""
        copies = [path for path in (folder / oid[:2] / oid[2:] for folder in folders) if path.exists()]
        for path in copies:
            seen = None
            try:
                info = path.stat()
                seen = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
                if seen in self.junk:  # (a GB inflated, maybe: not again for each new commit naming it)
                    continue
                if bomb(path, info.st_size):
                    raise ObjectError(f"object {oid[:10]}: its file in {path.parent.parent} would inflate past "
                                      f"{MAX_INFLATION}x its size; nothing of that commit runs")
                found = read_loose(path, MAX_OBJECT_BYTES if kind == b"blob" else MAX_LISTING_BYTES)
            except (ValueError, OSError, zlib.error):
                found = None
            self.taken += len(found[1]) if found else 0
            if self.taken > MAX_TAKEN_BYTES:
                raise ObjectError(f"taking in {oid[:10]} read over {MAX_TAKEN_BYTES >> 30} GB of objects; "
                                  "nothing of that commit runs")
            if found is not None and found[0] == kind and hash_of(*found) == oid:
                return found[1]
            if seen:  # junk: not read again while its file is the same
                if len(self.junk) > MAX_TAKEN_OBJECTS:
                    self.junk.clear()
                self.junk.add(seen)
        if copies:
            raise ObjectError(f"object {oid[:10]}: no copy in {copies[0].parent.parent} holds what its name "
                              f"says (a {kind.decode()} hashing to it); nothing of that commit runs")
        raise ObjectError(f"object {oid[:10]} ({kind.decode()}) is not in {self.common}")

    def write_loose(self, oid: str, kind: bytes, data: bytes):
        """A loose object in the shared store, whole or not at all (a link is atomic), never into
        the disk an agent's box keeps clear (org/sandbox.py's AGENT_DISK_RESERVE)."""
        path = self.shared / oid[:2] / oid[2:]
        try:
            if shutil.disk_usage(self.shared).free < DISK_RESERVE + len(data):
                raise ObjectError(f"object {oid[:10]} is not taken in: the disk has less than {gib(DISK_RESERVE)} free")
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{oid[2:12]}.", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(zlib.compress(b"%s %d\0" % (kind, len(data)) + data))
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, path)
            except FileExistsError:  # taken in meanwhile by another thread or process
                pass
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise ObjectError(f"object {oid[:10]} cannot be written into {self.shared}: {e.strerror}") from None

    def pack(self, commits: list[str], root: Path, env: dict):
        """Move the shared store's loose objects of `commits` (and of their history) into a pack
        of their own (named commits, not `git repack`'s every ref: a box writes its own branches,
        and one broken there failed every repack)."""
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


def read_loose(path: Path, limit: int = MAX_OBJECT_BYTES, header_only: bool = False) -> tuple[bytes, bytes] | None:
    """A loose object's (kind, content) of at most `limit` bytes, read here rather than by git: a
    FIFO under its name would have git wait for good, and a small file may inflate to fill the
    memory. None where there is no such file. `header_only`: (kind, the digits of its size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise ValueError(f"its file {path} is not a plain file of at most {limit >> 20} MB")
        inflate = zlib.decompressobj()
        head = inflate.decompress(f.read(4096) if header_only else f.read(), 64)  # (its header first)
    header, _, content = head.partition(b"\0")
    kind, _, size = header.partition(b" ")
    if header_only and size.isdigit():
        return kind, size
    more = int(size) + 1 - len(content) if size.isdigit() and int(size) <= limit else 0
    if more > 0:  # (no further than its header says: one that says 1 MB and inflates to 1 GB stops here)
        content += inflate.decompress(inflate.unconsumed_tail, more)
    if more <= 0 or inflate.unconsumed_tail or int(size) != len(content):
        raise ValueError(f"its file {path} is not a loose object of at most {limit >> 20} MB")
    return kind, content


def bomb(path: Path, file_bytes: int) -> bool:
    """Whether a loose object's header says it inflates past MAX_INFLATION times its file (its
    first bytes inflated only)."""
    header = read_loose(path, MAX_OBJECT_BYTES, header_only=True)
    size = int(header[1]) if header and header[1].isdigit() else 0
    return size > max(1 << 20, MAX_INFLATION * file_bytes)


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GB"


def hash_of(kind: bytes, data: bytes) -> str:
    """An object's name (GitPython reads SHA-1 repositories only)."""
    return hashlib.sha1(b"%s %d\0" % (kind, len(data)) + data).hexdigest()


def children(oid: str, kind: bytes, data: bytes) -> list[tuple[str, bytes]]:
    """The objects a commit or tree names: (name, kind). A gitlink names another repository's.
    An object holds anything that hashes to its name: one that git would not write is refused."""
    try:
        if kind == b"commit":
            header = data.split(b"\n\n", 1)[0]
            named, fields = NAMED.findall(header), FIELDS.findall(header)
            if header.startswith(b"tree ") and len(named) == len(fields) and fields.count(b"tree") == 1:
                return [(name.decode(), b"tree" if field == b"tree" else b"commit") for field, name in named]
        elif kind == b"tree":
            entries = tree_entries_from_data(data)
            if all(mode in TREE_MODES for _, mode, _ in entries):
                return [(binsha.hex(), TREE_MODES[mode]) for binsha, mode, _ in entries if mode != 0o160000]
        else:
            return []
    except (ValueError, IndexError):
        pass
    raise ObjectError(f"{kind.decode()} {oid[:10]} is not one git writes; nothing of that commit runs")
