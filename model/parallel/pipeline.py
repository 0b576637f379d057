"""Pipeline parallelism for :class:`model.DeepSeekV3` on ``torch.distributed.pipelining``.

Each pipeline rank keeps the slice of the model its stages need (:func:`prune_to_stages`: the
embedding on the rank of stage 0, the final norm, head and MTP modules on the rank of the last
stage, the decoder layers of its stages; names stay global) and wraps every stage it holds in a
:class:`StageModule`. ``PipelineStage`` + a schedule of torch (``Schedule1F1B``,
``ScheduleInterleaved1F1B``, ``ScheduleDualPipeV``) move activations and gradients; no scheduling
logic lives here.

What crosses a stage boundary is ``(h, e_1, ..., e_D)``: the hidden state and, for the D MTP
depths, ``Emb(t_{i+k})``. The embedding lives in stage 0 but MTP depth k needs the embedding of
the token k ahead (V3 eq. 21) in the last stage; shipping the embedded rows keeps a single
embedding matrix (and its gradient, which flows back through the pipeline like h's) instead of a
tied copy. DeepSeek places stage 0 and the last stage on the same rank to share the embedding
physically (V3 §3.2.1): DualPipeV's V layout does exactly that here too.

Losses. Each micro-batch's terms are weighted by its share of the *global* batch, as in
:mod:`stages.common.training.step`, with the global counts known before the step:

    last stage:  loss_mb = CE_sum(lm)/N_lm + λ/D · Σ_k CE_sum(mtp_k)/N_k + (its MoE balance terms)
    any stage:   Σ_(its MoE layers) α·L_bal · B_mb/N_seq, injected into the stage's output h
                 with an identity whose backward adds d(balance)/d(balance) = 1 (the
                 Megatron-LM "aux loss scaler" trick): the balance loss of a stage-0 layer
                 then gets its gradient although only the last stage holds a loss.

MoE loads (for the router-bias update) and the loss values are recorded per stage outside
autograd (activation-checkpoint recomputation runs inside the blocks and is not recorded twice)
and summed over ranks by the caller.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.parallel.groups import ParallelGroups
from model.parallel.layout import split_layers, stage_ranks, stages_per_rank
from model.transformer import IGNORE_INDEX, mtp_targets


class _AddAuxLoss(torch.autograd.Function):
    """Identity on ``h`` whose backward also gives ``aux`` the gradient 1: the auxiliary loss
    joins the objective without being added to the (possibly remote) loss tensor."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        ctx.aux_meta = (aux.shape, aux.dtype, aux.device)
        return h.clone()   # not a view: the schedules detach stage outputs in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, dtype, device = ctx.aux_meta
        return grad, torch.ones(shape, dtype=dtype, device=device)


@dataclass
class StepTotals:
    """Global denominators of one step (identical on every rank), set before the schedule runs."""

    n_lm: float = 1.0
    n_mtp: Sequence[float] = ()
    n_seq: float = 1.0
    mtp_weight: float = 0.0


@dataclass
class StageRecord:
    """What a stage saw during one step, summed over its micro-batches (no autograd)."""

    lm: float = 0.0            # Σ CE_sum/N_lm  (last stage)
    mtp: float = 0.0           # Σ_mb (1/D) Σ_k CE_sum_k/N_k  (last stage, before λ)
    balance: float = 0.0       # Σ α·L_bal·B_mb/N_seq of this stage's MoE layers
    loads: dict[int, torch.Tensor] = field(default_factory=dict)   # layer id -> [E] tokens
    dropped: int = 0


def _share(total: float) -> float:
    return 1.0 / total if total else 0.0


