"""Countdown-style puzzles: reach a target from given numbers with + - * /, each number at most once.

Problems are built backwards from a random expression, so each has at least one solution
(kept as the canonical answer); the verifier accepts any valid expression. ``solve`` is the
depth-first search the procedural teacher narrates.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.common.problems.base import BOXED_INSTRUCTION, Problem, make_problem


class CountdownConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.5, ge=0)
    n_numbers: int = Field(4, ge=2, le=6)
    small: list[int] = Field(default_factory=lambda: list(range(1, 11)), min_length=1)
    large: list[int] = Field(default_factory=lambda: [25, 50, 75, 100])
    max_large: int = Field(1, ge=0, le=6)
    min_target: int = Field(10, ge=1)
    max_target: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _targets_ordered(self):
        if self.min_target > self.max_target:
            raise ValueError(f"countdown.min_target ({self.min_target}) > max_target ({self.max_target})")
        return self


RULES = "Use + - * / and each number at most once."

# intermediate results stay positive integers while generating and searching (classic
# rules, and short traces); the verifier is more lenient (exact rationals)
def combine(x: int, y: int) -> list[tuple[str, int]]:
    out = [("+", x + y), ("*", x * y)]
    if x > y:
        out.append(("-", x - y))
    if y > 1 and x % y == 0:
        out.append(("/", x // y))
    return out


def generate(cfg: CountdownConfig, rng: random.Random) -> Iterator[Problem]:
    while True:
        n_large = rng.randint(0, min(cfg.max_large, cfg.n_numbers, len(cfg.large)))
        numbers = rng.sample(cfg.large, n_large) + [rng.choice(cfg.small) for _ in range(cfg.n_numbers - n_large)]
        # a random expression over a random subset (>= 2 numbers)
        pool = [(str(v), v) for v in rng.sample(numbers, rng.randint(2, len(numbers)))]
        while len(pool) > 1:
            (ex, x), (ey, y) = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
            if x < y:
                (ex, x), (ey, y) = (ey, y), (ex, x)
            op, v = rng.choice(combine(x, y))
            pool.append((f"({ex} {op} {ey})", v))
        expr, target = pool[0]
        if not cfg.min_target <= target <= cfg.max_target or target in numbers:
            continue
        numbers = sorted(numbers)
        listed = ", ".join(map(str, numbers))
        yield make_problem(
            "countdown", ["countdown", numbers, target],
            f"Using the numbers {listed}, make {target}.", f"{RULES} {BOXED_INSTRUCTION}",
            expr[1:-1] if expr.startswith("(") else expr,
            {"numbers": numbers, "target": target})


@dataclass(frozen=True)
class Step:
    """One move of the search: x op y = value, leaving the numbers ``left``, at ``depth``."""
    x: int
    op: str
    y: int
    value: int
    left: tuple[int, ...]
    depth: int


def solve(numbers: list[int], target: int, max_steps: int = 10_000) -> tuple[list[Step], list[Step] | None, str | None]:
    """Depth-first search. Returns (every step tried, the winning path or None, its expression)."""
    tried: list[Step] = []

    def dfs(items: list[tuple[str, int]], path: list[Step]):
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j or len(tried) >= max_steps:
                    continue
                (ex, x), (ey, y) = items[i], items[j]
                for op, v in combine(x, y):
                    if op in "+*" and i > j:
                        continue  # commutative: try each pair once
                    rest = [it for k, it in enumerate(items) if k not in (i, j)]
                    step = Step(x, op, y, v, tuple(sorted([r[1] for r in rest] + [v])), len(path))
                    tried.append(step)
                    expr = f"({ex} {op} {ey})"
                    if v == target:
                        return path + [step], expr
                    if rest:
                        found = dfs(rest + [(expr, v)], path + [step])
                        if found:
                            return found
        return None

    found = dfs([(str(n), n) for n in numbers], [])
    if not found:
        return tried, None, None
    path, expr = found
    return tried, path, expr[1:-1]
