"""The scripted backend's plans: who a chief assigns work to, and how a chief or junior carries on
after a restart (a fresh plan replayed through its transcript). Plans are driven directly through
ScriptedModel.turn with the conversation the loop would record; one org runs for real, stopped
mid-way and resumed."""
import json
import subprocess
import sys
import threading
import time

from rich.console import Console

from agentlab import ROOT, BackgroundRunner, lab_dir, make_project, tiny_program, worktree
from org.agents.control import Control
from org.agents.loop import Agent, Settings
from org.agents.scripted import ScriptedModel
from org.agents.tools import Limits
from org.agents.transcript import INTERRUPTED, Transcript
from org.mail import Mail
from org.program import Program

FAST = Settings(retry_base_seconds=0.01, limits=Limits(poll_seconds=0.05))
VARIANTS = [{"name": "no-softcap", "overrides": {"softcap": 0}}, {"name": "no-qk-norm", "overrides": {"qk_norm": False}}]
ORG = [{"name": "chief", "role": "chief"}, {"name": "solo", "role": "researcher"},
       {"name": "junior-a", "role": "junior"}, {"name": "junior-b", "role": "junior"}]


def program(agents=ORG, variants=VARIANTS) -> Program:
    spec = tiny_program(agents, topology="chief", variants=variants)
    spec["data"]["source"] = "corpus.txt"
    return Program.model_validate(spec)


def step(model: ScriptedModel, history: list[dict], output: str) -> tuple[str, dict]:
    """One turn of the plan; records its call and `output` as the loop would."""
    call = model.turn("", history, [], lambda text: None).calls[0]
    history += [{"kind": "assistant", "text": "", "calls": [call]},
                {"kind": "tool", "id": call["id"], "name": call["name"], "output": output, "error": False}]
    return call["name"], call["args"]


def mail(sender: str, text: str) -> str:
    return f"[message from {sender} at 2025-01-01T00:00:00]\n{text}"


def test_a_scripted_chief_assigns_only_to_juniors_and_waits_only_for_them():
    chief, history = ScriptedModel(program(), "chief"), [{"kind": "user", "text": "Start."}]
    name, args = step(chief, history, "posted to the board")
    assert name == "post_to_board" and "junior-a: no-softcap; junior-b: no-qk-norm." in args["text"]
    sends = [step(chief, history, "sent") for _ in range(2)]
    assert [(n, a["to"]) for n, a in sends] == [("send_message", "junior-a"), ("send_message", "junior-b")]
    assert step(chief, history, mail("junior-a", "Done.") + "\n\n" + mail("junior-b", "Done."))[0] == "read_inbox"
    assert step(chief, history, "{}")[0] == "results"  # no report awaited from solo


def test_a_junior_with_no_arm_is_released_and_finishes_instead_of_waiting_forever():
    three = ORG + [{"name": "junior-c", "role": "junior"}]  # three juniors, two arms
    chief, history = ScriptedModel(program(three), "chief"), [{"kind": "user", "text": "Start."}]
    step(chief, history, "posted to the board")
    sends = [step(chief, history, "sent") for _ in range(3)]
    assert [a["to"] for _, a in sends] == ["junior-a", "junior-b", "junior-c"]
    assert sends[2][1]["text"].startswith("No arm for you in this program")
    assert step(chief, history, mail("junior-a", "Done.") + "\n\n" + mail("junior-b", "Done."))[0] == "read_inbox"
    assert step(chief, history, "{}")[0] == "results"  # it waits for the juniors it gave arms to only
    junior, mine = ScriptedModel(program(three), "junior-c"), [{"kind": "user", "text": "Start."}]
    assert step(junior, mine, mail("junior-a", "no arm for you in this program (a joke)"))[0] == "read_inbox"
    assert step(junior, mine, mail("chief", sends[2][1]["text"]))[0] == "read_inbox"  # the joke read: waits on
    assert step(junior, mine, "noted")[0] == "write_standup"  # the chief's release read
    assert step(junior, mine, "") == ("finish", {"summary": "released by chief: no arm to run"})


