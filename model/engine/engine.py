"""The continuous-batching generation engine (synchronous core).

    engine = Engine(model, EngineConfig(num_slots=16, max_seq_len=1024))
    rid = engine.add_request(prompt_ids, GenerationParams(max_tokens=64))
    while engine.has_unfinished():
        for out in engine.step():          # RequestOutput: new tokens, finish reason
            ...
    engine.generate([ids_a, ids_b], GenerationParams(max_tokens=32))   # batch to completion

A step is ``schedule()`` (pick requests, allocate slots), ``execute(plan)`` (model compute only;
may run in a worker thread) and ``postprocess(plan)`` (outputs, finished requests leave, slots
freed). While a plan executes, ``add_request`` only queues and ``abort`` only flags; both take
effect at the next step boundary, so an event loop may call them freely
(:class:`model.engine.AsyncEngine` does).

Memory: the MLA latent KV cache is one preallocated pool of ``num_slots`` x ``max_seq_len``
positions; admission is by free slot, so the cache can never run out mid-generation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from model.engine.config import EngineConfig
from model.engine.request import (
    Completion,
    EngineStopped,
    GenerationParams,
    Request,
    RequestOutput,
    check_prompt,
)
from model.engine.runner import ModelRunner
from model.engine.scheduler import Scheduler, StepPlan
from model.engine.stats import EngineStats

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ContextLengthExceeded(ValueError):
    """prompt + max_tokens does not fit the engine's max_seq_len."""


