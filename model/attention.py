"""Multi-head Latent Attention (DeepSeek-V2 §2.1, V3 §2.1.1).

Keys and values are compressed into one latent per token, c_KV = RMSNorm(W_DKV·h) of width
``kv_lora_rank``; a single RoPE key k_R = RoPE(W_KR·h) is shared by all heads (decoupled RoPE).
Queries are compressed too: c_Q = RMSNorm(W_DQ·h), q_C = W_UQ·c_Q, q_R = RoPE(W_QR·c_Q).
Per head: k = [W_UK·c_KV ; k_R], v = W_UV·c_KV and softmax(q·k / sqrt(d_qk)) v.

Two equivalent ways to compute attention from the latents:
- expanded (training, prefill): materialise k and v for every head, then SDPA;
- absorbed (decoding): fold W_UK into the query (q_lat = q_C·W_UK, a ``kv_lora_rank``-wide query)
  and W_UV into the output, so scores are q_lat·c_KV + q_R·k_R straight against the cached
  latents and nothing per-head is ever stored.
Only (c_KV, k_R), ``kv_lora_rank + qk_rope_head_dim`` numbers per token and layer, are cached.

Weight layout follows HF / the released checkpoint: ``kv_a_proj_with_mqa`` outputs
[c_KV ; k_R], ``kv_b_proj`` outputs per head [k_nope ; v], queries per head are [nope ; rope].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.norm import RMSNorm
from model.rope import RotaryEmbedding, apply_rotary

if TYPE_CHECKING:
    from model.kv_cache import LatentKVCache

MLAMode = Literal["auto", "expanded", "absorbed"]


@dataclass
class CacheStep:
    """Where this step's tokens go in a :class:`LatentKVCache`: rows ``slots`` [B], positions
    [B, T]; attention then reads the first ``kv_len`` cached positions of each row.
    ``slot_range`` (first, end) when the slots are consecutive: the read is then a view, no copy."""

    cache: "LatentKVCache"
    slots: torch.Tensor
    positions: torch.Tensor
    kv_len: int
    slot_range: tuple[int, int] | None = None

    def write_and_read(self, layer_idx: int, latent: torch.Tensor, k_rope: torch.Tensor) -> torch.Tensor:
        """Store [c_KV ; k_R] of the new tokens; returns the cached [B, kv_len, C + R] of the rows."""
        pool = self.cache.pools[layer_idx]
        pool[self.slots[:, None], self.positions] = torch.cat([latent, k_rope], dim=-1).to(pool.dtype)
        if self.slot_range is not None:
            return pool[self.slot_range[0]:self.slot_range[1], :self.kv_len]
        return pool[self.slots, :self.kv_len]


@dataclass
class AttentionContext:
    """What every attention layer of one forward shares: RoPE tables, the mask, the cache step.

    ``mask`` is boolean [B, 1, T, S] (True = may attend) or None for plain causal attention over
    the T tokens themselves.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None = None
    cache_step: CacheStep | None = None
    mla_mode: MLAMode = "auto"

    @classmethod
    def for_sequence(cls, rotary: RotaryEmbedding, positions: torch.Tensor,
                     segment_ids: torch.Tensor | None = None) -> "AttentionContext":
        """Training / full-sequence forward; ``segment_ids`` [B, T] make the mask block-diagonal
        causal, so packed documents never see each other."""
        cos, sin = rotary(positions)
        mask = None
        if segment_ids is not None:
            T = segment_ids.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
            same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
            mask = (same_doc & causal)[:, None]
        # Always expanded: a training forward must run kv_b_proj as a module (FP8 under precision
        # fp8, hooks, FSDP), and the absorbed path reads its weight directly. Absorbing pays off
        # only against a cache (decode), where for_cache_step keeps "auto".
        return cls(cos, sin, mask, mla_mode="expanded")

    def rows(self, rows: slice) -> "AttentionContext":
        """The context of a slice of the batch's sequences (training only: no cache step)."""
        if rows == slice(None):
            return self
        if self.cache_step is not None:
            raise ValueError("AttentionContext.rows slices a training context, not a cache step")
        mask = self.mask[rows] if self.mask is not None else None
        return AttentionContext(self.cos[rows], self.sin[rows], mask, None, self.mla_mode)

    @classmethod
    def for_cache_step(cls, rotary: RotaryEmbedding, step: CacheStep, mla_mode: MLAMode = "auto"
                       ) -> "AttentionContext":
        """Tokens at ``step.positions`` attend to every cached position <= their own."""
        cos, sin = rotary(step.positions)
        keys = torch.arange(step.kv_len, device=step.positions.device)
        mask = (keys[None, None, :] <= step.positions[:, :, None])[:, None]
        return cls(cos, sin, mask, step, mla_mode)


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 where each document (run of equal segment ids) starts."""
    B, T = segment_ids.shape
    idx = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    doc_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - doc_start


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = H = config.num_attention_heads
        self.nope_dim, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.v_dim, self.kv_rank = config.v_head_dim, config.kv_lora_rank
        self.softmax_scale = config.softmax_scale
        D, qk = config.hidden_size, config.qk_head_dim

        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(D, H * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(D, config.q_lora_rank, bias=False)          # W_DQ
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, config.rms_norm_eps)
            self.q_b_proj = nn.Linear(config.q_lora_rank, H * qk, bias=False)     # [W_UQ; W_QR]
        self.kv_a_proj_with_mqa = nn.Linear(D, self.kv_rank + self.rope_dim, bias=False)  # [W_DKV; W_KR]
        self.kv_a_layernorm = RMSNorm(self.kv_rank, config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_rank, H * (self.nope_dim + self.v_dim), bias=False)  # [W_UK; W_UV]
        self.o_proj = nn.Linear(H * self.v_dim, D, bias=False)

    # -- projections ------------------------------------------------------------------------
    def queries(self, x: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor]:
        """q_C [B, T, H, nope] and RoPE'd q_R [B, T, H, rope]."""
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_rope = q.unflatten(-1, (self.n_heads, -1)).split([self.nope_dim, self.rope_dim], dim=-1)
        return q_nope, apply_rotary(q_rope, ctx.cos[:, :, None], ctx.sin[:, :, None])

    def latents(self, x: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached pair: c_KV [B, T, kv_lora_rank] and RoPE'd k_R [B, T, rope]."""
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope_dim], dim=-1)
        return self.kv_a_layernorm(latent), apply_rotary(k_rope, ctx.cos, ctx.sin)

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK [H, nope, C] and W_UV [H, v, C], views of ``kv_b_proj.weight``."""
        w = self.kv_b_proj.weight.unflatten(0, (self.n_heads, self.nope_dim + self.v_dim))
        return w[:, :self.nope_dim], w[:, self.nope_dim:]

    # -- attention --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        q_nope, q_rope = self.queries(x, ctx)
        latent, k_rope = self.latents(x, ctx)
        if ctx.cache_step is not None:
            kv = ctx.cache_step.write_and_read(self.layer_idx, latent, k_rope)
            latent, k_rope = kv[..., :self.kv_rank], kv[..., self.kv_rank:]
        else:
            kv = None
        if self._use_absorbed(ctx.mla_mode, q_nope.shape[1]):
            if kv is None:
                kv = torch.cat([latent, k_rope], dim=-1)
            out = self._attend_absorbed_kv(q_nope, q_rope, kv, ctx.mask)
        else:
            out = self.attend_expanded(q_nope, q_rope, latent, k_rope, ctx.mask)
        return self.o_proj(out.flatten(2))

    def _use_absorbed(self, mode: MLAMode, num_queries: int) -> bool:
        if mode != "auto":
            return mode == "absorbed"
        # Per query and cached token the absorbed path costs ~H·(2C + R) MACs against
        # H·(d_qk + d_v) expanded, but expanded must first run W_UKV over every cached latent
        # (H·C·(nope + v) per token): absorbed wins for the few queries of a decode step
        # (crossover at ~64 queries for `tiny`, ~170 at V3's shape).
        C = self.kv_rank
        extra_per_query = 2 * C + self.rope_dim - (self.nope_dim + self.rope_dim + self.v_dim)
        return num_queries * extra_per_query < C * (self.nope_dim + self.v_dim)

    def attend_expanded(self, q_nope, q_rope, latent, k_rope, mask):
        """k, v for every head from the latents, then SDPA. -> [B, T, H, v]"""
        H = self.n_heads
        k_nope, v = self.kv_b_proj(latent).unflatten(-1, (H, -1)).split([self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, :, None, :].expand(-1, -1, H, -1)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, is_causal=mask is None, scale=self.softmax_scale)
        return out.transpose(1, 2)

    def attend_absorbed(self, q_nope, q_rope, latent, k_rope, mask):
        """scores = (q_C·W_UK)·c_KV + q_R·k_R; out = W_UV·(attn·c_KV). -> [B, T, H, v]"""
        return self._attend_absorbed_kv(q_nope, q_rope, torch.cat([latent, k_rope], dim=-1), mask)

    def _attend_absorbed_kv(self, q_nope, q_rope, kv, mask):
        """Absorbed attention against the cached [c_KV ; k_R] rows ``kv`` [B, S, C + R]: the query
        [q_C·W_UK ; q_R] of all H heads scores against both halves in one batched matmul (the
        single latent "head" is shared, never expanded per head), values = c_KV; then W_UV.
        -> [B, T, H, v]"""
        w_uk, w_uv = self.absorbed_weights()
        B, T, H, _ = q_nope.shape
        S = kv.shape[1]
        # per head: [B·T, nope] @ W_UK[h] (a bmm over heads; a broadcast matmul would copy W_UK B times)
        q_latent = torch.bmm(q_nope.permute(2, 0, 1, 3).reshape(H, B * T, -1), w_uk)   # [H, B·T, C]
        q_latent = q_latent.view(H, B, T, -1).transpose(0, 1)                            # [B, H, T, C]
        q = torch.cat([q_latent, q_rope.transpose(1, 2).to(q_latent.dtype)], dim=-1).reshape(B, H * T, -1)
        scores = torch.bmm(q, kv.transpose(1, 2)).view(B, H, T, S).float() * self.softmax_scale
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(S - T)
        probs = scores.masked_fill_(~mask, float("-inf")).softmax(dim=-1).to(kv.dtype)
        out_latent = torch.bmm(probs.view(B, H * T, S), kv[..., :self.kv_rank])         # [B, H·T, C]
        out_latent = out_latent.view(B, H, T, -1).transpose(0, 1).reshape(H, B * T, -1)  # [H, B·T, C]
        out = torch.bmm(out_latent, w_uv.transpose(1, 2))                                # [H, B·T, v]
        return out.view(H, B, T, -1).permute(1, 2, 0, 3)                                 # [B, T, H, v]
