"""Process groups of a (pp, dp, ep) layout, built from a DeviceMesh.

The mesh has dims ``("dp", "ep")``, or ``("pp", "dp", "ep")`` with pipeline parallelism:
``mesh["ep"]`` is this rank's expert-parallel group (it exchanges tokens with), ``mesh["dp"]`` the
ranks that hold the same experts (expert gradients are reduced over it), ``mesh["pp"]`` the ranks
of this rank's pipeline (activations go p2p along it). Dense parameters are replicated on the
``dp x ep`` ranks of a stage (``stage_group``; the whole world without pipelining) and reduced
over them.

A single process without ``torch.distributed`` is a valid 1x1 layout: every group is None and
the collective helpers below do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from model.parallel.layout import ParallelLayout


@dataclass
class ParallelGroups:
    layout: ParallelLayout
    rank: int = 0
    dp_rank: int = 0
    ep_rank: int = 0
    world: ProcessGroup | None = None       # every rank (metrics)
    ep_group: ProcessGroup | None = None    # token all-to-all
    expert_dp_group: ProcessGroup | None = None  # replicas of the same experts
    mesh: object | None = None              # torch.distributed.device_mesh.DeviceMesh
    pp_rank: int = 0
    pp_group: ProcessGroup | None = None    # this rank's pipeline (p2p activations)
    stage_group: ProcessGroup | None = None  # replicas of this pipeline stage (dense gradients); None: world

    @classmethod
    def single(cls) -> "ParallelGroups":
        return cls(ParallelLayout())

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # -- collectives that are no-ops on one rank ---------------------------------------------
    def all_reduce_(self, t: torch.Tensor, op=dist.ReduceOp.SUM, group: ProcessGroup | None = None,
                    *, over: str = "world") -> torch.Tensor:
        """In-place all-reduce over ``over`` ("world", "stage", "pp", "ep" or "expert_dp"), or ``group``."""
        group = group or {"world": self.world, "stage": self.stage_group or self.world, "pp": self.pp_group,
                          "ep": self.ep_group, "expert_dp": self.expert_dp_group}[over]
        size = {"world": self.world_size, "stage": self.layout.stage_size, "pp": self.layout.pp,
                "ep": self.layout.ep, "expert_dp": self.layout.dp}[over]
        if size > 1:
            dist.all_reduce(t, op=op, group=group)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.world)


def init_parallel(layout: ParallelLayout, device_type: str = "cpu") -> ParallelGroups:
    """Build the groups of ``layout`` on the already initialised default process group (every
    rank must call this, in the same order as its other collectives)."""
    if layout.world_size == 1:
        if dist.is_initialized() and dist.get_world_size() != 1:
            raise ValueError(f"layout {layout.describe()} but torch.distributed has "
                             f"{dist.get_world_size()} ranks")
        return ParallelGroups(layout)
    if not dist.is_initialized():
        raise RuntimeError(f"layout {layout.describe()} needs torch.distributed initialised "
                           f"(Ray Train, torchrun or init_process_group) before init_parallel")
    world = dist.get_world_size()
    if world != layout.world_size:
        raise ValueError(f"torch.distributed has {world} ranks but the layout is {layout.describe()}")
    from torch.distributed.device_mesh import init_device_mesh

    rank = dist.get_rank()
    pp_rank, dp_rank, ep_rank = layout.coords3(rank)
    if layout.pp == 1:   # exactly the (dp, ep) mesh of a layout without pipelining
        mesh = init_device_mesh(device_type, (layout.dp, layout.ep), mesh_dim_names=("dp", "ep"))
        return ParallelGroups(layout, rank=rank, dp_rank=dp_rank, ep_rank=ep_rank,
                              world=dist.group.WORLD, ep_group=mesh["ep"].get_group(),
                              expert_dp_group=mesh["dp"].get_group(), mesh=mesh)
    mesh = init_device_mesh(device_type, (layout.pp, layout.dp, layout.ep), mesh_dim_names=("pp", "dp", "ep"))
    # the dp x ep ranks of each stage; every rank creates every group, in the same order
    stage_group = None
    for p in range(layout.pp):
        g = dist.new_group(list(range(p * layout.stage_size, (p + 1) * layout.stage_size)))
        if p == pp_rank:
            stage_group = g
    return ParallelGroups(layout, rank=rank, dp_rank=dp_rank, ep_rank=ep_rank, world=dist.group.WORLD,
                          ep_group=mesh["ep"].get_group(), expert_dp_group=mesh["dp"].get_group(), mesh=mesh,
                          pp_rank=pp_rank, pp_group=mesh["pp"].get_group(), stage_group=stage_group)
