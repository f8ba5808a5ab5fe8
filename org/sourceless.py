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
    a module the base's runs do      ->  absent, in a lab's run and worker boxes (runs_tree:
    not load                                                         what run_modules lists)
    <stdlib>/site-packages           ->  a site tree (below)
    other Pythons' stdlibs           ->  absent (org/python_text.py)

    tree = stdlib_tree()   # built on first use (~3 s, 26 MB) under the harness's cache; OSError
                           # where it cannot be (the box then refuses to start: org/sandbox.py)
    lean = runs_tree(run_modules(code, list_loaded))  # of the modules runs load, and the codecs (~280 of ~600)

The packages installed beside it are Python text too, much of it in the stdlib's own style (a
5-gram built from this machine's site-packages scored 2.23 bpb on the stdlib, where the baseline
reads 2.08): so the same boxes see each site-packages folder as a tree made the same way, of
only what a run or a worker imports:

    <site-packages>/numpy/linalg/_linalg.py  ->  <tree>/numpy/linalg/_linalg.pyc
    <site-packages>/numpy/_core/*.so, data   ->  hard links (a copy across disks)
    <site-packages>/torch/, anthropic/, ...  ->  absent (RUN_PACKAGES: numpy, numba, scipy,
                                                 tokenizers, pyyaml and what they require; CuPy
                                                 and the CUDA libraries where installed; the
                                                 harness's own)

    trees = site_trees()   # {site-packages folder: its tree}, built on first use (~8 s) under the
                           # harness's cache, again once what is installed changes

What bytecode still holds (names, string constants, numbers) is not the text: the lookup attack
in tests/test_measure_attacks.py finds nothing in it. But a byte 6-gram of its identifiers and
literals, mixed into a weak model's logits as it is measured, gains on stdlib text (0.15 bpb
against a 2.14-bpb model, measured offline: README), as any Python text does; what a worker
computes beyond its forward passes is the measurement's to bound, not this tree's.
"""
from __future__ import annotations

import functools
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
import time
from pathlib import Path

from org import user_cache, write_atomically

LEFT_OUT = {"test", "idlelib", "pydoc_data", "turtledemo", "tkinter", "lib2to3", "ensurepip", "site-packages",
            "dist-packages", "__pycache__"}
SITES = ("site-packages", "dist-packages")  # what a folder of installed packages is called
# what a run or a worker imports (trainer/, org/model_worker.py), with what each requires: the
# rest of site-packages is absent from their boxes
RUN_PACKAGES = ("numpy", "numba", "scipy", "tokenizers", "pyyaml")  # (scipy: numba's linear algebra needs it)
GPU_PACKAGES = re.compile(r"(cupy|nvidia|cuda)([-_].*)?")  # CuPy, and the CUDA libraries it loads from wheels
SITE_FORMAT = 3  # what build_site makes of a RECORD (2: no type stubs; 3: no Cython sources)
NOT_RUN = {".pyc", ".pyo", ".pyi", ".pyx", ".pxd", ".pxi"}  # (bytecode made elsewhere, stubs, Cython's sources: text)
OWN = "nanolab"  # the harness's own files (an editable install's: its finder; the requirements are the harness's)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def site_dirs() -> list[Path]:
    """This interpreter's folders of installed packages (beside its stdlib, or a venv's), in the
    order imports search them."""
    return list(dict.fromkeys(Path(p).resolve() for p in site.getsitepackages() if Path(p).is_dir()))


def kept_below(stdlib: Path) -> list[Path]:
    """What lies inside the stdlib's folder but is not the stdlib (a box binds a site tree there)."""
    return [stdlib / name for name in SITES if (stdlib / name).is_dir()]


def stdlib_tree() -> Path:
    """The sourceless stdlib of this interpreter, built once (atomically) under the person's cache;
    OSError where it cannot be built."""
    stdlib = stdlib_dir()
    key = hashlib.sha256(f"{sys.version}\n{stdlib}\n{sorted(LEFT_OUT)}".encode()).hexdigest()[:12]
    return built("stdlib", key, lambda into: build(stdlib, into))


SURVEYED_SITES: dict = {}  # {the site folders as they stood: their trees}, as the runner found them (adopt_sites)


def site_trees() -> dict[Path, Path]:
    """{each of this interpreter's site-packages folders: its sourceless tree of what runs and
    workers import}, each built once; OSError where one cannot be built. (Read again only once a
    folder changes: a package installed or removed changes its folder of metadata.)"""
    key = (site_key(), user_cache("site"))
    trees = SURVEYED_SITES.get(key[0]) or _site_trees(*key)
    if not all(map(in_use, trees.values())):  # (a cache removed since)
        SURVEYED_SITES.clear()
        _site_trees.cache_clear()
        trees = _site_trees(*key)
    return trees


def site_key() -> tuple[tuple[Path, int], ...]:
    return tuple((folder, folder.stat().st_mtime_ns) for folder in site_dirs())


def site_survey() -> dict:
    """site_trees() as JSON, with the folders' times it holds for (org/python_text.py's survey)."""
    return {"key": [[str(folder), mtime] for folder, mtime in site_key()],
            "trees": {str(site): str(tree) for site, tree in site_trees().items()}}


def adopt_sites(survey: dict):
    """Take the trees another process of this machine found (site_survey), while the folders stand as then."""
    key = tuple((Path(folder), int(mtime)) for folder, mtime in survey["key"])
    SURVEYED_SITES[key] = {Path(site): Path(tree) for site, tree in survey["trees"].items()}


@functools.lru_cache(maxsize=4)
def _site_trees(folders: tuple[tuple[Path, int], ...], cache: Path) -> dict[Path, Path]:
    trees, wanted = {}, run_distributions([folder for folder, _ in folders])
    for folder, _ in folders:
        # (a RECORD names each file's hash: a package installed again, changed, is a tree of its own)
        records = "\n".join(f"{d.name} {d.version}\n{d.read_text('RECORD') or ''}" for d in wanted[folder])
        key = hashlib.sha256(f"{sys.version}\n{folder}\n{SITE_FORMAT}\n{records}".encode()).hexdigest()[:12]
        trees[folder] = built("site", key, lambda into: build_site(folder, wanted[folder], into))
    return trees


def run_distributions(folders: list[Path]) -> dict[Path, list[importlib.metadata.Distribution]]:
    """{folder: the distributions installed there that a run or a worker imports}: RUN_PACKAGES
    and what they require (their extras not), wherever each is installed (a venv's numba, its
    base's llvmlite), CuPy's and the CUDA libraries' where there, and the harness's own."""
    installed = {}
    for folder in folders:  # (in sys.path's order: the first of a name is the one imported)
        for dist in importlib.metadata.distributions(path=[str(folder)]):
            if dist.name:
                installed.setdefault(normal(dist.name), (folder, dist))
    wanted = [name for name in installed if GPU_PACKAGES.fullmatch(name) or name == OWN] + list(RUN_PACKAGES)
    chosen = {}
    while wanted:
        name = normal(wanted.pop())
        if name in chosen or name not in installed:
            continue
        chosen[name] = installed[name]
        if name != OWN:
            wanted += [required(r) for r in installed[name][1].requires or [] if required(r)]
    return {folder: [dist for name, (where, dist) in sorted(chosen.items()) if where == folder] for folder in folders}


def import_hint(line: str, where: str = "a run's box") -> str:
    """A failure's line, saying what a box of these trees imports where it could not import a
    module (a run's, on every program: sandbox.run_box; the worker that checks a code arm's)."""
    if "ModuleNotFoundError" not in line:
        return line
    return (f"{line} (importable in {where}: only the stdlib modules the base commit's runs load, "
            f"{', '.join(RUN_PACKAGES)} and what those require: org/sourceless.py)")


# run in a run's box of the base commit's snapshot (the whole tree): the stdlib modules its runs and
# workers load, Numba's compiler as it compiles and CuPy's where installed (JSON: their paths in the stdlib)
LOADED = """
import io, json, os, struct, sys, sysconfig
import numpy as np, numba
import trainer.model, trainer.data, trainer.train, trainer.checkpoint, trainer.cli, trainer.eval
numba.njit(lambda a: (a @ a).sum())(np.ones((2, 2)))
numba.njit(parallel=True)(lambda a: sum([a[i] for i in numba.prange(2)]))(np.ones(2))
try:
    import cupy, cupy.cuda.compiler
except Exception:
    pass
root = sysconfig.get_paths()["stdlib"]
print(json.dumps(sorted({os.path.relpath(m.__file__, root).removesuffix("c") for m in list(sys.modules.values())
                         if (getattr(m, "__file__", None) or "").startswith(root + os.sep)})))
"""


def run_modules(code: Path, list_loaded) -> list[str]:
    """The stdlib modules (paths in the stdlib, `json/decoder.py`) that the runs and workers of a
    base commit's snapshot `code` load: what `list_loaded()` prints (LOADED, run in a run's box of
    it), kept in the person's cache by the base's trainer/ and these trees. A lab's boxes hold no
    other module's bytecode (runs_tree). A module's -OO bytecode holds its names and constants, and
    its position tables say where each stands: placed so, the val documents' own gained 0.36 bpb
    against a 2.14-bpb model (README). Those a run loads stay: their code is in its memory anyway;
    and every codec (encodings/: imported at use, by name, as zipfile reads a name in cp437).
    The rest go whatever their split, so what a box lacks tells nothing of the lab's split key
    (an empty file for a val module's told which modules were val). Raises OSError or ValueError."""
    import json
    trainer = b"".join(p.name.encode() + p.read_bytes() for p in sorted((code / "trainer").glob("*.py")))
    trees = "\n".join(map(str, [stdlib_tree(), *site_trees().values()]))
    loaded_file = user_cache("modules") / f"{hashlib.sha256(trainer + trees.encode()).hexdigest()[:16]}.json"
    if not loaded_file.is_file():  # (a fresh listing: ~3 s of a box's CPU, once per trainer and trees)
        loaded = list_loaded()
        if not isinstance(names := json.loads(loaded), list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"the listing of what runs load printed {loaded[:80]!r}, not a list of modules")
        write_atomically(loaded_file, loaded)  # (only a good one: a bad one kept would be read for good)
    codecs = [p.relative_to(stdlib_tree()).with_suffix(".py").as_posix() for p in (stdlib_tree() / "encodings").glob("*.pyc")]
    return sorted({name for name in json.loads(loaded_file.read_text()) if name.endswith(".py")
                   and name.split("/")[0] not in LEFT_OUT} | set(codecs))


def runs_tree(modules: list[str]) -> Path:
    """stdlib_tree() with the bytecode of `modules` (run_modules) and of no other module, built
    once per list under the person's cache (hard links into the whole tree); OSError where it
    cannot be built."""
    tree, kept = stdlib_tree(), sorted(set(modules))
    key = hashlib.sha256(f"{tree}\n{kept}".encode()).hexdigest()[:12]
    return built("stdlib-runs", key, lambda into: build_runs(tree, set(kept), into))


def build_runs(tree: Path, modules: set[str], into: Path):
    """The files of `tree` a box of `modules` holds: their .pyc; the extension modules; any other
    file only in a folder that keeps a module (a folder with none would import as an empty
    namespace package); the mount points of the site trees."""
    files = [Path(folder, name).relative_to(tree) for folder, _, names in os.walk(tree) for name in names]
    pycs = {f for f in files if f.suffix == ".pyc" and f.with_suffix(".py").as_posix() in modules}
    folders = {f.parent for f in pycs}
    for rel in [*pycs, *(f for f in files if f.suffix != ".pyc" and f.name != ".complete"
                         and (f.parent in folders or f.parts[0] == "lib-dynload"))]:
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(tree / rel, into / rel)
        except OSError:
            shutil.copy2(tree / rel, into / rel)
    for name in SITES:
        if (tree / name).is_dir():
            (into / name).mkdir(exist_ok=True)


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


def built(kind: str, key: str, build_into) -> Path:
    """A tree `build_into` fills, built once (atomically) under the person's cache as
    <kind>/<tag>-<key>; OSError where it cannot be built."""
    folder = user_cache(kind)
    tree = folder / f"{sys.implementation.cache_tag}-{key}"
    if in_use(tree):
        return tree
    folder.mkdir(parents=True, exist_ok=True)
    sweep_unused(folder)  # (a new tree: an older one may be left behind, of a site since changed)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=folder))
    try:
        build_into(scratch)
        (scratch / ".complete").write_text(f"{sys.version}\n")
        scratch.rename(tree)
    except OSError:
        if not (tree / ".complete").exists():  # (another process's build won the rename: use it)
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tree


UNUSED_DAYS = 7  # a tree no box was made of for this long goes (a site's is about 900 MB)


def in_use(tree: Path) -> bool:
    """Whether the tree is built, and if so marked used now (its .complete's time: sweep_unused)."""
    try:
        os.utime(tree / ".complete")
        return True
    except OSError:  # (a cache it may read and not write: built all the same)
        return (tree / ".complete").exists()


def sweep_unused(folder: Path):
    """The trees under folder no box was made of in UNUSED_DAYS, and builds a killed process left:
    a package upgraded, or installed, makes its site a new tree, and the old one was kept for good."""
    for tree in folder.iterdir():
        marker = tree / (".complete" if not tree.name.startswith(".building-") else ".")
        try:
            unused = time.time() - marker.stat().st_mtime > UNUSED_DAYS * 86400
        except OSError:
            unused = False
        if unused:
            shutil.rmtree(tree, ignore_errors=True)


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
    level 2, a type stub or a Cython source (NOT_RUN: text) not at all, any other as a hard link (a copy across
    disks: CuPy's and LLVM's libraries are hundreds of MB)."""
    for dist in distributions:
        for name in files_of(dist, folder):
            source = Path(os.path.normpath(folder / name))  # (scripts lie in ../../../bin: not taken)
            if not source.is_relative_to(folder) or source.suffix in NOT_RUN or not source.is_file():
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


def files_of(dist: importlib.metadata.Distribution, folder: Path) -> list:
    """What a distribution installed, by its RECORD; else (Debian's packages, an egg's metadata)
    every file of the modules its top_level.txt names; else OSError."""
    if dist.files is not None:
        return dist.files
    tops = (dist.read_text("top_level.txt") or "").split()
    if not tops:  # (a legacy `setup.py develop`'s: what it holds is not known)
        raise OSError(f"{dist.name} in {folder} lists no files (no RECORD, no top_level.txt): install it with pip")
    return [path.relative_to(folder) for top in tops for path in [*folder.glob(f"{top}.*"), *(folder / top).rglob("*")]]


def compiled(source: Path, target: Path):
    try:
        py_compile.compile(str(source), cfile=str(target), dfile=str(source), doraise=True, optimize=2)
    except py_compile.PyCompileError:  # (a few deliberately broken files, in tests)
        pass
