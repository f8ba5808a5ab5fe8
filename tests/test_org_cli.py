"""Bad input to `org`: one line naming the cause, a non-zero exit, and nothing created."""
import contextlib
import json
import shlex
import sqlite3
from pathlib import Path

import git
import pytest
import yaml

from org import OrgError
from org.cli import main
from org.ledger import Ledger
from org.unseen import known_lab
from test_org_runner import hold_the_write_lock, ledger_of, make_project, tiny_program  # noqa: F401  (make_project is a fixture)


def nothing_created(root):
    repo = git.Repo(root)
    try:
        return not (root / ".lab").exists() and [h.name for h in repo.heads] == ["main"]
    finally:
        repo.close()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("org: ") and err.count("\n") == 1, err
    return err


def rewrite(root, **changes):
    (root / "programs" / "tiny.yaml").write_text(yaml.safe_dump(tiny_program(**changes), sort_keys=False))


BAD_PROGRAMS = {
    "malformed YAML": ("name: tiny\nquestion: [unclosed\n", "malformed YAML at line"),
    "unknown field": (yaml.safe_dump({**tiny_program(), "budgett": {}}), "budgett: unknown field; expected one of"),
    "preset the trainer rejects": (
        yaml.safe_dump(tiny_program(baseline={"preset": "llama", "overrides": {}})),
        "baseline.preset: the trainer rejects it: unknown preset 'llama'"),
    "override the trainer rejects": (
        yaml.safe_dump(tiny_program(variants=[{"name": "typo", "overrides": {"softcapp": 0}}])),
        "variants[0].overrides: the trainer rejects it: unknown config key 'softcapp'"),
    "git ref that does not exist": (
        yaml.safe_dump(tiny_program(variants=[{"name": "code", "ref": "agent/nobody"}])),
        "variants[0].ref: git ref 'agent/nobody' does not exist"),
    "git ref to a file": (
        yaml.safe_dump(tiny_program(variants=[{"name": "code", "ref": "HEAD:programs/tiny.yaml"}])),
        "variants[0].ref: git ref 'HEAD:programs/tiny.yaml' names a blob, not a commit"),  # (it "did not exist")
    "a glob over text": (yaml.safe_dump(tiny_program(data={"source": "*", "val_tokens": 512})),
                         "/proj/* matches no .bin file: a glob names llm.c shards"),
    "data that does not exist": (
        yaml.safe_dump(tiny_program(data={"source": "corpus/missing", "val_tokens": 512})),
        "data.source: 'corpus/missing' matches no file or folder"),
    "not UTF-8": (b"name: tiny\n# \xff\n", "not UTF-8 text (byte 0xff at offset 13)"),
    "a key given twice": ("name: tiny\nname: other\n", "duplicate key 'name'"),
    "a key that is a list": ("? [a, b]\n: 1\n", "a key that is a list"),
    "a seed no ledger holds": (yaml.safe_dump(tiny_program(budget={**tiny_program()["budget"], "seeds": [10**30]})),
                               "budget.seeds: expected seeds from 0 to 2**63-1"),
    "a negative tuning seed": (yaml.safe_dump(tiny_program(tune_seeds=[-1])), "tune_seeds: expected seeds from 0"),
    "a protected path outside the repository": (yaml.safe_dump(tiny_program(protected=["/etc/passwd"])),
                                                "protected: '/etc/passwd': expected a path inside the repository"),
    "a protected path with a NUL": (yaml.safe_dump(tiny_program(protected=["trainer/\0eval.py"])),  # (a traceback)
                                    "protected: 'trainer/\\x00eval.py': expected a path inside the repository"),
    "a protected pathspec's magic": (yaml.safe_dump(tiny_program(protected=[":(bogus)x"])),  # (git's traceback)
                                     "protected: ':(bogus)x': expected a path inside the repository"),
    # (each started, and then every run was an `error`; a mended file was refused as the data changed)
    "a val split of less than a window": (yaml.safe_dump(tiny_program(data={"val_tokens": 1})),
                                          "data.val_tokens 1 holds no window of train.seq_len 64: give at least 64"),
    "an empty data folder": (yaml.safe_dump(tiny_program(data={"source": "empty-corpus", "val_tokens": 64})),
                             "data.source: 'empty-corpus' holds no text files"),
    "fresh seeds past a thousand": (yaml.safe_dump(tiny_program(claim={"kind": "superiority", "fresh_seeds": 10**6})),
                                    "claim.fresh_seeds: expected less than or equal to 1000"),
    # (YAML's true, yes and on are booleans, which were 1 in a number field: windows of one token)
    "a boolean sequence length": (yaml.safe_dump(tiny_program(train={**tiny_program()["train"], "seq_len": True})),
                                  "train.seq_len: expected a number, got True"),
    "a boolean margin": (yaml.safe_dump(tiny_program(claim={"kind": "superiority", "margin": True})),
                         "claim.margin: expected a number, got True"),
    "a boolean slot count": (yaml.safe_dump(tiny_program(runner={"slots": True})), "runner.slots: expected a number, got True"),
    "a boolean in a list of numbers": (
        yaml.safe_dump(tiny_program(claim={"kind": "improve"}, variants=[], compute_multiplier={"budgets": [True, 2]},
                                    candidates=[{"name": "c1", "overrides": {"softcap": 0}}])),
        "compute_multiplier.budgets: expected a number, got True"),
    "a model past the trainer's bound": (  # (a traceback, under a FLOP budget)
        yaml.safe_dump(tiny_program(budget={**tiny_program()["budget"], "per_run": {"flops": 1e9}},
                                    train={**tiny_program()["train"], "seq_len": 10**12}, data={"val_tokens": 10**12})),
        "train.seq_len 1000000000000 and data.tokenizer bytes: the trainer rejects the baseline"),
    "a tokenizer the trainer does not know": (
        yaml.safe_dump(tiny_program(data={"tokenizer": "bogus", "val_tokens": 512})),
        "data.tokenizer: unknown tokenizer 'bogus'"),
    # (session 44's hunt) every run of the arm failed: its flag said `softcap=true`, which no float reads
    "a boolean for a number the model takes": (
        yaml.safe_dump(tiny_program(variants=[{"name": "capped", "overrides": {"softcap": True}}])),
        "variants[0].overrides: the trainer rejects it: softcap expects float, got True"),
    "a seconds budget the run's timeout kills": (  # (every run was killed before its budget was spent)
        yaml.safe_dump(tiny_program(budget={**tiny_program()["budget"], "per_run": {"seconds": 60}})),
        "budget: per_run.seconds: 60 s of training is not less than run_timeout_seconds 60"),
    "a compute multiple the run's timeout kills": (
        yaml.safe_dump(tiny_program(claim={"kind": "improve"}, variants=[], compute_multiplier={"budgets": [0.5, 2], "seeds": 2},
                                    budget={**tiny_program()["budget"], "per_run": {"seconds": 40}},
                                    candidates=[{"name": "c1", "overrides": {"softcap": 0}}])),
        "compute_multiplier.budgets[1] (2x budget.per_run.seconds): 80 s of training is not less than"),
    "a data source that is a symbolic link to itself": (  # (a traceback: RuntimeError, Symlink loop)
        yaml.safe_dump(tiny_program(data={"source": "links/loop", "val_tokens": 512})),
        "data.source: 'links/loop' leads through a symbolic link to no file (a loop, or a target gone)"),
    "a patch's name with a terminal's escape codes": (  # (printed raw: it set the terminal's title)
        yaml.safe_dump(tiny_program(claim={"kind": "improve"}, variants=[],
                                    candidates=[{"name": "c1", "patch": "x\x1b]0;PWNED\x07"}])),
        "no file 'x\\x1b]0;PWNED\\x07' in the lab"),
    # (a traceback from `org launch`: float infinity to a cgroup's bytes)
    "a memory cap past any machine's": (yaml.safe_dump(tiny_program(runner={"memory_gb": 1e300})),
                                        "runner.memory_gb: expected less than or equal to 1048576"),
    # (every point listed and checked whole: 6 keys of 38 values ate the machine's memory, with no word)
    "a tune grid of more points than it may hold": (
        yaml.safe_dump(tiny_program(tune={"matrix_lr": [0.01 + i / 1e4 for i in range(40)], "softcap": list(range(1, 31))})),
        "tune: 1200 points: a grid holds at most 1000"),
    "a candidate's override the trainer rejects": (
        yaml.safe_dump(tiny_program(claim={"kind": "improve"}, variants=[],
                                    candidates=[{"name": "c1", "overrides": {"bogus": 1}}])),
        "candidates[0].overrides: the trainer rejects it: unknown config key 'bogus'"),
}


