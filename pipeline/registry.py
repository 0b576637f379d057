"""The product's stages, in DAG order. Only the runner and the CLI import this."""

from __future__ import annotations

import importlib
import os

from pipeline.stage import Stage

STAGE_PACKAGES = (
    "stages.curate",
    "stages.tokenizer",
    "stages.pretrain",
    "stages.distill",
    "stages.eval",
    "stages.serve",
)


def default_stages() -> list[Stage]:
    return [importlib.import_module(p).STAGE for p in STAGE_PACKAGES]


def load_stages() -> list[Stage]:
    """The default stages, or ``WHALE_STAGES=module:ATTRIBUTE`` naming another list (plugins, tests)."""
    spec = os.environ.get("WHALE_STAGES")
    if not spec:
        return default_stages()
    module, _, attr = spec.partition(":")
    stages = getattr(importlib.import_module(module), attr or "STAGES")
    if not all(isinstance(s, Stage) for s in stages):
        raise TypeError(f"WHALE_STAGES={spec} is not a list of pipeline.stage.Stage")
    return list(stages)