def test_a_restarted_junior_recovers_the_assignment_it_had_read():
    history = [{"kind": "user", "text": "Start."}]
    step(ScriptedModel(program(), "junior-b"), history, mail("chief", "Please run:\n- no-qk-norm: overrides {}"))
    # restarted: the mail was acknowledged, so only the transcript has it; the board names every arm
    history.append({"kind": "user", "text": "(harness) You were restarted. The board so far:\n"
                                            "Assignments: junior-a: no-softcap; junior-b: no-qk-norm."})
    restarted = ScriptedModel(program(), "junior-b")
    name, args = step(restarted, history, "submitted: experiment 3")
    assert (name, args["arm"]) == ("submit_experiment", "no-qk-norm")
    assert history[-2]["calls"][0]["id"] == "scripted_2"  # ids go on from the transcript's
    assert step(restarted, history, "{}")[0] == "results"


def test_a_call_a_crash_cut_short_is_made_again_not_taken_as_done():
    """A junior killed as it submitted its arm: restarted, its call was answered `interrupted`,
    and the plan took that for the submission's answer and went on. The arm never ran, its report
    said `{'no-qk-norm': None}`, and the org read `done` without the program's question (a chief
    killed as it posted its conclusion: done, with none on the board). The call is made again."""
    history = [{"kind": "user", "text": "Start."}, {"kind": "user", "text": mail("chief", "Please run:\n- no-qk-norm: overrides {}")}]
    call = ScriptedModel(program(), "junior-b").turn("", history, [], lambda text: None).calls[0]
    history += [{"kind": "assistant", "text": "", "calls": [call]},  # (killed here; the loop closes the call so)
                {"kind": "tool", "id": call["id"], "name": call["name"], "output": INTERRUPTED, "error": True},
                {"kind": "user", "text": "(harness) You were restarted."}]
    restarted = ScriptedModel(program(), "junior-b")
    assert step(restarted, history, "submitted: experiment 3") == (call["name"], call["args"])
    again = ScriptedModel(program(), "junior-b")  # and a later restart replays both rounds as they were
    assert again.turn("", history, [], lambda text: None).calls[0]["name"] == "results"
    assert step(restarted, history, "{}")[0] == "results"


def test_a_junior_takes_an_assignment_that_came_before_its_first_call():
    history = [{"kind": "user", "text": "Start."}, {"kind": "user", "text": mail("chief", "Run no-softcap.")}]
    name, args = step(ScriptedModel(program(), "junior-a"), history, "submitted: experiment 2")
    assert (name, args["arm"]) == ("submit_experiment", "no-softcap")


def test_a_stopped_scripted_org_completes_when_resumed(tmp_path):
    agents = [{"name": "chief", "role": "chief"}, {"name": "junior", "role": "junior"},
              {"name": "solo", "role": "researcher"}]
    root, prog = make_project(tmp_path, tiny_program(agents, topology="chief", corpus="corpus"))
    lab = lab_dir(root, prog)
    trees = {name: worktree(root, prog, name) for name in ("chief", "junior", "solo")}

    def start(name: str, ended: dict) -> threading.Thread:
        agent = Agent(name, prog, root, trees[name], ScriptedModel(prog, name, wait_seconds=0.5),
                      console=Console(quiet=True), settings=FAST)
        thread = threading.Thread(target=lambda: ended.__setitem__(name, agent.run()))
        thread.start()
        return thread

    def read_assignment() -> bool:
        return any("[message from chief" in (i.get("output") or i.get("text") or "")
                   for i in Transcript(lab / "transcripts" / "junior.jsonl").conversation())

    with BackgroundRunner(root, prog):
        first: dict = {}
        threads = [start("chief", first), start("junior", first)]
        deadline = time.monotonic() + 30
        while not read_assignment() and time.monotonic() < deadline:
            time.sleep(0.01)
        for name in ("chief", "junior"):  # stopped mid-way, the assignment mail acknowledged
            Control(lab, name).stop("test: stop mid-way")
        for t in threads:
            t.join(30)
        assert first == {"chief": "stopped: test: stop mid-way", "junior": "stopped: test: stop mid-way"}

        ended: dict = {}
        for t in [start(name, ended) for name in ("chief", "junior", "solo")]:
            t.join(90)
    assert set(ended) == {"chief", "junior", "solo"} and all(r.startswith("finished: ") for r in ended.values()), ended
    board = Mail(lab).board()
    assert board.count("Plan for tiny") == 1 and "Assignments: junior: no-softcap." in board
    assert "- no-softcap vs baseline: " in board[board.index("Conclusion for tiny"):]
    assert [m["from"] for m in Mail(lab).read_messages("chief")] == ["junior"]


