"""The built-in procedural teacher: correct, short, regular traces; controllable errors."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from stages.common.problems import ProblemsConfig, build_split
from stages.common.verify import verify
from stages.distill.teachers import ProceduralTeacherConfig, approx_tokens, build_teacher, split_think
from stages.distill.teachers.procedural import arithmetic_trace, countdown_trace, linear_trace


@pytest.fixture(scope="module")
def problems():
    return build_split(ProblemsConfig(n_train=300, n_heldout=30), seed=0).train


def test_error_free_teacher_is_always_right(problems):
    t = build_teacher(ProceduralTeacherConfig(error_rate=0.0))
    for p in problems:
        [c] = t.complete(p, 1)
        assert c.think_blocks == 1 and c.reasoning and "<think>" not in c.content
        v = verify(p, c.content)
        assert v.correct, (p.prompt, c.reasoning, c.content, v)


def test_traces_are_short(problems):
    t = build_teacher(ProceduralTeacherConfig(error_rate=0.0, max_trace_tokens=300))
    lengths = [approx_tokens(c.reasoning) for p in problems for c in t.complete(p, 1)]
    assert max(lengths) <= 300 and sum(lengths) / len(lengths) < 120


def test_error_rate_injects_wrong_answers_at_about_that_rate(problems):
    t = build_teacher(ProceduralTeacherConfig(error_rate=0.3))
    outs = [(p, c) for p in problems[:150] for c in t.complete(p, 2)]
    wrong = [not verify(p, c.content).correct for p, c in outs]
    injected = [c.meta["injected_error"] for _, c in outs]
    assert wrong == injected  # every injected error is caught, nothing else fails
    assert 0.2 < sum(wrong) / len(wrong) < 0.4


def test_format_errors_can_be_injected(problems):
    t = build_teacher(ProceduralTeacherConfig(error_rate=0.0, format_error_rate=1.0))
    modes = {c.meta["injected_format_error"] for p in problems[:60] for c in t.complete(p, 1)}
    assert modes == {"no_answer", "two_blocks", "no_reasoning"}


def test_sampling_is_deterministic_per_seed(problems):
    t = build_teacher(ProceduralTeacherConfig(error_rate=0.5))
    p = problems[0]
    assert [c.content for c in t.complete(p, 8, seed=1)] == [c.content for c in t.complete(p, 8, seed=1)]
    assert [c.content for c in t.complete(p, 8, seed=1)] != [c.content for c in t.complete(p, 8, seed=2)]


def _column_results(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines for m in [re.search(r"= (\d+)(,|$)", line)] if m]


@pytest.mark.parametrize("a,b", [(478, 96), (999, 1), (0, 0), (5, 123456), (47, 38), (5, 74)])
def test_addition_trace_is_compact_column_arithmetic(a, b):
    lines, r = arithmetic_trace(a, "+", b)
    assert r == a + b and lines[0] == f"{a} + {b}" and lines[-1] == f"= {a + b}"
    sums = _column_results(lines[1:-1])           # one line per column, right to left
    assert len(sums) == max(len(str(a)), len(str(b)))
    assert int(str(sums[-1]) + "".join(str(s % 10) for s in reversed(sums[:-1]))) == a + b
    assert not any(w in " ".join(lines) for w in ("column", "Result", "write"))   # no template words


@pytest.mark.parametrize("a,b", [(478, 96), (100, 99), (12, 478), (7, 7), (43, 8), (2, 9)])
def test_subtraction_trace(a, b):
    lines, r = arithmetic_trace(a, "-", b)
    assert r == a - b and lines[0] == f"{a} - {b}" and lines[-1] == f"= {a - b}"
    if a < b:
        assert lines[1] == f"= -({b} - {a})"
    digits = _column_results(lines[2 if a < b else 1:-1])
    assert int("".join(map(str, reversed(digits)))) == abs(a - b)


def test_borrow_is_shown_on_the_column_that_needs_it():
    lines, _ = arithmetic_trace(43, "-", 8)
    assert lines == ["43 - 8", "13 - 8 = 5, borrow 1", "4 - 0 - 1 = 3", "= 35"]
    lines, _ = arithmetic_trace(62, "+", 78)
    assert lines == ["62 + 78", "2 + 8 = 10", "6 + 7 + 1 = 14", "= 140"]


@pytest.mark.parametrize("a,b", [(478, 96), (12, 5), (99, 99), (305, 40)])
def test_multiplication_trace(a, b):
    lines, r = arithmetic_trace(a, "*", b)
    assert r == a * b and lines[-1] == f"Result: {a * b}."
    compact, r2 = arithmetic_trace(a, "*", b, detailed=False)
    assert r2 == a * b and len(" ".join(compact)) <= len(" ".join(lines))


@pytest.mark.parametrize("a,b,c", [(3, 7, 22), (-4, -3, 6), (1, 5, 2), (-1, 0, 4), (6, 0, 9)])
def test_linear_trace(a, b, c):
    lines, x = linear_trace(a, b, c)
    assert a * x + b == c and x == Fraction(c - b, a)


def test_countdown_trace_narrates_dead_ends_then_the_solution():
    lines, expr = countdown_trace([3, 7, 25, 50], 375, dead_ends=2)
    assert lines[-1] == "Reached 375." and expr
    assert sum("dead end" in line for line in lines) <= 2
    assert eval(expr) == 375  # noqa: S307 - our own solver's output, digits and operators only


def test_split_think_handles_every_layout():
    assert split_think("<think>\nr\n</think>\n\nanswer") == ("r", "answer", 1)
    assert split_think("r\n</think>\nanswer") == ("r", "answer", 1)      # template opened <think>
    assert split_think("<think>\nunfinished") == ("unfinished", "", 1)   # cut off mid-thought
    assert split_think("just an answer") == (None, "just an answer", 0)
    assert split_think("<think>a</think><think>b</think>x")[2] == 2
