"""HumanEval: the package's data file, offline; canonical solutions pass and wrong ones fail in the
sandbox the distill verifier uses; the completion and chat plumbing around it."""

from __future__ import annotations

import pytest

from stages.eval import humaneval
from stages.eval.config import HumanEvalSuite
from stages.eval.generation import load_model

CFG = HumanEvalSuite(samples=2, pass_at=[1, 2])


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems(3)


def test_loads_the_164_tasks_offline_in_order():
    every = humaneval.load_problems()
    assert len(every) == 164 and every[0]["task_id"] == "HumanEval/0" and every[163]["task_id"] == "HumanEval/163"
    assert {"prompt", "canonical_solution", "test", "entry_point"} <= set(every[0])


def test_canonical_solution_scores_one_and_a_wrong_one_zero(problems):
    right = [(p["task_id"], p["prompt"] + p["canonical_solution"]) for p in problems for _ in range(2)]
    metrics, records = humaneval.score_programs(problems, right, CFG)
    assert metrics["humaneval/pass_at_1"] == 1.0 and metrics["humaneval/pass_at_2"] == 1.0
    assert all(r["verdict"] == "correct" for r in records)

    wrong = [(p["task_id"], p["prompt"] + "    return None\n") for p in problems for _ in range(2)]
    metrics, records = humaneval.score_programs(problems, wrong, CFG)
    assert metrics["humaneval/pass_at_1"] == 0.0 and metrics["humaneval/pass_at_2"] == 0.0
    assert {r["verdict"] for r in records} == {"wrong"}


def test_one_right_sample_of_two_is_pass_at_1_half_and_pass_at_2_one(problems):
    p = problems[0]
    metrics, _ = humaneval.score_programs([p], [(p["task_id"], p["prompt"] + p["canonical_solution"]),
                                                (p["task_id"], p["prompt"] + "    return 0\n")], CFG)
    assert metrics["humaneval/pass_at_1"] == 0.5 and metrics["humaneval/pass_at_2"] == 1.0


def test_an_escape_attempt_is_a_failure_not_a_crash(problems):
    p = problems[0]
    hostile = p["prompt"] + "    import os\n    os.system('touch /tmp/pwned')\n    return True\n"
    metrics, records = humaneval.score_programs([p], [(p["task_id"], hostile)] * 2, CFG)
    assert metrics["humaneval/pass_at_1"] == 0.0 and records[0]["verdict"] in ("wrong", "error")


def test_completions_stop_at_the_next_top_level_block():
    body = "    return sorted(x)\n"
    assert humaneval.truncate_completion(body + "\ndef other():\n    pass\n") == body
    assert humaneval.truncate_completion(body + "\nif __name__ == '__main__':\n    main()") == body
    assert humaneval.truncate_completion(body + "\n# tests\nprint(1)") == body
    assert humaneval.truncate_completion(body) == body


def test_chat_answers_keep_the_prompt_imports(problems):
    p = problems[0]                       # from typing import List / def has_close_elements(...)
    full = f"```python\ndef {p['entry_point']}(numbers, threshold):\n{p['canonical_solution']}```"
    program = humaneval.program_from_chat(p, "Here it is:\n" + full)
    assert program.startswith("from typing import List") and humaneval.check_program(
        p, program, humaneval.SandboxLimits()).correct
    body_only = f"```python\n{p['canonical_solution']}```"
    assert humaneval.check_program(p, humaneval.program_from_chat(p, body_only), humaneval.SandboxLimits()).correct
    assert humaneval.program_from_chat(p, "no code at all") is None


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_a_tiny_model_runs_end_to_end(models, problems, mode):
    lm = load_model(models["random"])
    cfg = HumanEvalSuite(samples=2, pass_at=[1, 2], mode=mode, sampling={"max_new_tokens": 16})
    metrics, records = humaneval.evaluate(lm, problems[:2], cfg, seed=0, log=lambda _: None)
    assert metrics["humaneval/samples"] == 4 and metrics["humaneval/pass_at_1"] == 0.0   # random weights
    assert {r["finish_reason"] for r in records} <= {"stop", "length"}
    again, _ = humaneval.evaluate(lm, problems[:2], cfg, seed=0, log=lambda _: None)
    assert again == metrics
