"""The product's stages, in DAG order. Only the runner and the CLI import this."""

from __future__ import annotations

import importlib
import os

from pipeline.stage import Stage, StageConfig

STAGE_PACKAGES = (
    "stages.curate",
    "stages.tokenizer",
    "stages.pretrain",
    "stages.distill",
    "stages.eval",
    "stages.serve",
)


def default_stages() -> list[Stage]:
    return [_load(p) for p in STAGE_PACKAGES]


def _load(package: str) -> Stage:
    """The package's STAGE; a package without one is a stage not implemented yet, which keeps
    its place in the DAG and fails clearly when run (never writing placeholder outputs)."""
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name != package:
            raise
        module = None
    stage = getattr(module, "STAGE", None)
    if stage is None:
        name = package.rsplit(".", 1)[-1]
        upstream = {"eval": ("distill",), "distill": ("pretrain",)}.get(name, ())
        return Stage(name=name, config=StageConfig, run=None, upstream=upstream)
    return stage


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
