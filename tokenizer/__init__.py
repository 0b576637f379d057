"""Whale's tokenizer library: byte-fallback BPE (sentencepiece) with DeepSeek-style special tokens,
a chat template with reasoning, Hugging Face export, and the token-shard format pretraining reads.

A library: imports nothing from ``pipeline`` or ``stages``.

    from tokenizer import Tokenizer, ShardReader
    tok = Tokenizer.load("<tokenizer stage out>/tokenizer")
    ids = tok.encode("def f(x):\\n    return x\\n")
    enc = tok.encode_chat([{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "hello", "reasoning_content": "greet"}])
    reader = ShardReader("<tokenizer stage out>/shards", "train", seq_len=512, seed=0)

Modules: ``special`` (token set, fixed ids), ``training`` (sentencepiece training), ``tokenizer``
(the Tokenizer class), ``chat`` (template, training mask, reasoning split), ``hf`` (Hugging Face
export), ``shards`` (token shard writer/reader), ``evaluation`` (compression, throughput, the
byte-level BPE baseline), ``local_corpus`` (a real corpus from the local Python installation).

Names below are imported lazily, so ``import tokenizer.special`` stays free of numpy/sentencepiece.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Tokenizer": "tokenizer.tokenizer",
    "ShardReader": "tokenizer.shards",
    "ShardError": "tokenizer.shards",
    "read_manifest": "tokenizer.shards",
    "iter_validation_text": "tokenizer.shards",
    "CHAT_TEMPLATE": "tokenizer.chat",
    "ChatEncoding": "tokenizer.chat",
    "render": "tokenizer.chat",
    "split_reasoning": "tokenizer.chat",
    "format_completion": "tokenizer.chat",
    "SPECIAL_TOKENS": "tokenizer.special",
    "SpecialToken": "tokenizer.special",
    "TrainSettings": "tokenizer.training",
    "TrainingDataError": "tokenizer.training",
    "train_sentencepiece": "tokenizer.training",
    "export_hf": "tokenizer.hf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
