"""The lab: program branches, agent worktrees, frozen snapshots and protected paths, on real git repos."""
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import git
import pytest

from org import OrgError
from org.commit_checks import carried_bytes, code_refusal, oversized, protected_violation, shadowing
from org.experiments import shown_diff
from org.lab import AGENT_TAKEN, Lab, LabError, child_env
from org.objects import ObjectError, ObjectStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lab(tmp_path):
    """A small project repo with one commit: a protected eval file and an editable model file."""
    repo = git.Repo.init(tmp_path / "proj", initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Test").set_value("user", "email", "test@example.com")
    root = tmp_path / "proj"
    (root / "trainer").mkdir()
    (root / "trainer" / "eval.py").write_text("METRIC = 'val_bpb'\n")
    (root / "trainer" / "model.py").write_text("WIDTH = 64\n")
    repo.git.add(A=True)
    repo.git.commit("-m", "project")
    lab = Lab.open(root)
    yield lab
    lab.close()


def commit_file(repo_dir, relpath, text, message="change"):
    repo = git.Repo(repo_dir)
    (repo_dir / relpath).write_text(text)
    repo.git.add(A=True)
    repo.git.commit("-m", message)
    sha = repo.head.commit.hexsha
    repo.close()
    return sha


def test_open_refuses_outside_a_checkout_and_before_the_first_commit(tmp_path):
    with pytest.raises(LabError, match="not inside a git checkout"):
        Lab.open(tmp_path)
    git.Repo.init(tmp_path / "empty")
    with pytest.raises(LabError, match="no commits yet"):
        Lab.open(tmp_path / "empty")


def test_open_finds_the_repo_from_a_subdirectory(lab):
    assert Lab.open(lab.root / "trainer").root == lab.root


def test_resolve_names_a_missing_ref(lab):
    assert lab.resolve("main") == lab.head()
    with pytest.raises(LabError, match="git ref 'nope' does not exist"):
        lab.resolve("nope")


def test_start_program_makes_a_branch_and_an_ignored_state_dir(lab):
    base = lab.start_program("softcap")
    assert base == lab.head() and "program/softcap" in lab.repo.heads
    for sub in ("runs", "snapshots", "mail", "transcripts"):
        assert (lab.root / ".lab" / "softcap" / sub).is_dir()
    assert lab.start_program("softcap") == base  # idempotent
    assert not lab.repo.is_dirty(untracked_files=True)  # .lab/ is excluded, nothing tracked changed


def test_agent_worktrees_on_their_own_branches(lab):
    lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    bob = lab.add_worktree("softcap", "bob")
    assert alice == lab.root / "worktrees" / "softcap" / "alice" and (alice / "trainer" / "model.py").exists()
    branches = {w["branch"] for w in lab.worktrees()}
    assert {"main", "agent/softcap/alice/work", "agent/softcap/bob/work"} <= branches
    assert lab.add_worktree("softcap", "alice") == alice  # reused, not duplicated
    sha = commit_file(alice, "trainer/model.py", "WIDTH = 128\n")
    assert lab.resolve("agent/softcap/alice/work") == sha
    assert (bob / "trainer" / "model.py").read_text() == "WIDTH = 64\n"  # bob's tree is his own


def test_removing_a_worktree_keeps_its_branch_and_orphans_are_pruned(lab):
    lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    sha = commit_file(alice, "trainer/model.py", "WIDTH = 96\n")
    lab.remove_worktree("softcap", "alice")
    assert not alice.exists() and lab.resolve("agent/softcap/alice/work") == sha
    bob = lab.add_worktree("softcap", "bob")
    shutil.rmtree(bob)  # a crash or a careless rm
    assert lab.prune_worktrees() == [bob]
    assert bob not in {w["path"] for w in lab.worktrees()}
    assert lab.add_worktree("softcap", "bob") == bob  # the branch is picked up again


def test_a_branch_of_the_older_layout_is_renamed_into_its_agents_folder(lab):
    """Before branch folders an agent's branch was agent/<program>/<agent>; its work carries on."""
    lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    sha = commit_file(alice, "trainer/model.py", "WIDTH = 80\n")
    lab.remove_worktree("softcap", "alice")
    lab.repo.git.branch("-m", "agent/softcap/alice/work", "old")
    lab.repo.git.branch("-m", "old", "agent/softcap/alice")              # as an older lab left it
    assert lab.add_worktree("softcap", "alice") == alice
    assert lab.resolve("agent/softcap/alice/work") == sha and "agent/softcap/alice" not in lab.repo.heads
    assert {"path": alice, "branch": "agent/softcap/alice/work"}.items() <= \
        next(w for w in lab.worktrees() if w["path"] == alice).items()


def test_a_snapshot_is_frozen(lab):
    lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    sha = commit_file(alice, "trainer/model.py", "WIDTH = 128\n")
    (alice / "untracked.txt").write_text("not committed")
    snap = lab.snapshot("agent/softcap/alice/work", "softcap")
    assert snap == lab.root / ".lab" / "softcap" / "snapshots" / sha
    assert (snap / "trainer" / "model.py").read_text() == "WIDTH = 128\n"
    assert not (snap / "untracked.txt").exists() and not (snap / ".git").exists()
    commit_file(alice, "trainer/model.py", "WIDTH = 256\n")  # later edits and commits...
    (alice / "trainer" / "model.py").write_text("WIDTH = 512\n")
    assert (snap / "trainer" / "model.py").read_text() == "WIDTH = 128\n"  # ...change nothing
    assert lab.snapshot(sha, "softcap") == snap  # made once per commit


def test_what_a_killed_runner_half_wrote_goes(lab):
    """A runner killed as it wrote a commit's snapshot out left its temporary folder, one a kill,
    and nothing removed it: it goes once its runner is gone. So does a data file, or a folder of
    shards, that a killed tokenizer half wrote (46 MB each), an hour after its last write; one
    being written stays."""
    import os
    import subprocess
    import time
    from trainer.shards import write_llmc_shard
    lab.start_program("softcap")
    sha = commit_file(lab.add_worktree("softcap", "alice"), "trainer/model.py", "WIDTH = 96\n")
    snapshots = lab.root / ".lab" / "softcap" / "snapshots"
    gone = subprocess.Popen(["true"])
    gone.wait()
    left, writing = snapshots / f".{'f' * 10}-{gone.pid}-abc", snapshots / f".{sha[:10]}-{os.getpid()}-def"
    data = lab.root / "cache" / "train.bin"
    half, shards, fresh = (data.with_name(f".train.bin.123.{x}.tmp") for x in ("abcdef12", "abcdef34", "abcdef56"))
    for folder in (left / "trainer", writing / "trainer", shards):
        folder.mkdir(parents=True)
    for file in (half, shards / "val.bin", fresh):
        file.write_bytes(bytes(1000))
    for old in (half, shards, shards / "val.bin"):
        os.utime(old, (time.time() - 7200, time.time() - 7200))
    lab.snapshot(sha, "softcap")
    write_llmc_shard(data, [1, 2, 3])
    assert not left.exists() and writing.exists()
    assert not half.exists() and not shards.exists() and fresh.exists()


def test_protected_paths_between_base_and_experiment(lab):
    base = lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    ok = commit_file(alice, "trainer/model.py", "WIDTH = 128\n")
    assert protected_violation(lab, base, ok, ["trainer/eval.py", "org/"]) is None
    bad = commit_file(alice, "trainer/eval.py", "METRIC = 'train_loss'\n")
    reason = protected_violation(lab, base, bad, ["trainer/eval.py", "org/"])
    assert reason == f"protected paths differ from the program's base commit {base[:10]}: trainer/eval.py"
    assert "+++ b/trainer/eval.py" in shown_diff(lab, base, bad, 1 << 20)


def test_the_diff_an_experiment_keeps_is_cut_and_a_large_file_named_not_shown(lab):
    """A file of one line repeated compresses 1000-fold: a 40 MB one is 40 KB in a commit, and its
    diff went whole into the harness's memory and the ledger (read at every status refresh)."""
    base = lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    big = commit_file(alice, "trainer/table.txt", "a\n" * (20 << 20))
    shown = shown_diff(lab, base, big, 1 << 20)
    assert "Binary files" in shown and "trainer/table.txt" in shown and len(shown) < 1000
    for i in range(3):  # files under the 1 MB a file is shown to, 2.7 MB together
        (alice / f"lines{i}.txt").write_text("b\n" * (450 << 10))
    many = commit_file(alice, "trainer/x.txt", "x\n")
    shown = shown_diff(lab, big, many, 1 << 20)
    assert len(shown.encode()) < (1 << 20) + 100 and shown.endswith("(cut: the diff goes on past 1024 KB)\n")
    from org.improve_story import diff_summary  # the report's line says so
    assert diff_summary(shown).endswith(", and more: the diff kept was cut")


@pytest.mark.parametrize("path", [
    "trainer/eval/__init__.py",                 # a package beside the protected module wins the import
    "trainer/eval.cpython-311-x86_64-linux-gnu.so", "trainer/eval.pyc",  # so do these
    "trainer/__pycache__/model.cpython-311.pyc", "trainer/fast.so", "trainer/kernels.pyd",
    "sitecustomize.py", "trainer/usercustomize.py", "site.pth",  # run at interpreter start
    ".gitattributes", "trainer/.gitattributes",  # change what `git archive` puts in a snapshot
])
def test_what_could_shadow_code_is_refused(lab, path):
    base = lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    (alice / path).parent.mkdir(parents=True, exist_ok=True)
    commit = commit_file(alice, path, "x = 1\n")
    reason = shadowing(lab, base, commit, ["trainer/eval.py", "org/"])
    assert reason.startswith("the commit adds files that could shadow code") and reason.endswith(path)


def test_new_modules_beside_protected_ones_are_not_shadowing(lab):
    base = lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    commit = commit_file(alice, "trainer/evaluation_notes.py", "x = 1\n")  # beside eval.py, not shadowing it
    commit = commit_file(alice, "trainer/model_v2.py", "WIDTH = 96\n")
    assert shadowing(lab, base, commit, ["trainer/eval.py", "org/"]) is None


def test_dirty_protected_paths(lab):
    assert lab.dirty_paths(["trainer/eval.py", "org/"]) == []
    (lab.root / "trainer" / "eval.py").write_text("METRIC = 'x'\n")
    (lab.root / "org").mkdir()
    (lab.root / "org" / "new.py").write_text("")
    assert sorted(lab.dirty_paths(["trainer/eval.py", "org/"])) == ["org/new.py", "trainer/eval.py"]
    assert lab.dirty_paths(["trainer/model.py"]) == []


def test_child_env_drops_git_variables():
    env = child_env({"OMP_NUM_THREADS": "2"}, base={"GIT_DIR": "/elsewhere/.git", "GIT_INDEX_FILE": "x",
                                                    "GIT_WORK_TREE": "/w", "HOME": "/root"})
    assert env == {"HOME": "/root", "OMP_NUM_THREADS": "2"}


def test_what_an_agent_wrote_into_git_does_not_run_through_the_harness(lab, tmp_path):
    """Hooks, fsmonitor and attribute filters in the shared .git (as an agent without a sandbox
    could write them) run with every git command of whoever uses the repo: not the harness's."""
    marks = {name: tmp_path / name for name in ("hook", "fsmonitor", "filter")}
    hooks = lab.root / ".git" / "hooks"
    for hook in ("post-checkout", "pre-commit", "reference-transaction"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marks['hook']}\n")
        (hooks / hook).chmod(0o755)
    with lab.repo.config_writer() as cw:
        cw.set_value("core", "fsmonitor", f"touch {marks['fsmonitor']}; true")
        cw.set_value("filter \"evil\"", "smudge", f"sh -c 'touch {marks['filter']}; cat'")
    (lab.root / ".git" / "info").mkdir(exist_ok=True)
    (lab.root / ".git" / "info" / "attributes").write_text("* filter=evil\n")
    base = lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")  # a checkout: post-checkout, filters
    snapshot = lab.snapshot(base, "softcap")      # git archive: filters
    lab.dirty_paths(["trainer/"])                 # git status: fsmonitor
    protected_violation(lab, base, base, ["trainer/eval.py"])
    assert (alice / "trainer" / "eval.py").exists() and (snapshot / "trainer" / "eval.py").exists()
    assert [name for name, mark in marks.items() if mark.exists()] == []


def test_a_filter_in_the_older_spelling_does_not_run_through_the_harness_either(lab, tmp_path):
    """git reads `[filter.evil]` as it reads `[filter "evil"]`: both name a driver to neutralise."""
    mark = tmp_path / "filter"
    with (lab.root / ".git" / "config").open("a") as f:
        f.write(f"[filter.evil]\n\tsmudge = \"sh -c 'touch {mark}; cat'\"\n\tclean = \"sh -c 'touch {mark}; cat'\"\n")
    (lab.root / ".git" / "info").mkdir(exist_ok=True)
    (lab.root / ".git" / "info" / "attributes").write_text("* filter=evil\n")
    lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")  # a checkout: smudge
    (alice / "trainer" / "model.py").write_text("WIDTH = 96\n")
    lab.repo.git.status()  # clean
    assert (alice / "trainer" / "eval.py").exists() and not mark.exists()


def commit_links(worktree: Path, links: dict) -> str:
    for name, target in links.items():
        (worktree / name).parent.mkdir(parents=True, exist_ok=True)
        (worktree / name).symlink_to(target)
    with git.Repo(worktree) as repo:
        repo.git.add(A=True)
        repo.git.commit("-m", "links")
        return repo.head.commit.hexsha


def test_a_snapshot_writes_nothing_outside_itself_whatever_links_a_commit_holds(lab):
    """Links a tar extraction checks one at a time, before the next exists, can chain out of the
    snapshot (`t -> .` twice makes `t/../t/../..` climb): the marker written into it would then
    have overwritten the ledger. A snapshot holds regular files only, and a commit with a link
    is refused before it runs."""
    base = lab.start_program("softcap")
    ledger = lab.state_dir("softcap") / "ledger.sqlite"
    ledger.write_bytes(b"SQLite format 3\x00 the lab's records")
    alice = lab.add_worktree("softcap", "alice")
    commit = commit_links(alice, {"a/s": "t/../t/../../ledger.sqlite", "a/t": ".", "t": ".",
                                  ".snapshot-commit": "a/s"})
    assert "a symbolic link" in code_refusal(lab, base, commit, ["trainer/eval.py"], 1000)
    with pytest.raises(LabError, match="symbolic link"):
        lab.snapshot(commit, "softcap")
    assert ledger.read_bytes() == b"SQLite format 3\x00 the lab's records"
    assert not (lab.state_dir("softcap") / "snapshots" / commit).exists()


def crafted_commit(lab: Lab, parent: str, entries: list[tuple[bytes, str]]) -> str:
    """A commit of parent's tree with `entries` ((mode, name): a one-line file, or a folder holding
    one) added to its root, in that order, as a box can write it (git hash-object --literally)."""
    def git_(*args, data=b""):
        return subprocess.run(["git", *args], cwd=lab.root, input=data, capture_output=True, check=True).stdout
    blob = git_("hash-object", "-w", "--stdin", data=b"x\n").decode().strip()
    folder = git_("mktree", data=f"100644 blob {blob}\tf\n".encode()).decode().strip()
    body = b""
    for line in git_("ls-tree", "-z", parent).split(b"\0")[:-1]:  # "<mode> <kind> <sha>\t<name>"
        info, name = line.split(b"\t", 1)
        mode, _, sha = info.split(b" ")
        body += mode.lstrip(b"0") + b" " + name + b"\0" + bytes.fromhex(sha.decode())
    for mode, name in entries:
        body += mode + b" " + name.encode() + b"\0" + bytes.fromhex(folder if mode == b"40000" else blob)
    tree = git_("hash-object", "-w", "-t", "tree", "--literally", "--stdin", data=body).decode().strip()
    return lab.repo.git.commit_tree(tree, "-p", parent, "-m", "crafted")


def test_a_tree_no_folder_can_hold_is_refused_before_it_runs(lab):
    """Git writes trees no folder can hold when asked (update-index, hash-object): a file name of
    300 bytes, or `a` both a file and a folder. The submit checks read objects only and passed;
    the snapshot met ENAMETOOLONG (or NotADirectoryError), which the runner took for a bug of its
    own: it stopped, the run still claimed, and stopped again at every restart."""
    base = lab.start_program("softcap")
    for entries, why in (([(b"100644", "x" * 300)], "is a name of 300 bytes"),
                         ([(b"100644", "a"), (b"40000", "a")], "names a twice")):
        commit = crafted_commit(lab, base, entries)
        assert why in code_refusal(lab, base, commit, ["trainer/eval.py"], 1000)
        with pytest.raises(LabError, match=why):
            lab.snapshot(commit, "softcap")
        assert not (lab.state_dir("softcap") / "snapshots" / commit).exists()


def swap_object(lab: Lab, sha: str, body: bytes):
    """What a box that may write .git/objects (to commit) can do to any object there: replace its
    file under the same name. Git does not check names against contents when it reads."""
    path = Path(lab.repo.common_dir) / "objects" / sha[:2] / sha[2:]
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)  # (or beside its packed copy: the harness packs what it takes in)
    path.write_bytes(zlib.compress(b"blob %d\x00" % len(body) + body))


