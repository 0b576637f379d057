"""Per-step accounting inside datatrove pipelines: every document is kept, removed with a reason, or
reported unreadable, and a few of each are kept as audit samples.

``Accounted(step, key)`` wraps any datatrove step that yields the documents it keeps. It counts
documents and UTF-8 bytes going in and coming out, receives the removed ones through datatrove's
``exclusion_writer`` hook (which every ``BaseFilter`` and the dedup filters call with the dropped
document), and stores the counts in the wrapped step's own ``Stats``, so datatrove's executor saves
and merges them with its usual per-task stats. A document that goes in and neither comes out nor is
reported removed is counted as ``unaccounted``, which the stage's ledger refuses.

Stat keys (totals per task, summed over tasks by the executor):
    acct_in, acct_in_bytes, acct_kept, acct_kept_bytes, acct_removed, acct_removed_bytes,
    acct_removed:<reason>, acct_removed_bytes:<reason>
Readers use acct_read, acct_read_bytes and acct_unreadable:<reason> (see ``ReaderAccounting``).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable, Iterator

import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep

UNACCOUNTED = "unaccounted"
SAMPLE_CHARS = 2000


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


class AuditSample:
    """The ``k`` documents with the smallest hash of their id, per outcome.

    Bottom-k by hash is a uniform sample that merges exactly across tasks (the bottom-k of the
    union is the bottom-k of the per-task bottom-ks), so the audit set does not depend on how the
    work was sharded or scheduled.
    """

    def __init__(self, k: int):
        self.k = k
        self._heaps: dict[str, list[tuple[int, str, int, dict]]] = {}
        self._seq = 0  # tie-breaker: equal (hash, id) pairs never compare their records

    def offer(self, outcome: str, doc: Document) -> None:
        if self.k <= 0:
            return
        h = -xxhash.xxh64_intdigest(doc.id)  # max-heap on -hash keeps the k smallest hashes
        heap = self._heaps.setdefault(outcome, [])
        self._seq += 1
        if len(heap) < self.k:
            heapq.heappush(heap, (h, doc.id, self._seq, _sample_record(doc)))
        elif h > heap[0][0]:
            heapq.heapreplace(heap, (h, doc.id, self._seq, _sample_record(doc)))

    def records(self) -> Iterator[dict]:
        for outcome, heap in sorted(self._heaps.items()):
            for h, _, _, rec in sorted(heap, reverse=True):
                yield {"outcome": outcome, "hash": -h, **rec}


def _sample_record(doc: Document) -> dict:
    meta = {k: v for k, v in doc.metadata.items()
            if isinstance(v, (str, int, float, bool)) and k not in ("filter_reason",)}
    text = doc.text if len(doc.text) <= SAMPLE_CHARS else doc.text[:SAMPLE_CHARS] + " [...]"
    return {"id": doc.id, "chars": len(doc.text), "text": text, "metadata": meta}


def ledger_record(doc: Document, step: str, reason: str) -> dict:
    """The removal ledger's line for one document: where it came from, which step removed it, why,
    and (where the rule reports them) the measured value and the threshold it failed."""
    meta = doc.metadata
    rec = {"id": doc.id, "url": meta.get("url") or meta.get("path"), "step": step, "reason": reason,
           "value": meta.pop("filter_value", None), "threshold": meta.pop("filter_threshold", None),
           "language": meta.get("language"), "bytes": utf8_len(doc.text)}
    if "language_score" in meta:
        rec["language_score"] = meta["language_score"]
    return rec


def merge_samples(records: Iterable[dict], k: int) -> dict[str, list[dict]]:
    """Merge per-task audit records into the global bottom-k per outcome."""
    by_outcome: dict[str, list[dict]] = {}
    for rec in records:
        by_outcome.setdefault(rec["outcome"], []).append(rec)
    return {o: sorted(recs, key=lambda r: (r["hash"], r["id"]))[:k] for o, recs in sorted(by_outcome.items())}


class _RemovalSink:
    """Quacks like a datatrove DiskWriter for the ``exclusion_writer`` hook."""

    def __init__(self, owner: "Accounted"):
        self.owner = owner

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        self.owner._removed(document)


class Accounted(PipelineStep):
    """Transparent wrapper that accounts for every document passing through ``step``.

    ``key`` names the row in the stage's funnel (and the audit folder). ``default_reason`` labels
    removals the wrapped step reports without a reason (the dedup filters). Steps that never drop
    documents (formatters, writers) can be wrapped too: their rows prove nothing was lost.
    """

    def __init__(self, step: PipelineStep, key: str, audit_folder: DataFolderLike | None = None,
                 samples: int = 0, default_reason: str = "removed", ledger_folder: DataFolderLike | None = None):
        self.step = step
        super().__init__()
        self.key = key
        self.name, self.type = step.name, step.type
        self.stats = step.stats  # one Stats object: the executor's stats files carry our counts
        self.default_reason = default_reason
        self.samples = samples
        self.audit_folder = get_datafolder(audit_folder) if audit_folder is not None and samples else None
        # one line per removed document (``ledger_record``), one file per task: <key>/<rank>.jsonl.gz
        self.ledger_folder = get_datafolder(ledger_folder) if ledger_folder is not None else None
        if hasattr(step, "exclusion_writer"):
            step.exclusion_writer = _RemovalSink(self)
        self._reset()

    def __repr__(self):
        return repr(self.step)

    def _reset(self) -> None:
        self._n = Counter()
        self._audit = AuditSample(self.samples)
        self._ledger: list[dict] = []

    def _removed(self, doc: Document) -> None:
        reason = doc.metadata.pop("filter_reason", None) or self.default_reason
        nbytes = utf8_len(doc.text)
        self._n["removed"] += 1
        self._n["removed_bytes"] += nbytes
        self._n[f"removed:{reason}"] += 1
        self._n[f"removed_bytes:{reason}"] += nbytes
        self._audit.offer(f"removed:{reason}", doc)
        if self.ledger_folder is not None:
            self._ledger.append(ledger_record(doc, self.key, reason))

    def _count_in(self, data: DocumentsPipeline) -> DocumentsPipeline:
        for doc in data or ():
            self._n["in"] += 1
            self._n["in_bytes"] += utf8_len(doc.text)
            yield doc

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._reset()
        for doc in self.step.run(self._count_in(data), rank, world_size):
            self._n["kept"] += 1
            self._n["kept_bytes"] += utf8_len(doc.text)
            self._audit.offer("kept", doc)
            yield doc
        lost = self._n["in"] - self._n["kept"] - self._n["removed"]
        if lost:
            self._n["removed"] += lost
            self._n[f"removed:{UNACCOUNTED}"] += lost
        for name, value in self._n.items():
            if value:
                self.stat_update(f"acct_{name}", value=value)
        if self.ledger_folder is not None:
            with self.ledger_folder.open(f"{self.key}/{rank:05d}.jsonl.gz", "wt", compression="gzip") as f:
                for rec in self._ledger:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if self.audit_folder is not None:
            with self.audit_folder.open(f"{self.key}/{rank:05d}.jsonl", "wt") as f:
                for rec in self._audit.records():
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")


class ReaderAccounting:
    """Counters a reader step keeps: documents read (with bytes) and unreadable records by reason."""

    def __init__(self, step: PipelineStep):
        self.step = step
        self.n = Counter()

    def read(self, doc: Document) -> None:
        self.n["read"] += 1
        self.n["read_bytes"] += utf8_len(doc.text)

    def unreadable(self, reason: str, count: int = 1) -> None:
        self.n[f"unreadable:{reason}"] += count

    def flush(self) -> None:
        for name, value in self.n.items():
            if value:
                self.step.stat_update(f"acct_{name}", value=value)
        self.n.clear()
