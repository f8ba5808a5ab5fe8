"""
The harness's bytecode cache: where every trainer, data step and evaluator the harness starts
looks for its modules' bytecode (PYTHONPYCACHEPREFIX), and never writes (PYTHONDONTWRITEBYTECODE).

    env = {**env, **source_only()}   # in a run's, a worker's or the evaluator's environment
    fill(say)                        # once per runner; a no-op while this Python is unchanged

Why a prefix at all: a .pyc beside a snapshot's sources would be run in place of them (an
unchecked one is never compared with its source), so no process of the harness reads bytecode
from beside its sources. Why this one: Python then compiles every module it imports, numpy's and
the standard library's too, unless the prefix holds their bytecode, and that took 2.7 of a tiny
run's 4 seconds (measured: `python -m trainer train` on the tiny model, 4.0 s from an empty
prefix, 1.3 s from this one).

Trust: only the harness writes here, and only bytecode compiled from code of its own: `fill()`
imports the harness's own `trainer` and measuring modules (from this installation, never a
snapshot) in a process of ours, with the prefix writable. Boxes see it read-only (it lies under
the person's home, which a box mounts read-only), and an agent's commit holds no bytecode
(org/lab.py refuses it), so nothing an agent wrote is ever loaded from here. A module that is not
here, or whose source changed since (Python compares the source's mtime and size), is compiled
in memory as before: a stale cache costs time, never correctness.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from org import user_cache

# what fill() imports: the harness's trainer (every module: the kernels' numba, the data's
# tokenizers) and the measuring processes' own modules
FILL = """
import importlib, pkgutil, trainer
modules = [m.name for m in pkgutil.walk_packages(trainer.__path__, "trainer.") if not m.name.endswith("__main__")]
for name in ["org.evaluator", "org.model_worker", "trainer.cli"] + modules:
    try:
        importlib.import_module(name)
    except Exception:  # cupy on a machine without a GPU: its modules are compiled where they load
        pass
"""


def cache_dir() -> Path:
    return user_cache("bytecode")


def source_only() -> dict:
    """The environment that reads bytecode only from the harness's cache, and writes none."""
    return {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(cache_dir())}


def fill(say=print):
    """Compile what a trainer and the evaluator import into the cache, once for this Python and
    its installed packages (a stamp names them). Where it cannot, `say` why: runs go on, slower."""
    stamp = cache_dir() / f"filled-{interpreter_key()}"
    if stamp.exists():
        return
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    done = subprocess.run([sys.executable, "-X", f"pycache_prefix={cache_dir()}", "-c", FILL], env=env,
                          cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        return say(f"the bytecode cache {cache_dir()} was not filled: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    try:
        stamp.touch()
    except OSError as e:
        say(f"the bytecode cache {cache_dir()} was filled but not stamped: {e}")


def interpreter_key() -> str:
    """This interpreter and the state of its library folders: installing or removing a package
    changes its folder's mtime, and so the key."""
    paths = sysconfig.get_paths()
    folders = sorted({paths[name] for name in ("stdlib", "purelib", "platlib") if os.path.isdir(paths[name])})
    seen = [sys.executable, sys.version] + [f"{p}:{os.stat(p).st_mtime_ns}" for p in folders]
    return hashlib.sha256("\n".join(seen).encode()).hexdigest()[:16]
