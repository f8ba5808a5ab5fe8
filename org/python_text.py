"""
Where Python text lies on this machine besides the interpreter's own stdlib and site-packages
(which a pystdlib program's boxes see as bytecode: org/sourceless.py), so that those boxes see
none of it. Any Python source is text in the stdlib's own style, and a model worker that builds a
table from it as it is measured scores lower than its weights alone (a 5-gram built from 12 MB of
site-packages: 2.23 bits per byte on stdlib text, against a two-minute model's 2.08).

A list of what to hide cannot be complete (this machine held 1.5 GB of wheels under /opt, uv's
unpacked archives under ~/.cache, Pythons under /var/lib/docker), so the box starts from the
system's folders only, and hides what it finds in those:

    /home, /root, /opt, /srv, /var, /mnt, /work, ...   absent: every folder at / but SYSTEM
                                                        (outside_system)
    the interpreter, the dynamic linker's and CUDA's    bound back from those (kept)
      folders, LD_LIBRARY_PATH                          (the harness's checkouts: never,
                                                          org/unseen.py's harness_text)
    other Pythons' stdlibs in /usr (os.py, abc.py,      absent (a walk of SYSTEM's folders and of
      codecs.py in a python3.x), other site- and          what is kept: other_pythons)
      dist-packages folders
    the outermost folders holding TEXT_BYTES of .py or  absent, but none that holds a shared
      of archives (.whl, .zip, .tar.gz, ...) or more      library, a lab, or what a box needs
                                                          (text_folders: gcloud's 140 MB here)
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.metadata
import json
import os
import re
import sys
import time
import urllib.parse
from pathlib import Path

from org import sourceless, user_cache

SYSTEM = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "nix", "gnu", "dev", "proc", "sys", "tmp", "run"}
WALKED = ("usr", "etc", "nix", "gnu", "bin", "sbin", "lib", "lib32", "lib64", "libx32")  # (of SYSTEM: what a box reads)
STDLIB_MARKS = {"os.py", "abc.py", "codecs.py"}  # what a folder of a stdlib holds, of any version
STDLIB_NAME = re.compile(r"(python|pypy)[\d.]*|lib-python|[23](\.\d+)?")  # python3.12, pypy3.10, PyPy's lib-python/3
NOT_SEARCHED = {*sourceless.SITES, ".git", "__pycache__"}  # (node_modules is searched: npm's node-gyp is 1.5 MB of .py)
ARCHIVES = (".whl", ".zip", ".egg", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".conda", ".deb")  # (Python inside)
MAX_WALKED = 300_000  # folders: 17k here (1 s); more stops the walk there
MAX_FOUND = 64  # each is a mount in every run's box
WALK_FRESH_SECONDS = 600.0  # a runner's walk is made again this long after (1 s a walk: 0.2% of its time)
TEXT_BYTES = 128 << 10  # of .py or archives, that make a folder Python text (gcloud's lib/: 140 MB; a module: 20 kB)
SYSTEM_TEXT = ("/usr/share", "/usr/local/share", "/usr/include", "/usr/local/include")  # (system_text)
CUDA_TOOLKITS = ("/usr/local/cuda*", "/opt/cuda*")  # and $CUDA_PATH, $CUDA_HOME (gpu_headers)
GPU_PACKAGE_HEADERS = ("cupy/_core/include", "nvidia/*/include")  # in a site tree (gpu_headers)


SURVEYED: dict = {}  # what this machine's runner found (adopt), in place of each evaluator's own walk


def survey() -> dict:
    """What making a pystdlib box reads of this machine (other_pythons' walk of its folders, the
    packages' metadata: about 1 s), as JSON. The runner walks for its own boxes and hands
    this to each evaluator, whose model workers' boxes walked again for every run (1 s of the
    3.3 s a tiny code arm's measurement took): so a run's box and its workers' hide the same."""
    return {"other_pythons": [[str(p) for p in found] for found in other_pythons()],
            "editable_projects": list(editable_projects()), "site_trees": sourceless.site_survey()}


def adopt(surveyed: dict):
    """Take the survey this machine's runner made (survey) in place of walking again."""
    SURVEYED["other_pythons"] = tuple(tuple(map(Path, found)) for found in surveyed["other_pythons"])
    SURVEYED["editable_projects"] = tuple(surveyed["editable_projects"])
    sourceless.adopt_sites(surveyed["site_trees"])


def binds(stdlib_modules=None, gpu: bool = True) -> tuple[list[str], list[Path]]:
    """bwrap's flags for the boxes of a program whose data is the stdlib's text (after / is
    bound): every folder at / but the system's empty, what the box needs of them bound back (at
    its path and, through a link, at the linked one), the harness's bytecode cache empty
    (org/bytecode.py: docstrings; the trees are read without it), then the stdlib's sourceless
    tree at its path (of `stdlib_modules` alone where given: sourceless.runs_tree) and each
    site-packages folder's tree at its own, less the CUDA headers where the box has no GPU
    (gpu_headers); and the folders made empty (read-only once the box has bound all)."""
    stdlib, sites = sourceless.stdlib_dir(), sourceless.site_trees()
    tree = sourceless.stdlib_tree() if stdlib_modules is None else sourceless.runs_tree(stdlib_modules)
    emptied = outside_system()
    flags = [flag for path in emptied for flag in ("--tmpfs", str(path))]
    flags += [flag for real, named in bound_back(kept(), emptied) for flag in ("--ro-bind", str(real), str(named))]
    # (a cache under /tmp is in no box: each has a /tmp of its own, mounted after)
    unread = [p.resolve() for p in [user_cache("bytecode")] if p.is_dir() and not p.resolve().is_relative_to("/tmp")]
    flags, emptied = flags + [flag for path in unread for flag in ("--tmpfs", str(path))], emptied + unread
    trees = [(tree, stdlib), *((built, site) for site, built in sites.items())]  # (in that order: a site tree's
    flags += [flag for built, path in trees for flag in ("--ro-bind", str(built), str(path))]  # mount point)
    headers = [] if gpu else gpu_headers(sites)
    return flags + [flag for path in headers for flag in ("--tmpfs", str(path))], emptied + headers


def gpu_headers(sites: dict[Path, Path]) -> list[Path]:
    """The C headers a GPU run compiles its kernels with, and a box with no GPU does without: the
    CUDA toolkit's (24 MB here) and, at each site folder's path, those of CuPy and the CUDA wheels
    in its tree (21 MB), text as good for a lookup as the system's (system_text)."""
    toolkits = [*(p for pattern in CUDA_TOOLKITS for p in glob.glob(pattern)),
                *filter(None, (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME")))]
    found = [include for toolkit in sorted({Path(os.path.realpath(p)) for p in toolkits})
             for include in [toolkit / "include", *toolkit.glob("targets/*/include")]
             if include.is_dir() and not include.is_symlink()]
    found += [site / include.relative_to(tree) for site, tree in sites.items()
              for pattern in GPU_PACKAGE_HEADERS for include in sorted(tree.glob(pattern)) if include.is_dir()]
    return found


def bound_back(wanted: list[Path], emptied: list[Path]) -> list[tuple[Path, Path]]:
    """(what is bound, where) for each path `wanted` in a folder emptied: a real path at itself, a
    path through a link at the linked one, unless it lies in another real path bound back (the
    box sees the link there as it is)."""
    real = [path for path in wanted if path == Path(os.path.realpath(path))]
    return [(Path(os.path.realpath(named)), named) for named in wanted if any(named.is_relative_to(e) for e in emptied)
            if named in real or not any(named.is_relative_to(r) for r in real)]


def outside_system() -> list[Path]:
    """The folders at / a pystdlib box sees empty: all but the system's (links at / point into it)."""
    with os.scandir("/") as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False) and e.name not in SYSTEM)


def kept() -> list[Path]:
    """What such a box needs of those folders, bound back, as named and as resolved (a home that
    links to /gpfs): the interpreter (a venv's and the one it runs on) and the folders programs
    load libraries from (the dynamic linker's, LD_LIBRARY_PATH, CUDA's, and those of every library
    this process has loaded: a Linuxbrew or Spack Python's RUNPATH). Not the harness's checkouts:
    a run imports its snapshot's trainer/, a worker is started from its source (org/measure.py),
    and their Python text is the stdlib's style (org/unseen.py's harness_text)."""
    here = [sys.prefix, sys.base_prefix, os.path.dirname(sys.executable), *library_folders()]
    return sorted({Path(q) for p in here if os.path.isdir(p) for q in (os.path.abspath(p), os.path.realpath(p))})


def checkouts() -> list[str]:
    """The harness's own folders (this one, and its editable installs' projects)."""
    return [str(Path(__file__).parents[1]), *editable_projects()]


def library_folders() -> list[str]:
    here = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p.startswith("/")]
    here += [os.environ[key] for key in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(key, "").startswith("/")]
    here += glob.glob("/opt/cuda*") + linker_folders() + loaded_folders()
    return here


def loaded_folders() -> list[str]:
    """The folders of the shared libraries mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    return sorted({os.path.dirname(line.split()[-1]) for line in maps if ".so" in line and line.split()[-1].startswith("/")})


def editable_projects() -> tuple[str, ...]:
    """The project folders of the harness's editable installs (PEP 610's direct_url.json)."""
    return SURVEYED["editable_projects"] if "editable_projects" in SURVEYED else found_editable_projects()


@functools.lru_cache(maxsize=1)
def found_editable_projects() -> tuple[str, ...]:
    found = []
    for dist in importlib.metadata.distributions(path=[str(p) for p in sourceless.site_dirs()]):
        if dist.name and sourceless.normal(dist.name) == sourceless.OWN:
            try:
                url = json.loads(dist.read_text("direct_url.json") or "{}")
            except ValueError:
                continue
            if isinstance(url, dict) and isinstance(url.get("dir_info"), dict) and url["dir_info"].get("editable") \
                    and str(url.get("url", "")).startswith("file://"):
                found.append(urllib.parse.unquote(urllib.parse.urlparse(url["url"]).path))
    return tuple(found)


def linker_folders(conf: str = "/etc/ld.so.conf") -> list[str]:
    """The folders /etc/ld.so.conf names (and the files it includes)."""
    found = []
    for path in [conf, *sorted(glob.glob("/etc/ld.so.conf.d/*.conf"))]:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        found += [line.split("#")[0].strip() for line in lines if line.strip().startswith("/")]
    return found


def needed() -> tuple[list[Path], list[Path]]:
    """(what no folder hidden may hold, nor lie in: the folders libraries load from, and PATH's;
    what no folder hidden may hold: the interpreter's prefixes, which may be /usr)."""
    named = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p.startswith("/")]
    trees = [*library_folders(), *named]
    prefixes = [sys.prefix, sys.base_prefix, os.path.dirname(sys.executable)]
    return sorted({Path(os.path.realpath(p)) for p in trees}), sorted({Path(os.path.realpath(p)) for p in prefixes})


