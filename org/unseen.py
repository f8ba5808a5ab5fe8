"""
What agent code never sees, as the paths a box hides (org/sandbox.py): the lab's state, every
other lab's of this person's, the person's credentials and keys, and, from runs and model
workers, the lab's git, the cgroups, the harness's checkouts, the program's data source and every
prepared copy of it.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import sys
from pathlib import Path

from org import OrgError, python_text, user_cache, write_atomically


# where people keep credentials, under HOME: agent code would read them and a tool's output
# would carry them to the model's provider
CREDENTIALS = (".ssh", ".aws", ".azure", ".gnupg", ".docker", ".kube", ".netrc", ".git-credentials",
               ".pypirc", ".npmrc", ".config/gh", ".config/gcloud", ".config/hub", ".claude", ".claude.json",
               ".codex", ".anthropic", ".openai", ".huggingface", ".cache/huggingface/token",
               ".bash_history", ".zsh_history", ".python_history",
               # where people export their keys
               ".bashrc", ".bash_profile", ".profile", ".zshrc", ".zshenv", ".zprofile", ".config/fish")


def lab_private(lab_root: Path) -> list[Path]:
    """What agent code never sees: the lab's state (ledger, mail, runs, transcripts, caches), the
    agents' worktrees (an agent's own is bound back into its box), the credentials of the
    person running the org (HOME's usual places, and the keys file NANOLAB_KEYS_FILE names), and
    the cgroups: a model worker, shown the evaluation text, moves its box's figures as it likes
    (pids.current: a thread more or less), and its agent's box read them, bits a second."""
    secrets = home_credentials()
    if os.environ.get("NANOLAB_KEYS_FILE"):
        secrets.append(Path(os.environ["NANOLAB_KEYS_FILE"]).expanduser())
    secrets += keys_files(lab_root)
    return [Path(lab_root) / ".lab", Path(lab_root) / "worktrees", Path("/sys/fs/cgroup"), *secrets]


def home_credentials() -> list[Path]:
    """The usual places of credentials in this machine's home (a box made from another machine's
    spec, a cluster node's, hides its own: /home/ray is not the runner's home)."""
    return [Path.home() / name for name in CREDENTIALS]


def labs_list() -> Path:
    """The person's list of labs: a folder in the harness's cache, or the one NANOLAB_LABS names
    (each test has its own: a lab another test removes as a box starts fails the box's mount)."""
    return Path(os.environ.get("NANOLAB_LABS") or user_cache("labs")).resolve()  # (bwrap mounts no link)


def known_lab(lab_root: Path):
    """Put the lab on the person's list (a file each in the harness's cache, read by other_labs):
    every box of every other lab on this machine hides its state from then on."""
    root = Path(lab_root).resolve()
    entry = labs_list() / hashlib.sha256(str(root).encode()).hexdigest()[:24]
    if not entry.exists() and not root.is_relative_to("/tmp"):  # (every box has a /tmp of its own)
        try:
            write_atomically(entry, str(root))
        except OSError as e:  # (NANOLAB_LABS, or XDG_CACHE_HOME above it, naming a file: a traceback)
            raise OrgError(f"the list of labs {entry.parent} cannot be written ({e.strerror}): "
                           "NANOLAB_LABS or XDG_CACHE_HOME names something that is not a folder?") from None


def other_labs() -> list[Path]:
    """Every lab on the person's list: its state, its agents' worktrees, its git (their branches
    and objects) and the keys file its launch was given, which every box hides as it starts
    (org/sandbox.py; its own lab's it hides anyway, and binds back what it needs). Two clones of
    the project on one machine, say, to compare two orgs: one org's agents read the other's
    gateway keys (0600, but the same user's), its mail, transcripts and commits. A lab whose
    folder is gone leaves the list. The list itself is hidden too."""
    folder, hidden = labs_list(), []
    for entry in sorted(folder.glob("[!.]*")) if folder.is_dir() else ():  # (.name.tmp: one being written)
        with contextlib.suppress(OSError, ValueError):
            root = Path(entry.read_text().strip())
            if not root.is_absolute() or not root.exists():
                entry.unlink()
            elif (root / ".lab").is_dir():
                hidden += [(root / name).resolve() for name in (".lab", "worktrees") if (root / name).is_dir()]
                hidden += [path for path in git_dirs(root) if path.is_dir()] + [path.resolve() for path in keys_files(root)]
    return [folder, *hidden]


def keys_files(lab_root: Path) -> list[Path]:
    """The keys files the lab's launches were given (NANOLAB_KEYS_FILE): `org launch` keeps the
    name from every pane, so the boxes' makers read it where its gateway put it."""
    named = []
    for record in (Path(lab_root) / ".lab").glob("*/gateway/keys-file.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            named += [Path(p) for p in json.loads(record.read_text())]
    return named


def code_private(lab_root: Path) -> list[Path]:
    """What a run and a model worker never see: what no agent code sees (the cgroups among it),
    the lab's git, and the harness's own code (harness_text). An agent's box writes git objects
    (it commits), and its cgroups' figures move as it likes (memory.usage_in_bytes): a run that
    read either could be handed what its agent worked out after submitting it, such as a table
    for the fresh seeds its claim is replicated on."""
    return lab_private(lab_root) + git_dirs(lab_root) + prepared_data() + harness_text()


def harness_text() -> list[Path]:
    """The harness's checkouts: its code, tests and history, 2.4 MB of Python in the stdlib's own
    style. A model worker that mixed a byte 6-gram of them (and of the stdlib's bytecode names)
    into its logits as it was measured on pystdlib read `better` by 0.049 with no warning; on any
    program they are no run's to read (a run imports its snapshot's trainer/, a worker is started
    from its source: org/measure.py). Hidden whole, or, where the interpreter lies in one (a venv
    made in the checkout), all of it but the folder that holds the interpreter."""
    prefixes = [Path(os.path.realpath(p)) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))]
    hidden = []
    for checkout in dict.fromkeys(Path(os.path.realpath(c)) for c in python_text.checkouts()):
        if not checkout.is_dir():
            continue
        if not any(p.is_relative_to(checkout) for p in prefixes):
            hidden.append(checkout)
            continue
        with os.scandir(checkout) as entries:  # (a link among them is not followed: seen as it is)
            hidden += [Path(e.path) for e in entries if not e.is_symlink() and not any(p.is_relative_to(e.path) for p in prefixes)]
    return hidden


