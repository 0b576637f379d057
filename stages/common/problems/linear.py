"""Linear equations a*x + b = c in one unknown, with integer or rational solutions."""

from __future__ import annotations

import random
from collections.abc import Iterator
from fractions import Fraction

from pydantic import BaseModel, ConfigDict, Field

from stages.common.problems.base import BOXED_INSTRUCTION, Problem, make_problem


class LinearConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.5, ge=0)
    max_coef: int = Field(9, ge=2, le=1000)         # |a|
    max_const: int = Field(30, ge=1, le=100_000)    # |b|, and |x| for integer solutions
    rational_share: float = Field(0.3, ge=0, le=1)  # share of problems whose x is not an integer


def format_answer(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def format_lhs(a: int, b: int) -> str:
    ax = {1: "x", -1: "-x"}.get(a, f"{a}x")
    if b == 0:
        return ax
    return f"{ax} {'+' if b > 0 else '-'} {abs(b)}"


def generate(cfg: LinearConfig, rng: random.Random) -> Iterator[Problem]:
    while True:
        rational = rng.random() < cfg.rational_share
        a = rng.randint(2 if rational else 1, cfg.max_coef) * rng.choice((1, -1))
        b = rng.randint(-cfg.max_const, cfg.max_const)
        if rational:
            c = rng.randint(-cfg.max_const, cfg.max_const)
            if (c - b) % a == 0:
                continue
        else:
            c = a * rng.randint(-cfg.max_const, cfg.max_const) + b
        x = Fraction(c - b, a)
        yield make_problem("linear", ["linear", a, b, c], f"Solve for x: {format_lhs(a, b)} = {c}.",
                           BOXED_INSTRUCTION, format_answer(x), {"a": a, "b": b, "c": c})
