"""Validation loss and bits per byte over named evaluation sets, across ranks.

bits per byte = Σ cross-entropy (nats) / ln 2 / Σ UTF-8 bytes of the predicted tokens

Counting the bytes of exactly the tokens that were scored makes the number independent of the
tokenizer (a coarser vocabulary has fewer, harder tokens but the same bytes) and exact for any
subset of the validation text. Special tokens (EOS between documents) have 0 bytes: predicting
them costs bits but adds no bytes, as in a byte-level model that must also encode the boundary.

Every rank scores its own batches; with expert parallelism all ranks must run the same number
of forwards (each one is a collective), so the count is the minimum over ranks. With pipeline
parallelism the pp ranks of a pipeline score the same batches through their stages
(:meth:`model.parallel.pipeline.Pipeline.score`) and only the last stage's ranks count them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed import ReduceOp

from model.fp8 import precision_autocast
from model.parallel.groups import ParallelGroups
from model.transformer import IGNORE_INDEX, next_token_targets


@torch.no_grad()
def evaluate(model: nn.Module, sets: dict[str, list[dict[str, torch.Tensor]]], groups: ParallelGroups, *,
             token_bytes: torch.Tensor | None = None, precision: str = "bf16",
             device: torch.device | None = None, pipeline=None) -> dict[str, float]:
    """``val/loss/<set>`` (nats per target), ``val/bpb/<set>`` (with ``token_bytes``), and the
    pooled ``val/loss`` and ``val/bpb`` over every set."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[str, list[float]] = {}
    try:
        for name in sorted(sets):
            n = int(groups.all_reduce_(torch.tensor([len(sets[name])], device=device), op=ReduceOp.MIN).item())
            acc = torch.zeros(3, dtype=torch.float64, device=device)   # nats, targets, bytes
            for batch in sets[name][:n]:
                batch = {k: v.to(device) for k, v in batch.items()}
                acc += (_score(model, batch, token_bytes, precision) if pipeline is None
                        else _score_pipelined(pipeline, batch, token_bytes, precision))
            totals[name] = groups.all_reduce_(acc).tolist()
    finally:
        model.train(was_training)

    metrics: dict[str, float] = {}
    for name, (nats, count, nbytes) in totals.items():
        if count:
            metrics[f"val/loss/{name}"] = nats / count
        if token_bytes is not None and nbytes:
            metrics[f"val/bpb/{name}"] = nats / math.log(2) / nbytes
    nats, count, nbytes = (sum(v[i] for v in totals.values()) for i in range(3))
    if count:
        metrics["val/loss"] = nats / count
    if token_bytes is not None and nbytes:
        metrics["val/bpb"] = nats / math.log(2) / nbytes
    return metrics


def _score_pipelined(pipeline, batch: dict[str, torch.Tensor], token_bytes: torch.Tensor | None,
                     precision: str) -> torch.Tensor:
    """[nats, targets, bytes] on the ranks of the last stage, zeros on the others."""
    device = batch["input_ids"].device
    labels = batch.get("labels", batch["input_ids"])
    targets = next_token_targets(labels, batch.get("loss_mask"), batch.get("segment_ids"))
    staged = {"input_ids": batch["input_ids"], "targets": targets}
    if "segment_ids" in batch:
        staged["segment_ids"] = batch["segment_ids"]
    with precision_autocast(precision, device.type):
        nats_count = pipeline.score(staged).to(device)
    if not pipeline.plan.holds_last:
        return torch.zeros(3, dtype=torch.float64, device=device)
    valid = targets.flatten() != IGNORE_INDEX
    nbytes = token_bytes[targets.flatten()[valid]].sum() if token_bytes is not None else torch.zeros((), device=device)
    return torch.cat([nats_count.double(), nbytes.double().view(1)])


def _score(model: nn.Module, batch: dict[str, torch.Tensor], token_bytes: torch.Tensor | None,
           precision: str) -> torch.Tensor:
    """[nats, targets, bytes] of one micro-batch."""
    device = batch["input_ids"].device
    with precision_autocast(precision, device.type):
        logits = model(batch["input_ids"], segment_ids=batch.get("segment_ids")).logits
    labels = batch.get("labels", batch["input_ids"])
    targets = next_token_targets(labels, batch.get("loss_mask"), batch.get("segment_ids")).flatten()
    valid = targets != IGNORE_INDEX
    nats = F.cross_entropy(logits.flatten(0, -2).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    nbytes = token_bytes[targets[valid]].sum() if token_bytes is not None else torch.zeros((), device=device)
    return torch.stack([nats.double(), valid.sum().double(), nbytes.double()])
