"""What a box may write to disk (org/diskwatch.py), attacked from inside a box: a box that writes
without end, one that makes files without end, and boxes that write into the last of the disk.
Before the watch, each of these wrote all it tried: the disk is the harness's too (its ledger).
Last, the runner's side: a run so killed reads `killed`, with the reason."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from org.cli import main
from org.ledger import Ledger
from org.sandbox import Limits, Sandbox, available
from test_org_runner import agent_commit, make_project, tiny_program  # noqa: F401  (make_project is a fixture)

pytestmark = pytest.mark.skipif(available() is not None, reason=f"{available()}")

# 400 MB in 4 MB files, about 100 MB a second: what a run that checkpoints every step could do
WRITE = "import time\nfor i in range(100):\n    open(f'chunk{i}', 'wb').write(bytes(4 << 20)); time.sleep(0.04)\nprint('wrote it all')"
# 50,000 files, about 2,000 a second (a quiet disk makes them all before the first look, 1 s in)
FILES = "import time\nfor i in range(50_000):\n    open(f'f{i}', 'w').close(); time.sleep(0.0005)\nprint('made them all')"


def box_runs(tree: Path, code: str, **limits) -> subprocess.Popen:
    proc = Sandbox(writable=[tree], limits=Limits(**limits)).popen(
        ["python3", "-c", code], cwd=tree, env={"PATH": os.environ["PATH"]},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.out = proc.communicate(timeout=120)[0].decode()
    return proc


def written(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.iterdir())


def test_a_box_that_writes_without_end_is_stopped_at_its_bound(tmp_path):
    proc = box_runs(tmp_path, WRITE, disk_bytes=32 << 20)
    assert proc.returncode == -9 and "wrote it all" not in proc.out, proc.out
    assert proc.stopped.startswith("killed by the harness: its writable trees grew by")
    assert "more than the 32 MB a box may write" in proc.stopped
    assert written(tmp_path) < 300 << 20  # caught within a look or two, of 400 MB


def test_a_box_that_makes_sparse_files_is_stopped_at_what_they_hold(tmp_path):
    """A sparse file of 1 GB takes no block: counted by blocks, a box made as many as it liked,
    and each one that git's status met (the harness's, in `org stop`, `launch`, `takeover`) it
    hashed whole. Each file now counts its size."""
    sparse = ("import time\nfor i in range(40):\n    f = open(f's{i}', 'wb'); f.truncate(256 << 20); f.close()\n"
              "    time.sleep(0.1)\nprint('made them all')")
    proc = box_runs(tmp_path, sparse, disk_bytes=1 << 30)
    assert proc.returncode == -9 and "made them all" not in proc.out, proc.out
    assert "more than the 1.0 GB a box may write" in proc.stopped, proc.stopped


def test_a_box_that_writes_into_files_no_name_reaches_is_stopped_at_its_bound(tmp_path):
    """The attack: each file deleted while the box holds it open (or made nameless: O_TMPFILE).
    Its blocks are the disk's until the box lets go, and the walk of its trees saw none of them:
    400 MB written, the box untouched, and so the whole disk. They count now, as they are held."""
    hidden = ("import os, time\nheld = []\nfor i in range(100):\n"
              "    fd = os.open('.', os.O_TMPFILE | os.O_WRONLY) if i % 2 else os.open(f'c{i}', os.O_CREAT | os.O_WRONLY)\n"
              "    os.write(fd, bytes(4 << 20)); held.append(fd)\n"
              "    if not i % 2: os.unlink(f'c{i}')\n"
              "    time.sleep(0.04)\nprint('wrote it all')")
    proc = box_runs(tmp_path, hidden, disk_bytes=32 << 20)
    assert proc.returncode == -9 and "wrote it all" not in proc.out, proc.out
    assert "more than the 32 MB a box may write" in proc.stopped, proc.stopped
    assert len(list(tmp_path.iterdir())) <= 1  # (nothing a walk could have found, but one it was killed writing)


def test_a_box_that_keeps_deleted_files_only_mapped_is_stopped_at_its_bound(tmp_path):
    """The next attack: each file deleted with a page of it mapped and its descriptor closed. No
    descriptor shows it, and its blocks stay the disk's while the mapping lives: 6 GB were held
    for as long as the box liked in a box of 4 GB."""
    mapped = ("import ctypes, os, time\nlibc = ctypes.CDLL(None)\nlibc.mmap.restype = ctypes.c_void_p\n"
              "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n"
              "for i in range(100):\n"
              "    fd = os.open(f'c{i}', os.O_CREAT | os.O_RDWR)\n    os.write(fd, bytes(4 << 20))\n"
              "    assert libc.mmap(None, 4096, 3, 1, fd, 0) not in (None, ctypes.c_void_p(-1).value)\n"
              "    os.close(fd); os.unlink(f'c{i}')\n"  # (Python's mmap keeps a descriptor: not this one)
              "    time.sleep(0.04)\nprint('wrote it all')")
    proc = box_runs(tmp_path, mapped, disk_bytes=32 << 20)
    assert proc.returncode == -9 and "wrote it all" not in proc.out, proc.out
    assert "more than the 32 MB a box may write" in proc.stopped, proc.stopped
    assert len(list(tmp_path.iterdir())) <= 1


def test_a_box_that_makes_files_without_end_is_stopped(tmp_path):
    proc = box_runs(tmp_path, FILES, disk_files=2_000)
    assert proc.returncode == -9 and "made them all" not in proc.out, proc.out
    assert "more than the 2000 a box may make" in proc.stopped
    assert len(list(tmp_path.iterdir())) < 50_000


# A path past the kernel's 4096 bytes cannot be looked at by name: 20 nested folders of 250-byte
# names give one, and then the writing starts. Before, the watch skipped what lay below (its
# errors were ignored) and the box wrote all it tried. (Deep nesting, which ended the watch's
# thread with a RecursionError, fails closed the same way.)
DEEP = ("import os\nfor i in range(20):\n    os.mkdir('d' * 250); os.chdir('d' * 250)\n" + WRITE.replace(
    "import time\n", "import time\n", 1))


def test_a_tree_past_the_kernels_path_length_is_measured_and_its_box_stopped_at_its_bound(tmp_path):
    """Its paths are past PATH_MAX, so no walk by name reaches its files: GNU find measures it."""
    proc = box_runs(tmp_path, DEEP, disk_bytes=32 << 20)
    assert proc.returncode == -9 and "wrote it all" not in proc.out, proc.out
    assert proc.stopped.startswith("killed by the harness: its writable trees grew by"), proc.stopped


def test_find_counts_a_tree_as_the_walk_does(tmp_path):
    """Past the kernel's path length the watch counts by GNU find: a count that differed (du's
    counted a hard-linked name once, and a sparse file's blocks or its size over the whole tree)
    let a box hide usage by nesting a folder deep between two looks."""
    from org.diskwatch import found_usage, walk
    (tmp_path / "a.txt").write_text("x" * 10_000)
    (tmp_path / "sub").mkdir()
    for i in range(50):
        os.link(tmp_path / "a.txt", tmp_path / "sub" / f"link{i}")
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["fallocate", "-l", str(4 << 20), str(tmp_path / "held")], check=True)  # blocks, size 4 MB
    (tmp_path / "No such file or directory").mkdir()  # (a name an error line could be told by)
    held, entries = walk([tmp_path])
    assert found_usage([tmp_path]) == (held, entries) and entries == 55  # (each name; each inode's bytes once)
    assert (1 << 30) + (4 << 20) + 10_000 <= held < (1 << 30) + (4 << 20) + 64_000  # (the sparse file at its size)


def test_no_box_writes_into_the_harnesss_reserve_but_one_may_delete(tmp_path):
    everything = 1 << 60  # more than this disk has free: every byte free is in the reserve
    proc = box_runs(tmp_path, WRITE, disk_reserve=everything)
    assert proc.returncode == -9 and "wrote it all" not in proc.out
    assert "less than the" in proc.stopped and "the harness keeps for its ledger (delete files to go on)" in proc.stopped
    cleanup = box_runs(tmp_path, "import glob, os\nfor f in glob.glob('chunk*'): os.remove(f)\nprint('deleted')",
                       disk_reserve=everything)
    assert cleanup.returncode == 0 and "deleted" in cleanup.out and cleanup.stopped is None
    assert written(tmp_path) == 0


def test_the_reserve_holds_between_looks_however_long_a_look_takes(tmp_path, monkeypatch):
    """The watch looks again after ten times its last look's time (a tenth of a core): for trees
    of a million files, half a minute, and a box writes the disk full in it. Here a look takes
    2 s (as for such a tree), and the box waits out the first look, then writes 800 MB. The disk's
    free room is read every second meanwhile, and a fall into the reserve brings the look forward."""
    from org import diskwatch
    real = diskwatch.usage

    def slow(trees, lenient=False):  # (the box's start is measured as it is)
        try:
            return real(trees, lenient)
        finally:
            time.sleep(0 if lenient else 2.0)
    monkeypatch.setattr(diskwatch, "usage", slow)
    late = ("import time\ntime.sleep(4)\nfor i in range(100):\n    open(f'chunk{i}', 'wb').write(bytes(8 << 20)); "
            "time.sleep(0.1)\nprint('wrote it all')")
    t0 = time.monotonic()
    proc = box_runs(tmp_path, late, disk_reserve=1 << 60)  # (every byte free is in the reserve)
    assert proc.returncode == -9 and "wrote it all" not in proc.out, (proc.out, time.monotonic() - t0)
    assert "the harness keeps for its ledger (delete files to go on)" in proc.stopped, proc.stopped
    assert written(tmp_path) < 600 << 20


# 80 MB (more than the 64 MB of small edits a box may always make), then a look of the watch
CHUNK = "import time, uuid\nopen(uuid.uuid4().hex, 'wb').write(bytes(80 << 20)); time.sleep(2.5)\nprint('wrote')"


def test_an_agents_commands_one_after_another_stop_at_its_total(tmp_path):
    """Each of an agent's commands may write Limits.disk_bytes: one after another they took the
    disk down to the harness's reserve, and from then on every other agent's command that wrote
    was killed (they cannot delete that agent's files). An agent's trees hold Limits.disk_total at
    most: a command that writes past it is killed; one that deletes goes on."""
    bounds = {"disk_bytes": 128 << 20, "disk_total": 200 << 20}
    first, second, third = (box_runs(tmp_path, CHUNK, **bounds) for _ in range(3))
    assert first.returncode == second.returncode == 0 and first.stopped is None and second.stopped is None
    assert third.returncode == -9 and "wrote" not in third.out, third.out
    assert "its writable trees hold 240 MB, more than the 200 MB an agent's work may take" in third.stopped
    cleanup = box_runs(tmp_path, "import glob, os\nos.remove(sorted(glob.glob('*'))[0])\nprint('deleted')", **bounds)
    assert cleanup.returncode == 0 and cleanup.stopped is None
    assert box_runs(tmp_path, "print('reads')", **bounds).stopped is None


def test_a_box_within_its_bounds_is_left_alone(tmp_path):
    proc = box_runs(tmp_path, WRITE)  # the defaults: 16 GB, 100k files, 1 GB kept free
    assert proc.returncode == 0 and "wrote it all" in proc.out and proc.stopped is None, proc.out
    assert written(tmp_path) == 400 << 20


FILLS_ITS_DIRECTORY = ('    """Train to the budget; return (and write) result.json\'s dict."""\n',
                       '    """Train to the budget; return (and write) result.json\'s dict."""\n'
                       '    import time as _t  # a checkpoint every moment, kept forever\n'
                       '    for i in range(100):\n'
                       '        (Path(out) / f"junk{i}").write_bytes(bytes(4 << 20)); _t.sleep(0.04)\n')


