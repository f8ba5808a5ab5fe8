"""
A code arm's model as its code builds it, asked before its run: what its windows are counted at.

A run's stream holds the windows its budget pays for (org/streams.py). Under a FLOP or seconds
budget they are counted at a FLOPs-a-token figure: the config's, for the program's own code. An
arm with code of its own may build another model than its config says (a lookup table, a wider
layer), so the runner asks for it first (`Probes.flops_per_token`): the evaluator with
`{"probe": true}` has a boxed worker of the arm's code build it (`prepare`), and the harness
charges its initial parameters as it charges a checkpoint's (evaluator.recount).

- once per (code commit, overrides, budget): slots asking for one key wait for the first answer;
- the probe's wall time is charged to the run that asked for it at once (ledger.charge_measuring),
  so it is on record whatever happens to the run next (re-queued, its runner killed);
- a probe past PROBE_SECONDS is cut: the run is counted at its config, and the next run of the
  arm asks again (a busy moment is not kept);
- a probe that fails (its code raises, the base rejects the config) is kept: its runs are counted
  at their config (streams.overdrawn holds them to it). Its logs stay in
  .lab/<program>/probes/<run>/, their last KEPT_LOG_BYTES; a success's go;
- a failure of the harness itself is a ValueError: the run is an error, and the key is asked again.
"""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Callable

from org import remove_tree
from org.measure import KEPT_LOG_BYTES, MeasureError, keep_tail, no_follow

PROBE_SECONDS = 60.0  # an honest probe: seconds (14 compiling kernels on 2 cores); one that hangs costs its run this, and its start


class Probes:
    def __init__(self, logs: Path, say: Callable[[str], None]):
        self.logs, self.say = logs, say  # logs: .lab/<program>/probes, a folder per run whose probe failed
        self.answers: dict[tuple, float | None] = {}  # key -> FLOPs a token, or None (its config's)
        self.asking: set[tuple] = set()  # keys a slot is probing now
        self.cond = threading.Condition()

    def flops_per_token(self, key: tuple, run_id: int, evaluate: Callable[[Path, float], dict],
                        charge: Callable[[float], None]) -> float | None:
        """The FLOPs a token of the model at `key`, asked once: `evaluate(logs, timeout)` is the
        evaluator's outcome for run `run_id`, `charge(seconds)` books its time to that run."""
        with self.cond:
            while key in self.asking:  # (another slot is asking: its answer is ours)
                self.cond.wait()
            if key in self.answers:
                return self.answers[key]
            self.asking.add(key)
        try:
            return self._ask(key, run_id, evaluate, charge)
        finally:
            with self.cond:
                self.asking.discard(key)
                self.cond.notify_all()

    def _ask(self, key: tuple, run_id: int, evaluate, charge) -> float | None:
        t0, logs = time.monotonic(), self.logs / str(run_id)
        logs.mkdir(parents=True, exist_ok=True)  # (the evaluator's logs overwrite an earlier probe's)
        try:  # (OrgError: the harness failed twice; the runner stops, and its recovery re-queues the run)
            outcome = evaluate(logs, PROBE_SECONDS)
        except MeasureError as e:  # (so again, after a runner stopped on it: an error, which stops no runner)
            raise ValueError(f"its model could not be probed ({e})") from None
        finally:
            charge(time.monotonic() - t0)
        fpt = outcome.get("measurement") and outcome["measurement"].flops_per_token
        if not outcome.get("timed_out"):
            self.answers[key] = fpt
        if fpt:
            remove_tree(logs, ignore_errors=True)
            return fpt
        for log in logs.glob("*.log"):  # (its worker's words: as much as the code printed in the time)
            with contextlib.suppress(OSError), open(log, "r+b", opener=no_follow) as f:
                keep_tail(f, KEPT_LOG_BYTES)
        self.say(f"run {run_id}: its model could not be built before it ran ({outcome.get('invalid')}); "
                 f"its windows are counted at its config (logs: {logs})")
        return None
