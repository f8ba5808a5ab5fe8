"""
The tools an agent works with, one method each, and their JSON schemas (TOOLS).

Every backend offers the same tools: the API backends as tool definitions, the scripted
researcher by calling them directly, the CLI agents through `org tool NAME '{json}'`.

    tools = Tools("junior-1", program, lab_root, worktree, teammates=["chief", "junior-2"])
    result = tools.call("edit_file", {"path": "trainer/config.py", "old_text": ..., "new_text": ...})
    result.output, result.error, result.refused

A call never raises: bad arguments, an unknown tool, a refusal or a failing command all come
back as an error result the model can read and act on.
"""
from __future__ import annotations

import json
import math
import os
import contextlib
import errno
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from org import OrgError, held
from org.experiments import held_for_checks, stuck_for_budget, waiting_for_budget
from org.improve import frontier, frontiers, lineage, origin, unreproduced
from org.lab import Lab, agent_branch, agent_refs
from org.ledger import FINISHED, Ledger, ledger_path, shown_seed
from org.mail import EVERYONE, HUMAN, TURN_MAIL_BYTES, Mail, a_turns_mail, format_mail
from org.program import Program, owned_by_program
from org.agents.sandbox import MAX_FILE_BYTES, SECRET_NAME, Refused, Workspace, cap, git_identity
from org.agents.spend import cpu_exhausted
from org.cgroups import pools
from org.sandbox import agent_box, available

# a command that names a credential variable is refused before it runs
CREDENTIAL_REFERENCE = re.compile(r"\b[A-Z0-9_]*(API_?KEY|AUTH_TOKEN|ACCESS_TOKEN|SECRET)[A-Z0-9_]*\b"
                                  r"|\b(ANTHROPIC|OPENAI)_[A-Z_]+")


@dataclass
class Limits:
    output_chars: int = 16_000       # any tool output longer than this is cut (head + tail kept)
    run_timeout_default: float = 120
    run_timeout_max: float = 600
    wait_max: float = 1800           # results / read_inbox wait at most this long per call
    poll_seconds: float = 0.5


@dataclass
class ToolResult:
    output: str
    error: bool = False
    refused: bool = False
    finished: str | None = None                   # set by finish(): the agent's closing summary
    acks: list = field(default_factory=list)      # messages to acknowledge once recorded


class ToolError(Exception):
    """Bad use of a tool (not a refusal): the message tells the model what to do instead."""


def tool(name: str, description: str, required: dict, optional: dict | None = None) -> dict:
    """A tool definition; parameters are {name: (json type, description)}."""
    params = {**required, **(optional or {})}
    return {"name": name, "description": description, "parameters": {
        "type": "object",
        "properties": {k: {"type": t, "description": d} for k, (t, d) in params.items()},
        "required": list(required),
    }}