@pytest.mark.parametrize("case", BAD_PROGRAMS)
def test_bad_program_files(case, make_project, capsys):
    text, expected = BAD_PROGRAMS[case]
    root = make_project(tiny_program())
    (root / "empty-corpus").mkdir()
    (root / "links").mkdir()
    (root / "links" / "loop").symlink_to("loop")
    path = root / "programs" / "bad.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    assert main(["run", "programs/bad.yaml"]) == 2
    err = one_line_error(capsys)
    assert expected in err and ("bad.yaml" in err or case == "preset the trainer rejects")
    assert nothing_created(root)


def test_outside_a_git_checkout(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_program()))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "tiny.yaml"]) == 2
    assert "not inside a git checkout" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == [tmp_path / "tiny.yaml"]


def test_a_dirty_protected_path(make_project, capsys):
    root = make_project(tiny_program())
    with open(root / "trainer" / "eval.py", "a") as f:
        f.write("# an uncommitted tweak\n")
    assert main(["run", "tiny"]) == 2
    assert "protected path trainer/eval.py has uncommitted changes" in one_line_error(capsys)
    assert nothing_created(root)
    # `protected: []` protects nothing (it made every uncommitted file, every change, a protected one's)
    (root / "programs" / "open.yaml").write_text(yaml.safe_dump(tiny_program(name="open", protected=[])))
    assert main(["submit", "programs/open.yaml", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0


def test_bad_submissions(make_project, capsys):
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "x", "--ref", "no-such-branch"]) == 2
    assert "git ref 'no-such-branch' does not exist" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x", "--set", "softcapp=0"]) == 2
    assert "--set: the trainer rejects it: unknown config key 'softcapp'" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x", "--set", "softcap"]) == 2
    assert "--set expects KEY=VALUE, got 'softcap'" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x", "--set", "softcap=1", "--set", "softcap=2"]) == 2  # (the last won)
    assert "--set 'softcap=2': softcap is set twice" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x", "--set", "softcap=" + "9" * 5000]) == 2  # (a traceback: 4300 digits)
    assert "--set: the trainer rejects it:" in one_line_error(capsys)
    assert nothing_created(root)
    assert main(["submit", "missing", "--arm", "x"]) == 2
    assert "no program file 'missing'" in one_line_error(capsys)
    assert main(["runs", "tiny"]) == 2
    assert "no ledger for program 'tiny'" in one_line_error(capsys)
    # the agents' tool's rule, for people too ("baseline\n" passed `$`, and showed as a second baseline row)
    for arm in ("baseline", "Bad Name", "../x", "x.y", "baseline\n", "no-softcap\n"):
        assert main(["submit", "tiny", "--arm", arm]) == 2
        assert f"arm {arm!r}: use a new lowercase name" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x"]) == 2  # (it queued the baseline again under a new name)
    assert "submit: x changes nothing: give --set KEY=VALUE or --ref REF (or both)" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x", "--ref", ""]) == 2  # (read as no ref)
    assert "--ref: empty" in one_line_error(capsys)
    for who in ("", "\x1b[31mred", "x" * 101):  # (logged, and shown raw: a terminal's escape codes)
        assert main(["submit", "tiny", "--arm", "x", "--set", "softcap=1", "--who", who]) == 2
        assert "expected a printable name of 1 to 100 characters" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x" * 300]) == 2  # (git's ref of a merged try: "File name too long")
    assert f"arm {'x' * 60!r}... (300 characters): use a new lowercase name" in one_line_error(capsys)
    # a typo no trainer flag can carry: refused, not recorded as a refused experiment under the arm's name
    for bad in ("softcap=.nan", "softcap=1.0e+400", "soft cap=1", "n_layer=99999999999999999999"):
        assert main(["submit", "tiny", "--arm", "x", "--set", bad]) == 2
        assert "a key is a name (letters, digits, _ and .), a value a finite number" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x", "--set", "softcap=on"]) == 2  # (queued; each run failed on `softcap=true`)
    assert "--set: the trainer rejects it: softcap expects float, got True" in one_line_error(capsys)
    for command in (["status"], ["submit", "--arm", "x"], ["runs"], ["report"], ["stop"]):  # (Path.is_file's traceback)
        assert main([command[0], "a" * 300, *command[1:]]) == 2
        assert "a name too long for a file's (a program's is 64 characters at most)" in one_line_error(capsys)
    assert nothing_created(root)


def test_a_list_of_labs_that_is_a_file_is_one_line(monkeypatch, tmp_path, capsys):
    """NANOLAB_LABS (or XDG_CACHE_HOME above the list) naming a file was a traceback from every
    command that starts a program, after its branch was made (a lab under /tmp, as the tests',
    is on no list: every box has a /tmp of its own)."""
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("NANOLAB_LABS", str(tmp_path / "a-file"))
    with pytest.raises(OrgError, match=f"the list of labs {tmp_path / 'a-file'} cannot be written \\(File exists\\): "
                                       "NANOLAB_LABS or XDG_CACHE_HOME names something that is not a folder"):
        known_lab(Path("/srv/a-lab-outside-tmp"))
    assert (tmp_path / "a-file").read_text() == "x"


