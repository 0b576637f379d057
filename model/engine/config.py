"""EngineConfig: the serving engine's knobs. pydantic only (no torch), so stage configs embed it.

    num_slots                KV-cache slots = requests decoding at once (the running batch)
    max_seq_len              positions per slot: prompt + completion must fit
    max_num_batched_tokens   token budget of one engine step (decode tokens first, prefill chunks
                             fill the rest), which bounds the latency a long prompt adds to the
                             other requests' next token
    max_prefill_chunk        at most this many prompt tokens of one request per step
    max_waiting              queued requests beyond the running batch; more are refused
                             (EngineOverloaded -> HTTP 503), so overload is visible, not a timeout
    use_mtp                  MTP self-speculative decoding for greedy requests
    mtp_max_batch            speculate only while at most this many speculative requests decode at
                             once: a verify step feeds 2 tokens per row, which costs ~nothing at
                             batch 1 (overhead-bound) but ~2x once the step is compute-bound
    mtp_min_acceptance       speculate only while the measured draft acceptance (moving average)
                             is at least this; below it a verify step yields too few extra tokens
    mtp_probe_interval       after turning MTP off for low acceptance, speculate again for one
                             step every this many steps to re-measure it
    kv_cache_memory_mb       when set, caps num_slots to what this much cache memory holds
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    num_slots: int = Field(16, ge=1)
    max_seq_len: int = Field(1024, ge=2)
    max_num_batched_tokens: int = Field(256, ge=2)
    max_prefill_chunk: int = Field(128, ge=1)
    max_waiting: int = Field(64, ge=0)
    use_mtp: bool = True
    mtp_max_batch: int = Field(4, ge=0)
    mtp_min_acceptance: float = Field(0.35, ge=0, le=1)
    mtp_probe_interval: int = Field(32, ge=1)
    kv_cache_memory_mb: float | None = Field(None, gt=0)
    # "auto": the model's parameter dtype
    kv_cache_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # MLA attention path over the cache: absorbed for decode, expanded for long prefill chunks
    mla_mode: Literal["auto", "absorbed", "expanded"] = "auto"

    @model_validator(mode="after")
    def _budget_covers_decodes(self) -> "EngineConfig":
        # every running request gets its decode token(s) each step and prefill still advances:
        # a speculative row verifies 2 tokens per step
        per_row = 2 if self.use_mtp else 1
        if self.max_num_batched_tokens <= self.num_slots * per_row:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must exceed num_slots x "
                f"{per_row} = {self.num_slots * per_row} (the decode tokens of a full batch"
                f"{' with MTP verification' if self.use_mtp else ''}), or prompts would never be prefilled")
        return self
