"""The product's stages, in DAG order. Only the runner and the CLI import this."""

from __future__ import annotations

import importlib

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
