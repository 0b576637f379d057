"""The first thing to run when a GPU is lent: every CUDA path of Whale once, in one command.

    bench/gpu_check.sh            # = python bench/gpu_check.py --out bench/results/gpu_check.json

Budget: under 8 minutes on one Hopper GPU. Each check runs in turn, is timed, and records what it
measured and whether it passed; the JSON goes to ``--out`` even when a check fails, and the exit
status is 1 then. On a machine without CUDA it fails at once (exit 2) with a message saying so:
a CPU-only run must never look like a passed GPU check.

Checks:
- ``fp8_gemm``: the Hopper block-wise FP8 GEMM (cuBLASLt ``scaled_mm``, 1x128 x 128x128 and
  1x128 x 1x128 scales) on the same quantised operands as the CPU emulation (K-chunked
  ``torch._scaled_mm``, FP32 promotion every 128): relative error <= 1e-3 between them, and each
  within the quantisation error of the FP32 product. Also which backend ``auto`` picks here.
- ``compile``: ``torch.compile`` of one decoder block (MLA + MoE) on CUDA against eager:
  forward and gradients equal within BF16 tolerance; compile seconds and the step speedup.
- ``trainer``: the trainer's step (``TrainStep``) on CUDA on the ``tiny`` model: the first loss
  equals the CPU FP32 loss of the same weights and batch, and 8 steps on one batch lower it.
- ``engine``: the generation engine on CUDA (FP32, MTP speculative decoding on) gives the
  same greedy tokens as on CPU (at least 3 of 4 completions identical: near-tied logits of a
  random-init model may flip on summation order).
- ``small_mfu``: the ``small`` preset's training step in BF16 and FP8 (selective activation
  checkpointing): MFU against the datasheet BF16 peak; goals MFU >= 0.40 (BF16) and FP8 step
  >= 1.3x faster. Goals are reported (``goals_met``), not failures: the check fails only on
  errors or non-finite losses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NO_CUDA_EXIT = 2


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        why = ("this torch was built without CUDA" if torch.version.cuda is None
               else "torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?)")
        print(f"GPU CHECK FAILED: no CUDA device: {why} (torch {torch.__version__}). bench/gpu_check checks "
              f"the GPU paths and has nothing to check on a CPU-only machine.", file=sys.stderr)
        raise SystemExit(NO_CUDA_EXIT)
    return torch.device("cuda", 0)


# -- checks ----------------------------------------------------------------------------------------
def check_fp8_gemm(device: torch.device) -> dict:
    from model.fp8 import fp8_gemm, quantize_blocks, quantize_tiles, resolve_backend
    from model.fp8.gemm import blockwise_unsupported_reason
    from model.fp8.quant import ScaledFp8

    out: dict = {"auto_backend": resolve_backend("auto", device),
                 "blockwise_unsupported_reason": blockwise_unsupported_reason(device)}
    g = torch.Generator().manual_seed(0)
    # ragged M/N, K a multiple of 128 plus uneven per-row magnitudes (scales differ per tile)
    x = torch.randn(333, 1024, generator=g) * torch.rand(333, 1, generator=g) * 4
    w = torch.randn(517, 1024, generator=g) * torch.rand(517, 1, generator=g)
    ok = True
    for b_kind in ("block", "tile"):
        a = quantize_tiles(x.to(device))
        b = quantize_blocks(w.to(device)) if b_kind == "block" else quantize_tiles(w.to(device))
        a_cpu = ScaledFp8(a.data.cpu(), a.scale.cpu(), a.block)
        b_cpu = ScaledFp8(b.data.cpu(), b.scale.cpu(), b.block)
        reference = fp8_gemm(a_cpu, b_cpu, backend="chunked")                       # the CPU emulation
        exact = x @ w.t()
        row = {}
        for backend in ("blockwise", "dequantized"):
            try:
                got = fp8_gemm(a, b, backend=backend).cpu()
            except RuntimeError as e:
                row[backend] = {"error": str(e)[:300]}
                ok = ok and backend != "blockwise"   # blockwise must run on Hopper (sm90)
                continue
            rel = float((got - reference).norm() / reference.norm())
            row[backend] = {"rel_err_vs_cpu_emulation": rel,
                            "rel_err_vs_fp32": float((got - exact).norm() / exact.norm())}
            ok = ok and rel <= 1e-3
        row["cpu_emulation_rel_err_vs_fp32"] = float((reference - exact).norm() / exact.norm())
        out[f"b_{b_kind}"] = row
    if torch.cuda.get_device_capability(device)[0] != 9:
        out["note"] = "not a Hopper GPU: the blockwise path is expected to be unavailable"
        ok = ok or out["blockwise_unsupported_reason"] is not None
    out["ok"] = ok
    return out


def check_compile(device: torch.device) -> dict:
    from model import ModelConfig
    from model.attention import AttentionContext
    from model.block import DecoderLayer
    from model.rope import RotaryEmbedding

    config = ModelConfig.load("small", num_hidden_layers=2)
    torch.manual_seed(0)
    block = DecoderLayer(config, 1).to(device)
    twin = DecoderLayer(config, 1).to(device)
    twin.load_state_dict(block.state_dict())
    compiled = torch.compile(twin)
    rotary = RotaryEmbedding(config).to(device)
    B, T = 2, 1024
    ctx = AttentionContext.for_sequence(rotary, torch.arange(T, device=device).expand(B, T))
    x = torch.randn(B, T, config.hidden_size, device=device)

    def run(module):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _ = module(xi, ctx)
        y.float().square().mean().backward()
        return y.float(), xi.grad

    t = time.perf_counter()
    y_c, g_c = run(compiled)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t
    y_e, g_e = run(block)
    times = {}
    for name, module in (("eager", block), ("compiled", compiled)):
        run(module)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            run(module)
        torch.cuda.synchronize()
        times[name] = (time.perf_counter() - t) / 5
    fwd_rel = float((y_c - y_e).norm() / y_e.norm())
    grad_rel = float((g_c - g_e).norm() / g_e.norm())
    return {"compile_s": compile_s, "eager_step_s": times["eager"], "compiled_step_s": times["compiled"],
            "speedup": times["eager"] / times["compiled"], "fwd_rel_err": fwd_rel, "grad_rel_err": grad_rel,
            "ok": fwd_rel < 2e-2 and grad_rel < 5e-2}


def check_trainer(device: torch.device) -> dict:
    from model import DeepSeekV3, ModelConfig
    from model.parallel import ParallelGroups
    from stages.common.training.step import TrainStep, build_optimizer

    config = ModelConfig.load("tiny", initializer_range=0.02)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (8, 256), generator=g)
    batch = {"input_ids": ids, "labels": ids}
    losses = {}
    for dev, precision in ((torch.device("cpu"), "fp32"), (device, "fp32"), (device, "bf16")):
        torch.manual_seed(0)
        model = DeepSeekV3(config).to(dev).train()
        step = TrainStep(model, build_optimizer(model, 3e-3, (0.9, 0.95), 0.1), ParallelGroups.single(),
                         precision=precision, device=dev)
        steps = 8 if dev.type == "cuda" else 1
        losses[f"{dev.type}_{precision}"] = [step([batch], 3e-3, 0.3).lm_loss for _ in range(steps)]
    first_diff = abs(losses["cuda_fp32"][0] - losses["cpu_fp32"][0])
    curve = losses["cuda_bf16"]
    return {"losses": losses, "first_loss_abs_diff_cuda_vs_cpu": first_diff,
            "ok": first_diff < 1e-3 and all(map(_finite, curve)) and curve[-1] < curve[0] - 0.1}


def check_engine(device: torch.device) -> dict:
    from model import DeepSeekV3, ModelConfig
    from model.engine import Engine, EngineConfig, GenerationParams

    config = ModelConfig.load("tiny", initializer_range=0.05)
    torch.manual_seed(0)
    model = DeepSeekV3(config).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, config.vocab_size, (n,), generator=g).tolist() for n in (5, 17, 40, 3)]
    params = GenerationParams(max_tokens=24, ignore_eos=True)
    engine_cfg = EngineConfig(num_slots=4, max_seq_len=128, use_mtp=True)
    cpu = [c.token_ids for c in Engine(model, engine_cfg).generate(prompts, params)]
    t = time.perf_counter()
    gpu_out = Engine(model.to(device), engine_cfg).generate(prompts, params)
    seconds = time.perf_counter() - t
    gpu = [c.token_ids for c in gpu_out]
    same = sum(a == b for a, b in zip(cpu, gpu, strict=True))
    # FP32 on both sides; a random-init model can have near-tied logits, where summation order
    # alone flips a greedy choice: allow one of four completions to diverge, never a short one
    return {"prompts": len(prompts), "identical_completions": same, "gpu_seconds": seconds,
            "drafted": sum(c.drafted for c in gpu_out), "accepted": sum(c.accepted for c in gpu_out),
            "ok": same >= len(prompts) - 1 and all(len(t) == params.max_tokens for t in gpu)}


def check_small_mfu(device: torch.device, batch: int, seq: int, steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from pretrain import step_throughput  # bench/pretrain.py: the trainer's step, median time

    from model import ModelConfig
    from stages.common.training.perf import gpu_peak, measure_matmul_peak

    name = torch.cuda.get_device_name(device)
    sheet, measured = gpu_peak(name), measure_matmul_peak(device, sizes=(4096, 8192))
    small = ModelConfig.load("small")
    bf16 = step_throughput(small, "bf16", batch, seq, steps, device, sheet or measured, "selective")
    fp8 = step_throughput(small, "fp8", batch, seq, steps, device, sheet or measured, "selective")
    speedup = bf16["step_s"] / fp8["step_s"]
    goals = {"mfu_bf16": 0.40, "fp8_speedup": 1.3}
    return {"gpu": name, "peak_bf16_datasheet": sheet, "peak_bf16_matmul_measured": measured, "batch": batch,
            "seq": seq, "bf16": bf16, "fp8": fp8, "fp8_speedup": speedup, "goals": goals,
            "goals_met": {"mfu_bf16": bf16["mfu"] >= goals["mfu_bf16"], "fp8_speedup": speedup >= goals["fp8_speedup"]},
            "ok": all(map(_finite, (bf16["step_s"], fp8["step_s"])))}


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


# -- driver ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    p.add_argument("--small-batch", type=int, default=4)
    p.add_argument("--small-seq", type=int, default=2048)
    p.add_argument("--small-steps", type=int, default=8)
    p.add_argument("--only", nargs="+", help="run only these checks")
    args = p.parse_args(argv)
    device = require_cuda()
    checks = {"fp8_gemm": lambda: check_fp8_gemm(device), "compile": lambda: check_compile(device),
              "trainer": lambda: check_trainer(device), "engine": lambda: check_engine(device),
              "small_mfu": lambda: check_small_mfu(device, args.small_batch, args.small_seq, args.small_steps)}
    result: dict = {"gpu": torch.cuda.get_device_name(device), "capability": list(torch.cuda.get_device_capability()),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "host_load_1m": os.getloadavg()[0],
                    "checks": {}}
    t_all = time.perf_counter()
    for name, fn in checks.items():
        if args.only and name not in args.only:
            continue
        print(f"[gpu_check] {name}...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            row = fn()
        except Exception as e:   # record and go on: one broken path must not hide the others
            row = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        row["seconds"] = round(time.perf_counter() - t, 2)
        result["checks"][name] = row
        print(f"[gpu_check] {name}: {'ok' if row['ok'] else 'FAILED'} ({row['seconds']} s)", file=sys.stderr,
              flush=True)
        torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    result["ok"] = all(c["ok"] for c in result["checks"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "checks"} |
                     {"failed": [n for n, c in result["checks"].items() if not c["ok"]]}, indent=2))
    print(f"[gpu_check] wrote {args.out}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
