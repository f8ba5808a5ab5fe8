"""
The `org` command's first step. Inside a CLI agent's box (NANOLAB_PORT set: org/agents/port.py)
only the agent's own commands exist (`org tool`, `results`, `mail`, `agent-hook`), and each is
one call through its port, so nothing else is imported: the whole CLI (the referee's scipy,
pydantic, git, numpy) took 1.7 s of CPU to start, and a CLI's box has a tenth of a run's CPU
weight, so while runs filled the cores one `org` call in it took 126 s (41 s with scipy left out; now
6 s). Everywhere else it is org/cli.py.
"""
from __future__ import annotations

import os
import sys

from org.agents.port import PORT_VAR


def main(argv: list[str] | None = None) -> int:
    if os.environ.get(PORT_VAR):
        from org.agents.commands import box_main
        return box_main(argv)
    from org.cli import main as whole_cli
    return whole_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
