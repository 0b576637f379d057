"""Multi-digit integer arithmetic: a op b with op in + - * and configurable operand sizes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.common.problems.base import BOXED_INSTRUCTION, Problem, make_problem


class ArithmeticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, ge=0)
    min_digits: int = Field(1, ge=1, le=12)
    max_digits: int = Field(3, ge=1, le=12)
    ops: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+", "-", "*"], min_length=1)
    # long multiplication traces grow with digits(a) * digits(b): cap the operands of *
    max_mul_digits: int = Field(2, ge=1, le=12)

    @model_validator(mode="after")
    def _digits_ordered(self):
        if self.min_digits > self.max_digits:
            raise ValueError(f"arithmetic.min_digits ({self.min_digits}) > max_digits ({self.max_digits})")
        return self


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def evaluate(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def generate(cfg: ArithmeticConfig, rng: random.Random) -> Iterator[Problem]:
    """An endless stream (duplicates possible; the caller dedups by id)."""
    while True:
        op = rng.choice(cfg.ops)
        hi = min(cfg.max_digits, cfg.max_mul_digits) if op == "*" else cfg.max_digits
        lo = min(cfg.min_digits, hi)
        a, b = (_operand(rng, rng.randint(lo, hi)) for _ in range(2))
        yield make_problem("arithmetic", ["arithmetic", a, op, b], f"What is {a} {op} {b}?",
                           BOXED_INSTRUCTION, str(evaluate(a, op, b)), {"a": a, "op": op, "b": b})


def probe(task: str, n: int, cfg: ArithmeticConfig, rng: random.Random) -> list[Problem]:
    """``n`` distinct problems reported as task ``task`` (e.g. an out-of-distribution probe with
    longer operands than training saw): evaluated, never trained on."""
    out: dict[str, Problem] = {}
    stream = generate(cfg, rng)
    for _ in range(200 + 50 * n):
        if len(out) >= n:
            break
        p = next(stream)
        out.setdefault(p.id, Problem(p.id, p.kind, p.question, p.prompt, p.answer, {**p.data, "task": task}))
    if len(out) < n:
        raise ValueError(f"probe {task}: only {len(out)} distinct problems of {n} asked for")
    return list(out.values())
