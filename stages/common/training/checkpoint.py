"""Training checkpoints keyed by global parameter names, so they load into any layout.

One checkpoint is one directory; every rank writes only its own files into it:

    meta.json                      rank 0: format, step, layout, the trainer's state (history, ...)
    model/rank-00003.safetensors   parameters and buffers this rank owns, under their global names
    optim/rank-00003.pt            AdamW state (step, exp_avg, exp_avg_sq) of the same parameters
    ranks/rank-00003.pt            this rank's data position and RNG state
    complete/rank-00003            written last: this rank's part is whole

Ownership: dense tensors (replicated on the dp x ep ranks of a pipeline stage) are written by the
first rank of their stage (rank 0 without pipelining); routed experts by the first replica of each
expert-parallel rank (dp_rank 0). Optimizer states are written by the same owners, or under ZeRO-1
by the one rank that keeps each parameter's state. Under ZeRO-3 (FSDP2) every rank gathers each
sharded parameter and moment whole (``DTensor.full_tensor``) and the same owner writes it, so the
files do not depend on the sharding; loading cuts the whole tensors back into this rank's shard.
Loading reads every file's index and takes the names the loading rank holds (and, under ZeRO-1,
the states it keeps), so a checkpoint saved with pp=2, ep=2, ZeRO-1 or ZeRO-3 loads with pp=1,
ep=1, no ZeRO (or into a full model for export) and back.

Atomicity comes from how the trainer hands the directory to Ray Train: each rank writes into a
private temporary directory, ``ray.train.report`` copies it into the run's storage, and Ray
registers the checkpoint only after *every* rank's copy finished (then updates its snapshot and
only then deletes checkpoints beyond ``keep``). A crash while writing or copying leaves an
unregistered directory that nothing will ever load; the last registered one stays intact.
:func:`load_checkpoint` still refuses a directory whose ``complete/`` markers are missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor

from model.parallel.data_parallel import is_routed_expert
from model.parallel.fsdp import full_tensor, shard_like
from model.parallel.groups import ParallelGroups

FORMAT = "whale-train-checkpoint"
VERSION = 1
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as it is: incomplete, foreign, or missing tensors."""


def owns(name: str, groups: ParallelGroups) -> bool:
    """Whether this rank writes ``name`` (each tensor is written exactly once per checkpoint)."""
    if is_routed_expert(name):
        return groups.dp_rank == 0
    return groups.dp_rank == 0 and groups.ep_rank == 0   # the first rank of its pipeline stage


def _rank_file(rank: int) -> str:
    return f"rank-{rank:05d}"


