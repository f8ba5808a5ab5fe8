"""
Pause, resume and stop an agent from outside its process: small files the loop checks at safe
points (between model turns, and while a tool waits for mail or results).

    .lab/<program>/control/<agent>/pause        exists -> pause at the next safe point (text: why)
    .lab/<program>/control/<agent>/stop         exists -> stop cleanly at the next safe point
    .lab/<program>/control/<agent>/state.json   written by the agent: running | paused | stopped

This is the API `org launch` / `org takeover` / `org release` / `org stop` use:

    control = Control(lab.state_dir("softcap"), "junior-1")
    control.pause("taken over by a person")        # takeover
    control.wait_for_state("paused", timeout=60)   # ... the pane is now the person's
    control.resume("I fixed the data loader; carry on from commit abc123")   # release

A paused agent holds its conversation and waits; resume() delivers its message as mail (so it
is never lost, even if the agent restarts) and then lets the loop continue.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from org.mail import Mail, now, write_atomically


class Control:
    def __init__(self, lab_dir: str | Path, agent: str):
        self.lab_dir = Path(lab_dir)
        self.agent = agent
        self.dir = self.lab_dir / "control" / agent
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- called from outside (launch, takeover, release, stop) ---------------------------

    def pause(self, reason: str = "paused by a person"):
        write_atomically(self.dir / "pause", reason.strip() + "\n")

    def resume(self, message: str | None = None, sender: str = "human"):
        """Deliver `message` first, then lift the pause, so the agent wakes up to it."""
        if message:
            Mail(self.lab_dir).send(sender, self.agent, message)
        (self.dir / "pause").unlink(missing_ok=True)

    def stop(self, reason: str = "stopped by a person"):
        write_atomically(self.dir / "stop", reason.strip() + "\n")

    def state(self) -> dict:
        """{"state": running|paused|stopped|unknown, "reason", "since", "pid"}"""
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {"state": "unknown", "reason": "the agent has not started", "since": None, "pid": None}

    def wait_for_state(self, state: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state()["state"] == state:
                return True
            time.sleep(0.05)
        return False

    # --- called by the agent loop --------------------------------------------------------

    def set_state(self, state: str, reason: str = ""):
        write_atomically(self.dir / "state.json", json.dumps(
            {"state": state, "reason": reason, "since": now(), "pid": os.getpid()}))

    def pause_reason(self) -> str | None:
        return _read(self.dir / "pause")

    def stop_reason(self) -> str | None:
        return _read(self.dir / "stop")

    def interrupted(self) -> bool:
        """True when a pause or stop is asked for: long waits return early to let it happen."""
        return (self.dir / "pause").exists() or (self.dir / "stop").exists()

    def clear_stop(self):
        """At start-up: a stop file left from the last run must not stop the new one."""
        (self.dir / "stop").unlink(missing_ok=True)

    def checkpoint(self, on_pause=lambda reason: None, poll: float = 0.2) -> str | None:
        """A safe point: returns a stop reason, or None to go on. While paused, blocks (a stop
        request still ends the pause)."""
        reason = self.pause_reason()
        if reason is not None and self.stop_reason() is None:
            self.set_state("paused", reason)
            on_pause(reason)
            while self.pause_reason() is not None and self.stop_reason() is None:
                time.sleep(poll)
        stop = self.stop_reason()
        if stop is not None:
            return stop
        if reason is not None:
            self.set_state("running", "resumed")
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or "(no reason given)"
    except FileNotFoundError:
        return None