TOOLS = [
    tool("read_file", "Read a text file in your worktree.",
         {"path": ("string", "path relative to your worktree")},
         {"offset": ("integer", "first line to read, 1-based (default 1)"),
          "limit": ("integer", "number of lines (default 2000)")}),
    tool("write_file", "Create or overwrite a file in your worktree.",
         {"path": ("string", "path relative to your worktree"), "content": ("string", "the whole file")}),
    tool("edit_file", "Replace an exact piece of text in a file (it must appear exactly once "
         "unless replace_all is true).",
         {"path": ("string", "path relative to your worktree"),
          "old_text": ("string", "the exact text to replace, with enough context to be unique"),
          "new_text": ("string", "the replacement")},
         {"replace_all": ("boolean", "replace every occurrence (default false)")}),
    tool("list_files", "List files under a directory of your worktree.", {},
         {"path": ("string", "directory relative to your worktree (default '.')")}),
    tool("run", "Run a bash command in your worktree (tests, a quick check, git log...). No "
         "credentials are available to it. Experiments go through submit_experiment, not here.",
         {"command": ("string", "the bash command")},
         {"timeout_seconds": ("number", "kill it after this long (default 120, at most 600)")}),
    tool("git_commit", "Commit every change in your worktree (git add -A). Runs use committed code.",
         {"message": ("string", "what changed and why")}),
    tool("submit_experiment", "Ask the runner to measure an idea against the program's baseline on "
         "your current commit (plus config overrides). The budget, the seeds and the evaluation are "
         "the program's and cannot be changed.",
         {"arm": ("string", "a short new name for the idea, e.g. no-softcap"),
          "hypothesis": ("string", "what you expect versus the baseline, and why")},
         {"overrides": ("object", "config keys to set, e.g. {\"softcap\": 0}"),
          "ref": ("string", "a git ref to measure instead of your current commit")}),
    tool("results", "The program's status: experiments, their runs (val_bpb per seed) and the "
         "referee's verdicts.", {},
         {"experiment": ("integer", "only this experiment"),
          "wait_seconds": ("number", "wait up to this long for its runs to finish")}),
    tool("send_message", "Send a message to a teammate's inbox ('all' for everyone, 'human' for "
         "the people running the org).",
         {"to": ("string", "an agent name, 'all' or 'human'"), "text": ("string", "the message")}),
    tool("read_inbox", "Read (and acknowledge) your new messages.", {},
         {"wait_seconds": ("number", "wait up to this long for a message to arrive")}),
    tool("write_standup", "Write your standup: what you did, what you learned, what is next.",
         {"text": ("string", "the standup, a few lines")}),
    tool("post_to_board", "Append a decision, verdict or conclusion to the org's board (everyone "
         "reads it; it is never edited).", {"text": ("string", "the entry")}),
    tool("finish", "Stop working: your part is done. Say what you concluded.",
         {"summary": ("string", "your conclusion and where the evidence is")}),
]
TOOL_NAMES = [t["name"] for t in TOOLS]
JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict}


def command_box(lab: Lab, worktree: str | Path, program: Program, agent: str):
    """The box an agent's commands run in, or None where boxes cannot be made (then `org launch`
    runs only scripted agents, and says so). Its memory is the agent's share, with its CLI's."""
    if available() is not None:
        return None
    return agent_box(lab.root, Path(worktree).resolve(), lab.admin_dir(worktree), Path(lab.repo.common_dir),
                     agent_refs(program.name, agent), lab.agent_objects(program.name, agent),
                     pools=pools(lab.root, program, f"agent-{agent}"))


