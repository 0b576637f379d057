"""FP8 GEMM ``C = A · Bᵀ`` with FP32 accumulation promoted every 128 elements along K (V3 §3.3.2).

Both operands are row-major with K, the contraction dim, contiguous (the "NT" form, the only
one FP8 tensor cores take). A carries 1x128 tile scales; B carries either 128x128 block
scales (a weight) or 1x128 tile scales (Wgrad, where both operands are activations/gradients
quantised along the token dim). Within one 128-wide K chunk every product shares one A scale
per row and one B scale per column, so each chunk is a row-wise scaled FP8 GEMM; the chunk
results are summed in FP32. That is the V3 recipe: tensor cores accumulate a 128-deep
chunk, then the partial sum is scaled and promoted to an FP32 accumulator.

Backends, chosen explicitly by :func:`resolve_backend`:

``chunked``     CPU default. One ``torch._scaled_mm`` per K chunk with row-wise scales, each
                added into an FP32 accumulator. What this torch (2.13) accepts on CPU, tried
                here and read in aten/src/ATen/native/Blas.cpp:
                - a, b: float8 (e4m3fn or e5m2), a ``[M, k]``, b ``[k, N]``, any strides (it
                  copies them contiguous);
                - row-wise: scale_a float32 ``[M, 1]`` contiguous, scale_b float32 ``[1, N]``
                  with stride(1) == 1 (``[N, 1]``, 1-D, or bf16 scales are rejected);
                - tensor-wise: float32 scalars. Do not use it on CPU: on an AMX-INT8 Xeon
                  (this machine) it goes to oneDNN, measured ~11 s for a 256x1024x1024 GEMM
                  against ~0.04 s row-wise;
                - out_dtype float32/bfloat16/float8 (default: the input fp8 type); bias allowed;
                - no block-wise recipes (``F.scaled_mm`` with BlockWise1x128 raises
                  "Invalid scaling configuration").
                Row-wise on CPU is emulated: operands are dequantised to FP32 and multiplied
                in FP32, so on CPU the FP8 path models FP8 storage and rounding exactly but is
                not faster than BF16 (see bench/fp8.py).
``blockwise``   Hopper (sm90) fast path: one ``torch.nn.functional.scaled_mm`` call with
                ScalingType.BlockWise1x128 for A and BlockWise128x128 (or BlockWise1x128) for
                B; cuBLASLt >= 12.9 applies the per-block scales itself. Layouts required by
                this torch (aten/src/ATen/native/cuda/ScaledBlas.cpp): A scales
                ``[M, K/128]`` with strides ``(1, M)``; 1x128 B scales ``[N, K/128]`` strides
                ``(1, N)``; 128x128 B scales ``[round_up(K/128, 4), N/128]`` strides
                ``(1, round_up(K/128, 4))``. Guarded by a capability check plus a one-time
                probe GEMM compared with ``dequantized`` on first use.
                UNTESTED ON A GPU so far: written against the torch source and its tests.
``dequantized`` Reference and fallback for other accelerators: dequantise both operands to
                FP32 and do one FP32 GEMM. Same numbers as ``chunked`` up to FP32 summation
                order.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F

from model.fp8.quant import BLOCK, QUANT_BLOCK, TILE, ScaledFp8, quantize_blocks, quantize_tiles

log = logging.getLogger(__name__)

GemmBackend = Literal["auto", "chunked", "blockwise", "dequantized"]
GEMM_BACKENDS: tuple[str, ...] = ("auto", "chunked", "blockwise", "dequantized")


def fp8_gemm(a: ScaledFp8, b: ScaledFp8, out_dtype: torch.dtype = torch.float32,
             backend: GemmBackend = "auto") -> torch.Tensor:
    """``a.dequantize() @ b.dequantize().T`` computed in FP8 with FP32 accumulation.

    a: ``[M, K]`` with 1x128 tile scales; b: ``[N, K]`` with 128x128 block or 1x128 tile
    scales. Returns ``[M, N]`` in ``out_dtype``.
    """
    if a.block != TILE:
        raise ValueError(f"operand a must carry 1x128 tile scales, got {a.block}")
    if b.block not in (TILE, BLOCK):
        raise ValueError(f"operand b must carry 1x128 or 128x128 scales, got {b.block}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"contraction dims differ: a {tuple(a.shape)} vs b {tuple(b.shape)} (C = a·bᵀ)")
    backend = resolve_backend(backend, a.data.device)
    # Autocast must not re-cast the FP32 accumulation (backward can run inside autocast too).
    with torch.autocast(a.data.device.type, enabled=False):
        if backend == "chunked":
            return _gemm_chunked(a, b).to(out_dtype)
        if backend == "blockwise":
            return _gemm_blockwise(a, b, out_dtype)
        return (a.dequantize() @ b.dequantize().t()).to(out_dtype)


def resolve_backend(requested: GemmBackend, device: torch.device) -> str:
    """The concrete backend for ``device``: ``auto`` -> blockwise on Hopper when its probe passes,
    chunked on CPU, dequantized elsewhere. An explicit ``blockwise`` that cannot run is an error."""
    if requested not in GEMM_BACKENDS:
        raise ValueError(f"unknown FP8 GEMM backend {requested!r}; choose one of {GEMM_BACKENDS}")
    if requested == "blockwise":
        reason = blockwise_unsupported_reason(device)
        if reason:
            raise RuntimeError(f"FP8 blockwise GEMM unavailable on {device}: {reason}")
    if requested != "auto":
        return requested
    if device.type == "cpu":
        return "chunked"
    if device.type == "cuda":
        reason = blockwise_unsupported_reason(device)
        if reason is None:
            return "blockwise"
        _warn_fallback_once(str(device), reason)
    return "dequantized"


def blockwise_unsupported_reason(device: torch.device) -> str | None:
    """None when the cuBLAS block-wise FP8 GEMM runs on ``device`` and matches the reference."""
    if device.type != "cuda":
        return "not a CUDA device"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _probe_blockwise(index)


@functools.cache
def _probe_blockwise(index: int) -> str | None:
    major, minor = torch.cuda.get_device_capability(index)
    if major != 9:
        return f"needs an sm90 (Hopper) GPU, found sm{major}{minor}"
    cuda = tuple(int(p) for p in (torch.version.cuda or "0.0").split(".")[:2])
    if cuda < (12, 9):
        return f"needs CUDA/cuBLASLt >= 12.9, torch was built with {torch.version.cuda}"
    if not hasattr(F, "ScalingType") or not hasattr(F.ScalingType, "BlockWise1x128"):
        return "this torch has no torch.nn.functional.ScalingType.BlockWise1x128"
    # Check the scale layouts against the reference once, with uneven scales and ragged dims,
    # rather than trusting an untested code path with a training run.
    gen = torch.Generator(device=f"cuda:{index}").manual_seed(0)
    device = torch.device("cuda", index)
    x = torch.randn(200, 640, device=device, generator=gen) * torch.rand(200, 1, device=device, generator=gen)
    w = torch.randn(300, 640, device=device, generator=gen) * torch.rand(300, 1, device=device, generator=gen)
    a, b_block, b_tile = quantize_tiles(x), quantize_blocks(w), quantize_tiles(w)
    try:
        for b in (b_block, b_tile):
            got = _gemm_blockwise(a, b, torch.float32)
            want = a.dequantize() @ b.dequantize().t()
            rel = ((got - want).norm() / want.norm()).item()
            if not rel < 1e-3:
                return f"probe GEMM ({b.block[0]}x{b.block[1]} weights) differs from the reference: rel err {rel:.2e}"
    except (RuntimeError, NotImplementedError, ValueError) as err:
        return f"probe GEMM raised {type(err).__name__}: {str(err).splitlines()[0]}"
    return None


@functools.cache
def _warn_fallback_once(device: str, reason: str) -> None:
    log.warning("FP8 on %s: block-wise GEMM unavailable (%s); using the dequantized FP32 fallback, "
                "which is correct but not faster than BF16", device, reason)


def _per_row_scales(m: ScaledFp8) -> torch.Tensor:
    """``[rows, K/128]``: each row's scale in every K chunk (block scales repeated over 128 rows)."""
    if m.block == TILE:
        return m.scale
    return m.scale.repeat_interleave(QUANT_BLOCK, dim=0)[: m.shape[0]]


