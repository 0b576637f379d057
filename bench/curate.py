"""Curate stage benchmark: throughput on the local corpus with 1 and 2 Ray workers, in one run.

    python bench/curate.py                          # the tiny default's input (~21 MB prose, ~8 MB code)
    python bench/curate.py --web-mb 3 --code-mb 3   # a smaller slice of the local environment

Runs the whole stage on the same input with the same sharding (``tasks`` = 2), with one worker
(tasks run one after the other) and with two (at once), in ABBA order (1, 2, 2, 1 workers with the
default --repeats 2) so that drifting load from other processes on the machine hits both equally;
branches run one after the other so the worker count is the only parallelism. Prints one JSON
object: docs/s and MB/s overall and per core for each worker count (best of the repeats), the
2-worker vs 1-worker speed ratio, whether all runs kept the same documents, single-core
throughput of each filter (datatrove's per-step timers), and the quality
classifier's held-out scores plus, when ../shared/data is present, its agreement with the 499 DCLM
human quality labels.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONPATH", str(ROOT))  # Ray workers import stages.curate
SHARED = ROOT.parent / "shared" / "data"


def kept_digest(out: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(out.glob("*/*.jsonl.gz")):
        h.update(f"{f.parent.name}/{f.name}".encode())
        h.update(gzip.decompress(f.read_bytes()))
    return h.hexdigest()


def filter_speeds(out: Path) -> dict[str, dict]:
    """docs/s on one core per filter, from datatrove's per-step timers (the filter's own time)."""
    speeds = {}
    for branch in ("web", "code"):
        stats_file = out / "_work" / branch / "logs" / "1_filter" / "stats.json"
        per_task = sorted((out / "_work" / branch / "logs" / "1_filter" / "stats").glob("*.json"))
        if not per_task and not stats_file.exists():
            continue
        merged: dict[str, list[float]] = {}
        for f in per_task:
            for step in json.loads(f.read_text()):
                t = step.get("time_stats") or {}
                n = step.get("stats", {}).get("acct_in")
                n = n.get("total") if isinstance(n, dict) else n
                if isinstance(t, dict) and t.get("total") and n and "READER" not in step["name"]:
                    acc = merged.setdefault(step["name"].split(": ", 1)[-1], [0.0, 0.0])
                    acc[0] += n
                    acc[1] += t["total"]
        speeds[branch] = {name: round(n / s, 1) for name, (n, s) in merged.items() if s > 0}
    return speeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--web-mb", type=float, help="local prose to harvest (default: the tiny config's cap)")
    p.add_argument("--code-mb", type=float, help="local code to harvest (default: the tiny config's cap)")
    p.add_argument("--repeats", type=int, default=2, help="runs per worker count (ABBA order)")
    p.add_argument("--out", type=Path, help="keep the runs' outputs here (default: a temp dir)")
    args = p.parse_args()

    import ray

    from pipeline.config import GlobalConfig
    from pipeline.stage import StageContext
    from pipeline.tracking import Tracker
    from stages.curate.config import CurateConfig
    from stages.curate.run import run

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-curate-"))
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    source = {"type": "local"}
    if args.web_mb is not None:
        source["max_web_bytes"] = int(args.web_mb * 1e6)
    if args.code_mb is not None:
        source["max_code_bytes"] = int(args.code_mb * 1e6)
    load_before = os.getloadavg()[0]
    quality_eval = str(SHARED / "dclm" / "majority_data.jsonl") if SHARED.exists() else None
    order = [w for i in range(args.repeats) for w in ((1, 2) if i % 2 == 0 else (2, 1))]
    walls: dict[int, list[float]] = {1: [], 2: []}
    runs, digests, stats = {}, set(), {}
    for i, workers in enumerate(order):
        cfg = CurateConfig.model_validate({
            "sources": [source], "quality_eval_path": quality_eval,
            "execution": {"tasks": 2, "workers": workers, "branches_in_parallel": False}})
        out = root / f"run{i}_workers_{workers}"
        ctx = StageContext(stage="curate", out=out, inputs={}, tracker=Tracker.disabled(),
                           pipeline=GlobalConfig(name="bench"), fingerprint="bench")
        t0 = time.time()
        summary = run(cfg, ctx)
        wall = round(time.time() - t0, 2)
        walls[workers].append(wall)
        digests.add(kept_digest(out))
        if wall > min(walls[workers]):
            continue
        st = json.loads((out / "stats.json").read_text())
        mb_in = sum(b["read_bytes"] for b in st["branches"].values()) / 1e6
        docs_in = summary["docs_in"]
        runs[f"workers_{workers}"] = {
            "wall_s": wall, "docs_in": docs_in, "mb_in": round(mb_in, 3),
            "docs_per_s": round(docs_in / wall, 2), "mb_per_s": round(mb_in / wall, 4),
            "docs_per_s_per_core": round(docs_in / wall / workers, 2),
            "mb_per_s_per_core": round(mb_in / wall / workers, 4),
            "kept": {b: {"docs": summary[f"{b}_docs"], "mb": summary[f"{b}_mb"]} for b in ("web", "code")},
            "pass_wall_s": st["passes"]}
        stats[workers] = (st, out)
    for workers in (1, 2):
        runs[f"workers_{workers}"]["all_wall_s"] = walls[workers]
    ray.shutdown()

    st2, out2 = stats[2]
    q = st2["quality"] or {}
    result = {
        "bench": "curate",
        "cpus": 2,
        "input": {"mb": runs["workers_2"]["mb_in"], "docs": runs["workers_2"]["docs_in"],
                  "source": "local environment (Python distributions, /usr/share/doc, /usr/share/info)"},
        # other processes on the machine share the 2 cores: read the timings against this
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "runs": runs,
        "speedup_2_vs_1_workers": round(runs["workers_1"]["wall_s"] / runs["workers_2"]["wall_s"], 3),
        "same_kept_set": len(digests) == 1,
        "filter_docs_per_s_single_core": filter_speeds(out2),
        "quality_classifier": {
            "heldout": {k: round(v, 4) for k, v in (q.get("heldout") or {}).items() if isinstance(v, float)},
            "dclm_human_labels": ({k: (round(v, 4) if isinstance(v, float) else v)
                                   for k, v in q["human_agreement"].items()} if "human_agreement" in q
                                  else f"skipped: {SHARED} is absent"),
        },
        "conservation_holds": all(c["holds"] for c in st2["conservation"].values()),
        "out": str(root),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
