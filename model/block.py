"""One pre-norm transformer block: h += MLA(norm(h)); h += FFN(norm(h)), FFN dense or MoE."""

from __future__ import annotations

import torch
from torch import nn

from model.attention import AttentionContext, MultiHeadLatentAttention
from model.config import ModelConfig
from model.mlp import SwiGLU
from model.moe import MoE, MoEStats
from model.norm import RMSNorm


class DecoderLayer(nn.Module):
    """``model.layers.<layer_idx>`` in the checkpoint. Returns (h, MoEStats or None)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MultiHeadLatentAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp: MoE | SwiGLU = (MoE(config) if config.is_moe_layer(layer_idx)
                                  else SwiGLU(config.hidden_size, config.intermediate_size))

    @property
    def is_moe(self) -> bool:
        return isinstance(self.mlp, MoE)

    def forward(self, h: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, MoEStats | None]:
        h = h + self.self_attn(self.input_layernorm(h), ctx)
        ffn_in = self.post_attention_layernorm(h)
        if self.is_moe:
            out, stats = self.mlp(ffn_in)
            return h + out, stats
        return h + self.mlp(ffn_in), None
