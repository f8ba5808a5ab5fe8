"""
What an experiment's commit may carry into its runs, read from the lab's checked objects
(Lab.files): none of the protected paths changed (eval, data, FLOP accounting, org/), nothing
that could shadow code at import time (bytecode, compiled extensions, .pth, sitecustomize, a
package or module beside a protected one) or change what a checkout writes (.gitattributes), no
link, and at most the program's max_change_kb (compressed) of new content: code is small, and
trained weights in a commit would be a head start no budget counts.
"""
from __future__ import annotations

import ast
import difflib
import functools
import zlib

from org.lab import Lab, LabError

# files that run or shadow code without being a module's source, wherever they are
SHADOWING_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".dylib", ".dll", ".pth")
SHADOWING_NAMES = ("__pycache__", "sitecustomize.py", "usercustomize.py", ".gitattributes")
MAX_DIFF_WORK = 1_000_000  # line pairs difflib may weigh (quadratic: 50k lines, interleaved, took 98 s outside every box)
MAX_PARSED_BYTES = 512 << 10  # a .py same_code parses (trainer's largest: 30 KB); a larger one is compared as bytes


def code_refusal(lab: Lab, base: str, commit: str, protected: list[str], max_change_kb: float,
                 overrides: int = 0) -> str | None:
    """Why an experiment's commit may not run, or None: it changes a protected path, adds what
    could shadow code, or carries more than max_change_kb (with what its `overrides` carry, in
    compressed bytes: one allowance for both, or each was a head start of its own)."""
    try:
        lab.files(commit)  # a tree git would not check out, or an object not what its name says
    except LabError as e:
        return str(e)
    return (protected_violation(lab, base, commit, protected) or shadowing(lab, base, commit, protected)
            or links(lab, base, commit) or oversized(lab, base, commit, max_change_kb, overrides))


def protected_violation(lab: Lab, base: str, commit: str, protected: list[str]) -> str | None:
    """Why a commit may not run (it changes protected paths), or None if it may."""
    changed = lab.changed_paths(base, commit, protected)
    return f"protected paths differ from the program's base commit {base[:10]}: {', '.join(changed)}" if changed else None


def links(lab: Lab, base: str, commit: str) -> str | None:
    """Why a commit may not run because it adds symbolic links (a snapshot holds regular files
    only: Lab.snapshot), or None."""
    new = lab.files(commit)
    added = [p for p in lab.changed_paths(base, commit, added_or_modified=True) if new[p][0] == "120000"]
    return f"the commit adds a symbolic link (a snapshot holds regular files only): {', '.join(added[:5])}" \
        if added else None


def kilobytes(n: int) -> str:
    """79 KB, or 0.123 KB under one: a max_change_kb of 0.0001 refused "0 KB"."""
    return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n / 1024:.3g} KB"


def oversized(lab: Lab, base: str, commit: str, max_change_kb: float, overrides: int = 0) -> str | None:
    """Why a commit carries too much into its runs, or None. What it carries is what it adds:
    its added lines and binary files, zlib-compressed (so base64, hex or a Python literal
    of the same weights weigh what the weights do); removed lines carry nothing in."""
    if (carried := carried_bytes(lab, base, commit) + overrides) <= max_change_kb * 1024:
        return None
    what = "the commit and its overrides carry" if overrides else "the commit carries"
    return (f"{what} {kilobytes(carried)} of new content (compressed) over the program's base "
            f"commit {base[:10]}, more than max_change_kb: {max_change_kb:g}. Experiments change code; data "
            f"such as trained weights would be a head start that no budget counts")


def carried_bytes(lab: Lab, base: str, commit: str) -> int:
    old, new = lab.files(base), lab.files(commit)
    added = [path.encode() + b"\n" + added_lines(blob(lab, old.get(path)), blob(lab, new[path]))
             for path in lab.changed_paths(base, commit, added_or_modified=True)]
    return len(zlib.compress(b"\n".join(added), 9)) if added else 0


def blob(lab: Lab, entry: tuple[str, str] | None) -> bytes:
    """A files() entry's content, checked (a gitlink's: the commit it names)."""
    if entry is None or entry[0] == "160000":
        return entry[1].encode() if entry else b""
    return lab.verified(entry[1], b"blob")


def shadowing(lab: Lab, base: str, commit: str, protected: list[str]) -> str | None:
    """Why a commit may not run because of what it adds (see SHADOWING_*), or None. A module
    or package beside a protected file (trainer/eval/ or trainer/eval.so next to
    trainer/eval.py) would be imported instead of it."""
    shadows = [p[:-len(".py")] for p in protected if p.endswith(".py")]
    bad = [path for path in lab.changed_paths(base, commit, added_or_modified=True)
           if path.endswith(SHADOWING_SUFFIXES) or any(p in SHADOWING_NAMES for p in path.split("/"))
           or any(path.startswith(m + "/") or (path.startswith(m + ".") and path != m + ".py") for m in shadows)]
    if not bad:
        return None
    return (f"the commit adds files that could shadow code at import time or change the snapshot "
            f"(bytecode, compiled extensions, .pth, sitecustomize, .gitattributes, or a module "
            f"beside a protected one): {', '.join(bad[:5])}")


def added_lines(before: bytes, after: bytes) -> bytes:
    """What `after` adds to `before`: its inserted or replacing lines (as `git diff --unified=0`
    shows them); all of it for binary content, past 1 MB, or past MAX_DIFF_WORK line pairs."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    if (b"\0" in before[:8000] or b"\0" in after[:8000] or max(len(before), len(after)) > 1 << 20
            or len(a) * len(b) > MAX_DIFF_WORK):
        return after
    return b"".join(line for tag, _, _, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes()
                    if tag in ("insert", "replace") for line in b[j1:j2])


def same_code(lab: Lab, a: str, b: str) -> bool:
    """Whether two commits run the same code: the same paths, each the same file or, for a .py,
    the same syntax tree once its comments, docstrings and layout are set aside. A copy of a
    change with a comment added was a new tree, and a new idea (experiments.same_change)."""
    try:
        fa, fb = lab.files(a), lab.files(b)
        return fa.keys() == fb.keys() and all(
            fa[p] == fb[p] or (p.endswith(".py") and fa[p][0] == fb[p][0] and
                               syntax(lab.verified(fa[p][1], b"blob")) == syntax(lab.verified(fb[p][1], b"blob")) != "")
            for p in fa)  # (syntax trees under the ledger's lock: a 10 MB module of `x = 1` is a GB of them)
    except LabError:  # (a tree or an object not what its name says: not the same, and said where it is checked)
        return False


@functools.lru_cache(maxsize=64)  # (submit compares a commit with each experiment on record, under the ledger's lock)
def syntax(source: bytes) -> str:
    """A module's syntax tree without its docstrings, as text; "" where it does not parse (the
    agent's code: a parser's limit, nested too deep, is its failure to say the same) or is over
    MAX_PARSED_BYTES."""
    if len(source) > MAX_PARSED_BYTES:
        return ""
    try:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        return ast.dump(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ""
