"""What the trainer reads: batch sources, one per data-parallel rank, with a checkpointable position.

A stage hands the trainer *recipes* (picklable objects with an ``open`` method); each Ray Train
worker opens its own source for its rank, so nothing big crosses the process boundary:

    class MyData:                                  # TrainData
        def open(self, rank, world_size, micro_batch_size, seq_len, seed) -> BatchSource: ...

    class MySource:                                # BatchSource
        def next_batch(self) -> dict[str, torch.Tensor]: ...   # one micro-batch of this rank
        def state_dict(self) -> dict: ...          # JSON-able position, saved in every checkpoint
        def load_state_dict(self, state: dict) -> None: ...

A micro-batch is a dict of [B, T] tensors:

    input_ids    int64 token ids (required)
    labels       aligned with input_ids, HF convention: position i is trained on labels[i + 1];
                 -100 = not a target. Default: input_ids (plain language modelling).
    loss_mask    1 where the token counts as a target (SFT: assistant tokens only). Optional.
    segment_ids  document id per token for packed sequences: attention stays inside a document
                 and no target crosses a boundary. Optional.

Resuming must be exact: after ``load_state_dict(s)`` the source yields exactly what it yielded
after the ``state_dict()`` call that produced ``s``. Every rank must yield a batch on every call
(an endless stream: wrap around epochs inside the source).

Evaluation sets are finite: ``EvalData.open(...)`` returns named lists of micro-batches (e.g.
``{"web": [...], "code": [...]}``); ``token_bytes()`` gives the UTF-8 bytes of every token id
(0 for specials) for bits per byte, or None to report loss only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

BATCH_KEYS = ("input_ids", "labels", "loss_mask", "segment_ids")


@runtime_checkable
class BatchSource(Protocol):
    def next_batch(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class TrainData(Protocol):
    def open(self, rank: int, world_size: int, micro_batch_size: int, seq_len: int, seed: int) -> BatchSource: ...


class EvalData(Protocol):
    def open(self, rank: int, world_size: int, micro_batch_size: int, seq_len: int,
             max_batches: int) -> dict[str, list[dict[str, torch.Tensor]]]: ...

    def token_bytes(self) -> np.ndarray | None: ...


def check_batch(batch: dict[str, torch.Tensor], micro_batch_size: int, seq_len: int) -> None:
    """Fail with a message naming the source's mistake, not deep inside the model."""
    unknown = sorted(set(batch) - set(BATCH_KEYS))
    if unknown:
        raise ValueError(f"batch has unknown keys {unknown}; expected some of {BATCH_KEYS}")
    if "input_ids" not in batch:
        raise ValueError("batch has no input_ids")
    shape = tuple(batch["input_ids"].shape)
    if len(shape) != 2 or shape[0] != micro_batch_size or shape[1] > seq_len:
        raise ValueError(f"input_ids has shape {shape}; expected ({micro_batch_size}, <= {seq_len})")
    for key in BATCH_KEYS[1:]:
        if key in batch and tuple(batch[key].shape) != shape:
            raise ValueError(f"{key} has shape {tuple(batch[key].shape)}, input_ids {shape}")
