"""Pretraining benchmark, printed as JSON; every ratio is against a baseline measured in the same run.

    python bench/pretrain.py [--batch 8 --seq 256 --steps 6 --threads 1] [--precisions auto bf16]
                             [--no-ray] [--no-fp8] [--gpu-batch 4 --gpu-seq 2048] [--out bench/results/x.json]

- ``peak``: the BF16 and FP32 matmul peaks of this machine at ``--threads`` (measured now: the MFU
  denominators; ``auto`` precision is FP32 on a CPU without native BF16, see
  ``stages.common.training.perf.resolve_precision``).
- ``vs_transformers``: per precision, the same training step (forward + backward + clip + AdamW,
  batch x seq, one process) of transformers' ``DeepseekV3ForCausalLM`` loaded from Whale's exported
  checkpoint, against Whale's trainer step (``TrainStep``) with MTP off (λ = 0, the module is
  skipped), with MTP on, with MTP on half of the sequences (``mtp_weight.batch_fraction: 0.5``), and
  with MTP on but the head unfused (full logits, the pre-#22 path).
  Rounds interleave the variants (so load changes hit all of them), median per variant of the
  process CPU time (one thread: robust to other jobs on a shared machine; wall time is reported too);
  ``whale_vs_hf`` = HF step / Whale step (MTP off; goal >= 1.5), ``mtp_on_vs_off`` = step time
  ratio (goal <= 1.3). The first step's loss of HF and Whale (MTP off) must agree (same weights).
- ``tiny``: one optimizer step of the trainer (``TrainStep``: forward + backward over the global
  batch, gradient reduction, clipping, AdamW, router-bias update) on the ``tiny`` model in the
  ``auto`` precision and in FP8 (unless ``--no-fp8``), in this process: median step time, tokens/s,
  MFU; ``fp8_vs_<auto>_step_time`` = FP8 / auto.
  (On CPU FP8 is slower: ``torch._scaled_mm`` in 128-wide K chunks plus quantisation, no FP8 units.)
  One thread by default: on a shared 2-core machine, two OpenMP threads spin-wait whenever another
  process runs and a step becomes 10-20x slower, so two-thread timings there measure the neighbours.
- ``ray`` (unless ``--no-ray``): the same model through Ray Train's ``fit`` (the pretrain stage's
  path) with 1 worker x all cores and with 2 workers (EP=2, DP=2) x 1 core; tokens/s and MFU from the
  trainer's own summary (median step, against the peak its workers measured at start).
- ``gpu_small`` (only when CUDA is present): the ``small`` preset on one GPU, BF16 and FP8, MFU
  against the datasheet BF16 peak (and the matmul peak measured here); goals: MFU >= 40 % and FP8
  >= 1.3x faster than BF16 on an H100 (``bench/gpu_check.sh`` runs the same measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import DeepSeekV3, ModelConfig  # noqa: E402
from model.fp8 import precision_autocast, prepare_model  # noqa: E402
from model.parallel import ParallelGroups  # noqa: E402
from stages.common.training.perf import (  # noqa: E402
    gpu_peak,
    measure_matmul_peak,
    resolve_precision,
    train_flops_per_token,
)
from stages.common.training.step import TrainStep, build_optimizer  # noqa: E402


def random_batch(batch: int, seq: int, vocab: int, device, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}


def step_throughput(config: ModelConfig, precision: str, batch: int, seq: int, steps: int, device: torch.device,
                    peak: float, activation_checkpointing: str = "none") -> dict:
    torch.manual_seed(0)
    model = DeepSeekV3(config.model_copy(update={"activation_checkpointing": activation_checkpointing}))
    model = model.to(device).train()
    fp8_modules = prepare_model(model, precision)
    step = TrainStep(model, build_optimizer(model, 1e-3, (0.9, 0.95), 0.1), ParallelGroups.single(),
                     precision=precision, device=device)
    times = []
    for i in range(steps + 2):          # 2 warm-up steps
        b = random_batch(batch, seq, config.vocab_size, device, i)
        _sync(device)
        t = time.perf_counter()
        step([b], 1e-3, 0.3)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    s = statistics.median(times)
    flops = train_flops_per_token(config, seq)
    out = {"precision": precision, "step_s": s, "tokens_per_s": batch * seq / s, "flops_per_token": flops,
           "mfu": batch * seq * flops / s / peak, "fp8_linears": len(fp8_modules)}
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out


def vs_transformers(config: ModelConfig, precision: str, batch: int, seq: int, rounds: int, peak: float) -> dict:
    """Median step seconds of HF's DeepseekV3ForCausalLM and of Whale's trainer step (MTP off, on,
    on with the unfused head), interleaved round by round, from the same initial weights."""
    from transformers import AutoModelForCausalLM

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    whale = {}
    for name in ("whale_mtp_off", "whale_mtp_on", "whale_mtp_on_half", "whale_mtp_on_unfused"):
        torch.manual_seed(0)
        model = DeepSeekV3(config.model_copy(update={"initializer_range": 0.02})).train()
        whale[name] = model
    with tempfile.TemporaryDirectory() as d:
        whale["whale_mtp_off"].save_pretrained(d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)

    def hf_step(b):
        with precision_autocast(precision, "cpu"):
            loss = hf(input_ids=b["input_ids"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    steps = {name: TrainStep(m, build_optimizer(m, 1e-3, (0.9, 0.95), 0.1), ParallelGroups.single(),
                             precision=precision, device=cpu, mtp_batch_fraction=0.5 if name.endswith("half") else 1.0)
             for name, m in whale.items()}
    unfused = steps["whale_mtp_on_unfused"]
    unfused.loss_terms = [("none", 0.0, lambda batch, logits, targets: logits.new_zeros(()))]   # keeps logits

    def whale_step(name, b):
        return steps[name]([b], 1e-3, 0.0 if name == "whale_mtp_off" else 0.3).lm_loss

    variants = {"hf": hf_step, **{n: (lambda b, n=n: whale_step(n, b)) for n in whale}}
    times: dict[str, list[float]] = {n: [] for n in variants}
    cpu_times: dict[str, list[float]] = {n: [] for n in variants}
    first_loss = {}
    for r in range(rounds + 1):                 # round 0: warm-up (and the first losses)
        b = random_batch(batch, seq, config.vocab_size, cpu, r)
        for name, fn in variants.items():
            t, c = time.perf_counter(), time.process_time()
            loss = fn(b)
            if r == 0:
                first_loss[name] = loss
            else:
                times[name].append(time.perf_counter() - t)
                cpu_times[name].append(time.process_time() - c)
    flops_off = train_flops_per_token(config.model_copy(update={"num_nextn_predict_layers": 0}), seq)
    flops_on = train_flops_per_token(config, seq)
    # Ratios use the process CPU time (one thread: the step's own compute), which a machine shared
    # with other jobs inflates far less than wall time; both are reported.
    out = {"precision": precision, "batch": batch, "seq": seq, "rounds": rounds, "ratios_from": "cpu_s"}
    for name, ts in times.items():
        s, c = statistics.median(ts), statistics.median(cpu_times[name])
        flops = (flops_off if name in ("hf", "whale_mtp_off")
                 else (flops_off + flops_on) / 2 if name.endswith("half") else flops_on)
        out[name] = {"step_s": s, "cpu_s": c, "tokens_per_cpu_s": batch * seq / c, "tokens_per_s": batch * seq / s,
                     "mfu_cpu_time": batch * seq * flops / c / peak, "first_loss": first_loss[name],
                     "step_s_all": [round(x, 3) for x in ts], "cpu_s_all": [round(x, 3) for x in cpu_times[name]]}
    out["whale_vs_hf"] = out["hf"]["cpu_s"] / out["whale_mtp_off"]["cpu_s"]
    out["mtp_on_vs_off"] = out["whale_mtp_on"]["cpu_s"] / out["whale_mtp_off"]["cpu_s"]
    out["mtp_half_batch_vs_off"] = out["whale_mtp_on_half"]["cpu_s"] / out["whale_mtp_off"]["cpu_s"]
    out["fused_head_speedup_mtp_on"] = out["whale_mtp_on_unfused"]["cpu_s"] / out["whale_mtp_on"]["cpu_s"]
    out["wall_ratios"] = {"whale_vs_hf": out["hf"]["step_s"] / out["whale_mtp_off"]["step_s"],
                          "mtp_on_vs_off": out["whale_mtp_on"]["step_s"] / out["whale_mtp_off"]["step_s"]}
    out["first_loss_abs_diff_hf_vs_whale"] = abs(first_loss["hf"] - first_loss["whale_mtp_off"])
    out["goals"] = {"whale_vs_hf": 1.5, "mtp_on_vs_off": 1.3}
    return out


class RandomTokens:
    """A TrainData recipe of random tokens (throughput does not depend on the text)."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def open(self, rank, world_size, micro_batch_size, seq_len, seed):
        return _RandomSource(self.vocab, micro_batch_size, seq_len, seed * 1000 + rank)


