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

import dataclasses
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


def python_text() -> tuple[Path, ...]:
    return other_pythons()[2]


@functools.lru_cache(maxsize=1)
def other_pythons() -> tuple[tuple[Path, ...], tuple[Path, ...], tuple[Path, ...]]:
    """(other stdlibs, other folders of packages, other folders of Python text), all absent from
    the boxes that see this one's stdlib sourceless.

    Every other Python's stdlib in the usual places (a folder holding os.py), and wherever a walk
    of the software's folders finds one: much the same text as this one's (a worker that read
    Debian's python3.11 beside pyenv's 3.11.7 still read `better`; a 3.12 bundled with the Google
    Cloud SDK shared 31% of 3.11's lines). Every folder of installed packages that is not this
    interpreter's nor inside one of those: Debian's /usr/lib/python3/dist-packages, the person's
    ~/.local/lib/python3.11/site-packages. And the outermost folders the walk found holding
    MIN_TEXT bytes of .py or more and nothing a box may need (text_folders): the Google Cloud
    SDK's own 13k modules, the person's other projects."""
    home, versions = Path.home(), Path(sys.base_prefix).resolve().parent
    patterns = ["/usr/lib/python*", "/usr/lib64/python*", "/usr/local/lib/python*", "/opt/*/lib/python*",
                f"{versions}/*/lib/python*", f"{versions}/*/lib/pypy*", f"{home}/.pyenv/versions/*/lib/python*",
                f"{home}/.local/share/uv/python/*/lib/python*", f"{home}/*conda3/lib/python*",
                f"{home}/*conda3/envs/*/lib/python*"]
    found = {Path(p).resolve() for pattern in patterns for p in glob.glob(pattern) if Path(p, "os.py").is_file()}
    walk = walked([*SEARCHED, str(home)])
    stdlibs = (found | walk.stdlibs) - {stdlib_dir()}
    ours = [*site_dirs(), user_cache("").resolve()]  # (the trees made here hold empty mount points of that name)
    sites = {s for s in walk.sites if not any(s.is_relative_to(p) for p in [*stdlibs, *ours])}
    texts = text_folders(walk, needed(), MAX_FOUND - len(sites | walk.stdlibs))
    return tuple(sorted(stdlibs)), tuple(sorted(sites)), tuple(sorted(texts - stdlibs - sites))


SEARCHED = ("/usr", "/opt", "/srv", "/snap", "/nix", "/home", "/root")  # where software is installed
STDLIB_MARKS = {"os.py", "abc.py", "codecs.py"}  # what a folder of a stdlib holds, of any version
STDLIB_NAME = re.compile(r"(python|pypy)[\d.]*|lib-python|[23](\.\d+)?")  # python3.12, pypy3.10, PyPy's lib-python/3
NOT_SEARCHED = {*SITES, "node_modules", ".git", "__pycache__", ".cache"}
MAX_WALKED = 300_000  # folders: 19k here (1.5 s); a home of millions stops the walk there
MAX_FOUND = 64  # each is a mount in every run's box: folders an agent made to look like stdlibs stop here
MIN_TEXT = 128 << 10  # bytes of .py that make a folder Python text (gcloud's lib/: 140 MB; a module: 20 kB)


@dataclasses.dataclass
class Walk:
    stdlibs: set[Path] = dataclasses.field(default_factory=set)
    sites: set[Path] = dataclasses.field(default_factory=set)
    sources: dict[str, int] = dataclasses.field(default_factory=dict)  # folder -> bytes of its own .py files
    kept: set[str] = dataclasses.field(default_factory=set)  # folders holding a shared library or a lab


def walked(roots: list[str], limit: int = MAX_WALKED) -> Walk:
    """Folders holding a stdlib under `roots`, folders of installed packages outside them, and
    how many bytes of .py every other folder holds (not inside a site-packages, nor in a lab: its
    worktrees and runs are agents' to fill, and every folder found is a mount)."""
    walk = Walk()
    for root in dict.fromkeys(roots):
        for folder, folders, files in os.walk(root):  # (links not followed)
            if ".lab" in folders:  # a lab's root (org/workspace.py): what lies below is its own
                folders[:] = []
                walk.kept.add(folder)
            elif STDLIB_MARKS <= set(files) and STDLIB_NAME.fullmatch(os.path.basename(folder)):
                walk.stdlibs.add(Path(folder).resolve())
                folders[:] = []
                continue
            walk.sites |= {Path(folder, name).resolve() for name in folders if name in SITES}
            folders[:] = [name for name in folders if name not in NOT_SEARCHED]
            walk.sources[folder] = sum(size(os.path.join(folder, name)) for name in files if name.endswith(".py"))
            if any(name.endswith(".so") or ".so." in name for name in files):
                walk.kept.add(folder)
            if len(walk.sources) >= limit or len(walk.stdlibs) + len(walk.sites) >= MAX_FOUND:
                return walk
    return walk


def text_folders(walk: Walk, needed: list[Path], room: int) -> set[Path]:
    """The outermost folders of the walk whose tree holds MIN_TEXT bytes of .py or more, and no
    shared library (a program may load it), no lab, nothing of `needed`, nor is a folder of the
    top two levels (/usr/lib): the `room` largest."""
    total, kept = dict(walk.sources), set(walk.kept)
    for folder in sorted(walk.sources, key=lambda f: f.count(os.sep), reverse=True):  # (deepest first)
        parent = os.path.dirname(folder)
        if parent != folder and parent in total:
            total[parent] += total[folder]
            kept |= {parent} if folder in kept else set()
    candidates = [f for f, n in total.items() if n >= MIN_TEXT and f not in kept and len(Path(f).parts) > 3
                  and not any(p.is_relative_to(Path(f).resolve()) for p in needed)]
    outermost = []
    for folder in sorted(candidates, key=lambda f: f.count(os.sep)):
        if not any(folder.startswith(taken + os.sep) for taken in outermost):
            outermost.append(folder)
    return {Path(f).resolve() for f in sorted(outermost, key=lambda f: -total[f])[:max(room, 0)]}


def size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def needed() -> list[Path]:
    """What a run's or a worker's box may read besides its own trees: the interpreter, the harness
    (its model worker imports org/), its caches, and what the environment names for programs and
    libraries."""
    named = [p for key in ("PATH", "LD_LIBRARY_PATH") for p in os.environ.get(key, "").split(os.pathsep) if p]
    named += [os.environ[key] for key in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(key)]
    harness = Path(__file__).resolve().parents[1]  # (org/'s folder: this repo, or site-packages)
    return [Path(p).resolve() for p in [sys.prefix, sys.base_prefix, harness, user_cache(""), *named]]


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
    from packaging.markers import UndefinedEnvironmentName  # (installed with the harness: matplotlib's)
    from packaging.requirements import InvalidRequirement, Requirement
    try:
        req = Requirement(requirement)
        return req.name if req.marker is None or req.marker.evaluate({"extra": ""}) else None
    except (InvalidRequirement, UndefinedEnvironmentName):  # (a package's own metadata: not a box's failure)
        return None


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
