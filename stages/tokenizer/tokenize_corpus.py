"""Tokenize the curated corpus into training shards, one Ray task per input file.

Each task gets the sentencepiece model by value (a few hundred KB to a few MB, so workers on
other nodes need no shared copy of the tokenizer), reads one curated file, assigns each document
to train or validation (``corpus.is_validation``), and streams ids into that file's own shards.
Output names depend only on the input, so the result is the same whatever the scheduling. The
driver collects the per-file stats and writes the manifest last: shards without a manifest
entry are never read.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from stages.tokenizer.corpus import is_validation, read_documents
from tokenizer.shards import ShardInfo, ShardWriter, SourceStats, build_manifest, write_manifest
from tokenizer.tokenizer import Tokenizer


def tokenize_file(model_proto: bytes, path: str, source: str, file_index: int, out_root: str, seed: int,
                  validation_fraction: float, max_shard_tokens: int, batch_docs: int) -> dict:
    """Tokenize one curated file into ``<out_root>/{train,validation}/<source>-<index>-<part>.*``."""
    tok = Tokenizer(model_proto)
    stem = f"{source}-{file_index:05d}"
    writers = {split: ShardWriter(out_root, split, stem, tok.token_dtype, tok.eos_id, max_shard_tokens,
                                  keep_text=(split == "validation"))
               for split in ("train", "validation")}
    skipped: Counter = Counter()
    batch = []

    def flush():
        for doc, ids in zip(batch, tok.encode_batch([d.text for d in batch]), strict=True):
            split = "validation" if is_validation(source, doc.id, seed, validation_fraction) else "train"
            writers[split].add(doc.id, ids, doc.n_bytes, doc.text)
        batch.clear()

    for doc in read_documents(Path(path), skipped):
        batch.append(doc)
        if len(batch) >= batch_docs:
            flush()
    flush()
    return {"source": source, "path": path, "skipped": dict(skipped),
            "shards": {split: [asdict(s) for s in w.close()] for split, w in writers.items()}}


def tokenize_corpus(tok: Tokenizer, files: dict[str, list[Path]], out_root: Path, seed: int,
                    validation_fraction: float, max_shard_tokens: int, batch_docs: int,
                    mix: dict[str, float], spread: bool = False, log=print) -> dict:
    """Run ``tokenize_file`` on Ray for every file; write and return the manifest.

    The curated input and ``out_root`` are folders of the node running the stage (with remote
    storage the runner stages them there), so tasks are pinned to this node unless ``spread``
    says every node can read and write those paths (shared storage such as NFS).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out_root.mkdir(parents=True, exist_ok=True)
    placement = {} if spread else {"scheduling_strategy": NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)}
    remote = ray.remote(num_cpus=1, max_retries=1)(tokenize_file).options(**placement)
    model = ray.put(tok.model_proto)
    pending = {}
    for source, paths in sorted(files.items()):
        for k, p in enumerate(paths):
            ref = remote.remote(model, str(p), source, k, str(out_root), seed, validation_fraction,
                                max_shard_tokens, batch_docs)
            pending[ref] = p
    n_files = len(pending)
    log(f"[tokenizer] tokenizing {n_files} file(s) on Ray")
    stats = {split: {s: SourceStats() for s in files} for split in ("train", "validation")}
    skipped: Counter = Counter()
    t0 = time.perf_counter()
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        path = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            for ref in pending:
                ray.cancel(ref)
            cause = getattr(e, "cause", None) or e
            raise RuntimeError(f"tokenizing {path} failed: {type(cause).__name__}: {cause}") from None
        skipped.update(result["skipped"])
        for split, shards in result["shards"].items():
            stats[split][result["source"]].add([ShardInfo(**s) for s in shards])
        done += 1
        tokens = sum(st.tokens for split in stats.values() for st in split.values())
        log(f"[tokenizer] {done}/{n_files} files, {tokens:,} tokens, {time.perf_counter() - t0:.1f}s")

    empty = [f"{split}/{s}" for split, by_source in stats.items() for s, st in by_source.items()
             if st.documents == 0 and mix.get(s, 0) > 0]
    if empty:
        raise RuntimeError(f"no documents landed in {', '.join(empty)}: the source is too small for "
                           f"validation_fraction={validation_fraction} (seed {seed}); add documents or "
                           f"change tokenizer.shards.validation_fraction")
    manifest = build_manifest(tok.token_dtype, tok.vocab_size, tok.eos_id, mix, stats, seed=seed,
                              validation_fraction=validation_fraction, skipped=dict(skipped),
                              seconds=round(time.perf_counter() - t0, 3))
    write_manifest(out_root, manifest)
    return manifest
