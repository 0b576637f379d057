"""DeepSeekV3: embedding -> decoder layers -> norm -> head, plus MTP modules for training.

The forward is a plain composition of parts that are attributes, so a pipeline-parallel stage
can keep a slice of them (``embed_tokens`` on the first stage; ``norm``, ``lm_head`` and ``mtp``
on the last; ``layers`` is a ModuleDict keyed by the global layer index, so deleting layers
keeps every remaining name):

    h = model.embed_tokens(input_ids)
    h, stats = model.forward_layers(h, ctx)          # ctx = model.attention_context(...)
    h = model.norm(h); logits = model.lm_head(h)
    mtp_losses, mtp_stats = model.mtp_losses(h, input_ids, targets, ctx)

Module names inside equal the HF checkpoint's with ``model.`` dropped (``layers.3.self_attn.kv_b_proj``,
``layers.3.mlp.experts.17.up_proj``); MTP module k is ``mtp.<k>``, saved as
``model.layers.<num_hidden_layers + k>`` (see :mod:`model.hf_checkpoint`).

Linear layers that DeepSeek runs in FP8 (attention projections, dense MLP, shared and routed
experts) are plain ``nn.Linear`` for :mod:`model.fp8` to swap by name; ``embed_tokens``,
``lm_head``, the routers (``mlp.gate``, not a Linear), norms and the MTP ``eh_proj`` (an
``nn.Linear`` that the released checkpoint keeps unquantised) stay high precision. The absorbed
MLA path reads ``self_attn.kv_b_proj.weight`` directly, which an FP8 swap keeps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from model.attention import AttentionContext, segment_positions
from model.balance import load_metrics, update_router_bias
from model.block import DecoderLayer
from model.config import ModelConfig
from model.dispatch import ExpertDispatcher
from model.generation import GenerationMixin
from model.loss import IGNORE_INDEX, cross_entropy, linear_cross_entropy
from model.moe import MoE, MoEStats
from model.mtp import MTPLayer
from model.norm import RMSNorm
from model.rope import RotaryEmbedding
from model.router import Router

__all__ = ["IGNORE_INDEX", "DeepSeekV3", "ModelOutput", "cross_entropy", "mtp_targets", "next_token_targets"]


@dataclass
class ModelOutput:
    """What ``DeepSeekV3.forward`` returns.

    logits        [B, T, V] (None with ``return_logits=False``)
    loss          lm_loss + λ·mtp_loss + balance_loss (None without labels)
    lm_loss       mean next-token cross-entropy over counted targets
    mtp_loss      mean over MTP depths of each depth's mean cross-entropy, *unweighted* by λ
    balance_loss  Σ over MoE layers of α·(sequence-wise balance loss); None when α = 0 or eval
    expert_load   [M, E] tokens routed to each expert in this forward, one row per MoE layer in
                  ``model.moe_layer_ids`` order (MTP rows are 0 when MTP did not run); sum it over
                  micro-batches (and all-reduce over ranks) before ``update_router_biases``
    dropped_tokens  assignments dropped by the capacity factor (0 unless it is set)
    num_target_tokens  targets counted by lm_loss (weight for averaging across micro-batches)
    hidden_states [B, T, D] final normalised hidden state
    forward_seconds, mtp_forward_seconds  CPU wall time of the forward and of its MTP modules
    """

    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None
    dropped_tokens: torch.Tensor | None = None
    num_target_tokens: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    mtp_losses: list[torch.Tensor] = field(default_factory=list)
    # wall seconds of the whole forward and of its MTP part (CPU only, where ops are synchronous;
    # None on accelerators, where timing would need a sync): MTP's share of the step, for metrics
    forward_seconds: float | None = None
    mtp_forward_seconds: float | None = None


class DeepSeekV3(GenerationMixin, nn.Module):
    """The DeepSeek-V3 causal LM (MLA + DeepSeekMoE + MTP).

    Training:   ``out = model(input_ids, labels, segment_ids=..., loss_mask=...)``;
                ``out.loss.backward(); opt.step(); model.update_router_biases(out.expert_load)``
    Logging:    ``model.moe_metrics(out.expert_load)`` -> ``moe/maxvio`` and friends
    Inference:  ``model.generate(prompts, ...)`` or the step API (``new_kv_cache``, ``step``,
                ``mtp_draft``; see :mod:`model.generation`)
    Checkpoints: ``save_pretrained(dir)`` / ``DeepSeekV3.from_pretrained(dir)`` (HF layout)
    Expert parallelism: ``set_expert_dispatcher(d)`` and ``MoE.retain_experts(ids)``
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        L = config.num_hidden_layers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config)
        self.layers = nn.ModuleDict({str(i): DecoderLayer(config, i) for i in range(L)})
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # untied
        self.mtp = nn.ModuleList([MTPLayer(config, L + k) for k in range(config.num_nextn_predict_layers)])
        self.moe_layer_ids: list[int] = [i for i in range(L + len(self.mtp)) if config.is_moe_layer(i)]
        self.init_weights()

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, initializer_range) for every weight matrix (V3: 0.006), ones for norms, zero
        routing bias; recomputes the RoPE tables. A no-op on the meta device."""
        std = self.config.initializer_range
        if self.embed_tokens.weight.is_meta:   # nothing to fill (and meta normal_ is slow)
            return
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, Router):
                m.reset_parameters(std)
            elif isinstance(m, RMSNorm):
                m.reset_parameters()
        self.init_buffers()

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute non-persistent buffers (RoPE frequencies), e.g. after ``to_empty``;
        ``device`` materialises them when they are still on meta (weights loaded with assign)."""
        if device is not None and self.rotary.inv_freq.is_meta:
            self.rotary.inv_freq = torch.empty_like(self.rotary.inv_freq, device=device)
        self.rotary.reset_parameters()

    # -- the forward, piece by piece -----------------------------------------------------------
    def attention_context(self, input_ids: torch.Tensor, *, segment_ids: torch.Tensor | None = None,
                          position_ids: torch.Tensor | None = None) -> AttentionContext:
        """RoPE tables and mask shared by every layer. With ``segment_ids`` (packed documents)
        positions restart at each document and attention stays inside it."""
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = (segment_positions(segment_ids) if segment_ids is not None
                            else torch.arange(T, device=input_ids.device).expand(B, T))
        return AttentionContext.for_sequence(self.rotary, position_ids, segment_ids)

    def forward_layers(self, h: torch.Tensor, ctx: AttentionContext
                       ) -> tuple[torch.Tensor, dict[int, MoEStats]]:
        """Run the main decoder layers this module holds; returns h and MoE stats by layer id."""
        stats: dict[int, MoEStats] = {}
        for layer in self.layers.values():
            h, s = self._run_block(layer, h, ctx)
            if s is not None:
                stats[layer.layer_idx] = s
        return h, stats

    def _run_block(self, block: nn.Module, *args):
        mode = self.config.activation_checkpointing
        if mode == "none" or not (self.training and torch.is_grad_enabled()):
            return block(*args)
        if mode == "full":
            return checkpoint(block, *args, use_reentrant=False)
        return checkpoint(block, *args, use_reentrant=False,
                          context_fn=partial(create_selective_checkpoint_contexts, _save_matmuls_policy))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                segment_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, mtp_loss_weight: float | None = None,
                mtp_rows: int | None = None, return_logits: bool = True) -> ModelOutput:
        """Training / scoring forward over whole sequences.

        input_ids    [B, T] token ids.
        labels       [B, T] aligned with input_ids (HF convention: the model shifts, position i is
                     trained to predict labels[i+1]); -100 = ignore. None: no losses, no MTP.
        segment_ids  [B, T] document ids of packed sequences: attention is block-diagonal causal,
                     positions restart per document and targets never cross a document boundary.
        position_ids [B, T] explicit positions (default: 0..T-1, or per document).
        loss_mask    [B, T] 1/True where the token counts as a target (e.g. assistant tokens
                     only), combined with labels != -100.
        mtp_loss_weight  λ for this call (schedules), default ``config.mtp_loss_weight``; 0 skips
                     the MTP modules (``mtp_loss`` None, their expert loads 0).
        mtp_rows     run the MTP modules on the first ``mtp_rows`` sequences only (their loss is the
                     mean over those rows' targets): MTP's cost scales with it. None: all rows.
        return_logits  False with labels: the head runs fused with the loss, token chunk by chunk
                     (:func:`model.loss.linear_cross_entropy`), and no [B, T, V] logits exist.
        """
        timed = input_ids.device.type == "cpu"
        t0 = time.perf_counter()
        ctx = self.attention_context(input_ids, segment_ids=segment_ids, position_ids=position_ids)
        h = self.embed_tokens(input_ids)
        h, stats = self.forward_layers(h, ctx)
        h = self.norm(h)
        # with labels and no logits wanted (training), the head runs fused with the loss in chunks
        fused = labels is not None and not return_logits
        logits = None if fused else self.lm_head(h)

        out = ModelOutput(logits=logits if return_logits else None, hidden_states=h)
        if labels is not None:
            targets = next_token_targets(labels, loss_mask, segment_ids)
            out.lm_loss, out.num_target_tokens = (linear_cross_entropy(h, self.lm_head.weight, targets) if fused
                                                  else cross_entropy(logits, targets))
            lam = self.config.mtp_loss_weight if mtp_loss_weight is None else mtp_loss_weight
            if len(self.mtp) and lam > 0:   # λ = 0 skips the MTP modules entirely (no forward, no cost)
                t_mtp = time.perf_counter()
                rows = slice(None) if mtp_rows is None else slice(0, mtp_rows)
                out.mtp_losses, mtp_stats = self.mtp_losses(
                    h[rows], input_ids[rows], targets[rows], ctx.rows(rows),
                    segment_ids[rows] if segment_ids is not None else None, fused=fused)
                stats.update(mtp_stats)
                out.mtp_loss = torch.stack(out.mtp_losses).mean()
                out.mtp_forward_seconds = time.perf_counter() - t_mtp if timed else None
            out.loss = out.lm_loss + (lam * out.mtp_loss if out.mtp_loss is not None else 0.0)
        balance = [s.balance_loss for s in stats.values() if s.balance_loss is not None]
        if balance:
            out.balance_loss = torch.stack(balance).sum()
            if out.loss is not None:
                out.loss = out.loss + out.balance_loss
        out.expert_load, out.dropped_tokens = self._collect_loads(stats, h.device)
        if timed:
            out.forward_seconds = time.perf_counter() - t0
            out.mtp_forward_seconds = out.mtp_forward_seconds or 0.0
        return out

    def mtp_losses(self, h: torch.Tensor, input_ids: torch.Tensor, targets: torch.Tensor,
                   ctx: AttentionContext, segment_ids: torch.Tensor | None = None, *, fused: bool = False
                   ) -> tuple[list[torch.Tensor], dict[int, MoEStats]]:
        """Cross-entropy of each MTP depth k: position i, given h^{k-1}_i and Emb(t_{i+k}),
        predicts t_{i+k+1} (= targets[:, i+k]). Positions whose target lies past the sequence or
        in another document are ignored. ``fused``: head and loss in chunks (no logits kept)."""
        losses, stats = [], {}
        h_prev = h
        for k, layer in enumerate(self.mtp, start=1):
            # t_{i+k}; the k wrapped-around tokens sit at the last positions, which nothing
            # earlier attends to and whose targets are ignored below.
            next_embeds = self.embed_tokens(input_ids.roll(-k, dims=1))
            h_prev, s = self._run_block(layer, h_prev, next_embeds, ctx)
            if s is not None:
                stats[layer.layer_idx] = s
            h_k, tgt = layer.shared_head.norm(h_prev), mtp_targets(targets, k, segment_ids)
            losses.append(linear_cross_entropy(h_k, self.lm_head.weight, tgt)[0] if fused
                          else cross_entropy(self.lm_head(h_k), tgt)[0])
        return losses, stats

    def _collect_loads(self, stats: Mapping[int, MoEStats], device) -> tuple[torch.Tensor, torch.Tensor]:
        E = self.config.n_routed_experts
        loads = torch.zeros(len(self.moe_layer_ids), E, device=device)
        dropped = torch.zeros((), dtype=torch.long, device=device)
        for row, lid in enumerate(self.moe_layer_ids):
            if lid in stats:
                loads[row] = stats[lid].expert_load.to(device)
                dropped = dropped + stats[lid].dropped.to(device)
        return loads, dropped

    # -- MoE: balance, metrics, dispatch -------------------------------------------------------
    def moe_layers(self) -> dict[int, MoE]:
        """Global layer id -> MoE module, for the MoE layers this module holds (MTP included)."""
        blocks = {layer.layer_idx: layer for layer in self.layers.values()}
        blocks.update({m.layer_idx: m.block for m in self.mtp})
        return {lid: block.mlp for lid, block in sorted(blocks.items()) if block.is_moe}

    @torch.no_grad()
    def update_router_biases(self, expert_load: torch.Tensor, rate: float | None = None) -> dict[str, float]:
        """Aux-loss-free balancing step, after ``optimizer.step()``: for each MoE layer,
        b_i += γ·sign(mean load − load_i), γ = ``rate`` or ``config.router_bias_update_rate``.

        ``expert_load`` [M, E] as in ``ModelOutput.expert_load`` (summed over micro-batches and,
        under data parallelism, all-reduced so every rank applies the same update).
        Returns the load metrics of ``expert_load`` (before the update) for logging."""
        rate = self.config.router_bias_update_rate if rate is None else rate
        if expert_load.shape != (len(self.moe_layer_ids), self.config.n_routed_experts):
            raise ValueError(f"expert_load has shape {tuple(expert_load.shape)}, expected "
                             f"({len(self.moe_layer_ids)}, {self.config.n_routed_experts})")
        metrics = self.moe_metrics(expert_load)
        layers = self.moe_layers()
        for lid, load in zip(self.moe_layer_ids, expert_load, strict=True):
            if lid in layers:
                update_router_bias(layers[lid].gate.e_score_correction_bias, load, rate)
        return metrics

    def moe_metrics(self, expert_load: torch.Tensor) -> dict[str, float]:
        """``moe/maxvio`` (mean over layers), ``moe/maxvio_max``, ``moe/maxvio/layer_<i>`` and
        ``moe/bias_range/layer_<i>`` for loads [M, E]."""
        layers = self.moe_layers()
        biases = [layers[lid].gate.e_score_correction_bias if lid in layers else None
                  for lid in self.moe_layer_ids]
        return load_metrics(self.moe_layer_ids, expert_load.detach().float().cpu(), biases)

    def set_expert_dispatcher(self, dispatcher: ExpertDispatcher) -> None:
        """Use ``dispatcher`` (e.g. expert-parallel all-to-all) in every MoE layer."""
        for moe in self.moe_layers().values():
            moe.dispatcher = dispatcher

    # -- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(self, path, **kwargs) -> None:
        """HF layout: config.json, safetensors with DeepSeek names, generation_config.json.
        See :func:`model.hf_checkpoint.save_pretrained`."""
        from model.hf_checkpoint import save_pretrained

        save_pretrained(self, path, **kwargs)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "DeepSeekV3":
        """Load a folder written by ``save_pretrained`` (or DeepSeek's HF layout)."""
        from model.hf_checkpoint import load_pretrained

        return load_pretrained(cls, path, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ------------------------------------------------------------------------------------------------
def next_token_targets(labels: torch.Tensor, loss_mask: torch.Tensor | None = None,
                       segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """targets[:, i] = labels[:, i+1], or -100 where that token is masked, past the end, or in
    another document than position i."""
    labels = labels.masked_fill(loss_mask == 0, IGNORE_INDEX) if loss_mask is not None else labels
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if segment_ids is not None:
        crosses = segment_ids[:, 1:] != segment_ids[:, :-1]
        targets[:, :-1] = targets[:, :-1].masked_fill(crosses, IGNORE_INDEX)
    return targets


_SAVED_OPS = {
    torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _save_matmuls_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective activation checkpointing: keep matmul and attention outputs, recompute the
    cheap element-wise ops (norms, SiLU, RoPE, gating) in the backward."""
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def mtp_targets(targets: torch.Tensor, k: int, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """Targets of MTP depth k: position i predicts t_{i+k+1} = targets[:, i+k], ignored past the
    end of the sequence or across a document boundary."""
    T = targets.shape[1]
    tgt = torch.full_like(targets, IGNORE_INDEX)
    if k < T:
        tgt[:, :T - k] = targets[:, k:]
        if segment_ids is not None:
            crosses = segment_ids[:, :T - k] != segment_ids[:, k:]
            tgt[:, :T - k] = tgt[:, :T - k].masked_fill(crosses, IGNORE_INDEX)
    return tgt
