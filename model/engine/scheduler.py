"""Continuous batching: which requests run in the next engine step, and how many tokens each.

One step has a token budget (``max_num_batched_tokens``). Decoding requests go first and all of
them run every step, so a request that has started streaming never stalls behind newcomers
(1 token each, 2 for an MTP verification). The rest of the budget goes to prompt prefill in
chunks of at most ``max_prefill_chunk`` tokens, first-come first-served: prompts already being
prefilled continue, then waiting requests are admitted while a KV-cache slot is free. A long
prompt is therefore spread over several steps and delays the others' next token by one chunk,
not by the whole prompt (chunked prefill, as in Sarathi-Serve and vLLM).

Requests join the batch at any step boundary and leave it the step they finish or are aborted,
freeing their slot for the next admission.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from model.engine.config import EngineConfig
from model.engine.request import EngineOverloaded, Request, Status
from model.kv_cache import LatentKVCache


@dataclass
class StepPlan:
    prefill: list[tuple[Request, int]] = field(default_factory=list)   # (request, prompt tokens)
    decode: list[Request] = field(default_factory=list)
    # filled by the runner: speculative rows verified, drafts accepted, tokens they emitted
    spec_rows: int = 0
    spec_accepted: int = 0
    spec_tokens: int = 0
    spec_mode: str = ""     # "on" | "off_batch" | "off_acceptance" | "" (no speculative row)

    @property
    def empty(self) -> bool:
        return not self.prefill and not self.decode

    @property
    def requests(self) -> list[Request]:
        return [r for r, _ in self.prefill] + self.decode

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.prefill) + sum(decode_cost(r) for r in self.decode)


def decode_cost(r: Request) -> int:
    return 2 if r.speculative else 1


class Scheduler:
    def __init__(self, config: EngineConfig, cache: LatentKVCache):
        self.config = config
        self.cache = cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []     # in admission order (prefill is FCFS)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, request: Request, *, enforce_queue_limit: bool = True) -> None:
        # requests that will get a slot at the next step do not count as queued
        queued = max(0, len(self.waiting) - self.cache.num_free)
        if enforce_queue_limit and queued >= self.config.max_waiting:
            raise EngineOverloaded(
                f"the engine is full: {len(self.running)} requests running, {len(self.waiting)} waiting "
                f"(max_waiting={self.config.max_waiting}); retry later")
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Take a finished or aborted request out of the queues and free its slot."""
        if request.status is Status.WAITING:
            self.waiting.remove(request)
        else:
            self.running.remove(request)
            if request.slot is not None:
                self.cache.free(request.slot)
                request.slot = None
        request.status = Status.FINISHED

    def schedule(self) -> StepPlan:
        plan = StepPlan(decode=[r for r in self.running if r.status is Status.DECODE])
        budget = self.config.max_num_batched_tokens - sum(decode_cost(r) for r in plan.decode)
        chunk = self.config.max_prefill_chunk
        for r in self.running:
            if budget <= 0:
                return plan
            if r.status is Status.PREFILL:
                n = min(r.prompt_remaining, budget, chunk)
                plan.prefill.append((r, n))
                budget -= n
        while budget > 0 and self.waiting and self.cache.num_free:
            r = self.waiting.popleft()
            r.slot = self.cache.allocate()
            r.status = Status.PREFILL
            self.running.append(r)
            n = min(r.prompt_remaining, budget, chunk)
            plan.prefill.append((r, n))
            budget -= n
        return plan
