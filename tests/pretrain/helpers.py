"""Shared by the pretrain tests: a micro DeepSeek-V3 (every feature on, milliseconds per step)."""

from __future__ import annotations

import socket

import torch

from model import DeepSeekV3, ModelConfig

# Smaller than the `tiny` preset but with everything that matters for parallel numerics: a dense
# first layer, shared + routed experts with group-limited routing, MTP (its block is MoE too),
# and a balance loss large enough to move gradients.
MICRO = dict(
    vocab_size=256, hidden_size=64, num_hidden_layers=2, max_position_embeddings=128,
    num_attention_heads=2, q_lora_rank=32, kv_lora_rank=32,
    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    intermediate_size=128, moe_intermediate_size=32, first_k_dense_replace=1,
    n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
    num_nextn_predict_layers=1, initializer_range=0.05, seq_aux_loss_alpha=0.01,
)


def micro_config(**overrides) -> ModelConfig:
    return ModelConfig.model_validate({**MICRO, **overrides})


def micro_model(seed: int = 0, **overrides) -> DeepSeekV3:
    torch.manual_seed(seed)
    return DeepSeekV3(micro_config(**overrides)).train()


def random_batch(batch: int, seq: int, vocab: int = 256, seed: int = 0, segments: bool = True) -> dict:
    """Token ids with a few packed documents per row (uneven target counts across rows)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    out = {"input_ids": ids, "labels": ids.clone()}
    if segments:
        cuts = torch.rand(batch, seq, generator=g) < 0.08
        out["segment_ids"] = cuts.long().cumsum(1)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
