"""The trainer's precision switch, ``precision: bf16 | fp8`` (plus ``fp32`` for reference runs).

``fp32``  No autocast: everything in FP32. For debugging and as a numerical reference.
``bf16``  FP32 master weights (the optimiser updates FP32); forward and backward run under
          ``torch.autocast(dtype=torch.bfloat16)``, so matmuls take BF16 inputs and produce BF16
          while parameters, gradients and optimiser state stay FP32.
``fp8``   ``bf16`` plus the DeepSeek-V3 FP8 recipe on the Linear layers that
          :func:`~model.fp8.linear.convert_to_fp8` selects: their Fprop, Dgrad and Wgrad GEMMs
          run in E4M3 with 1x128 / 128x128 scales and FP32 accumulation. Embedding, output head,
          router, norms, MTP ``eh_proj`` and the attention core stay BF16/FP32 (autocast).

A trainer uses it like this::

    converted = prepare_model(model, cfg.precision)      # once, before optimiser/DDP/FSDP
    with precision_autocast(cfg.precision, device.type):
        loss = compute_loss(model, batch)
    loss.backward()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from model.fp8.gemm import GemmBackend
from model.fp8.linear import convert_to_fp8
from model.fp8.quant import ScaleRounding

Precision = Literal["fp32", "bf16", "fp8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp8")


def check_precision(precision: str) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    return precision  # type: ignore[return-value]


def prepare_model(model: nn.Module, precision: str, include: Callable[[str, nn.Module], bool] | None = None,
                  gemm: GemmBackend = "auto", scale_rounding: ScaleRounding = "pow2") -> list[str]:
    """Check that master weights are FP32 and, for ``fp8``, convert the selected Linears in place
    (``scale_rounding``: ``pow2``, DeepSeek's power-of-two scales, or ``exact`` amax/448).
    Returns the names of the converted modules (empty for fp32/bf16)."""
    precision = check_precision(precision)
    not_fp32 = [n for n, p in model.named_parameters() if p.is_floating_point() and p.dtype != torch.float32]
    if not_fp32:
        raise ValueError(f"master weights must be FP32 for precision={precision!r}; {len(not_fp32)} parameters "
                         f"are not (first: {not_fp32[:3]}). Build the model in FP32; autocast handles BF16.")
    if precision == "fp8":
        return convert_to_fp8(model, include, gemm, scale_rounding)
    return []


def precision_autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast context for the forward pass (and loss) under ``precision``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)
