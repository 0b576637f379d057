"""The built-in offline teacher: it solves each problem by the book and narrates the steps.

Traces are short and rigidly formatted (one step per line, the same words every time) so a
tiny model can learn them from a few thousand examples:

    arithmetic  column addition with carries / subtraction with borrows / long multiplication
                with one partial product per digit, each done digit by digit with carries
    linear      undo the constant, then divide by the coefficient, reduce the fraction
    countdown   the depth-first search: a few dead-end branches, then the winning path
    code        the task, the plan, one test worked through; the code goes in the answer

The answer follows ``</think>`` as ``... = \\boxed{...}`` (math, countdown) or one ```python
block (code). ``error_rate`` makes a share of samples end in a wrong answer (as an
imperfect teacher would), and ``format_error_rate`` a share with a broken format, so
rejection sampling has something to reject.
"""

from __future__ import annotations

import random
from fractions import Fraction

from stages.common.problems import Problem, rng_for
from stages.common.problems.countdown import solve as solve_countdown
from stages.distill.teachers.base import Completion, Teacher, approx_tokens
from stages.distill.teachers.config import ProceduralTeacherConfig

# -- arithmetic ----------------------------------------------------------------------------

def _digits(n: int) -> list[int]:
    """Least significant first."""
    return [int(d) for d in reversed(str(n))]


def _columns(a: int, b: int) -> tuple[list[int], list[int]]:
    """Both operands' digits, least significant first, padded to the same length."""
    da, db = _digits(a), _digits(b)
    n = max(len(da), len(db))
    return da + [0] * (n - len(da)), db + [0] * (n - len(db))


def addition_steps(a: int, b: int) -> tuple[list[str], int]:
    """One line per column, right to left: ``x + y (+ carry) = s`` (the carry term from the second
    column on, so every column after the first reads the same); the sum is the last column's s
    followed by the other columns' last digits."""
    da, db = _columns(a, b)
    lines, carry = [], 0
    for i, (x, y) in enumerate(zip(da, db, strict=True)):
        s = x + y + carry
        lines.append(f"{x} + {y} = {s}" if i == 0 else f"{x} + {y} + {carry} = {s}")
        carry = s // 10
    return lines, a + b


def subtraction_steps(a: int, b: int) -> tuple[list[str], int]:
    """a >= b >= 0, one line per column, right to left: ``x - y (- borrow) = d, borrow k`` where x
    already holds the borrowed ten (``13 - 7 = 6, borrow 1``)."""
    da, db = _columns(a, b)
    lines, borrow = [], 0
    for i, (x, y) in enumerate(zip(da, db, strict=True)):
        last = i == len(da) - 1
        need = x - borrow < y
        x_shown = x + 10 if need else x
        d = x_shown - y - borrow
        lhs = f"{x_shown} - {y}" if i == 0 else f"{x_shown} - {y} - {borrow}"
        lines.append(f"{lhs} = {d}" if last else f"{lhs} = {d}, borrow {int(need)}")
        borrow = int(need)
    return lines, a - b


def multiply_digit_steps(a: int, d: int) -> tuple[list[str], int]:
    lines, carry, out = [], 0, []
    for x in _digits(a):
        s = x * d + carry
        lines.append(f"{x} * {d} + {carry} = {s}, write {s % 10}, carry {s // 10}.")
        out.append(s % 10)
        carry = s // 10
    if carry:
        lines.append(f"Final carry {carry}, write {carry}.")
        out.append(carry)
    return lines, int("".join(map(str, reversed(out))))


def arithmetic_trace(a: int, op: str, b: int, detailed: bool = True) -> tuple[list[str], int]:
    """Compact column arithmetic: the problem restated exactly as the prompt writes it (a copy the
    model can make token for token: digits are single tokens), one short line per column, the
    result. Template words cost tokens and teach nothing, so there are none for + and -."""
    if op == "+":
        lines, r = addition_steps(a, b)
        return [f"{a} + {b}"] + lines + [f"= {r}"], r
    if op == "-":
        if a >= b:
            lines, r = subtraction_steps(a, b)
            return [f"{a} - {b}"] + lines + [f"= {r}"], r
        lines, r = subtraction_steps(b, a)
        return [f"{a} - {b}", f"= -({b} - {a})"] + lines + [f"= {-r}"], -r
    if op == "*":
        db = _digits(b)
        if len(db) == 1:
            lines, r = multiply_digit_steps(a, b)
            return [f"Multiply {a} by {b} digit by digit, right to left."] + lines + [f"Result: {r}."], r
        out = [f"Multiply {a} by each digit of {b}, right to left, then add the partial products."]
        partials = []
        for place, d in enumerate(db):
            steps, p = multiply_digit_steps(a, d) if d else ([], 0)
            shifted = p * 10**place
            shift = f", shifted {place} place{'s' if place > 1 else ''}: {shifted}" if place and p else ""
            if detailed and steps:
                out.append(f"{a} * {d}: " + " ".join(steps) + f" Partial: {p}{shift}.")
            else:
                out.append(f"{a} * {d} = {p}{shift}.")
            partials.append(shifted)
        total = sum(partials)
        out.append(f"Add: {' + '.join(map(str, partials))} = {total}.")
        return out + [f"Result: {total}."], total
    raise ValueError(f"unknown operator {op!r}")


# -- linear equations ----------------------------------------------------------------------

