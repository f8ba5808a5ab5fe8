"""
A run's compiled-kernel cache: each run of an agent's commit gets a fresh one (nothing a run
writes reaches another), started from a copy of the base commit's where the kernels' sources are
the base's (org/runner.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

# what Numba compiles into the CPU kernels: cpu_kernels.py, and the trainer modules whose globals
# it bakes in (Numba checks only the first's hash; tests/test_org_lab.py checks this list)
KERNEL_SOURCES = ("trainer/cpu_kernels.py", "trainer/ops.py", "trainer/backend.py")


def copy_kernel_cache(base_code: Path, base_cache: Path, code: Path, cache: Path):
    """Create `code`'s compiled-kernel cache, starting from a copy of the base commit's when the
    kernels' sources are the base's byte for byte: Numba files a cache under its source's
    directory and checks the source's hash, so the copy, filed under `code`'s directory, is found
    and valid, and the commit's runs compile nothing (7-14 s a run on 2 cores). Only what the
    base commit's own runs compiled is copied (the program's code, trusted), as bytes: the
    harness never loads it. Kernels of sources of their own start empty, as before."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    found = base_cache / numba_subdir(base_code / "trainer")
    if found.is_dir() and all(_bytes(base_code / f) == _bytes(code / f) for f in KERNEL_SOURCES):
        shutil.copytree(found, tmp / numba_subdir(code / "trainer"))
    tmp.rename(cache)


def numba_subdir(directory: Path) -> str:
    """Where under NUMBA_CACHE_DIR Numba keeps the cache of the modules in `directory` (its
    UserProvidedCacheLocator: the directory's name and the SHA-1 of its absolute path)."""
    path = os.path.abspath(directory)
    return f"{os.path.basename(path)}_{hashlib.sha1(path.encode()).hexdigest()}"


def _bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None

