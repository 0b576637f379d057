"""Multi-token prediction module (V3 §2.2, eqs. 21-25).

Depth k predicts token t_{i+k+1} at position i from the previous depth's representation and the
embedding of token t_{i+k}:

    h'^k_i = M_k [RMSNorm(Emb(t_{i+k})) ; RMSNorm(h^{k-1}_i)]        (eh_proj, enorm, hnorm)
    h^k    = TRM_k(h'^k)                                            (a full block, MoE included)
    P^k    = OutHead(RMSNorm(h^k))                                  (shared_head.norm + shared head)

Embedding and output head are the main model's (shared, not copied). The concatenation puts
the embedding first, as in the released weights (vLLM and torchtitan agree). h^0 is the main
model's final, normalised hidden state and deeper modules chain the pre-norm block output,
as vLLM's DeepSeek MTP does when serving the released checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from model.attention import AttentionContext
from model.block import DecoderLayer
from model.config import ModelConfig
from model.moe import MoEStats
from model.norm import RMSNorm


class SharedHead(nn.Module):
    """Holds the MTP module's own final norm (``shared_head.norm``); the head is the main one."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPLayer(nn.Module):
    """``model.layers.<num_hidden_layers + k>`` in the checkpoint (block weights directly under it)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        D = config.hidden_size
        self.layer_idx = layer_idx
        self.enorm = RMSNorm(D, config.rms_norm_eps)
        self.hnorm = RMSNorm(D, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        self.block = DecoderLayer(config, layer_idx)
        self.shared_head = SharedHead(config)

    def forward(self, h_prev: torch.Tensor, next_embeds: torch.Tensor, ctx: AttentionContext
                ) -> tuple[torch.Tensor, MoEStats | None]:
        """(h^{k-1}, Emb(t_{i+k})) -> (h^k pre-norm, MoE stats). Logits: head(shared_head.norm(h^k))."""
        x = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(h_prev)], dim=-1))
        return self.block(x, ctx)
