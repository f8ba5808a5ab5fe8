"""
The budgeted runner: the one way an experiment becomes measurements.

The program, not the experiment, decides the budget, the seeds, the data and the evaluation.
Experiments fill the queue (org/experiments.py: submit(), plan()); the runner executes it:

    Runner.drain() -> each slot takes the next queued run, freezes the commit into a snapshot,
                 runs `python -m trainer train ...` there with the program's budget flags,
                 times it, kills it past run_timeout_seconds, checks its result against the
                 program (budget, seed, shapes, data, eval fingerprint), then MEASURES it: the
                 harness evaluates the checkpoint itself (org/measure.py, org/evaluator.py),
                 and that measurement is the run's record; the trainer's figures only
                 cross-check it. After every `baseline_every` runs of other arms the baseline re-runs one
                 of its seeds (its drift over the program). An improve program's branch follows its frontier.
Crash safety: SIGKILL the runner at any moment and drain() again: runs left 'running' by the
dead runner are recovered (a finished result.json is recorded, a half-written run directory is
kept aside as <id>.attempt<N> and the run re-queued), and nothing is run or counted twice.
A trainer of the program's own code killed by a signal nobody here sent (the OOM killer) is re-queued
so, MAX_ATTEMPTS times at most; an experiment's own code runs once (crashing on purpose, it could choose).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import replace
from pathlib import Path

from org import OrgError, python_text, remove_tree, shown, sourceless
from org.bytecode import fill as fill_bytecode, source_only
from org.cgroups import cpu_seconds, pools
from org.cluster import GPU, connect, job_id, machine
from org.remote import last_line
from org.kernelcache import copy_kernel_cache, warm as warm_kernels
from org.lab import Lab, LabError, child_env
from org.ledger import Ledger, budget_of, corrupt, lock_held, now
from org.measure import (MeasureError, check_result, cross_check, evaluator_env, job_for, keep_failed_logs,
                          leave_the_record, measure_run, planted, put_aside, read_result, tidy_runs, worker_command)
from org.experiments import budget_note, plan, plan_all, refusal, run_cost, runs_own_code, waiting_for_budget, waiting_for_pace
from org.improve import sync_branch
from org.probes import Probes
from org.recovery import one_runner, recover, remeasure
from org.program import Program
from org.reaper import KILL_GRACE_SECONDS, died_of, died_reason, pulsing, reap
from org.diskwatch import GROWTH_SLACK, free_bytes, gib, usage
from org.sandbox import INSTALL_HINT, Limits, available, check, end_box, run_box, untrusted_env, worker_box
from org.slots import Slot, make_slots, takes_snapshots, threads_env, train_command
from org.streams import (base_modules, base_pace, budget_kind, data_given, export_for_models, export_stream, models_data, overdrawn,
                         reads_streams, runs_data, split_key_file, stream_record, with_passes)
from trainer.record import Measurement, Result

MAX_ATTEMPTS = 3        # a run of the base code whose trainer dies of a signal nobody here sent: tries
IDLE_POLL_SECONDS = 1.0
MEASURE_FAILED = "the harness could not measure it, twice"
STALE_CUT_SECONDS = 86400  # a run's data half cut (export_stream's .<id>-*) by a runner that died: gone after this


# --- the runner -----------------------------------------------------------------------

class Runner:
    """Drains a program's queue over its slots. One Runner per process; threads per slot.

    Every trainer run and every model worker runs in a sandbox (org/sandbox.py):
      sandboxed=None   where boxes can be made here; where not, the program's own code runs as
                       plain processes (a person's `org run` on a machine without bubblewrap),
                       and says so, but an experiment's own code (an agent's commit) does not:
                       nothing runs, and drain() says why in one line
      sandboxed=True   boxes are required (an org of model agents): none, no runner
      sandboxed=False  boxes are off, by the caller's word (`org run --no-sandbox`)
    `trust_code` lets an experiment's own code run unboxed all the same (scripted agents: our code)."""

    def __init__(self, lab: Lab, program: Program, ledger_path: Path, say=print, sandboxed: bool | None = None,
                 trust_code: bool = False):
        self.lab, self.program, self.ledger_path = lab, program, Path(ledger_path)
        self.runs_dir = lab.state_dir(program.name) / "runs"
        self.harness_cache = lab.state_dir(program.name).parent / "harness-cache"  # written by harness code only
        self.say = lambda text: say(shown(text))  # a run's reason is its code's words: no escapes
        if sandboxed:
            check()  # SandboxError (an OrgError), one line
        self.why_unboxed = None if sandboxed else (available() if sandboxed is None else "sandbox turned off")
        self.sandboxed = self.why_unboxed is None
        self.code_may_run = self.sandboxed or sandboxed is False or trust_code  # an experiment's own
        if self.why_unboxed:
            say(f"trainer runs are NOT sandboxed: {self.why_unboxed}")
        self.git_lock = threading.Lock()  # GitPython's Repo is not thread-safe
        self.cond, self.busy = threading.Condition(), 0  # (it guards claims and the count of busy slots)
        self.budget_said = ""  # what this runner last said of the budget
        self.stopping, self.tidied = threading.Event(), False  # tidied: what a dead runner left (tidy_runs)
        self.children: dict[int, subprocess.Popen] = {}
        self.data_lock, self.data_ready = threading.Lock(), False  # prepare_data() before the first run
        self.kernel_lock, self.base_snapshot, self.stdlib_modules = threading.Lock(), None, None  # set by prepare_data()
        self.failure: OrgError | None = None  # why a slot gave up (a cluster gone silent, a bug), said by drain()
        self.probes = Probes(lab.state_dir(program.name) / "probes", self.say)  # code arms' models, before their runs
        self.pulses = lab.state_dir(program.name) / "runners"  # when each runner last lived (reaper.pulsing)
        self.jobs, self.ledger_key = connect(program, ledger_path) if program.runner.backend == "ray" else (None, None)

    def slots(self) -> list[Slot]:
        """This machine's slots, or one per run the cluster holds at once, each of a kind of
        device (threads_per_slot, 1 by default, sets each run's thread counts; Ray places the
        run on a node of its slot's kind, so there is no pinning)."""
        if not self.jobs:
            return make_slots(self.program)
        env = {**threads_env(self.program.runner.threads_per_slot or 1), "CUDA_VISIBLE_DEVICES": ""}
        kinds = [kind for kind, n in self.jobs.slots().items() for _ in range(n)]
        return [Slot(i, env, kind=kind, of=len(kinds)) for i, kind in enumerate(kinds)]

    def drain(self) -> dict:
        """Run until nothing is queued (or the compute budget is spent); returns run counts by
        status. Safe to call again after a crash: it recovers first."""
        with one_runner(self.lab.state_dir(self.program.name)), pulsing(self.pulses):
            return self._drain()  # (pulsing while its runs are claimed: a killed runner's are charged to its last pulse)

    def _drain(self) -> dict:
        with Ledger(self.ledger_path) as ledger:
            recover(self, ledger)
            remeasure(self, ledger)
            if not self.tidied:  # once a runner: `org serve` drains every second
                tidy_runs(self.runs_dir, ledger.runs(self.program.name), self.say)
                self.tidied = True
            plan_all(ledger, self.program)  # finish planning a crash interrupted
            sync_branch(self.lab, ledger, self.program)  # and moving the frontier's branch
            if not self.code_may_run:
                self._check_unboxed(ledger.runs(self.program.name, status="queued"), ledger)
        threads = [threading.Thread(target=self._slot_loop, args=(slot,), daemon=True,
                                    name=f"slot-{slot.index}") for slot in self.slots()]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # short joins keep Ctrl-C responsive
        except KeyboardInterrupt:  # (Ctrl-C, or `org stop`'s SIGTERM)
            self.stop()
            with self.cond:  # each slot puts its run back as its trainer dies, charged to now: a daemon thread
                # cut off left it running, charged to the next stop's now (not a join: one Ctrl-C cut short ends at once)
                self.cond.wait_for(lambda: self.busy == 0, KILL_GRACE_SECONDS)
            raise
        if self.failure:
            raise self.failure
        with Ledger(self.ledger_path) as ledger:
            return dict(Counter(run["status"] for run in ledger.runs(self.program.name)))

    def _check_unboxed(self, runs: list[dict], ledger: Ledger):
        """OrgError, one line, if any of runs would run an experiment's own code without a box."""
        experiments = {e["id"]: e for e in ledger.experiments(self.program.name)}
        theirs = sorted({e["arm"] for r in runs if runs_own_code(e := experiments[r["experiment_id"]])})
        if theirs:
            raise OrgError(f"runs of {', '.join(theirs)} run code of their own, and no box can be made here "
                           f"({self.why_unboxed}); nothing of theirs ran. {INSTALL_HINT}, or run code you "
                           "trust unboxed with `org run --no-sandbox`")

    @functools.cached_property
    def runs_data(self) -> Path:
        """What this program's runs read (streams.runs_data), made by prepare_data()."""
        with Ledger(self.ledger_path) as ledger:
            return runs_data(self.harness_cache, self.program.data, ledger.program(self.program.name)["base_commit"])

    def _cut_stream(self, ledger: Ledger, run: dict, own_code: bool, slot: Slot) -> Path | None:
        """The run's own windows, cut now (streams.export_stream). None: they could not be cut, and the run
        is recorded an error; an OSError (no room on the disk) is the machine's: back to the queue, and stop."""
        try:  # (the baseline's pace counts a seconds budget's windows: its kind's, or any kind's)
            pace = base_pace(base := ledger.runs(self.program.name, arm="baseline"), run["kind"]) or base_pace(base)
            counts = own_code and budget_kind(self.program, run) in ("flops", "seconds")  # (windows counted by FLOPs)
            fpt = self._probe(ledger, run, slot) if counts else None
            return export_stream(self.program, run, self.runs_data, self.harness_cache, own_code, pace, fpt)
        except OSError as e:  # the machine's, not the run's: back to the queue
            ledger.requeue(run["id"], f"its data could not be cut ({e}); re-queued")
            raise OrgError(f"run {run['id']}: its data could not be cut from the runs' export ({e})") from None
        except ValueError as e:  # (the runs' export could not be made: prepare_data said why)
            why = f"its data could not be cut from the runs' export: {e}"
            self.record(ledger, run, Result(status="error", reason=why), 0.0, None, slot)

    def _probe(self, ledger: Ledger, run: dict, slot: Slot) -> float | None:
        """FLOPs a token of a code arm's model as its code builds it (org/probes.py): what its windows are
        counted at. None: its config's (streams.overdrawn). Its time is the run's (ledger.charge_measuring)."""
        key = (ledger.experiment(run["experiment_id"])["code_commit"], run["overrides"], run["budget"])
        return self.probes.flops_per_token(
            key, run["id"], lambda logs, timeout: self._evaluate(ledger, run, slot, logs, probe=True, timeout=timeout),
            lambda seconds: ledger.charge_measuring(run["id"], seconds, before_trainer=True))

    def prepare_data(self):
        """Tokenize the program's data once (base commit's pipeline, lab's own split) into the harness's
        cache, where no box sees it; runs read only their part's read-only export (streams.runs_data)."""
        with self.data_lock:
            if not self.data_ready:
                self._prepare_data()
                self.data_ready = True

    def _prepare_data(self):
        fill_bytecode(self.say)  # what every run and measurement reads: 2.7 s less per tiny run
        if self.sandboxed:  # its runs' boxes' trees and walk (every program's: sandbox.run_box), once, not per slot
            with contextlib.suppress(Exception):  # (else each box says why it cannot be made)
                python_text.binds(), python_text.other_pythons()
        with Ledger(self.ledger_path) as ledger:
            base = ledger.program(self.program.name)["base_commit"]
            for stale in (self.harness_cache / "streams" / self.program.name).glob("*"):  # what stopped runners left
                being_cut = stale.name.startswith(".") and time.time() - stale.stat().st_mtime < STALE_CUT_SECONDS
                number = stale.name.removesuffix(".json")  # (a stream's folder, or its record: stream_record)
                run = ledger.run(int(number)) if number.isdigit() else None
                if not being_cut and not (run and run["status"] == "running"):
                    remove_tree(stale, ignore_errors=True)
        with self.git_lock:
            code = self.base_snapshot = self.lab.snapshot(base, self.program.name)
        data = self.program.data
        env = child_env({"PYTHONPATH": str(code), "NANOLAB_CACHE": str(self.harness_cache / "data"), **source_only()})
        done = subprocess.run([sys.executable, "-m", "trainer", "data", "--data", data.source,
                               "--tokenizer", data.tokenizer, "--split-key-file", str(split_key_file(self.harness_cache)),
                               "--export-runs", str(self.runs_data)],
                              cwd=code, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # every run will say so too; the runner goes on
            return self.say(f"preparing the data failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        export_for_models(self.runs_data, self.program.train.seq_len)
        warm_kernels(self.program, code, self.kernels(code), self.runs_data, env, self.say)
        if self.sandboxed:  # (after the data: the listing's box reads the runs' export)
            self.stdlib_modules = base_modules(self.lab.root, self.runs_dir, code, self.runs_data, env, self.say)

    def stop(self):
        """Stop claiming and kill running trainers (a cluster's jobs stop as their waits see
        `stopping`); their runs are recovered by the next drain."""
        self.stopping.set()
        for proc in list(self.children.values()):
            _kill_group(proc.pid, signal.SIGKILL)

    # --- recovery (org/recovery.py) ---------------------------------------------------------

    def recover(self, ledger: Ledger, why: str = "died mid-run", just_now: bool = False):
        recover(self, ledger, why, just_now)

    # --- claiming ------------------------------------------------------------------------

    def _slot_loop(self, slot: Slot):
        run = None
        try:
            with Ledger(self.ledger_path) as ledger:
                while not self.stopping.is_set() and not self.failure:
                    run = None
                    with self.cond:
                        run = self._claim(ledger, slot)
                        if run is None:
                            if self.busy == 0:
                                self.cond.notify_all()
                                return
                            self.cond.wait(IDLE_POLL_SECONDS)  # a finishing run may enqueue more
                            continue
                        self.busy += 1
                    try:
                        self._execute(ledger, run, slot)
                    finally:
                        with self.cond:
                            self.busy -= 1
                            self.cond.notify_all()
        except Exception as e:  # stop, never end as if the queue were done; a run stays claimed: recovered next time
            self.failure = self.stopped_by(e, run)

    def stopped_by(self, e: Exception, run: dict | None) -> OrgError:
        """Why the runner stops: the cluster's or the ledger's word (a lock held past its wait), else our bug's, loudly."""
        which, stays = (f"run {run['id']}", "the run stays claimed: `org run` again recovers it") if run else \
            ("a claim", "nothing was claimed")
        if lock_held(e):
            return OrgError(f"{corrupt(self.ledger_path, e)}; {which}: {stays}")
        if isinstance(e, OrgError):
            return e
        self.say(traceback.format_exc().rstrip())
        return OrgError(f"{which} stopped the runner ({type(e).__name__}: {e}; a nanolab bug, its traceback is above); {stays}")

    def _claim(self, ledger: Ledger, slot: Slot) -> dict | None:
        name = self.program.name
        if (free := free_bytes(self.runs_dir)) < Limits().disk_reserve and ledger.runs(name, status="queued"):
            raise OrgError(f"the disk under {self.runs_dir} has {gib(free)} free, within the {gib(Limits().disk_reserve)} no "
                           "run's box may write into: no run starts (its trainer would fail); free some, then `org run`")
        spent, total = ledger.compute_seconds(name), ledger.budget(name)["total_compute_seconds"]
        streams = self.base_snapshot is None or reads_streams(self.base_snapshot)  # (no stream, no pace to wait for)
        waiting = [] if spent >= total else waiting_for_budget(ledger, self.program) + waiting_for_pace(ledger, self.program, slot.kind) * streams
        said = "spent" if spent >= total else str(waiting) if waiting else ""
        if said and said != self.budget_said and ledger.runs(name, status="queued"):
            self.say(budget_note(ledger, self.program, waiting, slot.kind))
        self.budget_said = said
        if spent >= total:  # the ledger's total: `org budget` raises it while the org runs
            return None
        with ledger.tx():
            run = self._repeat_due(ledger) and self._claim_repeat(ledger, slot)
            run = run or ledger.claim(name, slot.index, kind=slot.kind, waiting=waiting)
            if run and self.jobs:  # the job's id is on record before the job exists
                ledger.set_job(run["id"], job_id(name, self.ledger_key, run["id"], run["attempts"]))
                run = ledger.run(run["id"])
            return run

    def _repeat_due(self, ledger: Ledger) -> bool:
        """True when `baseline_every` measuring runs of other arms were claimed since the baseline
        last re-ran a seed, and other work is still queued (so the re-runs bracket it). Counted from
        its last re-run, not its last run: the queue goes seed by seed, so a baseline run of the next
        seed comes every few runs, and it measures no drift. A run that ended counts if it took half
        a run's cost (run_cost) or more (code that crashed at once, or wrote `diverged` and exited,
        bought re-runs with seconds of its agent's); one in flight does."""
        name, cost, since = self.program.name, run_cost(ledger, self.program), 0
        for r in sorted((r for r in ledger.runs(name) if r["claim_seq"] and r["purpose"] != "tune"),
                        key=lambda r: r["claim_seq"], reverse=True):
            if r["purpose"] == "repeat":
                break
            took = (r["wall_seconds"] or 0) + (r["measure_seconds"] or 0)  # (as run_cost counts)
            since += r["arm"] != "baseline" and (r["status"] == "running" or took >= cost / 2)
        return since >= self.program.runner.baseline_every and bool(ledger.runs(name, status="queued"))

    def _claim_repeat(self, ledger: Ledger, slot: Slot) -> dict | None:
        """Enqueue and claim a re-run of one of the baseline's seeds, cycling through them in
        the order they were queued (the first seed ran first: the longest span of time)."""
        name = self.program.name
        mains = ledger.runs(name, arm="baseline", purpose="main")
        if not mains:  # the baseline is still tuning: nothing to repeat yet
            return None
        repeats = ledger.runs(name, arm="baseline", purpose="repeat")
        if not any(r["status"] == "queued" for r in repeats):  # (one a slot of another kind left)
            template = mains[len(repeats) % len(mains)]
            ledger.add_run(ledger.experiment(template["experiment_id"]), "repeat", template["seed"],
                           template["round"], json.loads(template["overrides"]), budget_of(template))
        return ledger.claim(name, slot.index, "baseline", slot.kind, "repeat")  # (None: its seed is another kind's)

    # --- executing -----------------------------------------------------------------------

    def _execute(self, ledger: Ledger, run: dict, slot: Slot):
        experiment = ledger.experiment(run["experiment_id"])
        with self.git_lock:  # checked again at run time: the harness, not the queue, decides
            t0 = time.monotonic()  # (the run's: a commit of 100,000 files takes half a minute to write out)
            try:
                reason = refusal(self.lab, self.program, experiment["base_commit"], experiment["code_commit"],
                                 json.loads(run["overrides"]))  # (an older ledger's too)
                snapshot = None if reason else self.lab.snapshot(experiment["code_commit"], self.program.name)
            except LabError as e:  # its objects are not what their names say (Lab.verified)
                reason = str(e)
            finally:  # (a disk that filled as it was written out: the runner stops, its time is on record)
                ledger.charge_measuring(run["id"], time.monotonic() - t0, before_trainer=True)
        if reason:
            return ledger.finish(run["id"], "refused", reason)
        if not self.code_may_run and runs_own_code(experiment):  # queued as we ran: back to the queue, and stop
            ledger.requeue(run["id"], "not run: its code is its own and this runner has no box")
            self._check_unboxed([run], ledger)
        self.prepare_data()
        own_code, streams = runs_own_code(experiment), reads_streams(self.base_snapshot)
        data = self._cut_stream(ledger, run, own_code, slot) if streams else self.runs_data
        if data is None:
            return
        run_dir = self.runs_dir / str(run["id"])
        put_aside(run_dir)  # left by an attempt that never recorded: kept, not reused
        run_dir.mkdir(parents=True)
        log_path = run_dir / "train.log"
        cmd = train_command(self.program, json.loads(run["overrides"]), run["seed"], run_dir, budget_of(run), data,
                            takes_snapshots(self.base_snapshot))
        kernels = self.kernels(snapshot, run_dir / "kernels" if own_code else None)
        env = untrusted_env({**slot.env, "PYTHONPATH": str(snapshot), "NANOLAB_GIT_COMMIT": experiment["code_commit"],
                             "NANOLAB_CACHE": str(data),  # (read-only: shards need none)
                             "NUMBA_CACHE_DIR": str(kernels), **source_only()})
        self.say(f"run {run['id']}: {run['arm']} seed {run['seed']} ({run['purpose']}) on slot {slot.index}")
        t0 = time.monotonic()
        run_trainer = self._run_job if self.jobs else self._run_here
        returncode, killed_reason, cpu = run_trainer(ledger, run, cmd, env, (snapshot, kernels, data), run_dir, log_path, slot)
        wall = time.monotonic() - t0
        if streams:  # its trainer is done with it
            remove_tree(data, ignore_errors=True)
        left = planted(run_dir)  # before anything there is opened
        died = died_of(returncode, self.sandboxed)
        if self.stopping.is_set() and killed_reason is None and died:
            put_aside(run_dir)  # we were stopped (Ctrl-C, org stop): the run goes back to the queue
            ledger.requeue(run["id"], "the runner was stopped during the run; re-queued", wall)
            return
        result = Result(status="invalid", reason=left) if left else read_result(run_dir)
        died = None if killed_reason or result is not None else died
        attempts = ledger.run(run["id"])["attempts"]
        free = free_bytes(run_dir) if result is None and not killed_reason else None
        if free is not None and free < Limits().disk_reserve and attempts < MAX_ATTEMPTS \
                and usage([run_dir], lenient=True)[0] < GROWTH_SLACK:  # (one that filled it, between its watch's looks, failed)
            put_aside(run_dir)  # the machine's disk is full, and the run did not fill it: not the run's failure
            ledger.requeue(run["id"], f"its trainer failed with {gib(free)} free on the disk; re-queued", wall)
            raise OrgError(f"run {run['id']}: the disk under {run_dir.parent} is full ({gib(free)} free); "
                           "the run went back to the queue: `org run` again once there is room")
        if self.jobs and returncode is None and not killed_reason and result is None and attempts < MAX_ATTEMPTS:
            put_aside(run_dir)  # the job ended, its command never did: its node went away
            ledger.requeue(run["id"], f"job {run['job_id']} ended with no exit status (its node lost?); re-queued", wall)
            self.say(f"run {run['id']}: its job was lost; re-queued (attempt {attempts} of {MAX_ATTEMPTS})")
            return
        if died and not own_code and attempts < MAX_ATTEMPTS:  # not our signal (the OOM killer): try again
            put_aside(run_dir)
            ledger.requeue(run["id"], f"the trainer died of {died}, a signal the runner did not send; re-queued", wall)
            self.say(f"run {run['id']}: the trainer died of {died}; re-queued (attempt {attempts} of {MAX_ATTEMPTS})")
            return
        if result is None:  # (a run box's imports are few: a line that could not import one says which)
            said = last_line(log_path)
            said = sourceless.import_hint(said) if self.sandboxed else said
            result = Result(status="killed" if killed_reason else "error",
                            reason=killed_reason or (died_reason(died, attempts, own_code) if died else f"exit {returncode}: {said}"))
        self.record(ledger, run, result, wall, killed_reason, slot, cpu)

    def _run_here(self, ledger, run, cmd, env, code, run_dir, log_path, slot) -> tuple[int, str | None, float | None]:
        """The trainer as a child process of this one, in its box: (exit status, why killed, the
        CPU seconds of all its box ran: a clock its code cannot stop, nor pass work around)."""
        # pinned before exec, so every thread the trainer starts (BLAS pools) stays on the slot's cores;
        # the box's cpuset keeps it there (an affinity alone, its code could widen)
        pin = (lambda: os.sched_setaffinity(0, slot.cores)) if slot.cores else None
        box = self._run_box(run_dir, *code, slot) if self.sandboxed else None
        began = now()  # (its trainer's start, a recovery's clock: what came before, measure_seconds holds)
        with open(log_path, "wb") as log:
            how = dict(cwd=code[0], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       start_new_session=True, preexec_fn=pin)
            proc = box.popen(cmd, **how) if box else subprocess.Popen(cmd, **how)
        self.children[run["id"]] = proc
        if self.stopping.is_set():  # stop() ran between Popen and the line above: it missed this one
            _kill_group(proc.pid, signal.SIGKILL)
        ledger.mark_started(run["id"], proc.pid, cmd, run_dir, log_path, machine=machine(slot.env.get("CUDA_VISIBLE_DEVICES")),
                            started_at=began)
        killed_reason = self._wait(proc, lambda why: ledger.killing(run["id"], why)) or getattr(proc, "stopped", None)
        self.children.pop(run["id"], None)
        _kill_group(proc.pid, signal.SIGKILL)  # nothing the run started outlives it,
        cpu = cpu_seconds(proc) if self.program.train.device == "cpu" else None  # (a GPU's work is not in it)
        ledger.trainer_ended(run["id"], cpu)  # (a runner killed as it measures: its recovery reads it here)
        end_box(proc)  # (its cgroups go, read)
        reap(None, run_dir)  # nor writes there once it is read (a box's processes die just after bwrap)
        return proc.returncode, killed_reason, cpu

    def _run_job(self, ledger, run, cmd, env, code, run_dir, log_path, slot) -> tuple[int, str | None, None]:
        """The trainer as a Ray job (org/cluster.py), same box, same command: (exit status, why killed, None).
        A stopping runner's stop reads as a signal: the run goes back to the queue, as local runs do."""
        job = run["job_id"]
        if self.program.train.device == "cuda":
            env = {**env, "CUDA_VISIBLE_DEVICES": GPU}
        box = self._run_box(run_dir, *code, slot) if self.sandboxed else None
        timeout, began = self.program.budget.run_timeout_seconds, now()
        self.jobs.submit(job, cmd, code[0], env, log_path, box, timeout, KILL_GRACE_SECONDS, slot.kind)
        ledger.mark_started(run["id"], None, cmd, run_dir, log_path, node="(a cluster node)", started_at=began)
        returncode, killed = self.jobs.wait(job, timeout, KILL_GRACE_SECONDS, self.stopping)
        ledger.set_job(run["id"], node=self.jobs.node(job), machine=self.jobs.machine(job))
        if killed == "stopping":
            return -signal.SIGKILL, None, None
        return returncode, killed, None

    def _wait(self, proc: subprocess.Popen, killing=lambda why: None) -> str | None:
        """Wait for the trainer; past run_timeout_seconds SIGTERM it (it writes a 'killed' result.json
        after its step), and SIGKILL it if it does not stop. Why, on record first (`killing`)."""
        timeout = self.program.budget.run_timeout_seconds
        try:
            proc.wait(timeout=timeout)
            return None
        except subprocess.TimeoutExpired:
            why = f"wall time over run_timeout_seconds ({timeout:g}s), killed by the runner"
            with contextlib.suppress(sqlite3.Error):  # (on record for a recovery; the signal comes first in worth)
                killing(why)
        _kill_group(getattr(proc, "inner_pid", proc.pid), signal.SIGTERM)  # the trainer itself, in its box
        try:
            proc.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
        return why

    def kernels(self, snapshot: Path, private: Path | None = None) -> Path:
        """A commit's compiled kernels (Numba's cache; org/kernelcache.py). The base commit's runs
        share one: its code is the program's. A run or a measuring worker of another commit gets a
        fresh one at `private`: a cache its code writes and its next run (or the worker that checks it) reads would carry state."""
        cache = private or self.lab.state_dir(self.program.name) / "kernels" / snapshot.name
        with self.kernel_lock:
            if private:
                remove_tree(private, ignore_errors=True)  # left by an attempt that never finished
            if self.base_snapshot not in (None, snapshot) and not cache.exists():
                base = self.lab.state_dir(self.program.name) / "kernels" / self.base_snapshot.name
                copy_kernel_cache(self.base_snapshot, base, snapshot, cache)
        return cache

    def _run_box(self, run_dir: Path, snapshot: Path, kernels: Path, data: Path, slot: Slot):
        threads = max(1, int(self.program.runner.threads_per_slot or os.cpu_count() or 1))
        return run_box(self.lab.root, run_dir, snapshot, data, kernels, gpu=self.program.train.device == "cuda",
                       cpu_seconds=int(2 * threads * self.program.budget.run_timeout_seconds) + 60, cores=slot.cores,
                       source=self.program.data.source, pools=pools(self.lab.root, self.program, f"slot-{slot.index}", slot.of),
                       stdlib_modules=self.stdlib_modules)

    def record(self, ledger: Ledger, run: dict, result: Result, wall: float, killed_reason: str | None, slot: Slot,
                cpu: float | None = None):
        """Check the trainer's result, measure the run (outside any transaction: it takes seconds),
        then record both in one transaction and plan what its experiment needs next."""
        name = self.program.name
        # (the trainer's data fingerprint is of its dev text; the program's, of the lab's val)
        fingerprints = {"eval_fingerprint": ledger.program(name)["eval_fingerprint"]}
        status, reason = check_result(self.program, run, result, fingerprints, data_given(ledger.run(run["id"])) or str(self.runs_data))
        if killed_reason:
            status, reason = "killed", killed_reason
        measurement, measure_seconds = None, None  # (its commit's check and its probe are on record already)
        if status == "completed":
            t0 = time.monotonic()
            status, reason, measurement = self.measure(ledger, run, result, slot)
            measure_seconds = time.monotonic() - t0
        measurement = with_passes(self.harness_cache, self.program, run, measurement)  # (its stream's length goes)
        measurement = measurement and replace(measurement, train_cpu_seconds=cpu and round(cpu, 3))
        with ledger.tx():
            ledger.finish(run["id"], status, reason, result, wall, measurement, measure_seconds)
            if measurement and not ledger.program(name)["eval_fingerprint"]:
                ledger.set_fingerprints(name, measurement.eval_fingerprint, measurement.data_fingerprint)
            plan(ledger, self.program, ledger.experiment(run["experiment_id"]))  # decides ready tries too
        stream_record(self.harness_cache, name, run).unlink(missing_ok=True)  # (on record: overdrawn has had it)
        leave_the_record(Path(ledger.run(run["id"])["run_dir"] or self.runs_dir / str(run["id"])), status == "completed")
        with self.git_lock:  # an improvement program's frontier moved? its branch follows
            sync_branch(self.lab, ledger, self.program)
        bpb = f"val_bpb {measurement.val_bpb:.4f} (harness)" if measurement and measurement.val_bpb else ""
        cost = f", measured in {measure_seconds:.1f}s" if measure_seconds else ""
        self.say(f"run {run['id']}: {status} {bpb} in {wall:.1f}s{cost}" + (f" ({reason})" if reason else ""))

    def measure(self, ledger: Ledger, run: dict, result: Result, slot: Slot) -> tuple[str, str | None, Measurement | None]:
        """(status, reason, measurement) of a run the trainer says completed: the harness's own
        evaluation of its checkpoint, cross-checked with the trainer's figures."""
        try:
            outcome = self._evaluate(ledger, run, slot)
        except MeasureError as e:  # (again, after a runner stopped on it: recorded, as no runner stops for good)
            return "error", str(e), None
        if "invalid" in outcome:
            return "invalid", f"harness measurement: {outcome['invalid']}", None
        measurement = outcome["measurement"]
        problems = cross_check(result, measurement) + overdrawn(self.harness_cache, self.program, ledger.run(run["id"]),
                                                                measurement, self.runs_data)
        if problems:
            return "invalid", "; ".join(problems), measurement
        return "completed", None, measurement

    def _evaluate(self, ledger: Ledger, run: dict, slot: Slot, logs: Path | None = None, probe: bool = False,
                  timeout: float | None = None) -> dict:
        """The evaluator's outcome (measure.measure_run; with `probe`, evaluator.probe), its logs in the run's
        directory or `logs`; its command names the run's, for a recovery's reaper. A failure of the harness's
        own (MeasureError: an evaluator killed, a full disk) is no verdict on the run (recorded an error, it read
        as its arm's code's): it is measured again; failing twice, the runner stops and leaves it to its recovery
        (a person may free the disk). Failing so again, it is the MeasureError: no run stops the runner for good."""
        try:
            return self._evaluate_once(ledger, run, slot, logs, probe, timeout)
        except MeasureError as e:
            self.say(f"run {run['id']}: the harness's measurement failed ({self._failed(ledger, run, logs, e)}); "
                     "measuring it again")
        try:
            return self._evaluate_once(ledger, run, slot, logs, probe, timeout)
        except MeasureError as e:
            failed = self._failed(ledger, run, logs, e)
            if MEASURE_FAILED in (ledger.run(run["id"])["attempt_log"] or ""):
                raise MeasureError(failed) from None
            ledger.log_attempt(run["id"], f"{MEASURE_FAILED} ({failed}); the runner stopped")
            raise OrgError(f"run {run['id']}: {MEASURE_FAILED} ({failed}); the run stays claimed: `org run` again "
                           "measures it") from None

    def _failed(self, ledger: Ledger, run: dict, logs: Path | None, e: MeasureError) -> str:
        """A failed measurement's words, its logs kept out of the next attempt's way and named where they went."""
        source = logs or Path(ledger.run(run["id"])["run_dir"] or self.runs_dir / str(run["id"]))
        kept = keep_failed_logs(source, self.lab.state_dir(self.program.name) / "failed-measurements", run["id"])
        return str(e).replace(str(source), str(kept)) + f" (its logs: {kept})" if kept else f"{e} (its logs left in place)"

    def _evaluate_once(self, ledger: Ledger, run: dict, slot: Slot, logs: Path | None, probe: bool,
                       timeout: float | None) -> dict:
        run_dir = Path(ledger.run(run["id"])["run_dir"] or self.runs_dir / str(run["id"]))
        experiment = ledger.experiment(run["experiment_id"])
        base, commit = experiment["base_commit"], experiment["code_commit"]
        base_code, code = self._snapshot(base), None if commit == base else self._snapshot(commit)
        self.prepare_data() if code else None  # (a recovery's measurement too: its workers' boxes hold stdlib_modules alone)
        kernels = self.lab.state_dir(self.program.name) / "kernels"
        caches = {name: kernels / f"{commit}.measuring-run{run['id']}-{name}" for name in ("a" if probe else "ab")} if code else {}
        workers = {name: self._worker(code, slot, cache, lean=name == "b") for name, cache in caches.items()} or None
        workers = workers and {**workers, "base": self._worker(base_code, slot, None)}  # evaluator.forward_time_ratio
        job = job_for(self.program, run, run_dir, base_code, workers, self.harness_cache, self.runs_data)
        env = evaluator_env(self.harness_cache, slot.env)
        memory = pools(self.lab.root, self.program, f"slot-{slot.index}", slot.of) if self.sandboxed else None
        try:
            return measure_run({**job, "log_dir": str(logs or run_dir), "probe": probe}, env,
                               timeout or max(120.0, self.program.budget.run_timeout_seconds), slot.share, memory)
        finally:
            for cache in caches.values():  # a worker's: it may have nested folders a thousand deep
                remove_tree(cache, ignore_errors=True)

    def _snapshot(self, commit: str) -> Path:
        """A commit's snapshot (Lab.snapshot). One made is never changed, so it is read without the lock that
        an agent's commit of 100,000 files holds for half a minute (a measurement waiting on it was charged)."""
        made = self.lab.state_dir(self.program.name) / "snapshots" / commit
        if made.is_dir() and not made.is_symlink():
            return made
        with self.git_lock:
            return self.lab.snapshot(commit, self.program.name)

    def _worker(self, code: Path, slot: Slot, cache: Path, lean: bool = False) -> dict:
        """How the evaluator starts a worker of the experiment's model: boxed (b, which checks a: lean), with a fresh kernel cache."""
        kernels = self.kernels(code, cache)
        data = models_data(self.runs_data)  # a few windows: a worker's compute is no run's budget
        env = untrusted_env({**slot.env, "NANOLAB_CACHE": str(data), "NUMBA_CACHE_DIR": str(kernels)})
        # on its runs' cores, as many as their threads (on the share, threads of its own did x8 the base's work in its time)
        box = worker_box(self.lab.root, code, data, kernels, gpu=self.program.train.device == "cuda", cores=slot.cores,
                         source=self.program.data.source, pools=pools(self.lab.root, self.program, f"slot-{slot.index}", slot.of),
                         lean=lean, stdlib_modules=self.stdlib_modules) if self.sandboxed else None
        return worker_command(code, env, box)


def _kill_group(pid: int, sig: int):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the trainer leads its own session (start_new_session)
