"""Replay of pretraining shards in SFT batches: the mix is what the config says, rows are well formed,
and the general-text validation sets are built from the shards' validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.distill.replay import MixedEvalData, ReplayMixData, replay_rows
from stages.distill.sft_data import SFTTrainData, TokenizedTraces

EOS, PAD = 2, 0


def _shards(root, n_docs: int = 40, doc_len: int = 300):
    from tokenizer.shards import ShardWriter, SourceStats, build_manifest, write_manifest

    rng = np.random.default_rng(0)
    stats = {"train": {}, "validation": {}}
    for split, docs in (("train", n_docs), ("validation", 8)):
        w = ShardWriter(root, split, "web-00000", np.uint16, EOS)
        for i in range(docs):
            w.add(f"{split}-{i}", rng.integers(10, 500, doc_len).tolist(), doc_len * 3)
        st = SourceStats()
        st.add(w.close())
        stats[split]["web"] = st
    write_manifest(root, build_manifest(np.uint16, 512, EOS, {"web": 1.0}, stats))
    return root


def _traces(path, n: int = 60):
    rng = np.random.default_rng(1)
    examples = []
    for _ in range(n):
        length = int(rng.integers(20, 60))
        ids = rng.integers(600, 700, length).tolist()
        examples.append((ids, [0] * (length // 2) + [1] * (length - length // 2)))
    return TokenizedTraces.from_lists(examples).save(path)


@pytest.mark.parametrize("ratio,mbs", [(0.25, 8), (0.3, 4), (0.5, 2), (0.1, 16)])
def test_replay_share_is_exact_over_every_prefix(ratio, mbs):
    total = 0
    for i in range(200):
        total += replay_rows(i, mbs, ratio)
        assert abs(total - ratio * mbs * (i + 1)) < 1   # never more than a row away from the share
    assert total == round(ratio * mbs * 200)


def test_mixed_batches_hold_the_configured_ratio(tmp_path):
    shards = _shards(tmp_path / "shards")
    data = ReplayMixData(SFTTrainData(str(_traces(tmp_path / "sft")), PAD), str(shards), 0.25, PAD)
    src = data.open(rank=0, world_size=1, micro_batch_size=8, seq_len=128, seed=0)
    replayed = 0
    for _ in range(20):
        b = src.next_batch()
        assert b["input_ids"].shape == (8, 128)
        assert set(b) == {"input_ids", "labels", "loss_mask", "segment_ids"}
        # replay rows: every token a target, one segment, pretraining ids (< 600 here)
        is_replay = (b["input_ids"] < 600).all(1) & (b["loss_mask"] == 1).all(1)
        replayed += int(is_replay.sum())
        assert (b["segment_ids"][is_replay] == 0).all()
        # trace rows: targets only on the assistant half of each trace, none on padding
        sft = ~is_replay
        assert (b["loss_mask"][sft][b["input_ids"][sft] == PAD] == 0).all()
    assert replayed == 40 == src.counts["replay_rows"]     # 2 of every 8 rows
    assert src.counts["sft_rows"] == 120


def test_mixed_source_resumes_where_it_stopped(tmp_path):
    shards = _shards(tmp_path / "shards")
    data = ReplayMixData(SFTTrainData(str(_traces(tmp_path / "sft")), PAD), str(shards), 0.5, PAD)
    a = data.open(0, 1, 4, 64, seed=3)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    expected = a.next_batch()
    b = data.open(0, 1, 4, 64, seed=3)
    b.load_state_dict(state)
    got = b.next_batch()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_general_text_eval_sets_come_from_the_validation_split(tmp_path):
    shards = _shards(tmp_path / "shards")
    sets = MixedEvalData(None, str(shards), ("web",), PAD, np.ones(512, dtype=np.int64)).open(0, 1, 2, 64, 4)
    assert list(sets) == ["web"] and len(sets["web"]) == 4
    assert all(b["input_ids"].shape == (2, 64) and (b["loss_mask"] == 1).all() for b in sets["web"])
