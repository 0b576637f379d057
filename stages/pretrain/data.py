"""Pretraining batches from the tokenizer stage's token shards.

Windows: the shard reader cuts each shard into windows of ``seq_len`` tokens that overlap by one
(``ShardReader(seq_len=seq_len - 1)`` yields ``seq_len`` tokens per item), and each window is one
training row with ``input_ids = labels = window``: the model predicts tokens 1..T-1 from their
prefixes, and the next window starts at this one's last token, so every token of a shard but the
first is a target exactly once.

Documents are packed with EOS between them and, as in DeepSeek-V3 (§4.1: document packing
without cross-sample attention masking), attend across those boundaries unless
``document_masking`` is on, which adds ``segment_ids`` (a document ends with its EOS).

Order and position: the reader's order is a pure function of (seed, epoch); rank r of W takes
items r, r+W, ... The position saved in checkpoints is global (epoch, sequences consumed by all
ranks), so it also resumes exactly under another number of ranks that divides it. An epoch ends
when a rank has no full micro-batch left; the next one is a fresh permutation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenizer.shards import ShardError, ShardReader


def rows_to_batch(rows: list[np.ndarray], eos_id: int, document_masking: bool) -> dict[str, torch.Tensor]:
    ids = torch.from_numpy(np.stack(rows))
    batch = {"input_ids": ids, "labels": ids}
    if document_masking:   # position i belongs to the document that the EOS count before it says
        ends = (ids == eos_id).long()
        batch["segment_ids"] = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1].cumsum(1)], dim=1)
    return batch


class ShardBatchSource:
    """One rank's endless stream of micro-batches over the training split."""

    def __init__(self, path: str | Path, seq_len: int, micro_batch_size: int, seed: int, rank: int,
                 world_size: int, mix: Mapping[str, float] | None = None, document_masking: bool = False):
        self.path, self.seq_len, self.micro_batch_size = Path(path), seq_len, micro_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.mix, self.document_masking = mix, document_masking
        self.epoch, self.index = 0, 0          # index: items this rank has consumed in this epoch
        self._reader = self._open(0)
        self.eos_id = self._reader.eos_id

    def _open(self, epoch: int) -> ShardReader:
        reader = ShardReader(self.path, "train", self.seq_len - 1, mix=self.mix, seed=self.seed, epoch=epoch,
                             rank=self.rank, world_size=self.world_size)
        if len(reader) < self.micro_batch_size:
            raise ShardError(f"the training split holds {len(reader) * self.world_size} windows of {self.seq_len} "
                             f"tokens: too few for a micro-batch of {self.micro_batch_size} on each of "
                             f"{self.world_size} ranks; use more data, a shorter seq_len or a smaller batch")
        return reader

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.index + self.micro_batch_size > len(self._reader):
            self.epoch, self.index = self.epoch + 1, 0
            self._reader = self._open(self.epoch)
        rows = [self._reader[i] for i in range(self.index, self.index + self.micro_batch_size)]
        self.index += self.micro_batch_size
        return rows_to_batch(rows, self.eos_id, self.document_masking)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.index * self.world_size}

    def load_state_dict(self, state: dict) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed % self.world_size:
            raise ValueError(f"data position {consumed} (sequences consumed this epoch) cannot be split over "
                             f"{self.world_size} ranks")
        self.epoch, self.index = epoch, consumed // self.world_size
        if epoch != self._reader.epoch:
            self._reader = self._open(epoch)


@dataclass
class ShardTrainData:
    """Recipe for :class:`ShardBatchSource` (picklable; opened inside each worker)."""

    path: str
    mix: dict[str, float] | None = None
    document_masking: bool = False

    def open(self, rank: int, world_size: int, micro_batch_size: int, seq_len: int, seed: int) -> ShardBatchSource:
        return ShardBatchSource(self.path, seq_len, micro_batch_size, seed, rank, world_size, self.mix,
                                self.document_masking)


@dataclass
class ShardEvalData:
    """Held-out windows per source (``{"web": [...], "code": [...]}``), in file order, the same
    windows at every evaluation; ``token_bytes`` makes bits per byte."""

    path: str
    bytes_per_token_id: np.ndarray | None = None
    sources: tuple[str, ...] | None = None
    document_masking: bool = False

    def open(self, rank: int, world_size: int, micro_batch_size: int, seq_len: int,
             max_batches: int) -> dict[str, list[dict[str, torch.Tensor]]]:
        out = {}
        for source in self.source_names():
            reader = ShardReader(self.path, "validation", seq_len - 1, sources=[source], mix="natural",
                                 shuffle=False, rank=rank, world_size=world_size)
            n = min(len(reader), max_batches * micro_batch_size)
            rows = [reader[i] for i in range(n)]
            out[source] = [rows_to_batch(rows[i:i + micro_batch_size], reader.eos_id, self.document_masking)
                           for i in range(0, n, micro_batch_size)]
        return out

    def source_names(self) -> list[str]:
        if self.sources is not None:
            return list(self.sources)
        from tokenizer.shards import read_manifest

        return sorted(read_manifest(self.path)["splits"]["validation"]["sources"])

    def token_bytes(self) -> np.ndarray | None:
        return self.bytes_per_token_id
