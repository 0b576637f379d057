"""Problem families from reasoning-gym (procedural generators with their own scorers, offline), as a
task mix with per-task settings (difficulty is each dataset's own config):

    problems:
      gym: {weight: 1.0, tasks: [{name: basic_arithmetic, weight: 2, config: {min_terms: 2, max_terms: 3}},
                                 {name: chain_sum}, {name: leg_counting}]}

Each problem keeps the reasoning-gym entry (question, answer, metadata) in ``data["gym"]`` and is
reported as its own task (``data["task"]`` = the dataset name). The answer is verified by the
dataset's own ``score_answer`` (a score of 1.0 is correct). Whale's own generators stay for what the
library has no equivalent of: the headline two-operand +/- family the procedural teacher explains
digit by digit, countdown with a narrated search, and Python functions checked in the sandbox.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.common.problems.base import BOXED_INSTRUCTION, Problem, make_problem


class GymTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)                      # a reasoning-gym dataset name
    weight: float = Field(1.0, gt=0)
    config: dict[str, Any] = Field(default_factory=dict)  # the dataset's own settings (difficulty)


class GymConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, ge=0)
    tasks: list[GymTask] = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> "GymConfig":
        """Unknown dataset names or settings fail here, before any compute."""
        for t in self.tasks:
            try:
                _dataset(t.name, json.dumps(t.config, sort_keys=True), 0)
            except Exception as e:  # noqa: BLE001 - reasoning-gym raises many kinds
                raise ValueError(f"reasoning-gym task {t.name!r} with config {t.config}: {e}") from None
        return self


@functools.lru_cache(maxsize=64)
def _dataset(name: str, config_json: str, seed: int, size: int = 1):
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **json.loads(config_json))


def _plain(x: Any) -> Any:
    """JSON-safe copy of an entry (tuples become lists)."""
    return json.loads(json.dumps(x, default=str))


def generate(cfg: GymConfig, rng: random.Random) -> Iterator[Problem]:
    """An endless stream; each problem is a fresh single-entry dataset with a seed from ``rng``."""
    weights = [t.weight for t in cfg.tasks]
    while True:
        task = rng.choices(cfg.tasks, weights)[0]
        config_json = json.dumps(task.config, sort_keys=True)
        entry = _dataset(task.name, config_json, rng.randrange(2**31))[0]
        question = str(entry["question"])
        yield make_problem("gym", ["gym", task.name, question], question, BOXED_INSTRUCTION, str(entry["answer"]),
                           {"task": task.name, "gym": {"name": task.name, "config": task.config,
                                                       "entry": _plain(entry)}})


def score(data: dict[str, Any], answer: str | None) -> float:
    """The dataset's own scorer on an extracted answer (0.0 for none)."""
    if answer is None:
        return 0.0
    g = data["gym"]
    return float(_dataset(g["name"], json.dumps(g["config"], sort_keys=True), 0).score_answer(answer=answer,
                                                                                              entry=g["entry"]))
