"""Program files: what a valid one looks like, and the one-line errors for bad ones."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

from org.program import ProgramError, load_program
from org.program_checks import check_with_trainer
from trainer.shards import write_llmc_shard, write_llmc_tokenizer
from trainer.tokenizer import byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """\
name: tiny
question: does the softcap matter?
claim: {kind: non-inferiority, margin: 0.01}
baseline: {preset: nanochat, overrides: {depth: 1}}
variants:
  - {name: no-softcap, overrides: {softcap: 0}}
data: {val_tokens: 2048}
budget:
  per_run: {steps: 3}
  seeds: [0, 1]
  total_compute_seconds: 60
  run_timeout_seconds: 30
train: {batch_size: 4, seq_len: 64}
"""


def write(tmp_path, text):
    path = tmp_path / "prog.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path, text) -> str:
    with pytest.raises(ProgramError) as e:
        load_program(write(tmp_path, text))
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "prog.yaml") + ": ")
    return message


def test_softcap_program_is_valid_and_accepted_by_the_trainer():
    program = load_program(ROOT / "programs" / "softcap.yaml")
    assert program.name == "softcap" and program.claim.kind == "non-inferiority"
    assert program.claim.margin > 0
    assert program.arms == ["baseline", "no-softcap", "softcap-4"]
    assert program.variant("no-softcap").overrides == {"softcap": 0}
    assert program.variant("softcap-4").control == "worse"  # the positive control
    assert program.org.topology == "chief" and len(program.org.agents) == 3
    assert program.budget.per_run.kind in ("flops", "seconds")
    assert len(program.budget.seeds) >= 2
    assert {a.backend for a in program.org.agents} == {"scripted"}  # runs with no API key
    assert "trainer/eval.py" in program.protected and "org/" in program.protected
    check_with_trainer(program)


def test_an_agents_prompt_says_what_its_models_code_may_import_on_any_data():
    """A run's box holds the stdlib modules its base's runs load and the run packages alone, as
    bytecode, on every program (sandbox.run_box, sourceless.runs_tree): an agent of a file-source
    program is told so, as one of pystdlib's is (it was told that runs import what is installed here)."""
    from org.agents.roles import system_prompt
    program = load_program(ROOT / "programs" / "softcap.yaml")
    on_text = program.model_copy(update={"data": program.data.model_copy(update={"source": "corpus.txt"})})
    for prompt in (system_prompt(p, "junior-1") for p in (program, on_text)):
        assert "they import only the stdlib modules the base commit's runs load (collections, json, re, functools, " \
               "heapq, random and the like; not statistics, decimal, queue or asyncio), numpy, numba, scipy, tokenizers, " \
               "pyyaml and what those require, not torch" in " ".join(prompt.split()), prompt


def test_defaults_fill_in_the_rest(tmp_path):
    program = load_program(write(tmp_path, MINIMAL))
    assert program.metric == "val_bpb"
    assert program.data.source == "pystdlib" and program.data.tokenizer == "bytes"
    assert program.runner.slots == 1 and program.org.topology == "solo"
    assert program.tuning_seeds == [0] and program.grid_points() == [{}]
    assert program.protected == ["trainer/eval.py", "trainer/data.py", "trainer/shards.py", "trainer/tokenizer.py",
                                 "trainer/flops.py", "org/"]


def test_tune_grid_expands_to_every_combination(tmp_path):
    program = load_program(write(tmp_path, MINIMAL + "tune: {matrix_lr: [0.01, 0.02], softcap: [10, 20]}\n"
                                                     "tune_seeds: [5]\n"))
    assert len(program.grid_points()) == 4 and {"matrix_lr": 0.02, "softcap": 10} in program.grid_points()
    assert program.tuning_seeds == [5]


def test_malformed_yaml_names_the_line(tmp_path):
    message = error_of(tmp_path, MINIMAL + "oops: [unclosed\n")
    assert "malformed YAML" in message and "line" in message


def test_unknown_top_level_field_lists_the_valid_ones(tmp_path):
    message = error_of(tmp_path, MINIMAL + "budgett: {}\n")
    assert "budgett: unknown field; expected one of name, question, claim" in message


def test_unknown_nested_field(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("{steps: 3}", "{steps: 3, epochs: 2}"))
    assert "budget.per_run.epochs: unknown field; expected one of flops, seconds, tokens, steps" in message


def test_unknown_field_in_a_list_item(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("{name: no-softcap,", "{name: no-softcap, colour: red,"))
    assert "variants[0].colour: unknown field; expected one of name, overrides, ref" in message


