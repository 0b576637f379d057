"""One optimizer step over a global batch split across ranks and micro-batches.

The loss of a step is the global batch's loss, whatever the layout: every micro-batch's terms
are weighted by its share of the *global* count, then gradients are summed across ranks.

    L = L_lm + λ · (1/D) Σ_k L_mtp,k + L_bal                                        (V3 eq. 25)
    L_lm    = Σ_(rank, micro) lm_loss · n_lm / N_lm        n = targets there, N = all targets
    L_mtp,k = Σ_(rank, micro) mtp_loss_k · n_k / N_k       depth k has its own target count
    L_bal   = Σ_(rank, micro) balance_loss · B / N_B       sequence-wise: weighted by sequences

The counts are known before any forward (they depend only on labels, masks and segments), so
one all-reduce of a few numbers gives the denominators and the loss needs no correction
afterwards. With pipeline parallelism (``pipeline=``, :class:`model.parallel.pipeline.Pipeline`)
the same weighted terms are computed stage by stage inside a torch pipelining schedule: the
denominators are summed over the ``dp x ep`` ranks of a stage (the ``pp`` ranks of a pipeline
see the same micro-batches), the loss terms come from the last stage and every stage's MoE
loads and balance terms are summed over the world. Then: gradient all-reduce (sum; under ZeRO-3
FSDP2's reduce-scatter for the dense parameters) -> global-norm clip -> AdamW -> router-bias update
from the loads of the whole global batch (all-reduced, so every rank applies the same update).

Extra loss terms (:class:`LossTerm`, e.g. logit distillation to a teacher) see the main head's
logits and the targets of each micro-batch and return their *sum* over its targets; dividing by
N_lm weights them exactly like the LM loss:

    L += Σ_terms weight · Σ_(rank, micro) term_sum / N_lm
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from model.fp8 import precision_autocast
from model.parallel.data_parallel import GradientReducer
from model.parallel.fsdp import set_gradient_sync
from model.parallel.groups import ParallelGroups
from model.transformer import IGNORE_INDEX, next_token_targets


class LossTerm(Protocol):
    """A picklable recipe for an extra loss on the main head's logits (``TrainJob.loss_terms``).

    ``open`` runs once in every worker (load a teacher model there, not on the driver) and returns
    ``fn(batch, logits, targets) -> scalar``: the term summed over the positions where
    ``targets != -100`` (``targets[:, i]`` is the token position i is trained to predict). It is
    logged per target as ``train/<name>`` and enters the loss times ``weight``."""

    name: str
    weight: float

    def open(self, device: torch.device) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor],
                                                     torch.Tensor]: ...


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors (norm weights) do not. Under ZeRO-3 the moments are shards
    like their parameters (``torch.optim`` runs on DTensors as they are)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if any(isinstance(p, DTensor) for p in params):
        # ZeRO-3: FSDP2 shards (DTensors) next to plain routed experts; a foreach kernel takes one kind
        groups = [{**g, "params": [p for p in g["params"] if isinstance(p, DTensor) == sharded]}
                  for g in groups for sharded in (True, False)]
        groups = [g for g in groups if g["params"]]
    fused = params[0].is_cuda if params else False
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused, foreach=not fused)


def mtp_rows(batch_rows: int, fraction: float) -> int | None:
    """Sequences of a micro-batch the MTP modules see (None: all of them)."""
    return None if fraction >= 1 else max(1, math.ceil(fraction * batch_rows))


def target_counts(batch: dict[str, torch.Tensor], mtp_depth: int, mtp_fraction: float = 1.0) -> list[int]:
    """[n_lm, n_mtp_1, ..., n_mtp_D]: the targets the model's losses average over (mirrors
    ``DeepSeekV3.forward`` and ``mtp_losses``: depth k scores targets[:, k:] inside a document,
    on the first ``mtp_rows`` sequences)."""
    labels = batch.get("labels", batch["input_ids"])
    segments = batch.get("segment_ids")
    valid = next_token_targets(labels, batch.get("loss_mask"), segments) != IGNORE_INDEX
    counts = [int(valid.sum())]
    T = valid.shape[1]
    rows = slice(0, mtp_rows(valid.shape[0], mtp_fraction))
    for k in range(1, mtp_depth + 1):
        v = valid[rows, k:]
        if segments is not None:
            v = v & (segments[rows, :T - k] == segments[rows, k:])
        counts.append(int(v.sum()))
    return counts


def batch_fingerprint(batch: dict[str, torch.Tensor]) -> int:
    """CRC32 of the input ids: the sum over ranks and micro-batches identifies a step's data, so
    tests can prove a resumed run skipped and repeated nothing."""
    return zlib.crc32(batch["input_ids"].cpu().numpy().tobytes())


@dataclass
class StepStats:
    """A step's global numbers (identical on every rank)."""

    loss: float                 # lm + λ·mtp + balance
    lm_loss: float
    mtp_loss: float             # mean over depths, before λ
    balance_loss: float
    mtp_weight: float
    target_tokens: int          # next-token targets in the global batch
    input_tokens: int           # tokens fed to the model in the global batch
    expert_load: torch.Tensor   # [M, E] tokens per expert, whole global batch (CPU, float64)
    dropped_tokens: int
    data_fingerprint: int
    lr: float = 0.0
    grad_norm: float = float("nan")
    skipped: bool = False       # non-finite loss or gradient: no update was applied
    moe: dict[str, float] = field(default_factory=dict)
    extra_losses: dict[str, float] = field(default_factory=dict)   # LossTerm name -> per-target mean
    # CPU wall seconds of this rank's forwards and of their MTP part (0 where not measured)
    forward_seconds: float = 0.0
    mtp_forward_seconds: float = 0.0


