"""Rotary position embedding for MLA's decoupled key/query slice, with optional YaRN.

RoPE rotates each pair of dimensions (x_{2i}, x_{2i+1}) by the angle position·θ_i, with
θ_i = base^(-2i/d). DeepSeek stores the pairs interleaved (as in its reference code and the
released weights), so we rotate adjacent pairs in place. Queries and keys go through the same
map, so the scores q·k are what matter, not the output layout.

YaRN (arXiv 2309.00071) extends the context: frequencies that rotate fewer than ``beta_slow``
times over the original context are interpolated (θ/factor), those rotating more than
``beta_fast`` times are kept, and a linear ramp blends the band between. The magnitude factors
(``mscale``/``mscale_all_dim``) follow transformers; where that differs from DeepSeek's reference
(``mscale_all_dim`` unset) is documented on :class:`model.config.RopeScaling`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import ModelConfig, RopeScaling, yarn_mscale


def rope_inv_freq(dim: int, base: float) -> torch.Tensor:
    """θ_i = base^(-2i/d) for i < d/2."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim))


def yarn_inv_freq(dim: int, base: float, rs: RopeScaling) -> tuple[torch.Tensor, float]:
    """YaRN frequencies and the cos/sin magnitude factor (HF ``_compute_yarn_parameters``)."""

    def correction_dim(num_rotations: float) -> float:
        # the dimension whose wavelength fits `num_rotations` times into the original context
        return dim * math.log(rs.original_max_position_embeddings / (num_rotations * 2 * math.pi)) / (
            2 * math.log(base))

    low, high = correction_dim(rs.beta_fast), correction_dim(rs.beta_slow)
    if rs.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrapolation = rope_inv_freq(dim, base)
    interpolation = extrapolation / rs.factor
    # ramp = 0 (high-frequency dims) keeps θ, ramp = 1 (low-frequency dims) interpolates
    inv_freq = extrapolation * (1 - ramp) + interpolation * ramp

    if rs.attention_factor is not None:
        attention_factor = rs.attention_factor
    elif rs.mscale and rs.mscale_all_dim:
        attention_factor = yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(rs.factor)
    return inv_freq, attention_factor


class RotaryEmbedding(nn.Module):
    """positions [B, T] -> (cos, sin) [B, T, qk_rope_head_dim/2] in FP32, computed per call."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", torch.empty(config.qk_rope_head_dim // 2), persistent=False)
        self.attention_factor = 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg = self.config
        if cfg.rope_scaling is None:
            inv_freq, self.attention_factor = rope_inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta), 1.0
        else:
            inv_freq, self.attention_factor = yarn_inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta,
                                                            cfg.rope_scaling)
        if self.inv_freq.is_meta:
            return
        with torch.no_grad():
            self.inv_freq.copy_(inv_freq.to(self.inv_freq.device, torch.float32))

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device)
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dim of ``x`` ([..., d]) by (cos, sin) ([..., d/2],
    broadcastable). Computed in FP32, returned in x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
