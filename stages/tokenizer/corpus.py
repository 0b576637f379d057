"""Reading the curate stage's output: source folders of JSONL(.gz) documents.

Bad lines are skipped and counted by reason (never silently lost); a file that cannot be read
at all (corrupt gzip, permissions) is an error naming the file. Every document is assigned to
train or validation by a seeded hash of (source, id), so the split is deterministic, independent
of file order and of which Ray worker reads it, and the same in the sampler and the tokenizer.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PATTERNS = ("*.jsonl.gz", "*.jsonl")


class CorpusError(ValueError):
    """The curated corpus is missing, empty or unreadable."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    n_bytes: int


def discover(root: Path, sources: list[str]) -> dict[str, list[Path]]:
    """The input files of each source, sorted; an error naming what is missing."""
    if not root.is_dir():
        raise CorpusError(f"curated corpus folder {root} does not exist")
    found = {}
    for source in sources:
        folder = root / source
        files = sorted({p for pat in PATTERNS for p in folder.glob(pat)}) if folder.is_dir() else []
        if not files:
            have = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise CorpusError(f"source {source!r} has no documents: no {' or '.join(PATTERNS)} files in "
                              f"{folder} (folders in {root}: {have}); give it weight 0 in the tokenizer "
                              f"config's mixes or fix the curate output")
        found[source] = files
    return found


def read_documents(path: Path, skipped: Counter) -> Iterator[Document]:
    """Documents of one JSONL(.gz) file; bad lines are counted in ``skipped`` by reason."""
    opener = gzip.open if path.name.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    skipped["invalid_json"] += 1
                    continue
                text = doc.get("text") if isinstance(doc, dict) else None
                if not isinstance(text, str):
                    skipped["no_text"] += 1
                    continue
                if not text.strip():
                    skipped["empty_text"] += 1
                    continue
                try:
                    n_bytes = len(text.encode("utf-8"))
                except UnicodeEncodeError:  # lone surrogates from a "\ud800" escape
                    skipped["invalid_unicode"] += 1
                    continue
                doc_id = doc.get("id")
                yield Document(str(doc_id) if doc_id is not None else f"{path.name}:{line_no}", text, n_bytes)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read curated file {path} (after line {line_no}): {e}") from None


def is_validation(source: str, doc_id: str, seed: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}\0{source}\0{doc_id}".encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


@dataclass
class Sample:
    """The tokenizer's training text and what it took to collect it."""

    texts: list[str] = field(default_factory=list)
    bytes_per_source: dict[str, int] = field(default_factory=dict)
    docs_per_source: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)


def sample_training_text(files: dict[str, list[Path]], mix: dict[str, float], max_bytes: int,
                         max_docs: int | None, max_doc_bytes: int, seed: int,
                         validation_fraction: float) -> Sample:
    """A seeded sample of training (never validation) documents, ``mix`` shares of ``max_bytes``.

    Files are visited in a seeded random order and read front to back until the source's budget
    is spent; a document longer than ``max_doc_bytes`` contributes its beginning only.
    """
    total_w = sum(mix.values())
    sample = Sample()
    for source, weight in sorted(mix.items()):
        if weight <= 0:
            continue
        budget = int(max_bytes * weight / total_w)
        doc_budget = None if max_docs is None else max(1, int(max_docs * weight / total_w))
        order = list(files[source])
        random.Random(f"{seed}/{source}").shuffle(order)
        size = docs = held_out = 0
        exhausted = True
        for doc in (d for path in order for d in read_documents(path, sample.skipped)):
            if is_validation(source, doc.id, seed, validation_fraction):
                held_out += 1
                continue
            text = doc.text
            if doc.n_bytes > max_doc_bytes:
                text = text.encode("utf-8")[:max_doc_bytes].decode("utf-8", "ignore")
            sample.texts.append(text)
            size += min(doc.n_bytes, max_doc_bytes)
            docs += 1
            if size >= budget or (doc_budget is not None and docs >= doc_budget):
                exhausted = False
                break
        if exhausted:  # every document of the source has been seen: check it can serve
            if docs == 0:
                raise CorpusError(f"source {source!r} has no usable training document in "
                                  f"{len(order)} file(s) (skipped lines: {dict(sample.skipped) or 'none'}, "
                                  f"held out: {held_out})")
            if held_out == 0:
                raise CorpusError(f"source {source!r} has only {docs} document(s) and none falls in the "
                                  f"validation split at validation_fraction={validation_fraction}; add "
                                  f"documents or raise tokenizer.shards.validation_fraction")
        sample.bytes_per_source[source] = size
        sample.docs_per_source[source] = docs
    return sample
