"""SFT data: the assistant-only loss mask (EOS included), packing with per-trace attention
isolation, and the trainer's batch source (deterministic, resumable, disjoint across ranks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.distill.sft_data import (
    SFTBatchSource,
    SFTEvalData,
    SFTTrainData,
    TokenizedTraces,
    collate,
    encode_traces,
    epoch_rows,
    pack,
)
from tests.distill.helpers import micro_checkpoint, trace_rows, train_tokenizer


@pytest.fixture(scope="module")
def rows():
    return trace_rows(120)


@pytest.fixture(scope="module")
def tok(rows, tmp_path_factory):
    return train_tokenizer(rows, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def traces(rows, tok, tmp_path_factory):
    data, dropped = encode_traces(rows, tok, max_tokens=512)
    assert not dropped
    return data.save(tmp_path_factory.mktemp("sft") / "train")


# -- the loss mask ---------------------------------------------------------------------------------

def test_mask_covers_the_assistant_turn_and_its_eos_but_not_the_prompt(rows, tok):
    data, _ = encode_traces(rows[:5], tok, max_tokens=512)
    for i in range(len(data)):
        ids, mask = (a.tolist() for a in data.example(i))
        start = ids.index(tok.assistant_id)
        assert sum(mask) > 0, "empty mask: nothing would be trained"
        assert mask[:start + 1] == [0] * (start + 1), "the system/user prompt (and the marker) must not be targets"
        assert mask[start + 1:] == [1] * (len(ids) - start - 1), "every assistant token is a target"
        assert ids[start + 1] == tok.think_id and ids[-1] == tok.eos_id and mask[-1] == 1
        assert tok.think_end_id in ids[start + 1:]


def test_encode_counts_what_it_cannot_train_on(rows, tok):
    no_assistant = {"messages": [{"role": "user", "content": "hi"}]}
    broken = {"messages": [{"role": "user", "content": 3}]}
    data, dropped = encode_traces([rows[0], no_assistant, broken, {"id": 1}], tok, max_tokens=512)
    assert len(data) == 1
    assert dropped == {"sft:no_assistant_tokens": 1, "sft:malformed": 2}
    data, dropped = encode_traces(rows[:3], tok, max_tokens=20)   # shorter than any trace: never cut, dropped
    assert len(data) == 0 and dropped == {"sft:too_long": 3}


def test_tokenized_traces_round_trip(rows, tok, tmp_path):
    data, _ = encode_traces(rows[:7], tok, max_tokens=512)
    back = TokenizedTraces.load(data.save(tmp_path / "t"))
    assert len(back) == 7 and back.lengths.tolist() == data.lengths.tolist()
    for i in range(7):
        assert all(np.array_equal(a, b) for a, b in zip(back.example(i), data.example(i), strict=True))
    with pytest.raises(FileNotFoundError, match="lacks"):
        TokenizedTraces.load(tmp_path)


# -- packing ---------------------------------------------------------------------------------------

def test_best_fit_packs_every_example_once_within_capacity():
    lengths = [5, 9, 3, 7, 1, 6, 4, 10, 2, 8]
    rows = pack(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(10))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == -(-sum(lengths) // 10)   # 55 tokens in 6 rows: optimal here
    assert pack([4, 6, 5], 10) == [[0, 1], [2]]             # 6 goes with 4 (best fit), not after 5
    with pytest.raises(ValueError, match="more than a row holds"):
        pack([11], 10)


def test_packed_batch_isolates_traces_and_keeps_each_eos_as_a_target(traces, tok):
    from model.transformer import IGNORE_INDEX, next_token_targets

    data = TokenizedTraces.load(traces)
    rows = pack(data.lengths, 512)[:2]
    batch = collate(data, rows, tok.pad_id)
    ids, seg, mask = batch["input_ids"], batch["segment_ids"], batch["loss_mask"]
    targets = next_token_targets(batch["labels"], mask, seg)
    for b, row in enumerate(rows):
        assert len(row) > 1, "several traces share a row"
        n = sum(int(data.lengths[i]) for i in row)
        assert seg[b, :n].unique().tolist() == list(range(len(row)))
        assert (seg[b, n:] == len(row)).all() and (mask[b, n:] == 0).all() and (ids[b, n:] == tok.pad_id).all()
        ends = (ids[b, :n] == tok.eos_id).nonzero().flatten().tolist()
        assert len(ends) == len(row)
        for e in ends:   # the token before each EOS is trained to produce it
            assert targets[b, e - 1] == tok.eos_id
        # no target crosses into the next trace: after an EOS comes the next BOS, never a target
        assert all(targets[b, e] == IGNORE_INDEX for e in ends)
        # the first target of each trace is <think>, predicted at the <Assistant> marker
        marker = (ids[b, :n] == tok.assistant_id).nonzero().flatten().tolist()
        assert [int(targets[b, m]) for m in marker] == [tok.think_id] * len(row)


def test_a_packed_trace_sees_exactly_what_it_would_see_alone(traces, tok, tmp_path):
    """Attention isolation end to end: the model's logits for the second trace of a packed row
    equal its logits when it is the only sequence."""
    from model import DeepSeekV3

    model = DeepSeekV3.from_pretrained(micro_checkpoint(tmp_path / "m", tok)).eval()
    data = TokenizedTraces.load(traces)
    batch = collate(data, [[0, 1]], tok.pad_id)
    with torch.no_grad():
        packed = model(batch["input_ids"], segment_ids=batch["segment_ids"]).logits[0]
        alone = model(torch.from_numpy(data.example(1)[0].astype(np.int64))[None]).logits[0]
    start, n = int(data.lengths[0]), int(data.lengths[1])
    torch.testing.assert_close(packed[start:start + n], alone, atol=1e-4, rtol=1e-4)
    with torch.no_grad():   # and without segment ids it would differ: the test can fail
        leaky = model(batch["input_ids"]).logits[0]
    assert not torch.allclose(leaky[start:start + n], alone, atol=1e-3)


def test_padding_mode_puts_one_trace_per_row(traces):
    data = TokenizedTraces.load(traces)
    rows = epoch_rows(data, 512, seed=0, epoch=0, packing=False)
    assert sorted(r[0] for r in rows) == list(range(len(data))) and all(len(r) == 1 for r in rows)


# -- the trainer's batch source --------------------------------------------------------------------

def test_source_is_seeded_resumable_and_wraps_epochs(traces, tok):
    recipe = SFTTrainData(str(traces), tok.pad_id)
    a = recipe.open(0, 1, 2, 512, seed=3)
    first = [a.next_batch() for _ in range(a.batches_per_epoch + 2)]   # crosses into epoch 1
    assert a.epoch == 1
    b = recipe.open(0, 1, 2, 512, seed=3)
    for _ in range(3):
        b.next_batch()
    state = b.state_dict()
    c = recipe.open(0, 1, 2, 512, seed=3)
    c.load_state_dict(state)
    for want in first[3:]:
        got = c.next_batch()
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["loss_mask"], want["loss_mask"])
    other = recipe.open(0, 1, 2, 512, seed=4).next_batch()
    assert not torch.equal(other["input_ids"][:, :20], first[0]["input_ids"][:, :20])
    assert not torch.equal(first[a.batches_per_epoch]["input_ids"], first[0]["input_ids"])   # new epoch, new rows


def test_ranks_read_disjoint_rows_and_refuse_another_world_size(traces, tok):
    r0, r1 = (SFTBatchSource(str(traces), tok.pad_id, True, r, 2, 2, 512, 0) for r in (0, 1))
    assert r0.batches_per_epoch == r1.batches_per_epoch > 0
    assert not set(map(tuple, r0._rows)) & set(map(tuple, r1._rows))
    with pytest.raises(ValueError, match="2 ranks"):
        SFTBatchSource(str(traces), tok.pad_id, True, 0, 1, 2, 512, 0).load_state_dict(r0.state_dict())
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        SFTBatchSource(str(traces), tok.pad_id, True, 0, 2, 512, 512, 0)


def test_eval_recipe_is_finite_and_fixed(traces, tok):
    recipe = SFTEvalData(str(traces), tok.pad_id)
    sets = recipe.open(0, 1, 2, 512, max_batches=3)
    assert list(sets) == ["traces"] and len(sets["traces"]) == 3
    again = recipe.open(0, 1, 2, 512, max_batches=3)["traces"]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(sets["traces"], again, strict=True))
