"""Shared by the parallel tests: spawn N gloo processes running a function, collect their results."""

from __future__ import annotations

import datetime
import os

import torch
import torch.multiprocessing as mp

from tests.pretrain.helpers import free_port, micro_model, random_batch  # noqa: F401  (re-exported)


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # a collective mismatch fails in a minute instead of hanging the suite
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(fn(rank, world, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, tmp_path, *args) -> list:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes (gloo initialised); returns
    each rank's return value. ``fn`` must be importable (a module-level function)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_entry, args=(world, free_port(), str(tmp_path), fn, args), nprocs=world, join=True,
                       start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
