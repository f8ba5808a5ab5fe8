"""
A person in a launched org: `org attach` (the grid in this terminal), `org takeover AGENT` (the
agent pauses at its next safe point; its pane becomes the person's shell in its worktree, or,
for Claude Code, its own prompt), `org release AGENT` (handed back, with a message saying what
the person changed: their commits and the worktree's diff since the takeover), and `org say`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shlex
import shutil
import tempfile
from pathlib import Path

from org import OrgError, shown
from org.agents.control import Control
from org.cgroups import agent_pool, members, stopped, thaw_left
from org.launch import TAKEN_OVER, attach, ended_for_good, git, mend_worktree, pane_path, person_identity, plain_index
from org.lab import Lab, agent_branch, hardened_git_env
from org.mail import HUMAN, Mail, now, write_atomically
from org.panes import RELEASE_KEY, TAKEOVER_KEY, Pane
from org.workspace import ProgramSite, open_site


def add_takeover_commands(sub):
    p = sub.add_parser("attach", help="attach this terminal to a program's tmux grid")
    p.add_argument("program", nargs="?")
    p.set_defaults(func=cmd_attach)

    for name, text in (("takeover", "pause an agent at its next safe point and take over its pane"),
                       ("release", "hand a taken-over pane back; the agent is told what you changed")):
        p = sub.add_parser(name, help=text)
        p.add_argument("agent")
        p.add_argument("--program", help="default: $NANOLAB_PROGRAM, or the one program running here")
        if name == "takeover":
            p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the safe point")
        else:
            p.add_argument("--message", help="a note for the agent, sent with the diff")
        p.set_defaults(func=cmd_takeover if name == "takeover" else cmd_release)

    p = sub.add_parser("say", help="drop a message from you into an agent's inbox")
    p.add_argument("agent")
    p.add_argument("text", nargs="+")
    p.add_argument("--program")
    p.set_defaults(func=cmd_say)


def cmd_attach(args) -> int:
    attach(open_site(args.program))
    return 0


def cmd_takeover(args) -> int:
    launch = open_site(args.program)
    agent = known_agent(launch, args.agent)
    grid = launch.grid
    if not grid.running():
        raise OrgError(f"{launch.name} is not running; `org launch {launch.name}` first")
    if grid.find(agent, taken=True):
        raise OrgError(f"{agent} is already taken over; `org release {agent}` hands it back")
    control, tree = Control(launch.lab_dir, agent), launch.worktree(agent)
    control.pause(TAKEN_OVER)  # first: nothing the agent left in its worktree can keep it from pausing
    backend = next(a.backend for a in launch.program.org.agents if a.name == agent)
    # Claude Code's pane is handed over as it is (its Stop hook ends its turn for the person);
    # every other agent is waited for, so the person's shell never races the agent's edits
    if backend != "claude-code" and launch.keeper(agent).get("state") == "running" and control.state().get("state") != "stopped":
        print(f"asking {agent} to pause at its next safe point...", flush=True)
        if not control.wait_for_state("paused", args.timeout):
            raise OrgError(f"{agent} did not reach a safe point in {args.timeout:g}s; the pause stands: "
                           f"`org takeover {agent}` again takes the pane once it has paused")
    # what it has is read with nothing of its boxes running: Claude Code's lives on (and the
    # snapshot's git could write what a process of it grew meanwhile, 16 GB at most)
    pool = agent_pool(launch.root, launch.program, agent)
    with stopped([pool] if pool else []):
        try:
            mended = take_in(launch, agent)
            head = git(tree, "rev-parse", "HEAD")
            nested, said = set_aside_nested(launch, agent)  # first: the snapshot's `git add` looks inside them
        except OrgError:
            control.resume()  # (no record: `org release` could not lift the pause)
            raise
        objects = snapshot_objects(launch, agent)
        shutil.rmtree(objects, ignore_errors=True)  # (a crash's, or an earlier try's)
        taken = snapshot_or_why(tree, objects)
    write_atomically(launch.lab_dir / "takeover" / f"{agent}.json",
                     json.dumps({**taken, "head": head, "at": now(), "nested": nested}))
    for line in mended + said:
        print(f"mended: {line}")
    hint = f"TAKEN OVER · C-b {RELEASE_KEY} or `org release {agent}` hands it back"
    if backend == "claude-code":  # the CLI itself is the person's: its Stop hook lets it stop
        grid.take_over(agent, None, hint)
        print(f"{agent} pauses when its current turn ends; then its pane is yours: Claude Code "
              f"waits at its prompt. `org release {agent}` hands it back.")
        return 0
    grid.take_over(agent, person_shell(launch, agent), hint)
    print(f"{agent} is paused; its pane is yours: a shell in {tree}. "
          f"`org release {agent}` hands it back, telling {agent} what you changed.")
    return 0


def take_in(launch: ProgramSite, agent: str) -> list[str]:
    """The agent's branch, HEAD and what it staged, into the shared object store: the person's
    git reads no agent's own objects (org/objects.py), and their commit needs what it staged.
    And its worktree's git mended (launch.mend_worktree), each mend said: the person's git is
    not boxed, and commits wherever HEAD points, which a box may have set to the program's
    branch or a teammate's."""
    with contextlib.closing(Lab.open(launch.root)) as lab:
        tree, staged, branch = launch.worktree(agent), False, agent_branch(launch.name, agent)
        with contextlib.suppress(OrgError):  # (an index no box's git writes: its blobs are not listed)
            staged = plain_index(lab.admin_dir(tree) / "index")
        lab.take_in_work(tree, branch, index=staged)
        return mend_worktree(lab, tree, branch)


