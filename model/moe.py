"""DeepSeekMoE (V3 §2.1.2): shared experts + fine-grained routed experts.

    h' = h + Σ_{shared} FFN_s(h) + Σ_{i ∈ topK} g_{i,t} · FFN_i(h)

Module names follow the checkpoint: ``gate`` (router), ``experts.<global index>.{gate,up,down}_proj``,
``shared_experts.{gate,up,down}_proj``. Each forward also reports, outside autograd, how many
tokens each expert was chosen by (the loads that drive the bias update and MaxVio) and how many
assignments capacity dropped; the sequence-wise balance loss (× α) rides along when training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from model.config import ModelConfig
from model.dispatch import ExpertDispatcher, LocalSortedDispatcher
from model.mlp import SwiGLU
from model.router import Router, sequence_balance_loss


@dataclass
class MoEStats:
    """One MoE layer's forward: ``expert_load`` [E] tokens per expert (router choice, before any
    dropping), ``dropped`` assignments dropped by capacity, ``balance_loss`` α·L_bal or None."""

    expert_load: torch.Tensor
    dropped: torch.Tensor
    balance_loss: torch.Tensor | None


class MoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.capacity_factor = config.expert_capacity_factor
        self.balance_alpha = config.seq_aux_loss_alpha
        self.gate = Router(config)
        self.experts = nn.ModuleDict({
            str(i): SwiGLU(config.hidden_size, config.moe_intermediate_size) for i in range(self.n_experts)})
        self.shared_experts = (SwiGLU(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
                               if config.n_shared_experts else None)
        self.dispatcher: ExpertDispatcher = LocalSortedDispatcher()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEStats]:
        B, T, D = x.shape
        tokens = x.reshape(-1, D)
        routing = self.gate(tokens)
        with torch.no_grad():
            load = torch.bincount(routing.expert_ids.reshape(-1), minlength=self.n_experts).float()
        expert_ids, dropped = routing.expert_ids, torch.zeros((), dtype=torch.long, device=x.device)
        if self.training and self.capacity_factor is not None:
            affinity = routing.scores.gather(-1, expert_ids)
            expert_ids, dropped = drop_over_capacity(expert_ids, affinity, self.n_experts, self.capacity_factor)

        y = self.dispatcher(tokens, expert_ids, routing.gates, self.experts, self.n_experts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(tokens)

        balance = None
        if self.training and self.balance_alpha > 0:
            balance = self.balance_alpha * sequence_balance_loss(
                routing.scores.view(B, T, -1), routing.expert_ids.view(B, T, -1), self.top_k)
        return y.view(B, T, D), MoEStats(load, dropped, balance)

    def retain_experts(self, expert_ids: list[int]) -> None:
        """Keep only these routed experts (an expert-parallel rank's share); names stay global."""
        keep = {str(i) for i in expert_ids}
        for key in [k for k in self.experts.keys() if k not in keep]:
            del self.experts[key]


def drop_over_capacity(expert_ids: torch.Tensor, affinity: torch.Tensor, n_experts: int,
                       capacity_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2 token dropping: each expert keeps its ``ceil(cf · N·K / E)`` highest-affinity
    assignments; the rest become -1. Returns (expert_ids, number dropped)."""
    N, K = expert_ids.shape
    capacity = math.ceil(capacity_factor * N * K / n_experts)
    flat_ids, flat_aff = expert_ids.reshape(-1), affinity.reshape(-1)
    by_affinity = flat_aff.argsort(descending=True, stable=True)
    order = by_affinity[flat_ids[by_affinity].argsort(stable=True)]   # by expert, then affinity desc
    counts = torch.bincount(flat_ids, minlength=n_experts)
    first_of_expert = counts.cumsum(0) - counts
    rank = torch.empty_like(flat_ids)
    rank[order] = torch.arange(flat_ids.numel(), device=flat_ids.device) - first_of_expert[flat_ids[order]]
    drop = rank >= capacity
    return flat_ids.masked_fill(drop, -1).view(N, K), drop.sum()