@contextlib.contextmanager
def one_at_a_time(path: Path):
    """An agent's commands run one at a time, however they come (a CLI's port answers each call
    in a thread, with Tools of its own): a box's CPU time is booked as it ends, so calls sent at
    once would each pass the cap before any was booked. A file lock: held by any thread or
    process, and let go when its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f, held(f):
        yield

class Tools:
    def __init__(self, agent: str, program: Program, lab_root: str | Path, worktree: str | Path,
                 teammates: list[str] = (), limits: Limits | None = None,
                 interrupted: Callable[[], bool] = lambda: False):
        self.agent, self.program = agent, program
        self.lab = Lab.open(lab_root)
        self.lab_dir = self.lab.state_dir(program.name)
        self.ledger_path = ledger_path(self.lab_dir)
        self.ws = Workspace(worktree, program.protected, env=git_identity(agent),
                            box=command_box(self.lab, worktree, program, agent), meter=self.meter)
        self.mail = Mail(self.lab_dir)
        self.teammates = [t for t in teammates if t != agent]
        self.limits = limits or Limits()
        self.interrupted = interrupted
        self.handlers = {name: getattr(self, name) for name in TOOL_NAMES}

    def close(self):
        self.lab.close()

    def meter(self, cpu_seconds: float):
        """A command's CPU time in the agent's box, on record: no run's budget counts it."""
        with Ledger(self.ledger_path) as ledger:
            ledger.record_agent_cpu(self.program.name, self.agent, cpu_seconds, "command")

    @contextlib.contextmanager
    def charged(self, what: str):
        """The harness's CPU time in this thread on the agent's behalf (its commit taken in and checked:
        seconds for 100,000 files), on record as its commands' is: no run's budget counts it. A wait
        for the ledger's lock, or for the GIL, is no one's."""
        t0 = time.thread_time()
        try:
            yield
        finally:  # (its own transaction: a lock held past its wait loses the row, not the answer)
            with contextlib.suppress(sqlite3.Error), Ledger(self.ledger_path) as ledger:
                ledger.record_agent_cpu(self.program.name, self.agent, time.thread_time() - t0, what)

    def call(self, name: str, args) -> ToolResult:
        """Run one tool call; every failure is an error result, never an exception."""
        if name not in self.handlers:
            return ToolResult(f"error: unknown tool {name!r}; the tools are: {', '.join(TOOL_NAMES)}",
                              error=True)
        problem = check_args(name, args)
        if problem:
            return ToolResult(f"error: {name}: {problem}", error=True)
        try:
            result = self.handlers[name](**args)
        except Refused as e:
            return ToolResult(f"refused: {e}", error=True, refused=True)
        except ToolError as e:
            return ToolResult(f"error: {e}", error=True)
        except OrgError as e:  # (the harness's own one-line refusals: a submission's, the mail's)
            return ToolResult(f"error: {name}: {e}", error=True)
        except OSError as e:  # (the system's word on a path or an argument; any other stays a failure, below)
            if e.errno not in PATH_ERRORS:
                return ToolResult(f"error: {name} failed: {type(e).__name__}: {e}", error=True)
            return ToolResult(f"error: {name}: {e.strerror}", error=True)
        except Exception as e:  # a bug in a tool must not end the agent
            return ToolResult(f"error: {name} failed: {type(e).__name__}: {e}", error=True)
        finally:  # its commits, made in its box, where the person's git and the harness's read them
            with contextlib.suppress(OrgError, OSError):
                self.lab.take_in_work(self.ws.root, agent_branch(self.program.name, self.agent))
        if isinstance(result, str):
            result = ToolResult(result)
        # (mail bounds its own: a turn's worth, mail.a_turns_mail, of which a cut would lose the middle)
        result.output = cap(result.output, TURN_MAIL_BYTES + 1000 if name == "read_inbox" else self.limits.output_chars)
        return result

    # --- files ---------------------------------------------------------------------------

    def read_file(self, path: str, offset: int = 1, limit: int = 2000) -> str:
        try:
            data, size = self.ws.read_bytes(path)
        except FileNotFoundError:
            raise ToolError(f"{path}: no such file (list_files shows what exists)") from None
        except IsADirectoryError:
            raise ToolError(f"{path}: a folder; list_files shows what is in it") from None
        lines = data.decode(errors="replace").splitlines(keepends=True)
        start, limit = max(offset, 1) - 1, max(limit, 1)  # (a limit of 0 once said "read on" at the same offset)
        chunk = "".join(lines[start:start + limit])
        more = len(lines) - start - limit
        note = f"\n[... {more} more lines; read on with offset={start + limit + 1}]" if more > 0 else ""
        if start >= len(lines) and start > 0:
            note = f"[offset {offset} is past the file's {len(lines)} lines]"
        if size > len(data):
            note += (f"\n[the file is {size} bytes; read_file reads its first {len(data)}: use run "
                     "with sed -n or tail for the rest]")
        return chunk + note

    def write_file(self, path: str, content: str) -> str:
        self.ws.write_bytes(path, content.encode())
        return f"wrote {self.ws.check(path)} ({len(content)} characters)"

    def edit_file(self, path: str, old_text: str, new_text: str, replace_all: bool = False) -> str:
        counted = []

        def change(text: str) -> str:
            count = text.count(old_text) if old_text else 0
            if count == 0:
                raise ToolError(f"{path}: old_text not found; read the file and copy the text exactly")
            if count > 1 and not replace_all:
                raise ToolError(f"{path}: old_text appears {count} times; add context to make it "
                                "unique, or set replace_all")
            counted.append(count)
            return text.replace(old_text, new_text)
        try:
            self.ws.rewrite(path, change)
        except FileNotFoundError:
            raise ToolError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ToolError(f"{path}: a folder, not a file") from None
        return f"edited {self.ws.check(path)}: {counted[0]} replacement(s)"

    def list_files(self, path: str = ".") -> str:
        try:
            top = self.ws.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            raise ToolError(f"{path}: not a directory") from None
        entries = []
        try:  # fwalk from the descriptor: never through a link, never re-resolved by name
            for folder, dirs, files, _ in os.fwalk(".", dir_fd=top):
                dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__", ".lab"))
                rel = Path(self.ws.check(path)) / folder
                entries += [f"{(rel / d).as_posix()}/" for d in dirs]
                entries += [(rel / f).as_posix() for f in sorted(files)]
                if len(entries) > 500:
                    return "\n".join(sorted(entries)[:500]) + "\n[... more; list a subdirectory]"
        finally:
            os.close(top)
        return "\n".join(sorted(entries)) or "(empty)"

    # --- commands and git ----------------------------------------------------------------

    def run(self, command: str, timeout_seconds: float = None) -> str:
        named = CREDENTIAL_REFERENCE.search(command)
        if named:
            raise Refused(f"the command names {named.group(0)}: credentials are not available to "
                          "agents' commands")
        timeout = self.limits.run_timeout_default if timeout_seconds is None else timeout_seconds  # (0: the least, 1 s)
        timeout = min(max(timeout, 1), self.limits.run_timeout_max)
        with one_at_a_time(self.lab_dir / "locks" / f"{self.agent}.command"):
            spent = cpu_exhausted(self.ledger_path, self.program.name, self.agent)
            if spent:
                raise Refused(spent)
            status, output = self.ws.run(command, timeout, self.limits.output_chars - 200)  # room for the header
        leaked = [k for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8 and v in output]
        if leaked:
            raise Refused(f"the output contains the value of {leaked[0]}; it was withheld")
        head = f"killed after {timeout:g}s (timeout)" if status is None else f"exit status {status}"
        return f"{head}\n{output}"

    def git_commit(self, message: str) -> str:
        self._git("add", "-A")
        # --no-renames: a protected file moved away must show up under its own (deleted) path
        # (-z: a name of "org/é.py" came quoted, "org/\303\251.py", and passed as outside org/)
        staged = self._git("diff", "--cached", "--name-only", "--no-renames", "-z", limit=MAX_FILE_BYTES)
        staged = [p for p in staged.split("\0") if p]
        if not staged:
            return "nothing to commit: the worktree matches HEAD"
        protected = [p for p in staged if self.ws.protected_by(p)]
        if protected:
            self._git("reset", "-q")
            raise Refused(f"the commit would change protected paths: {', '.join(protected)}; revert "
                          f"them (git checkout HEAD -- PATH) and commit the rest")
        self._git("commit", "-q", "-m", message)
        return f"committed {self._git('rev-parse', 'HEAD')[:10]}: {len(staged)} file(s): {', '.join(staged[:10])}"

    def _git(self, *args, limit: int | None = None) -> str:
        status, out = self.ws.run(["git", *args], 60, limit or self.limits.output_chars)  # (a cut list could hide a name)
        if status != 0:
            raise ToolError(f"git {' '.join(args[:2])} failed: {out.strip()[-500:]}")
        return out.strip()

    # --- experiments ---------------------------------------------------------------------

    def submit_experiment(self, arm: str, hypothesis: str, overrides: dict | None = None,
                          ref: str | None = None) -> str:
        from org.experiments import MAX_HYPOTHESIS_CHARS, hypothesis_too_long, submission_source, submit
        overrides = overrides or {}
        owned = owned_by_program(overrides)  # the runner refuses it too; this answers before git is asked
        if owned:
            raise Refused(f"override {owned}")
        if not hypothesis.strip():
            raise ToolError("state the hypothesis: what you expect versus the baseline, and why")
        if len(hypothesis) > MAX_HYPOTHESIS_CHARS:
            raise ToolError(hypothesis_too_long(hypothesis))
        bad = [k for k, v in overrides.items() if not isinstance(v, (str, int, float, bool))]
        if bad:
            raise ToolError(f"override {bad[0]!r}: values are numbers, strings or booleans")
        if ref is None:
            dirty = self._git("status", "--porcelain")
            if dirty:
                raise ToolError(f"uncommitted changes ({dirty.splitlines()[0].strip()} ...): runs use "
                                "committed code; git_commit first")
        commit = self._git("rev-parse", "--verify", f"{ref or 'HEAD'}^{{commit}}")
        with self.charged("submission"), Ledger(self.ledger_path) as ledger:  # (its commit taken in and checked)
            try:
                source = submission_source(ledger, self.lab, self.program, arm, overrides, commit)
            except OrgError as e:
                raise ToolError(str(e)) from None
            submit(ledger, self.lab, self.program, "baseline", {}, who="program",
                   hypothesis="the program's baseline", source="declared")
            experiment = submit(ledger, self.lab, self.program, arm, overrides, who=self.agent,
                                hypothesis=hypothesis, ref=commit, source=source)
            runs = ledger.runs(self.program.name, experiment_id=experiment["id"])
        if experiment["stage"] == "refused":
            raise Refused(f"experiment {experiment['id']}: {experiment['reason']}")
        per_run = self.program.budget.per_run
        return (f"experiment {experiment['id']} ({arm}, commit {commit[:10]}, overrides "
                f"{json.dumps(overrides)}): {len(runs)} runs queued on seeds {self.program.budget.seeds} "
                f"at {per_run.kind} {per_run.value:g} each"
                + (f", against the frontier {experiment['versus']} (kept only if the referee says better "
                   "at the keep rule's level, on the held-out split too)" if experiment["versus"] else "")
                + f". Check with results(experiment="
                f"{experiment['id']}, wait_seconds=...).")

    def results(self, experiment: int | None = None, wait_seconds: float = 0) -> str:
        deadline = time.monotonic() + min(wait_seconds or 0, self.limits.wait_max)
        with Ledger(self.ledger_path) as ledger:
            # the wait polls one count; the status (every run, every verdict) is built once at its
            # end: built at each poll, 32 waits sent at once from a CLI's shell took a core of the
            # harness's, unmetered, while the baseline's runs trained
            ids = [e["id"] for e in shown_experiments(ledger.experiments(self.program.name), experiment)]
            if experiment is not None and experiment not in ids:  # (it answered with everything)
                raise ToolError(f"no experiment {experiment}; results with no experiment lists them all")
            while ledger.pending(self.program.name, ids) and time.monotonic() < deadline and not self.interrupted():
                time.sleep(self.limits.poll_seconds)
            return self._fit(figures_rounded(program_status(ledger, self.program, experiment)))

    def _fit(self, status: dict) -> str:
        """The status as JSON; with too many runs to show, each experiment's runs are counted
        instead of listed (results with experiment=N lists one), so the JSON stays whole."""
        text = json.dumps(status, indent=1)
        if len(text) <= self.limits.output_chars:
            return text
        for e in status["experiments"]:
            counts = {}
            for r in e["runs"]:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            e["runs"] = counts
        return json.dumps(status)

    # --- comms ---------------------------------------------------------------------------

    def send_message(self, to: str, text: str) -> str:
        known = self.teammates + [EVERYONE, HUMAN]
        if to not in known:
            raise ToolError(f"no one called {to!r}; send to one of: {', '.join(known)}")
        readers = self.teammates if to == EVERYONE else [to]
        try:
            for name in readers:  # all or none of "all"
                self.mail.check_room(self.agent, name)
            for name in readers:
                self.mail.send(self.agent, name, text)
        except OrgError as e:
            raise ToolError(str(e)) from None
        return f"sent to {to}"

    def read_inbox(self, wait_seconds: float = 0) -> ToolResult:
        deadline = time.monotonic() + min(wait_seconds or 0, self.limits.wait_max)
        messages = self.mail.inbox(self.agent)
        while not messages and time.monotonic() < deadline and not self.interrupted():
            time.sleep(self.limits.poll_seconds)
            messages = self.mail.inbox(self.agent)
        if not messages:
            return ToolResult("no new messages")
        messages, waiting = a_turns_mail(messages)
        return ToolResult(format_mail(messages, waiting), acks=messages)

    def write_standup(self, text: str) -> str:
        return f"standup written: {self.mail.write_standup(self.agent, text).name}"

    def post_to_board(self, text: str) -> str:
        self.mail.post(self.agent, text)
        return "posted to the board"

    def finish(self, summary: str) -> ToolResult:
        return ToolResult("finished", finished=summary)


