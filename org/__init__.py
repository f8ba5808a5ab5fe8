"""
nanolab's research org: programs, the lab (git), the ledger (SQLite) and the budgeted runner.

The harness, not the agent, owns the budget, the seeds, the evaluation and the verdict.
"""
import argparse
import os
from pathlib import Path


def user_cache(name: str) -> Path:
    """A folder of the harness's under the person's cache (read-only in every box)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nanolab" / name


def one_line(text) -> str:
    """Text an agent or its code wrote, as one line of a markdown report: every kind of line break
    a space (CommonMark ends a line at a lone \\r too, so a hypothesis could start headings of its
    own), and no raw HTML (`<!--` hid the rest of the report)."""
    return " ".join(str(text).splitlines()).replace("<", "&lt;")


class OrgError(Exception):
    """A problem the user can fix: the CLI prints it as one line and exits non-zero."""


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, like every other error."""

    def error(self, message):
        self.exit(2, f"org: {self.prog}: {message} (see --help)\n")