class Engine:
    def __init__(self, model, config: EngineConfig | None = None, *,
                 eos_token_ids: Sequence[int] | None = None, vocab_size: int | None = None):
        """``vocab_size``: the tokenizer's vocabulary when the model's embedding is padded past it;
        ids at or beyond it are never sampled (their logits are masked in the runner) nor accepted
        in prompts. Default: the model's vocab_size."""
        self.config = config = config or EngineConfig()
        self.model = model.eval()
        mcfg = model.config
        if config.max_seq_len > mcfg.max_position_embeddings:
            raise ValueError(f"engine max_seq_len {config.max_seq_len} exceeds the model's "
                             f"max_position_embeddings {mcfg.max_position_embeddings}")
        self.use_mtp = config.use_mtp and len(model.mtp) > 0
        dtype = None if config.kv_cache_dtype == "auto" else _DTYPES[config.kv_cache_dtype]
        self.num_slots = self._slots_for_memory(config, dtype)
        self.cache = model.new_kv_cache(self.num_slots, config.max_seq_len, dtype=dtype, with_mtp=self.use_mtp)
        self.scheduler = Scheduler(config, self.cache)
        self.vocab_size = mcfg.vocab_size if vocab_size is None else vocab_size
        if not 0 < self.vocab_size <= mcfg.vocab_size:
            raise ValueError(f"vocab_size {self.vocab_size} must lie in (0, {mcfg.vocab_size}], the model's vocabulary")
        self.runner = ModelRunner(model, self.cache, config.mla_mode, vocab_size=self.vocab_size, config=config)
        self.eos_token_ids = frozenset(mcfg.eos_token_ids if eos_token_ids is None else eos_token_ids)
        self.stats = EngineStats()
        self.requests: dict[str, Request] = {}
        self._plan: StepPlan | None = None          # the step between schedule and postprocess
        self._deferred_aborts: list[Request] = []
        self._ids = itertools.count()
        self.stopped = False

    def _slots_for_memory(self, config: EngineConfig, dtype) -> int:
        if config.kv_cache_memory_mb is None:
            return config.num_slots
        probe = self.model.new_kv_cache(1, 1, dtype=dtype, with_mtp=self.use_mtp)
        slot_bytes = probe.bytes_per_token() * config.max_seq_len
        fit = int(config.kv_cache_memory_mb * 2**20 // slot_bytes)
        if fit < 1:
            raise ValueError(f"kv_cache_memory_mb={config.kv_cache_memory_mb} holds no slot of "
                             f"max_seq_len={config.max_seq_len} ({slot_bytes / 2**20:.2f} MiB each)")
        return min(config.num_slots, fit)

    # -- properties ---------------------------------------------------------------------------
    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_free_slots(self) -> int:
        return self.cache.num_free

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0 or bool(self._deferred_aborts)

    # -- requests -----------------------------------------------------------------------------
    def add_request(self, prompt: Sequence[int], params: GenerationParams | None = None,
                    request_id: str | None = None, *, enforce_queue_limit: bool = True) -> str:
        """Queue a request; returns its id. Raises ValueError (bad prompt), ContextLengthExceeded,
        EngineOverloaded (queue full) or EngineStopped."""
        if self.stopped:
            raise EngineStopped("the engine is shutting down")
        params = params or GenerationParams()
        ids = check_prompt(prompt, self.vocab_size)
        if len(ids) + params.max_tokens > self.max_seq_len:
            raise ContextLengthExceeded(
                f"the context is {self.max_seq_len} tokens, but the prompt has {len(ids)} and max_tokens "
                f"asks for {params.max_tokens} more; shorten the prompt or lower max_tokens")
        rid = request_id or f"req-{next(self._ids)}"
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in use")
        stop = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_token_ids)
        r = Request(rid, ids, params, stop, speculative=self.use_mtp and params.greedy,
                    generator=params.sampling.generator(self.cache.device))
        self.scheduler.add(r, enforce_queue_limit=enforce_queue_limit)
        self.requests[rid] = r
        return rid

    def abort(self, request_id: str, reason: str = "abort") -> bool:
        """End a request early and free its cache slot (at once, or at the end of the running
        step). ``reason``: "abort" (client gone, timeout) or "stop" (the caller found a stop
        string). False if it is unknown or already finished."""
        r = self.requests.get(request_id)
        if r is None or r.finished or r.aborted:
            return False
        r.aborted, r.abort_reason = True, reason
        if self._plan is not None:
            self._deferred_aborts.append(r)
        else:
            self._finish(r, reason)
        return True

    def _finish(self, r: Request, reason: str | None = None) -> None:
        if r.finished:
            return
        if reason:
            r.finish_reason = reason
        self.scheduler.remove(r)
        del self.requests[r.id]
        if r.finish_reason == "abort":
            self.stats.aborted_requests += 1
        elif r.finish_reason == "error":
            self.stats.failed_requests += 1
        else:
            self.stats.finished_requests += 1

    # -- stepping -----------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        if self._plan is not None:
            raise RuntimeError("schedule() called before the previous step was postprocessed")
        for r in self._deferred_aborts:
            self._finish(r, r.abort_reason)
        self._deferred_aborts.clear()
        self._plan = self.scheduler.schedule()
        return self._plan

    def execute(self, plan: StepPlan) -> None:
        """Model compute for ``plan``; touches only the plan's requests and their cache slots."""
        for r in plan.requests:
            r.new_tokens, r.step_generated = [], 0
        self.runner.execute(plan)

    def postprocess(self, plan: StepPlan, error: BaseException | None = None) -> list[RequestOutput]:
        """Outputs of the step; finished and aborted requests leave the batch. With ``error``
        (execute raised) the plan's requests end with that error."""
        self._plan = None
        outputs = []
        st = self.stats
        st.steps += 1
        st.prompt_tokens += sum(n for _, n in plan.prefill)
        for r in plan.requests:
            if error is not None:
                r.finish_reason = "error"
                outputs.append(self._output(r, error=f"{type(error).__name__}: {error}"))
                self._finish(r)
                continue
            st.generated_tokens += r.step_generated
            if r.aborted:
                self._finish(r, r.abort_reason)
                continue
            if r.finish_reason is not None or r.new_tokens:
                outputs.append(self._output(r))
            if r.finish_reason is not None:
                self._finish(r)
        self._deferred_aborts = [r for r in self._deferred_aborts if not r.finished]
        if error is None:
            st.spec_drafted += plan.spec_rows
            st.spec_accepted += plan.spec_accepted
            st.spec_tokens += plan.spec_tokens
            if plan.spec_mode:
                setattr(st, f"spec_steps_{plan.spec_mode}", getattr(st, f"spec_steps_{plan.spec_mode}") + 1)
                st.spec_acceptance_ema = self.runner.acceptance_ema
        return outputs

    def _output(self, r: Request, error: str | None = None) -> RequestOutput:
        return RequestOutput(r.id, list(r.new_tokens), len(r.prompt), r.num_generated,
                             finished=r.finish_reason is not None, finish_reason=r.finish_reason,
                             stop_token_id=r.stop_token, drafted=r.drafted, accepted=r.accepted, error=error)

    def step(self) -> list[RequestOutput]:
        plan = self.schedule()
        try:
            self.execute(plan)
        except Exception as e:  # noqa: BLE001 - the plan's requests fail, the engine goes on
            return self.postprocess(plan, error=e)
        return self.postprocess(plan)

    # -- batch API (distill, eval) -------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: GenerationParams | Sequence[GenerationParams]
                 ) -> list[Completion]:
        """Run ``prompts`` to completion with continuous batching; results in prompt order."""
        params_list = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} params for {len(prompts)} prompts")
        ids = [self.add_request(p, q, enforce_queue_limit=False) for p, q in zip(prompts, params_list, strict=True)]
        index = {rid: i for i, rid in enumerate(ids)}
        results: list[Completion | None] = [None] * len(prompts)
        tokens: dict[str, list[int]] = {rid: [] for rid in ids}
        while any(r is None for r in results):
            for out in self.step():
                if out.request_id not in index:
                    continue
                tokens[out.request_id] += out.new_token_ids
                if out.finished:
                    if out.error:
                        raise RuntimeError(f"generation failed: {out.error}")
                    results[index[out.request_id]] = Completion(
                        tokens[out.request_id], out.finish_reason, out.num_prompt_tokens, out.stop_token_id,
                        out.drafted, out.accepted)
        return results  # type: ignore[return-value]
