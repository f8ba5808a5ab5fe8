"""Shared test setup: in one process, fast tests run first and tests marked slow last; across
pytest-xdist's workers (README's command), the slow ones first, so that none starts last while
the other workers idle. A module whose tests share a costly module fixture is one xdist_group,
built once on one worker (--dist loadgroup, in pyproject.toml)."""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# A person's shell in a taken-over pane is `$SHELL -i`. Here that is bash, whose rc file runs
# `pyenv init`, which runs `pyenv rehash`: killed with its tmux server when a test ends, the
# rehash leaves pyenv's lock file behind, and from then on every `pip install` on the machine
# fails (it failed CI once). The tests' person gets a plain sh, which reads no rc file.
os.environ["SHELL"] = "/bin/sh"


def pytest_collection_modifyitems(config, items):
    slow_first = hasattr(config, "workerinput")  # collected by an xdist worker
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None) == slow_first)


# The harness's tests run many trainer runs, each from a fresh snapshot of a fresh commit, and
# each snapshot compiles the Numba CPU kernels anew: about 7 s per commit, over half of such a
# test's time. There the kernels' NumPy twins run instead (NANOLAB_KERNELS=0: the same math, the
# trainer's documented fallback; the harness under test is unchanged). The trainer's own tests
# keep the kernels, and so do the sandbox's, which check a run compiling them inside its box.
KERNELS_ON = {"test_bench.py", "test_checkpoint.py", "test_cpu_kernels.py", "test_data.py", "test_gpucheck.py",
              "test_kernels.py", "test_model_vs_torch.py", "test_train.py", "test_sandbox.py"}


@pytest.fixture(autouse=True)
def a_list_of_labs_of_its_own(tmp_path_factory, monkeypatch):
    """Every box hides every lab on the person's list (org/unseen.py: other_labs): a test's list
    is its own, so that no other test's lab, removed as its box starts, fails the box's mount."""
    monkeypatch.setenv("NANOLAB_LABS", str(tmp_path_factory.mktemp("labs")))


@pytest.fixture(scope="module", autouse=True)
def numpy_twins_for_the_harness_tests(request):
    if request.path.name in KERNELS_ON:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NANOLAB_KERNELS", "0")
        yield