def system_text() -> list[Path]:
    """The system's text a run's box and a checking worker's do without (sandbox.run_box, worker_box):
    manuals, documentation, dictionaries, editors' help and C headers, each a source for a lookup
    as good as the stdlib's bytecode (10 MB of /usr/share/doc mixed into a 2.14-bpb model gained
    0.074 bpb on pystdlib, /usr/include 0.077, /usr/share/vim 0.095: README). Not a folder that
    holds what a box needs (an interpreter, a library folder, PATH), nor headers CUDA compiles with."""
    trees, prefixes = needed()
    found = []
    for folder in map(Path, SYSTEM_TEXT):
        real = Path(os.path.realpath(folder))
        if folder.is_dir() and not folder.is_symlink() and not any(p.is_relative_to(real) for p in trees + prefixes) \
                and not (folder.name == "include" and any((folder / h).exists() for h in ("cuda.h", "cuda_runtime.h"))):
            found.append(real)
    return found


def other_pythons() -> tuple[tuple[Path, ...], tuple[Path, ...], tuple[Path, ...]]:
    """(other Pythons' stdlibs, other folders of installed packages, folders of Python text) in
    what a pystdlib box sees: much the same text as the stdlib's (a worker that read Debian's
    python3.11 beside pyenv's 3.11.7 still read `better`; a 3.12 bundled with the Google Cloud
    SDK shared 31% of 3.11's lines), and other code in its style. Found again each WALK_FRESH_SECONDS:
    a Python installed while a runner runs is hidden from the boxes it makes that long after."""
    return SURVEYED["other_pythons"] if "other_pythons" in SURVEYED else found_other_pythons()