def test_an_object_swapped_under_its_name_is_caught_not_run(lab):
    lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    commit = commit_file(alice, "trainer/model.py", "WIDTH = 128\n")  # reviewed, queued, not yet run
    blob = lab.repo.git.rev_parse(f"{commit}:trainer/model.py")
    swap_object(lab, blob, b"WIDTH = 128; import os  # and whatever else\n")
    assert "import os" in lab.repo.git.show(blob)  # git itself reads it under the old name
    for check in (lambda: code_refusal(lab, lab.resolve("program/softcap"), commit, ["trainer/eval.py"], 64),
                  lambda: lab.snapshot(commit, "softcap")):
        with pytest.raises(LabError, match=f"object {blob[:10]} .* does not hold what its name says"):
            check()
    assert not (lab.state_dir("softcap") / "snapshots" / commit).exists()


def commit_in_own_folder(lab: Lab, worktree: Path, folder: Path, relpath: str, text: str,
                         more: dict[str, str] = {}) -> tuple[str, list[str]]:
    """A commit as an agent's box makes it, its objects in its own folder (org/objects.py): (the
    commit, every object it adds to the program's branch). `more`: other files it adds."""
    env = child_env({"GIT_OBJECT_DIRECTORY": str(folder), "GIT_ALTERNATE_OBJECT_DIRECTORIES":
                     str(Path(lab.repo.common_dir) / "objects")})
    for path, body in {relpath: text, **more}.items():
        (worktree / path).write_text(body)

    def git_(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=worktree, env=env, check=True, capture_output=True, text=True).stdout
    git_("add", relpath, *more)
    git_("commit", "-qm", "own folder")
    return git_("rev-parse", "HEAD").strip(), [line.split()[0] for line in git_("rev-list", "--objects", "program/softcap..HEAD").splitlines()]


