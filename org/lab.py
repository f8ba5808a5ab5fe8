"""
The lab: the project's own git repository, seen as a place where programs run.

- a program works on branch program/<name>, created from HEAD when the program starts;
- each agent works on branch agent/<program>/<agent>/work in worktree worktrees/<program>/<agent>
  (its box may write refs only under agent/<program>/<agent>/, and objects only in a folder of its
  own; a commit it submits is taken into the shared store, out of every box's reach: org/objects.py);
- a run never executes a worktree: it executes a frozen snapshot of one commit
  (.lab/<program>/snapshots/<sha>/, written from objects checked against their names), so
  edits during a run change nothing; the base commit's is taken when the program starts;
- an experiment whose commit changes a protected path, adds what could shadow code or carries
  too much is refused (org/commit_checks.py);
- lab state (ledger, runs, mail, transcripts) lives in .lab/<program>/, ignored by git.

GitPython has no worktree API, so worktrees go through the git CLI (repo.git.worktree).
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import git
from git.objects.fun import tree_entries_from_data

from org import OrgError, held, pid_alive, replace_file, write_atomically, write_new
from org.objects import ObjectError, ObjectStore, agent_objects

# Set by git hooks and by some shells; a child that inherits them operates on the wrong repo.
GIT_ENV_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
                "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_PREFIX", "GIT_NAMESPACE", "GIT_LITERAL_PATHSPECS",
                "GIT_GLOB_PATHSPECS", "GIT_NOGLOB_PATHSPECS", "GIT_ICASE_PATHSPECS")  # (the last: what a pathspec names)
STATE_DIRS = ("runs", "snapshots", "mail", "transcripts")
# every git command of the harness runs with these on top of (and stronger than) any config
# file: nothing written into .git (hooks, fsmonitor, attributes) runs through the harness
# (a repository an agent nests in its worktree has a config of its own, its filters commands:
# git's status looks inside every submodule, and would run them as whoever runs it)
HARDENED_GIT = {"core.hooksPath": "/dev/null", "core.fsmonitor": "false", "core.attributesFile": "/dev/null",
                "diff.ignoreSubmodules": "all", "submodule.recurse": "false", "index.version": "2",
                "core.splitIndex": "false",  # (what plain_index reads: org/launch.py)
                "core.commitGraph": "false",  # (written by a person's gc: the objects, never their summary)
                # a link an agent commits is checked out as a file naming its target: made by our
                # checkout, outside every box, `org -> ../../../.lab` bound the lab into the next
                "core.symlinks": "false"}
MAX_NAME_BYTES = 255  # a file's name, on every file system a lab lies on
MAX_DEPTH = 256  # folders in folders: no project nests deeper, and a walk of ours recurses
MAX_ENTRIES = 100_000  # files and folders a commit names (a folder's tree named 3000 times, each naming 3000: 10^7)
MAX_STAGED = 100_000  # the staged blobs a takeover takes in
RETRY_SECONDS = 60  # before a take-in that failed is tried again as tool calls end
AGENT_TAKEN = 16 << 30  # what an agent's work may add to the shared objects over a program (its trees' bound)
MAX_CHECKOUT_BYTES = AGENT_TAKEN  # what the files of a branch we check out add up to (one blob under 1000 names: 1000 times)


class LabError(OrgError):
    pass


def agent_branch(program: str, agent: str) -> str:
    """An agent's working branch, in a folder of refs/ that is the agent's alone."""
    return f"{agent_refs(program, agent)}/work"


def agent_refs(program: str, agent: str) -> str:
    """The folder of an agent's branches under refs/heads/. Its box may write there and nowhere
    else in refs/: git makes a ref's lock file beside the ref, so a writable folder is needed,
    and a folder shared by two agents would let each move the other's branch."""
    return f"agent/{program}/{agent}"


def branch_owner(ref: str) -> tuple[str, str] | None:
    """(program, agent) of a ref in an agent's folder of branches (agent_refs), else None."""
    parts = ref.removeprefix("refs/heads/").split("/")
    return (parts[1], parts[2]) if len(parts) >= 4 and parts[0] == "agent" else None