class TrainStep:
    """Forward/backward over a step's micro-batches, then the update. Every rank calls it with
    its own micro-batches; all collectives are issued identically on every rank."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, groups: ParallelGroups, *,
                 precision: str = "bf16", grad_clip: float | None = 1.0, bias_update_rate: float | None = None,
                 device: torch.device | None = None, loss_terms: Sequence[tuple[str, float, Callable]] = (),
                 pipeline=None, reducer=None, mtp_batch_fraction: float = 1.0):
        self.model, self.optimizer, self.groups = model, optimizer, groups
        self.loss_terms = list(loss_terms)   # (name, weight, fn) of opened LossTerms
        if pipeline is not None and self.loss_terms:
            raise ValueError("extra loss terms on the logits are not supported with pipeline parallelism "
                             "(the logits live on the last stage only); use parallel.pp = 1")
        self.pipeline = pipeline             # model.parallel.pipeline.Pipeline, or None
        self.reducer = reducer or GradientReducer(model, groups)
        self.precision, self.grad_clip, self.bias_update_rate = precision, grad_clip, bias_update_rate
        self.device = device or next(model.parameters()).device
        self.mtp_depth = model.config.num_nextn_predict_layers
        if pipeline is not None and mtp_batch_fraction < 1:
            raise ValueError("mtp_weight.batch_fraction < 1 is not supported with pipeline parallelism; use 1.0")
        self.mtp_fraction = mtp_batch_fraction

    def __call__(self, micro_batches: list[dict[str, torch.Tensor]], lr: float, mtp_weight: float) -> StepStats:
        stats = self.accumulate_gradients(micro_batches, mtp_weight)
        return self.apply(stats, lr)

    # -- forward + backward ---------------------------------------------------------------------
    def accumulate_gradients(self, micro_batches: list[dict[str, torch.Tensor]], mtp_weight: float) -> StepStats:
        """Gradients of the global loss, summed across ranks, in ``p.grad``; nothing updated yet."""
        D = self.mtp_depth
        # [n_lm, n_mtp_1..D, sequences, tokens, crc]; on the device: NCCL reduces only GPU tensors
        local = torch.zeros(D + 4, dtype=torch.float64, device=self.device)
        for mb in micro_batches:
            local[:D + 1] += torch.tensor(target_counts(mb, D, self.mtp_fraction), dtype=torch.float64,
                                          device=self.device)
            local[D + 1] += mb["input_ids"].shape[0]
            local[D + 2] += mb["input_ids"].numel()
            local[D + 3] += batch_fingerprint(mb)
        # summed over the ranks that read different data (the whole world without pipelining)
        totals = self.groups.all_reduce_(local, over="stage").tolist()
        n_lm, n_mtp, n_seq = totals[0], totals[1:D + 1], totals[D + 1]
        if self.pipeline is not None:
            return self._accumulate_pipelined(micro_batches, mtp_weight, totals)

        n_layers, n_experts = len(self.model.moe_layer_ids), self.model.config.n_routed_experts
        loads = torch.zeros(n_layers, n_experts, dtype=torch.float64, device=self.device)
        # [lm, mtp (mean over depths), balance, dropped, *extra terms], each a global-batch share
        parts = torch.zeros(4 + len(self.loss_terms), dtype=torch.float64, device=self.device)
        fwd_s = mtp_s = 0.0
        for i, mb in enumerate(micro_batches):
            # ZeRO-3: FSDP2 reduce-scatters once, after the last micro-batch's backward
            set_gradient_sync(self.model, i == len(micro_batches) - 1)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}
            counts = target_counts(mb, D, self.mtp_fraction)
            with precision_autocast(self.precision, self.device.type):
                out = self.model(batch["input_ids"], batch.get("labels", batch["input_ids"]),
                                 segment_ids=batch.get("segment_ids"), loss_mask=batch.get("loss_mask"),
                                 mtp_loss_weight=mtp_weight, return_logits=bool(self.loss_terms),
                                 mtp_rows=mtp_rows(mb["input_ids"].shape[0], self.mtp_fraction))
            lm = out.lm_loss * _share(counts[0], n_lm)
            # λ = 0: the model skipped its MTP modules (no losses, no cost)
            mtp = (sum(loss * _share(c, n) for loss, c, n in zip(out.mtp_losses, counts[1:], n_mtp, strict=True)) / D
                   if D and out.mtp_losses else lm.new_zeros(()))
            bal = (out.balance_loss * _share(mb["input_ids"].shape[0], n_seq)
                   if out.balance_loss is not None else lm.new_zeros(()))
            extra = []
            if self.loss_terms:
                targets = next_token_targets(batch.get("labels", batch["input_ids"]), batch.get("loss_mask"),
                                             batch.get("segment_ids"))
                extra = [fn(batch, out.logits, targets) * _share(1, n_lm) for _, _, fn in self.loss_terms]
            weighted = sum((w * e for (_, w, _), e in zip(self.loss_terms, extra, strict=True)), lm.new_zeros(()))
            (lm + mtp_weight * mtp + bal + weighted).backward()
            parts += torch.stack([lm.detach().double(), mtp.detach().double(), bal.detach().double(),
                                  out.dropped_tokens.double(), *(e.detach().double() for e in extra)])
            loads += out.expert_load.double()
            fwd_s += out.forward_seconds or 0.0
            mtp_s += out.mtp_forward_seconds or 0.0
        self.reducer.reduce()
        # one all-reduce for everything the update and the logs need
        flat = self.groups.all_reduce_(torch.cat([loads.flatten(), parts]))
        loads, parts = flat[:loads.numel()].view_as(loads), flat[loads.numel():].tolist()
        extra = {name: v for (name, _, _), v in zip(self.loss_terms, parts[4:], strict=True)}
        weighted = sum(w * v for (_, w, _), v in zip(self.loss_terms, parts[4:], strict=True))
        return StepStats(loss=parts[0] + mtp_weight * parts[1] + parts[2] + weighted, lm_loss=parts[0],
                         mtp_loss=parts[1], extra_losses=extra,
                         balance_loss=parts[2], mtp_weight=mtp_weight, target_tokens=int(n_lm),
                         input_tokens=int(totals[D + 2]), expert_load=loads.cpu(), dropped_tokens=int(parts[3]),
                         data_fingerprint=int(totals[D + 3]), forward_seconds=fwd_s, mtp_forward_seconds=mtp_s)

    def _accumulate_pipelined(self, micro_batches: list[dict[str, torch.Tensor]], mtp_weight: float,
                              totals: list[float]) -> StepStats:
        from model.parallel.pipeline import StepTotals

        D = self.mtp_depth
        step_totals = StepTotals(n_lm=totals[0], n_mtp=totals[1:D + 1], n_seq=totals[D + 1], mtp_weight=mtp_weight)
        staged = []
        for mb in micro_batches:
            row = {"input_ids": mb["input_ids"],
                   "targets": next_token_targets(mb.get("labels", mb["input_ids"]), mb.get("loss_mask"),
                                                 mb.get("segment_ids"))}
            if "segment_ids" in mb:
                row["segment_ids"] = mb["segment_ids"]
            staged.append(row)
        with precision_autocast(self.precision, self.device.type):
            record = self.pipeline.train_step(staged, step_totals)
        self.reducer.reduce()
        ids = self.model.moe_layer_ids
        loads = torch.zeros(len(ids), self.model.config.n_routed_experts, dtype=torch.float64, device=self.device)
        for row, lid in enumerate(ids):
            if lid in record.loads:
                loads[row] = record.loads[lid].double().to(self.device)
        parts = torch.tensor([record.lm, record.mtp, record.balance, record.dropped], dtype=torch.float64,
                             device=self.device)
        flat = self.groups.all_reduce_(torch.cat([loads.flatten(), parts]))
        loads, parts = flat[:loads.numel()].view_as(loads), flat[loads.numel():].tolist()
        return StepStats(loss=parts[0] + mtp_weight * parts[1] + parts[2], lm_loss=parts[0], mtp_loss=parts[1],
                         balance_loss=parts[2], mtp_weight=mtp_weight, target_tokens=int(totals[0]),
                         input_tokens=int(totals[D + 2]), expert_load=loads.cpu(), dropped_tokens=int(parts[3]),
                         data_fingerprint=int(totals[D + 3]))

    # -- update -----------------------------------------------------------------------------------
    def apply(self, stats: StepStats, lr: float) -> StepStats:
        """Clip, AdamW step, router-bias update; skips the update (and says so) when the loss or
        the gradient is not finite, which every rank sees identically."""
        stats.lr = lr
        stats.grad_norm = self.reducer.clip_grad_norm_(self.grad_clip)
        if not (math.isfinite(stats.grad_norm) and math.isfinite(stats.loss)):
            stats.skipped = True
            self.optimizer.zero_grad(set_to_none=True)
            return stats
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats.moe = self.model.update_router_biases(stats.expert_load.to(self.device, torch.float32),
                                                    self.bias_update_rate)
        return stats


def _share(part: float, total: float) -> float:
    return part / total if total else 0.0