def save_checkpoint(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    groups: ParallelGroups, rank_state: dict[str, Any], meta: dict[str, Any] | None = None,
                    midway: Callable[[], None] | None = None) -> Path:
    """Write this rank's part of a checkpoint into ``directory``. ``meta`` is given on rank 0
    only. ``midway`` runs after the model file and before the rest (fault-injection tests)."""
    d = Path(directory)
    for sub in ("model", "optim", "ranks", "complete"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    name = _rank_file(groups.rank)
    tensors = {}
    for n, t in model.state_dict().items():
        t = full_tensor(t)   # ZeRO-3 shards: gathered whole (every rank, in the same order)
        if owns(n, groups):
            tensors[n] = t.detach().to("cpu").contiguous().clone()
    save_file(tensors, d / "model" / f"{name}.safetensors", metadata={"format": FORMAT})
    if midway is not None:
        midway()
    names = {id(p): n for n, p in model.named_parameters()}
    manages = getattr(optimizer, "manages", None)   # ZeRO-1: each state lives on one rank
    optim_state = {}
    for p, s in optimizer.state.items():   # the same order on every rank (the optimizer's groups)
        s = {k: full_tensor(v) for k, v in s.items()}   # ZeRO-3: moments are shards like p
        if (manages(p) if manages is not None else owns(names[id(p)], groups)):
            optim_state[names[id(p)]] = {k: v.detach().to("cpu").clone() if torch.is_tensor(v) else v
                                         for k, v in s.items()}
    torch.save(optim_state, d / "optim" / f"{name}.pt")
    torch.save(rank_state, d / "ranks" / f"{name}.pt")
    if meta is not None:
        (d / META).write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta}) + "\n")
    (d / "complete" / name).write_text("")
    return d


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's meta.json, after checking that every rank's part is complete."""
    d = Path(directory)
    path = d / META
    if not path.is_file():
        raise CheckpointError(f"{d} is not a training checkpoint: {META} is missing")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a {FORMAT} v{VERSION} checkpoint")
    world = int(meta["world_size"])
    missing = [r for r in range(world) if not (d / "complete" / _rank_file(r)).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {d} is incomplete: ranks {missing} of {world} never finished "
                              f"writing; it must not be used")
    return meta


def read_tensors(directory: str | Path, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Model tensors from every rank's file (all of them, or only ``names``)."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted((Path(directory) / "model").glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                if names is None or key in names:
                    out[key] = sf.get_tensor(key)
    return out


def load_checkpoint(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    groups: ParallelGroups) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load the tensors this rank holds; returns (meta, this rank's saved state or None when the
    checkpoint came from another world size)."""
    d = Path(directory)
    meta = read_meta(d)
    wanted = model.state_dict()
    found = read_tensors(d, set(wanted))
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise CheckpointError(f"checkpoint {d} lacks {len(missing)} tensors this model needs "
                              f"(first: {missing[:3]}); was it saved from another model config?")
    for n, t in found.items():
        if t.shape != wanted[n].shape:
            raise CheckpointError(f"checkpoint tensor {n} has shape {tuple(t.shape)}, "
                                  f"the model {tuple(wanted[n].shape)}")
    model.load_state_dict({n: shard_like(t, wanted[n]) for n, t in found.items()}, strict=True)

    if optimizer is not None:
        saved: dict[str, dict] = {}
        for f in sorted((d / "optim").glob("*.pt")):
            saved.update(torch.load(f, map_location="cpu", weights_only=True))
        # AdamW keeps `step` on the CPU unless it is fused/capturable
        step_on_device = bool(optimizer.defaults.get("fused") or optimizer.defaults.get("capturable"))
        manages = getattr(optimizer, "manages", lambda p: True)
        for n, p in model.named_parameters():
            if n in saved and manages(p):
                optimizer.state[p] = {k: _state_tensor(k, v, p, step_on_device) for k, v in saved[n].items()}
    rank_path = d / "ranks" / f"{_rank_file(groups.rank)}.pt"
    layout = groups.layout
    saved_layout = {"pp": 1, **meta.get("layout", {})}
    same_layout = (int(meta["world_size"]) == groups.world_size and rank_path.is_file()
                   and {k: saved_layout.get(k) for k in ("pp", "dp", "ep")} == {"pp": layout.pp, "dp": layout.dp,
                                                                                 "ep": layout.ep})
    rank_state = torch.load(rank_path, map_location="cpu", weights_only=True) if same_layout else None
    return meta, rank_state


def _state_tensor(key: str, value: Any, p: torch.Tensor, step_on_device: bool) -> Any:
    """A saved AdamW state entry placed like its parameter (moments of a ZeRO-3 shard: the same shard)."""
    if not torch.is_tensor(value) or (key == "step" and not step_on_device):
        return value
    return shard_like(value, p) if key != "step" and isinstance(p, DTensor) else value.to(p.device)


def load_model(directory: str | Path, device: torch.device | str = "cpu"):
    """The whole model (every expert) from a checkpoint of any layout: for export and evaluation."""
    from model import DeepSeekV3, ModelConfig

    meta = read_meta(directory)
    config = ModelConfig.from_hf_dict(meta["model_config"])
    config.activation_checkpointing = "none"
    with torch.device("meta"):
        model = DeepSeekV3(config)
    tensors = read_tensors(directory)
    missing = sorted(set(model.state_dict()) - set(tensors))
    if missing:
        raise CheckpointError(f"checkpoint {directory} lacks {len(missing)} tensors (first: {missing[:3]})")
    model.load_state_dict(tensors, strict=True, assign=True)
    model.init_buffers(device)
    return model.to(device)
