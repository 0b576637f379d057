"""Kept traces -> SFT batches for the shared trainer (stages/common/training).

    examples, dropped = encode_traces(rows, tok, max_tokens=seq_len)   # chat template + assistant mask
    examples.save(out / "data" / "sft" / "train")                      # three .npy files, memory-mapped
    job = TrainJob(..., train_data=SFTTrainData(str(path), pad_id=tok.pad_id))

Every trace is rendered with the tokenizer's chat template (``encode_chat``); its mask is 1 on what
the assistant writes (the think block, the answer and the closing EOS) and 0 on the system/user
turns, so the loss covers exactly the assistant's tokens, EOS included.

A batch row holds several traces (``packing``), each its own segment: attention and targets stay
inside a trace and positions restart at 0, so a packed trace trains exactly as it would alone, at
a fraction of the padding. The packing is redone every epoch from a seeded shuffle (best fit), so
rows change between epochs while every rank computes the same rows without talking to the others.
Padding gets a segment of its own and no targets.

    input_ids    BOS <User> q <Assistant> <think> r </think> a EOS | BOS <User> ... EOS | pad pad
    loss_mask    0   0      0 1           1       1 1        1 1   | 0   0      ... 1   | 0   0
    segment_ids  0   0      0 0           0       0 0        0 0   | 1   1      ... 1   | 2   2

(``loss_mask[i]`` marks token i as a target, so the model at position i-1 is trained to produce it:
the first target is ``<think>``, predicted from ``<Assistant>``.)
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.common.problems import rng_for


@dataclass
class TokenizedTraces:
    """Variable-length examples stored flat: ``tokens[offsets[i]:offsets[i+1]]`` is example i."""

    tokens: np.ndarray    # int32 [N]
    mask: np.ndarray      # uint8 [N], 1 = trained on
    offsets: np.ndarray   # int64 [n + 1]

    @classmethod
    def from_lists(cls, examples: Sequence[tuple[Sequence[int], Sequence[int]]]) -> "TokenizedTraces":
        lengths = np.array([len(ids) for ids, _ in examples], dtype=np.int64)
        offsets = np.zeros(len(examples) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for ids, _ in examples for t in ids), dtype=np.int32, count=int(offsets[-1]))
        mask = np.fromiter((m for _, ms in examples for m in ms), dtype=np.uint8, count=int(offsets[-1]))
        return cls(tokens, mask, offsets)

    def __post_init__(self):
        self.lengths = np.diff(self.offsets)   # tokens per example

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], self.mask[a:b]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("tokens", "mask", "offsets"):
            np.save(directory / f"{name}.npy", getattr(self, name))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "TokenizedTraces":
        directory = Path(directory)
        missing = [n for n in ("tokens", "mask", "offsets") if not (directory / f"{n}.npy").is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} lacks {', '.join(f'{n}.npy' for n in missing)}: "
                                    f"not a TokenizedTraces folder")
        return cls(*(np.load(directory / f"{n}.npy", mmap_mode="r") for n in ("tokens", "mask", "offsets")))


def encode_traces(rows: Iterable[dict], tokenizer, max_tokens: int, train_on: str = "last"
                  ) -> tuple[TokenizedTraces, Counter]:
    """Chat rows (``{"messages": [...]}``) -> examples of at most ``max_tokens`` tokens, and the
    rows dropped by reason (``sft:too_long``, ``sft:no_assistant_tokens``, ``sft:malformed``)."""
    examples, dropped = [], Counter()
    for row in rows:
        try:
            enc = tokenizer.encode_chat(row["messages"], train_on=train_on)
        except (KeyError, TypeError, ValueError):
            dropped["sft:malformed"] += 1
            continue
        if not any(enc.mask):
            dropped["sft:no_assistant_tokens"] += 1
        elif len(enc.ids) > max_tokens:   # cutting it would cut off the answer and the EOS
            dropped["sft:too_long"] += 1
        else:
            examples.append((enc.ids, enc.mask))
    return TokenizedTraces.from_lists(examples), dropped


# ------------------------------------------------------------------------------------------------
# packing
# ------------------------------------------------------------------------------------------------

def pack(lengths: Sequence[int], capacity: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Best-fit bin packing: each example (in ``order``) goes into the open row with the least room
    that still fits it, else a new row. Returns rows as lists of example indices."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []   # (room left, row index), sorted
    for i in (range(len(lengths)) if order is None else order):
        n = int(lengths[i])
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than a row holds ({capacity})")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
            if room - n > 0:
                bisect.insort(free, (room - n, r))
        else:
            rows.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(rows) - 1))
    return rows


def collate(data: TokenizedTraces, rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of example indices -> one micro-batch, as long as its longest row."""
    T = max(int(sum(data.lengths[i] for i in row)) for row in rows)
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    seg = np.zeros((len(rows), T), dtype=np.int64)
    for b, row in enumerate(rows):
        pos = 0
        for s, i in enumerate(row):
            tokens, m = data.example(i)
            ids[b, pos:pos + len(tokens)] = tokens
            mask[b, pos:pos + len(tokens)] = m
            seg[b, pos:pos + len(tokens)] = s
            pos += len(tokens)
        seg[b, pos:] = len(row)   # padding: a segment of its own, no targets
    input_ids = torch.from_numpy(ids)
    return {"input_ids": input_ids, "labels": input_ids, "loss_mask": torch.from_numpy(mask),
            "segment_ids": torch.from_numpy(seg)}


