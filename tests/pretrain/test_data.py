"""Pretraining batches over real token shards: sharding by rank, exact positions, epochs."""

from __future__ import annotations

import torch

from stages.pretrain.data import ShardBatchSource, ShardEvalData, rows_to_batch
from tokenizer import ShardReader

SEQ = 32


def source(tokenized, rank=0, world=1, mb=4, **kw) -> ShardBatchSource:
    return ShardBatchSource(tokenized / "shards", SEQ, mb, seed=0, rank=rank, world_size=world, **kw)


def rows(batch) -> list[tuple[int, ...]]:
    return [tuple(r) for r in batch["input_ids"].tolist()]


def test_rows_are_overlapping_windows_used_whole(tokenized):
    b = source(tokenized).next_batch()
    assert b["input_ids"].shape == (4, SEQ) and torch.equal(b["labels"], b["input_ids"])
    # the reader's consecutive windows share one token: the last input of one window is the first
    # of the next, so with labels == inputs every token after a shard's first is a target once
    r = ShardReader(tokenized / "shards", "train", SEQ - 1, shuffle=False, mix="natural")
    assert len(r[0]) == SEQ and r[0][-1] == r[1][0]


def test_ranks_split_the_global_batch(tokenized):
    whole = source(tokenized, mb=4)
    halves = [source(tokenized, rank=r, world=2, mb=2) for r in range(2)]
    for _ in range(3):
        assert sorted(rows(whole.next_batch())) == sorted(rows(halves[0].next_batch()) + rows(halves[1].next_batch()))


def test_resume_continues_exactly_even_on_another_world_size(tokenized):
    a = source(tokenized, rank=1, world=2, mb=2)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    assert state == {"epoch": 0, "consumed": 12}
    b = source(tokenized, rank=1, world=2, mb=2)
    b.load_state_dict(state)
    for _ in range(4):
        assert rows(a.next_batch()) == rows(b.next_batch())
    # the position is global: one rank taking over continues where both left off
    single = source(tokenized, mb=4)
    single.load_state_dict(state)
    pair = [source(tokenized, rank=r, world=2, mb=2) for r in range(2)]
    for p in pair:
        p.load_state_dict(state)
    assert sorted(rows(single.next_batch())) == sorted(rows(pair[0].next_batch()) + rows(pair[1].next_batch()))


def test_epochs_wrap_with_a_new_order(tokenized):
    s = source(tokenized, mb=64)
    n = len(s._reader) // 64
    first = [rows(s.next_batch()) for _ in range(n)]
    assert s.state_dict()["epoch"] == 0
    second = rows(s.next_batch())
    assert s.state_dict() == {"epoch": 1, "consumed": 64}
    assert second != first[0]
    again = source(tokenized, mb=64)
    again.load_state_dict({"epoch": 1, "consumed": 0})
    assert rows(again.next_batch()) == second


def test_document_masking_segments_end_at_eos():
    eos = 1
    b = rows_to_batch([torch.tensor([5, 6, eos, 7, eos, eos, 8]).numpy()], eos, document_masking=True)
    assert b["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 3]]
    assert "segment_ids" not in rows_to_batch([torch.tensor([5, eos]).numpy()], eos, False)


def test_eval_sets_are_fixed_per_source_and_rank(tokenized):
    ev = ShardEvalData(str(tokenized / "shards"))
    a = ev.open(0, 2, 2, SEQ, max_batches=3)
    b = ev.open(0, 2, 2, SEQ, max_batches=3)
    assert sorted(a) == ["code", "web"]
    for name in a:
        assert 1 <= len(a[name]) <= 3
        assert [rows(x) for x in a[name]] == [rows(x) for x in b[name]]
    other = ev.open(1, 2, 2, SEQ, max_batches=3)
    assert set(rows(a["web"][0])).isdisjoint(rows(other["web"][0]))
