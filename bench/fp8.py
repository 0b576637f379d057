"""FP8 (DeepSeek-V3 recipe, model/fp8) against BF16, measured in one run.

    python bench/fp8.py                 # CPU always; CUDA too when a GPU is present
    python bench/fp8.py --quick         # smaller shapes, fewer repeats

Prints one JSON object:
- ``cpu.gemm``: per shape (M tokens, K in, N out), the median time of a BF16 GEMM, an FP32 GEMM,
  the FP8 GEMM on pre-quantised operands with each CPU backend (``chunked``: one
  ``torch._scaled_mm`` per 128-wide K chunk, the default; ``dequantized``: dequantise and one FP32
  GEMM), the quantisation of x (1x128 tiles) and W (128x128 blocks), and the ratios to BF16.
- ``cpu.linear_fwd_bwd``: one training step's Linear work (forward, Dgrad, Wgrad), Float8Linear
  vs nn.Linear under BF16 autocast.
- ``wgrad_requantisation``: accuracy, not speed. Wgrad re-quantises Fprop's cached 1x128 tiles of
  x as 128x1 tiles; per scale rounding (``exact`` amax/448, ``pow2`` DeepSeek's power-of-two), the
  relative error of xᵀ and of dW with xᵀ quantised once vs through that dequantise/re-quantise
  path, and how many elements the second quantisation changed (512x512 N(0,1), seeded).
- ``cuda``: the same on the GPU with the backend ``auto`` picks (block-wise ``scaled_mm`` on
  Hopper), or null without a GPU.

On CPU FP8 is expected to be slower than BF16: torch's CPU ``_scaled_mm`` dequantises to FP32 and
runs an FP32 GEMM, while BF16 GEMMs use AMX/AVX-512-BF16. The CPU path exists to run and test
the recipe, not to be fast. Other processes on a shared machine add noise: ``load_avg`` is
printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.fp8 import Float8Linear, fp8_gemm, quantize_blocks, quantize_tiles, resolve_backend  # noqa: E402
from model.fp8.gemm import blockwise_unsupported_reason  # noqa: E402

CPU_SHAPES = [(256, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (1000, 1000, 700)]
CPU_SHAPES_QUICK = [(256, 512, 512), (1024, 1024, 1024)]
CUDA_SHAPES = [(4096, 4096, 4096), (8192, 7168, 2048), (16384, 2048, 7168)]


def _median_ms(fn: Callable[[], object], reps: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return round(1e3 * statistics.median(times), 3)


def bench_gemm(M: int, K: int, N: int, device: torch.device, reps: int, backends: list[str]) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(M, K, device=device)
    w = torch.randn(N, K, device=device) / K**0.5
    xb, wb = x.bfloat16(), w.bfloat16()
    qx, qw = quantize_tiles(x), quantize_blocks(w)
    row = {"M": M, "K": K, "N": N,
           "bf16_ms": _median_ms(lambda: xb @ wb.t(), reps, sync),
           "fp32_ms": _median_ms(lambda: x @ w.t(), reps, sync),
           "quantize_x_tiles_ms": _median_ms(lambda: quantize_tiles(xb), reps, sync),
           "quantize_w_blocks_ms": _median_ms(lambda: quantize_blocks(w), reps, sync)}
    quant_ms = row["quantize_x_tiles_ms"] + row["quantize_w_blocks_ms"]
    for backend in backends:
        gemm_ms = _median_ms(lambda b=backend: fp8_gemm(qx, qw, torch.bfloat16, b), reps, sync)
        row[f"fp8_{backend}_gemm_ms"] = gemm_ms
        row[f"fp8_{backend}_gemm_over_bf16"] = round(gemm_ms / row["bf16_ms"], 2)
        row[f"fp8_{backend}_with_quant_over_bf16"] = round((gemm_ms + quant_ms) / row["bf16_ms"], 2)
        row[f"fp8_{backend}_quant_share"] = round(quant_ms / (gemm_ms + quant_ms), 3)
    row["bf16_tflops"] = round(2 * M * K * N / row["bf16_ms"] / 1e9, 3)
    print(f"  gemm {M}x{K}x{N} done", file=sys.stderr, flush=True)
    return row


def bench_linear_step(tokens: int, d_in: int, d_out: int, device: torch.device, reps: int) -> dict:
    """Forward + backward (Dgrad and Wgrad) of one Linear: nn.Linear under BF16 autocast vs
    Float8Linear (same weights, same autocast)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    ref = nn.Linear(d_in, d_out, bias=False, device=device)
    fp8 = Float8Linear(d_in, d_out, bias=False, device=device)
    fp8.load_state_dict(ref.state_dict())
    x = torch.randn(tokens, d_in, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(tokens, d_out, device=device, dtype=torch.bfloat16)

    def step(module):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                y = module(x)
            y.backward(grad)
            x.grad = module.weight.grad = None
        return run

    bf16_ms, fp8_ms = _median_ms(step(ref), reps, sync), _median_ms(step(fp8), reps, sync)
    return {"tokens": tokens, "in": d_in, "out": d_out, "bf16_autocast_ms": bf16_ms, "fp8_ms": fp8_ms,
            "fp8_over_bf16": round(fp8_ms / bf16_ms, 2), "fp8_speedup": round(bf16_ms / fp8_ms, 2),
            "fp8_backend": resolve_backend("auto", device)}


def wgrad_requantisation(n: int = 512) -> dict:
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(n, n, generator=gen, dtype=torch.float64), torch.randn(n, n, generator=gen, dtype=torch.float64)
    ref = g.t() @ x

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    out = {}
    for rounding in ("exact", "pow2"):
        once_tokens = quantize_tiles(x.float(), rounding).dequantize(torch.float64)        # Fprop's 1x128 tiles
        direct = quantize_tiles(x.t().float(), rounding).dequantize(torch.float64)         # xᵀ quantised once
        twice = quantize_tiles(once_tokens.t().float(), rounding).dequantize(torch.float64)  # the Wgrad path
        gq = quantize_tiles(g.t().float(), rounding).dequantize(torch.float64)
        out[rounding] = {"x_err_once": rel(direct, x.t()), "x_err_requantised": rel(twice, x.t()),
                         "wgrad_err_once": rel(gq @ direct.t(), ref), "wgrad_err_requantised": rel(gq @ twice.t(), ref),
                         "elements_changed_by_requantisation": int((twice != once_tokens.t()).sum())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller CPU shapes and fewer repeats")
    p.add_argument("--reps", type=int, default=None, help="timed repeats per measurement (median reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a shared machine 1 avoids OpenMP spin-wait noise")
    p.add_argument("--no-cuda", action="store_true", help="skip the GPU section even if a GPU is present")
    args = p.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict = {
        "torch": torch.__version__,
        "cpu": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                "load_avg_before": [round(v, 2) for v in os.getloadavg()]},
        "reps": reps,
    }
    cpu = torch.device("cpu")
    report["wgrad_requantisation"] = wgrad_requantisation()
    print("CPU GEMMs...", file=sys.stderr, flush=True)
    report["cpu"]["gemm"] = [bench_gemm(*shape, cpu, reps, ["chunked", "dequantized"])
                             for shape in (CPU_SHAPES_QUICK if args.quick else CPU_SHAPES)]
    print("CPU Linear fwd+bwd...", file=sys.stderr, flush=True)
    report["cpu"]["linear_fwd_bwd"] = bench_linear_step(1024, 1024, 1024, cpu, reps)
    report["cpu"]["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]

    report["cuda"] = None
    if torch.cuda.is_available() and not args.no_cuda:
        gpu = torch.device("cuda")
        print("CUDA...", file=sys.stderr, flush=True)
        reason = blockwise_unsupported_reason(gpu)
        report["cuda"] = {
            "device": torch.cuda.get_device_name(gpu),
            "capability": list(torch.cuda.get_device_capability(gpu)),
            "torch_cuda": torch.version.cuda,
            "backend": resolve_backend("auto", gpu),
            "blockwise_unavailable_reason": reason,
            "gemm": [bench_gemm(*shape, gpu, max(reps, 20), [resolve_backend("auto", gpu)]) for shape in CUDA_SHAPES],
            "linear_fwd_bwd": [bench_linear_step(8192, 4096, 4096, gpu, max(reps, 20)),
                               bench_linear_step(8192, 7168, 2048, gpu, max(reps, 20))],
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