def test_a_run_that_fills_its_disk_is_killed_and_its_record_says_why(make_project, monkeypatch):
    """The runner's side: a run's box past its bound is killed, and the run reads `killed` with the
    harness's reason (not a crash, nor a signal to retry on). The bound is 16 GB; here 32 MB."""
    import org.runner
    real = org.runner.run_box
    monkeypatch.setattr(org.runner, "run_box", lambda *a, **k: real(*a, **k).with_extra(disk_bytes=32 << 20))
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text.replace(*FILLS_ITS_DIRECTORY))
    assert main(["submit", "tiny", "--arm", "mallory", "--ref", "agent/tiny/mallory/work"]) == 0
    assert main(["run", "tiny"]) == 0
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
        runs = {r["arm"]: r for r in ledger.runs("tiny") if r["purpose"] == "main"}
    assert runs["baseline"]["status"] == "completed"
    assert runs["mallory"]["status"] == "killed", runs["mallory"]
    assert runs["mallory"]["reason"].startswith("killed by the harness: its writable trees grew by")
    assert sum(p.stat().st_size for p in Path(runs["mallory"]["run_dir"]).glob("junk*")) < 300 << 20


def test_empty_folders_made_command_after_command_count_toward_an_agents_work(tmp_path, monkeypatch):
    """Counted as nothing, empty folders and files passed every bound but the entries a box may
    make: 100,000 a command took 400 MB of disk (a block each) or the filesystem's inodes, over
    as many commands as an agent liked. Each counts a block now: an agent's work holds them too."""
    import org.diskwatch
    # Past the 64 MB of growth a box may always make (16,384 folders), a look at a tree of many
    # folders takes long, and the next waits ten times that: on a busy CI machine the box made all
    # 60,000 before it. So here a box may grow by 4 MB: the first look (at 1 s) is past it.
    monkeypatch.setattr(org.diskwatch, "GROWTH_SLACK", 4 << 20)
    folders = ("import os, time\nfor i in range(60_000):\n    os.mkdir(f'd{i}')\n    i % 100 or time.sleep(0.01)\n"
               "print('made them all')")  # (6 s at least)
    proc = box_runs(tmp_path, folders, disk_total=8 << 20)
    assert proc.returncode == -9 and "made them all" not in proc.out, proc.out
    assert "an agent's work may take" in proc.stopped, proc.stopped
    from org.diskwatch import ENTRY_RESERVE, over
    limits = Limits()
    assert "fewer than the 100000 the harness keeps" in over((0, 0), (0, 5000), 100 << 30, limits, ENTRY_RESERVE - 1)
    assert over((0, 5000), (0, 4000), 100 << 30, limits, 10) is None  # deleting, past it