def test_exactly_one_per_run_budget(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("{steps: 3}", "{steps: 3, flops: 1.0e+9}"))
    assert "budget.per_run: expected exactly one of flops, seconds, tokens, steps, got flops, steps" in message


def test_missing_field(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("  run_timeout_seconds: 30\n", ""))
    assert "budget.run_timeout_seconds: missing" in message


def test_claim_kind_and_margin(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("kind: non-inferiority", "kind: equivalence"))
    assert "claim.kind: expected 'non-inferiority', 'superiority' or 'improve', got 'equivalence'" in message
    message = error_of(tmp_path, MINIMAL.replace(", margin: 0.01", ""))
    assert "claim: a non-inferiority claim needs margin > 0" in message


def test_variant_may_not_touch_what_the_program_owns(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("{softcap: 0}", "{softcap: 0, steps: 1000}"))
    assert "variants[0].overrides: 'steps' is owned by the program" in message


def test_seeds_must_be_distinct_and_numbers_typed(tmp_path):
    assert "budget.seeds: expected distinct seeds" in error_of(tmp_path, MINIMAL.replace("[0, 1]", "[1, 1]"))
    message = error_of(tmp_path, MINIMAL.replace("batch_size: 4", "batch_size: four"))
    assert "train.batch_size: expected a valid integer" in message and "'four'" in message


def test_the_trainer_judges_the_baseline_and_variants(tmp_path):
    program = load_program(write(tmp_path, MINIMAL.replace("{softcap: 0}", "{softcapp: 0}")))
    with pytest.raises(ProgramError, match=r"prog.yaml: variants\[0\].overrides: the trainer rejects "
                                           r"it: unknown config key 'softcapp'"):
        check_with_trainer(program, source="prog.yaml")
    program = load_program(write(tmp_path, MINIMAL.replace("preset: nanochat", "preset: llama")))
    with pytest.raises(ProgramError, match="baseline.preset: the trainer rejects it: unknown preset 'llama'"):
        check_with_trainer(program)


def test_a_top_level_list_is_not_a_program(tmp_path):
    assert "expected a mapping" in error_of(tmp_path, "- name: x\n")


@pytest.mark.parametrize("change, message", [
    # each once loaded without a word, or failed with a traceback
    (("margin: 0.01", "margin: .nan"), "claim.margin: expected a finite number, got nan"),
    (("per_run: {steps: 3}", "per_run: {flops: .inf}"), "budget.per_run.flops: expected a finite number, got inf"),
    (("run_timeout_seconds: 30", "run_timeout_seconds: .inf"), "budget.run_timeout_seconds: expected a finite number"),
    # a CPU rlimit past a C long: the runner's box failed with a traceback, for every run, at every restart
    (("run_timeout_seconds: 30", "run_timeout_seconds: 1e18"), "budget.run_timeout_seconds: expected less than or equal to 604800"),
    (("seeds: [0, 1]", "seeds: [-1, 1]"), "budget.seeds: expected seeds from 0 to 2**63-1, got [-1, 1]"),
    (("run_timeout_seconds: 30", "run_timeout_seconds: 30\n  measure_grace_seconds: -1"),
     "budget.measure_grace_seconds: expected greater than or equal to 0, got -1"),
    (("name: tiny\n", "name: tiny\nname: other\n"), "malformed YAML at line 2, column 1: duplicate key 'name'"),
    (("{steps: 3}", "{steps: 3, steps: 4}"), "duplicate key 'steps'"),
    # a GPU program with no GPU named: every run failed ("no usable CUDA GPU"), one after another
    (("seq_len: 64}", "seq_len: 64, device: cuda}"), "train.device cuda needs runner.gpus"),
    (("seq_len: 64}", "seq_len: 64}\nrunner: {gpus: [1, 1]}"), "runner.gpus: expected distinct GPU indices from 0, got [1, 1]"),
    (("seq_len: 64}", "seq_len: 64}\nrunner: {gpus: [-1]}"), "runner.gpus: expected distinct GPU indices from 0"),
    # each once named the wrong place ("claim: fresh_seeds: ...") or said "got" twice
    (("margin: 0.01}", "margin: 0.01, fresh_seeds: 1}"), "claim.fresh_seeds: expected 0 (none) or 2 and more"),
    (("margin: 0.01}", "margin: 0.01, fresh_seeds: 2.5}"), "claim.fresh_seeds: expected a valid integer, got 2.5"),
    # found by a bad-input hunt (session 35): a runner that spun for good, or a traceback
    (("seq_len: 64}", "seq_len: 64}\nrunner: {threads_per_slot: 1000000000000000000000000000000}"),
     "runner.threads_per_slot: expected less than or equal to 1024"),
    (("seq_len: 64}", "seq_len: 64}\nrunner: {slots: 1000000000000000000000000000000}"), "runner.slots: expected less than"),
    (("seq_len: 64}", "seq_len: 64}\nrunner: {memory_gb: 1e-300}"), "runner.memory_gb: expected greater than or equal to 0.25"),
    (("val_tokens: 2048", "val_tokens: " + "9" * 5000), "YAML this program cannot hold (Exceeds the limit (4300 digits)"),
    (("name: tiny", "name: tiny\nx: " + "[" * 5000 + "]" * 5000), "YAML this program cannot hold ("),
    (("seq_len: 64}", "seq_len: 64}\nprotected: [\"trainer/\\0eval.py\"]"),
     "protected: 'trainer/\\x00eval.py': expected a path inside the repository"),
    (("seeds: [0, 1]", "seeds: [true, false]"), "budget.seeds[0]: expected a valid integer, got True"),
    (("seeds: [0, 1]", "seeds: ['1', '2']"), "budget.seeds[0]: expected a valid integer, got '1'"),
    (("seq_len: 64}", "seq_len: 64}\norg: {agents: [{name: ann, role: cheif}]}"),
     "org.agents[0].role: expected one of chief, junior, researcher (a prompt in org/prompts/), got 'cheif'"),
    (("name: tiny", "name: " + "x" * 100_000), "... (100002 characters)"),
    (("{softcap: 0}}", "{softcap: 0}, ref: ''}"), "variants[0].ref: String should have at least 1 character"),
])
def test_non_finite_numbers_negative_seeds_and_duplicate_keys_are_refused(tmp_path, change, message):
    assert message in error_of(tmp_path, MINIMAL.replace(*change))


