"""Bad input to `org`: one line naming the cause, a non-zero exit, and nothing created."""
import git
import pytest
import yaml

from org.cli import main
from org.ledger import Ledger
from test_org_runner import make_project, tiny_program  # noqa: F401  (make_project is a fixture)


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
}


@pytest.mark.parametrize("case", BAD_PROGRAMS)
def test_bad_program_files(case, make_project, capsys):
    text, expected = BAD_PROGRAMS[case]
    root = make_project(tiny_program())
    (root / "programs" / "bad.yaml").write_text(text)
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


def test_bad_submissions(make_project, capsys):
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "x", "--ref", "no-such-branch"]) == 2
    assert "git ref 'no-such-branch' does not exist" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x", "--set", "softcapp=0"]) == 2
    assert "--set: the trainer rejects it: unknown config key 'softcapp'" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "x", "--set", "softcap"]) == 2
    assert "--set expects KEY=VALUE, got 'softcap'" in one_line_error(capsys)
    assert nothing_created(root)
    assert main(["submit", "missing", "--arm", "x"]) == 2
    assert "no program file 'missing'" in one_line_error(capsys)
    assert main(["runs", "tiny"]) == 2
    assert "no ledger for program 'tiny'" in one_line_error(capsys)
    assert main(["submit", "tiny", "--arm", "baseline"]) == 2
    assert "--arm baseline is the program's own baseline" in one_line_error(capsys)


def test_a_started_program_refuses_a_changed_budget(make_project, capsys):
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    rewrite(root, budget={**tiny_program()["budget"], "seeds": [0, 1, 2]})
    assert main(["run", "tiny"]) == 2
    assert "budget.seeds: changed since the program started" in one_line_error(capsys)


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
                      ("total_compute_seconds=-5", "budget.total_compute_seconds: Input should be greater than 0"),
                      ("run_timeout_seconds=soon", "expected a number")]:
        assert main(["budget", "tiny", bad]) == 2
        assert says in one_line_error(capsys)
    assert main(["budget", "tiny", "total_compute_seconds=99999", "--who", "ada"]) == 0
    assert "total_compute_seconds: 600 -> 99999 (by ada, logged)" in capsys.readouterr().out
    assert main(["submit", "tiny", "--arm", "lr2", "--set", "matrix_lr=0.01"]) == 0  # file and program agree
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
        assert ledger.budget("tiny")["total_compute_seconds"] == 99999
        [change] = ledger.budget_changes("tiny")
        assert (change["field"], change["old"], change["new"], change["who"]) == ("total_compute_seconds", 600, 99999, "ada")
    capsys.readouterr()
    assert main(["budget", "tiny"]) == 0
    assert "ada: total_compute_seconds 600 -> 99999" in capsys.readouterr().out


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


def test_usage_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["submit", "tiny"])
    assert e.value.code == 2
    assert "the following arguments are required: --arm" in one_line_error(capsys)