def test_a_change_already_submitted_is_not_measured_again_under_a_new_name(make_project, capsys):
    """The attack: one change, submitted under ten names. Each copy drew fresh seeds of its own and
    was one more test of one idea at the program's alpha (`no regression` is not adjusted for
    how many arms there are): about 40 % odds that one copy's verdict held by chance. The same
    code tree with the same overrides is the experiment already on record."""
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    capsys.readouterr()
    assert main(["submit", "tiny", "--arm", "lr-again", "--set", "matrix_lr=0.03"]) == 2
    assert ("experiment 1 (lr) already is this change (the same code and overrides): its runs and verdict stand"
            in one_line_error(capsys))
    repo = git.Repo(root)
    repo.git.checkout("-qb", "elsewhere")
    repo.git.commit("-q", "--allow-empty", "-m", "another commit, the same tree")
    assert main(["submit", "tiny", "--arm", "lr-elsewhere", "--ref", "elsewhere", "--set", "matrix_lr=0.03"]) == 2
    assert "experiment 1 (lr) already is this change" in one_line_error(capsys)
    for spelled in ("0.030", "3e-2", "0.03000"):  # one value, spelled another way: one run (the same flag read)
        assert main(["submit", "tiny", "--arm", f"lr-{len(spelled)}{spelled[-1]}", "--set", f"matrix_lr={spelled}"]) == 2
        assert "experiment 1 (lr) already is this change" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "lr-4", "--set", "matrix_lr=0.04"]) == 0  # another value: another idea
    assert main(["submit", "tiny", "--arm", "lr-4-again", "--set", "matrix_lr=0.04", "--set", "softcap=15"]) == 2
    assert "experiment 2 (lr-4) already is this change" in one_line_error(capsys)  # (softcap 15: the preset's own)
    with ledger_of(root) as ledger:
        assert [e["arm"] for e in ledger.experiments("tiny")] == ["lr", "lr-4"]


def test_a_code_change_copied_with_a_comment_is_the_change_already_submitted(make_project, capsys):
    """The same attack on a code change: its copy with a comment, a docstring and blank lines
    added was a new tree, so a new idea with fresh seeds of its own. The same syntax tree is the
    same change; a change of one constant is another."""
    root = make_project(tiny_program())
    repo, model = git.Repo(root), root / "trainer" / "model.py"
    text = model.read_text()
    helper = "\n\ndef _scale(x):\n    return x * 1.5\n"
    copies = {"code-a": helper, "code-b": helper.replace("    return", '    """A scale."""\n\n    # why\n    return'),
              "code-c": helper.replace("1.5", "2.5")}
    for branch, added in copies.items():
        repo.git.checkout("-qB", branch, "master" if "master" in repo.heads else "main")
        model.write_text(text + added)
        repo.git.commit("-qam", branch)
    assert main(["submit", "tiny", "--arm", "scale", "--ref", "code-a"]) == 0
    capsys.readouterr()
    assert main(["submit", "tiny", "--arm", "scale-commented", "--ref", "code-b"]) == 2
    assert "experiment 1 (scale) already is this change (the same code and overrides)" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "scale-2", "--ref", "code-c"]) == 0
    with ledger_of(root) as ledger:
        assert [e["arm"] for e in ledger.experiments("tiny")] == ["scale", "scale-2"]


def test_a_submission_says_which_commit_it_measures_and_never_reuses_a_name(make_project, capsys):
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    capsys.readouterr()
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.05"]) == 2   # a second idea, same name
    assert "arm 'lr' already exists (by human, experiment 1)" in one_line_error(capsys)
    assert main(["runs", "tiny", "--arm", "l"]) == 2     # not an empty table, as if no run had been queued
    assert "--arm l: no such arm in tiny (its arms: baseline, lr)" in one_line_error(capsys)
    assert main(["run", "tiny", "--ray", ""]) == 2       # not a local run
    assert "--ray: expected the Ray cluster's Jobs API address" in one_line_error(capsys)
    for _ in range(2):                                   # the declared arm, as declared: its runs are reused
        assert main(["submit", "tiny", "--arm", "no-softcap", "--set", "softcap=0"]) == 0
        assert "experiment 2 (no-softcap" in capsys.readouterr().out
    with ledger_of(root) as ledger:
        assert [e["arm"] for e in ledger.experiments("tiny")] == ["lr", "no-softcap"]
        assert len(ledger.runs("tiny", arm="no-softcap")) == 2                      # not queued twice

    repo = git.Repo(root)
    (root / "trainer" / "config.py").write_text((root / "trainer" / "config.py").read_text() + "\n# later\n")
    repo.git.commit("-qam", "a change after the program started")
    assert main(["submit", "tiny", "--arm", "later", "--set", "matrix_lr=0.04"]) == 0
    out = capsys.readouterr().out
    assert "note: it measures the program's base commit" in out and "--ref HEAD measures" in out
    (root / "trainer" / "config.py").write_text((root / "trainer" / "config.py").read_text() + "# dirty\n")
    assert main(["submit", "tiny", "--arm", "dirty", "--ref", "HEAD"]) == 2
    assert "--ref HEAD is your checkout's HEAD, which has uncommitted changes" in one_line_error(capsys)


def test_a_started_program_refuses_a_changed_budget(make_project, capsys):
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    rewrite(root, budget={**tiny_program()["budget"], "seeds": [0, 1, 2]})
    assert main(["run", "tiny"]) == 2
    assert "budget.seeds: [0, 1, 2] in the file, [0, 1] for the program; only `org extend tiny --seeds ...`" \
        in one_line_error(capsys)