def set_aside_nested(launch: ProgramSite, agent: str) -> tuple[list[list[str]], list[str]]:
    """Each repository nested in the agent's worktree where its index or HEAD names a submodule,
    its .git renamed beside it while the person holds the pane: git outside a box looks inside a
    populated submodule (`git add -A` of the takeover's snapshot always; the person's status where
    its .gitmodules says `ignore = none`, stronger than any config of ours) and runs that
    repository's own config, a filter (any command), as the person. With no .git there, git looks
    at nothing inside. ([[name, what its .git is called now], ...], what to tell the person);
    `org release` puts them back. OrgError, with all put back, where one cannot be moved."""
    tree = launch.worktree(agent)
    listed = git(tree, "ls-files", "-z", "--stage", raw=True) + b"\0" + git(tree, "ls-tree", "-r", "-z", "HEAD", raw=True)
    names = sorted({line.split(b"\t", 1)[1] for line in listed.split(b"\0") if line.startswith(b"160000 ")})
    moved, said = [], []
    for name in map(os.fsdecode, names):
        folder = tree / name
        if os.path.realpath(folder) != os.path.join(os.path.realpath(tree), name) or not os.path.lexists(folder / ".git"):
            continue  # (a link on the way: what lies there is not the worktree's; nothing there: nothing runs)
        # beside the worktree (the same disk; hidden from every box, as all worktrees are; no
        # snapshot's `git add -A` sees it; a name its box could not have chosen)
        aside = str(tree.parent / f".{agent}.set-aside-{secrets.token_hex(6)}")
        try:
            os.rename(folder / ".git", aside)
        except OSError as e:
            put_back_nested(launch, agent, moved)
            raise OrgError(f"{agent}'s worktree nests a repository at {name}, whose config git would run as you; "
                           f"its .git could not be set aside ({e.strerror}), and nothing was taken over") from None
        moved.append([name, aside])
        said.append(f"{agent}'s worktree nests a repository at {name} (a submodule): its .git is {aside} "
                    f"while the pane is yours (git would run its config as you); `org release` puts it back")
    return moved, said


def put_back_nested(launch: ProgramSite, agent: str, moved: list[list[str]]) -> list[str]:
    """What set_aside_nested renamed, back (where nothing has taken its place); what was not, said."""
    tree, said = launch.worktree(agent), []
    for name, aside in moved:
        home = tree / name / ".git"
        if not os.path.lexists(aside):
            continue  # (the person moved or removed it: theirs to say)
        try:
            if os.path.lexists(home):
                raise FileExistsError(errno.EEXIST, "something else is there now")
            os.rename(aside, home)
        except OSError as e:
            said.append(f"the repository nested at {name} was set aside during the takeover as {aside}, "
                        f"and could not be put back ({e.strerror}): rename it to {home} yourself")
    return said


