"""Replay of pretraining text during SFT, and general-text bits/byte tracked while SFT runs.

    data = ReplayMixData(sft=SFTTrainData(...), shards="<tokenizer out>/shards", ratio=0.25)
    job = TrainJob(..., train_data=data, eval_data=MixedEvalData(traces=SFTEvalData(...), shards=..., ...))

Fine-tuning a small model on nothing but traces overwrites what pretraining taught it (measured on
the tiny run: web bits/byte 2.16 -> 4.75 after SFT at the pretraining learning rate). DeepSeek-R1
mixes ~200K non-reasoning samples into its 800K; here the non-reasoning part is the pretraining
corpus itself: a fixed share ``ratio`` of every micro-batch's rows are windows of the tokenizer
stage's training shards (every token a target, as in pretraining), the rest packed traces.

The share is exact over any run of micro-batches: micro-batch i holds
``floor((i+1)·ratio·B) - floor(i·ratio·B)`` replay rows of B (largest-remainder rounding), so a
ratio of 0.25 with 8 rows per rank is 2 replay rows in every micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.distill.sft_data import SFTEvalData, SFTTrainData
from tokenizer.shards import ShardReader


def replay_rows(index: int, micro_batch_size: int, ratio: float) -> int:
    """Replay rows in micro-batch ``index`` (0-based): the exact share over every prefix."""
    per = ratio * micro_batch_size
    return math.floor((index + 1) * per + 1e-9) - math.floor(index * per + 1e-9)


def shard_rows_batch(windows: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Pretraining windows as rows in the SFT batch layout: every token a target, one segment per row."""
    ids = torch.from_numpy(np.stack(windows).astype(np.int64))
    return {"input_ids": ids, "labels": ids, "loss_mask": torch.ones_like(ids), "segment_ids": torch.zeros_like(ids)}


def _pad_to(batch: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    extra = length - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    out = {}
    for key, value in batch.items():
        fill = pad_id if key in ("input_ids", "labels") else 0
        if key == "segment_ids":   # padding is a segment of its own (no target crosses into it)
            fill = int(value.max()) + 1
        out[key] = torch.nn.functional.pad(value, (0, extra), value=fill)
    if "labels" in batch and batch["labels"] is batch["input_ids"]:
        out["labels"] = out["input_ids"]
    return out


class ReplayMixSource:
    """One rank's micro-batches: SFT rows from ``sft`` plus ``replay_rows`` windows of the shards."""

    def __init__(self, sft, shards: str, ratio: float, pad_id: int, rank: int, world_size: int,
                 micro_batch_size: int, seq_len: int, seed: int):
        self.ratio, self.mbs, self.seq_len, self.pad_id = ratio, micro_batch_size, seq_len, pad_id
        self.rank, self.world, self.seed = rank, world_size, seed
        self.shards = shards
        # SFT rows per micro-batch vary by at most one: ask the SFT source for single rows
        self.sft = sft.open(rank, world_size, 1, seq_len, seed)
        self.step, self.replay_epoch, self.replay_index = 0, 0, 0
        self._reader = self._open(0)
        self.counts = {"sft_rows": 0, "replay_rows": 0}

    def _open(self, epoch: int) -> ShardReader:
        # seq_len - 1: an item holds seq_len tokens; the seed is offset so replay order differs from pretrain's
        return ShardReader(self.shards, "train", self.seq_len - 1, seed=self.seed + 7919, epoch=epoch,
                           rank=self.rank, world_size=self.world)

    def _replay(self, n: int) -> list[np.ndarray]:
        rows = []
        for _ in range(n):
            if self.replay_index >= len(self._reader):
                self.replay_epoch, self.replay_index = self.replay_epoch + 1, 0
                self._reader = self._open(self.replay_epoch)
            rows.append(self._reader[self.replay_index])
            self.replay_index += 1
        return rows

    def next_batch(self) -> dict[str, torch.Tensor]:
        n_replay = replay_rows(self.step, self.mbs, self.ratio)
        self.step += 1
        parts = [_pad_to(self.sft.next_batch(), self.seq_len, self.pad_id) for _ in range(self.mbs - n_replay)]
        if n_replay:
            parts.append(shard_rows_batch(self._replay(n_replay)))
        self.counts["sft_rows"] += self.mbs - n_replay
        self.counts["replay_rows"] += n_replay
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def state_dict(self) -> dict:
        return {"step": self.step, "replay_epoch": self.replay_epoch, "replay_index": self.replay_index,
                "sft": self.sft.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.replay_epoch, self.replay_index = int(state["replay_epoch"]), int(state["replay_index"])
        self._reader = self._open(self.replay_epoch)
        self.sft.load_state_dict(state["sft"])


@dataclass
class ReplayMixData:
    """Recipe for :class:`ReplayMixSource` (picklable; opened inside each Ray Train worker)."""

    sft: SFTTrainData
    shards: str
    ratio: float
    pad_id: int

    def open(self, rank: int, world_size: int, micro_batch_size: int, seq_len: int, seed: int) -> ReplayMixSource:
        return ReplayMixSource(self.sft, self.shards, self.ratio, self.pad_id, rank, world_size, micro_batch_size,
                               seq_len, seed)


@dataclass
class MixedEvalData:
    """Validation sets during SFT: the held-back traces and general text (the shards' validation split
    per source), so ``val/bpb/web`` shows what SFT does to the language model while it trains."""

    traces: SFTEvalData | None
    shards: str | None
    sources: tuple[str, ...]
    pad_id: int
    bytes_per_token_id: np.ndarray | None = None

    def open(self, rank: int, world_size: int, micro_batch_size: int, seq_len: int,
             max_batches: int) -> dict[str, list[dict[str, torch.Tensor]]]:
        sets = self.traces.open(rank, world_size, micro_batch_size, seq_len, max_batches) if self.traces else {}
        for source in self.sources if self.shards else ():
            reader = ShardReader(self.shards, "validation", seq_len - 1, sources=[source], shuffle=False,
                                 rank=rank, world_size=world_size)
            n = min(len(reader), max_batches * micro_batch_size)
            windows = [reader[i] for i in range(n)]
            sets[source] = [shard_rows_batch(windows[i:i + micro_batch_size])
                            for i in range(0, n - micro_batch_size + 1, micro_batch_size)]
        return sets

    def token_bytes(self) -> np.ndarray | None:
        return self.bytes_per_token_id


def validation_sources(shards: str | Path) -> list[str]:
    """Sources with validation text in the shards manifest."""
    from tokenizer.shards import read_manifest

    split = read_manifest(shards)["splits"].get("validation", {})
    return sorted(s for s, v in split.get("sources", {}).items() if v.get("tokens", v.get("documents", 0)))