def _frac(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def linear_trace(a: int, b: int, c: int) -> tuple[list[str], Fraction]:
    from stages.common.problems.linear import format_lhs

    lines = [f"Solve {format_lhs(a, b)} = {c}."]
    rhs = c - b
    if b > 0:
        lines.append(f"Subtract {b} from both sides: {format_lhs(a, 0)} = {c} - {b} = {rhs}.")
    elif b < 0:
        lines.append(f"Add {-b} to both sides: {format_lhs(a, 0)} = {c} + {-b} = {rhs}.")
    x = Fraction(rhs, a)
    if a != 1:
        reduced = f" = {_frac(x)}" if _frac(x) != f"{rhs}/{a}" else ""
        lines.append(f"Divide both sides by {a}: x = {rhs}/{a}{reduced}.")
    return lines, x


# -- countdown -----------------------------------------------------------------------------

def countdown_trace(numbers: list[int], target: int, dead_ends: int) -> tuple[list[str], str | None]:
    tried, path, expr = solve_countdown(numbers, target)
    lines = [f"Reach {target} with {', '.join(map(str, numbers))}."]
    if path is None:
        return lines + ["No combination reaches the target."], None
    first = tried.index(path[0])
    failed = [s for s in tried[:first] if s.depth == 0]
    for s in failed[:dead_ends]:
        lines.append(f"Try {s.x} {s.op} {s.y} = {s.value}, left {' '.join(map(str, s.left))}: dead end.")
    if len(failed) > dead_ends:
        lines.append(f"{len(failed) - dead_ends} more first moves fail.")
    for i, s in enumerate(path):
        left = f", left {' '.join(map(str, s.left))}" if i < len(path) - 1 else ""
        lines.append(f"{'Try' if i == 0 else 'Then'} {s.x} {s.op} {s.y} = {s.value}{left}.")
    lines.append(f"Reached {target}.")
    return lines, expr


# -- the teacher ---------------------------------------------------------------------------

_SWAP = {"+": "-", "-": "+", "*": "+", "/": "*"}


class ProceduralTeacher(Teacher):
    name = "procedural"

    def __init__(self, cfg: ProceduralTeacherConfig = ProceduralTeacherConfig()):
        self.cfg = cfg

    def describe(self):
        return {"name": self.name, **self.cfg.model_dump()}

    def complete(self, problem: Problem, n: int, *, seed: int = 0) -> list[Completion]:
        return [self._one(problem, rng_for(seed, "procedural", problem.id, str(i))) for i in range(n)]

    def _one(self, problem: Problem, rng: random.Random) -> Completion:
        wrong = rng.random() < self.cfg.error_rate
        kind, d = problem.kind, problem.data
        if kind == "arithmetic":
            lines, r = arithmetic_trace(d["a"], d["op"], d["b"])
            if approx_tokens("\n".join(lines)) > self.cfg.max_trace_tokens:
                lines, r = arithmetic_trace(d["a"], d["op"], d["b"], detailed=False)
            if wrong:
                r = _perturb_int(r, rng)
                lines[-1] = f"Result: {r}." if d["op"] == "*" else f"= {r}"
            reasoning, content = "\n".join(lines), f"\\boxed{{{r}}}"
        elif kind == "linear":
            lines, x = linear_trace(d["a"], d["b"], d["c"])
            if wrong:
                x = x + rng.choice((-1, 1)) * (1 if x.denominator == 1 else Fraction(1, x.denominator))
                lines.append(f"So x = {_frac(x)}.")
            reasoning, content = "\n".join(lines), f"x = \\boxed{{{_frac(x)}}}"
        elif kind == "countdown":
            lines, expr = countdown_trace(d["numbers"], d["target"], self.cfg.countdown_dead_ends)
            expr = expr or problem.answer
            if wrong:
                ops = [i for i, ch in enumerate(expr) if ch in _SWAP]
                i = rng.choice(ops)
                expr = expr[:i] + _SWAP[expr[i]] + expr[i + 1:]
            reasoning, content = "\n".join(lines), f"\\boxed{{{expr}}} = {d['target']}"
        elif kind == "code":
            first_test = d["tests"][0].removeprefix("assert ") if d.get("tests") else ""
            lines = [f"Write {d['entry_point']} as asked.", f"Plan: {d['plan']}"]
            if first_test:
                lines.append(f"Check: {first_test}.")
            code = d["buggy"] if wrong else problem.answer
            reasoning, content = "\n".join(lines), f"```python\n{code.rstrip()}\n```"
        else:
            raise ValueError(f"the procedural teacher cannot solve {kind!r} problems")
        completion = Completion(reasoning, content, 1, "stop", {"injected_error": wrong})
        if rng.random() < self.cfg.format_error_rate:
            completion = _break_format(completion, rng)
        return completion


def _perturb_int(r: int, rng: random.Random) -> int:
    """A plausible slip: one digit off, or off by a small amount."""
    s = str(abs(r))
    if len(s) > 1 and rng.random() < 0.5:
        i = rng.randrange(len(s))
        d = (int(s[i]) + rng.randint(1, 9)) % 10
        if i == 0 and d == 0:
            d = 1 if s[0] != "1" else 2
        wrong = int(s[:i] + str(d) + s[i + 1:]) * (-1 if r < 0 else 1)
    else:
        wrong = r + rng.choice((-1, 1)) * rng.randint(1, 10)
    return wrong if wrong != r else r + 1


def _break_format(c: Completion, rng: random.Random) -> Completion:
    mode = rng.choice(("no_answer", "two_blocks", "no_reasoning"))
    meta = {**c.meta, "injected_format_error": mode}
    if mode == "no_answer":
        content = c.content.replace("\\boxed", "").replace("```python", "").replace("```", "")
        return Completion(c.reasoning, content, c.think_blocks, c.finish_reason, meta)
    if mode == "two_blocks":
        return Completion(c.reasoning, f"<think>\nLet me check again.\n</think>\n{c.content}", 2, c.finish_reason, meta)
    return Completion(None, c.content, 0, c.finish_reason, meta)
