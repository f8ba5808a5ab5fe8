"""Orgs: a chief and two juniors talking over the mail files (replayed from scripts by the fake
server, all three loops running at once), and the scripted researcher (no model, no key)
running a program's declared plan solo and as a chief with juniors, against the real runner."""
import re
import threading

import pytest
from rich.console import Console

from agentlab import BackgroundRunner, lab_dir, make_project, tiny_program, worktree
from fakellm import Call, FakeLLM, Repeat, Text, said
from org.agents.anthropic_api import AnthropicModel
from org.agents.control import Control
from org.agents.loop import Agent, Settings
from org.agents.openai_api import OpenAIModel
from org.agents.scripted import ScriptedModel
from org.agents.tools import Limits
from org.ledger import Ledger
from org.mail import Mail

FAST = Settings(retry_base_seconds=0.01, limits=Limits(poll_seconds=0.05))
QUIET = Console(quiet=True)
VARIANTS = [{"name": "no-softcap", "overrides": {"softcap": 0}}, {"name": "no-qk-norm", "overrides": {"qk_norm": False}}]


def chief_script():
    return [
        [Text("Two ideas, one change each."),
         Call("post_to_board", {"text": "Plan: junior-a tests no-softcap, junior-b tests no-qk-norm; "
                                        "each against the baseline at the program's budget."})],
        [Call("send_message", {"to": "junior-a", "text": "Run no-softcap (softcap=0). Hypothesis: no regression."}),
         Call("send_message", {"to": "junior-b", "text": "Run no-qk-norm (qk_norm=false). Hypothesis: worse."})],
        Repeat([Call("read_inbox", {"wait_seconds": 30})],
               until=lambda body: said(body, "message from junior-a") and said(body, "message from junior-b")),
        [Call("results", {})],
        [Call("post_to_board", {"text": "Conclusion: both arms submitted by the juniors; verdicts pending "
                                        "the runner. Negative results will be reported as such."})],
        [Call("send_message", {"to": "all", "text": "Thanks, we are done."})],
        [Call("finish", {"summary": "conclusion posted"})],
    ]


def junior_script(arm: str, overrides: dict):
    return [
        Repeat([Call("read_inbox", {"wait_seconds": 30})], until=lambda body: said(body, "message from chief")),
        [Call("submit_experiment", {"arm": arm, "hypothesis": f"{arm} as the chief asked", "overrides": overrides})],
        [Call("send_message", {"to": "chief", "text": f"{arm} submitted; its runs are queued."})],
        [Call("write_standup", {"text": f"Submitted {arm} as assigned."})],
        [Call("finish", {"summary": f"{arm} submitted"})],
    ]


