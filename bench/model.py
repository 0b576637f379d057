"""Model benchmark, printed as JSON; every ratio is against a baseline measured in the same run.

    python bench/model.py [--batch 8 --seq 256 --steps 5 --threads N]

- ``train``: forward+backward tokens/s of the ``tiny`` preset (labels on, so MTP runs) in FP32
  and under bfloat16 autocast, and its model FLOPs utilisation against the bfloat16 matmul peak
  measured here (``peak``); FLOPs per token come from ``model.info`` (main model + MTP).
- ``dispatch``: one MoE layer with 64 routed experts, top-6, forward+backward: the sorted
  dispatch (only selected experts run) against the dense baseline (every expert on every token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import DeepSeekV3, ModelConfig  # noqa: E402
from model.dispatch import DenseDispatcher, LocalSortedDispatcher  # noqa: E402
from model.info import model_info  # noqa: E402
from model.moe import MoE  # noqa: E402


def timed(fn, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def matmul_peak(dtype: torch.dtype) -> dict:
    """Best FLOP/s of square matmuls in ``dtype`` (the hardware peak this machine reaches)."""
    best = {"flops_per_s": 0.0}
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        s = timed(lambda a=a, b=b: a @ b, warmup=2, iters=5)
        if 2 * n**3 / s > best["flops_per_s"]:
            best = {"flops_per_s": 2 * n**3 / s, "n": n}
    return best


def train_throughput(batch: int, seq: int, steps: int, autocast: bool) -> dict:
    torch.manual_seed(0)
    config = ModelConfig.load("tiny")
    model = DeepSeekV3(config).train()
    ids = torch.randint(0, config.vocab_size, (batch, seq))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(ids, ids)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    s = timed(step, warmup=2, iters=steps)
    info = model_info(config, seq_len=seq)
    flops_per_token = info.train_flops_per_token + info.mtp_train_flops_per_token
    return {"tokens_per_s": batch * seq / s, "step_s": s, "flops_per_token": flops_per_token,
            "model_flops_per_s": batch * seq * flops_per_token / s}


def dispatch_ratio(tokens: int, hidden: int, expert_dim: int) -> dict:
    torch.manual_seed(0)
    config = ModelConfig.load("tiny", hidden_size=hidden, moe_intermediate_size=expert_dim, n_routed_experts=64,
                              num_experts_per_tok=6, n_group=8, topk_group=4, n_shared_experts=0,
                              seq_aux_loss_alpha=0.0)
    moe = MoE(config).train()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(1, tokens, hidden, requires_grad=True)

    def run():
        y, _ = moe(x)
        y.sum().backward()

    result = {"experts": 64, "top_k": 6, "tokens": tokens, "hidden": hidden, "expert_dim": expert_dim}
    for name, dispatcher in [("sorted", LocalSortedDispatcher()), ("dense", DenseDispatcher())]:
        moe.dispatcher = dispatcher
        result[f"{name}_s"] = timed(run, warmup=1, iters=5)
    result["speedup_sorted_vs_dense"] = result["dense_s"] / result["sorted_s"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dispatch-tokens", type=int, default=4096)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    print("measuring matmul peaks...", file=sys.stderr)
    peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    print("training throughput (fp32, bf16 autocast)...", file=sys.stderr)
    fp32 = train_throughput(args.batch, args.seq, args.steps, autocast=False)
    bf16 = train_throughput(args.batch, args.seq, args.steps, autocast=True)
    for r in (fp32, bf16):
        r["mfu_vs_bf16_matmul_peak"] = r["model_flops_per_s"] / peak_bf16["flops_per_s"]
    fp32["mfu_vs_fp32_matmul_peak"] = fp32["model_flops_per_s"] / peak_fp32["flops_per_s"]
    print("MoE dispatch: sorted vs dense...", file=sys.stderr)
    dispatch = dispatch_ratio(args.dispatch_tokens, hidden=256, expert_dim=128)

    print(json.dumps({
        "device": "cpu", "threads": args.threads, "torch": torch.__version__,
        "load_average_1m": os.getloadavg()[0],   # other processes on the machine skew CPU timings
        "peak": {"bf16_matmul_flops_per_s": peak_bf16["flops_per_s"],
                 "fp32_matmul_flops_per_s": peak_fp32["flops_per_s"]},
        "train": {"preset": "tiny", "batch": args.batch, "seq": args.seq, "fp32": fp32, "bf16_autocast": bf16},
        "dispatch": dispatch,
    }, indent=2))


if __name__ == "__main__":
    main()