def check_args(name: str, args) -> str | None:
    """Why these arguments do not fit the tool's schema, or None."""
    if not isinstance(args, dict):
        return f"arguments must be a JSON object, got {str(args)[:200]!r}"
    schema = next(t for t in TOOLS if t["name"] == name)["parameters"]
    props = schema["properties"]
    missing = [k for k in schema["required"] if k not in args]
    unknown = [k for k in args if k not in props]
    if missing or unknown:
        return (f"missing {missing} " if missing else "") + (f"unknown {unknown} " if unknown else "") + \
            f"(parameters: {', '.join(props)}; required: {', '.join(schema['required']) or 'none'})"
    for key, value in args.items():
        kind = props[key]["type"]
        if value is None and key not in schema["required"]:
            continue
        if not isinstance(value, JSON_TYPES[kind]) or (kind != "boolean" and isinstance(value, bool)):
            return f"{key} must be a JSON {kind}, got {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):  # (NaN: a command's timeout that never came)
            return f"{key} must be a finite number, got {value}"
        problem = unfit_text(key, value)
        if problem:
            return problem
    return None


NOT_EMPTY = ("text", "summary", "ref", "arm", "command", "message")
PATH_ERRORS = (errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.E2BIG, errno.EINVAL, errno.EMLINK, errno.ENXIO)