def test_yaml_merge_keys_merge_and_a_key_given_twice_is_still_refused(tmp_path):
    """`<<: *shared` was "malformed YAML ... could not determine a constructor" (session 44's hunt)."""
    text = MINIMAL.replace("train: {batch_size: 4, seq_len: 64}",
                           "train: {<<: {batch_size: 4, seq_len: 32}, seq_len: 64}")  # (the key given here wins)
    program = load_program(write(tmp_path, text))
    assert (program.train.batch_size, program.train.seq_len) == (4, 64)
    twice = MINIMAL.replace("train: {batch_size: 4, seq_len: 64}", "train: {<<: {batch_size: 4}, seq_len: 64, seq_len: 32}")
    assert "duplicate key 'seq_len'" in error_of(tmp_path, twice)


def test_an_error_line_stays_short_whatever_the_file_holds(tmp_path):
    """A name made by YAML anchors six levels deep was 5.2 MB, and the error repeated it on one line."""
    bomb = "a: &a " + "x" * 40 + "\n" + "".join(f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n"
                                              for p, c in zip("abcdef", "bcdefg"))
    message = error_of(tmp_path, MINIMAL.replace("name: tiny\n", "") + bomb + "name: *g\n")
    assert len(message) < 1000 and "name: expected a valid string" in message, message[:300]


def test_a_program_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "prog.yaml"
    path.write_bytes(b"# \xff\xfe\n" + MINIMAL.encode())
    with pytest.raises(ProgramError, match=r"prog.yaml: not UTF-8 text \(byte 0xff at offset 2\)$"):
        load_program(path)


def test_a_flop_budget_smaller_than_one_step_is_refused_before_any_run(tmp_path):
    program = load_program(write(tmp_path, MINIMAL.replace("{steps: 3}", "{flops: 1000}")))
    with pytest.raises(ProgramError, match=r"^prog: budget.per_run.flops: 1000 is smaller than one step of the "
                                           r"baseline \(.* flops at batch_size 4 x seq_len 64\)$"):
        check_with_trainer(program, "prog")
    tokens = load_program(write(tmp_path, MINIMAL.replace("{steps: 3}", "{tokens: 255}")))
    with pytest.raises(ProgramError, match="255 is smaller than one step"):
        check_with_trainer(tokens, "prog")
    check_with_trainer(load_program(write(tmp_path, MINIMAL.replace("{steps: 3}", "{tokens: 256}"))), "prog")
    huge = load_program(write(tmp_path, MINIMAL.replace("{steps: 3}", "{flops: 1e9}").replace("seq_len: 64", "seq_len: 1000000000000")
                                         .replace("val_tokens: 2048", "val_tokens: 1000000000000")))
    with pytest.raises(ProgramError, match=r"^prog: train.seq_len 1000000000000 and data.tokenizer bytes: the trainer "
                                           r"rejects the baseline: .* more than 1e\+12 parameters"):
        check_with_trainer(huge, "prog")  # (it was a traceback)


