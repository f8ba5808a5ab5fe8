"""
`org ablate`: each kept change of an improvement program taken out of its frontier (org/improve.py
keeps them; org/improve_story.py tells what the leave-one-out runs say).

    leave_one_out(ledger, lab, program, who) -> the new experiments, frontier-N-without-K
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from org.improve import frontier, frontiers, lineage, patched
from org.lab import Lab
from org.ledger import Ledger
from org.program import Program


def leave_one_out(ledger: Ledger, lab: Lab, program: Program, who: str) -> list[dict]:
    """For each kept try K, the frontier without K (arm frontier-N-without-K): K's code change taken out of
    the frontier's commit and K's own overrides set back to what the frontier before it had, run
    on every seed beside the frontier. Does each kept change still help in the stack? (A change
    later tries build on may not come out: refused, saying so.) Returns the new experiments."""
    experiments = ledger.experiments(program.name)
    front, made = frontier(experiments), []
    for kept in [e for e in lineage(experiments) if e["decision"]["outcome"] == "kept"]:
        before = next(f for f in frontiers(experiments) if f["arm"] == kept["versus"])
        theirs, mine = json.loads(before["overrides"]), json.loads(kept["overrides"])
        overrides = json.loads(front["overrides"])
        for key in [k for k in mine if theirs.get(k) != mine[k]]:  # K's own keys, as they were
            if key in theirs:
                overrides[key] = theirs[key]
            else:
                overrides.pop(key, None)
        commit, why = front["code_commit"], None
        if kept["code_commit"] != before["code_commit"]:
            with tempfile.NamedTemporaryFile("w", suffix=".patch") as f:
                f.write(lab.repo.git.diff("--binary", "--no-ext-diff", "--no-textconv", before["code_commit"],
                                          kept["code_commit"]) + "\n")
                f.flush()
                commit, why = patched(lab, front["code_commit"], Path(f.name), reverse=True)
        why = why and f"{kept['arm']}'s code cannot be taken out of {front['arm']}'s ({why}): later tries build on it"
        arm = f"{front['arm']}-without-{kept['arm']}"
        if all(e["arm"] != arm for e in experiments):  # once per frontier: again, it is the same question
            made.append(submit_ablation(ledger, program, arm, front, commit or front["code_commit"], overrides,
                                        who, why, kept))
    return made


def submit_ablation(ledger, program, arm, front, commit, overrides, who, why, kept) -> dict:
    with ledger.tx():
        new_id = ledger.add_experiment(
            program.name, arm, who=who, source="ablation", base_commit=front["base_commit"], code_commit=commit,
            overrides=overrides, stage="refused" if why else "measuring", reason=why, versus=front["arm"],
            hypothesis=f"{front['arm']} without {kept['arm']} (experiment {kept['id']}): does it still help?")
    return ledger.experiment(new_id)