def unfit_text(key: str, value) -> str | None:
    """Why text in an argument cannot be taken, or None: a lone surrogate (JSON's "\ud800") is no UTF-8,
    which a teammate's inbox, a file or the ledger could not hold (a message sent so was lost, its reader's
    `org tool` a traceback); a NUL ends a path, a ref or a command where the system reads it."""
    if key in NOT_EMPTY and isinstance(value, str) and not value.strip():  # (an empty message was delivered)
        return f"{key} is empty" + (" (leave ref out to measure your HEAD)" if key == "ref" else "")
    texts = [value] if isinstance(value, str) else [t for kv in value.items() for t in kv] if isinstance(value, dict) else []
    for text in (t for t in texts if isinstance(t, str)):
        try:
            text.encode()
        except UnicodeEncodeError as e:
            return f"{key} is not UTF-8 text (a lone surrogate at character {e.start})"
        if "\0" in text and key in ("path", "ref", "command", "arm"):
            return f"{key} holds a NUL character"
    return None


def figures_rounded(status, digits: int = 5):
    """Every float to `digits` significant digits: its low-order ones are figures of a model worker
    that has seen the evaluation text, which it could spell out there (30 bits a run at full
    precision); what a verdict turns on is in the first few."""
    if isinstance(status, float):
        return float(f"{status:.{digits}g}")
    if isinstance(status, dict):
        return {k: figures_rounded(v, digits) for k, v in status.items()}
    if isinstance(status, list):
        return [figures_rounded(v, digits) for v in status]
    return status


