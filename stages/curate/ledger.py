"""The stage's books: per-step funnel rows from datatrove's merged stats, and the conservation law

    documents in = kept + removed (per filter, by reason) + unreadable (by reason)

checked link by link (every step's input is the previous step's output, every pass reads what the
previous one wrote) and end to end against the published files themselves.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stages.curate.accounting import UNACCOUNTED, Accounted
from stages.curate.readers import SourceReader, StagedReader


class ConservationError(RuntimeError):
    pass


def _total(value) -> int:
    if isinstance(value, dict):
        return int(value.get("total", 0))
    return int(value or 0)


def acct_counts(stats: dict) -> Counter:
    """``acct_*`` totals of one step's merged stats, without the prefix."""
    return Counter({k[5:]: _total(v) for k, v in stats.get("stats", {}).items() if k.startswith("acct_")})


@dataclass
class Row:
    """One filter's line in the funnel."""

    branch: str
    step: str
    docs_in: int
    kept: int
    removed: int
    bytes_in: int
    kept_bytes: int
    removed_bytes: int
    reasons: dict[str, int] = field(default_factory=dict)
    reason_bytes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)  # step-specific counters (pii, secrets, ...)

    def as_dict(self) -> dict:
        return {"branch": self.branch, "step": self.step, "in": self.docs_in, "kept": self.kept,
                "removed": self.removed, "in_bytes": self.bytes_in, "kept_bytes": self.kept_bytes,
                "removed_bytes": self.removed_bytes, "removed_by_reason": self.reasons,
                "removed_bytes_by_reason": self.reason_bytes, **({"counters": self.extra} if self.extra else {})}


@dataclass
class BranchBooks:
    branch: str
    docs_read: int = 0
    bytes_read: int = 0
    unreadable: Counter = field(default_factory=Counter)
    rows: list[Row] = field(default_factory=list)
    published_docs: int = 0        # counted by the last writer
    published_bytes: int = 0
    files_docs: int = 0             # counted by reading the published files back
    step_stats: dict[str, dict] = field(default_factory=dict)  # other datatrove counters by step

    @property
    def docs_in(self) -> int:
        return self.docs_read + sum(self.unreadable.values())

    @property
    def removed(self) -> int:
        return sum(r.removed for r in self.rows)

    def removed_by_reason(self) -> Counter:
        c = Counter()
        for r in self.rows:
            c.update({f"{r.step}/{k}": v for k, v in r.reasons.items()})
        return c

    def as_dict(self) -> dict:
        return {"docs_in": self.docs_in, "read": self.docs_read, "read_bytes": self.bytes_read,
                "unreadable": dict(sorted(self.unreadable.items())), "kept": self.files_docs,
                "kept_bytes": self.published_bytes, "removed": self.removed,
                "funnel": [r.as_dict() for r in self.rows], "step_stats": self.step_stats}


_EXTRA_KEYS = ("pii_", "secrets_", "language_", "no_url", "duplicates", "to_remove", "clusters",
               "cluster_size", "total_matches", "scored")


def build_books(branch: str, passes, out_dir: Path) -> BranchBooks:
    """Read the passes' stats (``passes.PassResult``), check every link, count the published files."""
    books = BranchBooks(branch)
    problems: list[str] = []
    written: dict[str, int] = {}  # intermediate folder key -> docs its writer kept
    for p in passes:
        if len(p.steps) != len(p.stats):
            raise ConservationError(f"{branch} pass {p.name}: {len(p.stats)} stats entries for "
                                    f"{len(p.steps)} steps")
        flow: int | None = None
        for step, stats in zip(p.steps, p.stats, strict=True):
            n = acct_counts(stats)
            extra = {k: _total(v) for k, v in stats.get("stats", {}).items() if k.startswith(_EXTRA_KEYS)}
            if extra:
                books.step_stats[f"{p.name}/{getattr(step, 'key', step.name)}"] = extra
            if isinstance(step, (SourceReader, StagedReader)):
                unread = Counter({k.split(":", 1)[1]: v for k, v in n.items() if k.startswith("unreadable:")})
                if isinstance(step, SourceReader):
                    books.docs_read += n["read"]
                    books.bytes_read += n["read_bytes"]
                    books.unreadable.update(unread)
                else:  # reading back a stage: must get exactly what the previous pass wrote
                    src = f"_write_{Path(str(step.folder.path)).name}"
                    if written.get(src) != n["read"] or unread:
                        problems.append(f"{p.name}: read {n['read']} docs back from {src[7:]} (unreadable "
                                        f"{dict(unread)}), its writer kept {written.get(src)}")
                flow = n["read"]
                continue
            if not isinstance(step, Accounted):
                continue
            if flow is not None and n["in"] != flow:
                problems.append(f"{p.name}/{step.key}: {n['in']} docs in, the step before passed on {flow}")
            if n.get(f"removed:{UNACCOUNTED}"):
                problems.append(f"{p.name}/{step.key}: {n[f'removed:{UNACCOUNTED}']} docs went in and "
                                "neither came out nor were reported removed")
            flow = n["kept"]
            if step.key.startswith("_"):  # bookkeeping: writers
                written[step.key] = n["kept"]
                if step.key == "_publish":
                    books.published_docs, books.published_bytes = n["kept"], n["kept_bytes"]
                continue
            books.rows.append(Row(
                branch, step.key, n["in"], n["kept"], n["removed"], n["in_bytes"], n["kept_bytes"],
                n["removed_bytes"],
                reasons={k.split(":", 1)[1]: v for k, v in sorted(n.items()) if k.startswith("removed:")},
                reason_bytes={k.split(":", 1)[1]: v for k, v in sorted(n.items()) if k.startswith("removed_bytes:")},
                extra=extra))
    books.files_docs = count_published(out_dir)
    if books.files_docs != books.published_docs:
        problems.append(f"the published files hold {books.files_docs} docs, the writer counted "
                        f"{books.published_docs}")
    lhs = books.docs_in
    rhs = books.files_docs + books.removed + sum(books.unreadable.values())
    if lhs != rhs:
        problems.append(f"docs in {lhs} != kept {books.files_docs} + removed {books.removed} + unreadable "
                        f"{sum(books.unreadable.values())} = {rhs}")
    if problems:
        raise ConservationError(f"curate {branch}: documents unaccounted for:\n  - " + "\n  - ".join(problems))
    return books


