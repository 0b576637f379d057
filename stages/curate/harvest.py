"""What each branch reads: the local environment's candidate files (installed Python
distributions, system documentation folders) and the configured file sources, as "units" (one
file each) dealt to the executor's tasks.

A unit is a small dict the reader step knows how to open:
    {"kind": "local", "path", "package", "role": "metadata"|"doc"|"code", "size"}
        (``size`` is the text's size: a gzip-compressed document counts its uncompressed bytes)
    {"kind": "jsonl"|"parquet"|"warc", "uri", "size", "text_key", "id_key", "limit"}

Units are listed on the driver, in a deterministic order, and dealt to ``tasks`` shards by size
(longest-processing-time first), so the tasks get similar work and the same config always gives the
same shards, whatever the number of workers.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from stages.curate.config import CurateConfig, FileSource, LocalSource, TreeSource, WarcSource
from stages.curate.markup import detect_format

# prose a package ships for people to read
_DOC_NAME = re.compile(
    r"^(readme|changes|changelog|history|news|authors|contributing|contributors|licen[cs]e|copying|"
    r"notice|copyright|thanks|security|code_of_conduct)([._-].*)?$", re.I)
_DOC_EXT = (".md", ".markdown", ".rst")
_DOC_DIRS = {"doc", "docs", "documentation"}
# records kept for the record rather than written to be read: change logs, release notes, licence
# and copyright notices, contributor lists (the filters drop most of them; licences are duplicates)
_RECORD_NAME = re.compile(
    r"^(changes|changelog|history|news|authors|contributors|licen[cs]e|copying|notice|copyright|thanks|"
    r"security|code_of_conduct|contributing)([._-].*)?$", re.I)
# what a system documentation folder holds for people to read (each possibly gzip-compressed):
# the doc-named files above, markup, plain text, HTML manuals, GNU Info manuals (split ones too)
_SYSTEM_DOC_EXT = re.compile(r"\.(md|markdown|rst|txt|html?|info(-\d+)?)$", re.I)
_FORMAT_EXTS = {"jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz"),
                "parquet": (".parquet",),
                "warc": (".warc", ".warc.gz", ".wet", ".wet.gz", ".arc.gz")}


@dataclass
class BranchInput:
    branch: str
    units: list[dict] = field(default_factory=list)
    # candidates that the caps left out (not read, not counted as input)
    not_selected: dict[str, int] = field(default_factory=lambda: {"docs": 0, "bytes": 0})
    # configured local documentation folders this machine does not have
    missing_roots: list[str] = field(default_factory=list)

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
                    if branch == "web":
                        plans[branch].missing_roots += [r for r in source.doc_roots if not os.path.isdir(r)]
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
    system: bool = False  # from a system documentation folder (``LocalSource.doc_roots``)

    @property
    def is_manual(self) -> bool:
        """A GNU Info manual: read as one document per node, so its file size is no document's."""
        name = self.path[:-3] if self.path.lower().endswith(".gz") else self.path
        return bool(re.search(r"\.info(-\d+)?$", name, re.I))

    @property
    def is_man_page(self) -> bool:
        return is_man_page(self.path)

    @property
    def is_record(self) -> bool:
        """A change log, licence or similar record (see ``select_local``)."""
        name = os.path.basename(self.path)
        name = name[:-3] if name.lower().endswith(".gz") else name
        return bool(_RECORD_NAME.match(name) or "changelog" in self.path.lower())


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


