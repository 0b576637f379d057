"""What each branch reads: the local Python environment's candidate files and the configured
file sources, as "units" (one file each) dealt to the executor's tasks.

A unit is a small dict the reader step knows how to open:
    {"kind": "local", "path", "package", "role": "metadata"|"doc"|"code", "size"}
    {"kind": "jsonl"|"parquet"|"warc", "uri", "size", "text_key", "id_key", "limit"}

Units are listed on the driver, in a deterministic order, and dealt to ``tasks`` shards by size
(longest-processing-time first), so the tasks get similar work and the same config always gives the
same shards, whatever the number of workers.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from stages.curate.config import CurateConfig, FileSource, LocalSource, TreeSource, WarcSource

# prose a package ships for people to read
_DOC_NAME = re.compile(
    r"^(readme|changes|changelog|history|news|authors|contributing|contributors|licen[cs]e|copying|"
    r"notice|copyright|thanks|security|code_of_conduct)([._-].*)?$", re.I)
_DOC_EXT = (".md", ".markdown", ".rst")
_DOC_DIRS = {"doc", "docs", "documentation"}
_FORMAT_EXTS = {"jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz"),
                "parquet": (".parquet",),
                "warc": (".warc", ".warc.gz", ".wet", ".wet.gz", ".arc.gz")}


@dataclass
class BranchInput:
    branch: str
    units: list[dict] = field(default_factory=list)
    # candidates that the caps left out (not read, not counted as input)
    not_selected: dict[str, int] = field(default_factory=lambda: {"docs": 0, "bytes": 0})

    @property
    def bytes(self) -> int:
        return sum(u["size"] for u in self.units)


def plan_inputs(cfg: CurateConfig) -> dict[str, BranchInput]:
    """Units per enabled branch, from every source feeding it."""
    plans = {b: BranchInput(b) for b in cfg.branches()}
    for source in cfg.sources:
        if isinstance(source, LocalSource):
            for branch in plans:
                if getattr(source, branch):
                    units, skipped = local_units(branch, source, cfg.code.extensions)
                    plans[branch].units += units
                    plans[branch].not_selected["docs"] += skipped["docs"]
                    plans[branch].not_selected["bytes"] += skipped["bytes"]
        elif isinstance(source, TreeSource):
            if source.branch in plans:
                plans[source.branch].units += tree_units(source)
        elif isinstance(source, (FileSource, WarcSource)):
            branch = source.branch if isinstance(source, FileSource) else "web"
            if branch in plans:
                plans[branch].units += file_units(source)
    return plans


def shard_units(units: list[dict], tasks: int) -> list[list[dict]]:
    """Deal units to ``tasks`` shards, largest first onto the lightest shard (deterministic)."""
    shards: list[list[dict]] = [[] for _ in range(tasks)]
    load = [0] * tasks
    for unit in sorted(units, key=lambda u: (-u["size"], _unit_key(u))):
        i = min(range(tasks), key=lambda j: (load[j], j))
        shards[i].append(unit)
        load[i] += max(unit["size"], 1)
    for shard in shards:  # read in a stable, file-system-like order
        shard.sort(key=_unit_key)
    return shards


def _unit_key(unit: dict) -> str:
    return unit.get("path") or unit.get("uri")


# -- the local environment ------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    path: str
    package: str
    role: str  # metadata | doc | code
    size: int


def local_candidates(branch: str, code_extensions: dict[str, str]) -> list[Candidate]:
    """Every installed distribution's candidate files for ``branch``, deduplicated by path."""
    seen: set[str] = set()
    out: list[Candidate] = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name") or "unknown"
        for f in dist.files or ():
            rel = str(f)
            role = _role(rel, branch, code_extensions)
            if role is None:
                continue
            path = os.path.normpath(str(f.locate()))
            if path in seen:
                continue
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            seen.add(path)
            out.append(Candidate(path, name, role, size))
    out.sort(key=lambda c: c.path)
    return out


def _role(rel: str, branch: str, code_extensions: dict[str, str]) -> str | None:
    base = rel.rsplit("/", 1)[-1]
    lower = base.lower()
    if branch == "code":
        ext = os.path.splitext(lower)[1]
        return "code" if ext in code_extensions else None
    if rel.endswith(".dist-info/METADATA") or rel.endswith(".egg-info/PKG-INFO"):
        return "metadata"
    if "__pycache__" in rel or lower.endswith((".py", ".pyc", ".so", ".json", ".html")):
        return None
    if _DOC_NAME.match(base) or lower.endswith(_DOC_EXT):
        return "doc"
    parts = {p.lower() for p in rel.split("/")[:-1]}
    if lower.endswith(".txt") and parts & _DOC_DIRS:
        return "doc"
    return None