def child_env(extra: dict | None = None, base: dict | None = None) -> dict:
    """An environment for a child process: ours, minus git's repo-pointing variables."""
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if k not in GIT_ENV_VARS}
    env.update(extra or {})
    return env


def hardened_git_env(filters: list[str] = ()) -> dict:
    """GIT_CONFIG_* variables carrying HARDENED_GIT (command-line scope: they win over every file),
    with every filter driver named in `filters` turned into `cat`, and no system-wide config."""
    settings = dict(HARDENED_GIT)
    for name in filters:  # a driver that attributes (say .git/info/attributes) may name
        settings.update({f"filter.{name}.smudge": "cat", f"filter.{name}.clean": "cat",
                         f"filter.{name}.process": "", f"filter.{name}.required": "false"})
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_NO_REPLACE_OBJECTS": "1", "GIT_CONFIG_COUNT": str(len(settings))}
    for i, (key, value) in enumerate(settings.items()):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return env


def scrub_git_env():
    """Strip git's repo-pointing variables from this process (e.g. when run from a hook)."""
    for name in GIT_ENV_VARS:
        os.environ.pop(name, None)


class Lab:
    def __init__(self, repo: git.Repo):
        self.repo = repo
        self.root = Path(repo.working_tree_dir)
        self._files = {}  # commit -> files(commit)
        self.refused = {}  # sha -> when its take-in (take_in_work) last failed
        self.objects = ObjectStore(repo.common_dir)
        self.harden()

    def harden(self):
        """Our git commands ignore hooks and fsmonitor and run no filter driver the repo's config
        defines now (called again before every checkout or archive: config can change)."""
        try:  # git's own reading: `[filter "x"]` and `[filter.x]` alike, and included files
            keys = self.repo.git.config("--name-only", "--get-regexp", r"^filter\.").split()
        except git.GitCommandError:  # exit status 1: no filter configured
            keys = []
        filters = sorted({key[len("filter."):key.rindex(".")] for key in keys})
        self.repo.git.update_environment(**hardened_git_env(filters))

    @classmethod
    def open(cls, path: str | Path = ".") -> "Lab":
        """The lab around `path`; LabError outside a git checkout or before the first commit."""
        try:
            repo = git.Repo(Path(path).resolve(), search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise LabError(f"not inside a git checkout: {Path(path).resolve()} "
                           "(the lab is the project's git repository)") from None
        if repo.bare:
            raise LabError(f"{repo.git_dir} is a bare repository; run from a checkout")
        if not repo.head.is_valid():
            raise LabError(f"{repo.working_tree_dir} has no commits yet; commit the project first")
        return cls(repo)

    def close(self):
        self.repo.close()  # GitPython keeps `git cat-file` children per Repo

    # --- refs and diffs ------------------------------------------------------------------

    def resolve(self, ref: str, named: str | None = None) -> str:
        """The full sha of a commit-ish; LabError naming the ref (or what it was `named`) if it does
        not exist, or names a tree or a file (`HEAD^{tree}`, `HEAD:README.md`)."""
        try:
            return self.repo.commit(ref).hexsha
        except (git.BadName, git.BadObject, ValueError, IndexError, KeyError, NotImplementedError):
            try:  # (GitPython's words for '@{-1}', 'HEAD:missing', 'HEAD@{1.day.ago}', a tree: git's reading)
                sha = self.repo.git.rev_parse("--verify", "--end-of-options", ref)
                kind = self.repo.git.cat_file("-t", sha)
            except (git.GitCommandError, ValueError):
                raise LabError(f"git ref {(named or ref)!r} does not exist in {self.root}") from None
            if kind == "commit":  # ('@{u}': git reads what GitPython cannot)
                return sha
            raise LabError(f"git ref {(named or ref)!r} names a {kind}, not a commit") from None

    def branch_problem(self, branch: str) -> str | None:
        """None if `branch` is missing or names a commit; else a line saying what its file holds
        and how to mend it. An agent's box writes its own branches, so one may hold anything."""
        if branch not in self.repo.heads:
            return None
        with contextlib.suppress(git.GitCommandError):
            self.repo.git.rev_parse("--verify", "-q", f"refs/heads/{branch}^{{commit}}")
            return None
        path = Path(self.repo.common_dir) / "refs" / "heads" / branch
        try:  # (a box makes no FIFO or link: org/seccomp.py; still, never wait on one)
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW), "rb") as f:
                what = repr(f.read(60).decode(errors="replace").strip())
        except OSError as e:
            what = f"nothing git can read ({e.strerror})"
        return (f"branch {branch} names no commit: {path} holds {what} (git can neither move nor delete it). "
                f"Remove that file, then make the branch again at its last good commit if you want it "
                f"(`git reflog {branch}` may list them; `git branch {branch} <commit>`)")

    def head(self) -> str:
        return self.repo.head.commit.hexsha

    def dirty_paths(self, paths: list[str]) -> list[str]:
        """Paths under `paths` with uncommitted changes (staged, unstaged or untracked)."""
        if not paths:  # (`git status --` with none names the whole tree)
            return []
        out = self.repo.git.status("--porcelain", "--untracked-files=all", "--", *paths)
        return [line[3:] for line in out.splitlines() if line.strip()]

    def changed_paths(self, base: str, commit: str, paths: list[str] | None = None,
                      added_or_modified: bool = False) -> list[str]:
        """Files that differ between two commits, optionally only under `paths` (or only those
        the commit adds or modifies). Read from checked objects (files()), not `git diff`: what
        the checks see is then what a snapshot of the commit holds, even if a box swaps an
        object between the two."""
        old, new = self.files(base), self.files(commit)
        names = new.keys() if added_or_modified else old.keys() | new.keys()
        return sorted(p for p in names if old.get(p) != new.get(p)
                      and (paths is None or any(p == e.rstrip("/") or p.startswith(e.rstrip("/") + "/") for e in paths)))

    # --- programs ------------------------------------------------------------------------

    def state_dir(self, program: str) -> Path:
        return self.root / ".lab" / program

    def start_program(self, program: str) -> str:
        """Create branch program/<name> from HEAD (if missing) and the program's state
        directories; returns the branch's commit."""
        branch, state = f"program/{program}", self.state_dir(program)
        try:  # the folders first: a file in their way leaves no branch behind
            for sub in STATE_DIRS:
                (state / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LabError(f"the program's state cannot be made in {state}: {e.strerror}: {e.filename}") from None
        if branch not in self.repo.heads:
            self.repo.create_head(branch, self.repo.head.commit)
        self._ignore("/.lab/", "/worktrees/")
        base = self.repo.heads[branch].commit.hexsha
        self.snapshot(base, program)  # from objects checked now, before any agent's box exists
        self.pack_loose(self.harness_refs())
        return base

    def _ignore(self, *patterns: str):
        """Keep lab state out of `git status` without touching tracked files (.git/info/exclude)."""
        exclude = Path(self.repo.common_dir) / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        missing = [p for p in patterns if p not in lines]
        if missing:
            with exclude.open("a") as f:
                f.write("".join(f"{p}\n" for p in missing))

    # --- agent worktrees -----------------------------------------------------------------

    def worktree_path(self, program: str, agent: str) -> Path:
        return self.root / "worktrees" / program / agent

    def add_worktree(self, program: str, agent: str, start: str | None = None) -> Path:
        """Branch agent/<program>/<agent>/work (from `start`, default program/<program>) checked
        out at worktrees/<program>/<agent>. Reuses both if they already exist; a branch of the
        older layout (agent/<program>/<agent>, no folder of its own) is renamed first."""
        path = self.worktree_path(program, agent)
        branch, legacy = agent_branch(program, agent), agent_refs(program, agent)
        if legacy in self.repo.heads:
            self.repo.git.branch("-m", legacy, branch)
        if path in {w["path"] for w in self.worktrees()}:
            return path
        self.prune_worktrees()
        self.harden()
        path.parent.mkdir(parents=True, exist_ok=True)
        if branch in self.repo.heads:
            with contextlib.suppress(LabError):  # its agent's work, for the checkout to read (git says if not)
                self.take_in(branch, (program, agent))
            self.check_checkout(branch)
            self.repo.git.worktree("add", str(path), branch)
        else:
            self.repo.git.worktree("add", "-b", branch, str(path), start or f"program/{program}")
        return path

    def check_checkout(self, branch: str):
        """LabError unless a checkout of `branch` writes MAX_CHECKOUT_BYTES at most: we check it out
        outside every box (no disk watch there), and a commit may name one blob of a GB under a
        thousand paths (its objects count once, the files each time)."""
        files = self.files(branch)  # (and a commit of too many files or folders is refused here)
        total = sum(self.objects.size_of(oid) for mode, oid in files.values() if mode != "160000")
        if total > MAX_CHECKOUT_BYTES:
            raise LabError(f"branch {branch}: its files add up to {total >> 20} MB, over the "
                           f"{MAX_CHECKOUT_BYTES >> 20} MB a worktree may hold; it is not checked out. Point "
                           f"the branch back at an earlier commit (`git reflog {branch}`; `git branch -f {branch} <commit>`)")

    def agent_objects(self, program: str, agent: str) -> Path:
        """The folder the agent's box writes its git objects into (org/objects.py), made."""
        return self.objects.agent_folder(program, agent)

    def admin_dir(self, worktree: str | Path) -> Path:
        """The folder of the shared .git that git made for `worktree` (.git/worktrees/<name>), checked:
        the worktree's .git file names it, and it names the worktree and this repository back. An
        agent's box may write there (HEAD, index), so a .git file pointing elsewhere (at the shared
        .git itself, say) would make all of that writable: it is refused."""
        tree, common = Path(worktree).resolve(), Path(self.repo.common_dir).resolve()
        text = (tree / ".git").read_text(errors="replace").strip() if (tree / ".git").is_file() else "(no file)"
        admin = (tree / text.removeprefix("gitdir:").strip()).resolve()

        def points_to(name: str) -> Path | None:
            with contextlib.suppress(OSError):
                return (admin / (admin / name).read_text().strip()).resolve()  # absolute or relative to it

        if admin.parent != common / "worktrees" or points_to("gitdir") != tree / ".git" or points_to("commondir") != common:
            raise LabError(f"{tree}/.git does not point to its own folder in {common}/worktrees (it reads {text[:120]!r}); "
                           f"no box is made over it. `git worktree repair {tree}` restores it")
        return admin

    def remove_worktree(self, program: str, agent: str):
        """Remove an agent's worktree; its branch (and every commit on it) stays. Its callers find
        it clean first, by a status of ours (hardened); git's own check (without --force) looks
        inside a repository nested there, so runs its filters, and refuses a worktree holding one."""
        path = self.worktree_path(program, agent)
        replace_file(self.admin_dir(path) / "locked", None)  # (its box may lock it: git then keeps it)
        try:
            self.repo.git.worktree("remove", "--force", str(path))
        except git.GitCommandError as e:
            raise LabError(f"git could not remove the worktree {path}: {e.stderr.strip()[-300:]}") from None

    def worktrees(self) -> list[dict]:
        """`git worktree list --porcelain` as dicts: path, head, branch, prunable."""
        out, current = [], {}
        for line in self.repo.git.worktree("list", "--porcelain").splitlines() + [""]:
            if not line:
                if current:
                    out.append(current)
                current = {}
                continue
            key, _, value = line.partition(" ")
            if key == "worktree":
                current = {"path": Path(value), "head": None, "branch": None, "prunable": False}
            elif key == "HEAD":
                current["head"] = value
            elif key == "branch":
                current["branch"] = value.removeprefix("refs/heads/")
            elif key == "prunable":
                current["prunable"] = True
        return out

    def prune_worktrees(self) -> list[Path]:
        """Forget worktrees whose directories are gone; returns the paths collected."""
        orphans = [w["path"] for w in self.worktrees() if w["prunable"] or not w["path"].exists()]
        self.repo.git.worktree("prune")
        return orphans

    # --- frozen snapshots ----------------------------------------------------------------

    def snapshot(self, commit: str, program: str) -> Path:
        """The tracked files of `commit`, written once into .lab/<program>/snapshots/<sha>/ and
        never modified afterwards. Written by us from objects checked against their names, not
        by `git archive` and tar: git does not check an object against its name when it reads it
        (where every box wrote, one was swapped), and links
        that a tar extraction checks one at a time can chain out of the snapshot. A snapshot
        holds regular files (gitlinks as empty folders, as `git archive` makes them) and refuses
        a commit with a link. It goes to a temporary directory that is renamed into place, so a
        crash never leaves a half-made one. Not thread-safe: callers with threads hold one lock."""
        sha = self.resolve(commit)
        dest = self.state_dir(program) / "snapshots" / sha
        if dest.exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        files = self.files(sha)  # every check before anything is written
        links = [path for path, (mode, _) in files.items() if mode == "120000"]
        if links:
            raise LabError(f"commit {sha[:10]} holds a symbolic link ({links[0]}); a snapshot holds "
                           "regular files only")
        for left in dest.parent.glob(".??????????-*-*"):  # half made by a runner killed as it wrote it: its pid is gone
            pid = left.name.split("-")[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(left, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:10]}-{os.getpid()}-", dir=dest.parent))
        try:
            write_new(tmp / ".snapshot-commit", (sha + "\n").encode(), 0o644)
            for path, (mode, oid) in files.items():
                (tmp / path).parent.mkdir(parents=True, exist_ok=True)  # our folders: no link on the way
                if mode == "160000":
                    (tmp / path).mkdir()
                else:
                    write_new(tmp / path, self.verified(oid, b"blob"), 0o755 if mode == "100755" else 0o644)
            tmp.rename(dest)
        except FileExistsError as e:  # the marker's name
            shutil.rmtree(tmp, ignore_errors=True)
            raise LabError(f"commit {sha[:10]} names {Path(e.filename).relative_to(tmp)} twice") from None
        except OSError as e:  # what the checks above missed of a name no folder can hold: the commit's, not ours
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno not in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EILSEQ):
                raise
            raise LabError(f"commit {sha[:10]}: {Path(e.filename or tmp).relative_to(tmp)} cannot be written "
                           f"({e.strerror})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # our own scratch, never a result
            raise
        self.pack_loose([sha])
        return dest

    def files(self, commit: str) -> dict[str, tuple[str, str]]:
        """{path: (mode, object name)} of a commit's tree, every tree on the way checked (kept:
        what a name holds, once checked, is what it holds for good)."""
        commit = self.resolve(commit)
        if commit not in self._files:
            self._files[commit] = self._walk(commit)
        return self._files[commit]

    def _walk(self, commit: str) -> dict[str, tuple[str, str]]:
        tree = self.verified(commit, b"commit").split(b"\n", 1)[0].removeprefix(b"tree ").decode()
        out, folders = {}, itertools.count()

        def walk(oid: str, prefix: str):
            if prefix.count("/") > MAX_DEPTH:  # (and Python's own stack: 1000 frames)
                raise LabError(f"commit {commit[:10]}: {prefix[:60]}... nests folders over {MAX_DEPTH} deep")
            if next(folders) + len(out) > MAX_ENTRIES:  # (the harness's memory and time, outside every box)
                raise LabError(f"commit {commit[:10]} names over {MAX_ENTRIES} files and folders: code, not data")
            names = set()
            for binsha, mode, name in tree_entries_from_data(self.verified(oid, b"tree")):
                mode, child = f"{mode:o}", binsha.hex()
                if name in ("", ".", "..", ".git") or "/" in name or "\\" in name:
                    raise LabError(f"commit {commit[:10]}: tree {oid[:10]} names {name!r}; git refuses such a path")
                # trees git writes when asked (update-index, mktree) that no folder can hold: the
                # snapshot would meet ENAMETOOLONG, or a file where a folder goes
                if len(os.fsencode(name)) > MAX_NAME_BYTES:
                    raise LabError(f"commit {commit[:10]}: {prefix}{name[:40]}... is a name of {len(os.fsencode(name))} "
                                   f"bytes; a file's name holds {MAX_NAME_BYTES} at most")
                if name in names:
                    raise LabError(f"commit {commit[:10]} names {prefix + name} twice")
                names.add(name)
                if mode == "40000":
                    walk(child, prefix + name + "/")
                elif mode in ("100644", "100755", "120000", "160000"):
                    out[prefix + name] = (mode, child)
                else:
                    raise LabError(f"commit {commit[:10]}: {prefix + name} has mode {mode}, which git does not make")

        walk(tree, "")
        return out

    def verified(self, oid: str, kind: bytes) -> bytes:
        """An object's content from the shared store, checked against its name (org/objects.py)."""
        try:
            return self.objects.verified(oid, kind)
        except ObjectError as e:
            raise LabError(str(e)) from None

    def take_in(self, ref: str, owner: tuple[str, str] | None = None, kind: bytes = b"commit") -> str:
        """The object `ref` names (a commit, or a `kind`), and all it reaches, copied into the shared
        store from the folder of the agent whose box made it: the one whose branch `ref` names,
        else `owner` = (program, agent); none where neither says (a person's ref: its objects are
        the shared store's already). Each is checked against its name, and an agent adds
        AGENT_TAKEN bytes at most over a program (org/objects.py). Its full sha. Git reads the ref
        only: no git outside a box reads an agent's folder."""
        try:
            sha = self.repo.git.rev_parse("--verify", "--end-of-options", ref)
        except (git.GitCommandError, ValueError):  # (ValueError: a NUL in it)
            raise LabError(f"git ref {ref!r} does not exist in {self.root}") from None
        if kind == b"commit" and self.objects.has(sha):  # in already, and all it reaches (a tag the lab has,
            return self.resolve(sha, named=ref)            # peeled; a blob, refused: GitPython reads the lab's only)
        self.copy_in(ref, sha, branch_owner(ref) or owner, kind)
        return self.resolve(sha, named=ref) if kind == b"commit" else sha  # read from the shared store now

    def copy_in(self, ref: str, sha: str, owner: tuple[str, str] | None, kind: bytes):
        """take_in's copy, past its first test: an object in the shared store has all it reaches
        there too (as each tool call ends, that is most often all there is to it). What it
        writes counts against its agent's AGENT_TAKEN, in .lab/<program>/taken-in/<agent> (what a
        box writes in its own folder counts against its disk, and once taken in, no longer does)."""
        try:
            if self.objects.met_before(sha, kind, {}):  # (as the kind it is named as: a branch naming a blob)
                return
            if owner is None:  # a person's ref: no folder to copy from, so this says what is missing
                self.objects.take_in(sha, None, 0, kind)
                return
            folder, count_file = agent_objects(self.repo.common_dir, *owner), self.state_dir(owner[0]) / "taken-in" / owner[1]
            count_file.parent.mkdir(parents=True, exist_ok=True)
            with open(count_file, "a+") as f, held(f):
                f.seek(0)
                count = int(f.read().strip() or 0)
                try:
                    self.objects.take_in(sha, folder if folder.is_dir() else None, max(0, AGENT_TAKEN - count), kind)
                finally:  # (a take-in that failed part way wrote what it wrote)
                    if self.objects.written:
                        f.seek(0)
                        f.truncate()
                        f.write(str(count + self.objects.written))
                    self.record_made_by(owner, self.objects.commits_written)
        except (ObjectError, OSError) as e:  # (OSError: a pack half made by another process, say)
            raise LabError(f"git ref {ref!r}: {e}") from None

    def record_made_by(self, owner: tuple[str, str], commits: list[str]):
        """Whose box made each commit, as it first came into the shared store from that agent's
        folder of objects (a box cannot write another's): a file each, never rewritten."""
        folder = self.state_dir(owner[0]) / "made-by"
        folder.mkdir(parents=True, exist_ok=True)
        for sha in commits:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(folder / sha, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
                (folder / sha).write_text(owner[1])

    def made_by(self, program: str, commit: str) -> str | None:
        """The agent whose box made `commit` (record_made_by), or None: the program's, a person's."""
        with contextlib.suppress(OSError):
            return (self.state_dir(program) / "made-by" / commit).read_text().strip() or None
        return None

    def take_in_work(self, worktree: Path, branch: str, index: bool = False):
        """An agent's branch and its worktree's HEAD (and with `index`, what it staged) taken in where
        they can be (take_in), for the harness's git or a person's: no git outside its box reads its
        folder. What cannot be is left for its next reader to say so, and tried again here only after
        RETRY_SECONDS (a take-in that fails may read a GB first; this runs as every tool call ends)."""
        owner = branch_owner(branch)
        if owner is None:
            return
        commits = [f"refs/heads/{branch}", *filter(None, [self.worktree_head(worktree, owner)])]
        named = [(ref, b"commit") for ref in dict.fromkeys(commits)]
        record = self.root / ".lab" / "take-in-refused.json"  # (a CLI's port makes a Lab per tool call: a junk
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):  # object of 1 GB, at each call)
            self.refused.update({sha: float(t) for sha, t in json.loads(record.read_text()).items()})
        before = dict(self.refused)
        for ref, kind in named + [(blob, b"blob") for blob in (self.staged_blobs(worktree) if index else [])]:
            try:
                sha = ref if re.fullmatch(r"[0-9a-f]{40}", ref) else \
                    self.repo.git.rev_parse("--verify", "--end-of-options", ref)
                if time.time() - self.refused.get(sha, -RETRY_SECONDS) >= RETRY_SECONDS:
                    self.copy_in(ref, sha, owner, kind)
                    self.refused.pop(sha, None)
            except LabError:
                self.refused[sha] = time.time()
            except git.GitCommandError:  # no such ref: nothing to take in
                pass
        if self.refused != before:
            with contextlib.suppress(OSError):  # (whole or not at all: each process reads it as another writes)
                write_atomically(record, json.dumps({k: t for k, t in self.refused.items() if time.time() - t < RETRY_SECONDS}))

    def worktree_head(self, worktree: Path, owner: tuple[str, str]) -> str | None:
        """What an agent's worktree's HEAD names, where that is a branch of the agent's or a
        commit's name; None for anything else its box wrote there (another's branch, a NUL, `:/x`:
        nothing else reaches git)."""
        try:
            head = os.open(self.admin_dir(worktree) / "HEAD", os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            with os.fdopen(head, "rb") as f:
                named = f.read(300).decode(errors="replace").strip().removeprefix("ref: ")
        except (OSError, LabError):
            return None
        mine = rf"[0-9a-f]{{40}}|refs/heads/{re.escape(agent_refs(*owner))}/[\w./-]+"
        return named if re.fullmatch(mine, named, re.ASCII) else None

    def staged_blobs(self, worktree: Path) -> list[str]:
        """The blobs an agent's index (a file its box writes) stages: the first MAX_STAGED, read
        as git lists them (a sparse index's folders expanded: 10 KB of them named 4M files)."""
        try:  # git reads the index the harness opened, a plain file (a FIFO swapped in hung it, and `org release`)
            fd = os.open(self.admin_dir(worktree) / "index", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, LabError):
            return []
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            env = child_env({**hardened_git_env(), "GIT_INDEX_FILE": f"/dev/fd/{fd}"})
            with subprocess.Popen(["git", "ls-files", "-s", "-z"], cwd=self.root, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, pass_fds=(fd,)) as git_:
                listed = git_.stdout.read(MAX_STAGED * 512)
                git_.kill()
        except OSError:
            return []
        finally:
            os.close(fd)
        blobs = (line.split(b" ")[1].decode() for line in listed.split(b"\0") if line.startswith(b"100"))
        return list(dict.fromkeys(itertools.islice(blobs, MAX_STAGED)))

    def pack_loose(self, commits: list[str]):
        """Move the shared store's loose objects of `commits` (and their history) into a pack."""
        try:
            self.objects.pack(commits, self.root, child_env(self.repo.git.environment()))
        except ObjectError as e:
            raise LabError(str(e)) from None

    def harness_refs(self) -> list[str]:
        """The commits of every ref but the agents' own (refs/heads/agent/: their boxes write
        those), for pack_loose. A ref git cannot read is skipped (git says so on stderr)."""
        lines = self.repo.git.for_each_ref("--format=%(objectname) %(refname)").splitlines()
        return [self.head(), *(sha for sha, _, name in (line.partition(" ") for line in lines)
                               if not name.startswith("refs/heads/agent/"))]

