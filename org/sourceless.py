"""
The interpreter's standard library without its text, for the boxes of a program whose data is
that text (data.source pystdlib: the stdlib's .py files and pydoc's help topics, trainer/data.py).

Every Python process reads the stdlib, so a box could read the whole corpus: the lab's val and
confirm documents among it. A code arm's model worker, measured on those documents, could look
each window up in the files (its compute is no budget's) and put the next token in its logits;
the held-out gap could not see it, since the train windows lie in the same files. So the run and
worker boxes of such a program see, at the stdlib's path, a tree made once per interpreter:

    <stdlib>/json/decoder.py         ->  <tree>/json/decoder.pyc    (legacy layout: imported
                                                                     without a source, -OO: no
                                                                     docstring, no assert)
    <stdlib>/test/, idlelib/, ...    ->  absent                     (nothing a run imports;
                                                                     config-*: for building C)
    <stdlib>/pydoc_data/             ->  absent                     (the help topics: corpus
                                                                     text, as constants)
    <stdlib>/lib-dynload/*.so, data  ->  copied as they are
    <stdlib>/site-packages           ->  bound back by the box (numpy, numba, nanolab)
    other Pythons' stdlibs           ->  absent (other_stdlibs: /usr/lib/python3.11 beside
                                                 pyenv's is much the same text)

    tree = stdlib_tree()   # built on first use (~3 s, 26 MB) under the harness's cache; None where
                           # it cannot be (the box then refuses to start: org/sandbox.py)

What bytecode still holds (names, string constants, numbers) is not the text: the lookup attack
in tests/test_measure_attacks.py finds nothing in it. A decompiler would get identifiers and
literals back in order, a weaker lookup that no test here measures.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import os
import py_compile
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from org import user_cache

LEFT_OUT = {"test", "idlelib", "pydoc_data", "turtledemo", "tkinter", "lib2to3", "ensurepip", "site-packages",
            "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def kept_below(stdlib: Path) -> list[Path]:
    """What lies inside the stdlib's folder but is not the stdlib (a box binds it back)."""
    return [stdlib / name for name in ("site-packages", "dist-packages") if (stdlib / name).is_dir()]


@functools.lru_cache(maxsize=1)
def other_stdlibs() -> tuple[Path, ...]:
    """Every other Python's stdlib in the usual places (a folder holding os.py), and wherever a
    walk of the software's folders finds one: much the same text as this one's (a worker that
    read Debian's python3.11 beside pyenv's 3.11.7 still read `better`; a 3.12 bundled with the
    Google Cloud SDK shared 31% of 3.11's lines), so absent from the same boxes."""
    home, versions = Path.home(), Path(sys.base_prefix).resolve().parent
    patterns = ["/usr/lib/python*", "/usr/lib64/python*", "/usr/local/lib/python*", "/opt/*/lib/python*",
                f"{versions}/*/lib/python*", f"{versions}/*/lib/pypy*", f"{home}/.pyenv/versions/*/lib/python*",
                f"{home}/.local/share/uv/python/*/lib/python*", f"{home}/*conda3/lib/python*",
                f"{home}/*conda3/envs/*/lib/python*"]
    found = {Path(p).resolve() for pattern in patterns for p in glob.glob(pattern) if Path(p, "os.py").is_file()}
    return tuple(sorted((found | walked_stdlibs([*SEARCHED, str(home)])) - {stdlib_dir()}))


SEARCHED = ("/usr", "/opt", "/srv", "/snap", "/nix", "/home", "/root")  # where software is installed
STDLIB_MARKS = {"os.py", "abc.py", "codecs.py"}  # what a folder of a stdlib holds, of any version
STDLIB_NAME = re.compile(r"(python|pypy)[\d.]*|lib-python|[23](\.\d+)?")  # python3.12, pypy3.10, PyPy's lib-python/3
NOT_SEARCHED = {"site-packages", "dist-packages", "node_modules", ".git", "__pycache__", ".cache"}
MAX_WALKED = 300_000  # folders: 19k here (0.4 s); a home of millions stops the walk there
MAX_FOUND = 64  # each is a mount in every run's box: folders an agent made to look like stdlibs stop here


def walked_stdlibs(roots: list[str], limit: int = MAX_WALKED) -> set[Path]:
    """Folders holding a stdlib under `roots` (not inside one, nor in a site-packages, nor in a
    lab: its worktrees and runs are agents' to fill, and every stdlib found is a mount)."""
    found, walked = set(), 0
    for root in dict.fromkeys(roots):
        for folder, folders, files in os.walk(root):  # (links not followed)
            walked += 1
            if ".lab" in folders:  # a lab's root (org/workspace.py): what lies below is its own
                folders[:] = []
            elif STDLIB_MARKS <= set(files) and STDLIB_NAME.fullmatch(os.path.basename(folder)):
                found.add(Path(folder).resolve())
                folders[:] = []
            folders[:] = [name for name in folders if name not in NOT_SEARCHED]
            if walked >= limit or len(found) >= MAX_FOUND:
                return found
    return found


def stdlib_tree() -> Path | None:
    """The sourceless stdlib of this interpreter, built once (atomically) under the person's cache;
    None where it cannot be built."""
    stdlib = stdlib_dir()
    key = hashlib.sha256(f"{sys.version}\n{stdlib}\n{sorted(LEFT_OUT)}".encode()).hexdigest()[:12]
    folder = user_cache("stdlib")
    tree = folder / f"{sys.implementation.cache_tag}-{key}"
    if (tree / ".complete").exists():
        return tree
    try:
        folder.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=folder))
        try:
            build(stdlib, scratch)
            (scratch / ".complete").write_text(f"{sys.version}\n")
            scratch.rename(tree)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            if not (tree / ".complete").exists():  # (another process's build won the rename: use it)
                raise
    except OSError:
        return None
    return tree


def build(stdlib: Path, into: Path):
    """Each .py of the stdlib as a legacy .pyc at optimize level 2, every other file as it is."""
    for folder, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in LEFT_OUT and not d.startswith("config-")  # (libpython.a)
                         and not Path(folder, d).is_symlink())
        here = into / Path(folder).relative_to(stdlib)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            source = Path(folder, name)
            if name.endswith(".py"):
                try:
                    py_compile.compile(str(source), cfile=str(here / (name + "c")), dfile=str(source),
                                       doraise=True, optimize=2)
                except py_compile.PyCompileError:  # (a few deliberately broken files, in tests)
                    pass
            elif not name.endswith((".pyc", ".pyo")):
                shutil.copy2(source, here / name, follow_symlinks=True)
    for kept in kept_below(stdlib):  # the mount points the box binds back
        (into / kept.name).mkdir(exist_ok=True)
