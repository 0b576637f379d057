"""Auxiliary-loss-free load balancing (V3 §2.1.2; Wang et al. arXiv 2408.15664).

After each optimizer step, every MoE layer nudges its routing bias toward balance using the
loads of that step's whole batch (all-reduce them across data-parallel ranks first):

    b_i += γ · sign(mean_j load_j − load_i)

γ follows :func:`bias_update_rate`: V3 keeps γ = 0.001 for the first 14.3T of 14.8T tokens and
sets it to 0 for the last 500B (§4.2), so the routing the model ends on is the one it was trained
with for the final stretch.

MaxVio = (max_i load_i − mean load) / mean load measures how far a layer is from balance.
"""

from __future__ import annotations

import torch

# V3 §4.2: γ = 0.001 until 14.3T of 14.8T tokens, then 0; as a fraction of training
V3_BIAS_FREEZE_AT = 1 - 0.5 / 14.8


def bias_update_rate(rate: float, step: int, total_steps: int, freeze_at: float = 1.0) -> float:
    """γ for optimizer step ``step`` (0-based) of ``total_steps``: ``rate`` while
    ``step < freeze_at · total_steps``, then 0. ``freeze_at`` 1.0 never freezes;
    :data:`V3_BIAS_FREEZE_AT` (≈ 0.966) is V3's schedule. Measured in steps, which equals tokens
    under a constant batch size (under a batch ramp, pass token counts as ``step``/``total_steps``)."""
    if rate < 0 or not 0.0 <= freeze_at <= 1.0 or total_steps < 1:
        raise ValueError(f"need rate >= 0, 0 <= freeze_at <= 1, total_steps >= 1; got {rate}, {freeze_at}, "
                         f"{total_steps}")
    return rate if step < freeze_at * total_steps else 0.0


def max_violation(load: torch.Tensor) -> torch.Tensor:
    """MaxVio of loads [..., E] along the last dim (0 = perfectly balanced)."""
    load = load.float()
    mean = load.mean(dim=-1)
    return (load.max(dim=-1).values - mean) / mean.clamp(min=1e-9)


@torch.no_grad()
def update_router_bias(bias: torch.Tensor, load: torch.Tensor, rate: float) -> None:
    """In place: b += γ·sign(mean(load) − load). A layer that saw no token (load all 0) is left
    alone, which is also what happens to rows of layers a forward did not run."""
    load = load.to(device=bias.device, dtype=torch.float32)
    if load.sum() == 0:
        return
    bias.add_(rate * torch.sign(load.mean() - load))


def load_metrics(layer_ids: list[int], loads: torch.Tensor, biases: list[torch.Tensor | None]) -> dict[str, float]:
    """MLflow-ready metrics: per-layer and mean/max MaxVio, bias spread. Rows with no tokens are
    skipped (e.g. the MTP layer in a forward without labels)."""
    out: dict[str, float] = {}
    vios = []
    for lid, load, bias in zip(layer_ids, loads, biases, strict=True):
        if load.sum() == 0:
            continue
        v = float(max_violation(load))
        vios.append(v)
        out[f"moe/maxvio/layer_{lid}"] = v
        if bias is not None:
            out[f"moe/bias_range/layer_{lid}"] = float(bias.max() - bias.min())
    if vios:
        out["moe/maxvio"] = sum(vios) / len(vios)
        out["moe/maxvio_max"] = max(vios)
    return out