def select_local(candidates: list[Candidate], max_docs: int, max_bytes: int, min_bytes: int,
                 max_file_bytes: int, package_share: float) -> tuple[list[Candidate], dict]:
    """Largest first within [min_bytes, max_file_bytes] until the caps, at most ``package_share``
    of the byte cap per package. Returns (selected, counts of candidates left out by the caps)."""
    per_package: dict[str, int] = defaultdict(int)
    selected: list[Candidate] = []
    total = 0
    skipped = {"docs": 0, "bytes": 0}
    package_cap = package_share * max_bytes
    for c in sorted(candidates, key=lambda c: (-c.size, c.path)):
        if not min_bytes <= c.size <= max_file_bytes:
            continue
        if (len(selected) < max_docs and total + c.size <= max_bytes
                and per_package[c.package] + c.size <= package_cap):
            selected.append(c)
            total += c.size
            per_package[c.package] += c.size
        else:
            skipped["docs"] += 1
            skipped["bytes"] += c.size
    return selected, skipped


def local_units(branch: str, source: LocalSource, code_extensions: dict[str, str]) -> tuple[list[dict], dict]:
    cands = local_candidates(branch, code_extensions)
    web = branch == "web"
    selected, skipped = select_local(
        cands, source.max_web_docs if web else source.max_code_docs,
        source.max_web_bytes if web else source.max_code_bytes, source.min_doc_bytes,
        source.max_web_file_bytes if web else source.max_code_file_bytes, source.max_package_share)
    units = [{"kind": "local", "path": c.path, "package": c.package, "role": c.role, "size": c.size}
             for c in selected]
    return units, skipped


def tree_units(source: TreeSource) -> list[dict]:
    """One unit per file under a local folder (hidden folders and __pycache__ skipped)."""
    root = Path(source.path).expanduser()
    if not root.is_dir():
        raise SourceError(f"tree source {source.path!r} is not a folder")
    role = "code" if source.branch == "code" else "doc"
    units = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):
                units.append({"kind": "local", "source": "tree", "path": path, "package": root.name,
                              "role": role, "size": os.path.getsize(path)})
    return units


# -- file sources -------------------------------------------------------------------------------

class SourceError(ValueError):
    pass


def file_units(source: FileSource | WarcSource) -> list[dict]:
    """Expand a file source's path (file, folder or glob; local or fsspec URI) into units."""
    uris = expand_path(source.path, _FORMAT_EXTS[source.type])
    if not uris:
        raise SourceError(f"{source.type} source {source.path!r} matches no files "
                          f"(looked for {', '.join(_FORMAT_EXTS[source.type])})")
    extra = {"text_key": getattr(source, "text_key", "text"), "id_key": getattr(source, "id_key", "id"),
             "limit": source.limit}
    return [{"kind": source.type, "uri": uri, "size": size, **extra} for uri, size in uris]


def expand_path(path: str, extensions: tuple[str, ...]) -> list[tuple[str, int]]:
    """[(uri, size)] for a file, a folder (recursively, files with ``extensions``) or a glob."""
    fs, root = fsspec.core.url_to_fs(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def uri(p: str) -> str:
        return p if protocol in ("file", "local") else f"{protocol}://{p}"

    if any(ch in root for ch in "*?["):
        paths = fs.glob(root)
    elif fs.isdir(root):
        paths = [p for p in fs.find(root) if p.lower().endswith(extensions)]
    elif fs.exists(root):
        paths = [root]
    else:
        raise SourceError(f"source path {path!r} does not exist")
    out = []
    for p in sorted(paths):
        info = fs.info(p)
        if info.get("type") != "directory":
            out.append((uri(p), int(info.get("size") or 0)))
    return out


# -- the quality classifier's default reference set -------------------------------------------------

def python_docs() -> list[tuple[str, str]]:
    """(topic, text) pairs of the Python documentation shipped with CPython (``pydoc_data``)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip it
        raise SourceError("the 'python-docs' quality reference needs the standard library's "
                          "pydoc_data module, which this Python lacks; configure "
                          "web.quality.reference with a jsonl/parquet file instead") from e
    return sorted(topics.items())
