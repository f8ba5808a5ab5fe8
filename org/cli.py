"""
`org`: the research org's command line.

    org run programs/softcap.yaml                  # the declared baseline and variants, no agents
    org submit softcap --arm lr2x --set matrix_lr=0.04 --hypothesis "..."   # enqueue one experiment
    org runs softcap [--status completed] [--arm baseline] [--json]       # what the ledger holds

PROGRAM is a program file, the name of one in programs/, or a started program's name (its ledger
holds it). Bad input (malformed YAML, unknown fields, a config the trainer rejects, a missing git
ref, no git checkout, uncommitted changes to a protected path) is one line on stderr and exit
status 2, before anything is created.

To add a subcommand: write a cmd_<name>(args) -> int below and register its parser in
build_parser(); a command with a module of its own (launch, status, takeover, stop) registers its
parsers with an add_*_command(sub) that build_parser() calls.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sqlite3
import sys
from dataclasses import asdict
from pathlib import Path

import yaml
from pydantic import ValidationError

from org import OneLineParser, OrgError, shown
from org.compare_orgs import add_compare_command
from org.ablate import leave_one_out
from org.experiments import check_arm_name, plan, submission_source, submit, submit_declared
from org.lab import scrub_git_env
from org.ledger import LEFT_AS_IT_IS, Ledger, corrupt
from org.ledger_schema import RUN_STATUSES
from org.program import BOUND_BUDGET, MAX_SEED, Budget, Program, owned_by_program, quoted, unfit_override
from org.program_checks import trainer_rejects
from org.runner import Runner
from org.agents.commands import add_agent_commands
from org.launch import add_launch_commands
from org.serve import add_serve_command
from org.status import add_status_command
from org.stop import add_stop_command
from org.takeover import add_takeover_commands
from org.workspace import check_runs_can_go, find_ledger, hand_edit, on_ray, preflight, start, started_spec


def main(argv: list[str] | None = None) -> int:
    scrub_git_env()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "changes", None), list) and all("=" in a and a[0] != "-" for a in extra):
        args.changes += extra  # (`org budget P --who ada F=V`: argparse takes no positional after an option)
    elif extra and isinstance(getattr(args, "rest", None), list) and all(a[:1] != "-" for a in extra):
        args.rest += extra  # (`org mail send --as chief junior-1 hi`, the same)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    Ledger.opened.clear()  # (the ledgers this command opens)
    try:
        check_text(args, parser)
        return args.func(args)
    except OrgError as e:
        print(f"org: {shown(e)}", file=sys.stderr)  # (a name given may hold escapes: echoed, they reach the terminal)
        return 2
    except sqlite3.DatabaseError as e:  # damage found past opening (Ledger says which file when it can)
        print(f"org: {corrupt('a ledger', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("org: interrupted; `org run` again resumes", file=sys.stderr)
        return 130
    except OSError as e:  # a name past the system's: Path.is_file raises it (Python 3.11), where a program is looked up
        if e.errno != errno.ENAMETOOLONG:
            raise
        print(f"org: {shown(str(e.filename))[:100]}...: a name too long for a file's (a program's is 64 characters "
              "at most)", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # what reading a ledger edited by hand raises
        damage = next(filter(None, map(hand_edit, list(Ledger.opened))), None)
        if not damage:
            raise  # our bug: its traceback
        said = (str(e).strip().splitlines() or [""])[0][:120]
        print(f"org: {damage} (it failed as {type(e).__name__}: {shown(said)})", file=sys.stderr)
        return 2


def person() -> str:
    """Who a person at this shell is, for the logs: $USER, where it is a printable name (else `human`)."""
    user = os.environ.get("USER") or ""
    return user if user.strip() and user.isprintable() and len(user) <= 100 else "human"


def check_text(args, parser):
    """A shell passes bytes; those that are not UTF-8 reach Python as surrogates, which no
    ledger, file or branch name can hold: one line naming the argument, before anything is done."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            try:
                text.encode() if isinstance(text, str) else None
            except UnicodeEncodeError:
                raise OrgError(f"{flags(parser, args.command).get(name, name)} "
                               f"{text.encode(errors='replace').decode()!r}: not UTF-8 text") from None
    who = getattr(args, "who", None)  # (logged and shown: a terminal's escape codes went out raw, an empty one was nobody)
    if isinstance(who, str) and (not who.strip() or not who.isprintable() or len(who) > 100):
        raise OrgError(f"--who {shown(repr(who[:100]))}: expected a printable name of 1 to 100 characters")