def test_totals_are_fixed_at_start_and_change_only_through_a_logged_org_budget(make_project, capsys):
    """Raising the program's totals in its file (an agent with a write into programs/, or a
    person's stray edit) is refused; `org budget` is the one way, and it is logged."""
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    budget = tiny_program()["budget"]
    rewrite(root, budget={**budget, "total_compute_seconds": 99999})
    assert main(["run", "tiny"]) == 2
    err = one_line_error(capsys)
    assert "budget.total_compute_seconds: 99999 in the file, 600 fixed for the program" in err
    assert "org budget tiny total_compute_seconds=99999" in err

    for bad, says in [("seeds=3", "'seeds' cannot change in a started program"),
                      ("total_compute_seconds=-5", "budget.total_compute_seconds: expected greater than 0, got -5.0"),
                      ("total_compute_seconds=5 total_compute_seconds=6", "total_compute_seconds is given twice"),
                      ("run_timeout_seconds=soon", "expected a number")]:
        assert main(["budget", "tiny", *bad.split()]) == 2
        assert says in one_line_error(capsys)
    assert main(["budget", "tiny", "total_compute_seconds=99999", "--who", "ada"]) == 0
    assert "total_compute_seconds: 600 -> 99999 (by ada, logged)" in capsys.readouterr().out
    assert main(["submit", "tiny", "--arm", "lr2", "--set", "matrix_lr=0.01"]) == 0  # file and program agree
    assert main(["budget", "tiny", "total_compute_seconds=99999", "--who", "bo"]) == 0  # (it was logged again)
    assert "budget.total_compute_seconds is 99999 already: nothing changed, nothing logged" in capsys.readouterr().out
    assert main(["budget", "tiny", "total_llm_dollars=-0"]) == 0  # (said "is -0 already")
    assert "budget.total_llm_dollars is 0 already" in capsys.readouterr().out
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
        assert ledger.budget("tiny")["total_compute_seconds"] == 99999
        [change] = ledger.budget_changes("tiny")
        assert (change["field"], change["old"], change["new"], change["who"]) == ("total_compute_seconds", 600, 99999, "ada")
    capsys.readouterr()
    assert main(["budget", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "ada: total_compute_seconds 600 -> 99999" in out
    assert "agent_cpu_seconds unset" in out  # each agent's own box: as much as total_compute_seconds
    assert main(["budget", "tiny", "--who", "ada", "agent_cpu_seconds=120"]) == 0  # (its changes after --who too)
    assert "budget.agent_cpu_seconds: unset -> 120 (by ada, logged)" in capsys.readouterr().out
    rewrite(root, budget={**budget, "total_compute_seconds": 99999})  # the file lacks the cap the program has
    assert main(["run", "tiny"]) == 2
    assert "budget.agent_cpu_seconds: unset in the file, 120 fixed for the program; write 120 in the file" \
        in one_line_error(capsys)


def test_a_run_timeout_that_would_kill_every_run_before_its_seconds_are_spent_is_refused(make_project, capsys):
    make_project(tiny_program(budget={**tiny_program()["budget"], "per_run": {"seconds": 20}}))
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    assert main(["budget", "tiny", "run_timeout_seconds=15"]) == 2  # (an IndexError's traceback)
    assert "org: budget: per_run.seconds: 20 s of training is not less than run_timeout_seconds 15: every run would " \
        "be killed before its budget is spent" in one_line_error(capsys)


def test_org_extend_adds_seeds_to_every_arm_of_a_finished_comparison_logged(make_project, capsys):
    """`inconclusive (needs N more seeds)`: a person adds seeds without renaming the program;
    every measured arm gets runs on them, and the report says they came after the start."""
    root = make_project(tiny_program())
    assert main(["run", "tiny"]) == 0
    for bad, says in [("1", "--seeds 1: seed 1 is already used (it has [0, 1])"),
                      ("2,x", "--seeds 2,x: expected seeds as integers"),
                      ("13_000", "--seeds 13_000: expected seeds as integers"),  # int() takes both of these
                      ("\u0661\u0662", "expected seeds as integers"),  # Arabic-Indic digits: int() reads 12
                      ("2,2", "--seeds 2,2: expected new seeds, each once, from 0 to 2**63-1")]:
        assert main(["extend", "tiny", "--seeds", bad]) == 2
        assert says in one_line_error(capsys)
    capsys.readouterr()
    assert main(["extend", "tiny", "--seeds", "2,3", "--who", "ada"]) == 0
    out = capsys.readouterr().out
    assert "tiny: seeds + 2, 3 for every arm (by ada, logged); 4 runs queued" in out
    assert "budget.seeds: [0, 1, 2, 3]" in out
    assert main(["run", "tiny"]) == 2  # the file still says [0, 1]
    assert "only `org extend tiny --seeds ...` adds seeds" in one_line_error(capsys)
    rewrite(root, budget={**tiny_program()["budget"], "seeds": [0, 1, 2, 3]})
    assert main(["run", "tiny"]) == 0
    with ledger_of(root) as ledger:
        main_runs = [(r["arm"], r["seed"], r["status"]) for r in ledger.runs("tiny") if r["purpose"] == "main"]
        log = [(c["field"], c["old"], c["new"], c["who"]) for c in ledger.budget_changes("tiny")]
    assert sorted(main_runs) == [(arm, seed, "completed") for arm in ("baseline", "no-softcap") for seed in range(4)]
    assert log == [("seeds", None, 2, "ada"), ("seeds", None, 3, "ada")]
    assert main(["report", "tiny"]) == 0
    text = (root / "reports" / "tiny" / "README.md").read_text()
    assert "seed 3 added for every arm by ada with `org extend`" in text and "(4 paired)" in text


def test_a_program_started_by_an_older_nanolab_resumes_but_refuses_a_changed_matmul(make_project, capsys):
    import json
    import sqlite3
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    with sqlite3.connect(root / ".lab" / "tiny" / "ledger.sqlite") as db:  # as recorded before train.matmul
        spec = json.loads(db.execute("SELECT spec FROM programs").fetchone()[0])
        del spec["train"]["matmul"]
        db.execute("UPDATE programs SET spec = ?", (json.dumps(spec),))
    assert main(["runs", "tiny"]) == 0
    assert main(["submit", "tiny", "--arm", "lr2", "--set", "matrix_lr=0.01"]) == 0
    rewrite(root, train={**tiny_program()["train"], "matmul": "bf16"})
    assert main(["submit", "tiny", "--arm", "lr3", "--set", "matrix_lr=0.02"]) == 2
    assert "train: changed since the program started" in one_line_error(capsys)


def test_a_program_started_under_an_older_default_keeps_it_and_runs_on(make_project, capsys):
    """max_change_kb's default went from 64 KB to 16: every program started before, its file not
    setting it, read as changed since its start and stopped. It keeps what it started with."""
    import json
    import sqlite3
    from org.workspace import open_site
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    with sqlite3.connect(root / ".lab" / "tiny" / "ledger.sqlite") as db:  # as an older nanolab recorded it
        spec = json.loads(db.execute("SELECT spec FROM programs").fetchone()[0])
        db.execute("UPDATE programs SET spec = ?", (json.dumps({**spec, "max_change_kb": 64.0}),))
    assert main(["submit", "tiny", "--arm", "lr2", "--set", "matrix_lr=0.01"]) == 0, capsys.readouterr().err
    assert open_site("tiny").program.max_change_kb == 64.0
    rewrite(root, max_change_kb=32)  # a file that says otherwise is a change, as before
    assert main(["submit", "tiny", "--arm", "lr3", "--set", "matrix_lr=0.02"]) == 2
    assert "max_change_kb: changed since the program started" in one_line_error(capsys)


def test_a_programs_measurement_grace_is_its_evaluators_and_fixed_at_its_start(make_project, capsys):
    """budget.measure_grace_seconds: how much longer than the base's times a code arm's model
    workers may take when measured (the compile of kernels of its own), and so the most compute
    at measurement an arm gets free. The runner hands it to each measurement; and like the
    per-run budget, a started program's runs are measured under one."""
    from org.measure import job_for
    from org.workspace import open_site
    root = make_project(tiny_program(budget={**tiny_program()["budget"], "measure_grace_seconds": 5}))
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    program = open_site("tiny").program
    run = {"overrides": "{}", "seed": 0, "budget": None}
    assert job_for(program, run, root, root, None)["setup_grace"] == 5
    rewrite(root, budget={**tiny_program()["budget"], "measure_grace_seconds": 60})
    assert main(["submit", "tiny", "--arm", "lr2", "--set", "matrix_lr=0.01"]) == 2
    assert "budget.measure_grace_seconds: changed since the program started" in one_line_error(capsys)


def test_usage_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["submit", "tiny"])
    assert e.value.code == 2
    assert one_line_error(capsys).startswith("org: submit: the following arguments are required: --arm")
    with pytest.raises(SystemExit):
        main(["chek", "tiny"])
    assert one_line_error(capsys).startswith("org: argument COMMAND: invalid choice: 'chek'")  # (not "org: org: ")


def test_help_lists_the_users_commands_with_examples_that_parse(capsys):
    from org.cli import EXAMPLES, build_parser
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("commands:")[1].split("examples:")[0].splitlines()[2:]
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed[:8] == ["launch", "status", "attach", "takeover", "release", "say", "stop", "clean"]
    assert not {"agent", "tool", "results", "agent-hook", "serve"} & set(listed)   # the org's own
    examples = [shlex.split(line.split("#")[0])[1:] for line in EXAMPLES.splitlines() if line.startswith("  org ")]
    assert len(examples) >= 8
    for argv in examples:                         # each example is a command org really takes
        build_parser().parse_args(argv)
    with pytest.raises(SystemExit) as e:          # hidden, not gone
        main(["serve", "--help"])
    assert e.value.code == 0 and "(internal)" in capsys.readouterr().out


def test_readme_documents_every_program_field():
    """README's "Program files" table names every field a program file may hold."""
    from pathlib import Path
    from pydantic import BaseModel
    from org.program import Program
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Program files")[1].split("\n## ")[0]

    def paths(model, prefix=""):
        for name, field in model.model_fields.items():
            inner = field.annotation
            inner = next((a for a in getattr(inner, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)),
                         inner)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from paths(inner, f"{prefix}{name}{'[]' if 'list' in str(field.annotation) else ''}.")
            else:
                yield prefix + name
    documented = [p for p in paths(Program)         # budget.per_run's four share a row: `.seconds`
                  if f"`{p}`" in table or (p.startswith("budget.per_run.") and f"`.{p.split('.')[-1]}`" in table)]
    missing = sorted(set(paths(Program)) - set(documented))
    assert not missing, f"README's Program files table lacks {missing}"


def test_clean_removes_a_stopped_programs_worktrees_and_branches_but_keeps_their_commits(make_project, capsys):
    from test_org_runner import agent_commit
    agents = [{"name": "alice", "backend": "scripted"}, {"name": "bob", "backend": "scripted"}]
    root = make_project(tiny_program(org={"agents": agents}))
    sha = agent_commit(root, "alice", "trainer/config.py", lambda text: text + "\n# alice's idea\n")
    agent_commit(root, "bob", "trainer/config.py", lambda text: text + "\n# bob's idea\n")
    bob = root / "worktrees" / "tiny" / "bob"
    (bob / "scratch.txt").write_text("not committed")
    assert main(["clean", "tiny"]) == 2                                  # uncommitted work: nothing goes
    assert "has uncommitted changes" in one_line_error(capsys)
    assert (root / "worktrees" / "tiny" / "alice").exists()
    (bob / "scratch.txt").unlink()

    assert main(["clean", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 worktree(s) and 2 branch(es) of tiny" in out
    repo = git.Repo(root)
    assert not (root / "worktrees" / "tiny").exists()
    assert not [h.name for h in repo.heads if h.name.startswith("agent/tiny/")] and "program/tiny" in repo.heads
    assert repo.git.rev_parse("refs/nanolab/tiny/agent/tiny/alice/work") == sha   # the ledger can still name it
    assert main(["clean", "tiny"]) == 0                                  # again: nothing left, no error


def test_arguments_that_are_not_utf8_the_wrong_shape_or_out_of_range(make_project, monkeypatch, capsys):
    """A shell passes bytes: one that is not UTF-8 once reached the ledger as a traceback. Each
    case here once printed one."""
    root = make_project(tiny_program(org={"agents": [{"name": "a"}]}))
    for argv, expected in [
            (["tool", "results", "{}", "--program", "tiny", "--as", "a"], "agent a has no worktree yet"),
            (["submit", "tiny", "--arm", "y", "--set", "softcap=1", "--hypothesis", "\udcff"], "--hypothesis '?': not UTF-8"),
            (["submit", "tiny", "--arm", "y", "--set", "softcap=1", "--who", "\udcff"], "--who '?': not UTF-8"),
            (["submit", "tiny", "--arm", "y", "--ref", "@{-1}"], "git ref '@{-1}' does not exist"),
            (["submit", "tiny", "--arm", "y", "--ref", "HEAD^{tree}"], "git ref 'HEAD^{tree}' names a tree, not a commit"),
            (["submit", "tiny", "--arm", "y", "--ref", "HEAD:missing"], "git ref 'HEAD:missing' does not exist"),
            (["tool", "submit_experiment", "[]", "--program", "tiny", "--as", "a"], "a JSON object, not list"),
            (["launch", "tiny", "--stagger", "nan"], "--stagger nan: expected seconds from 0 to 3600"),
            # each named an argument of another command, one the user never gave (`--program`, `--as`, `changes`)
            (["status", "\udcff"], "org: program '?': not UTF-8"),
            (["say", "\udcff", "hi"], "org: agent '?': not UTF-8"),
            (["budget", "tiny", "total_compute_seconds=\udcff"], "org: FIELD=VALUE 'total_compute_seconds=?': not UTF-8"),
            (["mail", "send", "a", "\udcff", "--program", "tiny", "--as", "a"], "org: TO TEXT '?': not UTF-8")]:
        assert main(argv) == 2, argv
        assert expected in one_line_error(capsys), argv
    assert nothing_created(root)
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    capsys.readouterr()
    for argv, expected in [
            (["runs", "tiny", "--arm", "\udcff"], "--arm '?': not UTF-8"),
            (["extend", "tiny", "--seeds", str(10**26)], "expected new seeds, each once, from 0 to 2**63-1"),
            (["tool", "results", "{}", "--program", "tiny", "--as", "nobody"], "nobody")]:
        assert main(argv) == 2, argv
        assert expected in one_line_error(capsys), argv
    with pytest.raises(SystemExit, match="2"):  # a usage error, said by the parser
        main(["status", "tiny", "--watch", "--every", "-1"])
    assert "--every: -1: expected seconds from 0.1 to 3600" in one_line_error(capsys)
    with pytest.raises(SystemExit, match="2"):  # (was "invalid refresh_seconds value: 'often'")
        main(["status", "tiny", "--watch", "--every", "often"])
    assert "--every: often: expected seconds from 0.1 to 3600" in one_line_error(capsys)
    assert main(["status", "tiny"]) == 0  # a program with no agents (org run's) has a status too
    monkeypatch.setenv("USER", "\x1b[31m" + "u" * 150)  # (the default --who: this read was refused for it)
    assert main(["budget", "tiny"]) == 0


def test_state_in_the_way_is_named_and_nothing_is_half_made(make_project, capsys):
    root = make_project(tiny_program())
    (root / ".lab").mkdir()
    (root / ".lab" / "tiny").write_text("a file where the program's state goes")
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 2
    assert "the program's state cannot be made in" in one_line_error(capsys)
    assert "program/tiny" not in [h.name for h in git.Repo(root).heads]  # no branch left behind
    (root / ".lab" / "tiny").unlink()
    (root / ".lab" / "tiny").mkdir()
    (root / ".lab" / "tiny" / "ledger.sqlite").write_bytes(b"")  # an empty file: a ledger without the program
    for argv in (["budget", "tiny"], ["runs", "tiny"], ["report", "tiny"], ["extend", "tiny", "--seeds", "9"]):
        assert main(argv) == 2, argv
        assert "program 'tiny' is not in" in one_line_error(capsys), argv
    assert main(["status", "tiny"]) == 0 and "holds no program tiny" in capsys.readouterr().out  # (its file: programs/tiny.yaml)
    assert main(["status"]) == 2  # (no name: the lab's one program, and an empty file is none)
    assert one_line_error(capsys).endswith(f"(programs here: none); no program is recorded in {root / '.lab' / 'tiny' / 'ledger.sqlite'}\n")
    assert [p.name for p in (root / ".lab" / "tiny").iterdir()] == ["ledger.sqlite"]  # read, not made a ledger: no schema,
    assert (root / ".lab" / "tiny" / "ledger.sqlite").read_bytes() == b""              # no -wal beside it
    with contextlib.closing(sqlite3.connect(root / ".lab" / "tiny" / "ledger.sqlite")) as db:
        db.execute("CREATE TABLE programs (name TEXT)")  # SQLite, but no ledger's
    before = (root / ".lab" / "tiny" / "ledger.sqlite").read_bytes()
    for argv in (["runs", "tiny"], ["status", "tiny"]):
        assert main(argv) == 2, argv
        assert "the ledger is corrupt or not a ledger (no such column: spec)" in one_line_error(capsys), argv
    assert (root / ".lab" / "tiny" / "ledger.sqlite").read_bytes() == before
    (root / ".lab" / "tiny" / "ledger.sqlite").unlink()
    (root / ".lab" / "tiny" / "ledger.sqlite").mkdir()
    assert main(["runs", "tiny"]) == 2
    assert "ledger.sqlite is a folder, not a ledger" in one_line_error(capsys)
    (root / ".lab" / "tiny" / "ledger.sqlite").rmdir()
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    (root / "reports").mkdir()
    (root / "reports" / "tiny").write_text("a file where the report goes")
    capsys.readouterr()
    assert main(["report", "tiny"]) == 2
    assert "the report cannot be written in" in one_line_error(capsys)
    (root / "programs" / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["status", "programs/broken.yaml"]) == 2
    assert "broken.yaml: malformed YAML" in one_line_error(capsys)  # not "no program ..."


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_ledger_is_named_as_such_and_left_as_it_is(damage, make_project, capsys):
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    path = root / ".lab" / "tiny" / "ledger.sqlite"
    data = path.read_bytes()
    path.write_bytes(b"not a database at all\n" * 100 if damage == "garbage" else data[:2048])
    before = path.read_bytes()
    for argv in (["runs", "tiny"], ["budget", "tiny"], ["report", "tiny"], ["run", "tiny"],
                 ["submit", "tiny", "--arm", "other", "--set", "matrix_lr=0.05"]):
        assert main(argv) == 2, argv
        err = one_line_error(capsys)
        assert "the ledger is corrupt or not a ledger" in err and "left as it is" in err, (argv, err)
    assert path.read_bytes() == before


HAND_EDITS = {"not JSON": ("runs", "overrides", "{matrix_lr: 0.03"), "not an object": ("experiments", "overrides", "[1]"),
              "a budget of text": ("runs", "budget", '"flops"'), "a spec not JSON": ("programs", "spec", "{name: tiny"),
              "a spec with no budget": ("programs", "spec", '{"name": "tiny"}'),
              "a number of text": ("runs", "wall_seconds", "abc"),
              "a budget with no value": ("runs", "budget", '{"kind": "steps"}')}  # (a KeyError in report)  # (a TypeError in status, runs, report, extend)


@pytest.mark.parametrize("edit", HAND_EDITS)
def test_a_ledger_edited_by_hand_is_named_where_and_left_as_it_is(edit, make_project, capsys):
    """A ledger that is still SQLite but holds what no org writes (no crash can: every write is
    one transaction) was a traceback in status, report, budget, extend and runs --json, and `org
    run` claimed a run, then stopped on it calling it a nanolab bug."""
    import sqlite3
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    table, column, value = HAND_EDITS[edit]
    path = root / ".lab" / "tiny" / "ledger.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = 1", (value,))
    capsys.readouterr()
    for argv in (["runs", "tiny", "--json"], ["budget", "tiny"], ["report", "tiny"], ["status", "tiny"],
                 ["extend", "tiny", "--seeds", "9"], ["run", "tiny"], ["submit", "tiny", "--arm", "b", "--set", "matrix_lr=0.05"]):
        if main(argv) != 0:
            err = one_line_error(capsys)
            assert "edited by hand" in err and f"{table} row 1: its {column}" in err or "spec is not a program" in err, (argv, err)
            assert "left as it is" in err
        else:
            capsys.readouterr()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute(f"SELECT {column} FROM {table} WHERE rowid = 1").fetchone()[0] == value
        assert db.execute("SELECT count(*) FROM runs WHERE status != 'queued'").fetchone()[0] == 0  # none claimed


def test_a_nan_a_trainer_wrote_is_no_hand_edit(make_project, capsys):
    """Python's JSON writes NaN, and a trainer's result may hold one (an agent's trainer, or a
    diverged evaluation): SQLite's json_valid calls it no JSON, and every `org run` and `org
    submit` refused the ledger as edited by hand, telling its owner to move it away."""
    import sqlite3
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    with contextlib.closing(sqlite3.connect(root / ".lab" / "tiny" / "ledger.sqlite")) as db, db:
        db.execute("""UPDATE runs SET result = '{"status": "diverged", "val_bpb": NaN}' WHERE rowid = 1""")
    assert main(["submit", "tiny", "--arm", "other", "--set", "matrix_lr=0.05"]) == 0
    assert main(["runs", "tiny", "--json"]) == 0


def test_a_ledger_another_process_holds_is_read_and_said_to_be_held_not_corrupt(make_project, monkeypatch, capsys):
    """A process stopped inside a transaction holds the ledger's write lock. Every command opened
    the ledger with a write transaction (to migrate it), waited 60 s, and said "the ledger is
    corrupt ... move it away to start the program afresh": a person who did so lost a sound ledger.
    Reading takes no lock now, and a write that waits past its time says who holds what."""
    from org import ledger as ledger_module
    monkeypatch.setattr(ledger_module, "LOCK_WAIT", 1.0)
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    path = root / ".lab" / "tiny" / "ledger.sqlite"
    holder = hold_the_write_lock(path)
    try:
        capsys.readouterr()
        assert main(["runs", "tiny"]) == 0 and "lr" in capsys.readouterr().out
        assert main(["status", "tiny"]) == 0
        capsys.readouterr()
        for argv in (["submit", "tiny", "--arm", "other", "--set", "matrix_lr=0.05"], ["budget", "tiny", "total_llm_dollars=3"]):
            assert main(argv) == 2, argv
            err = one_line_error(capsys)
            assert "another process held the ledger's write lock for 1 s" in err and "corrupt" not in err, err
    finally:
        (path.with_name("let-go")).touch()
        holder.wait()
    assert main(["submit", "tiny", "--arm", "other", "--set", "matrix_lr=0.05"]) == 0


def test_an_empty_ledger_or_another_programs_is_said_to_hold_no_program(make_project, capsys):
    """A 0-byte ledger (or one copied from another program) opens as SQLite: `org status` was a
    traceback on it (its budget None)."""
    root = make_project(tiny_program())
    path = root / ".lab" / "tiny" / "ledger.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert main(["status", "tiny"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tiny · not running" in out and "holds no program tiny: `org run` or `org launch` starts it there" in out, out


def test_a_runs_reason_is_printed_as_it_was_written(capsys):
    """A failed run's reason ends with its trainer's last log line: `[/x]` there was rich's
    markup, and `org runs` crashed with a MarkupError."""
    from org.cli import print_runs
    row = dict(id=1, arm="a", purpose="main", seed=0, status="error", val_bpb=None, steps=None, flops=None,
               train_seconds=None, wall_seconds=1.0, reason="exit status 1: [/x]")
    print_runs("tiny", [row])
    assert "exit status 1: [/x]" in capsys.readouterr().out


def test_org_in_an_agents_worktree_reads_the_labs_state_not_what_the_agent_planted_there(make_project, monkeypatch, capsys):
    """The attack: the agent leaves a ledger of its making in its worktree (.lab/tiny/ledger.sqlite,
    built by our own code in its box) and a program file. A person who took its pane over works
    there (the shell starts in the worktree): `org runs`, `org report`, `org budget` read the
    worktree as the lab, and `org submit evil.yaml` took the agent's program file."""
    from org.lab import Lab
    import shutil
    import sqlite3
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    with contextlib.closing(Lab.open(root)) as lab:
        tree = lab.add_worktree("tiny", "mallory")
    planted = tree / ".lab" / "tiny" / "ledger.sqlite"
    planted.parent.mkdir(parents=True)
    shutil.copy(root / ".lab" / "tiny" / "ledger.sqlite", planted)
    with contextlib.closing(sqlite3.connect(planted)) as db:
        for table in ("experiments", "runs"):
            db.execute(f"UPDATE {table} SET arm = 'forged'")
        db.commit()
    shutil.copy(root / "programs" / "tiny.yaml", tree / "evil.yaml")
    monkeypatch.chdir(tree)
    monkeypatch.delenv("NANOLAB_LAB", raising=False)
    capsys.readouterr()
    assert main(["runs", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert " lr " in shown and "forged" not in shown
    assert main(["submit", "evil.yaml", "--arm", "y"]) == 2
    assert "evil.yaml: a program file in an agent's worktree is the agent's to write" in one_line_error(capsys)
    (root / "programs" / "wt.yaml").symlink_to(tree / "evil.yaml")  # (status said "no programs/wt.yaml")
    for argv in (["status", "wt"], ["mail", "board", "--program", "wt"]):  # (mail read the agent's file)
        assert main(argv) == 2
        assert "wt: a program file in an agent's worktree is the agent's to write" in one_line_error(capsys)


def test_a_lock_or_folder_of_the_harness_damaged_by_hand_is_one_line(make_project, capsys):
    """A folder where the runner's lock goes, a file where the launch's folder goes: tracebacks
    from `org run`, `org stop` and `org clean` (a hunt, 2026-12-06)."""
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    (root / ".lab" / "tiny" / "runner.lock").mkdir()
    capsys.readouterr()
    assert main(["run", "tiny"]) == 2
    assert "runner.lock: Is a directory: the runner's lock cannot be held; move it away" in one_line_error(capsys)
    (root / ".lab" / "tiny" / "runner.lock").rmdir()
    (root / ".lab" / "tiny" / "panes").write_text("x")
    for command in ("stop", "clean"):
        assert main([command, "tiny"]) == 2
        assert "panes: File exists: the launch's own state there is not as it left it; move it away" in one_line_error(capsys)
    assert (root / ".lab" / "tiny" / "panes").read_text() == "x"


def test_a_name_that_is_not_the_programs_own_starts_nothing(make_project, monkeypatch, capsys):
    """Names given on the command line or in the environment that do not fit. (1) programs/tiny.yaml
    saying `name: tiny2`: `org submit tiny` started program tiny2, in its own ledger, while `org
    runs tiny` and `org budget tiny` read tiny's. (2) `org ablate` of an improvement program never
    started made its ledger and branch, to say there was nothing to ablate. (3) A name holding a
    terminal's escape codes was echoed raw in the error. (4) NANOLAB_LAB naming no folder was
    "not inside a git checkout", of the checkout the person was in; a program file's path mistyped
    was "no ledger for program 'programs/tiny.yml'". Each is now one line, and nothing is made."""
    root = make_project(tiny_program())
    rewrite(root, name="tiny2")
    git.Repo(root).git.commit("-qam", "renamed inside")
    assert main(["submit", "tiny", "--arm", "capped", "--set", "softcap=4"]) == 2
    assert "programs/tiny.yaml: name: 'tiny2' in a file named for 'tiny': rename one of them" in one_line_error(capsys)
    assert main(["status", "tiny"]) == 2 and "name: 'tiny2' in a file named for 'tiny'" in one_line_error(capsys)
    assert nothing_created(root)
    (root / "programs" / "grow.yaml").write_text(yaml.safe_dump(tiny_program(
        name="grow", claim={"kind": "improve"}, variants=[], candidates=[{"name": "c1", "overrides": {"softcap": 0}}])))
    git.Repo(root).git.add("programs/grow.yaml")
    git.Repo(root).git.commit("-qm", "an improvement program")
    assert main(["ablate", "grow"]) == 2
    assert "ablate: grow is not started: it has kept nothing" in one_line_error(capsys)
    assert nothing_created(root)
    assert main(["status", "\x1b]0;PWNED\x07"]) == 2
    err = one_line_error(capsys)
    assert "\x1b" not in err and "\x07" not in err and "?]0;PWNED?" in err
    assert main(["runs", "programs/tiny.yml"]) == 2  # (a path mistyped: "no ledger for program 'programs/tiny.yml'")
    assert one_line_error(capsys) == "org: no program file 'programs/tiny.yml'\n"
    monkeypatch.setenv("NANOLAB_LAB", str(root / "nowhere"))
    assert main(["status", "tiny"]) == 2
    assert f"NANOLAB_LAB={root / 'nowhere'}: no such folder" in one_line_error(capsys)


def test_where_the_runs_would_go_is_tried_before_anything_is_made(make_project, capsys):
    """`org run tiny --ray ADDRESS` started the program (its branch, its ledger, its runs queued)
    and only then found no cluster there: a typo's program stayed behind. A CUDA program on
    `runner.gpus: [0]` of a machine with no GPU queued runs that could only fail. Both are tried first."""
    from org.hostfiles import nvidia_gpus
    root = make_project(tiny_program())
    for address in ("not a url", "http://127.0.0.1:1"):
        assert main(["run", "tiny", "--ray", address]) == 2
        assert f"program tiny: runner.address {address}: " in one_line_error(capsys)
    gpus = len(nvidia_gpus())
    rewrite(root, train={**tiny_program()["train"], "device": "cuda"}, runner={"gpus": [gpus]})  # (one past the last)
    git.Repo(root).git.commit("-qam", "on a GPU")
    assert main(["run", "tiny"]) == 2
    assert f"program tiny: runner.gpus [{gpus}]: this machine has {gpus} NVIDIA GPU(s)" in one_line_error(capsys)
    assert nothing_created(root)


def test_a_budget_edited_by_hand_in_the_ledger_is_named_there_not_as_the_persons_change(make_project, capsys):
    """`org budget tiny` with the ledger's recorded seeds edited to "abc" said `budget.seeds:
    expected a valid list`: as if the person had given it, and no file named."""
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "capped", "--set", "softcap=4"]) == 0
    ledger = root / ".lab" / "tiny" / "ledger.sqlite"
    with contextlib.closing(sqlite3.connect(ledger)) as db, db:
        spec = yaml.safe_load(db.execute("SELECT spec FROM programs").fetchone()[0])
        db.execute("UPDATE programs SET spec = ?", (json.dumps({**spec, "budget": {**spec["budget"], "seeds": "abc"}}),))
    capsys.readouterr()
    for changes in ([], ["total_compute_seconds=5000"]):
        assert main(["budget", "tiny", *changes]) == 2
        assert f"{ledger}: budget.seeds as recorded: expected a valid list, got 'abc' (edited by hand?)" in one_line_error(capsys)


def test_a_stop_waits_a_number_of_seconds(capsys):
    for bad in ("nan", "-1", "inf", "abc"):  # (each was taken: nan waited for nothing, and said nothing;
        # abc was "invalid wait_seconds value", the name of a function in our source)
        with pytest.raises(SystemExit) as stopped:
            main(["stop", "tiny", "--timeout", bad])
        assert stopped.value.code == 2 and f"--timeout: {bad}: expected seconds from 0 to 3600" in capsys.readouterr().err


def test_a_program_started_from_a_file_outside_programs_is_named_by_its_name(make_project, capsys):
    """`org mail`, `org submit` and `org ablate` read the program's file, at programs/NAME.yaml: a
    program started from another file had no board and took no experiment, and a name with no
    program was a file's error, where every other command says `no program`. The ledger holds the
    started program."""
    from org.workspace import open_program
    root = make_project(tiny_program(org={"agents": [{"name": "a"}]}))
    assert main(["mail", "board", "--program", "nosuch"]) == 2
    assert "no program file 'nosuch' (nor " in one_line_error(capsys)
    (root / "programs" / "tiny.yaml").rename(root / "elsewhere.yaml")
    open_program(str(root / "elsewhere.yaml"), root)
    assert main(["mail", "board", "--program", "tiny"]) == 0
    assert "(the board is empty)" in capsys.readouterr().out
    # and the commands that take a program file: the started program, as its ledger recorded it
    assert main(["submit", "tiny", "--arm", "wider", "--set", "n_embd=64", "--hypothesis", "wider is better"]) == 0
    assert "runs queued" in capsys.readouterr().out
    assert main(["ablate", "tiny"]) == 2
    assert "tiny is not an improvement program" in one_line_error(capsys)
    assert main(["submit", "nosuch", "--arm", "wider", "--set", "n_embd=64"]) == 2  # (no file and no ledger)
    assert "no program file 'nosuch'" in one_line_error(capsys)
    # where a change to it is to be copied: the file it was started from, where it is at hand (it said programs/tiny.yaml)
    assert main(["budget", "tiny", "total_compute_seconds=700"]) == 0
    assert "edit the file tiny was started from (none is in" in capsys.readouterr().out
    assert main(["budget", str(root / "elsewhere.yaml"), "total_compute_seconds=800"]) == 0
    assert f"edit {root / 'elsewhere.yaml'} to match" in capsys.readouterr().out
    # a file named by --program is that file (it said programs/gone.yaml.yaml)
    assert main(["mail", "board", "--program", "gone.yaml", "--as", "a"]) == 2
    said = one_line_error(capsys)
    assert "org: no program file 'gone.yaml'" in said and ".yaml.yaml" not in said


def test_a_tmux_folder_that_is_a_file_is_no_grid_to_stop(make_project, monkeypatch, tmp_path, capsys):
    """TMUX_TMPDIR naming a file: `org status` coped, `org stop` ended in NotADirectoryError."""
    make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path / "a-file"))
    assert main(["stop", "tiny"]) == 0
    assert "tiny was not running; cleaned up" in capsys.readouterr().out


