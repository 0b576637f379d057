"""The DeepSeek-V3 router (V3 §2.1.2, eqs. 12-16) and the sequence-wise balance loss (eqs. 17-20).

    s_{i,t} = sigmoid(u_t · e_i)                                   affinity, FP32
    choose top-K experts on s_{i,t} + b_i, inside the ``topk_group`` best of ``n_group`` groups
        (a group scores the sum of its two best biased affinities)
    g_{i,t} = s_{i,t} / Σ_{j∈topK} s_{j,t} · routed_scaling_factor  gates from *unbiased* s

The bias b (``e_score_correction_bias``) only steers selection; it is a buffer, changed outside
autograd by :func:`model.balance.update_router_bias`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig


@dataclass
class Routing:
    """Router output for N tokens: chosen experts and gates [N, K], affinities [N, E]."""

    expert_ids: torch.Tensor
    gates: torch.Tensor
    scores: torch.Tensor


class Router(nn.Module):
    """``mlp.gate`` in the checkpoint: ``weight`` [E, D] and ``e_score_correction_bias`` [E]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.scaling = config.routed_scaling_factor
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(self.n_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> Routing:
        """x [N, D] -> Routing, computed in FP32 whatever the surrounding autocast (as HF, DeepSeek's
        reference and torchtitan do): under a BF16 autocast the gate matmul would otherwise be re-cast
        to BF16 and training would pick other experts than serving (measured: 38 % of 4,096 tokens on
        a 64-expert, top-8, 8-group router at init std 0.006)."""
        with torch.autocast(x.device.type, enabled=False):
            return self._route(x)

    def _route(self, x: torch.Tensor) -> Routing:
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        biased = scores + self.e_score_correction_bias.float()
        if self.n_group > 1:
            biased = self._mask_to_best_groups(biased)
        expert_ids = biased.topk(self.top_k, dim=-1).indices
        gates = scores.gather(-1, expert_ids)
        if self.norm_topk_prob:
            gates = gates / (gates.sum(dim=-1, keepdim=True) + 1e-20)
        return Routing(expert_ids, gates * self.scaling, scores)

    def _mask_to_best_groups(self, biased: torch.Tensor) -> torch.Tensor:
        """Node-limited routing: keep the ``topk_group`` groups whose two best biased affinities
        sum highest, set the other groups' experts to -inf."""
        N = biased.shape[0]
        grouped = biased.view(N, self.n_group, -1)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        best = group_scores.topk(self.topk_group, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~keep[..., None], float("-inf")).view(N, -1)

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.weight, std=std)
        nn.init.zeros_(self.e_score_correction_bias)

    def _apply(self, fn, recurse: bool = True):
        # Keep the balancing bias in FP32 whatever dtype the model is cast to: its updates are
        # γ = 1e-3 steps that bfloat16 (8 mantissa bits) would round away.
        bias = self.e_score_correction_bias
        super()._apply(fn, recurse)
        moved = self.e_score_correction_bias
        if moved.dtype != torch.float32:
            # the exact FP32 values on the new device (a meta tensor has no values to keep)
            keep = moved.float() if (bias.is_meta or moved.is_meta) else bias.to(moved.device, torch.float32)
            self.e_score_correction_bias = keep
        return self


def sequence_balance_loss(scores: torch.Tensor, expert_ids: torch.Tensor, top_k: int) -> torch.Tensor:
    """Sequence-wise balance loss Σ_i f_i·P_i averaged over sequences (V3 eqs. 17-20, without α).

    scores [B, T, E] sigmoid affinities; expert_ids [B, T, K] the experts chosen.
    f_i = E/(K·T) · #{t : i chosen at t}     (no gradient)
    P_i = 1/T · Σ_t s_{i,t} / Σ_j s_{j,t}
    Perfect balance gives 1.
    """
    B, T, E = scores.shape
    with torch.autocast(scores.device.type, enabled=False):   # FP32 counts and sums, like the router
        scores = scores.float()
        counts = torch.zeros(B, E, device=scores.device, dtype=torch.float32)
        counts.scatter_add_(1, expert_ids.reshape(B, -1),
                            torch.ones_like(expert_ids.reshape(B, -1), dtype=torch.float32))
        f = counts * (E / (top_k * T))
        P = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)
        return (f * P).sum(dim=-1).mean()