class StageModule(nn.Module):
    """One pipeline stage of a (pruned) DeepSeekV3: the modules of layer ids ``layer_ids``
    (ids >= num_hidden_layers are MTP depths), plus the embedding if ``is_first``, and the final
    norm and head if ``is_last``. The parameters are the model's own (shared, not copied).

    forward: first stage ``(input_ids, *, targets, segment_ids=None)``, the others
    ``(h, e_1..e_D, *, targets, segment_ids=None)``; returns ``(h, e_1..e_D)``, or on the last
    stage the micro-batch's weighted loss (train) or ``[nats, targets]`` (eval).
    """

    def __init__(self, model: nn.Module, layer_ids: Sequence[int], is_first: bool, is_last: bool):
        super().__init__()
        cfg = model.config
        self._model = [model]   # not a submodule: only this stage's parts are registered below
        self.is_first, self.is_last = is_first, is_last
        self.depth = cfg.num_nextn_predict_layers
        self.num_layers = cfg.num_hidden_layers
        self.layer_ids = list(layer_ids)
        self.embed_tokens = model.embed_tokens if is_first else None
        self.layers = nn.ModuleDict({str(i): model.layers[str(i)] for i in layer_ids if i < self.num_layers})
        self.mtp = nn.ModuleList([model.mtp[i - self.num_layers] for i in layer_ids if i >= self.num_layers])
        if self.mtp and (not is_last or len(self.mtp) != self.depth):
            raise ValueError("every MTP module must sit in the last pipeline stage")
        self.norm = model.norm if is_last else None
        self.lm_head = model.lm_head if is_last else None
        self.totals = StepTotals()
        self.record = StageRecord()
        self.scoring = False   # eval: the last stage returns [nats, targets] of the LM head

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def forward(self, *acts: torch.Tensor, targets: torch.Tensor,
                segment_ids: torch.Tensor | None = None):
        model = self.model
        if self.is_first:
            (input_ids,) = acts
            h = self.embed_tokens(input_ids)
            # Emb(t_{i+k}) for MTP depth k; the k wrapped-around rows are never scored
            embeds = [self.embed_tokens(input_ids.roll(-k, dims=1)) for k in range(1, self.depth + 1)]
        else:
            h, *received = acts
            # passed on as new tensors: the schedules detach stage outputs in place, which must
            # not touch their (reused) receive buffers
            embeds = [e.clone() for e in received] if not self.is_last else received
        B, T = h.shape[:2]
        ctx = model.attention_context(h.new_empty(B, T, dtype=torch.long), segment_ids=segment_ids)
        balance = []
        for layer in self.layers.values():
            h, stats = model._run_block(layer, h, ctx)
            balance += self._observe(layer.layer_idx, stats, B)
        if not self.is_last:
            if balance and torch.is_grad_enabled():
                h = _AddAuxLoss.apply(h, torch.stack(balance).sum() * (B * _share(self.totals.n_seq)))
            return (h, *embeds)

        h = self.norm(h)
        lm_sum = _ce_sum(self.lm_head(h), targets)
        if self.scoring:
            return torch.stack([lm_sum.double(), (targets != IGNORE_INDEX).sum().double()])
        t = self.totals
        loss = lm_sum * _share(t.n_lm)
        mtp = lm_sum.new_zeros(())
        h_prev = h
        for k, (layer, e) in enumerate(zip(self.mtp, embeds, strict=True), start=1):
            h_prev, stats = model._run_block(layer, h_prev, e, ctx)
            balance += self._observe(layer.layer_idx, stats, B)
            logits = self.lm_head(layer.shared_head.norm(h_prev))
            mtp = mtp + _ce_sum(logits, mtp_targets(targets, k, segment_ids)) * _share(t.n_mtp[k - 1])
        if self.depth:
            mtp = mtp / self.depth
            loss = loss + t.mtp_weight * mtp
        bal = torch.stack(balance).sum() * (B * _share(t.n_seq)) if balance else loss.new_zeros(())
        self.record.lm += float(lm_sum.detach()) * _share(t.n_lm)
        self.record.mtp += float(mtp.detach())
        return loss + bal

    def _observe(self, layer_id: int, stats, batch: int) -> list[torch.Tensor]:
        """Record a MoE layer's load (no grad) and return its balance loss term, if any."""
        if stats is None or self.scoring:
            return []
        load = stats.expert_load.detach()
        prev = self.record.loads.get(layer_id)
        self.record.loads[layer_id] = load if prev is None else prev + load
        self.record.dropped += int(stats.dropped)
        if stats.balance_loss is None:
            return []
        self.record.balance += float(stats.balance_loss.detach()) * batch * _share(self.totals.n_seq)
        return [stats.balance_loss]


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


# -- splitting the model ------------------------------------------------------------------------

@dataclass(frozen=True)
class StagePlan:
    """Which stages (global indices) a pipeline rank runs and their layer ids."""

    num_stages: int
    stage_ids: tuple[int, ...]
    layer_ids: tuple[tuple[int, ...], ...]    # per local stage

    @property
    def holds_first(self) -> bool:
        return 0 in self.stage_ids

    @property
    def holds_last(self) -> bool:
        return self.num_stages - 1 in self.stage_ids


