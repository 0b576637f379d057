"""Memory per GPU of a training layout, counted from the real module tree on the meta device.

    plan = memory_plan(model_config, MemoryLayout(pp=16, dp=2, ep=64, zero=1, schedule="dualpipev",
                                                   micro_batch_size=1, seq_len=4096, microbatches=120))
    plan.worst.total_bytes, plan.fits(80e9)

Parameters per pipeline rank come from the modules each stage holds (:func:`split_layers`, the
embedding on stage 0, final norm + head + MTP on the last stage), routed experts divided by ``ep``.
Bytes per parameter follow a *recipe*:

    recipe     weights            master    gradients   AdamW moments    what it is
    whale      FP32 (4)           -         FP32 (4)    FP32 (4 + 4)     this trainer: FP32 params, BF16/FP8 autocast
    deepseek   BF16 (2)           FP32 (4)  FP32 (4)    BF16 (2 + 2)     V3 §3.3.3: BF16 moments, FP32 master + grads

ZeRO-1 divides master weights and moments by the replicas of each parameter (dense: ``dp·ep``
ranks of a stage; experts: ``dp``); ZeRO-3 also weights and gradients.

Activations are an estimate: BF16 values the backward keeps per token for each layer (attention:
norm, q/kv low-rank and up-projections, attention output; MoE: router scores, the K dispatched
copies, expert and shared-expert hidden states), times the micro-batches a schedule keeps in flight
on the busiest rank (1F1B: pp; interleaved: pp·(1 + (pp-1)/(pp·v)); DualPipe(V): pp + 1; at most
the micro-batches per step), plus the last stage's logits. Selective checkpointing keeps the
matmul outputs only, full checkpointing only each layer's input; with ``fp8_activations`` (the
deepseek recipe at precision fp8) the matmul values are cached in FP8. All-to-all buffers, the
allocator's fragmentation and the CUDA context are not counted: keep ~10 % headroom.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model.config import ModelConfig
from model.parallel.layout import split_layers, stage_ranks, stages_per_rank

GiB = 2**30
RECIPES = {   # bytes per parameter: weights, master, gradients, optimizer moments
    "whale": (4, 0, 4, 8),
    "deepseek": (2, 4, 4, 4),
}


@dataclass(frozen=True)
class MemoryLayout:
    pp: int = 1
    dp: int = 1
    ep: int = 1
    zero: int = 0
    schedule: str = "1f1b"
    virtual_stages: int = 2
    micro_batch_size: int = 1
    seq_len: int = 4096
    microbatches: int = 1
    activation_checkpointing: str = "none"
    recipe: str = "whale"
    fp8_activations: bool = False   # cache matmul inputs in FP8 (the deepseek recipe with precision fp8)

    @property
    def world_size(self) -> int:
        return self.pp * self.dp * self.ep


@dataclass
class RankMemory:
    """One pipeline rank (all its dp x ep replicas look the same)."""

    pp_rank: int
    stages: list[int]
    layers: list[int]
    dense_params: int
    expert_params: int          # this rank's share (already / ep)
    weights: float = 0.0
    master: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    in_flight: float = 0.0      # micro-batches whose activations the schedule keeps at the peak

    @property
    def params(self) -> int:
        return self.dense_params + self.expert_params

    @property
    def total_bytes(self) -> float:
        return self.weights + self.master + self.gradients + self.optimizer + self.activations


@dataclass
class MemoryPlan:
    layout: MemoryLayout
    ranks: list[RankMemory] = field(default_factory=list)
    total_params: int = 0

    @property
    def worst(self) -> RankMemory:
        return max(self.ranks, key=lambda r: r.total_bytes)

    def fits(self, gpu_bytes: float) -> bool:
        return self.worst.total_bytes <= gpu_bytes


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def activation_bytes_per_token(config: ModelConfig, layer_idx: int, mode: str, matmul_bytes: float = 2.0) -> float:
    """Bytes per token that the backward of one layer keeps (see the module docstring): BF16
    values, the matmul ones at ``matmul_bytes`` (1 where FP8 inputs are cached, V3 §3.3.3)."""
    D, H = config.hidden_size, config.num_attention_heads
    dqk, dv = config.qk_head_dim, config.v_head_dim
    q_rank = config.q_lora_rank or 0
    if mode == "full":
        return 4 * D   # the FP32 residual input of the block; everything else is recomputed
    matmuls = (q_rank + H * dqk                                   # q_a, q_b
               + config.kv_lora_rank + config.qk_rope_head_dim      # kv_a
               + H * (config.qk_nope_head_dim + dv)                 # kv_b
               + H * dv + D)                                        # attention output, o_proj
    elementwise = 2 * D + q_rank + config.kv_lora_rank + H * dqk   # norms, RoPE'd q/k
    if config.is_moe_layer(layer_idx):
        K, F = config.num_experts_per_tok, config.moe_intermediate_size
        S = config.n_shared_experts * F
        matmuls += K * (D + 2 * F + D) + (2 * S + D)   # dispatched rows, gate/up, expert outputs, shared
        elementwise += K * F + S + 2 * config.n_routed_experts   # SiLU·up, router scores (FP32)
    else:
        matmuls += 2 * config.intermediate_size + D
        elementwise += config.intermediate_size
    return matmul_bytes * matmuls + (2.0 * elementwise if mode == "none" else 0.0)


def in_flight_microbatches(layout: MemoryLayout) -> float:
    """Micro-batches whose activations the busiest rank holds at the peak of a schedule."""
    pp, m = layout.pp, layout.microbatches
    if pp == 1:
        return 1.0
    v = stages_per_rank(layout.schedule, layout.virtual_stages)
    if layout.schedule == "1f1b":
        peak = pp
    elif layout.schedule == "interleaved":
        peak = pp * (1 + (pp - 1) / (pp * v))
    else:   # DualPipe / DualPipeV (V3 Table 2: PP + 1 micro-batches of the rank's layers)
        peak = pp + 1
    return float(min(peak, m))


class _Counts:
    """Parameter counts from one module of each kind (dense layer, MoE layer, MTP module,
    embedding, head) built on the meta device: the 671B tree has 61 near-identical layers and
    building them all takes ~30 s; one of each takes well under a second."""

    def __init__(self, config: ModelConfig):
        from torch import nn

        from model.block import DecoderLayer
        from model.mtp import MTPLayer
        from model.norm import RMSNorm

        self.config = config
        L = config.num_hidden_layers
        with torch.device("meta"):
            self.embedding = _count(nn.Embedding(config.vocab_size, config.hidden_size))
            self.head = _count(nn.Linear(config.hidden_size, config.vocab_size, bias=False))
            self.norm = _count(RMSNorm(config.hidden_size))
            kinds = {}
            for i in sorted({0 if config.first_k_dense_replace else None, config.first_k_dense_replace
                             if config.first_k_dense_replace < L else None} - {None}):
                kinds[config.is_moe_layer(i)] = self._split(DecoderLayer(config, i))
            self.layer = kinds
            self.mtp = self._split(MTPLayer(config, L).block, _count(MTPLayer(config, L))) \
                if config.num_nextn_predict_layers else (0, 0)

    @staticmethod
    def _split(block, total: int | None = None) -> tuple[int, int]:
        routed = _count(getattr(block.mlp, "experts", None))
        return (total if total is not None else _count(block)) - routed, routed

    def of(self, layer_id: int) -> tuple[int, int]:
        """(dense, routed-expert) parameters of a layer id (ids >= num_hidden_layers: MTP)."""
        if layer_id >= self.config.num_hidden_layers:
            return self.mtp
        return self.layer[self.config.is_moe_layer(layer_id)]


def memory_plan(config: ModelConfig, layout: MemoryLayout) -> MemoryPlan:
    if layout.recipe not in RECIPES:
        raise ValueError(f"unknown memory recipe {layout.recipe!r}; expected one of {sorted(RECIPES)}")
    counts = _Counts(config)
    L, D = config.num_hidden_layers, config.num_nextn_predict_layers
    n_stages = layout.pp * stages_per_rank(layout.schedule, layout.virtual_stages) if layout.pp > 1 else 1
    split = split_layers(L, D, n_stages)
    owner = stage_ranks(layout.pp, layout.schedule, layout.virtual_stages) if layout.pp > 1 else [0]
    total = counts.embedding + counts.head + counts.norm + sum(sum(counts.of(i)) for i in range(L + D))

    w, m, g, o = RECIPES[layout.recipe]
    tokens = layout.micro_batch_size * layout.seq_len
    in_flight = in_flight_microbatches(layout)
    plan = MemoryPlan(layout, total_params=total)
    for r in range(layout.pp):
        stages = [s for s in range(n_stages) if owner[s] == r]
        layers = [i for s in stages for i in split[s]]
        dense = sum(counts.of(i)[0] for i in layers)
        routed = sum(counts.of(i)[1] for i in layers)
        if 0 in stages:
            dense += counts.embedding
        if n_stages - 1 in stages:
            dense += counts.norm + counts.head
        if routed % layout.ep:
            raise ValueError(f"routed experts do not divide over ep {layout.ep}")
        mine = RankMemory(r, stages, layers, dense, routed // layout.ep)
        # replicas of each parameter, over which ZeRO shards
        full = dense + routed // layout.ep
        sharded = dense / (layout.dp * layout.ep) + routed // layout.ep / layout.dp
        mine.weights = w * (sharded if layout.zero >= 3 else full)
        mine.gradients = g * (sharded if layout.zero >= 2 else full)
        mine.master = m * (sharded if layout.zero >= 1 else full)
        mine.optimizer = o * (sharded if layout.zero >= 1 else full)
        matmul_bytes = 1.0 if layout.fp8_activations else 2.0
        per_token = sum(activation_bytes_per_token(config, i, layout.activation_checkpointing, matmul_bytes)
                        for i in layers)
        act = per_token * tokens * in_flight
        if layout.activation_checkpointing == "full" and layers:   # one layer recomputed at a time
            act += tokens * max(activation_bytes_per_token(config, i, "none") for i in layers)
        if n_stages - 1 in stages:   # logits of the head and each MTP depth: BF16 + FP32 for the loss
            act += (1 + D) * tokens * config.vocab_size * (2 + 4)
        mine.activations, mine.in_flight = act, in_flight
        plan.ranks.append(mine)
    return plan


def format_plan(name: str, plan: MemoryPlan, gpu_bytes: float) -> str:
    lay = plan.layout

    def gib(x: float) -> str:
        return f"{x / GiB:8.2f}"

    worst = plan.worst
    lines = [
        f"plan: {name} on {lay.world_size} GPUs x {gpu_bytes / GiB:g} GiB = pp {lay.pp} x dp {lay.dp} x ep {lay.ep}, "
        f"ZeRO-{lay.zero}, schedule {lay.schedule}, recipe {lay.recipe}",
        f"  model: {plan.total_params / 1e9:.2f}B parameters (with MTP); micro-batch {lay.micro_batch_size} x "
        f"{lay.seq_len} tokens, {lay.microbatches} micro-batches/step, activation checkpointing "
        f"{lay.activation_checkpointing}",
        "  pp_rank  stages     layers  params(B)  weights  master   grads    optim    activ    total  (GiB)",
    ]
    for r in plan.ranks:
        span = f"{r.layers[0]}-{r.layers[-1]}" if r.layers else "-"
        mark = " <- busiest" if r is worst else ""
        lines.append(f"  {r.pp_rank:7d}  {','.join(map(str, r.stages)):9s} {span:>7s} {r.params / 1e9:9.3f} "
                     f"{gib(r.weights)} {gib(r.master)} {gib(r.gradients)} {gib(r.optimizer)} "
                     f"{gib(r.activations)} {gib(r.total_bytes)}{mark}")
    verdict = "fits" if plan.fits(gpu_bytes) else "does NOT fit"
    lines.append(f"  busiest GPU: {worst.total_bytes / GiB:.2f} GiB of {gpu_bytes / GiB:.2f} GiB -> {verdict} "
                 f"({100 * worst.total_bytes / gpu_bytes:.0f} %; activations assume {worst.in_flight:g} micro-batches "
                 f"in flight; leave ~10 % for buffers and fragmentation)")
    return "\n".join(lines)