def count_published(folder: Path) -> int:
    n = 0
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            n += sum(1 for _ in fh)
    return n


def publish_ledger(books: BranchBooks, ledger_dir: Path, out_file: Path) -> dict[str, dict[str, int]]:
    """Merge the steps' per-task removal ledgers into ``out_file`` (one JSON line per removed document,
    in funnel order), check it against the funnel (every removal once, with the funnel's reason) and
    return the per-language funnel: {language: {"in": n, "<step>": removed, ..., "kept": n}}."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    problems, by_lang = [], {}
    seen: set[tuple[str, str]] = set()
    with gzip.open(out_file, "wt", encoding="utf-8") as out:
        for row in books.rows:
            counts = Counter()
            for f in sorted((ledger_dir / row.step).glob("*.jsonl.gz")):
                with gzip.open(f, "rt", encoding="utf-8") as fh:
                    for line in fh:
                        rec = json.loads(line)
                        counts[rec["reason"]] += 1
                        key = (rec["id"], rec["url"] or "")
                        if key in seen:
                            problems.append(f"{row.step}: {rec['id']} is in the ledger twice")
                        seen.add(key)
                        lang = rec.get("language") or "unknown"
                        by_lang.setdefault(lang, Counter())[row.step] += 1
                        out.write(line)
            if dict(counts) != row.reasons:
                problems.append(f"{row.step}: the ledger says {dict(counts)}, the funnel {row.reasons}")
    if problems:
        raise ConservationError(f"curate {books.branch}: removal ledger does not match the funnel:\n  - "
                                + "\n  - ".join(problems[:20]))
    for lang, n in published_languages(out_file.parent.parent / books.branch).items():
        by_lang.setdefault(lang, Counter())["kept"] += n
    funnel = {}
    for lang, c in sorted(by_lang.items(), key=lambda kv: -sum(kv[1].values())):
        funnel[lang] = {"in": sum(c.values()), **{r.step: c[r.step] for r in books.rows if c[r.step]},
                        "kept": c["kept"]}
    return funnel


def published_languages(folder: Path) -> Counter:
    n = Counter()
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                n[json.loads(line).get("metadata", {}).get("language") or "unknown"] += 1
    return n


def find_removal(out: Path, key: str) -> list[dict]:
    """Ledger lines (any branch) whose id or URL/path is ``key``; a kept document gives
    ``{"kept": branch}`` lines instead."""
    hits = []
    for f in sorted((out / "removed").glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if key in line:
                    rec = json.loads(line)
                    if key in (rec["id"], rec["url"]):
                        hits.append({"branch": f.name.split(".")[0], **rec})
    if hits:
        return hits
    for branch in ("web", "code"):
        for f in sorted((out / branch).glob("*.jsonl.gz")):
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                for line in fh:
                    if key in line:
                        rec = json.loads(line)
                        meta = rec.get("metadata", {})
                        if key in (rec.get("id"), meta.get("url"), meta.get("path")):
                            hits.append({"branch": branch, "kept": True, "id": rec.get("id"),
                                         "url": meta.get("url") or meta.get("path"),
                                         "language": meta.get("language")})
    return hits