def write_loose(folder: Path, kind: bytes, body: bytes, name: str | None = None) -> str:
    """What a box can leave in its own folder: any bytes, under any object's name."""
    data = b"%s %d\x00" % (kind, len(body)) + body
    name = name or hashlib.sha1(data).hexdigest()
    (folder / name[:2]).mkdir(exist_ok=True)
    (folder / name[:2] / name[2:]).unlink(missing_ok=True)
    (folder / name[:2] / name[2:]).write_bytes(zlib.compress(data))
    return name


def test_a_commit_is_taken_in_from_its_owners_folder_checked_and_bounded(lab):
    """take_in copies what the shared store lacks from the folder of the agent whose box made it,
    each object checked against its name, and no other folder: aaron's junk under alice's names
    is never read. A junk copy, a commit no git writes, or more than the agent may still add is
    one line, and the commit is not taken in. No git outside a box reads an agent's folder, so
    the harness's git sees alice's commit only once it is taken in."""
    base = lab.start_program("softcap")
    aaron, alice = lab.agent_objects("softcap", "aaron"), lab.agent_objects("softcap", "alice")
    commit, names = commit_in_own_folder(lab, lab.add_worktree("softcap", "alice"), alice, "trainer/model.py", "WIDTH = 96\n")
    with pytest.raises(git.GitCommandError):
        lab.repo.git.cat_file("-e", commit)
    for name in names:
        write_loose(aaron, b"blob", b"junk", name)
    with pytest.raises(LabError, match=f"object {commit[:10]} \\(commit\\) is not in"):
        lab.take_in(commit)  # whose it is, nobody says: no folder is read
    blob = names[-1]
    kept = (alice / blob[:2] / blob[2:]).read_bytes()
    write_loose(alice, b"blob", b"junk", blob)  # alice's own copy junk
    with pytest.raises(LabError, match=f"object {blob[:10]}: no copy in {alice} holds what its name says"):
        lab.take_in(commit, ("softcap", "alice"))
    assert not lab.objects.has(commit)
    taken = lab.state_dir("softcap") / "taken-in" / "alice"
    assert not taken.read_text()  # nothing written, nothing counted
    (alice / blob[:2] / blob[2:]).write_bytes(kept)
    taken.write_text(str(AGENT_TAKEN - 10))  # what alice may still add: 10 bytes
    with pytest.raises(LabError, match="would put more than the 0.0 GB this agent may still add"):
        lab.take_in(commit, ("softcap", "alice"))
    taken.write_text("0")
    assert lab.take_in(commit, ("softcap", "alice")) == commit and all(lab.objects.has(name) for name in names)
    assert 0 < int(taken.read_text()) < 1000
    for name in names:  # all of it the harness's now: alice's folder emptied loses nothing
        (alice / name[:2] / name[2:]).unlink()
    assert (lab.snapshot(commit, "softcap") / "trainer" / "model.py").read_text() == "WIDTH = 96\n"

    tree = lab.repo.git.rev_parse(f"{base}^{{tree}}")
    for body in (f"tree {tree}\nparent {'g' * 40}\n\nodd\n", f"tree {tree}\ntree {tree}\n\nodd\n", "parent x\n" * 1000):
        odd = write_loose(alice, b"commit", body.encode())
        with pytest.raises(LabError, match=f"commit {odd[:10]} is not one git writes"):
            lab.take_in(odd, ("softcap", "alice"))