def shown_experiments(experiments: list[dict], experiment_id: int | None) -> list[dict]:
    """All of them; or one, with the baseline and the frontier it is measured against."""
    if experiment_id is None:
        return experiments
    versus = {e["versus"] for e in experiments if e["id"] == experiment_id}
    return [e for e in experiments if e["id"] == experiment_id or e["arm"] in {"baseline", *versus}]


def program_status(ledger: Ledger, program: Program, experiment_id: int | None = None) -> dict:
    """What an agent may know: experiments, their runs, the verdicts, and the spend so far."""
    every = ledger.experiments(program.name)
    experiments = shown_experiments(every, experiment_id)
    out = []
    pending = 0
    for e in experiments:
        runs = ledger.runs(program.name, experiment_id=e["id"])
        pending += sum(r["status"] not in FINISHED for r in runs)
        decision = shown_decision(json.loads(e["decision"] or "null"))
        out.append({
            "experiment": e["id"], "arm": e["arm"], "who": e["who"], "stage": e["stage"],
            "commit": e["code_commit"][:10], "overrides": json.loads(e["overrides"]),
            "hypothesis": e["hypothesis"], **({"reason": e["reason"]} if e["reason"] else {}),
            **({"versus": e["versus"], "decision": decision} if e["versus"] else {}),
            # an invalid run's figure is no agent's: no verdict and no family correction count it, and an
            # org could explore over many invalid arms (params + 1 in the trainer's word) and submit the best
            "runs": [{"seed": shown_seed(r), "purpose": r["purpose"],
                      "status": r["status"],
                      "val_bpb": r["val_bpb"] if r["status"] != "invalid" else None,
                      **({"reason": r["reason"]} if r["reason"] else {})}
                     for r in runs],
        })
    waiting = waiting_for_budget(ledger, program)
    return {"program": program.name, "question": program.question,
            "claim": program.claim.model_dump(), "experiments": out, "pending_runs": pending,
            "running_runs": len(ledger.runs(program.name, status="running")),  # (of every experiment)
            **({"frontier": frontier_status(ledger, program, every)} if program.claim.kind == "improve" else {}),
            "verdicts": referee_verdicts(ledger, program),  # always live: a pure function of the runs
            "compute_seconds": {"spent": round(ledger.compute_seconds(program.name), 1),
                                "total": ledger.budget(program.name)["total_compute_seconds"],
                                # a new experiment starts only if what is left pays for its runs besides this
                                "held_for_fresh_seeds": round(held_for_checks(ledger, program)[0], 1),
                                # and, set, only within its agent's share (experiments.waiting_for_budget)
                                "each_agents_share": ledger.budget(program.name).get("agent_compute_seconds"),
                                # the experiments that wait so; stuck: nothing runs, so till `org budget` raises it
                                "waiting_for_budget": waiting, "stuck": stuck_for_budget(ledger, program, waiting)}}


