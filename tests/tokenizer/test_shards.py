"""Shard format: document boundaries, reader windows, determinism, rank slicing, mixing, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenizer.shards import (
    ShardError,
    ShardReader,
    ShardWriter,
    SourceStats,
    build_manifest,
    iter_validation_text,
    read_manifest,
    write_manifest,
)

EOS = 1


def make_shards(root, docs_per_source: dict[str, int], dtype=np.uint16, max_tokens=1 << 20, seed=0):
    """Synthetic documents with recognisable ids: doc j of source s holds tokens base+j*10+k."""
    rng = np.random.default_rng(seed)
    stats = {"train": {}, "validation": {}}
    docs = {}
    for si, (source, n) in enumerate(sorted(docs_per_source.items())):
        for split in ("train", "validation"):
            w = ShardWriter(root, split, f"{source}-00000", dtype, EOS, max_tokens=max_tokens,
                            keep_text=split == "validation", flush_tokens=50)
            count = n if split == "train" else 3
            for j in range(count):
                length = int(rng.integers(1, 40))
                ids = (1000 * (si + 2) + (j * 7 + np.arange(length)) % 997).astype(np.int64)
                text = f"{source} {split} doc {j}"
                w.add(f"{source}/{split}/{j}", ids, len(text), text)
                docs[(source, split, j)] = ids
            st = SourceStats()
            st.add(w.close())
            stats[split][source] = st
    manifest = build_manifest(dtype, 70000 if dtype == np.uint32 else 5000, EOS, {"web": 0.7, "code": 0.3},
                              stats, seed=seed)
    write_manifest(root, manifest)
    return manifest, docs


def test_document_index_marks_boundaries_and_eos_separates(tmp_path):
    manifest, docs = make_shards(tmp_path, {"web": 30, "code": 20}, max_tokens=200)
    shards = manifest["splits"]["train"]["sources"]["web"]["shards"]
    assert len(shards) > 1  # rolled over at max_tokens
    j = 0
    for info in shards:
        tokens = np.fromfile(tmp_path / info["path"], dtype=np.uint16)
        offsets = np.fromfile(tmp_path / info["path"].replace(".bin", ".idx"), dtype=np.int64)
        ids = (tmp_path / info["path"].replace(".bin", ".ids")).read_text().splitlines()
        assert len(tokens) == info["tokens"] == offsets[-1] and len(ids) == info["documents"]
        for a, b, doc_id in zip(offsets[:-1], offsets[1:], ids, strict=True):
            assert tokens[b - 1] == EOS  # every document ends with EOS
            assert doc_id == f"web/train/{j}"
            assert np.array_equal(tokens[a:b - 1], docs[("web", "train", j)])
            j += 1
    assert j == 30


def test_reader_documents_and_validation_text(tmp_path):
    _, docs = make_shards(tmp_path, {"web": 5, "code": 4})
    reader = ShardReader(tmp_path, "validation", seq_len=4)
    got = list(reader.documents("code"))
    assert [d for d, _ in got] == ["code/validation/0", "code/validation/1", "code/validation/2"]
    assert all(np.array_equal(ids, docs[("code", "validation", j)]) for j, (_, ids) in enumerate(got))
    texts = list(iter_validation_text(tmp_path, "web"))
    assert [t["text"] for t in texts] == [f"web validation doc {j}" for j in range(3)]


def test_items_are_consecutive_windows_of_the_token_stream(tmp_path):
    manifest, _ = make_shards(tmp_path, {"web": 40})
    seq_len = 16
    reader = ShardReader(tmp_path, "train", seq_len, shuffle=False, mix="natural")
    info = manifest["splits"]["train"]["sources"]["web"]["shards"][0]
    stream = np.fromfile(tmp_path / info["path"], dtype=np.uint16)
    assert len(reader) == (len(stream) - 1) // seq_len
    for i in range(len(reader)):
        item = reader[i]
        assert item.dtype == np.int64 and len(item) == seq_len + 1
        assert np.array_equal(item, stream[i * seq_len:i * seq_len + seq_len + 1])
    with pytest.raises(IndexError):
        reader[len(reader)]


def test_order_is_deterministic_given_seed_and_epoch(tmp_path):
    make_shards(tmp_path, {"web": 60, "code": 30})

    def order(**kw):
        r = ShardReader(tmp_path, "train", 8, **kw)
        return [tuple(r[i]) for i in range(len(r))]

    assert order(seed=3) == order(seed=3)
    assert order(seed=3) != order(seed=4)
    assert order(seed=3, epoch=1) != order(seed=3)
    # one epoch of a natural mix visits every window exactly once, whatever the order
    assert sorted(order(seed=3, mix="natural")) == sorted(order(shuffle=False, mix="natural"))


def test_ranks_get_disjoint_equal_slices(tmp_path):
    make_shards(tmp_path, {"web": 60, "code": 30})
    full = ShardReader(tmp_path, "train", 8, seed=1, mix="natural")
    ranks = [ShardReader(tmp_path, "train", 8, seed=1, mix="natural", rank=r, world_size=3) for r in range(3)]
    assert {len(r) for r in ranks} == {len(full) // 3}
    seen = [(r, i) for r in range(3) for i in range(len(ranks[r]))]
    # rank r, item i is global item i*3 + r: together they tile the first 3*(N//3) items
    assert sorted(i * 3 + r for r, i in seen) == list(range(3 * (len(full) // 3)))
    for r, i in seen[::7]:
        assert np.array_equal(ranks[r][i], full[i * 3 + r])
    with pytest.raises(ValueError, match="rank 3"):
        ShardReader(tmp_path, "train", 8, rank=3, world_size=3)


def test_mix_weights_set_the_share_of_items(tmp_path):
    make_shards(tmp_path, {"web": 80, "code": 20})
    natural = ShardReader(tmp_path, "train", 8, mix="natural")
    n_web, n_code = natural.sequences_per_source["web"], natural.sequences_per_source["code"]
    mixed = ShardReader(tmp_path, "train", 8, mix={"web": 0.5, "code": 0.5}, seed=2)
    sources = [mixed.source_of(i) for i in range(len(mixed))]
    assert len(mixed) == n_web + n_code
    assert abs(sources.count("code") - len(mixed) / 2) <= 1
    assert mixed.repeats()["code"] > 1 > mixed.repeats()["web"]  # code upsampled, web subsampled
    # the manifest's mix is the default for training
    default = ShardReader(tmp_path, "train", 8)
    assert default.mix == pytest.approx({"code": 0.3, "web": 0.7})
    counts = [default.source_of(i) for i in range(len(default))].count("code")
    assert abs(counts - 0.3 * len(default)) <= 1
    # without shuffling, every prefix holds each source's share
    interleaved = ShardReader(tmp_path, "train", 8, mix={"web": 0.5, "code": 0.5}, shuffle=False)
    prefix = [interleaved.source_of(i) for i in range(10)]
    assert prefix.count("code") == 5
    with pytest.raises(ShardError, match="mix gives weight to \\['docs'\\]"):
        ShardReader(tmp_path, "train", 8, mix={"docs": 1.0})


def test_uint32_shards_round_trip(tmp_path):
    manifest, docs = make_shards(tmp_path, {"web": 10}, dtype=np.uint32)
    assert manifest["dtype"] == "uint32"
    reader = ShardReader(tmp_path, "train", 4, shuffle=False, mix="natural")
    first = next(reader.documents("web"))[1]
    assert first.dtype == np.uint32 and np.array_equal(first, docs[("web", "train", 0)])
    assert reader[0].dtype == np.int64


def test_missing_or_corrupt_manifest_is_named(tmp_path):
    with pytest.raises(ShardError, match="manifest.json is missing"):
        ShardReader(tmp_path, "train", 8)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="unreadable"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "whale-token-shards", "version": 99}))
    with pytest.raises(ShardError, match="version 99"):
        read_manifest(tmp_path)


def test_truncated_or_missing_shard_is_named(tmp_path):
    manifest, _ = make_shards(tmp_path, {"web": 10})
    path = tmp_path / manifest["splits"]["train"]["sources"]["web"]["shards"][0]["path"]
    data = path.read_bytes()
    path.write_bytes(data[:-6])
    with pytest.raises(ShardError, match=f"{path.name} has {len(data) - 6:,} bytes, the manifest says {len(data):,}"):
        ShardReader(tmp_path, "train", 4)
    path.unlink()
    with pytest.raises(ShardError, match=f"shard file .*{path.name} is missing"):
        ShardReader(tmp_path, "train", 4)


def test_too_long_sequences_and_unknown_split(tmp_path):
    make_shards(tmp_path, {"web": 2})
    with pytest.raises(ShardError, match="too few for one sequence"):
        ShardReader(tmp_path, "train", 10_000)
    with pytest.raises(ShardError, match="split 'test'"):
        ShardReader(tmp_path, "test", 8)


def test_reader_pickles_without_the_mapped_data(tmp_path):
    import pickle

    make_shards(tmp_path, {"web": 200})
    reader = ShardReader(tmp_path, "train", 8, seed=5)
    first = reader[0]  # maps the shard
    restored = pickle.loads(pickle.dumps(reader))
    assert all(sh._data is None for shards in restored._shards for sh in shards)  # re-mapped lazily
    assert np.array_equal(restored[0], first) and len(restored) == len(reader)


def test_validation_reads_natural_mix_by_default(tmp_path):
    make_shards(tmp_path, {"web": 5, "code": 5})
    val = ShardReader(tmp_path, "validation", 2)
    assert sum(val.sequences_per_source.values()) == len(val)
    assert val.repeats() == pytest.approx({"web": 1.0, "code": 1.0})
