"""Expert dispatch: send each token to its chosen experts, run them, combine by gate.

The MoE layer owns the router and the experts; *how* tokens reach experts is a pluggable
:class:`ExpertDispatcher`, so an expert-parallel implementation (all-to-all across ranks) can
replace the local one without touching :class:`model.moe.MoE`:

    moe.dispatcher = MyExpertParallelDispatcher(group)      # or model.set_expert_dispatcher(...)

Contract of ``dispatcher(x, expert_ids, gates, experts, n_experts) -> y``:
- ``x`` [N, D] tokens; ``expert_ids`` [N, K] global expert indices, ``-1`` = assignment dropped
  (capacity); ``gates`` [N, K] FP32 combine weights;
- ``experts`` the layer's ``nn.ModuleDict`` keyed by *global* expert index (``"0"``, ``"17"``);
  an expert-parallel rank holds only its own keys, so state-dict names stay global;
- returns y [N, D] = Σ_k gates[n, k] · expert_{ids[n, k]}(x[n]) in x's dtype.
Local and expert-parallel dispatchers share :func:`run_experts_grouped` for the compute on
tokens already sorted by expert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import nn


class ExpertDispatcher(Protocol):
    def __call__(self, x: torch.Tensor, expert_ids: torch.Tensor, gates: torch.Tensor,
                 experts: Mapping[str, nn.Module], n_experts: int) -> torch.Tensor: ...


def run_experts_grouped(x_sorted: torch.Tensor, counts: Sequence[int], expert_ids: Sequence[int],
                        experts: Mapping[str, nn.Module]) -> torch.Tensor:
    """Tokens sorted by expert, ``counts[i]`` of them for expert ``expert_ids[i]`` -> outputs in
    the same order. Experts that got no token are skipped (no compute, no gradient)."""
    outputs = []
    for eid, chunk in zip(expert_ids, x_sorted.split(list(counts)), strict=True):
        if chunk.shape[0] == 0:
            continue
        key = str(eid)
        if key not in experts:
            raise KeyError(f"expert {eid} was routed to but this module holds only experts "
                           f"{sorted(map(int, experts.keys()))[:8]}...; use an expert-parallel dispatcher")
        outputs.append(experts[key](chunk))
    if not outputs:
        return x_sorted.new_zeros(0, x_sorted.shape[-1])
    return torch.cat(outputs)


class LocalSortedDispatcher:
    """All experts on this device: sort the (token, expert) assignments by expert, run each
    expert once on its contiguous block, scatter-add the gated outputs back.
    Compute is Σ_e tokens_e, i.e. only the K selected experts per token."""

    def __call__(self, x, expert_ids, gates, experts, n_experts):
        N, K = expert_ids.shape
        flat_ids = expert_ids.reshape(-1)
        order = flat_ids.argsort(stable=True)
        # one host sync for all group sizes; bin 0 counts the dropped (-1) assignments, which
        # sort first and are skipped
        counts = torch.bincount(flat_ids + 1, minlength=n_experts + 1).tolist()
        order = order[counts[0]:]
        token_of = order // K
        y = run_experts_grouped(x[token_of], counts[1:], range(n_experts), experts)
        weighted = y.float() * gates.reshape(-1)[order, None]
        out = torch.zeros(N, x.shape[-1], device=x.device, dtype=torch.float32)
        return out.index_add_(0, token_of, weighted).to(x.dtype)


class DenseDispatcher:
    """Reference/baseline: every expert runs on every token, unselected ones weighted 0.
    E/K times the FLOPs of the sorted dispatch; used by tests and the benchmark. (One expert at
    a time: measured here faster than one batched einsum over stacked weights, whose [E, N, I]
    intermediates are memory-bound.)"""

    def __call__(self, x, expert_ids, gates, experts, n_experts):
        kept = expert_ids >= 0
        combine = torch.zeros(x.shape[0], n_experts, device=x.device, dtype=torch.float32)
        combine.scatter_add_(1, expert_ids.clamp(min=0), gates * kept)
        out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        for e in range(n_experts):
            out += combine[:, e:e + 1] * experts[str(e)](x).float()
        return out.to(x.dtype)
