"""Routed experts in two grouped GEMMs for inference (what transformers' default ``grouped_mm``
experts do): one ``grouped_mm`` for every expert's [gate; up] projection, one for down, instead of
three ``nn.Linear`` calls per expert hit. Same contract and the same combine as
:class:`model.dispatch.LocalSortedDispatcher` (gated outputs summed in FP32).

The stacked weights are copies, rebuilt whenever an expert weight changes in place
(``Tensor._version``), so an engine built on a model that is still training never decodes with
stale experts. :func:`grouped_experts` installs the dispatcher for the duration of an engine step only:
training and expert-parallel dispatchers are never replaced.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from model.dispatch import LocalSortedDispatcher

HAVE_GROUPED_MM = hasattr(F, "grouped_mm")


class GroupedExperts:
    def __init__(self):
        self._stacked: dict[int, tuple] = {}   # id(experts) -> (params, their versions, gate_up, down)
        self._moe_layers: dict[int, list] = {}

    def moe_layers(self, model) -> list:
        """The model's modules that dispatch to experts (found once per model)."""
        if id(model) not in self._moe_layers:
            self._moe_layers[id(model)] = [m for m in model.modules() if hasattr(m, "dispatcher")]
        return self._moe_layers[id(model)]

    def _weights(self, experts, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._stacked.get(id(experts))
        if hit is not None:
            params, versions, gate_up, down = hit
            if versions == tuple(p._version for p in params):
                return gate_up, down
        mods = [experts[str(e)] for e in range(n_experts)]
        params = [p for m in mods for p in (m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight)]
        # [E, D, 2I] and [E, I, D]: grouped_mm multiplies x [N, D] by each group's [D, K]
        gate_up = torch.stack([torch.cat([m.gate_proj.weight, m.up_proj.weight]).t() for m in mods]).contiguous()
        down = torch.stack([m.down_proj.weight.t() for m in mods]).contiguous()
        self._stacked[id(experts)] = (params, tuple(p._version for p in params), gate_up, down)
        return gate_up, down

    def __call__(self, x, expert_ids, gates, experts, n_experts):
        N, K = expert_ids.shape
        flat_ids = expert_ids.reshape(-1)
        order = flat_ids.argsort(stable=True)
        offs = torch.bincount(flat_ids, minlength=n_experts).cumsum(0).to(torch.int32)
        token_of = order // K
        gate_up, down = self._weights(experts, n_experts)
        g, u = F.grouped_mm(x[token_of], gate_up, offs=offs).chunk(2, dim=-1)
        y = F.grouped_mm(F.silu(g) * u, down, offs=offs)
        weighted = y.float() * gates.reshape(-1)[order, None]
        out = torch.zeros(N, x.shape[-1], device=x.device, dtype=torch.float32)
        return out.index_add_(0, token_of, weighted).to(x.dtype)


@contextlib.contextmanager
def grouped_experts(model, dispatcher: GroupedExperts):
    """Use ``dispatcher`` in every MoE layer that runs the default local dispatch, then restore."""
    swapped = []
    if HAVE_GROUPED_MM and not model.training:
        for m in dispatcher.moe_layers(model):
            if isinstance(m.dispatcher, LocalSortedDispatcher) and len(m.experts) == m.n_experts:
                swapped.append((m, m.dispatcher))
                m.dispatcher = dispatcher
    try:
        yield
    finally:
        for m, d in swapped:
            m.dispatcher = d
