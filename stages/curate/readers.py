"""Reader steps: turn a task's units into Documents, and count every record that cannot be one.

datatrove's own JSONL/WARC readers log and skip bad lines, and a truncated gzip ends the task with
a traceback; here every record is either a Document or an ``unreadable`` count with a reason
(invalid_utf8, invalid_unicode, malformed_json, truncated_gzip, not_gzip, empty_file, duplicate_id,
binary, empty, too_large, ...), and the task goes on.

``invalid_unicode``: JSON can spell strings no UTF-8 text holds (an escaped lone surrogate,
``"\ud800"``); such a record would fail fastText and the JSON writer downstream, deterministically,
so it is counted here instead. ``duplicate_id``: a second record with an id this task already read.
"""

from __future__ import annotations

import email.parser
import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.readers.base import BaseReader
from datatrove.utils.logging import logger

from stages.curate.accounting import ReaderAccounting, utf8_len
from stages.curate.markup import detect_format

# errors a damaged compressed stream raises part-way through
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)
_MAGIC = {".gz": b"\x1f\x8b", ".zst": b"\x28\xb5\x2f\xfd", ".bz2": b"BZh", ".xz": b"\xfd7zXZ\x00"}
_SURROGATE = re.compile("[\ud800-\udfff]")


class Unreadable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SourceReader(BaseReader):
    """Reads the units dealt to this task (see ``harvest.shard_units``)."""

    name = "📚 Sources"

    def __init__(self, shards: list[list[dict]], branch: str, max_doc_bytes: int):
        super().__init__()
        self.shards = shards
        self.branch = branch
        self.max_doc_bytes = max_doc_bytes

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != len(self.shards):
            raise ValueError(f"units were dealt to {len(self.shards)} tasks but the executor runs {world_size}")
        acct = ReaderAccounting(self)
        seen_ids: set[str] = set()
        for unit in self.shards[rank]:
            self.stat_update("units")
            with self.track_time("unit"):
                for item in self.read_unit(unit):
                    if isinstance(item, str):
                        acct.unreadable(item)
                        continue
                    if item.id in seen_ids:
                        acct.unreadable("duplicate_id")
                        continue
                    seen_ids.add(item.id)
                    if not item.text.strip():
                        acct.unreadable("empty")
                        continue
                    if utf8_len(item.text) > self.max_doc_bytes:
                        acct.unreadable("too_large")
                        continue
                    item.metadata.setdefault("branch", self.branch)
                    acct.read(item)
                    yield item
        acct.flush()

    def read_unit(self, unit: dict) -> Iterator[Document | str]:
        """Documents, or unreadable reasons, from one unit."""
        return getattr(self, f"_read_{unit['kind']}")(unit)

    # -- the local environment ----------------------------------------------------------------------
    def _read_local(self, unit: dict) -> Iterator[Document | str]:
        path = unit["path"]
        compressed = path.lower().endswith(".gz")
        # a compressed file's listed size comes from its trailer, which a damaged file garbles:
        # its size is checked on the bytes it actually holds
        if unit["size"] > self.max_doc_bytes and not compressed:
            yield "too_large"
            return
        try:
            with (gzip.open if compressed else open)(path, "rb") as f:
                raw = f.read(self.max_doc_bytes + 1)
        except _STREAM_ERRORS:
            yield _stream_error_reason(path) if compressed else "io_error"
            return
        if len(raw) > self.max_doc_bytes:  # a compressed file can hold more than its listed size
            yield "too_large"
            return
        try:
            text = decode_text(raw)
        except Unreadable as e:
            yield e.reason
            return
        meta = {"source": unit.get("source", "local"), "path": path, "package": unit["package"],
                "role": unit["role"]}
        if unit["role"] == "metadata":
            text, content_type = metadata_description(text)
            meta["format"] = detect_format(content_type=content_type, text=text)
        elif unit["role"] == "doc":
            meta["format"] = detect_format(name=path[:-3] if compressed else path, text=text)
        if meta.get("format") == "plain":
            meta["format"] = "text"  # a file as its author typed it: paragraphs hard-wrapped
        doc_id = f"{meta['source']}:{_short_path(path)}"
        if meta.get("format") == "info":
            # a manual is a book; its nodes are its pages, as an Info reader (or the HTML manual)
            # shows them, and the filters judge pages: one shell example should not drop a book
            for node, node_text in info_nodes(text):
                yield Document(text=node_text, id=f"{doc_id}#{node}", metadata={**meta, "node": node})
            return
        yield Document(text=text, id=doc_id, metadata=meta)

    # -- JSONL ----------------------------------------------------------------------------------------
    def _read_jsonl(self, unit: dict) -> Iterator[Document | str]:
        n = 0
        try:
            for lineno, line in _lines(unit["uri"]):
                if unit.get("limit") and n >= unit["limit"]:
                    return
                if not line.strip():
                    continue
                n += 1
                try:
                    record = json.loads(decode_text(line, allow_nul=True))
                except Unreadable as e:
                    yield e.reason
                    continue
                except ValueError:
                    yield "malformed_json"
                    continue
                yield self._record_document(record, unit, f"{unit['uri']}#{lineno}")
            if n == 0:
                yield "empty_file"
        except _STREAM_ERRORS as e:
            logger.warning(f"{unit['uri']}: stream ends early ({e}); the rest of the file is lost")
            yield _stream_error_reason(unit["uri"]) if _compressed(unit["uri"]) else "io_error"

    # -- Parquet --------------------------------------------------------------------------------------
    def _read_parquet(self, unit: dict) -> Iterator[Document | str]:
        import fsspec
        import pyarrow.parquet as pq

        n = 0
        try:
            with fsspec.open(unit["uri"], "rb") as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                if unit["text_key"] not in names:
                    logger.warning(f"{unit['uri']}: no column {unit['text_key']!r} (columns: {names})")
                    yield "no_text_column"
                    return
                if pf.metadata.num_rows == 0:
                    yield "empty_file"
                for batch in pf.iter_batches(batch_size=1024):
                    for row in batch.to_pylist():
                        if unit.get("limit") and n >= unit["limit"]:
                            return
                        n += 1
                        yield self._record_document(row, unit, f"{unit['uri']}#{n - 1}")
        except Exception as e:  # pyarrow raises several types for damaged files
            logger.warning(f"{unit['uri']}: unreadable parquet ({type(e).__name__}: {e})")
            yield "corrupt_parquet"

    def _record_document(self, record, unit: dict, default_id: str) -> Document | str:
        if not isinstance(record, dict):
            return "malformed_json"
        text = record.pop(unit["text_key"], None)
        if text is None:
            return "no_text"
        if not isinstance(text, str):
            return "text_not_a_string"
        doc_id = record.pop(unit["id_key"], None) or default_id
        meta = record.pop("metadata", None)
        meta = _int64_safe(dict(meta)) if isinstance(meta, dict) else {}
        meta.update({k: _int64_safe(v) for k, v in record.items() if isinstance(v, (str, int, float, bool))})
        meta.update(source=unit["kind"], file=unit["uri"])
        meta.setdefault("format", "plain")
        doc_id = str(doc_id)
        if not _valid_unicode(text, doc_id, json.dumps(meta, ensure_ascii=False, default=str)):
            return "invalid_unicode"
        return Document(text=text, id=doc_id, metadata=meta)

    # -- WARC / WET ---------------------------------------------------------------------------------------
    def _read_warc(self, unit: dict) -> Iterator[Document | str]:
        import fsspec
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        n = 0
        try:
            with fsspec.open(unit["uri"], "rb") as f:
                if not f.read(1):
                    yield "empty_file"
                    return
                f.seek(0)
                for record in ArchiveIterator(f):
                    if record.rec_type not in ("response", "conversion"):
                        continue  # requests, metadata, warcinfo: not documents
                    if unit.get("limit") and n >= unit["limit"]:
                        return
                    n += 1
                    yield warc_document(record)
        except ArchiveLoadFailed as e:
            logger.warning(f"{unit['uri']}: damaged WARC record ({e}); the rest of the file is lost")
            yield "corrupt_warc"
        except _STREAM_ERRORS as e:
            logger.warning(f"{unit['uri']}: stream ends early ({e}); the rest of the file is lost")
            yield _stream_error_reason(unit["uri"]) if _compressed(unit["uri"]) else "io_error"


