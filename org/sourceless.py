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

The packages installed beside it are Python text too, much of it in the stdlib's own style (a
5-gram built from this machine's site-packages scored 2.23 bpb on the stdlib, where the baseline
reads 2.08): so the same boxes see each site-packages folder as a tree made the same way, holding
only what a run or a worker imports and nothing else, and no other site- or dist-packages folder:

    <site-packages>/numpy/linalg/_linalg.py  ->  <tree>/numpy/linalg/_linalg.pyc
    <site-packages>/numpy/_core/*.so, data   ->  hard links (a copy across disks)
    <site-packages>/torch/, anthropic/, ...  ->  absent (RUN_PACKAGES: numpy, numba, tokenizers,
                                                 pyyaml and what they require; CuPy and the CUDA
                                                 libraries where installed; the harness's own)
    /usr/lib/python3/dist-packages, ...      ->  absent (other_sites)

    trees = site_trees()   # {site-packages folder: its tree}, built on first use (~10 s) beside it

What bytecode still holds (names, string constants, numbers) is not the text: the lookup attack
in tests/test_measure_attacks.py finds nothing in it. A decompiler would get identifiers and
literals back in order, a weaker lookup that no test here measures.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import importlib.metadata
import os
import py_compile
import re
import shutil
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

from org import user_cache

LEFT_OUT = {"test", "idlelib", "pydoc_data", "turtledemo", "tkinter", "lib2to3", "ensurepip", "site-packages",
            "dist-packages", "__pycache__"}
SITES = ("site-packages", "dist-packages")  # what a folder of installed packages is called
# what a run or a worker imports (trainer/, org/model_worker.py), with what each requires: the
# rest of site-packages is absent from their boxes
RUN_PACKAGES = ("numpy", "numba", "tokenizers", "pyyaml")
GPU_PACKAGES = re.compile(r"(cupy|nvidia|cuda)[-_].*")  # CuPy, and the CUDA libraries it loads from wheels
OWN = "nanolab"  # the harness's own files (an editable install's: its finder; the requirements are the harness's)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def site_dirs() -> list[Path]:
    """This interpreter's folders of installed packages (beside its stdlib, or a venv's)."""
    return sorted({Path(p).resolve() for p in site.getsitepackages() if Path(p).is_dir()})


def kept_below(stdlib: Path) -> list[Path]:
    """What lies inside the stdlib's folder but is not the stdlib (a box binds a site tree there)."""
    return [stdlib / name for name in SITES if (stdlib / name).is_dir()]


def other_stdlibs() -> tuple[Path, ...]:
    return other_pythons()[0]


def other_sites() -> tuple[Path, ...]:
    return other_pythons()[1]


@functools.lru_cache(maxsize=1)
def other_pythons() -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """Every other Python's stdlib in the usual places (a folder holding os.py), and wherever a
    walk of the software's folders finds one: much the same text as this one's (a worker that
    read Debian's python3.11 beside pyenv's 3.11.7 still read `better`; a 3.12 bundled with the
    Google Cloud SDK shared 31% of 3.11's lines), so absent from the same boxes. And every folder
    of installed packages that is not this interpreter's nor inside one of those: Debian's
    /usr/lib/python3/dist-packages, the person's ~/.local/lib/python3.11/site-packages."""
    home, versions = Path.home(), Path(sys.base_prefix).resolve().parent
    patterns = ["/usr/lib/python*", "/usr/lib64/python*", "/usr/local/lib/python*", "/opt/*/lib/python*",
                f"{versions}/*/lib/python*", f"{versions}/*/lib/pypy*", f"{home}/.pyenv/versions/*/lib/python*",
                f"{home}/.local/share/uv/python/*/lib/python*", f"{home}/*conda3/lib/python*",
                f"{home}/*conda3/envs/*/lib/python*"]
    found = {Path(p).resolve() for pattern in patterns for p in glob.glob(pattern) if Path(p, "os.py").is_file()}
    stdlibs, sites = walked([*SEARCHED, str(home)])
    stdlibs = (found | stdlibs) - {stdlib_dir()}
    ours = [*site_dirs(), user_cache("").resolve()]  # (the trees made here hold empty mount points of that name)
    sites = {s for s in sites if not any(s.is_relative_to(p) for p in [*stdlibs, *ours])}
    return tuple(sorted(stdlibs)), tuple(sorted(sites))


SEARCHED = ("/usr", "/opt", "/srv", "/snap", "/nix", "/home", "/root")  # where software is installed
STDLIB_MARKS = {"os.py", "abc.py", "codecs.py"}  # what a folder of a stdlib holds, of any version
STDLIB_NAME = re.compile(r"(python|pypy)[\d.]*|lib-python|[23](\.\d+)?")  # python3.12, pypy3.10, PyPy's lib-python/3
NOT_SEARCHED = {*SITES, "node_modules", ".git", "__pycache__", ".cache"}
MAX_WALKED = 300_000  # folders: 19k here (0.4 s); a home of millions stops the walk there
MAX_FOUND = 64  # each is a mount in every run's box: folders an agent made to look like stdlibs stop here


