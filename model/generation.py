"""Cached decoding: the step API a serving engine drives, and ``generate`` built on it.

Step API (all under ``torch.no_grad``, model in eval mode)::

    cache = model.new_kv_cache(num_slots=8, max_seq_len=4096)
    slot = cache.allocate()
    out = model.step(cache, [slot], prompt_ids[None])          # prefill (chunked: call again)
    out = model.step(cache, [s0, s1, s2], last_tokens[:, None]) # decode: each slot at its own position
    out = model.step(cache, [s0], torch.tensor([[x, draft]]))   # verify k tokens in one step
    cache.truncate(s0, n)                                      # drop rejected speculative tokens
    cache.free(slot)

``step`` returns logits and the final normalised hidden states of the new tokens. With an MTP
module, ``mtp_draft(cache, slots, hidden, next_tokens)`` drafts token t+2 from the hidden state
at t and token t+1 (self-speculative decoding, V3 §5.4.3); its cache positions trail the main
model's by one and are filled as the caller feeds it (``model.engine.runner`` shows how).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from model.attention import AttentionContext, CacheStep, MLAMode
from model.kv_cache import LatentKVCache

if TYPE_CHECKING:
    from model.transformer import DeepSeekV3


@dataclass
class StepOutput:
    logits: torch.Tensor   # [B, T, V] (T = 1 with last_only)
    hidden: torch.Tensor   # [B, T, D] final normalised hidden states of every new token


@dataclass
class Generation:
    """One prompt's result. ``tokens`` are the new tokens, without the stop token that ended
    them (``stop_token``)."""

    tokens: list[int]
    finish_reason: str                 # "stop" | "length"
    stop_token: int | None = None
    drafted: int = 0                   # MTP drafts proposed / accepted (use_mtp)
    accepted: int = 0


class GenerationMixin:
    """Cached decoding for :class:`model.transformer.DeepSeekV3`."""

    def new_kv_cache(self: "DeepSeekV3", num_slots: int, max_seq_len: int, *, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None, with_mtp: bool = True) -> LatentKVCache:
        if max_seq_len > self.config.max_position_embeddings:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        w = self.embed_tokens.weight
        return LatentKVCache(self.config, num_slots, max_seq_len, device=device or w.device,
                             dtype=dtype or w.dtype, with_mtp=with_mtp)

    def _cache_context(self: "DeepSeekV3", cache: LatentKVCache, slots: Sequence[int], n_new: int,
                       mla_mode: MLAMode, mtp: bool = False) -> AttentionContext:
        starts = cache.check_room(list(slots), n_new, mtp=mtp)
        device = cache.device
        positions = torch.tensor(starts, device=device)[:, None] + torch.arange(n_new, device=device)
        slots = list(slots)
        consecutive = slots == list(range(slots[0], slots[0] + len(slots)))
        step = CacheStep(cache, torch.tensor(slots, device=device), positions, max(starts) + n_new,
                         (slots[0], slots[0] + len(slots)) if consecutive else None)
        return AttentionContext.for_cache_step(self.rotary, step, mla_mode)

    @torch.no_grad()
    def step(self: "DeepSeekV3", cache: LatentKVCache, slots: Sequence[int], token_ids: torch.Tensor, *,
             last_only: bool = False, mla_mode: MLAMode = "auto") -> StepOutput:
        """Append ``token_ids`` [B, T] to slots ``slots`` (each at its own current length) and
        return logits/hidden of those tokens. Prefill = one slot, the prompt; decode = T=1."""
        if token_ids.dim() != 2 or token_ids.shape[0] != len(slots):
            raise ValueError(f"token_ids must be [len(slots)={len(slots)}, T], got {tuple(token_ids.shape)}")
        ctx = self._cache_context(cache, slots, token_ids.shape[1], mla_mode)
        h = self.embed_tokens(token_ids.to(cache.device))
        for layer in self.layers.values():
            h, _ = layer(h, ctx)
        h = self.norm(h)
        for s in slots:
            cache.lengths[s] += token_ids.shape[1]
        return StepOutput(self.lm_head(h[:, -1:] if last_only else h), h)

    @torch.no_grad()
    def mtp_draft(self: "DeepSeekV3", cache: LatentKVCache, slots: Sequence[int], hidden: torch.Tensor,
                  next_tokens: torch.Tensor, *, mla_mode: MLAMode = "auto", last_only: bool = False) -> torch.Tensor:
        """Run the first MTP module on (hidden [B, T, D] at positions p.., tokens [B, T] at p+1..)
        where p is each slot's MTP length; returns draft logits [B, T, V] for positions p+2..
        ([B, 1, V], the last only, with ``last_only``)."""
        if not len(self.mtp) or not cache.has_mtp:
            raise ValueError("mtp_draft needs a model with MTP layers and a cache made with with_mtp=True")
        T = next_tokens.shape[1]
        for s in slots:
            if cache.mtp_lengths[s] + T > cache.lengths[s]:
                raise ValueError(f"slot {s}: MTP would reach position {cache.mtp_lengths[s] + T - 1} but the "
                                 f"main model has cached only {cache.lengths[s]} tokens")
        ctx = self._cache_context(cache, slots, T, mla_mode, mtp=True)
        layer = self.mtp[0]
        h, _ = layer(hidden, self.embed_tokens(next_tokens.to(cache.device)), ctx)
        for s in slots:
            cache.mtp_lengths[s] += T
        return self.lm_head(layer.shared_head.norm(h[:, -1:] if last_only else h))

    @torch.no_grad()
    def generate(self: "DeepSeekV3", prompts: Sequence[Sequence[int]] | torch.Tensor, *,
                 max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 seed: int | Sequence[int] | None = None, stop_token_ids: Sequence[int] | None = None,
                 use_mtp: bool = False, cache_dtype: torch.dtype | None = None,
                 vocab_size: int | None = None, max_batch: int = 64) -> list[Generation]:
        """Generate for prompts of any lengths: a thin wrapper over :class:`model.engine.Engine`
        (the one decode loop), kept for callers that predate it.

        Greedy when temperature is 0; else temperature / top-k / top-p sampling. ``seed``: one int
        (row b uses seed + b) or one per prompt. ``stop_token_ids`` default to the config's EOS;
        pass ``[]`` to run to ``max_new_tokens``. ``use_mtp``: greedy self-speculative decoding
        with the MTP module (same tokens as plain greedy). ``vocab_size``: never sample ids at or
        past it. At most ``max_batch`` prompts decode at once (continuous batching).
        """
        from model.engine import Engine, EngineConfig, GenerationParams

        prompts = [torch.as_tensor(p, dtype=torch.long).flatten().tolist() for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if use_mtp and (temperature != 0 or not len(self.mtp)):
            raise ValueError("use_mtp needs greedy decoding (temperature=0) and a model with MTP layers")
        seeds = _row_seeds(seed, len(prompts))
        slots = min(len(prompts), max_batch)
        config = EngineConfig(
            num_slots=slots, max_seq_len=max(map(len, prompts)) + max_new_tokens, max_prefill_chunk=512,
            max_num_batched_tokens=2 * slots + 512, max_waiting=len(prompts), use_mtp=use_mtp,
            kv_cache_dtype=_DTYPE_NAMES[cache_dtype], mtp_max_batch=slots)
        was_training = self.training
        try:
            engine = Engine(self, config, vocab_size=vocab_size,
                            eos_token_ids=self.config.eos_token_ids if stop_token_ids is None else stop_token_ids)
            done = engine.generate(prompts, [GenerationParams(max_new_tokens, temperature, top_p, top_k, s)
                                             for s in seeds])
        finally:
            self.train(was_training)
        return [Generation(c.token_ids, c.finish_reason, c.stop_token_id, c.drafted, c.accepted) for c in done]


_DTYPE_NAMES = {None: "auto", torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _row_seeds(seed: int | Sequence[int] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, int):
        return [seed + b for b in range(n)]
    if len(seed) != n:
        raise ValueError(f"got {len(seed)} seeds for {n} prompts")
    return list(seed)