def flags(parser, command: str) -> dict[str, str]:
    """{dest: its longest option string, or a positional's name} of `command`'s arguments."""
    found = {}
    for action in parser._actions:  # argparse names its actions only privately
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            for argument in action.choices[command]._actions:
                found[argument.dest] = max(argument.option_strings, key=len, default=argument.metavar or argument.dest)
    return found


EXAMPLES = """examples:
  org launch programs/softcap.yaml --wait   # an org: agents in a tmux grid, the runner, a status pane
  org status softcap                        # agents, runs, spend and verdicts
  org attach softcap                        # watch the grid (org takeover NAME to step into a pane)
  org say junior-1 try depth 3              # a message from you, read at the agent's next step
  org stop softcap                          # agents and runner stop; branches and ledger stay
  org run programs/softcap.yaml             # no agents: the declared arms on every seed
  org submit softcap --arm wider --set depth=3 --hypothesis "more width helps"
  org report softcap                        # reports/softcap/README.md and its plots
  org extend softcap --seeds 5,6,7          # more seeds for every arm (logged), without renaming
  org compare improve improve-claude        # one table: each org's progress on one question (two programs)
  org ablate improve                        # the frontier without each kept change (leave-one-out)
  org clean softcap                         # a stopped program's worktrees and agent branches go

A program file's fields: programs/softcap.yaml (annotated) and README.md, "Program files".
Commands the org runs itself (not listed above): agent, tool, results, agent-hook, serve."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="org", description="nanolab's research org", epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND",
                                title="commands")
    add_launch_commands(sub)     # org/launch.py
    add_status_command(sub)      # org/status.py
    add_takeover_commands(sub)   # attach, takeover, release, say: org/takeover.py
    add_stop_command(sub)        # stop, clean: org/stop.py

    p = sub.add_parser("run", help="run a program's declared baseline and variants (no agents)")
    p.add_argument("program", help="programs/<name>.yaml or <name>")
    p.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: its Jobs API, e.g. http://HEAD:8265 "
                   "(as runner: {backend: ray, address: ...} in the program)")
    p.add_argument("--no-sandbox", action="store_true", help="run every trainer and model worker as a plain "
                   "process, an experiment's own code included (only code you trust: where no box can be made, "
                   "`org run` runs the program's own code unboxed but not an agent's)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="enqueue one experiment; `org run` executes the queue")
    p.add_argument("program")
    p.add_argument("--arm", required=True, help="a name for the idea, e.g. no-softcap")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override on top of the baseline's, repeatable")
    p.add_argument("--ref", help="a git ref with the code change to test (default: the program's base)")
    p.add_argument("--hypothesis", help="what you expect and why")
    p.add_argument("--who", default="human", help="who is asking (an agent's name)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("runs", help="list the ledger's runs")
    p.add_argument("program")
    p.add_argument("--status", choices=RUN_STATUSES)
    p.add_argument("--arm")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("budget", help="show a started program's budget, or change its totals (logged)")
    p.add_argument("program")
    p.add_argument("changes", nargs="*", metavar="FIELD=VALUE",
                   help=f"set one of {', '.join(BOUND_BUDGET)} (then edit the program file to match)")
    p.add_argument("--who", default=person(), help="who changes it (logged)")
    p.set_defaults(func=cmd_budget)

    p = sub.add_parser("extend", help="add seeds to every arm of a started program (logged)")
    p.add_argument("program")
    p.add_argument("--seeds", required=True, help="the seeds to add, e.g. 5,6,7")
    p.add_argument("--who", default=person(), help="who adds them (logged)")
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser("ablate", help="an improvement program's leave-one-out pass: the frontier without "
                       "each kept change, on every seed")
    p.add_argument("program")
    p.add_argument("--who", default=person(), help="who asks for it (recorded)")
    p.set_defaults(func=cmd_ablate)

    add_agent_commands(sub)  # agent, tool, results, mail, agent-hook: org/agents/commands.py
    p = sub.add_parser("report", help="write reports/<program>/ (README.md + plots) from the ledger")
    p.add_argument("program")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="text: a summary in the terminal; json: the verdicts and numbers")
    p.set_defaults(func=cmd_report)

    add_compare_command(sub)     # org-vs-org on one question: org/compare_orgs.py
    add_serve_command(sub)       # the runner's pane: org/serve.py
    return parser


# ----------------------------------------------------------------------------------------
# commands


def cmd_run(args) -> int:
    program, lab, path = preflight(args.program)
    if args.ray is not None:
        program = on_ray(program, args.ray)
    check_runs_can_go(program)  # (its cluster, or its GPUs: before anything is created)
    ledger = start(program, lab, path)
    with ledger:
        submit_declared(ledger, lab, program)
        ledger_path = ledger.path
    counts = Runner(lab, program, ledger_path, sandboxed=False if args.no_sandbox else None).drain()
    print(f"{program.name}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    print(f"see `org runs {program.name}`; ledger {ledger_path}")
    return 0


def cmd_submit(args) -> int:
    overrides = parse_sets(args.set)
    check_arm_name(args.arm)
    if args.ref is not None and not args.ref.strip():
        raise OrgError("--ref: empty: name a branch, tag or commit")
    program, lab, path = preflight(args.program, ref=args.ref)
    if not overrides and args.ref is None:  # (a program file refuses such a variant too)
        raise OrgError(f"submit: {args.arm} changes nothing: give --set KEY=VALUE or --ref REF (or both)")
    if args.ref and lab.resolve(args.ref) == lab.head() and lab.repo.is_dirty(untracked_files=False):
        raise OrgError(f"--ref {args.ref} is your checkout's HEAD, which has uncommitted changes: runs use "
                       "committed code, so commit them first (or name another commit)")
    unfit = unfit_override(overrides)
    if unfit:  # (a typo: refused before anything is recorded, its arm's name still free)
        raise OrgError(f"--set {unfit}")
    # keys the program owns are refused (and recorded) by submit(); the trainer judges the rest
    ours = {k: v for k, v in overrides.items() if not owned_by_program({k: v})}
    problem = None if args.ref else trainer_rejects(program, ours)
    if problem:
        raise OrgError(f"--set: the trainer rejects it: {problem}")
    with start(program, lab, path) as ledger:
        base = ledger.program(program.name)["base_commit"]
        commit = lab.resolve(args.ref) if args.ref else base
        source = submission_source(ledger, lab, program, args.arm, overrides, commit)
        experiment = submit(ledger, lab, program, args.arm, overrides, who=args.who,
                            hypothesis=args.hypothesis, ref=args.ref, source=source)
        runs = ledger.runs(program.name, experiment_id=experiment["id"])
    if experiment["stage"] == "refused":
        print(f"experiment {experiment['id']} refused: {experiment['reason']}", file=sys.stderr)
        return 1
    print(f"experiment {experiment['id']} ({args.arm}, commit {experiment['code_commit'][:10]}): "
          f"{len(runs)} runs queued; `org run {program.name}` executes them")
    if not args.ref and lab.head() != base:  # say which code is measured: not the checkout's newer commits
        print(f"note: it measures the program's base commit {base[:10]}, not your HEAD {lab.head()[:10]}; "
              "--ref HEAD measures the code as committed now")
    return 0


def cmd_ablate(args) -> int:
    program, lab, path = preflight(args.program)
    if program.claim.kind != "improve":
        raise OrgError(f"ablate: {program.name} is not an improvement program (claim.kind improve): it keeps nothing")
    if started_spec(lab.root, program.name) is None:  # (nothing kept yet: and an ablation would start it)
        raise OrgError(f"ablate: {program.name} is not started: it has kept nothing (`org launch {program.name}` starts it)")
    with start(program, lab, path) as ledger:
        made = leave_one_out(ledger, lab, program, args.who)
        for experiment in made:
            plan(ledger, program, experiment)
        queued = {e["id"]: len(ledger.runs(program.name, experiment_id=e["id"], status="queued")) for e in made}
    if not made:
        print(f"{program.name}: nothing to ablate: no kept change, or each already has its leave-one-out")
        return 0
    for e in made:
        print(f"experiment {e['id']} ({e['arm']}): " + (f"refused: {e['reason']}" if e["stage"] == "refused"
                                                         else f"{queued[e['id']]} runs queued"))
    print(f"`org run {program.name}` (or the org's runner) runs them; `org report {program.name}` shows the result")
    return 0


def cmd_runs(args) -> int:
    lab, name, path = find_ledger(args.program)
    with Ledger(path) as ledger:
        rows = ledger.runs(name, status=args.status, arm=args.arm)
        arms = sorted({"baseline"} | {e["arm"] for e in ledger.experiments(name)})
    if args.arm is not None and args.arm not in arms:  # an empty table would read as "no runs yet"
        raise OrgError(f"--arm {args.arm}: no such arm in {name} (its arms: {', '.join(arms) or 'none yet'})")
    if args.json:
        for row in rows:
            for key in ("overrides", "budget", "command"):
                row[key] = json.loads(row[key]) if row[key] else None
            for key in ("result", "measurement"):  # records (trainer/record.py)
                row[key] = row[key] and asdict(row[key])
        print(json.dumps(rows, indent=2))
    else:
        print_runs(name, rows)
    return 0


def cmd_budget(args) -> int:
    lab, name, path = find_ledger(args.program)
    with Ledger(path) as ledger:
        changes = parse_budget_changes(args.changes, ledger.budget(name), path)
        for field in [f for f, value in changes.items() if ledger.budget(name).get(f) == value]:
            print(f"{name}: budget.{field} is {number(changes.pop(field))} already: nothing changed, nothing logged")
        if changes:
            for row in ledger.change_budget(name, changes, args.who):
                print(f"{name}: budget.{row['field']}: {number(row['old'])} -> {row['new']:g} (by {row['who']}, logged)")
            print(f"edit {file_to_edit(args.program, lab, name)} to match: a program whose file disagrees with "
                  "its budget does not start")
        budget, log = ledger.budget(name), ledger.budget_changes(name)
    if not args.changes:
        print(f"{name}: " + ", ".join(f"{f} {number(budget.get(f))}" for f in BOUND_BUDGET))
        for row in log:
            change = f"+ {row['new']:g}" if row["old"] is None else f"{row['old']:g} -> {row['new']:g}"
            print(f"  {row['created_at']} {row['who']}: {row['field']} {change}")
    return 0


def cmd_extend(args) -> int:
    """More seeds for a finished (or running) comparison, without renaming the program: every
    measured arm gets runs on them, queued now; a person's act, logged beside `org budget`'s."""
    lab, name, path = find_ledger(args.program)
    with Ledger(path) as ledger:
        fresh = [r["seed"] for r in ledger.runs(name, purpose="replicate")]  # (a seed once: its runs pair)
        seeds = parse_seeds(args.seeds, ledger.budget(name)["seeds"] + sorted(set(fresh)))
        ledger.add_seeds(name, seeds, args.who)
        program = Program.model_validate(json.loads(ledger.program(name)["spec"]))
        for experiment in ledger.experiments(name, stage="measuring"):
            plan(ledger, program, experiment)
        queued = len(ledger.runs(name, status="queued"))
    print(f"{name}: seeds + {', '.join(map(str, seeds))} for every arm (by {args.who}, logged); {queued} runs queued")
    print(f"edit {file_to_edit(args.program, lab, name)} to match (budget.seeds: {program.budget.seeds}), then `org run {name}` "
          f"or `org launch` measures them")
    return 0


def file_to_edit(arg: str, lab, name: str) -> str:
    """The program file a change to a started program should be copied into: the file named, else the
    lab's programs/<name>.yaml; a program started from a file elsewhere, or whose file is gone, has none at hand."""
    found = next((f for f in (Path(arg), lab.root / "programs" / f"{name}.yaml") if f.suffix in (".yaml", ".yml") and f.is_file()), None)
    return str(found) if found else f"the file {name} was started from (none is in {lab.root / 'programs'})"


