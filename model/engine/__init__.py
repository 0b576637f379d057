"""Whale's generation engine: continuous batching over the MLA latent KV cache, chunked prefill
with a per-step token budget, MTP self-speculative decoding, cancellation. Pure torch + asyncio
(no Ray), shared by the serve stage and by anything that generates in bulk (distill, eval).

    from model.engine import Engine, EngineConfig, GenerationParams
    engine = Engine(model, EngineConfig(num_slots=16, max_seq_len=1024))
    completions = engine.generate(prompts, GenerationParams(max_tokens=64))      # batch
    # servers: AsyncEngine(engine).generate(prompt_ids, params) -> async iterator of RequestOutput

``EngineConfig`` imports without torch (stage configs embed it); the rest loads lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from model.engine.config import EngineConfig

_LAZY = {
    "Engine": "model.engine.engine",
    "ContextLengthExceeded": "model.engine.engine",
    "AsyncEngine": "model.engine.async_engine",
    "GenerationParams": "model.engine.request",
    "RequestOutput": "model.engine.request",
    "Completion": "model.engine.request",
    "EngineError": "model.engine.request",
    "EngineOverloaded": "model.engine.request",
    "EngineStopped": "model.engine.request",
    "EngineStats": "model.engine.stats",
    "TextStream": "model.engine.text",
    "StopStringMatcher": "model.engine.text",
}

__all__ = ["EngineConfig", *_LAZY]

if TYPE_CHECKING:
    from model.engine.async_engine import AsyncEngine  # noqa: F401
    from model.engine.engine import ContextLengthExceeded, Engine  # noqa: F401
    from model.engine.request import (  # noqa: F401
        Completion,
        EngineError,
        EngineOverloaded,
        EngineStopped,
        GenerationParams,
        RequestOutput,
    )
    from model.engine.stats import EngineStats  # noqa: F401
    from model.engine.text import StopStringMatcher, TextStream  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model.engine' has no attribute {name!r}")
