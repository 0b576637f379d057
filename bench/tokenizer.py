"""Tokenizer stage benchmark: our sentencepiece byte-fallback BPE vs a Hugging Face `tokenizers`
byte-level BPE trained on the same sample with the same vocabulary size, in one run.

    python bench/tokenizer.py                       # ~4 MB real corpus from the local Python install
    python bench/tokenizer.py --curate outputs/curate/<fp> --vocab-size 8192

Runs the whole tokenizer stage (sample, train, HF export, Ray tokenization into shards, measure)
on 2 Ray CPUs and prints one JSON object: compression (bytes/token on held-out web and code),
training time, single-thread encode throughput (ours, the baseline, and our vocabulary run by
HF's Rust BPE from the exported tokenizer.json), with ratios ours/baseline, the stage's wall time
against the 2-minute budget of the tiny config, and vocabulary statistics.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONPATH", str(ROOT))  # Ray workers import stages.tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curate", type=Path, help="a curate stage output folder (default: build one locally)")
    p.add_argument("--web-bytes", type=int, default=2_500_000)
    p.add_argument("--code-bytes", type=int, default=2_500_000)
    p.add_argument("--vocab-size", type=int, default=None, help="default: the tiny config's")
    p.add_argument("--validation-fraction", type=float, default=None,
                   help="held-out share of documents (default: the tiny config's); the comparisons are "
                        "measured on the held-out text, so a larger share makes them less noisy")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--out", type=Path, help="keep the stage output here (default: a temp dir)")
    args = p.parse_args()

    import ray

    from pipeline.config import GlobalConfig
    from pipeline.stage import StageContext
    from pipeline.tracking import Tracker
    from stages.tokenizer.config import TokenizerConfig
    from stages.tokenizer.run import run
    from tokenizer.local_corpus import write_local_corpus

    tmp = tempfile.TemporaryDirectory(prefix="bench-tokenizer-")
    work = Path(tmp.name)
    curate = args.curate
    corpus = None
    if curate is None:
        curate = work / "curate"
        corpus = write_local_corpus(curate, web_bytes=args.web_bytes, code_bytes=args.code_bytes)
    out = args.out or work / "out"
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    overrides: dict = {}
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    if args.validation_fraction:
        overrides["shards"] = {"validation_fraction": args.validation_fraction}
    cfg = TokenizerConfig(**overrides)
    ctx = StageContext(stage="tokenizer", out=out, inputs={"curate": curate}, tracker=Tracker.disabled(),
                       pipeline=GlobalConfig(name="bench"), fingerprint="bench")
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # progress to stderr, stdout is the JSON
        summary = run(cfg, ctx)
    stage_s = time.perf_counter() - t1
    ray.shutdown()
    m = json.loads((out / "metrics.json").read_text())

    def ratio(a: str, b: str) -> float:
        return round(m[a] / m[b], 3)

    result = {
        "corpus": corpus or {"curate": str(curate)},
        "vocab_size": summary["vocab_size"],
        "held_out_bytes": {src: summary[f"validation_bytes_{src}"] for src in ("web", "code")},
        "held_out_documents": int(m["hf_export/checked_docs"]),
        "cpus": args.cpus,
        "bytes_per_token": {
            src: {"ours": round(m[f"bytes_per_token/{src}"], 4),
                  "hf_bytelevel_bpe": round(m[f"baseline/bytes_per_token/{src}"], 4),
                  "ratio_ours_over_baseline": ratio(f"bytes_per_token/{src}", f"baseline/bytes_per_token/{src}")}
            for src in ("web", "code", "all")},
        "train_seconds": {"ours": round(m["time/train_s"], 2), "hf_bytelevel_bpe": round(m["baseline/train_s"], 2),
                          "ratio_ours_over_baseline": ratio("time/train_s", "baseline/train_s"),
                          "sample_mb": round(m["sample/bytes"] / 1e6, 2)},
        "encode_mb_per_s_single_thread": {
            "ours_sentencepiece": round(m["perf/encode_mb_s"], 2),
            "hf_bytelevel_bpe": round(m["baseline/encode_mb_s"], 2),
            "ours_via_hf_tokenizer_json": round(m["perf/hf_export_encode_mb_s"], 2),
            "ratio_ours_over_baseline": ratio("perf/encode_mb_s", "baseline/encode_mb_s"),
        },
        "byte_fallback_rate": {src: round(m[f"byte_fallback_rate/{src}"], 5) for src in ("web", "code")},
        "hf_export": {"mismatched_docs": int(m["hf_export/mismatched_docs"]),
                      "checked_docs": int(m["hf_export/checked_docs"])},
        "shards": {"train_tokens": summary["train_tokens"], "validation_tokens": summary["validation_tokens"],
                   "dtype": summary["token_dtype"], "tokenize_seconds": round(m["time/tokenize_corpus_s"], 2)},
        "vocab": {k.removeprefix("vocab/"): v for k, v in m.items() if k.startswith("vocab/")},
        "stage_seconds": round(stage_s, 2),
        "ray_start_seconds": round(ray_start, 2),
        "budget_seconds": 120,
        "within_budget": stage_s + ray_start < 120,
    }
    print(json.dumps(result, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
