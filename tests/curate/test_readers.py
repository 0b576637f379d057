"""Bad input is skipped and counted by reason; good records around it are still read."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.curate.config import FileSource, TreeSource, WarcSource
from stages.curate.harvest import file_units, shard_units, tree_units
from stages.curate.markup import to_plain_text
from stages.curate.readers import SourceReader
from tests.curate.conftest import UDHR


def read_all(units: list[dict], max_doc_bytes: int = 10_000, branch: str = "web"):
    reader = SourceReader([units], branch, max_doc_bytes)
    docs = list(reader.run(None, 0, 1))
    counts = {k[len("acct_"):]: v.total for k, v in reader.stats.stats.items() if k.startswith("acct_")}
    unreadable = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("unreadable:")}
    return docs, unreadable, counts


def test_jsonl_bad_lines_are_counted(tmp_path):
    lines = [json.dumps({"text": UDHR["en"], "id": "good-1", "url": "https://a.org"}).encode(),
             b'{"text": "caf\xe9 au lait"}',                          # invalid UTF-8
             b'{"text": "unterminated',                                 # malformed JSON
             json.dumps({"text": "   "}).encode(),                      # empty
             json.dumps({"text": "x" * 20_000}).encode(),               # over the size cap
             json.dumps({"body": "no text field"}).encode(),            # no text
             json.dumps([1, 2, 3]).encode(),                            # not an object
             json.dumps({"text": 42}).encode(),                         # not a string
             json.dumps({"text": UDHR["fr"], "metadata": {"lang": "fr"}}).encode()]
    path = tmp_path / "mixed.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    docs, unreadable, counts = read_all(file_units(FileSource(type="jsonl", path=str(path))))
    assert [d.id for d in docs] == ["good-1", f"{path}#8"]
    assert docs[0].metadata["url"] == "https://a.org" and docs[1].metadata["lang"] == "fr"
    assert unreadable == {"invalid_utf8": 1, "malformed_json": 2, "empty": 1, "too_large": 1, "no_text": 1,
                          "text_not_a_string": 1}
    assert counts["read"] == 2


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(2000):
            f.write(json.dumps({"text": f"document {i} " + UDHR["en"], "id": str(i)}) + "\n")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    docs, unreadable, _ = read_all(file_units(FileSource(type="jsonl", path=str(path))))
    assert 0 < len(docs) < 2000
    assert [d.id for d in docs] == [str(i) for i in range(len(docs))]
    assert unreadable == {"truncated_gzip": 1}


def test_parquet_good_and_corrupt(tmp_path):
    pq.write_table(pa.table({"text": [UDHR["en"], None, UDHR["de"]], "id": ["a", "b", "c"],
                             "lang": ["en", "?", "de"]}), tmp_path / "good.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "nocol.parquet")
    docs, unreadable, _ = read_all(file_units(FileSource(type="parquet", path=str(tmp_path))))
    assert [(d.id, d.metadata["lang"]) for d in docs] == [("a", "en"), ("c", "de")]
    assert unreadable == {"no_text": 1, "corrupt_parquet": 1, "no_text_column": 1}


def test_code_tree_binary_and_invalid_files(tmp_path):
    tree = tmp_path / "repo"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "ok.py").write_text("def f(x):\n    return x + 1\n")
    (tree / "pkg" / "latin1.py").write_bytes("# caf\xe9\nx = 1\n".encode("latin-1"))
    (tree / "pkg" / "blob.so").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    (tree / "pkg" / "empty.py").write_text("\n\n")
    (tree / "pkg" / "huge.py").write_text("x = 1\n" * 5000)
    (tree / "pkg" / "__pycache__").mkdir()
    (tree / "pkg" / "__pycache__" / "ok.cpython-311.pyc").write_bytes(b"\x00\x01")
    units = tree_units(TreeSource(path=str(tree)))
    docs, unreadable, _ = read_all(units, max_doc_bytes=10_000, branch="code")
    assert [Path(d.metadata["path"]).name for d in docs] == ["ok.py"]
    assert docs[0].id.startswith("tree:") and docs[0].metadata["source"] == "tree"
    assert unreadable == {"invalid_utf8": 1, "binary": 1, "empty": 1, "too_large": 1}


def test_warc_extraction_yields_text(shared_data):
    """Real Common Crawl responses: the reader finds HTML records, trafilatura extracts text."""
    from stages.curate.web_filters import Extract
    from tests.curate.conftest import run_filter

    units = file_units(WarcSource(path=str(shared_data / "cc-warc")))
    docs, unreadable, _ = read_all(units, max_doc_bytes=2_000_000)
    assert len(docs) >= 30 and all(d.metadata["format"] == "html" and d.metadata["url"] for d in docs)
    kept, removed = run_filter(Extract(), docs)
    assert len(kept) >= 0.8 * len(docs), removed
    words = sum(len(d.text.split()) for d in kept)
    assert words > 10_000, "trafilatura extracted almost nothing (is lxml_html_clean installed?)"
    assert all("<div" not in d.text and "<script" not in d.text for d in kept)


def test_missing_source_path_is_a_clear_error(tmp_path):
    from stages.curate.harvest import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        file_units(FileSource(type="jsonl", path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(SourceError, match="matches no files"):
        file_units(FileSource(type="jsonl", path=str(tmp_path)))


def test_shards_are_balanced_and_deterministic():
    units = [{"kind": "local", "path": f"f{i}", "size": s} for i, s in enumerate([90, 10, 50, 40, 30, 70, 5, 5])]
    a = shard_units(units, 2)
    b = shard_units(list(reversed(units)), 2)
    assert a == b
    loads = [sum(u["size"] for u in s) for s in a]
    assert abs(loads[0] - loads[1]) <= 10
    assert sorted(u["path"] for s in a for u in s) == sorted(u["path"] for u in units)


def test_system_doc_folders_compressed_linked_and_split_manuals(tmp_path):
    """/usr/share/doc-style folders: gzip files count their text's size, links are not followed,
    Info manuals become one document per node, a damaged gzip is counted."""
    from stages.curate.harvest import system_doc_candidates

    root = tmp_path / "doc"
    (root / "sed").mkdir(parents=True)
    readme = ("Sed is a stream editor. " * 40).encode()
    (root / "sed" / "README.gz").write_bytes(gzip.compress(readme))
    (root / "sed" / "sed.info.gz").write_bytes(gzip.compress(
        b"\x1f\nFile: sed.info,  Node: Top,  Next: Intro\n\nThe top.\n"
        b"\x1f\nFile: sed.info,  Node: Intro,  Up: Top\n\nAn introduction.\n"))
    (root / "sed" / "NEWS.gz").write_bytes(gzip.compress(readme)[:30])  # cut short
    (root / "sed" / "logo.png").write_bytes(b"\x89PNG")                  # not a document
    (root / "sed-doc").symlink_to(root / "sed")                         # Debian links doc folders
    man = tmp_path / "man"
    for folder in ("man1", "de/man1"):                                   # English pages only
        (man / folder).mkdir(parents=True)
        (man / folder / "sed.1.gz").write_bytes(gzip.compress(b".TH SED 1\n.SH NAME\nsed \\- stream editor\n"))
    cands = system_doc_candidates([str(root), str(man), str(tmp_path / "absent")])
    man_page = [c for c in cands if c.is_man_page]
    assert [c.path for c in man_page] == [str(man / "man1" / "sed.1.gz")] and man_page[0].package == "sed"
    cands = [c for c in cands if not c.is_man_page]
    by_name = {Path(c.path).name: c for c in cands}
    assert set(by_name) == {"README.gz", "sed.info.gz", "NEWS.gz"}
    assert all(c.package == "sed" and c.system for c in cands)
    assert by_name["README.gz"].size == len(readme)  # uncompressed bytes, from the gzip trailer
    assert by_name["sed.info.gz"].is_manual and by_name["NEWS.gz"].is_record

    units = [{"kind": "local", "path": c.path, "package": c.package, "role": c.role, "size": c.size}
             for c in cands]
    docs, unreadable, _ = read_all(units)
    assert unreadable == {"truncated_gzip": 1}
    by_id = {d.id.rsplit("/", 1)[-1]: d for d in docs}
    assert by_id["README.gz"].text == readme.decode() and by_id["README.gz"].metadata["format"] == "text"
    assert by_id["sed.info.gz#Intro"].text.strip() == "An introduction."
    assert by_id["sed.info.gz#Top"].metadata["format"] == "info"
    docs, _, _ = read_all([{"kind": "local", "path": c.path, "package": c.package, "role": c.role, "size": c.size}
                           for c in man_page])
    assert docs[0].metadata["format"] == "man" and to_plain_text(docs[0].text, "man") == "NAME\n\nsed - stream editor"


def test_selection_prefers_what_the_filters_keep():
    from stages.curate.harvest import Candidate, select_local

    cands = [Candidate("/usr/share/doc/a/changelog.gz", "a", "doc", 5000, system=True),
             Candidate("/usr/share/doc/b/guide.html", "b", "doc", 4000, system=True),
             Candidate("/usr/share/man/man1/tar.1.gz", "tar", "doc", 3000, system=True),
             Candidate("/usr/share/man/man1/bash.1.gz", "bash", "doc", 9000, system=True),  # over 8,000
             Candidate("/usr/share/info/big.info.gz", "big", "doc", 50_000, system=True),
             Candidate("/venv/site-packages/x-1.dist-info/METADATA", "x", "metadata", 3000)]
    picked, skipped = select_local(cands, max_docs=10, max_bytes=61_000, min_bytes=100, max_file_bytes=10_000,
                                   package_share=1.0, max_man_page_bytes=8000)
    # Python first, then the Info manual (split into nodes: not bound by max_file_bytes), man pages
    # up to their own size bound, then docs; the change log no longer fits
    assert [c.package for c in picked] == ["x", "big", "tar", "b"]
    assert skipped == {"docs": 1, "bytes": 5000}


# -- issue 21: inputs that used to stop a stage, and a fuzz of the reader ---------------------------

def _jsonl(tmp_path, name: str, raw: bytes) -> list[dict]:
    path = tmp_path / name
    path.write_bytes(raw)
    return file_units(FileSource(type="jsonl", path=str(path)))


def test_lone_surrogates_are_counted_not_fatal(tmp_path):
    good = json.dumps({"text": UDHR["en"], "id": "ok"})
    raw = "\n".join([good, r'{"text": "bad \ud800 text", "id": "s1"}',
                     r'{"text": "fine", "id": "s2", "lang": "\udfff"}',
                     r'{"text": "fine too", "id": "s3", "metadata": {"deep": ["\ud83d"]}}',
                     r'{"text": "a real pair \ud83d\ude00 is fine", "id": "emoji"}']).encode()
    docs, unreadable, _ = read_all(_jsonl(tmp_path, "s.jsonl", raw))
    assert [d.id for d in docs] == ["ok", "emoji"]
    assert unreadable == {"invalid_unicode": 3}
    # what used to fail downstream now works: every document encodes as UTF-8 and through orjson
    import orjson

    for d in docs:
        d.text.encode("utf-8")
        orjson.dumps({"text": d.text, "id": d.id, "metadata": d.metadata})


def test_duplicate_ids_are_kept_once_and_counted(tmp_path):
    raw = "\n".join(json.dumps({"text": f"text {i}", "id": "same" if i < 3 else f"other{i}"}) for i in range(5))
    docs, unreadable, _ = read_all(_jsonl(tmp_path, "d.jsonl", raw.encode()))
    assert [d.id for d in docs] == ["same", "other3", "other4"]
    assert unreadable == {"duplicate_id": 2}


def test_empty_files_are_counted(tmp_path):
    for name, raw in (("e.jsonl", b""), ("blank.jsonl", b"\n\n  \n")):
        docs, unreadable, _ = read_all(_jsonl(tmp_path, name, raw))
        assert docs == [] and unreadable == {"empty_file": 1}, name
    gz = tmp_path / "e.jsonl.gz"
    with gzip.open(gz, "wb"):
        pass
    docs, unreadable, _ = read_all(file_units(FileSource(type="jsonl", path=str(gz))))
    assert docs == [] and unreadable == {"empty_file": 1}


def test_plain_file_named_gz_is_not_reported_as_truncated(tmp_path):
    raw = json.dumps({"text": UDHR["en"], "id": "x"}).encode() + b"\n"
    docs, unreadable, _ = read_all(_jsonl(tmp_path, "plain.jsonl.gz", raw))
    assert docs == [] and unreadable == {"not_gzip": 1}


# Property-based fuzz: any bytes, and any JSON records with hostile strings, either become
# Documents that the downstream steps can handle or are counted by reason; nothing raises.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_hostile_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()),
                        max_size=40)
_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _hostile_text,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_hostile_text, inner, max_size=3),
                      max_leaves=6)
_record = st.dictionaries(st.sampled_from(["text", "id", "metadata", "url", "lang"]) | _hostile_text, _value,
                          max_size=5)
_doc_record = st.fixed_dictionaries({"text": _hostile_text.map(lambda t: "word " + t)}, optional={
    "id": _hostile_text | st.integers(0, 3), "metadata": _value, "lang": _hostile_text})
FUZZ = {"runs": 0, "lines": 0, "documents": 0, "unreadable": 0}


def _check_reader_output(docs, unreadable, n_lines):
    import orjson

    for d in docs:
        d.text.encode("utf-8")
        orjson.dumps({"text": d.text, "id": d.id, "metadata": d.metadata})
    assert len(docs) + sum(unreadable.values()) >= min(n_lines, 1)  # nothing vanishes uncounted
    FUZZ["runs"] += 1
    FUZZ["lines"] += n_lines
    FUZZ["documents"] += len(docs)
    FUZZ["unreadable"] += sum(unreadable.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_doc_record | _doc_record | _record | _value, min_size=0, max_size=6),
       surrogate_escapes=st.booleans())
def test_fuzz_json_records(tmp_path_factory, records, surrogate_escapes):
    # ensure_ascii=True writes lone surrogates as \udxxx escapes: the form that broke curate
    lines = [json.dumps(r, ensure_ascii=surrogate_escapes) for r in records]
    path = tmp_path_factory.mktemp("fz") / "f.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    docs, unreadable, _ = read_all(file_units(FileSource(type="jsonl", path=str(path))))
    _check_reader_output(docs, unreadable, len(lines))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300), name=st.sampled_from(["f.jsonl", "f.jsonl.gz"]), gz=st.booleans())
def test_fuzz_raw_bytes(tmp_path_factory, raw, name, gz):
    path = tmp_path_factory.mktemp("fz") / name
    data = gzip.compress(raw) if gz else raw
    path.write_bytes(data[: len(data) // 2] if gz and len(raw) % 3 == 0 else data)  # some truncated
    docs, unreadable, _ = read_all(file_units(FileSource(type="jsonl", path=str(path))))
    n_lines = len([x for x in raw.split(b"\n") if x.strip()]) if raw.strip() else 0
    _check_reader_output(docs, unreadable, n_lines)


def test_zz_fuzz_counts():
    print(f"\nreader fuzz: {FUZZ}")