def test_a_relative_cache_home_is_ignored_as_the_xdg_spec_says(monkeypatch, tmp_path):
    """A relative XDG_CACHE_HOME made the list of labs in whatever folder a command ran in (in the lab)."""
    from org import user_cache
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert user_cache("labs") == Path.home() / ".cache" / "nanolab" / "labs"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache("labs") == tmp_path / "nanolab" / "labs"


def test_a_report_with_no_finished_run_keeps_the_report_already_there(make_project, capsys):
    """A fresh clone holds the sample report of another lab's ledger (README and PNGs). `org report`
    on a program started here with no run finished yet rewrote it as "nothing to judge" and deleted
    its plots. Now that report is left as it is, in one line; where there is none, the empty one
    is written as before."""
    root = make_project(tiny_program())
    sample = root / "reports" / "tiny"
    sample.mkdir(parents=True)
    (sample / "README.md").write_text("# tiny: the sample report\n")
    (sample / "final.png").write_bytes(b"\x89PNG sample")
    assert main(["submit", "tiny", "--arm", "cap-5", "--set", "softcap=5"]) == 0  # (started; runs queued)
    capsys.readouterr()
    assert main(["report", "tiny"]) == 2
    err = one_line_error(capsys)
    assert "no run of tiny has finished yet" in err and "reports/tiny/README.md is left as it is" in err, err
    assert (sample / "README.md").read_text() == "# tiny: the sample report\n" and (sample / "final.png").exists()
    for name in ("README.md", "final.png"):
        (sample / name).unlink()
    assert main(["report", "tiny"]) == 0  # none there: the ledger's report, empty as it is
    assert "no finished runs: every verdict is inconclusive" in (sample / "README.md").read_text()


def test_a_lab_whose_commit_has_no_trainer_starts_nothing(make_project, capsys):
    """A checkout with a program file but no trainer committed passed every check: its runs trained
    with whatever `trainer` the machine's Python found (the harness's own, installed), then the
    harness's measurement failed on each, from the lab's snapshot. Now `org run`, `org submit` and
    `org launch` name the missing trainer in one line and make nothing."""
    root = make_project(tiny_program())
    repo = git.Repo(root)
    repo.git.rm("-rq", "trainer")
    repo.git.commit("-qm", "no trainer")
    for argv in (["run", "tiny"], ["submit", "tiny", "--arm", "capped", "--set", "softcap=4"], ["launch", "tiny"]):
        assert main(argv) == 2, argv
        err = one_line_error(capsys)
        assert f"commit {repo.head.commit.hexsha[:12]} has no trainer/__main__.py" in err, err
    assert nothing_created(root)
