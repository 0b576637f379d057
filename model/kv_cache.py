"""The latent KV cache: a preallocated pool of sequence slots, MLA's compressed form only.

Per attention layer it holds ``pools`` [num_slots, max_seq_len, kv_lora_rank + qk_rope_head_dim]:
c_KV (``latents``, a view of the first kv_lora_rank columns) and k_R (``rope_keys``, the rest):
576 numbers per token and layer at DeepSeek-V3's shape, against 40 960 for MHA with the same heads.
A serving engine allocates
a slot per request, steps any set of slots at their own positions, and frees the slot when the
request ends; lengths are host-side integers (scheduler state, no device sync).

Layer indices are global: 0..num_hidden_layers-1 for the main model, num_hidden_layers for the
first MTP module (drafting), whose positions lag the main model's by one (``mtp_lengths``).
"""

from __future__ import annotations

import torch

from model.config import ModelConfig


class LatentKVCache:
    def __init__(self, config: ModelConfig, num_slots: int, max_seq_len: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 with_mtp: bool = True):
        if num_slots < 1 or max_seq_len < 1:
            raise ValueError(f"need num_slots >= 1 and max_seq_len >= 1, got {num_slots}, {max_seq_len}")
        self.num_slots, self.max_seq_len = num_slots, max_seq_len
        n_layers = config.num_hidden_layers + (1 if with_mtp and config.num_nextn_predict_layers else 0)
        C = config.kv_lora_rank
        # one pool per layer, [c_KV ; k_R] side by side: a decode step writes and reads both in one
        # indexing op, and the absorbed attention scores against them in one matmul
        self.pools = [torch.zeros(num_slots, max_seq_len, C + config.qk_rope_head_dim, device=device, dtype=dtype)
                      for _ in range(n_layers)]
        self.latents = [p[..., :C] for p in self.pools]
        self.rope_keys = [p[..., C:] for p in self.pools]
        self.has_mtp = n_layers > config.num_hidden_layers
        self.lengths = [0] * num_slots        # main-model tokens cached per slot
        self.mtp_lengths = [0] * num_slots    # positions the MTP layer has cached per slot
        self._free = list(range(num_slots - 1, -1, -1))
        self._in_use: set[int] = set()

    @property
    def device(self) -> torch.device:
        return self.latents[0].device

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """A free slot, emptied. Raises RuntimeError when the pool is full."""
        if not self._free:
            raise RuntimeError(f"all {self.num_slots} KV-cache slots are in use")
        slot = self._free.pop()
        self._in_use.add(slot)
        self.lengths[slot] = self.mtp_lengths[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        self._check(slot)
        self._in_use.remove(slot)
        self._free.append(slot)

    def truncate(self, slot: int, length: int) -> None:
        """Forget positions >= length (rejected speculative tokens). Entries stay in memory but
        are masked out and overwritten by the next step."""
        self._check(slot)
        self.lengths[slot] = min(self.lengths[slot], length)
        self.mtp_lengths[slot] = min(self.mtp_lengths[slot], length)

    def _check(self, slot: int) -> None:
        if slot not in self._in_use:
            raise ValueError(f"KV-cache slot {slot} is not allocated")

    def check_room(self, slots: list[int], n_new: int, *, mtp: bool = False) -> list[int]:
        """Start positions of the next ``n_new`` tokens of each slot; errors if they do not fit."""
        lengths = self.mtp_lengths if mtp else self.lengths
        starts = []
        for s in slots:
            self._check(s)
            if lengths[s] + n_new > self.max_seq_len:
                raise ValueError(f"slot {s} holds {lengths[s]} tokens; {n_new} more exceed "
                                 f"max_seq_len={self.max_seq_len}")
            starts.append(lengths[s])
        return starts

    def bytes_per_token(self) -> int:
        """Cache bytes per token, all layers together."""
        return sum(t.shape[-1] * t.element_size() for t in self.pools)
