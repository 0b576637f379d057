"""Language modelling: bits per byte on held-out text.

    bpb = (sum over scored tokens of -log2 p(token | context)) / (UTF-8 bytes of the scored text)

Per byte, not per token, so models with different tokenizers compare fairly. Each document is
scored after an EOS (the document separator the model saw in pretraining), every one of its
tokens once; documents longer than ``seq_len`` are cut into consecutive windows, each window
restarting its context. The EOS that closes a document carries no bytes and is not scored.
A uniform model scores exactly log2(V) * tokens / bytes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


@dataclass
class BpbResult:
    bits: float
    bytes: int
    tokens: int
    documents: int

    @property
    def bpb(self) -> float:
        return self.bits / self.bytes if self.bytes else float("nan")

    @property
    def bits_per_token(self) -> float:
        return self.bits / self.tokens if self.tokens else float("nan")


def windows(doc_ids: Sequence[int], start_id: int, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) pairs covering every token of the document once; inputs[i] predicts targets[i]."""
    seq = [start_id, *doc_ids]
    out = []
    for i in range(0, len(seq) - 1, seq_len):
        chunk = seq[i:i + seq_len + 1]
        out.append((chunk[:-1], chunk[1:]))
    return out


@torch.no_grad()
def score_windows(model, batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> float:
    """Summed negative log-likelihood (nats) of the targets of right-padded windows."""
    T = max(len(x) for x, _ in batch)
    inputs = torch.full((len(batch), T), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), T), -100, dtype=torch.long)
    for b, (x, y) in enumerate(batch):
        inputs[b, :len(x)] = torch.tensor(x)
        targets[b, :len(y)] = torch.tensor(y)
    # causal attention: right padding never reaches the real positions before it
    device = model.lm_head.weight.device
    logits = model(inputs.to(device), return_logits=True).logits
    return float(F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten(), ignore_index=-100,
                                 reduction="sum"))


def bits_per_byte(model, tokenizer, texts: Iterable[str], *, seq_len: int, batch_size: int,
                  log: Callable[[str], None] | None = None, what: str = "") -> BpbResult:
    model.eval()
    seq_len = min(seq_len, model.config.max_position_embeddings)
    pending: list[tuple[list[int], list[int]]] = []
    nats, n_bytes, n_tokens, n_docs = 0.0, 0, 0, 0
    t0 = time.perf_counter()

    def flush():
        nonlocal nats, pending
        if pending:
            nats += score_windows(model, pending, tokenizer.pad_id)
            pending = []

    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            continue
        n_docs += 1
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(ids)
        pending.extend(windows(ids, tokenizer.eos_id, seq_len))
        while len(pending) >= batch_size:
            head, pending = pending[:batch_size], pending[batch_size:]
            nats += score_windows(model, head, tokenizer.pad_id)
        if log and n_docs % 50 == 0:
            log(f"{what}: {n_docs} documents, {n_bytes / 1e3:.0f} kB ({time.perf_counter() - t0:.0f}s)")
    flush()
    return BpbResult(nats / LN2, n_bytes, n_tokens, n_docs)


def validation_texts(shards_dir, source: str, max_bytes: int | None) -> list[str]:
    """The held-out documents of a source, in shard order, up to ``max_bytes`` (the document that
    crosses the limit is the last one taken)."""
    from tokenizer.shards import iter_validation_text

    out, size = [], 0
    for doc in iter_validation_text(shards_dir, source):
        text = doc.get("text") or ""
        out.append(text)
        size += len(text.encode("utf-8"))
        if max_bytes is not None and size >= max_bytes:
            break
    return out


def train_token_counts(shards_dir, vocab_size: int):
    """Occurrences of every id in the training split (all sources), read in chunks."""
    import numpy as np

    from tokenizer.shards import read_manifest

    manifest = read_manifest(shards_dir)
    dtype = np.dtype(manifest["dtype"])
    counts = np.zeros(vocab_size, dtype=np.int64)
    for source in manifest["splits"].get("train", {}).get("sources", {}).values():
        for info in source["shards"]:
            data = np.memmap(f"{shards_dir}/{info['path']}", dtype=dtype, mode="r")
            for i in range(0, len(data), 1 << 24):
                counts += np.bincount(data[i:i + (1 << 24)], minlength=vocab_size)[:vocab_size]
    return counts


def unigram_bits_per_byte(counts, tokenizer, texts: Iterable[str]) -> BpbResult:
    """The context-free baseline on exactly the tokens and bytes :func:`bits_per_byte` scores:
    p(t) = (count(t) + 1) / (N + V), Laplace-smoothed token frequencies of the training split. A
    model above it has unlearnt even which tokens are common."""
    import numpy as np

    logp = np.log2((np.asarray(counts, dtype=np.float64) + 1) / (float(np.sum(counts)) + len(counts)))
    bits, n_bytes, n_tokens, n_docs = 0.0, 0, 0, 0
    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            continue
        bits -= float(logp[np.asarray(ids)].sum())
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(ids)
        n_docs += 1
    return BpbResult(bits, n_bytes, n_tokens, n_docs)
