"""A real, offline corpus in the curate stage's output format, from the local Python installation.

Prose ("web"): the long descriptions of the installed distributions (READMEs: English and other
languages, Markdown and reStructuredText, licence texts). Code ("code"): the standard library's
.py files. Both exist on every machine that installed the project, so tests and benchmarks run
on text nobody on the team wrote, without a download.

Layout written (what ``stages.curate`` produces)::

    <out>/web/00000.jsonl.gz, ...    {"id", "text", "metadata"} per line
    <out>/code/00000.jsonl.gz, ...
    <out>/stats.json
"""

from __future__ import annotations

import gzip
import json
import random
import sysconfig
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path


def web_documents() -> Iterator[dict]:
    seen = set()
    dists = sorted(metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower())
    for dist in dists:
        name = dist.metadata.get("Name") or ""
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if not name or name.lower() in seen or not text.strip():
            continue
        seen.add(name.lower())
        yield {"id": f"pypi/{name}", "text": text,
               "metadata": {"source": "package-description", "package": name,
                            "version": dist.metadata.get("Version")}}


def code_documents(seed: int = 0) -> Iterator[dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py")
                   if not {"site-packages", "dist-packages", "__pycache__"} & set(p.parts))
    random.Random(seed).shuffle(files)
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            rel = p.relative_to(stdlib).as_posix()
            yield {"id": f"stdlib/{rel}", "text": text,
                   "metadata": {"source": "python-stdlib", "path": rel, "language": "python"}}


def _take(docs: Iterator[dict], max_bytes: int) -> list[dict]:
    out, size = [], 0
    for d in docs:
        if size >= max_bytes:
            break
        out.append(d)
        size += len(d["text"].encode("utf-8"))
    return out


def write_local_corpus(out: str | Path, web_bytes: int = 2_000_000, code_bytes: int = 2_000_000,
                       files_per_source: int = 2, seed: int = 0) -> dict:
    """Write about ``web_bytes`` of prose and ``code_bytes`` of code; returns the stats."""
    out = Path(out)
    stats = {}
    for source, docs in (("web", _take(web_documents(), web_bytes)),
                         ("code", _take(code_documents(seed), code_bytes))):
        (out / source).mkdir(parents=True, exist_ok=True)
        n_files = max(1, min(files_per_source, len(docs)))
        for k in range(n_files):
            with gzip.open(out / source / f"{k:05d}.jsonl.gz", "wt", encoding="utf-8") as f:
                for d in docs[k::n_files]:
                    f.write(json.dumps(d, ensure_ascii=False) + "\n")
        stats[source] = {"documents": len(docs), "bytes": sum(len(d["text"].encode()) for d in docs),
                         "files": n_files}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
