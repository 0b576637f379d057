"""Measuring a tokenizer: compression, speed, vocabulary make-up, and the comparison baseline.

The baseline is what most people would otherwise reach for: a Hugging Face ``tokenizers``
byte-level BPE (GPT-2 style regex pre-tokenization), trained on the same text with the same
vocabulary size (including the same number of special tokens).
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Sequence

from tokenizer.special import FIRST_BYTE_ID, FIRST_LEARNED_ID, SPECIAL_TOKENS


def utf8_len(texts: Sequence[str]) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)


def bytes_per_token(encode: Callable[[str], Sequence[int]], texts: Sequence[str]) -> float:
    """UTF-8 bytes per token over ``texts`` (higher is better compression)."""
    n_tokens = sum(len(encode(t)) for t in texts)
    return utf8_len(texts) / n_tokens if n_tokens else float("nan")


def encode_throughput(encode: Callable[[str], Sequence[int]], texts: Sequence[str],
                      min_seconds: float = 0.5) -> float:
    """Single-threaded encode speed in MB/s (1e6 bytes), one text per call, repeated over
    ``texts`` until at least ``min_seconds`` have passed."""
    size = utf8_len(texts)
    if not size:
        return float("nan")
    done, t0 = 0, time.perf_counter()
    while True:
        for t in texts:
            encode(t)
        done += size
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed / 1e6


def train_bytelevel_bpe(texts: Sequence[str], vocab_size: int):
    """(HF tokenizers byte-level BPE trained on ``texts``, training seconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=[t.text for t in SPECIAL_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.perf_counter()
    hf.train_from_iterator(texts, trainer)
    return hf, time.perf_counter() - t0


def _is_cjk(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


def vocab_stats(tok) -> dict[str, float]:
    """What the learned vocabulary is made of."""
    learned = [tok.decode([i]) for i in range(tok.vocab_size)
               if not tok.is_special(i) and not tok.is_byte(i)]
    lengths = sorted(len(p.encode("utf-8")) for p in learned)
    return {
        "vocab/size": tok.vocab_size,
        "vocab/special": len(SPECIAL_TOKENS),
        "vocab/byte": 256,
        "vocab/learned": len(learned),
        "vocab/mean_piece_bytes": sum(lengths) / len(lengths),
        "vocab/median_piece_bytes": lengths[len(lengths) // 2],
        "vocab/max_piece_bytes": lengths[-1],
        "vocab/whitespace_only": sum(1 for p in learned if p and not p.strip()),
        "vocab/with_newline": sum(1 for p in learned if "\n" in p),
        "vocab/space_prefixed": sum(1 for p in learned if p.startswith(" ") and p.strip()),
        "vocab/single_char": sum(1 for p in learned if len(p) == 1),
        "vocab/cjk": sum(1 for p in learned if any(_is_cjk(c) for c in p)),
    }


def byte_fallback_rate(tok, texts: Sequence[str]) -> float:
    """Share of tokens that are byte-fallback pieces (characters the vocabulary lacks)."""
    import numpy as np

    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in tok.encode_batch(texts)] or [np.zeros(0)])
    fallback = np.count_nonzero((ids >= FIRST_BYTE_ID) & (ids < FIRST_LEARNED_ID))
    return fallback / len(ids) if len(ids) else float("nan")