def shown_decision(decision: dict | None) -> dict | None:
    """An improvement try's decision as agents read it: less its canaries' run ids (a running run
    knows its own), and with no Δ or p where the referee found it invalid, at its scale or at a rung,
    as `results` and `verdicts` show no figure of one. The ledger keeps them for the person's report."""
    if not decision:
        return decision
    unseen = lambda d: {k: None if k in ("delta", "p", "p_held_out") and d["verdict"].startswith("invalid") else v
                        for k, v in d.items() if k != "canaries"}
    return unseen({**decision, **({"rungs": [unseen(r) for r in decision["rungs"]]} if decision.get("rungs") else {})})


def frontier_status(ledger: Ledger, program: Program, experiments: list[dict]) -> dict:
    """An improvement program's frontier: what a try builds on (its commit, its overrides); the
    baseline at the base commit until anything was submitted."""
    front = frontier(experiments) or {"arm": "baseline", "id": None, "overrides": "{}",
                                      "code_commit": ledger.program(program.name)["base_commit"]}
    withdrawn = {f["arm"]: f["reason"] for f in frontiers(experiments, withdrawn=True) if f["stage"] == "withdrawn"}
    kept = front["id"] and origin(experiments, front)
    moved = kept and unreproduced(ledger, program, experiments, front)  # (under a seconds budget: it stands)
    return {"arm": front["arm"], "experiment": front["id"], "commit": front["code_commit"],
            "overrides": json.loads(front["overrides"]),
            "kept": [e["arm"] for e in lineage(experiments) if e["decision"]["outcome"] == "kept"],
            **({"withdrawn": withdrawn} if withdrawn else {}),  # (a try built on one of them is refused)
            **({"no_yardstick": f"{front['arm']} did not reproduce a run of {kept['arm']} ({moved}): no try is "
                                "kept against it"} if moved else {})}


def referee_verdicts(ledger: Ledger, program: Program) -> list[dict]:
    """The referee's verdict for every arm with runs, against the baseline, adjusted together
    (computed from the ledger's runs; the referee is a pure function of them)."""
    from org import referee
    runs = ledger.runs(program.name)
    if not any(r["arm"] == "baseline" and r["purpose"] != "tune" for r in runs):
        return []
    declares = {v.name: frozenset(v.declares) for v in program.variants}
    try:  # the same pipeline as the report: declared changes, Holm, held-out confirmation
        judged, unreadable = referee.verdicts(runs, program.claim.rule, program.claim.margin, declares,
                                              fresh_seeds=None if program.claim.kind == "improve" else program.fresh_seeds)
    except Exception as e:  # the referee must never take an agent down with it
        return [{"error": f"referee failed: {type(e).__name__}: {e}"}]
    return [{"arm": arm, "versus": "baseline", "verdict": c.final_verdict, "n": c.n,
             **({"delta": _round(c.mean), "lower": _round(c.lower), "upper": _round(c.upper),
                 "baseline_mean": _round(c.baseline_mean), "variant_mean": _round(c.variant_mean)}
                if not c.final_verdict.startswith("invalid") else {}),  # (as program_status: no figure of one)
             **({"warnings": [f.text for f in c.warnings]} if c.warnings else {})}
            for arm, c in judged.items()] + [{"arm": arm, "versus": "baseline", "verdict": None, "reason": why}
                                             for arm, why in unreadable.items()]


def _round(x):
    return None if x is None else round(x, 5)