def epoch_rows(data: TokenizedTraces, seq_len: int, seed: int, epoch: int, packing: bool) -> list[list[int]]:
    """This epoch's rows (the same on every rank): a seeded shuffle, then packed or one per row."""
    order = list(range(len(data)))
    rng_for(seed, "sft-epoch", str(epoch)).shuffle(order)
    return pack(data.lengths, seq_len, order) if packing else [[i] for i in order]


# ------------------------------------------------------------------------------------------------
# the trainer's recipes (picklable; opened inside each Ray Train worker)
# ------------------------------------------------------------------------------------------------

class SFTBatchSource:
    """One rank's endless stream of micro-batches; rank r of W takes rows r, r + W, ... of each epoch."""

    def __init__(self, path: str, pad_id: int, packing: bool, rank: int, world_size: int,
                 micro_batch_size: int, seq_len: int, seed: int):
        self.data = TokenizedTraces.load(path)
        if len(self.data) == 0:
            raise ValueError(f"{path} holds no training examples")
        longest = int(self.data.lengths.max())
        if longest > seq_len:
            raise ValueError(f"{path} holds an example of {longest} tokens but train.seq_len is {seq_len}")
        self.pad_id, self.packing, self.rank, self.world = pad_id, packing, rank, world_size
        self.mbs, self.seq_len, self.seed = micro_batch_size, seq_len, seed
        self.epoch, self.index = 0, 0          # index: micro-batches this rank consumed this epoch
        self._rows = self._epoch(0)

    def _epoch(self, epoch: int) -> list[list[int]]:
        rows = epoch_rows(self.data, self.seq_len, self.seed, epoch, self.packing)
        per_rank = len(rows) // self.world // self.mbs * self.mbs   # equal on every rank
        if per_rank == 0:
            raise ValueError(f"{len(self.data)} traces make {len(rows)} rows of {self.seq_len} tokens: fewer than "
                             f"one micro-batch ({self.mbs}) for each of {self.world} rank(s); keep more traces, "
                             f"or lower train.batch_size or train.seq_len")
        return rows[self.rank::self.world][:per_rank]

    def next_batch(self) -> dict[str, torch.Tensor]:
        if (self.index + 1) * self.mbs > len(self._rows):
            self.epoch, self.index = self.epoch + 1, 0
            self._rows = self._epoch(self.epoch)
        rows = self._rows[self.index * self.mbs:(self.index + 1) * self.mbs]
        self.index += 1
        return collate(self.data, rows, self.pad_id)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._rows) // self.mbs

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "world_size": self.world}

    def load_state_dict(self, state: dict) -> None:
        if int(state["world_size"]) != self.world:
            raise ValueError(f"the SFT data position was saved with {state['world_size']} ranks and cannot resume "
                             f"on {self.world} (each rank's rows depend on the rank count)")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._rows = self._epoch(self.epoch)


@dataclass
class SFTTrainData:
    """Recipe for :class:`SFTBatchSource`: a TokenizedTraces folder every worker can read."""

    path: str
    pad_id: int
    packing: bool = True

    def open(self, rank: int, world_size: int, micro_batch_size: int, seq_len: int, seed: int) -> SFTBatchSource:
        return SFTBatchSource(self.path, self.pad_id, self.packing, rank, world_size, micro_batch_size, seq_len, seed)


@dataclass
class SFTEvalData:
    """Held-back traces for validation loss (on the assistant tokens), packed in file order."""

    path: str
    pad_id: int
    bytes_per_token_id: np.ndarray | None = None
    packing: bool = True
    name: str = "traces"

    def open(self, rank: int, world_size: int, micro_batch_size: int, seq_len: int,
             max_batches: int) -> dict[str, list[dict[str, torch.Tensor]]]:
        data = TokenizedTraces.load(self.path)
        keep = [i for i in range(len(data)) if data.lengths[i] <= seq_len]
        rows = pack(data.lengths, seq_len, keep) if self.packing else [[i] for i in keep]
        mine = rows[rank::world_size][:max_batches * micro_batch_size]
        return {self.name: [collate(data, mine[i:i + micro_batch_size], self.pad_id)
                            for i in range(0, len(mine), micro_batch_size)]}

    def token_bytes(self) -> np.ndarray | None:
        return self.bytes_per_token_id