def test_a_blob_that_would_inflate_to_a_gb_is_refused_before_it_is_inflated(lab):
    """A MB of zeros compresses to a KB. A box that pointed its branch each second at a commit
    naming a fresh copy of such a blob (junk under its name) had the harness inflate a GB and
    hash it at each take-in (5.8 s of CPU and 2 GB of memory, outside every box, every 2 s
    for a CLI: a run beside it took 4-9x as long, hunt42). Its header says what it inflates to:
    past 64x its file, it is refused unread. Here 64 MB from 64 KB."""
    lab.start_program("softcap")
    alice = lab.agent_objects("softcap", "alice")
    commit, names = commit_in_own_folder(lab, lab.add_worktree("softcap", "alice"), alice, "trainer/model.py", "W = 1\n")
    blob, size = names[-1], 64 << 20
    (alice / blob[:2] / blob[2:]).unlink()
    (alice / blob[:2] / blob[2:]).write_bytes(zlib.compress(b"blob %d\x00" % size + bytes(size)))
    with pytest.raises(LabError, match=f"object {blob[:10]}: its file in {alice} would inflate past 64x its size"):
        lab.take_in(commit, ("softcap", "alice"))
    assert lab.objects.taken < 1 << 20  # (was 64 MB inflated, and a GB for a GB)
    # a header that says less than the file inflates to: inflated no further than it says (hunt43: a
    # header of 1 KB on a GB cost 5.5 CPU-s and 2 GB at each take-in)
    (alice / blob[:2] / blob[2:]).unlink()
    (alice / blob[:2] / blob[2:]).write_bytes(zlib.compress(b"blob 1024\x00" + bytes(size)))
    tracemalloc.start()
    try:
        with pytest.raises(LabError, match=f"object {blob[:10]}"):
            lab.take_in(commit, ("softcap", "alice"))
        assert tracemalloc.get_traced_memory()[1] < 8 << 20  # (its peak: was the 64 MB inflated)
    finally:
        tracemalloc.stop()