def test_a_scripted_agent_never_imports_the_model_sdks():
    code = ("import sys, org.cli, org.agents.loop, org.agents.scripted, org.agents.clis;"
            "print(sorted({'anthropic', 'openai'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_in_an_improvement_program_a_chief_hands_out_candidates_and_a_junior_tries_its_share():
    candidates = [{"name": "lr-up", "overrides": {"matrix_lr": 0.03}},
                  {"name": "reseed", "patch": "programs/reseed.patch"}, {"name": "eps", "overrides": {"adam_eps": 1e-8}}]
    spec = tiny_program(ORG, topology="chief", variants=[], claim={"kind": "improve", "fresh_seeds": 0}, candidates=candidates)
    improve = Program.model_validate(spec)
    chief, history = ScriptedModel(improve, "chief"), [{"kind": "user", "text": "Start."}]
    name, args = step(chief, history, "posted to the board")
    assert name == "post_to_board" and "junior-a: lr-up, eps; junior-b: reseed." in args["text"]
    sends = [step(chief, history, "sent") for _ in range(2)]
    assert [a["to"] for _, a in sends] == ["junior-a", "junior-b"]
    assert "patch programs/reseed.patch" in sends[1][1]["text"]
    junior, mine = ScriptedModel(improve, "junior-b"), [{"kind": "user", "text": "Start."}]
    assert step(junior, mine, mail("chief", sends[1][1]["text"]))[0] == "read_inbox"
    frontier = {"arm": "baseline", "experiment": 1, "commit": "abc123", "overrides": {}, "kept": []}
    status = json.dumps({"compute_seconds": {"spent": 1, "total": 100}, "frontier": frontier})
    assert step(junior, mine, status) == ("results", {})  # where is the frontier now?
    assert step(junior, mine, "exit status 0\n") == ("run", {"command": "git reset -q --hard abc123"})
    assert step(junior, mine, "exit status 0\n") == ("run", {"command": "git apply programs/reseed.patch"})
    name, args = step(junior, mine, "committed 1234567890: 1 file(s): trainer/model.py")
    assert name == "git_commit" and args["message"].startswith("reseed")
    name, args = step(junior, mine, "experiment 7 (reseed, ...): 2 runs queued")
    assert name == "submit_experiment" and args["arm"] == "reseed" and args["overrides"] == {}
    stale = {"outcome": "stale", "verdict": "stale (measured against baseline; frontier-1 is the frontier now: "
             "submit it again against that)", "delta": None, "n": 0, "p": None, "level": None}
    answer = {"compute_seconds": {"spent": 2, "total": 100}, "pending_runs": 0,
              "experiments": [{"experiment": 7, "decision": stale}]}
    assert step(junior, mine, json.dumps(answer)) == ("results", {"experiment": 7, "wait_seconds": 60})
    # the frontier moved under it: tried again, under a new name, on the new frontier
    assert step(junior, mine, status)[0] == "results"
    assert step(junior, mine, "exit status 0\n")[1]["command"] == "git reset -q --hard abc123"
    assert step(junior, mine, "exit status 0\n")[0] == "run"   # the patch again
    assert step(junior, mine, "committed 2345678901: 1 file(s): trainer/model.py")[0] == "git_commit"
    name, args = step(junior, mine, "experiment 9 (reseed-again2, ...): 2 runs queued")
    assert name == "submit_experiment" and args["arm"] == "reseed-again2"


def test_a_try_the_budget_left_cannot_pay_for_ends_the_researchers_tries_and_it_finishes():
    """An improvement program's budget held back a keep's fresh seeds, so the next try waited for
    good: no run was running to free any, and the researcher asked for its results every minute
    (a launch of improve.yaml sat so, 8 runs queued, until stopped). Now it reports the try not
    run, tries nothing more, and finishes with the frontier's story."""
    candidates = [{"name": "eps", "overrides": {"adam_eps": 1e-8}}, {"name": "cap", "overrides": {"softcap": 5}}]
    spec = tiny_program([{"name": "solo", "role": "researcher"}], variants=[],
                        claim={"kind": "improve", "fresh_seeds": 0}, candidates=candidates)
    model, history = ScriptedModel(Program.model_validate(spec), "solo"), [{"kind": "user", "text": "Start."}]
    assert step(model, history, "standup written")[0] == "write_standup"
    frontier = {"arm": "frontier-1", "experiment": 3, "commit": "abc123", "overrides": {"matrix_lr": 0.02}, "kept": ["lr"]}
    status = {"compute_seconds": {"spent": 4525, "total": 6000, "waiting_for_budget": [], "stuck": False}, "running_runs": 0,
              "frontier": frontier, "experiments": [], "pending_runs": 0}
    assert step(model, history, json.dumps(status)) == ("results", {})
    assert step(model, history, "exit status 0\n")[0] == "run"  # git reset to the frontier
    assert step(model, history, "experiment 5 (eps, ...): 8 runs queued")[0] == "submit_experiment"
    waits = {**status, "pending_runs": 8, "experiments": [{"experiment": 5, "stage": "measuring"}],
             "compute_seconds": {**status["compute_seconds"], "waiting_for_budget": [5], "stuck": False}}
    stuck = {**waits, "compute_seconds": {**waits["compute_seconds"], "stuck": True}}  # nothing runs to free any
    for answer in (waits, stuck, waits, stuck):  # another's run may yet end, and the hold follow its cost
        assert step(model, history, json.dumps(answer)) == ("results", {"experiment": 5, "wait_seconds": 60})
    assert step(model, history, json.dumps(stuck)) == ("results", {"experiment": 5, "wait_seconds": 60})  # twice
    assert step(model, history, json.dumps(status)) == ("results", {})  # given up on: the next candidate's turn
    assert step(model, history, json.dumps(status)) == ("results", {})  # none: the story's status
    name, args = step(model, history, "posted")
    assert name == "post_to_board" and "- eps: not run: the compute budget left cannot pay for its runs" in args["text"]
    assert "- cap: not tried: the budget left pays for no try" in args["text"]
    assert step(model, history, "standup written")[0] == "write_standup"
    assert step(model, history, "standup written")[0] == "finish"


def test_a_verdict_that_needs_more_seeds_makes_the_scripted_researcher_ask_the_person_for_them():
    solo = Program.model_validate(tiny_program([{"name": "solo", "role": "researcher"}]))
    model, history = ScriptedModel(solo, "solo"), [{"kind": "user", "text": "Start."}]
    assert step(model, history, "standup written")[0] == "write_standup"
    assert step(model, history, "experiment 2 (no-softcap, ...): 2 runs queued")[0] == "submit_experiment"
    status = {"pending_runs": 0, "compute_seconds": {"spent": 10, "total": 600},
              "verdicts": [{"arm": "no-softcap", "versus": "baseline", "verdict": "inconclusive (needs 3 more seeds)",
                            "delta": -0.01, "n": 2},
                           {"arm": "softcap-5", "versus": "baseline", "verdict": "inconclusive (needs 1 more seed)",
                            "delta": 0.02, "n": 2}]}
    assert step(model, history, json.dumps(status))[0] == "results"
    name, args = step(model, history, "sent to human")
    assert (name, args["to"]) == ("send_message", "human")
    assert "no-softcap needs 3 more seeds; softcap-5 needs 1 more seed to" in args["text"], args["text"]
    assert "`org extend tiny --seeds 2,3,4`" in args["text"]
    assert step(model, history, "posted")[0] == "post_to_board"  # then the verdicts as they stand
