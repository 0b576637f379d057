"""DeepSeek-V3 FP8 training (V3 report §3.3), runnable on CPU and fast on Hopper.

- :mod:`model.fp8.quant`: E4M3 with online max-abs scales, 1x128 tiles / 128x128 blocks.
- :mod:`model.fp8.gemm`: ``C = A·Bᵀ`` in FP8 with FP32 promotion every 128 along K
  (CPU: K-chunked ``torch._scaled_mm``; Hopper: cuBLAS block-wise ``scaled_mm``).
- :mod:`model.fp8.linear`: the autograd Function (Fprop/Dgrad/Wgrad in FP8),
  ``Float8Linear`` and ``convert_to_fp8``.
- :mod:`model.fp8.precision`: the trainer's ``precision: fp32 | bf16 | fp8`` switch.
"""

from model.fp8.gemm import GEMM_BACKENDS, GemmBackend, blockwise_unsupported_reason, fp8_gemm, resolve_backend
from model.fp8.linear import HIGH_PRECISION_NAMES, Float8Linear, convert_to_fp8, fp8_linear, keeps_fp8_default
from model.fp8.precision import PRECISIONS, Precision, check_precision, precision_autocast, prepare_model
from model.fp8.quant import (
    BLOCK,
    E4M3,
    E4M3_MAX,
    SCALE_ROUNDINGS,
    TILE,
    ScaledFp8,
    ScaleRounding,
    quantization_error_bound,
    quantize,
    quantize_blocks,
    quantize_tiles,
)

__all__ = [
    "BLOCK", "E4M3", "E4M3_MAX", "GEMM_BACKENDS", "HIGH_PRECISION_NAMES", "PRECISIONS", "SCALE_ROUNDINGS", "TILE",
    "Float8Linear", "GemmBackend", "Precision", "ScaledFp8", "ScaleRounding",
    "blockwise_unsupported_reason", "check_precision", "convert_to_fp8", "fp8_gemm", "fp8_linear",
    "keeps_fp8_default", "precision_autocast", "prepare_model", "quantization_error_bound", "quantize",
    "quantize_blocks", "quantize_tiles", "resolve_backend",
]