def run_all(agents: dict) -> dict:
    """Run agents (name -> Agent) in threads at once; returns name -> why it ended."""
    ended = {}
    threads = [threading.Thread(target=lambda n=n, a=a: ended.__setitem__(n, a.run())) for n, a in agents.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return ended


def test_a_chief_and_two_juniors_reach_a_conclusion_on_the_board(tmp_path):
    agents = [{"name": "chief", "role": "chief", "backend": "anthropic", "model": "claude-chief"},
              {"name": "junior-a", "role": "junior", "backend": "openai", "model": "gpt-junior-a"},
              {"name": "junior-b", "role": "junior", "backend": "openai", "model": "gpt-junior-b"}]
    root, program = make_project(tmp_path, tiny_program(agents, topology="chief", variants=VARIANTS), trainer=False)
    scripts = {"claude-chief": chief_script(),
               "gpt-junior-a": junior_script("no-softcap", {"softcap": 0}),
               "gpt-junior-b": junior_script("no-qk-norm", {"qk_norm": False})}
    with FakeLLM(scripts) as llm:
        models = {"chief": AnthropicModel("claude-chief", "k", base_url=llm.url),
                  "junior-a": OpenAIModel("gpt-junior-a", "k", base_url=llm.url + "/v1"),
                  "junior-b": OpenAIModel("gpt-junior-b", "k", base_url=llm.url + "/v1")}
        ended = run_all({name: Agent(name, program, root, worktree(root, program, name), model,
                                     console=QUIET, settings=FAST) for name, model in models.items()})
    assert ended == {"chief": "finished: conclusion posted", "junior-a": "finished: no-softcap submitted",
                     "junior-b": "finished: no-qk-norm submitted"}
    mail = Mail(lab_dir(root, program))
    board = mail.board()
    assert board.index("Plan: junior-a tests no-softcap") < board.index("Conclusion: both arms")
    assert re.search(r"## .* · chief\n\n> Conclusion", board)
    assert {m["from"] for m in mail.read_messages("chief")} == {"junior-a", "junior-b"}
    assert [m["text"] for m in mail.inbox("junior-a")] == ["Thanks, we are done."]
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        submitted = {(e["arm"], e["who"]) for e in ledger.experiments("tiny")}
    assert submitted == {("baseline", "program"), ("no-softcap", "junior-a"), ("no-qk-norm", "junior-b")}
    # the juniors' prompts name their chief and their role
    junior_system = next(r.body["messages"][0]["content"] for r in llm.requests if r.body["model"] == "gpt-junior-a")
    assert "Your chief is chief" in junior_system and "junior researcher" in junior_system


def test_the_scripted_researcher_runs_the_declared_plan_and_posts_the_verdicts(tmp_path):
    agents = [{"name": "solo", "backend": "scripted"}]
    root, program = make_project(tmp_path, tiny_program(agents, corpus="corpus"))
    with BackgroundRunner(root, program):
        agent = Agent("solo", program, root, worktree(root, program, "solo"), ScriptedModel(program, "solo"),
                      console=QUIET, settings=FAST)
        reason = agent.run()
    assert reason.startswith("finished: - no-softcap vs baseline: ")
    board = Mail(lab_dir(root, program)).board()
    assert "Conclusion for tiny" in board and "- no-softcap vs baseline: " in board and "(n=2)" in board
    assert len(Mail(lab_dir(root, program)).standups("solo")) == 2
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        assert {(e["arm"], e["source"]) for e in ledger.experiments("tiny")} == {("baseline", "declared"),
                                                                              ("no-softcap", "declared")}
        assert all(r["status"] == "completed" for r in ledger.runs("tiny"))
        assert ledger.spend("tiny")["dollars"] == 0


@pytest.mark.slow
def test_a_scripted_chief_splits_the_variants_among_scripted_juniors(tmp_path):
    agents = [{"name": "chief", "role": "chief"}, {"name": "junior-a", "role": "junior"},
              {"name": "junior-b", "role": "junior"}]
    root, program = make_project(tmp_path, tiny_program(agents, topology="chief", corpus="corpus", variants=VARIANTS))
    with BackgroundRunner(root, program):
        ended = run_all({name: Agent(name, program, root, worktree(root, program, name),
                                     ScriptedModel(program, name), console=QUIET, settings=FAST)
                         for name in ("chief", "junior-a", "junior-b")})
    assert all(reason.startswith("finished: ") for reason in ended.values()), ended
    board = Mail(lab_dir(root, program)).board()
    assert "Assignments: junior-a: no-softcap; junior-b: no-qk-norm" in board
    conclusion = board[board.index("Conclusion for tiny"):]
    assert "- no-softcap vs baseline: " in conclusion and "- no-qk-norm vs baseline: " in conclusion
    with Ledger(lab_dir(root, program) / "ledger.sqlite") as ledger:
        who = {e["arm"]: e["who"] for e in ledger.experiments("tiny")}
    assert who == {"baseline": "program", "no-softcap": "junior-a", "no-qk-norm": "junior-b"}
    assert all(Control(lab_dir(root, program), n).state()["state"] == "stopped" for n in ended)
