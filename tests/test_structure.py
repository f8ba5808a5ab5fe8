"""The shape of the code: every org and trainer module imports on its own in a fresh interpreter,
their module-level imports form no circle, and no module is over ~600 lines."""
import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                 for package in ("org", "trainer") for p in (ROOT / package).rglob("*.py") if p.stem != "__main__")
LONGEST = 600  # lines; the files still over it are listed with the issue that splits them
OVER = {}


def module_imports(module: str) -> set[str]:
    """The org/trainer modules `module` imports at its top level (not inside functions)."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in MODULES and m != module}


def test_each_module_imports_alone_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)"

    def imports_alone(module):
        return module, subprocess.run([sys.executable, "-c", code, module], cwd=ROOT, capture_output=True, text=True)
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # one interpreter per module, as many at once as cores
        for module, proc in pool.map(imports_alone, MODULES):
            assert proc.returncode == 0, f"{module}: {proc.stderr.strip().splitlines()[-1:]}"


def test_module_level_imports_form_no_circle():
    graph = {m: module_imports(m) for m in MODULES}
    state: dict[str, str] = {}

    def visit(m, path):
        if state.get(m) == "open":
            pytest.fail("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == "done":
            return
        state[m] = "open"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"
    for module in MODULES:
        visit(module, [])


def test_no_module_is_over_the_length_a_reader_can_hold():
    long = {str(p.relative_to(ROOT)): n for package in ("org", "trainer") for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > LONGEST}
    assert set(long) <= set(OVER), {f: n for f, n in long.items() if f not in OVER}


def test_an_agents_org_command_in_its_box_imports_its_port_and_nothing_heavy():
    """Every `org` call of a CLI agent starts a Python in its box, at a tenth of a run's CPU
    weight: with runs on every core, the whole CLI's imports (scipy.stats alone 1.2 s) made one
    call take 126 s. In the box `org` is its port's commands alone (org/entry.py); outside it,
    the CLI still leaves scipy.stats until a verdict needs it."""
    heavy = ("numpy", "scipy", "pydantic", "git", "yaml", "rich", "libtmux", "anthropic", "openai")
    show = f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy} or m.startswith('org')))"
    in_box = subprocess.run([sys.executable, "-c", f"import sys\nfrom org.entry import main\nmain(['mail', 'board'])\n{show}"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NANOLAB_PORT": "/nowhere/org.sock"})
    assert "cannot reach the org through /nowhere/org.sock" in in_box.stdout
    assert in_box.stdout.splitlines()[-1] == str(["org", "org.agents", "org.agents.commands", "org.agents.pacing", "org.agents.port",
                                                  "org.agents.sandbox", "org.cgroups", "org.diskwatch", "org.entry", "org.hostfiles",
                                                  "org.python_text", "org.sandbox", "org.seccomp", "org.sourceless",
                                                  "org.unseen"])
    outside = subprocess.run([sys.executable, "-c", "import sys, org.cli; print('scipy.stats' in sys.modules)"],
                             cwd=ROOT, capture_output=True, text=True)
    assert outside.stdout.strip() == "False", outside.stderr


def test_the_evaluator_loads_no_harness_module_that_imports_the_trainer():
    """The evaluator imports `trainer` from the program's base commit, which may be older than the
    harness: a harness module it loaded that imported trainer names at its top level (org.slots,
    by org.kernelcache: trainer.config's flag_value, new on 2026-12-05) stopped every code arm's
    measurement on an older base."""
    code = "import sys, org.evaluator, org.kernelcache; print(sorted(m for m in sys.modules if m.startswith('trainer')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