def test_an_object_the_lab_has_is_taken_as_the_kind_it_is(lab):
    """A commit whose parent is a blob the lab already has, or a tree naming that blob as a
    folder: the walk stopped at any object the shared store held, whatever its kind, so it was
    taken in, and every pack of the lab's refs failed after ("not a commit"): `org clean` keeps
    the branch under refs/nanolab/, and each program start packs those. Modes git never writes
    (a folder's 40755, read by git as a folder) are refused too."""
    base = lab.start_program("softcap")
    alice = lab.agent_objects("softcap", "alice")
    tree = lab.repo.git.rev_parse(f"{base}^{{tree}}")
    blob = lab.repo.git.rev_parse(f"{base}:trainer/model.py")  # in the lab already, packed
    loose = write_loose(Path(lab.repo.common_dir) / "objects", b"blob", b"a loose blob of the lab's\n")
    for named in (blob, loose):
        odd = write_loose(alice, b"commit", f"tree {tree}\nparent {named}\nauthor a <a> 0 +0000\n"
                                            f"committer a <a> 0 +0000\n\nodd\n".encode())
        with pytest.raises(LabError, match=f"object {named[:10]} is a blob, named as a commit"):
            lab.take_in(odd, ("softcap", "alice"))
    for mode, named in ((b"40000", blob), (b"40755", tree)):
        odd_tree = write_loose(alice, b"tree", mode + b" dir\0" + bytes.fromhex(named))
        odd = write_loose(alice, b"commit", f"tree {odd_tree}\nauthor a <a> 0 +0000\n"
                                            f"committer a <a> 0 +0000\n\nodd\n".encode())
        with pytest.raises(LabError, match="is a blob, named as a tree|is not one git writes"):
            lab.take_in(odd, ("softcap", "alice"))
        assert not lab.objects.has(odd)
    lab.pack_loose(lab.harness_refs())  # as each program start does


def test_a_failed_take_in_waits_before_it_is_read_again_and_deep_trees_are_refused(lab, monkeypatch):
    """A take-in that fails may inflate a GB of junk first, and take_in_work runs as every tool
    call ends (every 2 s for a CLI): it is tried again only after RETRY_SECONDS. A tree nested
    over MAX_DEPTH deep is one line (the walk recursed: RecursionError past 1000), and so is one that
    names over MAX_ENTRIES files and folders."""
    from org.lab import MAX_DEPTH, MAX_ENTRIES, RETRY_SECONDS
    lab.start_program("softcap")
    alice, tree = lab.agent_objects("softcap", "alice"), lab.add_worktree("softcap", "alice")
    commit, names = commit_in_own_folder(lab, tree, alice, "trainer/model.py", "WIDTH = 96\n")
    write_loose(alice, b"blob", b"junk", names[-1])
    reads, take_in = [], ObjectStore.take_in
    monkeypatch.setattr(ObjectStore, "take_in", lambda *a: reads.append(a) or take_in(*a))  # junk: it fails
    for _ in range(3):
        lab.take_in_work(tree, "agent/softcap/alice/work")
    assert len(reads) == 1 and commit in lab.refused
    # and in every process of the lab: a CLI's port makes a Lab for each tool call, and each read it again
    with contextlib.closing(Lab.open(lab.root)) as another:
        another.take_in_work(tree, "agent/softcap/alice/work")
    assert len(reads) == 1
    lab.refused[commit] -= RETRY_SECONDS
    (lab.root / ".lab" / "take-in-refused.json").write_text(json.dumps(lab.refused))
    lab.take_in_work(tree, "agent/softcap/alice/work")
    assert len(reads) == 2
    fresh = ObjectStore(lab.repo.common_dir)  # one that never read the junk copy reads it
    for store in (lab.objects, fresh):
        with pytest.raises(ObjectError, match="no copy .* holds what its name says"):
            store.take_in(commit, alice, AGENT_TAKEN)
    assert fresh.taken == lab.objects.taken + len(b"junk")  # (the same file: a rewritten one is read again)

    deep = lab.repo.git.rev_parse("program/softcap:trainer")
    for _ in range(MAX_DEPTH + 2):
        deep = subprocess.run(["git", "mktree"], cwd=lab.root, input=f"040000 tree {deep}\td\n", text=True,
                              capture_output=True, check=True).stdout.strip()
    top = lab.repo.git.commit_tree(deep, "-m", "deep")
    with pytest.raises(LabError, match=f"nests folders over {MAX_DEPTH} deep"):
        lab.files(top)
    # and wide: a tree of 1000 entries named 1000 times is 10^6 files in 30 KB (10^9 with one level more),
    # each walked, and kept, by the harness, outside every box
    wide = lab.repo.git.rev_parse("program/softcap:trainer/model.py")
    for mode, kind in (("100644", "blob"), ("040000", "tree")):
        wide = subprocess.run(["git", "mktree"], cwd=lab.root, input="".join(f"{mode} {kind} {wide}\tf{i}\n" for i in range(1000)),
                              text=True, capture_output=True, check=True).stdout.strip()
    with pytest.raises(LabError, match=f"names over {MAX_ENTRIES} files and folders"):
        lab.files(lab.repo.git.commit_tree(wide, "-m", "wide"))