def _gemm_chunked(a: ScaledFp8, b: ScaledFp8) -> torch.Tensor:
    M, K = a.shape
    N = b.shape[0]
    # Row j holds chunk j's scales, contiguous, as _scaled_mm's row-wise mode wants them.
    a_scales = a.scale.t().contiguous()             # [K/128, M]
    b_scales = _per_row_scales(b).t().contiguous()  # [K/128, N]
    acc = torch.zeros(M, N, dtype=torch.float32, device=a.data.device)
    for j, k0 in enumerate(range(0, K, QUANT_BLOCK)):
        k1 = min(k0 + QUANT_BLOCK, K)
        acc += torch._scaled_mm(a.data[:, k0:k1], b.data[:, k0:k1].t(),
                                scale_a=a_scales[j].unsqueeze(1), scale_b=b_scales[j].unsqueeze(0),
                                out_dtype=torch.float32)
    return acc


def _pad_rows_and_k(m: ScaledFp8) -> ScaledFp8:
    """Zero-pad data to multiples of 128 in both dims (tile scales get matching rows of 1s), so
    cuBLAS sees aligned leading dims; zero rows/columns add nothing to the product."""
    rows, cols = m.shape
    pad_r, pad_c = -rows % QUANT_BLOCK, -cols % QUANT_BLOCK
    if not (pad_r or pad_c):
        return m
    data = F.pad(m.data.view(torch.uint8), (0, pad_c, 0, pad_r)).view(m.data.dtype)  # e4m3 0 == byte 0
    scale = F.pad(m.scale, (0, 0, 0, pad_r), value=1.0) if m.block == TILE else m.scale
    return ScaledFp8(data, scale, m.block)


def _gemm_blockwise(a: ScaledFp8, b: ScaledFp8, out_dtype: torch.dtype) -> torch.Tensor:
    M, N = a.shape[0], b.shape[0]
    a, b = _pad_rows_and_k(a), _pad_rows_and_k(b)
    outer_major = lambda s: s.t().contiguous().t()  # noqa: E731  [rows, K/128] with strides (1, rows)
    if b.block == BLOCK:
        k_blocks = b.scale.shape[1]
        padded = F.pad(b.scale, (0, 4 * math.ceil(k_blocks / 4) - k_blocks))  # cuBLAS: K blocks padded to 4
        scale_b, recipe_b = padded.t(), F.ScalingType.BlockWise128x128
    else:
        scale_b, recipe_b = outer_major(b.scale), F.ScalingType.BlockWise1x128
    out = F.scaled_mm(a.data, b.data.t(), outer_major(a.scale), F.ScalingType.BlockWise1x128,
                      scale_b, recipe_b, swizzle_a=F.SwizzleType.NO_SWIZZLE, swizzle_b=F.SwizzleType.NO_SWIZZLE,
                      output_dtype=out_dtype)
    return out[:M, :N]
