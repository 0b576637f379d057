"""ZeRO-1: AdamW whose states are sharded over the ranks that replicate each parameter.

Every parameter has replicas: dense ones on the ``dp x ep`` ranks of its pipeline stage, routed
experts on the ``dp`` ranks holding the same experts. Each parameter gets one *owner* among its
replicas (greedy by size, so the owners' shares of the FP32 moments are balanced); only the owner
keeps its ``exp_avg``/``exp_avg_sq`` and runs its update, then broadcasts the new values to the
other replicas (one flat broadcast per owner). AdamW's update is element-wise, so the result is
bitwise what an unsharded AdamW computes on the same (already all-reduced) gradients.

DeepSeek-V3 trains with ZeRO-1 data parallelism (§3.2). Sharding here is per whole tensor, as
``torch.distributed.optim.ZeroRedundancyOptimizer`` does, rather than over a flat buffer; it
needs no communication pattern of its own beyond the parameter broadcast, and composes with the
expert-parallel and pipeline groups, which a single-group ZeroRedundancyOptimizer does not.

The optimizer looks like a ``torch.optim.Optimizer`` to the trainer (``param_groups``, ``state``,
``step``, ``zero_grad``, ``defaults``) plus ``manages(p)``: whether this rank keeps ``p``'s state
(the checkpoint writes and loads exactly those).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from model.parallel.data_parallel import is_routed_expert
from model.parallel.groups import ParallelGroups


def assign_owners(sizes: list[int], ranks: int) -> list[int]:
    """Owner index (0..ranks-1) per tensor: largest first, each to the least-loaded rank."""
    load = [0] * ranks
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = min(range(ranks), key=lambda r: load[r])
        owner[i] = r
        load[r] += sizes[i]
    return owner


class ZeroAdamW:
    def __init__(self, model: nn.Module, groups: ParallelGroups, *, lr: float, betas: tuple[float, float],
                 weight_decay: float, eps: float = 1e-8):
        self.groups = groups
        layout = groups.layout
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # (params, process group, its size, my index in it, global rank of each index)
        pp_base = groups.pp_rank * layout.stage_size
        dense = [p for n, p in named if not is_routed_expert(n)]
        experts = [p for n, p in named if is_routed_expert(n)]
        self._sets = []
        for params, group, size, me, rank_of in (
            (dense, groups.stage_group or groups.world, layout.stage_size, groups.dp_rank * layout.ep + groups.ep_rank,
             lambda i: pp_base + i),
            (experts, groups.expert_dp_group, layout.dp, groups.dp_rank,
             lambda i: pp_base + i * layout.ep + groups.ep_rank),
        ):
            owners = assign_owners([p.numel() for p in params], size)
            self._sets.append((params, owners, group, size, me, rank_of))
        self._owned = {id(p) for params, owners, _, _, me, _ in self._sets
                       for p, o in zip(params, owners, strict=True) if o == me}
        self._all = [p for params, *_ in self._sets for p in params]
        mine = [p for p in self._all if id(p) in self._owned]
        decay = [p for p in mine if p.ndim >= 2]
        no_decay = [p for p in mine if p.ndim < 2]
        fused = bool(mine) and mine[0].is_cuda
        self.inner = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=betas, eps=eps, fused=fused, foreach=not fused)

    # -- the Optimizer surface the trainer uses -------------------------------------------------
    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    @property
    def defaults(self):
        return self.inner.defaults

    def manages(self, p: torch.Tensor) -> bool:
        return id(p) in self._owned

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._all:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.inner.step()
        for params, owners, group, size, _, rank_of in self._sets:
            if size == 1:
                continue
            for owner in range(size):   # one flat broadcast per owner (gloo pays per call)
                mine = [p for p, o in zip(params, owners, strict=True) if o == owner]
                if not mine:
                    continue
                flat = torch.cat([p.detach().reshape(-1) for p in mine])
                dist.broadcast(flat, src=rank_of(owner), group=group)
                offset = 0
                for p in mine:
                    p.copy_(flat[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank keeps (the point of ZeRO-1)."""
        return sum(t.numel() * t.element_size() for s in self.inner.state.values() for t in s.values()
                   if torch.is_tensor(t))