def thaw_agent(launch: ProgramSite, agent: str):
    """What an `org takeover` killed mid-snapshot left frozen (org/cgroups.py: stopped)."""
    pool = agent_pool(launch.root, launch.program, agent)
    thaw_left(members([pool]) if pool else set())


def person_shell(launch: ProgramSite, agent: str) -> Pane:
    """An interactive shell in the agent's worktree, with the person's git identity (or a
    plain "human" one if none is configured) and `org` on PATH."""
    tree = launch.worktree(agent)
    banner = [f"── {agent} is paused: this pane is yours ──",
              f"a shell in {tree} (branch {agent_branch(launch.name, agent)})",
              f"`org release {agent}` (or C-b {RELEASE_KEY}) hands it back, with a note of what you changed"]
    # (not the agent's Codex session: its home is the box's to write, .env and all, and a Codex
    # started here from it would run what the agent left there, unboxed, as the person)
    shell = os.environ.get("SHELL") or "/bin/bash"
    script = "printf '%s\\n' " + " ".join(shlex.quote(line) for line in banner) + f"; exec {shlex.quote(shell)} -i"
    env = {"NANOLAB_AGENT": agent, "NANOLAB_PROGRAM": launch.name, "NANOLAB_LAB": str(launch.root),
           "PATH": pane_path(), **person_identity(launch.root), **person_git_env()}
    return Pane(agent, ["sh", "-c", script], tree, env)


def person_git_env() -> dict:
    """The person's git in a taken-over pane, as hardened as the harness's own (the system's config
    kept): the worktree is the agent's. A repository it nests there, its gitlink in the index its
    box wrote, ran its own fsmonitor or filter through the person's `git status`, as the person."""
    return {k: v for k, v in hardened_git_env().items() if k != "GIT_CONFIG_NOSYSTEM"}


def cmd_release(args) -> int:
    launch = open_site(args.program)
    agent = known_agent(launch, args.agent)
    if not (launch.lab_dir / "takeover" / f"{agent}.json").exists():
        raise OrgError(f"{agent} is not taken over (`org takeover {agent}` takes it over)")
    message = release(launch, agent, args.message)
    grid = launch.grid
    person = grid.find(agent, taken=True)
    grid.hand_back(agent, f"C-b {TAKEOVER_KEY} takes over")
    backend = next(a.backend for a in launch.program.org.agents if a.name == agent)
    if backend == "claude-code" and person:  # idle at its prompt: wake it; its Stop hook hands it the mail
        grid.type_into(person["id"], "(harness) You are handed back. Your inbox has a message saying what "
                                     "the person changed; read it (org mail read) and carry on.")
    print(f"{agent} resumes; it was told: {message.splitlines()[0]}")
    return 0


def release(launch: ProgramSite, agent: str, note: str | None = None) -> str:
    """Resume the agent with a message saying what the person changed in its worktree
    (commits and uncommitted edits, as one diff against the takeover's snapshot)."""
    record_path = launch.lab_dir / "takeover" / f"{agent}.json"
    taken = json.loads(record_path.read_text())
    thaw_agent(launch, agent)
    mended = take_in(launch, agent)  # a CLI's commits since (its pane was handed over as it was)
    objects = snapshot_objects(launch, agent)
    message = "\n".join([change_note(launch.worktree(agent), taken, note, objects), *mended])
    message = "\n".join([message, *put_back_nested(launch, agent, taken.get("nested", []))])
    Control(launch.lab_dir, agent).resume(message)  # the mail first, then the pause lifts
    record_path.unlink()
    shutil.rmtree(objects, ignore_errors=True)
    return message


def snapshot_objects(launch: ProgramSite, agent: str) -> Path:
    return launch.lab_dir / "takeover" / f"{agent}.objects"


