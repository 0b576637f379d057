"""Throughput and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / peak FLOP/s, with model FLOPs per token from :func:`model.info.model_info`
(6·N_activated for the matmuls + attention, plus the MTP module) at the training sequence length.
The peak is the BF16 dense matmul peak (FP32 for a CPU run in FP32): a datasheet table for known GPUs;
on CPUs (and unknown GPUs) the best square-matmul rate measured on the spot, with the threads the worker really uses,
on every worker at the same time (so contention between workers counts against the peak).
"""

from __future__ import annotations

import time

import torch

# Dense BF16 tensor-core peaks (FLOP/s), from NVIDIA datasheets (no sparsity). Longest match wins.
GPU_BF16_PEAK = {
    "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "H20": 148e12,
    "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
    "L4": 121e12, "A10G": 70e12, "A10": 125e12,
}


def gpu_peak(name: str) -> float | None:
    matches = [k for k in GPU_BF16_PEAK if k.lower() in name.lower()]
    return GPU_BF16_PEAK[max(matches, key=len)] if matches else None


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.bfloat16,
                        sizes: tuple[int, ...] = (512, 1024, 2048), iters: int = 3) -> float:
    """Best FLOP/s of ``n x n @ n x n`` in ``dtype`` on ``device`` (fastest of ``iters`` runs per size:
    a peak, so a run slowed by a neighbour process must not lower it and push MFU past 100 %)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up (kernel selection, page faults)
        times = []
        for _ in range(iters):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - t)
        fastest = min(times)
        best = max(best, 2 * n**3 / fastest)
        if fastest > 0.25:   # a slow path (BF16 on an AVX2 CPU): the next size would take 8x longer
            break
    return best


def device_peak(device: torch.device, precision: str = "bf16") -> tuple[float, str]:
    """(peak FLOP/s of one worker's device, where the number came from): the BF16 peak, or on a
    CPU training in FP32 the FP32 matmul peak (an AVX2 CPU's BF16 rate would flatter the MFU)."""
    if device.type == "cpu" and precision == "fp32":
        return measure_matmul_peak(device, torch.float32), f"measured:cpu fp32 x{torch.get_num_threads()} threads"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name)
        if peak:
            return peak, f"datasheet:{name}"
        return measure_matmul_peak(device, sizes=(4096, 8192)), f"measured:{name}"
    return measure_matmul_peak(device), f"measured:cpu x{torch.get_num_threads()} threads"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where BF16 matmuls are fast (CUDA, or a CPU whose oneDNN has native
    BF16: AVX512-BF16 / AMX), else ``fp32``. Other values pass through."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def train_flops_per_token(model_config, seq_len: int) -> float:
    from model.info import model_info

    info = model_info(model_config, seq_len=seq_len)
    return info.train_flops_per_token + info.mtp_train_flops_per_token


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
