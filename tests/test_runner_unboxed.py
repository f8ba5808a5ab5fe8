"""Where no box can be made, the runner runs the program's own code as plain processes, never
an agent's: its code would read the split key, the network and the harness's files. Only a
person's explicit `org run --no-sandbox` runs it so; an org of model agents needs boxes."""
import pytest

from org import OrgError
from org.cli import main
from org.lab import Lab
from org.ledger import Ledger
from org.program import load_program
from org.runner import Runner
from org.sandbox import SandboxError
from test_org_runner import agent_commit, make_project, tiny_program  # noqa: F401 (a fixture)

NO_BOX = "no sandbox: bwrap fails here (bwrap: setting up uid map: Permission denied)"


@pytest.fixture
def no_box_here(monkeypatch):
    """bwrap installed but failing (a kernel without unprivileged user namespaces, say)."""
    import org.runner

    def check(tries=3):
        raise SandboxError(NO_BOX)
    monkeypatch.setattr(org.runner, "available", lambda: NO_BOX)
    monkeypatch.setattr(org.runner, "check", check, raising=False)  # (the runner before it required boxes had none)


def with_an_agents_code_arm(make_project) -> Ledger:
    root = make_project(tiny_program(variants=[], budget={**tiny_program()["budget"], "seeds": [0]}))
    agent_commit(root, "mallory", "trainer/train.py", lambda text: text + "\n# mallory's idea\n")
    assert main(["submit", "tiny", "--arm", "mallory", "--ref", "agent/tiny/mallory/work"]) == 0
    return root


def statuses(root) -> dict:
    with Ledger(root / ".lab" / "tiny" / "ledger.sqlite") as ledger:
        return {r["arm"]: r["status"] for r in ledger.runs("tiny")}


def test_without_a_box_an_agents_code_does_not_run_and_nothing_is_lost(make_project, no_box_here, capsys):
    root = with_an_agents_code_arm(make_project)
    assert main(["run", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs of mallory run code of their own, and no box can be made here" in err[0]
    assert NO_BOX in err[0] and "org run --no-sandbox" in err[0]
    assert statuses(root) == {"baseline": "queued", "mallory": "queued"}  # nothing ran, nothing refused


def test_a_person_may_run_code_they_trust_unboxed(make_project, no_box_here, capsys):
    root = with_an_agents_code_arm(make_project)
    assert main(["run", "tiny", "--no-sandbox"]) == 0
    assert "trainer runs are NOT sandboxed: sandbox turned off" in capsys.readouterr().out
    assert statuses(root) == {"baseline": "completed", "mallory": "completed"}


def test_the_programs_own_code_runs_unboxed_where_no_box_can_be_made(make_project, no_box_here, capsys):
    root = make_project(tiny_program(variants=[{"name": "no-softcap", "overrides": {"softcap": 0}}],
                                     budget={**tiny_program()["budget"], "seeds": [0]}))
    assert main(["run", "tiny"]) == 0
    assert f"trainer runs are NOT sandboxed: {NO_BOX}" in capsys.readouterr().out
    assert statuses(root) == {"baseline": "completed", "no-softcap": "completed"}


def test_an_agents_code_queued_while_an_unboxed_runner_runs_goes_back_to_the_queue(make_project, no_box_here):
    """The check before a run, for runs queued after the drain began: the run is handed back
    and the runner stops, with the same line."""
    root = with_an_agents_code_arm(make_project)
    program = load_program(root / "programs" / "tiny.yaml")
    lab = Lab.open(root)
    runner = Runner(lab, program, root / ".lab" / "tiny" / "ledger.sqlite", say=lambda text: None)
    with Ledger(runner.ledger_path) as ledger:
        run = next(r for r in ledger.runs("tiny") if r["arm"] == "mallory")
        with pytest.raises(OrgError, match="runs of mallory run code of their own"):
            runner._execute(ledger, ledger.claim("tiny", 0, arm="mallory"), runner.slots()[0])
        again = ledger.run(run["id"])
    lab.close()
    assert again["status"] == "queued" and "not run: its code is its own" in again["attempt_log"]
    assert not (root / ".lab" / "tiny" / "runs" / str(run["id"])).exists()


def test_an_org_of_model_agents_has_no_runner_without_boxes(make_project, no_box_here):
    root = make_project(tiny_program())
    assert main(["submit", "tiny", "--arm", "lr", "--set", "matrix_lr=0.03"]) == 0
    lab = Lab.open(root)
    with pytest.raises(SandboxError, match="uid map"):
        Runner(lab, load_program(root / "programs" / "tiny.yaml"), root / ".lab" / "tiny" / "ledger.sqlite",
               sandboxed=True)
    lab.close()
