"""The parallel layout: how many ranks along each dimension, and where a rank sits. No torch.

Ranks are laid out on a ``(pp, dp, ep)`` grid with ``ep`` the inner (fastest-varying) dimension,
so an expert-parallel group is ``ep`` consecutive ranks (on GPUs the same node, where the
all-to-all runs over NVLink) and a pipeline stage's replicas are ``dp·ep`` consecutive ranks;
``pp`` is outermost (pipeline p2p traffic is the lightest, it may cross nodes). This is
DeepSeek-V3's production shape: PP16 x EP64 x ZeRO-1 DP over 2048 GPUs (V3 §3.2).

    world rank r  ->  pp_rank = r // (dp·ep),  dp_rank = (r // ep) % dp,  ep_rank = r % ep

- ``pp`` pipeline stages (or ``pp`` ranks each holding several virtual stages): each holds a
  contiguous slice of the layers (:func:`split_layers`); the embedding sits in the first stage,
  the final norm, head and MTP modules in the last.
- ``ep`` ranks share one copy of a stage's routed experts, each holding ``n_routed_experts / ep``
  of them (a contiguous block: ep_rank k holds experts [k·E/ep, (k+1)·E/ep)).
- ``dp`` copies of that arrangement; ranks with the same (pp_rank, ep_rank) hold the same experts.
- Every pipeline reads its own slice of the batch: the batch is split ``dp·ep`` ways; the ``pp``
  ranks of one pipeline read the same micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("1f1b", "interleaved", "dualpipev")


@dataclass(frozen=True)
class ParallelLayout:
    dp: int = 1
    ep: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "ep", "pp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"parallel.{name} must be a positive integer, got {value!r}")

    @property
    def world_size(self) -> int:
        return self.pp * self.dp * self.ep

    @property
    def stage_size(self) -> int:
        """Ranks that hold the same pipeline stage (and read different data): dp x ep."""
        return self.dp * self.ep

    def coords(self, rank: int) -> tuple[int, int]:
        """(dp_rank, ep_rank) of a world rank inside its pipeline stage."""
        _, dp_rank, ep_rank = self.coords3(rank)
        return dp_rank, ep_rank

    def coords3(self, rank: int) -> tuple[int, int, int]:
        """(pp_rank, dp_rank, ep_rank) of a world rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a {self.describe()} layout")
        pp_rank, inner = divmod(rank, self.stage_size)
        dp_rank, ep_rank = divmod(inner, self.ep)
        return pp_rank, dp_rank, ep_rank

    def data_rank(self, rank: int) -> int:
        """Which slice of the batch ``rank`` reads: the same for every stage of a pipeline."""
        return rank % self.stage_size

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
            errors.append(f"workers ({workers}) must equal parallel.pp x parallel.dp x parallel.ep "
                          f"({self.pp} x {self.dp} x {self.ep} = {self.world_size})")
        return errors

    def describe(self) -> str:
        if self.pp == 1:
            return f"{self.world_size} rank(s) = dp {self.dp} x ep {self.ep}"
        return f"{self.world_size} rank(s) = pp {self.pp} x dp {self.dp} x ep {self.ep}"


# -- pipeline stages (pure arithmetic, shared by the trainer and `pipeline plan`) ------------------

def stages_per_rank(schedule: str, virtual_stages: int = 2) -> int:
    """Model chunks each pipeline rank holds: 1 for 1F1B, ``virtual_stages`` for interleaved
    1F1B, 2 for DualPipeV (rank r holds stages r and 2·pp-1-r: the "V")."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r}; expected one of {SCHEDULES}")
    return {"1f1b": 1, "interleaved": virtual_stages, "dualpipev": 2}[schedule]


def stage_ranks(pp: int, schedule: str, virtual_stages: int = 2) -> list[int]:
    """``stage index -> pipeline rank``: loop-style for 1F1B and interleaved (stage s on rank
    s mod pp), V-style for DualPipeV (rank r holds stages r and 2·pp-1-r, so the first and the
    last stage, i.e. the embedding and the head + MTP, share rank 0 as in DeepSeek-V3)."""
    n = pp * stages_per_rank(schedule, virtual_stages)
    if schedule == "dualpipev":
        return [s if s < pp else n - 1 - s for s in range(n)]
    return [s % pp for s in range(n)]


def split_layers(num_layers: int, mtp_layers: int, num_stages: int) -> list[list[int]]:
    """The split rule: layer ids per stage, MTP modules counted as layers after the last one.

    The ``num_layers + mtp_layers`` units go to the stages in order, in contiguous blocks as even
    as possible; when they do not divide, the *earlier* stages take one more (the last stage also
    runs the output head, the first only an embedding lookup). Ids ``>= num_layers`` are MTP
    modules (``mtp.<id - num_layers>``), always in the last stage. DeepSeek-V3's 61 + 1 over 16
    ranks x 2 DualPipe stages gives 30 stages of 2 units and 2 of 1.
    """
    units = num_layers + mtp_layers
    if num_stages < 1:
        raise ValueError(f"need at least one pipeline stage, got {num_stages}")
    if units < num_stages:
        raise ValueError(f"{num_layers} layers + {mtp_layers} MTP module(s) cannot fill {num_stages} pipeline "
                         f"stages (every stage needs at least one); lower parallel.pp or use fewer stages per rank")
    base, extra = divmod(units, num_stages)
    out, start = [], 0
    for s in range(num_stages):
        size = base + (1 if s < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    if mtp_layers and any(i >= num_layers for stage in out[:-1] for i in stage):
        raise ValueError(f"the MTP module(s) would span several stages with {num_stages} stages over "
                         f"{num_layers} + {mtp_layers} units; use fewer pipeline stages")
    return out