def test_an_index_swapped_for_a_fifo_hangs_no_take_in_of_what_it_stages(lab):
    """`org release` takes in what the agent's index stages, with git reading that index: a FIFO
    there (a box swaps it in a loop) blocked git's open, and the person's command, for good. The
    harness opens it itself, a plain file or nothing."""
    lab.start_program("softcap")
    tree = lab.add_worktree("softcap", "alice")
    index = lab.admin_dir(tree) / "index"
    index.unlink()
    os.mkfifo(index)
    done = threading.Event()
    threading.Thread(target=lambda: (lab.take_in_work(tree, "agent/softcap/alice/work", index=True), done.set()),
                     daemon=True).start()
    assert done.wait(20), "take_in_work hung on the agent's FIFO index"
    assert lab.staged_blobs(tree) == []


def test_a_commit_of_a_few_kb_naming_a_billion_files_runs_no_git_of_ours_out_of_memory(lab, monkeypatch):
    """Three trees of 1000 entries each, nested, name 10^9 files in 60 KB: an agent commits
    them, and leaves an index git cannot read. `org stop` makes that index again from HEAD
    (`git reset`), which read them at 500 MB/s, with no bound. Now every git of ours in an
    agent's worktree has GIT_MEMORY of address space (and GIT_SECONDS): one line, not the
    machine's memory."""
    from org import launch
    monkeypatch.setattr(launch, "GIT_MEMORY", 512 << 20)
    lab.start_program("softcap")
    tree = lab.add_worktree("softcap", "alice")

    def mktree(entries: str) -> str:
        return subprocess.run(["git", "mktree"], cwd=lab.root, input=entries, text=True, capture_output=True,
                              check=True).stdout.strip()
    level = lab.repo.git.rev_parse("program/softcap:trainer/model.py")
    for mode, kind in (("100644", "blob"), ("040000", "tree"), ("040000", "tree")):
        level = mktree("".join(f"{mode} {kind} {level}\tf{i}\n" for i in range(1000)))
    lab.repo.git.update_ref("refs/heads/agent/softcap/alice/work", lab.repo.git.commit_tree(level, "-m", "10^9 files"))
    (lab.admin_dir(tree) / "index").write_bytes(b"junk")
    started = time.monotonic()
    with pytest.raises(OrgError, match="git reset -q in .* failed"):
        launch.mend_worktree(lab, tree, "agent/softcap/alice/work")
    assert time.monotonic() - started < 60


def test_a_take_in_that_fails_part_way_counts_what_it_wrote(lab):
    """A commit whose last object is junk: what was written before it stays in the shared store,
    and counts against the agent's 16 GB. Were it free, a commit of 1 GB of good objects and one
    junk one could be taken in again and again. A take-in of what is in already locks and writes
    nothing (it runs as every tool call ends)."""
    lab.start_program("softcap")
    alice = lab.agent_objects("softcap", "alice")
    commit, names = commit_in_own_folder(lab, lab.add_worktree("softcap", "alice"), alice, "trainer/model.py",
                                         "WIDTH = 96\n", {"a.txt": "junk here\n"})
    junk = hashlib.sha1(b"blob 10\x00junk here\n").hexdigest()  # a.txt's name
    write_loose(alice, b"blob", b"not what its name says", junk)
    with pytest.raises(LabError, match=f"object {junk[:10]}: no copy in {alice} holds what its name says"):
        lab.take_in(commit, ("softcap", "alice"))
    written = [name for name in names if lab.objects.has(name)]
    assert written and commit not in written  # the tree walk wrote trainer/ before it met a.txt
    sizes = sum(int(lab.repo.git.cat_file("-s", name)) for name in written)
    taken = lab.state_dir("softcap") / "taken-in" / "alice"
    assert int(taken.read_text()) == sizes > 0

    base = lab.resolve("program/softcap")
    lab.take_in(base, ("softcap", "bob"))  # in already: bob's count is not even made
    assert not (lab.state_dir("softcap") / "taken-in" / "bob").exists()


