"""The tokenizer stage: sample curated text, train the BPE, export it, tokenize the corpus on Ray,
measure, log.

Output (``ctx.out``):
    tokenizer/    Tokenizer.load(...)-able, plus the Hugging Face files (tokenizer.hf)
    shards/       token shards, document index, validation text and manifest.json
                  (tokenizer.shards.ShardReader reads it)
    metrics.json  everything measured (also logged to MLflow)
"""

from __future__ import annotations

import json
import time

from pipeline.stage import StageContext
from stages.tokenizer.config import TokenizerConfig
from stages.tokenizer.corpus import discover, sample_training_text
from stages.tokenizer.measure import measure
from stages.tokenizer.tokenize_corpus import tokenize_corpus
from tokenizer.tokenizer import Tokenizer
from tokenizer.training import TrainSettings, train_sentencepiece


def _log(msg: str) -> None:
    print(msg, flush=True)


def run(cfg: TokenizerConfig, ctx: StageContext) -> dict[str, float | int | str]:
    import ray

    t_start = time.perf_counter()
    # -- everything that can fail on bad input, before any training ----------------------------
    settings = TrainSettings(vocab_size=cfg.vocab_size, character_coverage=cfg.character_coverage,
                             max_piece_length=cfg.max_piece_length, split_by_script=cfg.split_by_script,
                             num_threads=cfg.train_threads,
                             seed=ctx.seed)
    files = discover(ctx.input("curate"), cfg.sources)
    mix_total = sum(w for w in cfg.shards.mix.values() if w > 0)
    shard_mix = {s: w / mix_total for s, w in sorted(cfg.shards.mix.items()) if w > 0}
    sample = sample_training_text(files, cfg.sample.mix, cfg.sample.max_bytes, cfg.sample.max_docs,
                                  cfg.sample.max_doc_bytes, ctx.seed, cfg.shards.validation_fraction)
    _log("[tokenizer] sample: " + ", ".join(
        f"{s} {sample.docs_per_source[s]:,} docs / {sample.bytes_per_source[s] / 1e6:.2f} MB"
        for s in sample.bytes_per_source))

    # -- train and save --------------------------------------------------------------------------
    trained = train_sentencepiece(sample.texts, settings, log=_log)
    tok = Tokenizer(trained.model_proto)
    tokenizer_dir = tok.save(ctx.out / "tokenizer")

    # -- the corpus as training shards -----------------------------------------------------------
    if not ray.is_initialized():  # the runner starts Ray; this covers direct library-style calls
        _log("[tokenizer] Ray is not initialised: starting a local instance")
        ray.init(include_dashboard=False)
    shards_dir = ctx.out / "shards"
    manifest = tokenize_corpus(tok, files, shards_dir, ctx.seed, cfg.shards.validation_fraction,
                               cfg.shards.max_shard_tokens, cfg.shards.batch_docs, shard_mix,
                               spread=cfg.shards.spread, log=_log)

    # -- measure ---------------------------------------------------------------------------------
    metrics = measure(tok, tokenizer_dir, sample.texts, shards_dir, sorted(files), cfg.eval_bytes,
                      cfg.baseline, log=_log)
    if metrics["hf_export/mismatched_docs"]:
        _log(f"[tokenizer] WARNING: the Hugging Face export encodes {int(metrics['hf_export/mismatched_docs'])} "
             f"of {int(metrics['hf_export/checked_docs'])} held-out documents differently from the "
             f"tokenizer; models served through transformers/vLLM would see other ids")
    metrics["time/train_s"] = trained.seconds
    metrics["sample/bytes"] = trained.sample_bytes
    metrics["sample/chunks"] = trained.sample_chunks
    for s in sample.bytes_per_source:
        metrics[f"sample/bytes/{s}"] = sample.bytes_per_source[s]
        metrics[f"sample/docs/{s}"] = sample.docs_per_source[s]
    for split, part in manifest["splits"].items():
        metrics[f"data/tokens/{split}"] = part["tokens"]
        for s, st in part["sources"].items():
            for key in ("tokens", "documents", "bytes"):
                metrics[f"data/{key}/{split}/{s}"] = st[key]
    for reason, n in manifest["skipped"].items():
        metrics[f"data/skipped/{reason}"] = n
    metrics["time/tokenize_corpus_s"] = manifest["seconds"]
    metrics["time/stage_s"] = time.perf_counter() - t_start

    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_artifacts(tokenizer_dir, "tokenizer")
    ctx.tracker.log_artifact(shards_dir / "manifest.json", "shards")
    ctx.tracker.log_artifact(ctx.out / "metrics.json")
    ctx.tracker.set_tags({"tokenizer.vocab_size": tok.vocab_size, "tokenizer.dtype": tok.token_dtype.name})

    val = manifest["splits"]["validation"]["sources"]
    summary: dict[str, float | int | str] = {
        "vocab_size": tok.vocab_size,
        "bytes_per_token": round(metrics["bytes_per_token/all"], 4),
        "train_seconds": round(trained.seconds, 2),
        "encode_mb_s": round(metrics["perf/encode_mb_s"], 2),
        "train_tokens": manifest["splits"]["train"]["tokens"],
        "validation_tokens": manifest["splits"]["validation"]["tokens"],
        "token_dtype": tok.token_dtype.name,
        "hf_export_mismatched_docs": int(metrics["hf_export/mismatched_docs"]),
    }
    for s in sorted(files):
        summary[f"bytes_per_token_{s}"] = round(metrics[f"bytes_per_token/{s}"], 4)
        summary[f"validation_bytes_{s}"] = val[s]["bytes"]
        if cfg.baseline:
            summary[f"baseline_bytes_per_token_{s}"] = round(metrics[f"baseline/bytes_per_token/{s}"], 4)
    if cfg.baseline:
        summary["baseline_encode_mb_s"] = round(metrics["baseline/encode_mb_s"], 2)
    _log(f"[tokenizer] done in {metrics['time/stage_s']:.1f}s: " + json.dumps(summary))
    return summary
