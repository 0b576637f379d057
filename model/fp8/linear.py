"""FP8 linear layer: Fprop, Dgrad and Wgrad GEMMs in E4M3 (V3 §3.3, Figure 6).

For ``y = x Wᵀ (+ b)`` with x ``[M, K]`` (M tokens), W ``[N, K]``:

    Fprop  y  = x · Wᵀ      x: 1x128 tiles along K        W: 128x128 blocks
    Dgrad  dx = dy · W      dy: 1x128 tiles along N       Wᵀ: the same blocks, transposed
    Wgrad  dW = dyᵀ · x     dyᵀ: 1x128 tiles along M      xᵀ: 1x128 tiles along M

Activation gradients are only ever tiled 1x128, never 128x128 blocks (the report saw
block-wise gradient quantisation diverge at ~300B tokens). Wgrad contracts over tokens, so
both of its operands are quantised along the token dim. x is cached for backward in FP8, as
the 1x128 tiles Fprop used (V3 §3.3.3: 1 byte per element), and Wgrad dequantises, transposes
and re-quantises them into token-wise tiles, the workflow V3 §3.5.2 describes. With the default
power-of-two scales (``scale_rounding="pow2"``, DeepSeek's choice) that re-quantisation is
lossless for every element in E4M3's normal range; ``"exact"`` (amax/448) rounds twice. The master
weight stays FP32 in the module; its FP8 copy is made from it on every forward and reused by
Dgrad. Weight and bias gradients come back in the master weights' dtype (FP32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from model.fp8.gemm import GemmBackend, fp8_gemm, resolve_backend
from model.fp8.quant import BLOCK, TILE, ScaledFp8, ScaleRounding, quantize_blocks, quantize_tiles

# Modules DeepSeek keeps in BF16/FP32, matched on the last component of the module name:
# embedding, output heads (main and MTP ``shared_head.head``), the MoE router ``mlp.gate``, and
# the MTP ``eh_proj``. The report does not list eh_proj either way; the released FP8 V3
# checkpoint keeps it unquantised (vLLM and SGLang build it as a plain nn.Linear with no quant
# config), it is one 2H->H layer per MTP depth (negligible FLOPs), and its input concatenates
# the (BF16) embedding path with the hidden state, so BF16 costs nothing and risks nothing.
HIGH_PRECISION_NAMES = frozenset({"embed_tokens", "embedding", "embed", "lm_head", "head", "gate", "eh_proj"})


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               gemm: GemmBackend = "auto", scale_rounding: ScaleRounding = "pow2") -> torch.Tensor:
    """``F.linear`` with the three GEMMs in FP8. Usable on any weight tensor (e.g. one expert's
    slice of a stacked expert weight). Output dtype: the autocast dtype when autocast is on,
    else ``x.dtype``."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features, weight expects {weight.shape[1]}")
    return _Fp8LinearFunction.apply(x, weight, bias, gemm, scale_rounding)


class _Fp8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                gemm: GemmBackend, rounding: ScaleRounding) -> torch.Tensor:
        device = x.device.type
        out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        backend = resolve_backend(gemm, x.device)
        x2 = x.reshape(-1, x.shape[-1])
        x_q, w_q = quantize_tiles(x2, rounding), quantize_blocks(weight, rounding)
        if bias is None:  # DeepSeek's linears have none: the GEMM writes the output dtype directly
            y = fp8_gemm(x_q, w_q, out_dtype, backend)
        else:             # bias added to the FP32 accumulator, then one rounding
            y = fp8_gemm(x_q, w_q, torch.float32, backend) + bias.float()
        ctx.save_for_backward(x_q.data, x_q.scale, w_q.data, w_q.scale)
        ctx.backend, ctx.rounding = backend, rounding
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x_data, x_scale, w_data, w_scale = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_t = ScaledFp8(w_data, w_scale, BLOCK).t()               # Wᵀ [K, N]: same blocks
            grad_x = fp8_gemm(quantize_tiles(g, ctx.rounding), w_t, ctx.x_dtype, ctx.backend).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            x_q = ScaledFp8(x_data, x_scale, TILE)
            g_t = quantize_tiles(g.t(), ctx.rounding)                   # dyᵀ [N, M], tiles along tokens
            x_t = quantize_tiles(x_q.dequantize().t(), ctx.rounding)    # xᵀ  [K, M], tiles along tokens
            grad_w = fp8_gemm(g_t, x_t, ctx.w_dtype, ctx.backend)
        if ctx.needs_input_grad[2]:
            grad_b = g.float().sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


class Float8Linear(nn.Linear):
    """Drop-in ``nn.Linear`` whose forward and backward GEMMs run in FP8 (DeepSeek-V3 recipe).

    Same parameters and state_dict keys (``weight``, ``bias``) in the master dtype (FP32), so
    checkpoints, optimisers and code that reads ``.weight`` directly are unaffected.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 gemm: GemmBackend = "auto", scale_rounding: ScaleRounding = "pow2"):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.gemm, self.scale_rounding = gemm, scale_rounding

    @classmethod
    def from_linear(cls, linear: nn.Linear, gemm: GemmBackend = "auto",
                    scale_rounding: ScaleRounding = "pow2") -> Float8Linear:
        """Wrap ``linear``'s own Parameter objects (no copy): an optimiser or DDP built on them
        keeps working. Hooks registered on ``linear`` are not carried over."""
        with torch.device("meta"):
            new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, gemm=gemm,
                      scale_rounding=scale_rounding)
        new.weight = linear.weight
        new.bias = linear.bias
        return new.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.gemm, self.scale_rounding)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8=e4m3, gemm={self.gemm}, scales={self.scale_rounding}"


def keeps_fp8_default(name: str, module: nn.Module) -> bool:
    """Default filter for :func:`convert_to_fp8`: every Linear except the embedding, output heads,
    router (``mlp.gate``), MTP ``eh_proj`` and anything named like a norm (``*norm``)."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf not in HIGH_PRECISION_NAMES and not leaf.endswith("norm")


def convert_to_fp8(module: nn.Module, include: Callable[[str, nn.Module], bool] | None = None,
                   gemm: GemmBackend = "auto", scale_rounding: ScaleRounding = "pow2") -> list[str]:
    """Swap, in place, every ``nn.Linear`` submodule that ``include(name, linear)`` accepts for a
    :class:`Float8Linear` sharing its parameters; returns the converted names, sorted.

    Only exact ``nn.Linear`` instances are converted: subclasses may not route through
    ``forward`` (``nn.MultiheadAttention``'s ``out_proj`` is one), and a swap would silently do
    nothing. A Linear registered under several names is converted once and stays shared.
    Do it before building the optimiser/DDP wrapper or after: parameters are the same objects.
    """
    include = include or keeps_fp8_default
    if type(module) is nn.Linear:
        raise ValueError("convert_to_fp8 swaps submodules in place; wrap a bare nn.Linear in a parent module "
                         "or use Float8Linear.from_linear")
    replacements: dict[int, Float8Linear] = {}
    converted: list[str] = []
    for name, child in list(module.named_modules(remove_duplicate=False)):
        if type(child) is not nn.Linear or not include(name, child):
            continue
        parent_name, _, leaf = name.rpartition(".")
        if id(child) not in replacements:
            replacements[id(child)] = Float8Linear.from_linear(child, gemm, scale_rounding)
        setattr(module.get_submodule(parent_name), leaf, replacements[id(child)])
        converted.append(name)
    return sorted(converted)
