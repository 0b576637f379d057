"""The unigram baseline: what bits per byte a model that ignores context gets on the same data.

p(t) = (count_train(t) + 1) / (N_train + V)        Laplace-smoothed token frequencies of the
                                                     training split (every source, as stored)
bpb  = Σ_targets −log2 p(t) / Σ_targets bytes(t)   over exactly the validation targets the
                                                     model is scored on

A trained model must land well below it; a model at the baseline has learnt token frequencies
and nothing else.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from model.transformer import IGNORE_INDEX, next_token_targets
from stages.pretrain.data import ShardEvalData
from tokenizer.shards import read_manifest

_CHUNK = 1 << 24


def train_token_counts(shards: str | Path, vocab_size: int) -> np.ndarray:
    """Occurrences of every id in the training split (all sources), read in chunks."""
    root = Path(shards)
    manifest = read_manifest(root)
    dtype = np.dtype(manifest["dtype"])
    counts = np.zeros(vocab_size, dtype=np.int64)
    for source in manifest["splits"]["train"]["sources"].values():
        for info in source["shards"]:
            data = np.memmap(root / info["path"], dtype=dtype, mode="r")
            for i in range(0, len(data), _CHUNK):
                counts += np.bincount(data[i:i + _CHUNK], minlength=vocab_size)[:vocab_size]
    return counts


def unigram_bpb(counts: np.ndarray, eval_data: ShardEvalData, world_size: int, micro_batch_size: int,
                seq_len: int, max_batches: int) -> dict[str, float]:
    """``unigram/bpb/<source>`` and pooled ``unigram/bpb`` (plus nats per target, ``unigram/loss``)
    on the targets every rank's evaluation scores."""
    token_bytes = eval_data.token_bytes()
    neg_log_p = -np.log((counts + 1.0) / (counts.sum() + len(counts)))
    totals: dict[str, np.ndarray] = {}
    for rank in range(world_size):
        sets = eval_data.open(rank, world_size, micro_batch_size, seq_len, max_batches)
        for source, batches in sets.items():
            acc = totals.setdefault(source, np.zeros(3))
            for b in batches:
                t = next_token_targets(b["labels"], None, b.get("segment_ids")).numpy().ravel()
                t = t[t != IGNORE_INDEX]
                acc += (neg_log_p[t].sum(), len(t), token_bytes[t].sum())
    out: dict[str, float] = {}
    for source, (nats, n, nbytes) in totals.items():
        if n and nbytes:
            out[f"unigram/bpb/{source}"] = nats / math.log(2) / nbytes
            out[f"unigram/loss/{source}"] = nats / n
    nats, n, nbytes = sum(totals.values(), np.zeros(3))
    if n and nbytes:
        out["unigram/bpb"] = nats / math.log(2) / nbytes
        out["unigram/loss"] = nats / n
    return out


def validation_bytes_check(shards: str | Path, token_bytes: np.ndarray) -> dict[str, tuple[int, int]]:
    """Per source: (bytes the tokens of the validation split stand for, bytes the manifest
    records). Equal for a lossless tokenizer, which is what makes bits per byte computed from
    token bytes the manifest's bits per byte."""
    root = Path(shards)
    manifest = read_manifest(root)
    dtype = np.dtype(manifest["dtype"])
    out = {}
    for name, source in manifest["splits"]["validation"]["sources"].items():
        total = 0
        for info in source["shards"]:
            data = np.memmap(root / info["path"], dtype=dtype, mode="r")
            for i in range(0, len(data), _CHUNK):
                total += int(token_bytes[np.asarray(data[i:i + _CHUNK], dtype=np.int64)].sum())
        out[name] = (total, int(source["bytes"]))
    return out