def change_note(tree: Path, taken: dict, note: str | None, objects: Path, limit: int = 8000) -> str:
    head = f"A person took over your pane at {taken['at']} and handed it back at {now()}."
    text = head + (f"\nTheir note: {note}" if note else "")
    if not tree.exists():
        return text + "\nYour worktree is gone (`org launch` makes it again from your branch)."
    diff, left_out, why = uncommitted_diff(tree, taken, objects)
    commits = git(tree, "log", "--oneline", f"{taken['head']}..HEAD")
    if why:
        text += f"\nTheir uncommitted changes cannot be shown as a diff ({why}); git status below has their names."
    if left_out:
        names = sorted(os.fsencode(n).decode(errors="replace") for n in left_out)
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        text += (f"\nFiles the diff below does not show (over {SNAPSHOT_FILE_BYTES >> 20} MB, or past "
                 f"{SNAPSHOT_BYTES >> 20} MB in all): {', '.join(names[:20])}{more}")
    dirty = git(tree, "status", "--porcelain")
    if not diff and not commits and not (why and dirty):
        return text + f"\nThey changed nothing in your worktree{' that a diff shows' if left_out else ''}; carry on."
    if commits:
        text += f"\nTheir commits on your branch:\n{commits}"
    if dirty:
        text += "\nSome of their changes are not committed (git status below): review them, then commit or revert.\n" + dirty
    if not diff:
        return text
    cut = f"\n[... diff cut at {limit} characters]" if len(diff) > limit else ""
    return text + f"\nWhat they changed in your worktree (git diff):\n{diff[:limit]}{cut}"


def uncommitted_diff(tree: Path, taken: dict, objects: Path) -> tuple[str, set[str], str | None]:
    """(the diff from the takeover's snapshot to one made now, the files either left out, why there
    is no diff). Both sides go without what either left out: a file that only grew past the bounds
    is no change of the person's (nor one a record of older code holds whole)."""
    left_out, why = set(taken.get("left_out", ())), taken.get("why")
    if not taken.get("tree") or why:
        return "", left_out, why or "no snapshot was made at the takeover"
    now_taken = snapshot_or_why(tree, objects)
    left_out.update(now_taken.get("left_out", ()))
    if now_taken.get("why"):
        return "", left_out, now_taken["why"]
    env = scratch_store(tree, objects)
    before, after = (without(tree, t, left_out, env) for t in (taken["tree"], now_taken["tree"]))
    return git_diff(tree, before, after, env), left_out, None


def git_diff(tree: Path, before: str, after: str, env: dict) -> str:
    """The diff between two snapshots; its names alone where the patch takes past GIT_SECONDS (git's
    diff of two files of random lines grows with the square of their length: 26 s at 2 MB)."""
    try:  # (a file past 1 MB is a binary one here: its patch is a line)
        return git(tree, "-c", "core.bigFileThreshold=1m", "diff", "--no-ext-diff", "--no-textconv", "--stat",
                   "--patch", before, after, env=env)
    except OrgError:
        return git(tree, "diff", "--no-ext-diff", "--name-status", before, after, env=env)


