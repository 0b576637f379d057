"""ZeRO-3 with PyTorch's FSDP2 (``fully_shard``): dense parameters, gradients and AdamW states
sharded over the ranks that replicate them.

Dense parameters are replicated on the ``dp x ep`` ranks of a (pipeline) stage, the same replica
set ZeRO-1 shards its states over; ``fully_shard`` cuts each of them along dim 0 into
``dp·ep`` pieces (DTensors on a 1-D mesh over those ranks). Routed experts are already sharded
by expert parallelism and stay as they are (``ignored_params``): their gradients are still
summed over their ``dp`` replicas by :class:`model.parallel.data_parallel.GradientReducer`,
which skips the dense ones that FSDP has reduce-scattered.

Units (one all-gather before the forward, one reduce-scatter after the backward, each):

- every decoder layer (``layers.<i>``) and every MTP module's decoder block (``mtp.<k>.block``),
  resharded after the forward so only one layer's dense weights are whole at a time;
- the root: embedding, final norm, head and the MTP modules' own projections and norms, which
  ``DeepSeekV3.mtp_losses`` uses outside any one block's forward.

Gradients are **summed**, not averaged (divide factor 1, SUM collectives): the trainer already
weights every rank's loss by its share of the global batch, exactly as for the all-reduce of
ZeRO-0/1. Parameters stay FP32 (no ``MixedPrecisionPolicy``): autocast does the BF16 compute,
as without ZeRO-3, so the numerics are those of unsharded data parallelism.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from model.parallel.data_parallel import is_routed_expert
from model.parallel.groups import ParallelGroups


def dense_mesh(groups: ParallelGroups) -> DeviceMesh:
    """A 1-D mesh over the ranks that replicate the dense parameters (the world without pipelining)."""
    if groups.layout.pp > 1:
        raise ValueError("ZeRO-3 (FSDP2) is not wired into pipeline parallelism: use parallel.zero 1 with pp > 1")
    device_type = groups.mesh.device_type if groups.mesh is not None else "cpu"
    return DeviceMesh.from_group(groups.world, device_type, mesh_dim_names=("dense",))


def shard_dense_parameters(model: nn.Module, groups: ParallelGroups) -> DeviceMesh | None:
    """``fully_shard`` the model's dense parameters over ``dense_mesh(groups)`` (call after
    ``shard_experts`` and ``prepare_model``, before building the optimizer). Returns the mesh, or
    None on a single rank (nothing to shard: the model is left as it is)."""
    if groups.world_size == 1:
        return None
    mesh = dense_mesh(groups)
    experts = {p for n, p in model.named_parameters() if is_routed_expert(n)}
    blocks = [*model.layers.values(), *(m.block for m in model.mtp)]
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True,
                    ignored_params={p for p in block.parameters() if p in experts})
    fully_shard(model, mesh=mesh, ignored_params=experts)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # sum, like the all-reduce without ZeRO: the loss is already weighted per rank
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return mesh


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Gradient accumulation: reduce-scatter only after the last micro-batch's backward."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a ZeRO-3 shard (an all-gather: every rank of its mesh must call it,
    in the same order); any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a shard (a view: in-place ops change the DTensor), or ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (the same on every rank, e.g. read from a checkpoint) cut like ``like`` when that
    is a DTensor: no communication, each rank keeps its own piece."""
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements,
                             src_data_rank=None)
