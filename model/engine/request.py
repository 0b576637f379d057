"""What goes into the engine (prompt ids + GenerationParams) and what comes out (RequestOutput),
plus the per-request state the scheduler and the runner share."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model.sampling import SamplingParams

if TYPE_CHECKING:
    import torch


class EngineError(RuntimeError):
    """The engine cannot serve a request (base class)."""


class EngineOverloaded(EngineError):
    """The waiting queue is full; retry later (HTTP 503)."""


class EngineStopped(EngineError):
    """The engine is shutting down or has failed; it takes no new requests."""


@dataclass(frozen=True)
class GenerationParams:
    """Per-request decoding settings.

    max_tokens      completion tokens at most (the stop token counts as one)
    temperature     0 = greedy; top_p / top_k as in :class:`model.sampling.SamplingParams`
    seed            seeds this request's own generator: same prompt + params + seed -> same tokens
    stop_token_ids  extra stop tokens; the model's EOS ids stop too unless ``ignore_eos``
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        _ = self.sampling  # validates temperature / top_p / top_k

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.top_k, self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Status(enum.Enum):
    WAITING = "waiting"      # queued, no cache slot yet
    PREFILL = "prefill"      # slot allocated, prompt partly in the cache
    DECODE = "decode"        # prompt cached; one token emitted and not yet fed back
    FINISHED = "finished"


@dataclass
class Request:
    """Engine-internal state of one request. The runner mutates the decode state of the requests
    in a step plan; everything else is touched between steps only."""

    id: str
    prompt: list[int]
    params: GenerationParams
    stop_ids: frozenset[int]
    speculative: bool                       # MTP drafts for this request (greedy + use_mtp)
    status: Status = Status.WAITING
    slot: int | None = None
    num_prefilled: int = 0                  # prompt tokens in the cache
    output: list[int] = field(default_factory=list)   # emitted tokens (without a stop token)
    num_generated: int = 0                  # emitted tokens including a stop token
    next_token: int | None = None           # last emitted token, not yet in the cache
    generator: "torch.Generator | None" = None
    # MTP state: the hidden state at the last cached position (paired with the token after it
    # once that is known) and the (hidden_p, token_{p+1}) pairs not yet fed to the MTP module
    last_hidden: "torch.Tensor | None" = None
    mtp_pending: list[tuple["torch.Tensor", int]] = field(default_factory=list)
    mtp_last_fed: tuple["torch.Tensor", int] | None = None   # the pair at the MTP cache's last position
    drafted: int = 0
    accepted: int = 0
    finish_reason: str | None = None        # "stop" | "length" | "abort" | "error"
    stop_token: int | None = None
    aborted: bool = False
    abort_reason: str = "abort"
    new_tokens: list[int] = field(default_factory=list)   # emitted during the current step
    step_generated: int = 0                 # emitted during the current step, stop token included

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def prompt_remaining(self) -> int:
        return len(self.prompt) - self.num_prefilled

    def emit(self, token: int) -> bool:
        """Record a sampled token; True when the request is finished by it."""
        self.num_generated += 1
        self.step_generated += 1
        if token in self.stop_ids:
            self.finish_reason, self.stop_token = "stop", token
            return True
        self.output.append(token)
        self.new_tokens.append(token)
        if self.num_generated >= self.params.max_tokens:
            self.finish_reason = "length"
            return True
        return False


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request: the tokens emitted in that step (a
    speculative step may emit two) and, when it ended, why."""

    request_id: str
    new_token_ids: list[int]
    num_prompt_tokens: int
    num_output_tokens: int            # emitted so far, a stop token included
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" | "shutdown"
    stop_token_id: int | None = None
    drafted: int = 0                  # MTP drafts proposed / accepted for this request so far
    accepted: int = 0
    error: str | None = None          # set when the engine failed while running this request


@dataclass
class Completion:
    """A finished request, as :meth:`model.engine.Engine.generate` returns it."""

    token_ids: list[int]
    finish_reason: str
    num_prompt_tokens: int
    stop_token_id: int | None = None
    drafted: int = 0
    accepted: int = 0


def check_prompt(prompt: Sequence[int], vocab_size: int) -> list[int]:
    ids = [int(t) for t in prompt]
    if not ids:
        raise ValueError("the prompt is empty: it needs at least one token")
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {vocab_size})")
    return ids