def test_an_agents_branch_head_and_staged_files_are_taken_in_whatever_its_head_holds(lab):
    """Before the harness or a person reads an agent's worktree (org stop, launch, takeover, and
    as each tool call ends), its branch and HEAD are taken in, and for a takeover what it staged:
    the person's commit needs those blobs. HEAD is a file its box writes: whatever it holds, the
    take-in is quiet, and only a name of the agent's branches or a commit's is ever handed to git."""
    lab.start_program("softcap")
    folder, tree = lab.agent_objects("softcap", "alice"), lab.add_worktree("softcap", "alice")
    commit, _ = commit_in_own_folder(lab, tree, folder, "trainer/model.py", "WIDTH = 96\n")
    (tree / "staged.txt").write_text("staged, not committed\n")
    env = child_env({"GIT_OBJECT_DIRECTORY": str(folder),
                     "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(Path(lab.repo.common_dir) / "objects")})
    subprocess.run(["git", "add", "staged.txt"], cwd=tree, env=env, check=True)
    staged = subprocess.run(["git", "rev-parse", ":staged.txt"], cwd=tree, env=env, check=True,
                            capture_output=True, text=True).stdout.strip()
    head = lab.admin_dir(tree) / "HEAD"
    for junk in ("ref: refs/heads/main\0x\n", "ref: refs/heads/agent/softcap/alice/x\0y\n", ":/WIDTH\n",
                 "ref: refs/heads/agent/softcap/alice/:/WIDTH\n", "--output=/tmp/x\n", "\xff" * 400):
        head.write_text(junk)
        lab.take_in_work(tree, "agent/softcap/alice/work")  # quiet, whatever HEAD holds
    assert lab.objects.has(commit) and not lab.objects.has(staged)
    with pytest.raises(LabError, match="does not exist"):
        lab.take_in("agent/softcap/alice/work\0x")  # as a submit names it: one line
    head.write_text(f"{commit}\n")
    lab.take_in_work(tree, "agent/softcap/alice/work", index=True)
    assert lab.objects.has(staged)
    assert lab.repo.git.cat_file("-p", staged) == "staged, not committed"


def test_an_object_made_a_fifo_or_a_bomb_stops_nothing(lab):
    """A box that commits may also leave a FIFO under an object's name: git, asked for it, waited
    for a writer for good, and the runner (which reads a submitted commit holding its git lock)
    with it. Or a loose object whose few compressed bytes inflate to fill the memory. The harness
    reads loose objects itself: a plain file, of bounded size, opened without waiting."""
    lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    commit = commit_file(alice, "trainer/model.py", "WIDTH = 128\n")
    blob = lab.repo.git.rev_parse(f"{commit}:trainer/model.py")
    path = Path(lab.repo.common_dir) / "objects" / blob[:2] / blob[2:]
    path.unlink()
    os.mkfifo(path)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(catch(lambda: lab.snapshot(commit, "softcap"))), daemon=True)
    reader.start()
    reader.join(20)
    assert outcome and f"object {blob[:10]} cannot be read" in outcome[0] and "not a plain file" in outcome[0], outcome

    path.unlink()
    bomb = zlib.compressobj()
    path.write_bytes(bomb.compress(b"blob %d\x00" % (4 << 30)) + b"".join(bomb.compress(bytes(1 << 24)) for _ in range(80))
                     + bomb.flush())  # 1.3 GB of zeros in about 1.3 MB
    assert "is not a loose object of at most 1024 MB" in catch(lambda: lab.snapshot(commit, "softcap"))


def catch(action) -> str:
    try:
        action()
    except LabError as e:
        return str(e)
    return "no error"


def test_the_base_snapshot_is_taken_when_the_program_starts(lab):
    """Before any agent has a box: later, an object swapped under the base's names changes
    nothing that the harness runs from the base commit."""
    base = lab.start_program("softcap")
    snapshot = lab.state_dir("softcap") / "snapshots" / base
    assert (snapshot / "trainer" / "eval.py").read_text() == "METRIC = 'val_bpb'\n"
    swap_object(lab, lab.repo.git.rev_parse(f"{base}:trainer/eval.py"), b"METRIC = 'x'\n")
    assert (lab.snapshot(base, "softcap") / "trainer" / "eval.py").read_text() == "METRIC = 'val_bpb'\n"


def test_the_kernel_sources_are_what_the_cpu_kernels_import_and_numba_files_them_where_we_look():
    """copy_kernel_cache trusts a copy only when these files are the base's: every trainer module
    the CPU kernels import (Numba bakes their globals in) must be on the list."""
    import ast
    from pathlib import Path

    from numba.core.caching import _CacheLocator
    from org.kernelcache import KERNEL_SOURCES, numba_subdir
    trainer = Path(__file__).resolve().parents[1] / "trainer"
    found, todo = set(), ["cpu_kernels"]
    while todo:
        name = todo.pop()
        found.add(f"trainer/{name}.py")
        for node in ast.walk(ast.parse((trainer / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "trainer":
                todo += [a.name for a in node.names if f"trainer/{a.name}.py" not in found]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer."):
                todo += [node.module.split(".", 1)[1]] if f"trainer/{node.module.split('.', 1)[1]}.py" not in found else []
    assert found == set(KERNEL_SOURCES)
    assert numba_subdir(trainer) == _CacheLocator.get_suitable_cache_subpath(str(trainer / "cpu_kernels.py"))


def test_a_commit_carries_code_not_weights(lab):
    """What a commit adds, compressed, is what it carries into its runs: the repo's whole model
    file is a few KB; 30,000 float32 weights are ~110 KB however they are written; a deletion
    carries nothing."""
    import base64

    import numpy as np
    base = lab.start_program("softcap")
    alice = lab.add_worktree("softcap", "alice")
    rewrite = commit_file(alice, "trainer/model.py", (ROOT / "trainer" / "model.py").read_text())
    assert carried_bytes(lab, base, rewrite) < 8 * 1024
    assert oversized(lab, base, rewrite, 64) is None
    weights = np.random.default_rng(0).standard_normal(30_000).astype(np.float32).tobytes()
    (alice / "trainer" / "init.bin").write_bytes(weights)
    binary = commit_file(alice, "trainer/model.py", "WIDTH = 64\n")  # (commits init.bin with it)
    literal = commit_file(alice, "trainer/init.py", f"W = {base64.b64encode(weights).decode()!r}\n")
    for commit, least in ((binary, 100), (literal, 2 * 100)):  # the literal's commit has both
        assert carried_bytes(lab, base, commit) > least * 1024
        reason = oversized(lab, base, commit, 64)
        assert reason.startswith("the commit carries ") and reason.endswith("no budget counts"), reason
    (alice / "trainer" / "init.bin").unlink()
    gone = commit_file(alice, "trainer/init.py", "")
    assert carried_bytes(lab, literal, gone) < 1024  # taking the weights out again
    assert code_refusal(lab, base, binary, ["trainer/eval.py"], 64) == oversized(lab, base, binary, 64)


def test_a_file_no_line_diff_can_weigh_quickly_is_carried_whole():
    """What a commit carries is weighed by a line diff (difflib), in the harness, outside every box,
    at submit and again as each run starts: it is quadratic, and a file of 50,000 lines interleaved
    with themselves reversed took 98 s (20,000: 16 s), each file of a commit. Past MAX_DIFF_WORK
    line pairs the file counts whole, as binary content does."""
    from org.commit_checks import MAX_DIFF_WORK, added_lines
    lines = [f"{i:08d}\n".encode() for i in range(20_000)]
    interleaved = b"".join(line for pair in zip(lines, reversed(lines)) for line in pair)
    assert 20_000 * 40_000 > MAX_DIFF_WORK
    assert added_lines(b"".join(lines), interleaved) == interleaved
    edited = b"".join(lines[:600]).replace(b"00000300", b"WIDTH=96")  # a module's size: weighed line by line
    assert added_lines(b"".join(lines[:600]), edited) == b"WIDTH=96\n"


def test_overrides_carry_no_weights_either(lab):
    """A string override could hold what a commit may not."""
    import base64
    import os
    from org.experiments import refusal
    from org.program import Program
    from test_org_runner import tiny_program
    base = lab.start_program("softcap")
    program = Program.model_validate(tiny_program())
    assert refusal(lab, program, base, base, {"note": "x" * 100_000}) is None  # compresses to nothing
    blob = base64.b64encode(os.urandom(80_000)).decode()  # 80 KB of weights, 107 KB of text
    assert refusal(lab, program, base, base, {"note": blob}).startswith("the overrides carry 79 KB (compressed)")
    tight = program.model_copy(update={"max_change_kb": 0.0001})  # (said "0 KB ..., more than max_change_kb: 0.0001")
    assert refusal(lab, tight, base, base, {"note": "x"}).startswith("the overrides carry 0.0")
    # (a hunt's find) the commit and its overrides were each held to the limit, so each carried 16 KB
    payload = lab.root / "trainer" / "payload.py"
    payload.parent.mkdir(exist_ok=True)
    payload.write_text(f"W = {base64.b64encode(os.urandom(10_000)).decode()!r}\n")
    lab.repo.git.add(str(payload))
    lab.repo.git.commit("-qm", "10 KB of weights")
    commit, half = lab.repo.head.commit.hexsha, {"note": base64.b64encode(os.urandom(10_000)).decode()}
    assert refusal(lab, program, base, commit, {}) is None and refusal(lab, program, base, base, half) is None
    both = refusal(lab, program, base, commit, half)
    assert both and both.startswith("the commit and its overrides carry 20 KB") and "more than max_change_kb: 16" in both, both


def test_two_changes_are_compared_by_syntax_tree_but_a_huge_module_by_its_bytes(lab, monkeypatch):
    """A submission is compared, under the ledger's lock, with each experiment on record by the
    syntax trees of the modules that differ (commit_checks.same_code: a comment is no new idea). A
    module of 10 MB of `x = 1`, which compresses under max_change_kb, parsed and dumped in 21 s
    and 113 MB, once for each experiment on record: above MAX_PARSED_BYTES a module is its bytes."""
    from org import commit_checks
    parsed = []
    real_parse = commit_checks.ast.parse
    monkeypatch.setattr(commit_checks.ast, "parse", lambda source, *a, **k: parsed.append(len(source)) or real_parse(source, *a, **k))

    def committed(path: str, text: str) -> str:
        (lab.root / path).write_text(text)
        lab.repo.git.add(path)
        lab.repo.git.commit("-qm", path)
        return lab.repo.head.commit.hexsha
    small = committed("trainer/model.py", "WIDTH = 64\nDEPTH = 2\n")
    commented = committed("trainer/model.py", '"""The model."""\n\nWIDTH = 64  # wide\nDEPTH = 2\n')
    other = committed("trainer/model.py", "WIDTH = 64\nDEPTH = 3\n")
    assert commit_checks.same_code(lab, small, commented) and not commit_checks.same_code(lab, small, other)
    huge = "x = 1\n" * (commit_checks.MAX_PARSED_BYTES // 6 + 1)
    big = committed("trainer/big.py", huge)
    big_commented = committed("trainer/big.py", "# a comment\n" + huge)
    parsed.clear()
    assert not commit_checks.same_code(lab, big, big_commented)  # (compared as bytes: a new change)
    assert all(n <= commit_checks.MAX_PARSED_BYTES for n in parsed), parsed
