"""Curate wall time, another checkout (A, e.g. main) against this one (B), interleaved A B B A ...

    python bench/curate_ab.py --a /work/main                   # the tiny default's input
    python bench/curate_ab.py --a /work/main --web-mb 3 --code-mb 2 --repeats 2

Each run is the whole stage on the local environment (the tiny default's source, optionally capped),
in its own process whose PYTHONPATH selects the checkout, so both read the same files in the same
order. Prints JSON: every wall time, best of each, the B/A ratio of the bests, the kept document
counts and the 1-minute load average before each run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(out: Path, web_mb: float | None, code_mb: float | None) -> None:
    import ray
    from curate_docs import start_ray  # this folder is the script's: on sys.path

    from pipeline.config import GlobalConfig
    from pipeline.stage import StageContext
    from pipeline.tracking import Tracker
    from stages.curate.config import CurateConfig
    from stages.curate.run import run

    source: dict = {"type": "local"}
    if web_mb is not None:
        source["max_web_bytes"] = int(web_mb * 1e6)
    if code_mb is not None:
        source["max_code_bytes"] = int(code_mb * 1e6)
    start_ray()
    ctx = StageContext(stage="curate", out=out, inputs={}, tracker=Tracker.disabled(),
                       pipeline=GlobalConfig(name="bench"), fingerprint="bench")
    summary = run(CurateConfig.model_validate({"sources": [source]}), ctx)
    (out / "summary.json").write_text(json.dumps(summary))
    ray.shutdown()


def main() -> None:
    if sys.argv[1:2] == ["--_child"]:
        web, code = (None if x == "-" else float(x) for x in sys.argv[3:5])
        return child(Path(sys.argv[2]), web, code)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="the baseline checkout (e.g. /work/main)")
    p.add_argument("--web-mb", type=float)
    p.add_argument("--code-mb", type=float)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="curate-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    checkouts = {"A": args.a.resolve(), "B": ROOT}
    order = [x for i in range(args.repeats) for x in (("A", "B") if i % 2 == 0 else ("B", "A"))]
    runs = []
    for i, label in enumerate(order):
        out = work / f"{i}_{label}"
        load = os.getloadavg()[0]
        t0 = time.time()
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", str(out),
                        "-" if args.web_mb is None else str(args.web_mb),
                        "-" if args.code_mb is None else str(args.code_mb)],
                       env={**os.environ, "PYTHONPATH": str(checkouts[label]), "PYTHONDONTWRITEBYTECODE": "1"},
                       cwd=checkouts[label], check=True, stdout=subprocess.DEVNULL,
                       stderr=open(work / f"{i}_{label}.log", "w"))
        summary = json.loads((out / "summary.json").read_text())
        runs.append({"checkout": label, "wall_s": round(time.time() - t0, 1), "load_average_1m": round(load, 2),
                     "stage_wall_s": summary["wall_s"], "web_docs": summary.get("web_docs"),
                     "code_docs": summary.get("code_docs"), "docs_in": summary.get("docs_in")})
    best = {x: min(r["stage_wall_s"] for r in runs if r["checkout"] == x) for x in ("A", "B")}
    print(json.dumps({"bench": "curate_ab", "a": str(checkouts["A"]), "b": str(checkouts["B"]),
                      "input": {"web_mb": args.web_mb or "tiny default", "code_mb": args.code_mb or "tiny default"},
                      "runs": runs, "best_stage_wall_s": best, "b_over_a": round(best["B"] / best["A"], 3),
                      "load_average_1m_end": round(os.getloadavg()[0], 2)}, indent=2))


if __name__ == "__main__":
    main()