def parse_seeds(text: str, have: list[int]) -> list[int]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not all(re.fullmatch(r"[0-9]+", s) for s in parts):  # int() also takes '13_000' and other scripts' digits
        raise OrgError(f"--seeds {shown(text)}: expected seeds as integers, e.g. 5,6,7")
    seeds = [int(s) for s in parts]
    known = sorted(set(seeds) & set(have))
    if not seeds or not 0 <= min(seeds) <= max(seeds) <= MAX_SEED or len(set(seeds)) != len(seeds) or known:
        why = f"seed {known[0]} is already used" if known else "expected new seeds, each once, from 0 to 2**63-1"
        raise OrgError(f"--seeds {text}: {why} (it has {have})")
    return seeds


def number(value) -> str:
    return "unset" if value is None else f"{value:g}"


def parse_budget_changes(pairs: list[str], budget: dict, ledger_path: Path) -> dict:
    """['total_compute_seconds=1200'] -> {'total_compute_seconds': 1200.0}, checked as the program
    file's budget is checked (with the budget as recorded in the ledger at ledger_path)."""
    changes = {}
    for pair in pairs:
        field, _, value = pair.partition("=")
        if field.removeprefix("budget.") not in BOUND_BUDGET:
            raise OrgError(f"{quoted(pair)}: {quoted(field, 80)} cannot change in a started program; what can: "
                           f"{', '.join(BOUND_BUDGET)} (and `org extend` adds seeds)")
        if field.removeprefix("budget.") in changes:
            raise OrgError(f"{quoted(pair)}: {field.removeprefix('budget.')} is given twice")
        try:
            changes[field.removeprefix("budget.")] = float(value) + 0.0  # (-0 + 0.0 is 0: "is -0 already" was said)
        except ValueError:
            raise OrgError(f"{quoted(pair)}: expected a number after '='") from None
    try:
        Budget.model_validate({**budget, **changes})
    except ValidationError as e:
        problem = e.errors()[0]
        said = problem["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
        if not problem["loc"]:  # (the budget as a whole: a seconds budget past the run's timeout)
            raise OrgError(f"budget: {said}") from None
        if problem["loc"][0] not in changes:  # (not the person's change: the ledger's own record)
            raise OrgError(f"{ledger_path}: budget.{problem['loc'][0]} as recorded: {said}, got {quoted(problem['input'])} "
                           f"(edited by hand?); {LEFT_AS_IT_IS}") from None
        raise OrgError(f"budget.{problem['loc'][0]}: {said}, got {quoted(problem['input'])}") from None
    return changes


def cmd_report(args) -> int:
    from org.report import run_report  # matplotlib loads only for reports
    lab, name, path = find_ledger(args.program)
    return run_report(path, name, lab.root / "reports" / name, args.format)


def print_runs(name: str, rows: list[dict]):
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    table = Table(title=f"{name}: {len(rows)} runs")
    for col in ("id", "arm", "purpose", "seed", "status", "val_bpb", "steps", "flops", "train s",
                "wall s", "reason"):
        table.add_column(col, justify="right" if col not in ("arm", "purpose", "status", "reason") else "left")
    for r in rows:
        table.add_row(str(r["id"]), r["arm"], r["purpose"], str(r["seed"]), r["status"],
                      _fmt(r["val_bpb"], ".4f"), _fmt(r["steps"], "d"), _fmt(r["flops"], ".3g"),
                      _fmt(r["train_seconds"], ".1f"), _fmt(r["wall_seconds"], ".1f"),
                      Text(shown(r["reason"] or "")[:60]))  # a run's words: no markup, no escapes
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def parse_sets(pairs: list[str]) -> dict:
    """['softcap=0', 'pos=learned'] -> {'softcap': 0, 'pos': 'learned'} (YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OrgError(f"--set expects KEY=VALUE, got {quoted(pair)}")
        if key.strip() in out:  # (the last would win, silently: a program file refuses a key twice too)
            raise OrgError(f"--set {quoted(pair)}: {key.strip()} is set twice")
        try:
            parsed = yaml.safe_load(value)
        except (yaml.YAMLError, ValueError, RecursionError):  # (ValueError: a number of 5,000 digits)
            parsed = value
        out[key.strip()] = parsed if isinstance(parsed, (str, int, float, bool)) else value
    return out


if __name__ == "__main__":
    sys.exit(main())