def walked(roots: list[str], limit: int = MAX_WALKED) -> tuple[set[Path], set[Path]]:
    """Folders holding a stdlib under `roots`, and folders of installed packages outside them (not
    inside a site-packages, nor in a lab: its worktrees and runs are agents' to fill, and every
    folder found is a mount)."""
    stdlibs, sites, walked = set(), set(), 0
    for root in dict.fromkeys(roots):
        for folder, folders, files in os.walk(root):  # (links not followed)
            walked += 1
            if ".lab" in folders:  # a lab's root (org/workspace.py): what lies below is its own
                folders[:] = []
            elif STDLIB_MARKS <= set(files) and STDLIB_NAME.fullmatch(os.path.basename(folder)):
                stdlibs.add(Path(folder).resolve())
                folders[:] = []
            sites |= {Path(folder, name).resolve() for name in folders if name in SITES}
            folders[:] = [name for name in folders if name not in NOT_SEARCHED]
            if walked >= limit or len(stdlibs) + len(sites) >= MAX_FOUND:
                return stdlibs, sites
    return stdlibs, sites


def stdlib_tree() -> Path | None:
    """The sourceless stdlib of this interpreter, built once (atomically) under the person's cache;
    None where it cannot be built."""
    stdlib = stdlib_dir()
    key = hashlib.sha256(f"{sys.version}\n{stdlib}\n{sorted(LEFT_OUT)}".encode()).hexdigest()[:12]
    return built("stdlib", key, lambda into: build(stdlib, into))


def site_trees() -> dict[Path, Path] | None:
    """{each of this interpreter's site-packages folders: its sourceless tree of what runs and
    workers import}, each built once; None where one cannot be built."""
    trees = {}
    for folder in site_dirs():
        wanted = run_distributions(folder)
        # (a RECORD names each file's hash: a package installed again, changed, is a tree of its own)
        records = "\n".join(f"{d.name} {d.version}\n{d.read_text('RECORD') or ''}" for d in wanted)
        key = hashlib.sha256(f"{sys.version}\n{folder}\n{records}".encode()).hexdigest()[:12]
        tree = built("site", key, lambda into: build_site(folder, wanted, into))
        if tree is None:
            return None
        trees[folder] = tree
    return trees


def run_distributions(folder: Path) -> list[importlib.metadata.Distribution]:
    """The distributions installed in `folder` that a run or a worker imports: RUN_PACKAGES and
    what they require (their extras not), CuPy's and the CUDA libraries' where there, and the
    harness's own."""
    installed = {normal(d.name): d for d in importlib.metadata.distributions(path=[str(folder)]) if d.name}
    wanted = [name for name in installed if GPU_PACKAGES.fullmatch(name) or name == OWN] + list(RUN_PACKAGES)
    chosen = {}
    while wanted:
        name = normal(wanted.pop())
        if name in chosen or name not in installed:
            continue
        chosen[name] = installed[name]
        if name != OWN:
            wanted += [required(r) for r in installed[name].requires or [] if required(r)]
    return [chosen[name] for name in sorted(chosen)]


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # (PEP 503)


def required(requirement: str) -> str | None:
    """The name a Requires-Dist line requires where its marker holds on this machine, else None."""
    from packaging.requirements import Requirement  # (pip's, and installed with the harness)
    req = Requirement(requirement)
    return req.name if req.marker is None or req.marker.evaluate({"extra": ""}) else None


def built(kind: str, key: str, build_into) -> Path | None:
    """A tree `build_into` fills, built once (atomically) under the person's cache as
    <kind>/<tag>-<key>; None where it cannot be built."""
    folder = user_cache(kind)
    tree = folder / f"{sys.implementation.cache_tag}-{key}"
    if (tree / ".complete").exists():
        return tree
    try:
        folder.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=folder))
        try:
            build_into(scratch)
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
                compiled(source, here / (name + "c"))
            elif not name.endswith((".pyc", ".pyo")):
                shutil.copy2(source, here / name, follow_symlinks=True)
    for kept in kept_below(stdlib):  # the mount points the box binds a site tree to
        (into / kept.name).mkdir(exist_ok=True)


def build_site(folder: Path, distributions: list, into: Path):
    """The files each distribution's RECORD lists in `folder`: a .py as a legacy .pyc at optimize
    level 2, any other as a hard link (a copy across disks: CuPy's and LLVM's libraries are
    hundreds of MB)."""
    for dist in distributions:
        for name in dist.files or []:
            source = Path(os.path.normpath(folder / name))  # (scripts lie in ../../../bin: not taken)
            if not source.is_relative_to(folder) or source.suffix in (".pyc", ".pyo") or not source.is_file():
                continue
            target = into / source.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.suffix == ".py":
                compiled(source, target.with_suffix(".pyc"))
            else:
                try:
                    os.link(source.resolve(), target)
                except OSError:
                    shutil.copy2(source, target)


def compiled(source: Path, target: Path):
    try:
        py_compile.compile(str(source), cfile=str(target), dfile=str(source), doraise=True, optimize=2)
    except py_compile.PyCompileError:  # (a few deliberately broken files, in tests)
        pass
