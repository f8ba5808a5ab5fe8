"""What a box may write to disk (org/diskwatch.py), attacked from inside a box: a box that writes
without end, one that makes files without end, and boxes that write into the last of the disk.
Before the watch, each of these wrote all it tried: the disk is the harness's too (its ledger)."""
import os
import subprocess
from pathlib import Path

import pytest

from org.sandbox import Limits, Sandbox, available

pytestmark = pytest.mark.skipif(available() is not None, reason=f"{available()}")

# 400 MB in 4 MB files, about 100 MB a second: what a run that checkpoints every step could do
WRITE = "import time\nfor i in range(100):\n    open(f'chunk{i}', 'wb').write(bytes(4 << 20)); time.sleep(0.04)\nprint('wrote it all')"
FILES = "for i in range(50_000):\n    open(f'f{i}', 'w').close()\nprint('made them all')"


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


def test_a_box_that_makes_files_without_end_is_stopped(tmp_path):
    proc = box_runs(tmp_path, FILES, disk_files=2_000)
    assert proc.returncode == -9 and "made them all" not in proc.out, proc.out
    assert "more than the 2000 a box may make" in proc.stopped
    assert len(list(tmp_path.iterdir())) < 50_000


def test_no_box_writes_into_the_harnesss_reserve_but_one_may_delete(tmp_path):
    everything = 1 << 60  # more than this disk has free: every byte free is in the reserve
    proc = box_runs(tmp_path, WRITE, disk_reserve=everything)
    assert proc.returncode == -9 and "wrote it all" not in proc.out
    assert "less than the" in proc.stopped and "the harness keeps for its ledger (delete files to go on)" in proc.stopped
    cleanup = box_runs(tmp_path, "import glob, os\nfor f in glob.glob('chunk*'): os.remove(f)\nprint('deleted')",
                       disk_reserve=everything)
    assert cleanup.returncode == 0 and "deleted" in cleanup.out and cleanup.stopped is None
    assert written(tmp_path) == 0


def test_a_box_within_its_bounds_is_left_alone(tmp_path):
    proc = box_runs(tmp_path, WRITE)  # the defaults: 16 GB, 100k files, 1 GB kept free
    assert proc.returncode == 0 and "wrote it all" in proc.out and proc.stopped is None, proc.out
    assert written(tmp_path) == 400 << 20