def without(tree: Path, snapshot: str, names: set[str], env: dict) -> str:
    """The snapshot's tree with these names taken out."""
    if not names:
        return snapshot
    with tempfile.TemporaryDirectory() as tmp:
        env = {**env, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        specs = Path(tmp) / "pathspecs"
        specs.write_bytes(b"\0".join(b":(literal)" + os.fsencode(n) for n in sorted(names)))
        git(tree, "read-tree", snapshot, env=env)
        git(tree, "rm", "-q", "-f", "--cached", "--ignore-unmatch", "-r", f"--pathspec-from-file={specs}",
            "--pathspec-file-nul", env=env)
        return git(tree, "write-tree", env=env)


SNAPSHOT_FILE_BYTES = 8 << 20  # a file larger than this is left out of a takeover's snapshot (and its diff),
SNAPSHOT_BYTES = 256 << 20     # and then the largest, until what is left holds this much at most,
SNAPSHOT_LEFT_OUT = 1000       # unless more than this many are left out: then the snapshot is none
SNAPSHOT_LISTING = 64 << 20    # nor where listing the worktree's files takes more bytes than this


def snapshot_or_why(tree: Path, objects: Path) -> dict:
    """{"tree", "left_out"} of a new snapshot in `objects`, or {"why": it cannot be made}: the
    worktree is the agent's, and a name git refuses, a nested repository with no commit, a tree
    of a million files or one that grew while it was read must not keep the person out."""
    try:
        snapshot, left_out = snapshot_tree(tree, objects)
        held = sum(f.stat().st_size for f in objects.rglob("*") if f.is_file())
        if held > 4 * SNAPSHOT_BYTES:  # two snapshots' worth, and more (read after its sizes were: where no cgroup stopped its boxes)
            raise OrgError(f"the worktree grew while it was read: {held >> 20} MB of it")
        return {"tree": snapshot, "left_out": left_out}
    except (OrgError, OSError, MemoryError) as e:
        shutil.rmtree(objects, ignore_errors=True)
        return {"tree": None, "why": str(e)[:300]}


def snapshot_tree(tree: Path, objects: Path) -> tuple[str, list[str]]:
    """A git tree object of the worktree, committed or not, and the files left out of it. A
    scratch index (the worktree's own is left alone) and a scratch object store, `objects`, that
    the release removes: what the agent left there went into the lab's shared store before, uncounted
    and for good (16 GB of worktree, an agent's bound). A file past SNAPSHOT_FILE_BYTES, or past
    SNAPSHOT_BYTES in all, stays as HEAD has it (or out, if HEAD has none)."""
    objects.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), **scratch_store(tree, objects)}
        git(tree, "read-tree", "HEAD", env=env)
        listed = git(tree, "ls-files", "-z", "--cached", "--others", "--exclude-standard", env=env, raw=True)
        if len(listed) > SNAPSHOT_LISTING:
            raise OrgError(f"its files' names alone take {len(listed) >> 20} MB")
        left_out = too_large(os.fsencode(tree), sorted(set(filter(None, listed.split(b"\0")))))
        if len(left_out) > SNAPSHOT_LEFT_OUT:
            raise OrgError(f"{len(left_out)} of its files are past {SNAPSHOT_FILE_BYTES >> 20} MB, or "
                           f"{SNAPSHOT_BYTES >> 20} MB in all")
        specs = Path(tmp) / "pathspecs"
        specs.write_bytes(b"\0".join([b".", *(b":(exclude,literal)" + name for name in left_out)]))
        git(tree, "add", "-A", f"--pathspec-from-file={specs}", "--pathspec-file-nul", env=env)
        return git(tree, "write-tree", env=env), [os.fsdecode(name) for name in left_out]  # (its bytes, in JSON)


def scratch_store(tree: Path, objects: Path) -> dict:
    """git's environment to write into `objects`, and read the lab's shared store too."""
    common = Path(tree, git(tree, "rev-parse", "--git-common-dir")) / "objects"  # (the worktree's pointers are frozen)
    return {"GIT_OBJECT_DIRECTORY": str(objects.resolve()),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": json.dumps(str(common), ensure_ascii=False)}  # (quoted: a path's ':')


def too_large(tree: bytes, names: list[bytes]) -> list[bytes]:
    """The files a snapshot leaves out: each past SNAPSHOT_FILE_BYTES, then the largest of the rest
    until they hold SNAPSHOT_BYTES at most (a sparse file by its size: git reads all of it)."""
    sizes = {}
    for name in names:
        with contextlib.suppress(OSError):
            sizes[name] = os.lstat(os.path.join(tree, name)).st_size
    out = {name for name, size in sizes.items() if size > SNAPSHOT_FILE_BYTES}
    total = sum(size for name, size in sizes.items() if name not in out)
    for name in sorted(set(sizes) - out, key=lambda n: -sizes[n]):
        if total <= SNAPSHOT_BYTES:
            break
        out.add(name)
        total -= sizes[name]
    return sorted(out)


def cmd_say(args) -> int:
    launch = open_site(args.program)
    agent = known_agent(launch, args.agent)
    if not " ".join(args.text).strip():
        raise OrgError(f"nothing to say to {agent}: the message is empty")
    message = Mail(launch.lab_dir).send(HUMAN, agent, " ".join(args.text))
    control = launch.control_state(agent)
    if ended_for_good(control):  # nobody will read it: say so rather than promise
        print(f"in {agent}'s inbox (message {message['id']}), but {agent} has ended ({shown(control['reason'])}) "
              "and does not run again; the board and the report have what it concluded")
    else:
        print(f"in {agent}'s inbox (message {message['id']}); it reads it at its next step")
    return 0


def known_agent(launch: ProgramSite, agent: str) -> str:
    if agent not in launch.agents:
        raise OrgError(f"{launch.name} has no agent {agent!r} (agents: {', '.join(launch.agents)})")
    return agent
