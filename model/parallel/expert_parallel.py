"""Expert parallelism: routed experts sharded over an expert-parallel group, tokens moved by
all-to-all (the dispatch / combine of DeepSeek-V3 §3.2.2, without its node-limited tricks).

Per MoE layer, on every rank of the group, with E experts split into contiguous blocks of E/ep:

    1. sort this rank's (token, expert) assignments by expert: they are now grouped by the rank
       that holds each expert
    2. exchange the per-expert counts (all_to_all_single on a [ep, E/ep] table)
    3. dispatch: all_to_all the token rows, variable split sizes
    4. regroup the received rows by local expert, run each expert once on its block
       (:func:`model.dispatch.run_experts_grouped`, the same compute as the local dispatcher)
    5. combine: all_to_all the outputs back, weight by the gates, scatter-add onto the tokens

Both exchanges are differentiable (:mod:`model.parallel.all_to_all`), so gradients flow back to
the tokens and into the experts that ran them, wherever they live.

Token dropping (DeepSeek-V2's device-level rule, :mod:`model.moe`) happens before step 1, with
the budget of the *receiving* device: every rank sends each assignment's affinity and never-drop
flag to the rank that holds its expert, that rank keeps its protected assignments and then the
highest-affinity ones up to ``ceil(cf · A / ep)`` (A: assignments in the whole group), and sends
the keep flags back. Dropped rows are then never dispatched.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from model.dispatch import run_experts_grouped
from model.moe import keep_within_budget
from model.parallel.all_to_all import all_to_all_single_autograd, exchange_counts, exchange_rows
from model.parallel.groups import ParallelGroups


class ExpertParallelDispatcher:
    """A :class:`model.dispatch.ExpertDispatcher` for a rank holding experts
    ``[ep_rank·E/ep, (ep_rank+1)·E/ep)`` of an expert-parallel group of ``ep_size`` ranks."""

    def __init__(self, group: ProcessGroup | None, ep_rank: int, ep_size: int):
        self.group, self.ep_rank, self.ep_size = group, ep_rank, ep_size

    def __call__(self, x: torch.Tensor, expert_ids: torch.Tensor, gates: torch.Tensor,
                 experts: dict[str, nn.Module] | nn.ModuleDict, n_experts: int) -> torch.Tensor:
        if n_experts % self.ep_size:
            raise ValueError(f"{n_experts} experts cannot be split over {self.ep_size} expert-parallel ranks")
        N, K = expert_ids.shape
        ep, local = self.ep_size, n_experts // self.ep_size

        # 1. assignments sorted by expert; dropped ones (-1) sort first and are cut off
        flat_ids = expert_ids.reshape(-1)
        order = flat_ids.argsort(stable=True)
        counts = torch.bincount(flat_ids + 1, minlength=n_experts + 1)
        # 2. counts header: send[j, e] = my tokens for expert e of rank j; recv[j, e] = rank j's
        #    tokens for my local expert e. One host sync for every split size.
        send = counts[1:].view(ep, local)
        recv = exchange_counts(send, self.group)
        n_dropped, send_rows, recv_rows, recv_table = _to_host(counts[0], send, recv)
        order = order[n_dropped:]
        token_of = order // K

        # 3. dispatch, in the autocast dtype when there is one (the experts' matmuls would cast
        #    to it anyway; half the bytes of FP32). Every rank sends and receives the same dtype.
        comm_dtype = _comm_dtype(x)
        received = all_to_all_single_autograd(x[token_of].to(comm_dtype), recv_rows, send_rows, self.group)
        # 4. rows arrive grouped by source rank, then expert; regroup by expert, run, restore
        expert_of_row = torch.arange(local, device=x.device).repeat(ep).repeat_interleave(
            torch.tensor(recv_table, device=x.device).flatten())
        by_expert = expert_of_row.argsort(stable=True)
        per_expert = [sum(col) for col in zip(*recv_table, strict=True)]
        first = self.ep_rank * local
        if received.shape[0]:
            y = run_experts_grouped(received[by_expert], per_expert, range(first, first + local), experts)
        else:   # nothing arrived: no expert runs, but both exchanges must stay in the autograd graph
            y = received * 0   # (every rank runs the same backward all-to-alls, or they deadlock)
        y = y.to(comm_dtype)[by_expert.argsort()]
        # 5. combine
        back = all_to_all_single_autograd(y, send_rows, recv_rows, self.group)
        weighted = back.float() * gates.reshape(-1)[order, None]
        out = torch.zeros(N, x.shape[-1], device=x.device, dtype=torch.float32)
        return out.index_add_(0, token_of, weighted).to(x.dtype)


    @torch.no_grad()
    def drop_over_device_budget(self, expert_ids: torch.Tensor, affinity: torch.Tensor, protected: torch.Tensor,
                                capacity_factor: float, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """V2 device-level dropping across the group (see the module docstring). expert_ids,
        affinity, protected [N, K] -> (expert_ids with -1 where the receiving device dropped,
        number of this rank's assignments dropped). Every rank of the group must call it."""
        ep, local = self.ep_size, n_experts // self.ep_size
        flat_ids = expert_ids.reshape(-1)
        valid = flat_ids >= 0
        dest = torch.where(valid, flat_ids // local, ep)          # ep: nowhere (already dropped)
        order = dest.argsort(stable=True)
        send = torch.bincount(dest, minlength=ep + 1)[:ep]
        recv = exchange_counts(send.view(ep, 1), self.group).view(ep)
        total = valid.sum().view(1)
        dist.all_reduce(total, group=self.group)
        packed = torch.cat([send, recv, total]).tolist()
        send_rows, recv_rows, total = packed[:ep], packed[ep:2 * ep], packed[-1]
        order = order[:sum(send_rows)]

        meta = torch.stack([affinity.reshape(-1)[order].float(), protected.reshape(-1)[order].float()], dim=1)
        arrived = exchange_rows(meta, recv_rows, send_rows, self.group)
        budget = math.ceil(capacity_factor * total / ep)
        keep_here = keep_within_budget(arrived[:, 0], arrived[:, 1] > 0, budget)
        keep_sent = exchange_rows(keep_here.float()[:, None], send_rows, recv_rows, self.group)[:, 0] > 0
        keep = torch.zeros_like(valid)
        keep[order] = keep_sent
        return flat_ids.masked_fill(~keep, -1).view_as(expert_ids), (valid & ~keep).sum()


def _comm_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _to_host(n_dropped: torch.Tensor, send: torch.Tensor, recv: torch.Tensor):
    """One device-to-host copy for all the split sizes."""
    packed = torch.cat([n_dropped.view(1), send.flatten(), recv.flatten()]).tolist()
    ep, local = send.shape
    send_table = [packed[1 + j * local: 1 + (j + 1) * local] for j in range(ep)]
    off = 1 + ep * local
    recv_table = [packed[off + j * local: off + (j + 1) * local] for j in range(ep)]
    return packed[0], [sum(r) for r in send_table], [sum(r) for r in recv_table], recv_table


def shard_experts(model: nn.Module, groups: ParallelGroups) -> list[int]:
    """Keep only this rank's routed experts in every MoE layer and route through the
    expert-parallel all-to-all. A no-op for ep = 1. Returns the expert indices kept."""
    ep = groups.layout.ep
    n_experts = model.config.n_routed_experts
    if ep == 1:
        return list(range(n_experts))
    mine = list(groups.layout.experts_of(groups.ep_rank, n_experts))
    for moe in model.moe_layers().values():
        moe.retain_experts(mine)
    model.set_expert_dispatcher(ExpertParallelDispatcher(groups.ep_group, groups.ep_rank, ep))
    return mine