def test_an_agents_box_stops_short_of_the_disk_the_runs_need(tmp_path):
    """What an agent's command writes stays in its worktree: a few commands of 16 GB each (each
    box's own bound) brought the disk to the 1 GB a run may not write into, and every run that
    then wrote was killed (`killed` is not retried), other agents' included. An agent's box
    writes 4 GB a command at most, and stops while 8 GB are free; a run's box goes on to 1 GB."""
    from org.diskwatch import over
    from org.sandbox import agent_box, run_box
    for folder in ("lab", "tree", "git/worktrees/a", "run", "snapshot", "data", "kernels"):
        (tmp_path / folder).mkdir(parents=True)
    agent = agent_box(tmp_path / "lab", tmp_path / "tree", tmp_path / "git/worktrees/a", tmp_path / "git", "agent/p/a",
                      tmp_path / "git/agent-objects/p/a")
    run = run_box(tmp_path / "lab", tmp_path / "run", tmp_path / "snapshot", tmp_path / "data", tmp_path / "kernels",
                  gpu=False, cpu_seconds=60)
    wrote, free = (200 << 20, 10), 5 << 30
    assert "less than the 8.0 GB the harness keeps" in over((0, 0), wrote, free, agent.limits)
    assert over((0, 0), wrote, free, run.limits) is None
    assert "more than the 4.0 GB a box may write" in over((0, 0), (5 << 30, 10), 100 << 30, agent.limits)
    assert "more than the 16.0 GB an agent's work may take" in over((15 << 30, 0), (17 << 30, 10), 100 << 30, agent.limits)
    assert over((17 << 30, 0), (16 << 30, 10), 100 << 30, agent.limits) is None  # deleting, over it
    assert over((15 << 30, 0), (17 << 30, 10), 100 << 30, run.limits) is None