class StagedReader(BaseReader):
    """Reads back this task's own intermediate file (``{rank:05d}.jsonl.gz``), in order.

    Dedup removal lists index documents by their position in a task's stream, so task ``r`` must
    read exactly the file task ``r`` wrote (datatrove's JsonlReader re-deals files by position and
    would shift when a task wrote nothing).
    """

    name = "📂 Staged"

    def __init__(self, folder: DataFolderLike):
        super().__init__()
        self.folder = get_datafolder(folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        acct = ReaderAccounting(self)
        name = f"{rank:05d}.jsonl.gz"
        if self.folder.exists(name):
            with self.folder.open(name, "rt", compression="gzip") as f:
                for line in f:
                    try:
                        d = json.loads(line)
                        doc = Document(text=d["text"], id=d["id"], metadata=d.get("metadata") or {})
                    except (ValueError, KeyError):
                        acct.unreadable("malformed_json")
                        continue
                    acct.read(doc)
                    yield doc
        acct.flush()


def warc_document(record) -> Document | str:
    """A WARC response (HTML) or WET conversion (plain text) record as a Document."""
    headers = record.rec_headers
    url = headers.get_header("WARC-Target-URI")
    if record.rec_type == "conversion":
        fmt, charset = "plain", None
    else:
        ctype = (record.http_headers.get_header("Content-Type") if record.http_headers else None) or ""
        payload = headers.get_header("WARC-Identified-Payload-Type") or ctype
        if "html" not in payload.lower():
            return "not_html"
        fmt = "html"
        charset = ctype.lower().partition("charset=")[2].split(";")[0].strip() or None
    body = record.content_stream().read()
    try:
        text = decode_text(body, charset=charset, allow_nul=True)
    except Unreadable as e:
        return e.reason
    meta = {"source": "warc", "url": url, "date": headers.get_header("WARC-Date"), "format": fmt}
    return Document(text=text, id=headers.get_header("WARC-Record-ID") or url, metadata=meta)


# -- helpers ------------------------------------------------------------------------------------------

def decode_text(raw: bytes, charset: str | None = None, allow_nul: bool = False) -> str:
    """Strict decoding: UTF-8 (or the declared charset); NUL bytes mean a binary file."""
    if not allow_nul and b"\x00" in raw[:8192]:
        raise Unreadable("binary")
    for enc in filter(None, (charset, "utf-8")):
        try:
            return raw.decode(enc)
        except (UnicodeDecodeError, LookupError):
            continue
    if charset is not None:  # a web page that lies about its charset: let a detector try
        try:
            from charset_normalizer import from_bytes

            best = from_bytes(raw).best()
            if best is not None:
                return str(best)
        except ImportError:
            pass
    raise Unreadable("invalid_utf8")


def info_nodes(text: str) -> Iterator[tuple[str, str]]:
    """(node name, text) of each node of a GNU Info file; the file's preamble is node "Top-preamble".

    The parts after ``\x1f`` that are no node (the tag table, an indirect table of split files) are
    the format's index, not text, and are left out like a WARC file's request records."""
    for i, part in enumerate(text.split("\x1f")):
        body = part.lstrip("\n")
        header, _, rest = body.partition("\n")
        node = _INFO_NODE.search(header) if header.startswith("File:") else None
        if node:
            yield node.group(1).strip(), rest
        elif i == 0 and body.strip():
            yield "Top-preamble", body


_INFO_NODE = re.compile(r"Node:\s*([^,\t]+)")


def metadata_description(text: str) -> tuple[str, str | None]:
    """(long description, its content type) from a METADATA / PKG-INFO file."""
    msg = email.parser.Parser().parsestr(text)
    body = msg.get_payload()
    if not isinstance(body, str) or not body.strip():
        body = msg.get("Description", "") or ""
        # the legacy header form indents continuation lines with 8 spaces or "|"
        body = "\n".join(line[8:] if line.startswith(" " * 8) else line.lstrip("|")
                         for line in body.splitlines())
    return body, msg.get("Description-Content-Type")


def _lines(uri: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) from a possibly compressed file, local or remote."""
    import fsspec

    with fsspec.open(uri, "rb", compression="infer") as f:
        yield from enumerate(f)


def _compressed(uri: str) -> bool:
    return uri.lower().endswith(tuple(_MAGIC))


def _stream_error_reason(uri: str) -> str:
    """A compressed file that fails: cut short (``truncated_gzip``), or never compressed at all
    (``not_gzip``: a plain file named .gz, told apart by its magic bytes)."""
    import fsspec

    magic = next((m for ext, m in _MAGIC.items() if uri.lower().endswith(ext)), None)
    try:
        with fsspec.open(uri, "rb") as f:
            head = f.read(len(magic or b""))
    except OSError:
        return "io_error"
    if magic is not None and head != magic:
        return "not_gzip" if uri.lower().endswith(".gz") else "not_compressed"
    return "truncated_gzip"


def _int64_safe(value):
    """JSON integers past 64 bits (which the orjson-based writers refuse, stopping the stage) as strings,
    inside nested metadata too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -2**63 <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {k: _int64_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int64_safe(v) for v in value]
    return value


def _valid_unicode(*strings: str) -> bool:
    """No lone surrogates (text UTF-8 cannot encode)."""
    return not any(not s.isascii() and _SURROGATE.search(s) for s in strings)


def _short_path(path: str) -> str:
    marker = f"{os.sep}site-packages{os.sep}"
    return path.split(marker, 1)[1] if marker in path else path
