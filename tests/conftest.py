"""Shared test setup: fast tests run first, tests marked slow run last."""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# A person's shell in a taken-over pane is `$SHELL -i`. Here that is bash, whose rc file runs
# `pyenv init`, which runs `pyenv rehash`: killed with its tmux server when a test ends, the
# rehash leaves pyenv's lock file behind, and from then on every `pip install` on the machine
# fails (it failed CI once). The tests' person gets a plain sh, which reads no rc file.
os.environ["SHELL"] = "/bin/sh"


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
