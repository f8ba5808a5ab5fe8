"""
The org's panes: a private tmux server per program, and what runs in each of its panes.

    grid = Grid(lab_root, "softcap")     # socket nanolab-softcap-<hash of the lab's path>
    grid.build([Pane("junior-1", argv, cwd, env, hint), ...], Pane("runner", ...), keys)
    grid.take_over("junior-1", Pane("junior-1", shell_argv, cwd, env), hint)  # a shell in its slot
    grid.hand_back("junior-1", hint)                 # the agent's own pane back in its slot
    grid.capture("junior-1")                         # what a person sees in that pane
    grid.kill()

Session org-<program> holds window `org` (one pane per agent plus the status pane, tiled),
window `runner` (the runner) and, while someone has taken a pane over, window `parked`
(the agents' own panes, still running, paused). Each pane is labelled by the user option
@agent and shown in its border: programs overwrite pane titles, never user options.

Every pane runs its command under a keeper (`python -m org.panes keep ...`): it restarts a
command that dies (a bounded number of times, then says CRASHED in the pane), records what it
is doing in a small JSON file that `org status` reads, and after the command ends keeps the
pane open so its last words stay readable.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import libtmux

from org.mail import now, write_atomically

GRID, RUNNER, PARKED = "org", "runner", "parked"  # window names
HEADER = " #{@agent} · #{@hint} "  # pane border; @hint says which key takes the pane over
SIZE = (240, 64)  # a detached session's size; an attached client resizes it
HEALTHY_SECONDS = 600  # a pane's process that ran this long before it crashed had its restarts back
TAKEOVER_KEY, RELEASE_KEY = "T", "R"  # after the prefix (C-b)


@dataclass
class Pane:
    label: str                                   # the agent's name, or "status", "runner"
    argv: list[str]
    cwd: Path
    env: dict = field(default_factory=dict)     # on top of the tmux server's environment
    hint: str = ""                               # shown in the border after the label

    def command(self) -> str:
        # `env K=V argv`: explicit per pane (tmux's -e would also set the session environment)
        return shlex.join(["env", *[f"{k}={v}" for k, v in self.env.items()], *map(str, self.argv)])


def tmux_path() -> str | None:
    return shutil.which("tmux")


def socket_name(lab_root: Path, program: str) -> str:
    """One tmux server per program and lab: two checkouts running the same program never meet."""
    return f"nanolab-{program}-{hashlib.sha1(str(Path(lab_root).resolve()).encode()).hexdigest()[:8]}"


class Grid:
    def __init__(self, lab_root: Path, program: str):
        self.socket = socket_name(lab_root, program)
        self.session_name = f"org-{program}"
        self.server = libtmux.Server(socket_name=self.socket, config_file="/dev/null", tmux_bin=tmux_path())

    # --- what is there ---------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        base = Path(os.environ.get("TMUX_TMPDIR") or "/tmp")
        return base / f"tmux-{os.getuid()}" / self.socket

    def session(self) -> libtmux.Session | None:
        if not self.server.is_alive():
            return None
        return self.server.sessions.get(session_name=self.session_name, default=None)

    def running(self) -> bool:
        """A complete grid is up (a launch that died half-way leaves no @ready mark)."""
        session = self.session()
        return session is not None and self._option(session, "@ready") == "1"

    def stale_socket(self) -> bool:
        """A socket file that no server answers on (left by a server that was killed)."""
        return self.socket_path.exists() and not self.server.is_alive()

    def panes(self) -> list[dict]:
        """Every pane: id, label, taken (whether it is a person's), window, pid, cwd, dead."""
        if not self.server.is_alive():
            return []
        fmt = "#{pane_id}\t#{@agent}\t#{@takeover}\t#{window_name}\t#{pane_pid}\t#{pane_current_path}\t#{pane_dead}"
        out = self.server.cmd("list-panes", "-a", "-F", fmt).stdout
        keys = ("id", "label", "taken", "window", "pid", "cwd", "dead")
        rows = [dict(zip(keys, line.split("\t"))) for line in out]
        return [dict(r, taken=r["taken"] == "1", dead=r["dead"] == "1") for r in rows]

    def find(self, label: str, taken: bool = False) -> dict | None:
        return next((p for p in self.panes() if p["label"] == label and p["taken"] == taken), None)

    def capture(self, label: str, taken: bool = False) -> str:
        """What a person sees in a pane right now."""
        pane = self.find(label, taken)
        return "\n".join(self.server.cmd("capture-pane", "-p", "-t", pane["id"]).stdout) if pane else ""

    # --- building and tearing down --------------------------------------------------------

    def build(self, panes: list[Pane], runner: Pane, keys: dict[str, str]):
        """The session: the grid (re-tiled after every split, or a 5th split finds no room),
        the runner's window, and key bindings ({key: shell command}; formats are expanded,
        so #{@agent} is the label of the pane the key was pressed in)."""
        first, *rest = panes
        session = self.server.new_session(session_name=self.session_name, window_name=GRID,
                                          start_directory=str(first.cwd), window_command=first.command(),
                                          x=SIZE[0], y=SIZE[1], attach=False)
        window = session.windows[0]
        self._style(window)
        last = window.panes[0]
        self._label(last, first)
        for spec in rest:
            last = last.split(start_directory=str(spec.cwd), shell=spec.command(), attach=False)  # from the last: keeps order
            self._label(last, spec)
            window.select_layout("tiled")
        runs = session.new_window(window_name=RUNNER, start_directory=str(runner.cwd),
                                  window_shell=runner.command(), attach=False)
        self._style(runs)
        self._label(runs.panes[0], runner)
        for key, command in keys.items():
            self.server.cmd("bind-key", key, "run-shell", "-b", command)
        self.server.cmd("set-option", "-g", "mouse", "on")  # click a pane to pick it
        window.select()
        self._mark_ready(session)

    def _mark_ready(self, session: libtmux.Session):
        """The grid is whole: its keepers start their commands (`until_the_grid_is_whole`)."""
        session.set_option("@ready", "1")

    def kill(self):
        if self.server.is_alive():
            self.server.kill()
        with contextlib.suppress(OSError):  # (a TMUX_TMPDIR that is a file: no socket there either)
            self.socket_path.unlink(missing_ok=True)  # a killed server leaves its socket file

    def _style(self, window: libtmux.Window):
        window.set_option("remain-on-exit", "on")  # a pane whose process died stays, with its last words
        window.set_option("pane-border-status", "top")
        window.set_option("pane-border-format", HEADER)

    def _label(self, pane: libtmux.Pane, spec: Pane):
        pane.set_option("@agent", spec.label)
        pane.set_option("@hint", spec.hint)

    def _option(self, session: libtmux.Session, name: str) -> str | None:
        out = self.server.cmd("show-options", "-t", session.session_id, "-v", "-q", name).stdout
        return out[0] if out else None

    # --- taking a pane over and handing it back --------------------------------------------

    def take_over(self, label: str, person: Pane | None, hint: str) -> str:
        """Give the person the agent's grid slot: `person` (a shell) takes it and the agent's own
        pane, still running, moves to the `parked` window. With person=None (an agent CLI the
        person types into directly) the pane itself is only marked."""
        agent = self.find(label)
        if agent is None:
            raise LookupError(f"no pane for {label}")
        target = agent["id"]
        if person is not None:
            # split the slot, swap, then park the agent: the person's pane only ever grows,
            # and a pane that shrinks pushes its top lines (the banner) out of sight
            target = self.server.cmd("split-window", "-d", "-P", "-F", "#{pane_id}", "-t", agent["id"],
                                     "-c", str(person.cwd), person.command()).stdout[0]
            self.server.cmd("swap-pane", "-d", "-s", target, "-t", agent["id"])
            self._park(agent["id"])
            self.server.cmd("select-layout", "-t", f"{self.session_name}:{GRID}", "tiled")
        for option, value in (("@agent", label), ("@takeover", "1"), ("@hint", hint)):
            self.server.cmd("set-option", "-p", "-t", target, option, value)
        self.server.cmd("select-window", "-t", f"{self.session_name}:{GRID}")
        self.server.cmd("select-pane", "-t", target)
        return target

    def hand_back(self, label: str, hint: str):
        """Undo take_over: the agent's pane returns to its slot; the person's pane closes."""
        person, agent = self.find(label, taken=True), self.find(label)
        if person is None:
            return
        if agent is None:  # a CLI pane, only marked
            self.server.cmd("set-option", "-p", "-u", "-t", person["id"], "@takeover")
            self.server.cmd("set-option", "-p", "-t", person["id"], "@hint", hint)
            return
        self.server.cmd("swap-pane", "-d", "-s", agent["id"], "-t", person["id"])
        self.server.cmd("kill-pane", "-t", person["id"])

    def type_into(self, pane_id: str, text: str):
        """Type text into a pane and press Enter: pasted in one piece (bracketed, so a CLI
        takes several lines as one message), then Enter on its own."""
        self.server.cmd("send-keys", "-t", pane_id, "-X", "cancel")  # out of copy mode, if in it
        self.server.cmd("set-buffer", "-b", "nanolab", text)
        self.server.cmd("paste-buffer", "-p", "-d", "-b", "nanolab", "-t", pane_id)
        self.server.cmd("send-keys", "-t", pane_id, "Enter")

    def _park(self, pane_id: str):
        """Move a pane to the parked window (made on first use)."""
        parked = self.session().windows.get(window_name=PARKED, default=None)
        if parked is None:
            self.server.cmd("break-pane", "-d", "-s", pane_id, "-n", PARKED)
            self._style(self.session().windows.get(window_name=PARKED))
        else:
            self.server.cmd("join-pane", "-d", "-s", pane_id, "-t", parked.window_id)
            self.server.cmd("select-layout", "-t", parked.window_id, "tiled")

    def attach_argv(self) -> list[str]:
        return [tmux_path() or "tmux", "-L", self.socket, "attach", "-t", self.session_name]


# ----------------------------------------------------------------------------------------
# the keeper: the process at the top of every pane


def read_state(path: Path) -> dict:
    """A keeper's record: state (waiting | running | restarting | ended | crashed), pid (the
    command's), keeper (its own pid), restarts, exit, since, note. {} if never started."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def keep(argv: list[str], state: Path, name: str, delay: float = 0.0, restarts: int = 3,
         ended: str | None = None, healthy: float = HEALTHY_SECONDS) -> None:
    """Run argv until it ends well (exit 0); restart it after a crash, at most `restarts`
    times in a row (waiting 1, 2, 4... s), then mark it crashed: one that ran `healthy` seconds
    first starts the count again (an org runs for days, and its runner stops on what a person
    mends, a full disk). A `stop` file beside the state file (written by `org stop`) means:
    never restart. Then keep the pane open."""
    signal.signal(signal.SIGINT, lambda *a: None)  # Ctrl-C in the pane stops the command, not us
    record = lambda st, **kv: write_atomically(state, json.dumps(
        {"name": name, "state": st, "keeper": os.getpid(), "since": now(), **kv}))
    if ended is not None:
        record("ended", note=ended, restarts=0)
        return _linger(f"{name}: {ended}")
    record("waiting", restarts=0)
    until_the_grid_is_whole()
    time.sleep(delay)  # launches are staggered: API rate limits, CPU for start-up
    crashes = 0
    while True:
        proc, started = subprocess.Popen(argv), time.monotonic()
        record("running", pid=proc.pid, restarts=crashes)
        code = proc.wait()
        if code == 0 or (state.parent / "stop").exists():
            record("ended", restarts=crashes, exit=code)
            return _linger(f"{name} ended (exit {code}).")
        crashes = 1 if time.monotonic() - started >= healthy else crashes + 1
        why = f"signal {-code}" if code < 0 else f"exit {code}"
        if crashes > restarts:
            record("crashed", restarts=crashes - 1, exit=code, note=f"gave up after {restarts} restarts ({why})")
            return _linger(f"\033[1;31m{name} CRASHED: {why}, after {restarts} restarts. "
                           f"`org launch` again restarts it.\033[0m")
        wait = 2 ** (crashes - 1)
        record("restarting", restarts=crashes, exit=code, note=why)
        print(f"\033[33m{name} died ({why}); restart {crashes} of {restarts} in {wait}s\033[0m", flush=True)
        time.sleep(wait)


def until_the_grid_is_whole(poll: float = 0.1, most: float = 2.0):
    """Wait for the launch to mark the grid whole. A launch killed half-way (SIGKILL: it has no
    chance to clean up) leaves a grid with no @ready mark, and in it nothing starts: no agent
    works with no runner to run its experiments. The next `org launch` or `org stop` removes it.
    Outside a tmux pane (no $TMUX_PANE) there is no grid to wait for."""
    pane, tmux = os.environ.get("TMUX_PANE"), tmux_path()
    if not (pane and os.environ.get("TMUX") and tmux):
        return
    said = False
    while True:  # (tmux reads its server's socket from $TMUX)
        out = subprocess.run([tmux, "show-options", "-qv", "-t", pane, "@ready"], capture_output=True, text=True)
        if out.stdout.strip() == "1":
            return
        if not said:
            print("waiting for `org launch` to finish building this grid...", flush=True)
            said = True
        time.sleep(poll)
        poll = min(poll * 1.5, most)  # (a grid left half-built waits for good: a look every 2 s, not 10 a second)


def _linger(message: str):
    print(message + " This pane stays open for reading.", flush=True)
    while True:
        signal.pause()


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m org.panes")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("keep", help="run a pane's command, restarting it after crashes")
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--ended", help="nothing to run: the agent ended before (why)")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    keep(argv, args.state, args.name, args.delay, args.restarts, args.ended)


if __name__ == "__main__":
    main()
