"""Whale's DeepSeek-V3 model: MLA, DeepSeekMoE with auxiliary-loss-free balancing, MTP,
HF-compatible checkpoints and latent-KV-cached generation.

    from model import ModelConfig, DeepSeekV3
    model = DeepSeekV3(ModelConfig.load("tiny"))

A library: it imports nothing from ``pipeline`` or ``stages``. ``ModelConfig`` is importable
without torch (``from model import ModelConfig`` stays light); torch-backed names load lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.config import PRESETS, ModelConfig

_LAZY = {
    "DeepSeekV3": "model.transformer",
    "ModelOutput": "model.transformer",
    "LatentKVCache": "model.kv_cache",
    "StepOutput": "model.generation",
    "Generation": "model.generation",
    "SamplingParams": "model.sampling",
    "sample_tokens": "model.sampling",
    "ExpertDispatcher": "model.dispatch",
    "LocalSortedDispatcher": "model.dispatch",
    "model_info": "model.info",
}

__all__ = ["ModelConfig", "PRESETS", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports lazily
    from model.dispatch import ExpertDispatcher, LocalSortedDispatcher  # noqa: F401
    from model.generation import Generation, StepOutput  # noqa: F401
    from model.info import model_info  # noqa: F401
    from model.kv_cache import LatentKVCache  # noqa: F401
    from model.sampling import SamplingParams, sample_tokens  # noqa: F401
    from model.transformer import DeepSeekV3, ModelOutput  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
