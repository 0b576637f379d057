"""DeepSeekMoE (V3 §2.1.2): shared experts + fine-grained routed experts.

    h' = h + Σ_{shared} FFN_s(h) + Σ_{i ∈ topK} g_{i,t} · FFN_i(h)

Module names follow the checkpoint: ``gate`` (router), ``experts.<global index>.{gate,up,down}_proj``,
``shared_experts.{gate,up,down}_proj``. Each forward also reports, outside autograd, how many
tokens each expert was chosen by (the loads that drive the bias update and MaxVio) and how many
assignments capacity dropped; the sequence-wise balance loss (× α) rides along when training.

Token dropping (DeepSeek-V2 §2.2.4, training only, off unless ``expert_capacity_factor`` is set):
the budget is per *device*, counted where the tokens arrive: each of the ``ep`` devices holding
experts may run at most ``ceil(cf · A / ep)`` assignments, A the (token, expert) assignments of the
whole expert-parallel group in this forward; beyond that it drops the lowest-affinity assignments it
received. Assignments of the never-drop sequences (``never_drop_share`` of each micro-batch, V2
~10 %) are always kept. The decision is taken before the token rows move, on routing metadata
(affinity, never-drop flag) exchanged with the receiving device, so dropped rows are never sent.
Without expert parallelism there is one device: it holds exactly the average, so cf >= 1 drops
nothing (V2's rule; a per-expert cap, the Switch/GShard rule, is a different one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from model.config import ModelConfig
from model.dispatch import ExpertDispatcher, LocalSortedDispatcher
from model.mlp import SwiGLU
from model.router import Router, Routing, sequence_balance_loss


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
        self.never_drop_share = config.never_drop_share
        self.balance_alpha = config.seq_aux_loss_alpha
        self.gate = Router(config)
        self.experts = nn.ModuleDict({
            str(i): SwiGLU(config.hidden_size, config.moe_intermediate_size) for i in range(self.n_experts)})
        self.shared_experts = (SwiGLU(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
                               if config.n_shared_experts else None)
        self.dispatcher: ExpertDispatcher = LocalSortedDispatcher()

    def forward(self, x: torch.Tensor, never_drop: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEStats]:
        """x [B, T, D]; ``never_drop`` [B] bool marks sequences exempt from token dropping
        (default: :func:`never_drop_sequences`)."""
        B, T, D = x.shape
        tokens = x.reshape(-1, D)
        routing = self.gate(tokens)
        with torch.no_grad():
            load = torch.bincount(routing.expert_ids.reshape(-1), minlength=self.n_experts).float()
        expert_ids, dropped = self.drop_tokens(routing, B, never_drop)

        y = self.dispatcher(tokens, expert_ids, routing.gates, self.experts, self.n_experts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(tokens)

        balance = None
        if self.training and self.balance_alpha > 0:
            balance = self.balance_alpha * sequence_balance_loss(
                routing.scores.view(B, T, -1), routing.expert_ids.view(B, T, -1), self.top_k)
        return y.view(B, T, D), MoEStats(load, dropped, balance)

    def drop_tokens(self, routing: Routing, batch: int, never_drop: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Routing of B·T tokens -> (expert_ids [N, K] with dropped assignments set to -1, number
        dropped here). Drops only when training with a capacity factor. An expert-parallel
        dispatcher supplies its own ``drop_over_device_budget`` (the budget of the device that
        receives each assignment); otherwise this device is the only one."""
        expert_ids = routing.expert_ids
        if not (self.training and self.capacity_factor is not None):
            return expert_ids, torch.zeros((), dtype=torch.long, device=expert_ids.device)
        N, K = expert_ids.shape
        if never_drop is None:
            never_drop = never_drop_sequences(batch, self.never_drop_share, expert_ids.device)
        protected = never_drop.to(expert_ids.device).repeat_interleave(N // batch)[:, None].expand(N, K)
        affinity = routing.scores.detach().gather(-1, expert_ids)
        drop = getattr(self.dispatcher, "drop_over_device_budget", drop_over_device_budget)
        return drop(expert_ids, affinity, protected, self.capacity_factor, self.n_experts)

    def retain_experts(self, expert_ids: list[int]) -> None:
        """Keep only these routed experts (an expert-parallel rank's share); names stay global."""
        keep = {str(i) for i in expert_ids}
        for key in [k for k in self.experts.keys() if k not in keep]:
            del self.experts[key]


def never_drop_sequences(batch: int, share: float, device: torch.device | str | None = None) -> torch.Tensor:
    """[batch] bool: ``round(share · batch)`` evenly spaced sequences whose tokens are never dropped
    (V2 exempts ~10 % of training sequences). Deterministic in the batch position, so every MoE layer
    and an activation-checkpoint recompute agree; batches are shuffled, so position is a random
    choice of sequences. With fewer than 1/(2·share) sequences per micro-batch none is exempt: pass
    ``never_drop`` to :meth:`MoE.forward` to choose them otherwise."""
    count = int(share * batch + 0.5)
    mask = torch.zeros(batch, dtype=torch.bool, device=device)
    if count:
        mask[torch.arange(count, device=device) * batch // count] = True
    return mask


def keep_within_budget(affinity: torch.Tensor, protected: torch.Tensor, budget: int) -> torch.Tensor:
    """One device's assignments [R] -> keep [R] bool: every protected one, then the highest-affinity
    others while the count stays within ``budget`` (protected ones count against it first)."""
    keep = protected.clone()
    room = budget - int(protected.sum())
    if room > 0:
        candidates = (~protected).nonzero().squeeze(1)
        best = affinity[candidates].argsort(descending=True, stable=True)[:room]
        keep[candidates[best]] = True
    return keep


@torch.no_grad()
def drop_over_device_budget(expert_ids: torch.Tensor, affinity: torch.Tensor, protected: torch.Tensor,
                            capacity_factor: float, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """V2 device-level dropping with this device as the only one: it may run ``ceil(cf · A)`` of its
    A assignments. expert_ids, affinity, protected [N, K] -> (expert_ids with -1 where dropped,
    number dropped)."""
    valid = expert_ids.reshape(-1) >= 0
    budget = math.ceil(capacity_factor * int(valid.sum()))
    keep = torch.zeros_like(valid)
    keep[valid] = keep_within_budget(affinity.reshape(-1)[valid], protected.reshape(-1)[valid], budget)
    return expert_ids.masked_fill(~keep.view_as(expert_ids), -1), (valid & ~keep).sum()
