"""Gradient reduction and clipping for a (dp, ep) layout.

After ``backward`` each rank holds gradients of *its* share of the loss. The trainer weights every
rank's loss by its share of the global batch (tokens / global tokens), so the global gradient is
the plain **sum** over ranks:

- dense parameters (replicated on the dp x ep ranks of a pipeline stage; everywhere without
  pipelining): all-reduce over the stage's ranks;
- routed experts (sharded over ``ep``, replicated ``dp`` times): all-reduce over the ``dp``
  replicas of the same experts; tokens from the other ep ranks already reached them through the
  all-to-all's backward.

Gradients go in flat buckets (one collective per ~``bucket_mb``, not one per tensor: gloo pays a
fixed cost per call). A parameter that got no gradient on this rank (an expert no token chose)
contributes zeros, so every rank sends buckets of the same shape.

The global gradient norm counts every parameter once: dense norms are already identical on the
ranks of a stage; expert norms are summed over the expert-parallel group; with pipelining the
stages' squared norms are summed over the pipeline.

This is DDP's arithmetic without DDP's wrapper: DDP reduces every parameter over one group, and
experts need another. ZeRO-1 (:mod:`model.parallel.zero`) keeps this reduction and shards the
optimizer states. Under ZeRO-3 (:mod:`model.parallel.fsdp`, ``dense_sharded=True``) FSDP2 has
already reduce-scattered the dense gradients into shards: only the experts are reduced here, and
the dense squared norm is summed over the shards' ranks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from model.parallel.groups import ParallelGroups


def is_routed_expert(name: str) -> bool:
    """``layers.3.mlp.experts.17.up_proj.weight`` yes; ``...mlp.shared_experts...`` no."""
    return ".experts." in f".{name}"


def _local(t: torch.Tensor) -> torch.Tensor:
    """A ZeRO-3 shard's local piece (a view), any other tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


class GradientReducer:
    def __init__(self, model: nn.Module, groups: ParallelGroups, bucket_mb: float = 32.0, *,
                 dense_sharded: bool = False):
        self.groups = groups
        self.dense_sharded = dense_sharded   # ZeRO-3: dense grads are FSDP2 shards, already summed
        self.bucket_bytes = int(bucket_mb * 2**20)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.dense = [p for n, p in named if not is_routed_expert(n)]
        self.experts = [p for n, p in named if is_routed_expert(n)]

    @property
    def parameters(self) -> list[nn.Parameter]:
        return self.dense + self.experts

    @torch.no_grad()
    def reduce(self) -> None:
        """Sum gradients across ranks: dense over the world, experts over their replicas."""
        for params, over, size in ((self.dense, "stage", self.groups.layout.stage_size),
                                   (self.experts, "expert_dp", self.groups.layout.dp)):
            if size > 1 and not (over == "stage" and self.dense_sharded):
                for bucket in self._buckets(params):
                    self._reduce_bucket(bucket, over)

    def _buckets(self, params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
        buckets: list[list[nn.Parameter]] = []
        size = 0
        for p in params:
            nbytes = p.numel() * p.element_size()
            if not buckets or size + nbytes > self.bucket_bytes or buckets[-1][0].dtype != p.dtype:
                buckets.append([])
                size = 0
            buckets[-1].append(p)
            size += nbytes
        return buckets

    def _reduce_bucket(self, bucket: list[nn.Parameter], over: str) -> None:
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
        self.groups.all_reduce_(flat, over=over)
        offset = 0
        for p in bucket:
            n = p.numel()
            g = flat[offset:offset + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            offset += n

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """The L2 norm of the whole model's gradient (call after :meth:`reduce`)."""
        def sq(params: list[nn.Parameter]) -> torch.Tensor:
            grads = [_local(p.grad) for p in params if p.grad is not None]
            if not grads:
                return torch.zeros((), dtype=torch.float32, device=self._device())
            return torch.stack([n.float() for n in torch._foreach_norm(grads)]).pow(2).sum()

        expert_sq = sq(self.experts)
        self.groups.all_reduce_(expert_sq, over="ep")
        dense_sq = sq(self.dense)
        if self.dense_sharded:   # each rank holds a disjoint piece of every dense gradient
            self.groups.all_reduce_(dense_sq, over="stage")
        total = self.groups.all_reduce_(dense_sq + expert_sq, over="pp")   # no-op without pipelining
        return total.sqrt()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float | None) -> float:
        """Scale gradients so their global norm is at most ``max_norm``; returns the norm before.
        A non-finite norm is returned unclipped (the caller skips the step)."""
        norm = self.grad_norm()
        total = float(norm)
        if max_norm is not None and math.isfinite(total) and total > max_norm:
            grads = [_local(p.grad) for p in self.parameters if p.grad is not None]
            torch._foreach_mul_(grads, max_norm / (total + 1e-6))
        return total

    def _device(self) -> torch.device:
        return self.parameters[0].device if self.parameters else torch.device("cpu")