class _RandomSource:
    def __init__(self, vocab, b, t, seed):
        self.vocab, self.b, self.t, self.seed, self.i = vocab, b, t, seed, 0

    def next_batch(self):
        self.i += 1
        return random_batch(self.b, self.t, self.vocab, "cpu", self.seed * 100_000 + self.i)

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def ray_layouts(config: ModelConfig, batch: int, seq: int, steps: int, cores: int) -> dict:
    import ray

    from stages.common.training import TrainerConfig, TrainJob, fit

    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
    out = {}
    try:
        for name, parallel in (("1x", {"cpus_per_worker": cores}), ("ep2", {"ep": 2}), ("dp2", {"dp": 2})):
            cfg = TrainerConfig(steps=steps + 2, batch_size=batch, seq_len=seq, log_every=steps + 2,
                                schedule={"warmup_steps": 1}, parallel=parallel,
                                checkpoint={"every": 10_000}, eval={"every": 10_000})
            job = TrainJob(config=cfg, model_config=config, train_data=RandomTokens(config.vocab_size), label=name)
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                r = fit(job, storage=d, name=name)
            out[name] = {"workers": cfg.parallel.world_size, "tokens_per_s": r.summary["tokens_per_s"],
                         "mfu": r.summary["mfu"], "fit_wall_s": time.perf_counter() - t,
                         "peak_flops": r.peak_flops}
    finally:
        ray.shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process measurements")
    p.add_argument("--vocab", type=int, default=4096, help="the tokenizer stage's default vocabulary")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train fits (1 and 2 workers)")
    p.add_argument("--no-fp8", action="store_true", help="skip the trainer's FP8 step (slow on CPU)")
    p.add_argument("--precisions", nargs="+", default=["auto"],
                   help="precisions of the transformers comparison (auto | fp32 | bf16)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the transformers comparison")
    p.add_argument("--gpu-batch", type=int, default=4)
    p.add_argument("--gpu-seq", type=int, default=2048)
    p.add_argument("--gpu-steps", type=int, default=10)
    p.add_argument("--out", type=Path, help="also write the JSON here (e.g. bench/results/pretrain.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")

    print("measuring the bf16 and fp32 matmul peaks...", file=sys.stderr)
    peaks = {"bf16": measure_matmul_peak(cpu), "fp32": measure_matmul_peak(cpu, torch.float32)}
    auto = resolve_precision("auto", cpu)
    tiny = ModelConfig.load("tiny", vocab_size=args.vocab)
    result: dict = {"device": "cpu", "threads": args.threads, "torch": torch.__version__,
                    "load_average_1m_start": os.getloadavg()[0],   # other processes skew CPU timings
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "auto_precision": auto,
                    "peak": {"bf16_matmul_flops_per_s": peaks["bf16"], "fp32_matmul_flops_per_s": peaks["fp32"]}}
    result["vs_transformers"] = {}
    for prec in dict.fromkeys(resolve_precision(x, cpu) for x in args.precisions):
        print(f"tiny vs transformers ({prec}), {args.rounds} rounds...", file=sys.stderr)
        result["vs_transformers"][prec] = vs_transformers(tiny, prec, args.batch, args.seq, args.rounds,
                                                          peaks["fp32" if prec == "fp32" else "bf16"])
    print("tiny: trainer steps...", file=sys.stderr)
    main_step = step_throughput(tiny, auto, args.batch, args.seq, args.steps, cpu,
                                peaks["fp32" if auto == "fp32" else "bf16"])
    result["tiny"] = {"batch": args.batch, "seq": args.seq, auto: main_step}
    if not args.no_fp8:
        fp8 = step_throughput(tiny, "fp8", args.batch, args.seq, args.steps, cpu, peaks["bf16"])
        result["tiny"]["fp8"] = fp8
        result["tiny"][f"fp8_vs_{auto}_step_time"] = fp8["step_s"] / main_step["step_s"]
    if not args.no_ray:
        print("Ray Train layouts...", file=sys.stderr)
        result["ray"] = ray_layouts(tiny, args.batch, args.seq, args.steps, len(os.sched_getaffinity(0)))
    result["load_average_1m_end"] = os.getloadavg()[0]

    if torch.cuda.is_available():
        gpu = torch.device("cuda", 0)
        name = torch.cuda.get_device_name(gpu)
        print(f"small on {name}: bf16 and fp8 train steps...", file=sys.stderr)
        measured = measure_matmul_peak(gpu, sizes=(4096, 8192))
        sheet = gpu_peak(name)
        denom = sheet or measured
        small = ModelConfig.load("small")
        g_bf16 = step_throughput(small, "bf16", args.gpu_batch, args.gpu_seq, args.gpu_steps, gpu, denom, "selective")
        g_fp8 = step_throughput(small, "fp8", args.gpu_batch, args.gpu_seq, args.gpu_steps, gpu, denom, "selective")
        result["gpu_small"] = {"gpu": name, "peak_bf16_datasheet": sheet, "peak_bf16_matmul_measured": measured,
                               "batch": args.gpu_batch, "seq": args.gpu_seq, "bf16": g_bf16, "fp8": g_fp8,
                               "fp8_speedup": g_bf16["step_s"] / g_fp8["step_s"],
                               "goals": {"mfu_bf16": 0.40, "fp8_speedup": 1.3}}
    else:
        result["gpu_small"] = "skipped: no CUDA device"
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