def plan_stages(num_layers: int, mtp_layers: int, pp: int, pp_rank: int, schedule: str,
                virtual_stages: int = 2) -> StagePlan:
    n = pp * stages_per_rank(schedule, virtual_stages)
    split = split_layers(num_layers, mtp_layers, n)
    owner = stage_ranks(pp, schedule, virtual_stages)
    mine = tuple(s for s in range(n) if owner[s] == pp_rank)
    return StagePlan(n, mine, tuple(tuple(split[s]) for s in mine))


def prune_to_stages(model: nn.Module, plan: StagePlan) -> None:
    """Drop every module this pipeline rank does not run (global names of the rest unchanged)."""
    L = model.config.num_hidden_layers
    keep = {i for ids in plan.layer_ids for i in ids}
    for key in [k for k in model.layers.keys() if int(k) not in keep]:
        del model.layers[key]
    if not plan.holds_first:
        model.embed_tokens = None
    if not plan.holds_last:
        model.norm = None
        model.lm_head = None
        model.mtp = nn.ModuleList()
    elif len(model.mtp) and not any(i >= L for ids in plan.layer_ids for i in ids):
        raise ValueError("the last pipeline stage must hold the MTP modules")


# -- running it ----------------------------------------------------------------------------------

class Pipeline:
    """This rank's stages of a pipeline and the torch schedule that runs them.

        pipe = Pipeline(model, groups, schedule="1f1b", microbatches=4)   # prunes ``model``
        record = pipe.train_step(micro_batches, totals)     # forward + backward, grads in p.grad
        nats, count = pipe.score(batch)                     # eval forward (sequential)
    """

    def __init__(self, model: nn.Module, groups: ParallelGroups, *, schedule: str = "1f1b",
                 microbatches: int, virtual_stages: int = 2, device: torch.device | None = None):
        cfg = model.config
        layout = groups.layout
        self.model, self.groups, self.schedule_name = model, groups, schedule
        self.microbatches = microbatches
        self.device = device or torch.device("cpu")
        self.plan = plan_stages(cfg.num_hidden_layers, cfg.num_nextn_predict_layers, layout.pp, groups.pp_rank,
                                schedule, virtual_stages)
        self.owner = stage_ranks(layout.pp, schedule, virtual_stages)
        prune_to_stages(model, self.plan)
        n = self.plan.num_stages
        self.stages = [StageModule(model, ids, s == 0, s == n - 1)
                       for s, ids in zip(self.plan.stage_ids, self.plan.layer_ids, strict=True)]
        self._schedules: dict[tuple[int, int], object] = {}
        # bubble accounting: seconds this rank spent computing (forward, backward, weight-grad
        # actions) vs the wall time of the schedule's step; bubble = 1 - busy / wall
        self.busy_s = 0.0
        self.last_bubble = float("nan")

    # -- training ---------------------------------------------------------------------------------
    def _schedule_for(self, mb: int, T: int):
        key = (mb, T)
        if key not in self._schedules:
            self._schedules[key] = self._build_schedule(mb, T)
        return self._schedules[key]

    def _build_schedule(self, mb: int, T: int):
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleDualPipeV,
            ScheduleInterleaved1F1B,
        )

        cfg = self.model.config
        D, n = cfg.num_nextn_predict_layers, self.plan.num_stages
        dtype = next(self.model.parameters()).dtype
        # requires_grad: static metadata derives the gradient buffers from it
        act = torch.empty(mb, T, cfg.hidden_size, dtype=dtype, device="meta", requires_grad=True)
        stages = []
        for s, module in zip(self.plan.stage_ids, self.stages, strict=True):
            inputs = (torch.empty(mb, T, dtype=torch.long, device="meta"),) if s == 0 else (act,) * (1 + D)
            outputs = (torch.empty((), dtype=torch.float32, device="meta"),) if s == n - 1 else (act,) * (1 + D)
            stage = PipelineStage(module, s, n, self.device, input_args=inputs, output_args=outputs,
                                  group=self.groups.pp_group)
            self._time_compute(stage)
            stages.append(stage)
        kw = dict(n_microbatches=self.microbatches, loss_fn=_loss_is_output, scale_grads=False)
        if self.schedule_name == "1f1b":
            return Schedule1F1B(stages[0], **kw)
        if self.schedule_name == "interleaved":
            return ScheduleInterleaved1F1B(stages, **kw)
        return ScheduleDualPipeV(stages, **kw)

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]], totals: StepTotals) -> StageRecord:
        """Forward and backward of this pipeline's micro-batches (the same on every pp rank);
        gradients accumulate in ``p.grad``. Returns what this rank's stages recorded."""
        if len(micro_batches) != self.microbatches:
            raise ValueError(f"the pipeline runs {self.microbatches} micro-batches per step, got {len(micro_batches)}")
        for module in self.stages:
            module.totals, module.record, module.scoring = totals, StageRecord(), False
        batch = {k: torch.cat([mb[k] for mb in micro_batches]).to(self.device) for k in micro_batches[0]}
        mb, T = micro_batches[0]["input_ids"].shape
        schedule = self._schedule_for(mb, T)
        kwargs = {"targets": batch["targets"]}
        if "segment_ids" in batch:
            kwargs["segment_ids"] = batch["segment_ids"]
        args = (batch["input_ids"],) if self.plan.holds_first else ()
        target = batch["targets"] if self.plan.holds_last else None
        busy0, t0 = self.busy_s, time.perf_counter()
        schedule.step(*args, target=target, return_outputs=False, **kwargs)
        wall = time.perf_counter() - t0
        self.last_bubble = 1.0 - (self.busy_s - busy0) / wall if wall > 0 else float("nan")
        return _merge([m.record for m in self.stages])

    def _time_compute(self, stage) -> None:
        """Count the time spent in the stage's compute actions (what is not bubble)."""
        for name in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
            method = getattr(stage, name)

            def timed(*args, _method=method, **kwargs):
                t = time.perf_counter()
                try:
                    return _method(*args, **kwargs)
                finally:
                    self.busy_s += time.perf_counter() - t
            setattr(stage, name, timed)

    def theoretical_bubble(self) -> float:
        """The schedule's idle fraction with equal stage costs and free communication:
        (p - 1) / (v·m + p - 1) for p ranks, v stages per rank, m micro-batches (1F1B: v = 1;
        interleaved 1F1B, Narayanan et al. 2021; DualPipeV counted the same way with v = 2,
        before its forward/backward overlap, which hides communication rather than compute)."""
        p, m = self.groups.layout.pp, self.microbatches
        v = self.plan.num_stages // p
        return (p - 1) / (v * m + p - 1)

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[nats, targets] of the LM head on one batch, on the rank holding the last stage
        (zeros elsewhere). A plain sequential forward through the stages with blocking
        send/recv: evaluation needs no overlap, and every pp rank calls it with the same batch."""
        group, pp_rank = self.groups.pp_group, self.groups.pp_rank
        cfg = self.model.config
        B, T = batch["input_ids"].shape
        kwargs = {"targets": batch["targets"].to(self.device)}
        if "segment_ids" in batch:
            kwargs["segment_ids"] = batch["segment_ids"].to(self.device)
        dtype = next(self.model.parameters()).dtype
        out = torch.zeros(2, dtype=torch.float64, device=self.device)
        acts: tuple[torch.Tensor, ...] = (batch["input_ids"].to(self.device),)
        local = dict(zip(self.plan.stage_ids, self.stages, strict=True))
        for s in range(self.plan.num_stages):
            if self.owner[s] != pp_rank:
                continue
            if s > 0 and self.owner[s - 1] != pp_rank:   # receive from the previous stage's rank
                src = dist.get_global_rank(group, self.owner[s - 1])
                acts = tuple(torch.empty(B, T, cfg.hidden_size, dtype=dtype, device=self.device)
                             for _ in range(1 + cfg.num_nextn_predict_layers))
                for a in acts:
                    dist.recv(a, src=src, group=group)
            module = local[s]
            module.scoring = True
            try:
                result = module(*acts, **kwargs)
            finally:
                module.scoring = False
            if module.is_last:
                out = result
                continue
            acts = result
            if self.owner[s + 1] != pp_rank:
                dst = dist.get_global_rank(group, self.owner[s + 1])
                for a in acts:
                    dist.send(a.contiguous(), dst=dst, group=group)
        return out


def _loss_is_output(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The last stage already returns its micro-batch's weighted loss."""
    return output


def _merge(records: list[StageRecord]) -> StageRecord:
    out = StageRecord()
    for r in records:
        out.lm += r.lm
        out.mtp += r.mtp
        out.balance += r.balance
        out.dropped += r.dropped
        out.loads.update(r.loads)
    return out
