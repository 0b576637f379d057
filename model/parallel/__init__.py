"""Pipeline, data and expert parallelism for :class:`model.DeepSeekV3` in plain ``torch.distributed``.

No Ray and no trainer in here: whoever starts the processes (Ray Train, torchrun,
``torch.multiprocessing``) initialises the default process group, then

    layout = ParallelLayout(dp=2, ep=4)                 # 8 ranks; ep is the inner dimension
    groups = init_parallel(layout, device_type="cuda")   # DeviceMesh ("dp", "ep") + its groups
    shard_experts(model, groups)                         # keep this rank's experts, all-to-all dispatch
    reducer = GradientReducer(model, groups)             # after backward: dense grads over every
    reducer.reduce()                                     #   rank, expert grads over their replicas
    norm = reducer.clip_grad_norm_(1.0)                  # the global norm, experts counted once

Every rank reads different data (the data-parallel degree of the *batch* is dp x ep); routed
experts are split over the ``ep`` ranks of an expert-parallel group and replicated ``dp`` times.
With ``ParallelLayout(pp=.., dp=.., ep=..)`` the layers are split into pipeline stages
(``Pipeline``: torch.distributed.pipelining's 1F1B, interleaved 1F1B or DualPipeV), ZeRO-1 shards
AdamW's states (``ZeroAdamW``), ZeRO-3 shards the dense parameters with FSDP2
(``shard_dense_parameters``) and ``memory_plan`` predicts memory per GPU. README.md has the design.
Only ``layout`` imports without torch (configs use it); the rest loads lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.parallel.layout import ParallelLayout

_LAZY = {
    "ParallelGroups": "model.parallel.groups",
    "init_parallel": "model.parallel.groups",
    "all_to_all_single_autograd": "model.parallel.all_to_all",
    "ExpertParallelDispatcher": "model.parallel.expert_parallel",
    "shard_experts": "model.parallel.expert_parallel",
    "GradientReducer": "model.parallel.data_parallel",
    "is_routed_expert": "model.parallel.data_parallel",
    "Pipeline": "model.parallel.pipeline",
    "ZeroAdamW": "model.parallel.zero",
    "shard_dense_parameters": "model.parallel.fsdp",
    "MemoryLayout": "model.parallel.memory",
    "memory_plan": "model.parallel.memory",
}

__all__ = ["ParallelLayout", *_LAZY]

if TYPE_CHECKING:
    from model.parallel.all_to_all import all_to_all_single_autograd  # noqa: F401
    from model.parallel.data_parallel import GradientReducer, is_routed_expert  # noqa: F401
    from model.parallel.expert_parallel import ExpertParallelDispatcher, shard_experts  # noqa: F401
    from model.parallel.fsdp import shard_dense_parameters  # noqa: F401
    from model.parallel.groups import ParallelGroups, init_parallel  # noqa: F401
    from model.parallel.memory import MemoryLayout, memory_plan  # noqa: F401
    from model.parallel.pipeline import Pipeline  # noqa: F401
    from model.parallel.zero import ZeroAdamW  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model.parallel' has no attribute {name!r}")
