"""The parallel layout: how many ranks along each dimension, and where a rank sits. No torch.

Ranks are laid out on a ``(dp, ep)`` grid with ``ep`` the inner (fastest-varying) dimension, so
an expert-parallel group is ``ep`` consecutive ranks: on GPUs, the same node, where the
all-to-all runs over NVLink. (Pipeline parallelism, when it comes, adds an outer ``pp``.)

    world rank r  ->  dp_rank = r // ep,  ep_rank = r % ep

- ``ep`` ranks share one copy of the routed experts, each holding ``n_routed_experts / ep`` of
  them (a contiguous block: ep_rank k holds experts [k·E/ep, (k+1)·E/ep)).
- ``dp`` copies of that arrangement; the ranks with the same ``ep_rank`` hold the same experts
  and average their gradients.
- Every rank reads its own slice of the batch: the batch is split ``dp·ep`` ways.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelLayout:
    dp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"parallel.{name} must be a positive integer, got {value!r}")

    @property
    def world_size(self) -> int:
        return self.dp * self.ep

    def coords(self, rank: int) -> tuple[int, int]:
        """(dp_rank, ep_rank) of a world rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a {self.dp}x{self.ep} (dp x ep) layout")
        return divmod(rank, self.ep)

    def experts_of(self, ep_rank: int, n_experts: int) -> range:
        """The routed experts (global indices) that ``ep_rank`` holds."""
        per_rank = n_experts // self.ep
        return range(ep_rank * per_rank, (ep_rank + 1) * per_rank)

    def check(self, n_routed_experts: int, workers: int | None = None) -> list[str]:
        """Human-readable problems of this layout for a model and a worker count (empty: fine)."""
        errors = []
        if n_routed_experts % self.ep:
            errors.append(f"n_routed_experts ({n_routed_experts}) must be divisible by parallel.ep "
                          f"({self.ep}): each expert-parallel rank holds an equal share")
        if workers is not None and workers != self.world_size:
            errors.append(f"workers ({workers}) must equal parallel.dp x parallel.ep "
                          f"({self.dp} x {self.ep} = {self.world_size})")
        return errors

    def describe(self) -> str:
        return f"{self.world_size} rank(s) = dp {self.dp} x ep {self.ep}"
