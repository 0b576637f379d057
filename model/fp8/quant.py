"""E4M3 quantisation with online max-abs scales per 1x128 tile or 128x128 block (V3 §3.3.2).

Every scale is computed from the tensor being quantised, at the moment it is quantised
("online"), so no amax history is kept anywhere:

    s = amax(|x| over the tile or block) / 448          (448 = largest finite E4M3 value)
    s = 2^ceil(log2(s))                                 (``rounding="pow2"``, the default)
    q = round_to_e4m3(clamp(x / s, -448, 448))          x ≈ q · s

Scale rounding. ``pow2`` (DeepSeek-V3's recipe, its reference ``act_quant`` with ``scale_fmt``
and DeepGEMM's UE8M0 scales) rounds every scale up to a power of two; ``exact`` keeps amax/448.
Power-of-two scales matter for Wgrad: the 1x128 tiles cached in Fprop are dequantised and
re-quantised as 128x1 tiles (:mod:`model.fp8.linear`). With power-of-two scales on both sides,
``q·2^a / 2^b`` only shifts the exponent, so every element that stays in E4M3's normal range
comes back bit-exact (only elements in the subnormal range, |q·s| < 2^-6·s of the new tile, can
lose bits). With exact scales the second rounding is a fresh rounding of most elements.

Granularities: activations and activation gradients use 1x128 tiles (one scale per row per
128 columns), weights 128x128 blocks. A dimension that is not a multiple of 128 ends in a
ragged tile/block: its amax is taken over the elements that exist (zero padding cannot
raise a max-abs), and ``data`` keeps the unpadded shape.

Error model (what the tests check): E4M3 has 3 mantissa bits, so an element whose scaled
value |x/s| is in the normal range (>= 2^-6) is rounded with relative error <= 2^-4; below
that, in the subnormal range, the absolute error is <= 2^-10 in scaled units. Hence per
element |x - q·s| <= 2^-4·|x| + 2^-10·s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
# Half an E4M3 ulp relative to the value (3 mantissa bits) and half the subnormal step (2^-9).
E4M3_REL_ERR = 2.0**-4
E4M3_SUBNORMAL_ABS_ERR = 2.0**-10

QUANT_BLOCK = 128
TILE = (1, QUANT_BLOCK)           # activations and activation gradients
BLOCK = (QUANT_BLOCK, QUANT_BLOCK)  # weights

# Floor on amax so that s = amax/448 stays a normal FP32 number: an all-zero tile gets a tiny
# finite scale (its data is exactly 0), and tiny-but-nonzero gradients are never flushed to 0
# the way a large floor (DeepGEMM's tests use 1e-4) would flush them.
_MIN_AMAX = torch.finfo(torch.float32).tiny * E4M3_MAX

ScaleRounding = Literal["pow2", "exact"]
SCALE_ROUNDINGS: tuple[str, ...] = ("pow2", "exact")


@dataclass(frozen=True)
class ScaledFp8:
    """An E4M3 matrix and its FP32 dequantisation scales: ``x ≈ data · scale`` per tile/block.

    A plain pair of tensors, not a ``torch.Tensor`` subclass. ``data`` is ``[rows, cols]``
    float8_e4m3fn; ``scale`` is ``[ceil(rows/br), ceil(cols/bc)]`` float32 for
    ``block == (br, bc)``, either :data:`TILE` (1x128) or :data:`BLOCK` (128x128).
    """

    data: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int]

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rows, cols = self.data.shape
        (br, bc), (nr, nc) = self.block, self.scale.shape
        per_element = self.scale[:, None, :, None].expand(nr, br, nc, bc).reshape(nr * br, nc * bc)
        return (self.data.float() * per_element[:rows, :cols]).to(dtype)

    def t(self) -> ScaledFp8:
        """The transpose, re-laid out row-major. Only square blocks transpose: the blocks of Wᵀ
        are the transposed blocks of W with the same scales, which is why weights use 128x128
        blocks: one quantised copy serves both Fprop (W) and Dgrad (Wᵀ). A 1x128 tile would
        become 128x1 and has to be re-quantised instead."""
        if self.block[0] != self.block[1]:
            raise ValueError(f"a {self.block[0]}x{self.block[1]}-scaled matrix cannot be transposed "
                             "without re-quantising; quantise the transposed tensor instead")
        return ScaledFp8(self.data.t().contiguous(), self.scale.t().contiguous(), self.block)


def quantize(x: torch.Tensor, block: tuple[int, int], rounding: ScaleRounding = "pow2") -> ScaledFp8:
    """Quantise a 2-D float tensor to E4M3 with one max-abs scale per ``block`` (rows x cols),
    the scale rounded up to a power of two (``pow2``) or kept as amax/448 (``exact``)."""
    if rounding not in SCALE_ROUNDINGS:
        raise ValueError(f"unknown scale rounding {rounding!r}; choose one of {SCALE_ROUNDINGS}")
    if x.dim() != 2:
        raise ValueError(f"quantize expects a 2-D tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"quantize expects a floating-point tensor, got {x.dtype}")
    br, bc = block
    rows, cols = x.shape
    pad_r, pad_c = -rows % br, -cols % bc
    xf = x.float()
    if pad_r or pad_c:
        xf = F.pad(xf, (0, pad_c, 0, pad_r))
    tiles = xf.reshape(xf.shape[0] // br, br, xf.shape[1] // bc, bc)
    amax = tiles.abs().amax(dim=(1, 3), keepdim=True)  # NaN/inf propagate: a broken tile stays visible
    scale = amax.clamp_min(_MIN_AMAX) / E4M3_MAX
    if rounding == "pow2":
        scale = _round_up_to_power_of_two(scale)
    # Clamp: x/s can land a rounding step above 448, and E4M3FN has no inf (overflow is NaN on GPU).
    data = (tiles / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3).reshape(xf.shape)
    if pad_r or pad_c:
        data = data[:rows, :cols].contiguous()
    return ScaledFp8(data, scale.reshape(scale.shape[0], scale.shape[2]), block)


def _round_up_to_power_of_two(s: torch.Tensor) -> torch.Tensor:
    """2^ceil(log2 s), exactly (frexp, not a float log2 that can round across a power of two), so
    amax/s <= 448 still holds. NaN and inf stay as they are (a broken tile stays visible)."""
    mantissa, exponent = torch.frexp(s)                 # s = mantissa · 2^exponent, mantissa in [0.5, 1)
    pow2 = torch.ldexp(torch.ones_like(s), exponent - (mantissa == 0.5).to(exponent.dtype))
    return torch.where(torch.isfinite(s), pow2, s)


def quantize_tiles(x: torch.Tensor, rounding: ScaleRounding = "pow2") -> ScaledFp8:
    """1x128 tiles along the last dim: per token per 128 channels (activations and their grads)."""
    return quantize(x, TILE, rounding)


def quantize_blocks(w: torch.Tensor, rounding: ScaleRounding = "pow2") -> ScaledFp8:
    """128x128 blocks (weights)."""
    return quantize(w, BLOCK, rounding)


def quantization_error_bound(q: ScaledFp8, x: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |x - q.dequantize()|: 2^-4·|x| + 2^-10·s (see the module docstring)."""
    ones = ScaledFp8(torch.ones_like(q.data, dtype=torch.float32), q.scale, q.block)
    per_element_scale = ones.dequantize()
    return E4M3_REL_ERR * x.abs().float() + E4M3_SUBNORMAL_ABS_ERR * per_element_scale