def found_other_pythons() -> tuple[tuple[Path, ...], tuple[Path, ...], tuple[Path, ...]]:
    return walked_in(int(time.monotonic() // WALK_FRESH_SECONDS))


@functools.lru_cache(maxsize=1)
def walked_in(period: int) -> tuple[tuple[Path, ...], tuple[Path, ...], tuple[Path, ...]]:
    """other_pythons as a walk in this `period` of WALK_FRESH_SECONDS finds them (the next walks again)."""
    roots = [Path(f"/{name}") for name in WALKED if os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}")]
    for path in kept():  # (sorted: a folder before what lies in it, each walked once)
        roots += [] if any(path.is_relative_to(root) for root in roots) else [path]
    walk = walked(list(map(str, roots)))
    stdlibs = walk.stdlibs - {sourceless.stdlib_dir()}
    ours = sourceless.site_dirs()
    sites = {s for s in walk.sites if not any(s.is_relative_to(p) for p in [*stdlibs, *ours])}
    texts = text_folders(walk, needed(), MAX_FOUND - len(stdlibs | sites)) - stdlibs - sites
    return tuple(sorted(stdlibs)), tuple(sorted(sites)), tuple(sorted(texts))


@dataclasses.dataclass
class Walk:
    stdlibs: set[Path] = dataclasses.field(default_factory=set)
    sites: set[Path] = dataclasses.field(default_factory=set)
    text: dict[str, int] = dataclasses.field(default_factory=dict)  # folder -> bytes of its own .py and archives
    kept: set[str] = dataclasses.field(default_factory=set)  # folders holding a shared library or a lab


def walked(roots: list[str], limit: int = MAX_WALKED) -> Walk:
    """Folders holding a stdlib under `roots`, folders of installed packages outside them, and
    how many bytes of Python text every other folder holds (not inside a site-packages, nor in a
    lab: its worktrees and runs are agents' to fill, and every folder found is a mount)."""
    walk = Walk()
    for root in dict.fromkeys(roots):
        for folder, folders, files in os.walk(root):  # (links not followed)
            if ".lab" in folders:  # a lab's root (org/workspace.py): what lies below is its own
                folders[:] = []
                walk.kept.add(folder)
            elif STDLIB_MARKS <= set(files) and STDLIB_NAME.fullmatch(os.path.basename(folder)):
                walk.stdlibs.add(Path(os.path.realpath(folder)))
                folders[:] = []
                continue
            walk.sites |= {Path(os.path.realpath(os.path.join(folder, name))) for name in folders if name in sourceless.SITES}
            folders[:] = [name for name in folders if name not in NOT_SEARCHED]
            walk.text[folder] = sum(size(os.path.join(folder, name)) for name in files if name.endswith((".py", *ARCHIVES)))
            if any(name.endswith(".so") or ".so." in name for name in files):
                walk.kept.add(folder)
            if len(walk.text) >= limit:
                return walk
    return walk


def text_folders(walk: Walk, needed: tuple[list[Path], list[Path]], room: int) -> set[Path]:
    """The outermost folders of the walk whose tree holds TEXT_BYTES of Python text or more, and
    no shared library (a program may load it), no lab, nothing `needed` (nor lies in one of its
    trees), nor is a folder of the top two levels (/usr/lib): the `room` largest."""
    total, kept = dict(walk.text), set(walk.kept)
    for folder in sorted(walk.text, key=lambda f: f.count(os.sep), reverse=True):  # (deepest first)
        parent = os.path.dirname(folder)
        if parent != folder and parent in total:
            total[parent] += total[folder]
            kept |= {parent} if folder in kept else set()

    trees, prefixes = needed

    def free(folder: str) -> bool:
        real = Path(os.path.realpath(folder))
        return not any(p.is_relative_to(real) for p in trees + prefixes) and not any(real.is_relative_to(p) for p in trees)
    candidates = [f for f, n in total.items() if n >= TEXT_BYTES and f not in kept and len(Path(f).parts) > 3 and free(f)]
    outermost = []
    for folder in sorted(candidates, key=lambda f: f.count(os.sep)):
        if not any(folder.startswith(taken + os.sep) for taken in outermost):
            outermost.append(folder)
    return {Path(os.path.realpath(f)) for f in sorted(outermost, key=lambda f: -total[f])[:max(room, 0)]}


def size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
