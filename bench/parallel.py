"""Pipeline parallelism on 2 CPU workers (gloo): step time, tokens/s, peak memory per rank and the
measured pipeline bubble against the schedule's theoretical value, for PP=1 (dp=2, the same two
workers) vs PP=2 with each schedule, and PP=1 dp=2 with ZeRO-3 (FSDP2), on the tiny model.
Prints JSON.

    python bench/parallel.py [--steps 6] [--batch 8] [--seq 128] [--microbatches 4]

Bubble (measured) = 1 - (seconds in this rank's forward/backward actions) / (wall seconds of the
schedule's step); theoretical = (p - 1) / (v·m + p - 1). Peak memory is each process's max RSS
(CPU; includes the ~0.3-0.5 GB of the Python + torch runtime, reported separately as
``rss_start_mb``). Every case runs in fresh processes so peaks do not carry over.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

CASES = [("pp1-dp2", 1, "1f1b", 0), ("pp2-1f1b", 2, "1f1b", 0), ("pp2-interleaved", 2, "interleaved", 0),
         ("pp2-dualpipev", 2, "dualpipev", 0), ("pp1-dp2-zero3", 1, "1f1b", 3)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def _worker(rank: int, world: int, port: int, out: str, pp: int, schedule: str, zero: int, args) -> None:
    import torch.distributed as dist

    from model import DeepSeekV3, ModelConfig
    from model.parallel import GradientReducer, ParallelLayout, init_parallel
    from model.parallel.fsdp import local_tensor
    from model.parallel.pipeline import Pipeline
    from stages.common.training.step import TrainStep, build_optimizer

    torch.set_num_threads(1)
    rss_start = _rss_mb()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    layout = ParallelLayout(pp=pp, dp=world // pp)
    groups = init_parallel(layout)
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.load("tiny", initializer_range=0.02)).train()
    m = args.microbatches
    pipe = Pipeline(model, groups, schedule=schedule, microbatches=m) if pp > 1 else None
    reducer = None
    if zero == 3:   # FSDP2 shards of the dense parameters over the two ranks
        from model.parallel.fsdp import shard_dense_parameters

        shard_dense_parameters(model, groups)
        reducer = GradientReducer(model, groups, dense_sharded=True)
    opt = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1)
    step = TrainStep(model, opt, groups, precision="bf16", pipeline=pipe, reducer=reducer)
    data_ranks = layout.stage_size
    mbs = args.batch // (data_ranks * m)
    g = torch.Generator().manual_seed(layout.data_rank(rank))
    times, bubbles = [], []
    for _ in range(args.steps):
        micro = [{"input_ids": torch.randint(0, model.config.vocab_size, (mbs, args.seq), generator=g)}
                 for _ in range(m)]
        t = time.perf_counter()
        stats = step(micro, lr=1e-3, mtp_weight=0.3)
        times.append(time.perf_counter() - t)
        if pipe is not None:
            bubbles.append(pipe.last_bubble)
    warm = times[2:] or times
    step_s = statistics.median(warm)
    row = {"rank": rank, "step_s": step_s, "tokens_per_s": args.batch * args.seq / step_s,
           "peak_rss_mb": _rss_mb(), "rss_start_mb": rss_start, "loss": stats.loss,
           "params_on_rank": sum(local_tensor(p).numel() for p in model.parameters()),
           "optimizer_state_mb": sum(local_tensor(t).numel() * t.element_size() for s in opt.state.values()
                                     for t in s.values() if torch.is_tensor(t)) / 2**20}
    if pipe is not None:
        row["bubble_measured"] = statistics.median(bubbles[2:] or bubbles)
        row["bubble_theory"] = pipe.theoretical_bubble()
        row["stages"] = list(pipe.plan.stage_ids)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(row, f)
    dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--microbatches", type=int, default=4)
    args = p.parse_args()
    results = {}
    for name, pp, schedule, zero in CASES:
        with tempfile.TemporaryDirectory() as out:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            mp.start_processes(_worker, args=(2, _port(), out, pp, schedule, zero, args), nprocs=2, join=True,
                               start_method="spawn")
            results[name] = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    base = max(r["step_s"] for r in results["pp1-dp2"])
    summary = {}
    for name, ranks in results.items():
        step_s = max(r["step_s"] for r in ranks)
        summary[name] = {"step_s": step_s, "tokens_per_s": args.batch * args.seq / step_s,
                         "step_time_vs_pp1": step_s / base,
                         "peak_rss_mb_per_rank": [round(r["peak_rss_mb"], 1) for r in ranks],
                         "params_per_rank": [r["params_on_rank"] for r in ranks],
                         "optimizer_state_mb_per_rank": [round(r["optimizer_state_mb"], 1) for r in ranks]}
        if "bubble_measured" in ranks[0]:
            summary[name]["bubble_measured_per_rank"] = [round(r["bubble_measured"], 3) for r in ranks]
            summary[name]["bubble_theory"] = round(ranks[0]["bubble_theory"], 3)
    print(json.dumps({"config": {"model": "tiny", "workers": 2, "batch": args.batch, "seq": args.seq,
                                 "microbatches": args.microbatches, "steps": args.steps,
                                 "threads_per_worker": 1, "device": "cpu/gloo"},
                      "results": summary, "per_rank": results}, indent=1))


if __name__ == "__main__":
    main()