def test_a_data_source_that_matches_nothing_is_named(tmp_path):
    from org.program_checks import data_source_problem
    assert data_source_problem("pystdlib", tmp_path) is None
    (tmp_path / "texts").mkdir()  # (an empty folder, a 2-byte file: started, every run an `error`, the name spent)
    assert data_source_problem("texts", tmp_path) == "'texts' holds no text files"
    (tmp_path / "texts" / "a.dat").write_bytes(b"\0" * 100)
    (tmp_path / "texts" / ".hidden.txt").write_text("x" * 10_000)
    os.mkfifo(tmp_path / "texts" / "a-pipe.txt")
    assert data_source_problem("texts", tmp_path, 64) == "'texts' holds no text files"
    (tmp_path / "texts" / "small.txt").write_text("ab")
    assert data_source_problem("texts", tmp_path, 64) == ("'texts' holds 2 bytes of text: its val split (about a twentieth) "
                                                          "holds no window of train.seq_len 64; at least 1300 bytes")
    (tmp_path / "texts" / "more.txt").write_text("words " * 300)
    assert data_source_problem("texts", tmp_path, 64) is None                   # the lab's, relative
    assert data_source_problem(str(tmp_path / "texts"), Path("/"), 64) is None   # absolute
    for lab_itself in ("", ".", str(tmp_path.parent)):  # its text the ledger and the harness's data
        assert "holds the lab itself" in data_source_problem(lab_itself, tmp_path), lab_itself
    (tmp_path / "empty.txt").write_text("")
    for nothing in ("/dev/zero", "empty.txt"):
        assert "is not a file of text or a folder (a device, or empty)" in data_source_problem(nothing, tmp_path)
    assert "'shards/*.bin' matches no file or folder" in data_source_problem("shards/*.bin", tmp_path)
    # llm.c shards of GPT-2 ids with no tokenizer file: every run trained, and had no val_bpb
    (tmp_path / "shards").mkdir()
    write_llmc_shard(tmp_path / "shards" / "x_train_000001.bin", np.arange(100))
    write_llmc_shard(tmp_path / "shards" / "x_val_000000.bin", np.arange(100))
    assert data_source_problem("shards/*.bin", tmp_path) == (
        "'shards/*.bin' is llm.c shards with no gpt2_tokenizer.bin or tokenizer.bin beside them: val_bpb needs "
        "the bytes of each token id (llm.c's data scripts write gpt2_tokenizer.bin)")
    assert "no gpt2_tokenizer.bin" in data_source_problem(str(tmp_path / "shards"), Path("/"))
    write_llmc_tokenizer(tmp_path / "shards" / "tokenizer.bin", byte_tokenizer())
    assert data_source_problem("shards/*.bin", tmp_path) is None


def test_an_override_is_a_name_and_text_a_command_line_carries():
    """Overrides become the trainer's `--set key=value`: a NUL or a lone surrogate there (an
    agent's submit_experiment, whose values were checked for their type only) made the runner's
    Popen raise, which stopped the runner, again at every restart."""
    from org.program import owned_by_program
    for bad in ({"softcap": "a\x00b"}, {"softcap": "a\ud800"}, {"soft cap": 1}, {"softcap": "a\x1b]52;c;eA==\x07"}):
        assert "a key is a name (letters, digits, _ and .), a value a finite number" in owned_by_program(bad), bad
    assert owned_by_program({"softcap": 15, "matrix_lr": 0.02, "activation": "relu2", "qk_norm": True}) is None


def test_a_value_of_nested_yaml_aliases_is_named_without_being_written_out(tmp_path):
    """A 753-byte file whose question is a tree of aliases, each level ten of the one below: its
    error line repr'd the whole tree before cutting it (370 MB at 7 levels, x10 a level). Here 9
    levels: 10^9 strings as written out."""
    levels = ['&a0 ["xxxxxxxxxx", ' + ", ".join(['"xxxxxxxxxx"'] * 9) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = write(tmp_path, MINIMAL.replace("question: does the softcap matter?", f"question: [{', '.join(levels)}]"))
    t0 = time.monotonic()
    with pytest.raises(ProgramError, match=r"question: expected a valid string, got \[\['xxxxxxxxxx', "):
        load_program(path)
    assert time.monotonic() - t0 < 30  # (a generous bound: written out it never ends, or the machine's memory does)