def system_doc_candidates(roots: list[str]) -> list[Candidate]:
    """Documentation files under system folders such as /usr/share/doc, /usr/share/info and
    /usr/share/man (the English pages: ``man/man<section>/``, not ``man/<language>/``).

    The package is the first folder under the root (Debian's layout: /usr/share/doc/<package>/),
    or, for a manual or a man page, its name up to the first separator (``sed.info.gz`` -> ``sed``,
    ``git-rebase.1.gz`` -> ``git``). Symbolic links are not followed (Debian links a package's doc
    folder to its source package's), and a file reached twice is listed once.
    """
    seen: set[str] = set()
    out: list[Candidate] = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                man = is_man_page(path)
                if os.path.islink(path) or not (man or _is_system_doc(name)):
                    continue
                real = os.path.realpath(path)
                if real in seen:
                    continue
                size = text_size(path)
                if size is None:
                    continue
                seen.add(real)
                rel = os.path.relpath(path, root)
                by_name = man or os.sep not in rel
                package = re.split(r"[._-]", name, maxsplit=1)[0] if by_name else rel.split(os.sep, 1)[0]
                out.append(Candidate(path, package, "doc", size, system=True))
    out.sort(key=lambda c: c.path)
    return out


def is_man_page(path: str) -> bool:
    return detect_format(name=path[:-3] if path.lower().endswith(".gz") else path) == "man"


def _is_system_doc(name: str) -> bool:
    base = name[:-3] if name.lower().endswith(".gz") else name
    return bool(_DOC_NAME.match(base) or _SYSTEM_DOC_EXT.search(base))


def text_size(path: str) -> int | None:
    """Bytes of text in a file: its size, or for gzip its uncompressed size (the trailer's ISIZE,
    exact below 4 GiB for a single-member file; a damaged file is counted when it is read)."""
    try:
        size = os.stat(path).st_size
        if not path.lower().endswith(".gz") or size < 18:
            return size
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return struct.unpack("<I", f.read(4))[0]
    except OSError:
        return None


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
                 max_file_bytes: int, package_share: float,
                 max_man_page_bytes: int | None = None) -> tuple[list[Candidate], dict]:
    """Within [min_bytes, max_file_bytes] (``max_man_page_bytes`` for man pages), until the caps
    and at most ``package_share`` of the byte cap per package, in this order: the Python
    distributions' files (their prose, and their licences and change logs, many of them
    duplicates for the dedup to find), then the system's GNU Info manuals, its man pages, its
    other documents written to be read (HTML and Markdown manuals, READMEs, docs), and last its
    records (change logs, copyright notices); largest first within each. Info manuals are read
    one node per document, so ``max_file_bytes`` does not bound them.

    The order follows how much of each kind the stage keeps (measured on a Debian machine with
    the default filters and dedup: Info manuals ~26% of their bytes, man pages of 2-50 KB ~20%
    (larger ones 7-10%: one long option list fails a whole page), the Python prose ~5-10%, other
    system docs 0-5%, HTML manuals ~1%, system change logs and copyright files ~0%), so the caps
    spend the time budget where the text is. Returns (selected, counts of candidates left out by
    the caps)."""
    per_package: dict[str, int] = defaultdict(int)
    selected: list[Candidate] = []
    total = 0
    skipped = {"docs": 0, "bytes": 0}
    package_cap = package_share * max_bytes
    def rank(c: Candidate) -> int:
        if not c.system:
            return 0
        return 1 if c.is_manual else 2 if c.is_man_page else 4 if c.is_record else 3

    def too_large(c: Candidate) -> bool:
        if c.is_manual:
            return False
        return c.size > (max_man_page_bytes if c.is_man_page and max_man_page_bytes else max_file_bytes)

    for c in sorted(candidates, key=lambda c: (rank(c), -c.size, c.path)):
        if c.size < min_bytes or too_large(c):
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
    if web and source.doc_roots:
        listed = {c.path for c in cands}
        cands += [c for c in system_doc_candidates(source.doc_roots) if c.path not in listed]
    selected, skipped = select_local(
        cands, source.max_web_docs if web else source.max_code_docs,
        source.max_web_bytes if web else source.max_code_bytes, source.min_doc_bytes,
        source.max_web_file_bytes if web else source.max_code_file_bytes, source.max_package_share,
        source.max_man_page_bytes)
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
