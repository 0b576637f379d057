"""The stage's measurements: compression on held-out text per source, encode speed, the Hugging
Face export's agreement with our encoder, vocabulary make-up, and the byte-level BPE baseline
trained on the same sample with the same vocabulary size, all in one run."""

from __future__ import annotations

from pathlib import Path

from tokenizer.evaluation import (
    byte_fallback_rate,
    bytes_per_token,
    encode_throughput,
    train_bytelevel_bpe,
    utf8_len,
    vocab_stats,
)
from tokenizer.shards import iter_validation_text
from tokenizer.tokenizer import Tokenizer


def held_out_texts(shards_root: Path, source: str, max_bytes: int) -> list[str]:
    """The first ``max_bytes`` of a source's validation documents (whole documents)."""
    texts, size = [], 0
    for doc in iter_validation_text(shards_root, source):
        if size >= max_bytes:
            break
        texts.append(doc["text"])
        size += len(doc["text"].encode("utf-8"))
    return texts


def measure(tok: Tokenizer, tokenizer_dir: Path, sample_texts: list[str], shards_root: Path,
            sources: list[str], eval_bytes: int, baseline: bool, log=print) -> dict[str, float]:
    from tokenizers import Tokenizer as HFTokenizer

    held = {s: held_out_texts(shards_root, s, eval_bytes) for s in sources}
    everything = [t for s in sources for t in held[s]]
    log(f"[tokenizer] measuring on {utf8_len(everything) / 1e6:.1f} MB of held-out text")
    m: dict[str, float] = {}

    def ours(text):
        return tok.encode(text)

    for s in sources:
        m[f"bytes_per_token/{s}"] = bytes_per_token(ours, held[s])
        m[f"byte_fallback_rate/{s}"] = byte_fallback_rate(tok, held[s])
    m["bytes_per_token/all"] = bytes_per_token(ours, everything)
    m["perf/encode_mb_s"] = encode_throughput(ours, everything)

    # The exported tokenizer.json, run by HF's Rust BPE: it must give our ids on real text.
    exported = HFTokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))

    def exported_ids(text):
        return exported.encode(text, add_special_tokens=False).ids

    m["hf_export/mismatched_docs"] = sum(exported_ids(t) != tok.encode(t, allow_special=True) for t in everything)
    m["hf_export/checked_docs"] = len(everything)
    m["perf/hf_export_encode_mb_s"] = encode_throughput(exported_ids, everything)

    if baseline:
        log(f"[tokenizer] training the byte-level BPE baseline (vocab {tok.vocab_size:,})")
        base, seconds = train_bytelevel_bpe(sample_texts, tok.vocab_size)

        def base_ids(text):
            return base.encode(text, add_special_tokens=False).ids

        m["baseline/train_s"] = seconds
        m["baseline/vocab_size"] = base.get_vocab_size()
        for s in sources:
            m[f"baseline/bytes_per_token/{s}"] = bytes_per_token(base_ids, held[s])
            m[f"compare/bytes_per_token_ratio/{s}"] = (m[f"bytes_per_token/{s}"]
                                                      / m[f"baseline/bytes_per_token/{s}"])
        m["baseline/bytes_per_token/all"] = bytes_per_token(base_ids, everything)
        m["baseline/encode_mb_s"] = encode_throughput(base_ids, everything)
        m["compare/encode_speed_ratio"] = m["perf/encode_mb_s"] / m["baseline/encode_mb_s"]
    m.update(vocab_stats(tok))
    return m