def git_dirs(lab_root: Path) -> list[Path]:
    """The lab's .git, or where a linked worktree's .git file points: "gitdir: <its admin dir>",
    whose commondir names the store (a lab made by `git worktree add` shares another's)."""
    dot_git = Path(lab_root) / ".git"
    if not dot_git.is_file():
        return [dot_git.resolve()]
    admin = (Path(lab_root) / dot_git.read_text().removeprefix("gitdir:").strip()).resolve()
    common = admin / (admin / "commondir").read_text().strip() if (admin / "commondir").exists() else admin
    return [admin, common.resolve()]


def prepared_data() -> list[Path]:
    """The person's caches of prepared data (`python -m trainer train` by hand): every document of
    a source tokenized, the lab's val and confirm among them, where no data source is hidden."""
    folders = {user_cache("data"), Path.home() / ".cache" / "nanolab" / "data"}
    if os.environ.get("NANOLAB_CACHE"):  # (trainer/data.py's cache_dir)
        folders.add(Path(os.environ["NANOLAB_CACHE"]).expanduser() / "data")
    return sorted(folders)


def source_files(source: str) -> list[Path]:
    """The program's data files or folders (a glob's matches), absent from runs and their workers:
    they read the lab's export of its train split, and the source holds the lab's val text too (a
    run could train on all of it). For pystdlib, the other Pythons' stdlibs (this one's is made
    sourceless), every other folder of installed packages and every other folder of Python text
    it sees (org/python_text.py). Never a path that holds the interpreter: every Python process
    reads those."""
    if source == "pystdlib":  # its own interpreter's are made sourceless (python_text.binds); other copies go
        return [path for found in python_text.other_pythons() for path in found]
    found = {Path(p).resolve() for p in glob.glob(source)} | ({Path(source).resolve()} if Path(source).exists() else set())
    pythons = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}  # a venv's, and the one it runs on
    return sorted(p for p in found if not any(python.is_relative_to(p) for python in pythons))
