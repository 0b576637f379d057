"""Reading a curate-format corpus back in tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def read_corpus_texts(root: Path, source: str) -> list[str]:
    texts = []
    for p in sorted((root / source).glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts
