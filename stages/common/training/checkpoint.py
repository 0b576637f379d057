"""Training checkpoints keyed by global parameter names, so they load into any layout.

One checkpoint is one directory; every rank writes only its own files into it:

    meta.json                      rank 0: format, step, layout, the trainer's state (history, ...)
    model/rank-00003.safetensors   parameters and buffers this rank owns, under their global names
    optim/rank-00003.pt            AdamW state (step, exp_avg, exp_avg_sq) of the same parameters
    ranks/rank-00003.pt            this rank's data position and RNG state
    complete/rank-00003            written last: this rank's part is whole

Ownership: dense tensors (replicated on every rank) are written by rank 0; routed experts by the
first replica of each expert-parallel rank (dp_rank 0). Loading reads every file's index and takes
the names the loading rank holds, so a checkpoint saved with ep=2 loads with ep=1 (or into a
full model for export) and back.

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

from model.parallel.data_parallel import is_routed_expert
from model.parallel.groups import ParallelGroups

FORMAT = "whale-train-checkpoint"
VERSION = 1
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as it is: incomplete, foreign, or missing tensors."""


def owns(name: str, groups: ParallelGroups) -> bool:
    """Whether this rank writes ``name`` (each tensor is written exactly once per checkpoint)."""
    return groups.dp_rank == 0 if is_routed_expert(name) else groups.rank == 0


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
    tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in model.state_dict().items()
               if owns(n, groups)}
    save_file(tensors, d / "model" / f"{name}.safetensors", metadata={"format": FORMAT})
    if midway is not None:
        midway()
    names = {id(p): n for n, p in model.named_parameters()}
    optim_state = {names[id(p)]: {k: v.detach().to("cpu").clone() if torch.is_tensor(v) else v for k, v in s.items()}
                   for p, s in optimizer.state.items() if owns(names[id(p)], groups)}
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
    model.load_state_dict(found, strict=True)

    if optimizer is not None:
        saved: dict[str, dict] = {}
        for f in sorted((d / "optim").glob("*.pt")):
            saved.update(torch.load(f, map_location="cpu", weights_only=True))
        # AdamW keeps `step` on the CPU unless it is fused/capturable
        step_on_device = bool(optimizer.defaults.get("fused") or optimizer.defaults.get("capturable"))
        for n, p in model.named_parameters():
            if n in saved:
                optimizer.state[p] = {k: v.to(p.device) if torch.is_tensor(v) and (k != "step" or step_on_device)
                                      else v for k, v in saved[n].items()}
    rank_path = d / "ranks" / f"{_rank_file(groups.rank)}.pt"
    same_layout = int(meta["world_size"]) == groups.world_size and rank_path.is_file()
    rank_state = torch.load(rank_path, map_location="cpu", weights_only=True) if same_layout else None
    return meta, rank_state


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
