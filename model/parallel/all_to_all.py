"""All-to-all with variable split sizes, differentiable.

Forward: rank i sends ``input_splits[j]`` rows to rank j and receives ``output_splits[j]`` rows
from it. The adjoint of that permutation is the same exchange run backwards (the splits swap), so
the backward is one more ``all_to_all_single`` on the incoming gradient.

Every rank of the group must run forward *and* backward the same number of times in the same
order. A rank that sends or receives nothing still takes part: callers keep the result in the
autograd graph even when it has zero rows (see :mod:`model.parallel.expert_parallel`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup


def exchange_rows(x: torch.Tensor, output_splits: Sequence[int], input_splits: Sequence[int],
                  group: ProcessGroup | None = None) -> torch.Tensor:
    """The plain (not differentiable) variable-size exchange: ``x`` [sum(input_splits), ...] ->
    [sum(output_splits), ...]. For metadata that needs no gradient."""
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), list(output_splits), list(input_splits), group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, output_splits: list[int], input_splits: list[int],
                group: ProcessGroup | None) -> torch.Tensor:
        ctx.splits, ctx.group = (output_splits, input_splits), group
        return exchange_rows(x, output_splits, input_splits, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        output_splits, input_splits = ctx.splits
        return exchange_rows(grad, input_splits, output_splits, ctx.group), None, None, None


def all_to_all_single_autograd(x: torch.Tensor, output_splits: Sequence[int], input_splits: Sequence[int],
                               group: ProcessGroup | None = None) -> torch.Tensor:
    """``x`` [sum(input_splits), ...] -> [sum(output_splits), ...], rows grouped by source rank."""
    if x.shape[0] != sum(input_splits):
        raise ValueError(f"all-to-all input has {x.shape[0]} rows, input_splits add up to {sum(input_splits)}")
    return _AllToAll.apply(x, list(output_splits), list(input_splits), group)


def exchange_counts(send_counts: torch.Tensor, group: ProcessGroup | None = None) -> torch.Tensor:
    """``send_counts`` [world, n] (row j: what goes to rank j) -> [world, n] (row j: what comes
    from rank j). The header every variable-size all-to-all needs first."""
    recv = torch.empty_like(send_counts)
    dist.all_to_all_single(recv, send_counts.contiguous(), group=group)
    return recv
