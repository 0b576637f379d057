"""The OpenAI-compatible HTTP API over the engine, as a Starlette ASGI app.

    GET  /health                 200 while the engine can serve, else 503 (no auth: for probes)
    GET  /v1/models              the served model
    POST /v1/completions         text in, text out (prompt: str | [str] | [int] | [[int]])
    POST /v1/chat/completions    the tokenizer's chat template; <think> reasoning returned as
                                 reasoning_content and reasoning, the answer as content
    GET  /stats                  engine counters (running, waiting, free slots, MTP acceptance)

Streaming is server-sent events ending with ``data: [DONE]``. Every request is checked and all
of its engine requests are queued before the response starts, so bad input and overload get a
proper status code (400/401/404/413/422/503), never a 500 or a half-sent stream. A client that
disconnects (``asyncio.CancelledError``) or a request that times out aborts its engine requests,
which frees their KV-cache slots.

Independent of Ray: ``OpenAIServer(engine, tokenizer, settings).app`` runs under any ASGI server;
the Ray Serve deployment (stages.serve.deployment) wraps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from model.engine import AsyncEngine, ContextLengthExceeded, EngineError, EngineOverloaded, GenerationParams, TextStream
from stages.serve import protocol as P
from stages.serve.metrics import NullMetrics
from stages.serve.reasoning import ReasoningSplitter

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499   # nginx's code for "client closed the request", used in metrics only


@dataclass(frozen=True)
class ServerSettings:
    model_name: str
    model_uri: str | None = None
    max_request_bytes: int = 1 << 20
    request_timeout_s: float = 300.0
    default_max_tokens: int = 512            # chat without max_tokens (capped by the context)
    completion_default_max_tokens: int = 16  # /v1/completions without max_tokens (OpenAI's default)
    max_n: int = 8
    api_key: str | None = None               # None: no auth
    metrics_interval_s: float = 1.0


class _EngineFailure(Exception):
    """The engine failed (500) or is shutting down (503) while generating."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


@dataclass
class _Choice:
    index: int
    request_id: str
    text: TextStream
    splitter: ReasoningSplitter | None
    tokens: int = 0
    finish_reason: str | None = None
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)


@dataclass
class _Delta:
    index: int
    content: str
    reasoning: str = ""
    finish_reason: str | None = None


@dataclass
class _Job:
    """One API request's engine requests, queued and ready to stream."""

    engine: AsyncEngine
    kind: P.Kind
    id: str
    created: int
    choices: list[_Choice]
    prompt_tokens: int
    started: float
    stream: bool
    include_usage: bool

    def __del__(self):
        # a response dropped before its body was ever iterated (client gone in between) would
        # otherwise leave its requests generating into queues nobody reads
        for c in self.choices:
            with contextlib.suppress(Exception):
                self.engine.release(c.request_id)


class OpenAIServer:
    def __init__(self, engine: AsyncEngine, tokenizer, settings: ServerSettings, metrics: NullMetrics | None = None):
        self.engine = engine
        self.tok = tokenizer
        self.settings = settings
        self.metrics = metrics or NullMetrics()
        self.created = P.now()
        routes = [
            Route("/health", self._endpoint("health", self.health, auth=False), methods=["GET"]),
            Route("/v1/models", self._endpoint("models", self.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", self._endpoint("models", self.model), methods=["GET"]),
            Route("/v1/completions", self._endpoint("completions", self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._endpoint("chat", self.chat), methods=["POST"]),
            Route("/stats", self._endpoint("stats", self.stats), methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan,
                             exception_handlers={HTTPException: self._http_exception})

    # -- plumbing -----------------------------------------------------------------------------
    @asynccontextmanager
    async def _lifespan(self, app):
        self.engine.start()
        task = asyncio.get_running_loop().create_task(self._report_metrics())
        try:
            yield
        finally:
            task.cancel()

    async def _report_metrics(self) -> None:
        e = self.engine.engine
        while True:
            await asyncio.sleep(self.settings.metrics_interval_s)
            with contextlib.suppress(Exception):   # metrics never take the server down
                self.metrics.engine_snapshot(e.stats.snapshot(), e.num_running, e.num_waiting, e.num_free_slots)

    def _endpoint(self, route: str, handler: Callable[[Request, float], Awaitable[Response]], auth: bool = True):
        async def endpoint(request: Request) -> Response:
            t0 = time.monotonic()
            try:
                if auth:
                    self._authorize(request)
                response = await handler(request, t0)
            except P.APIError as e:
                response = _error_response(e)
            except asyncio.CancelledError:
                self.metrics.request_done(route, CLIENT_CLOSED, time.monotonic() - t0)
                raise
            except Exception:  # noqa: BLE001 - a bug, not bad input: log it, answer 500, stay up
                log.exception("unhandled error in %s", route)
                response = _error_response(P.APIError(500, "internal server error", "server_error"))
            if not isinstance(response, StreamingResponse):   # streams report when they end
                self.metrics.request_done(route, response.status_code, time.monotonic() - t0)
            return response

        return endpoint

    async def _http_exception(self, request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return _error_response(P.APIError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code=code))

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise P.APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise P.APIError(401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _read_json(self, request: Request) -> dict:
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise P.APIError(413, f"request body is {int(declared)} bytes; the limit is {limit}",
                             code="payload_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise P.APIError(413, f"request body exceeds the limit of {limit} bytes", code="payload_too_large")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise P.APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        except RecursionError:  # the parser recurses per nesting level: [[[[...]]]] 100,000 deep
            raise P.APIError(400, "request body is nested too deeply", code="invalid_json") from None
        if not isinstance(data, dict):
            raise P.APIError(400, "request body must be a JSON object", code="invalid_json")
        return data

    def _check_model(self, name: str) -> None:
        if name != self.settings.model_name:
            raise P.APIError(404, f"The model `{name}` does not exist; this server serves "
                                  f"`{self.settings.model_name}` (GET /v1/models)", code="model_not_found",
                             param="model")

    # -- simple routes ------------------------------------------------------------------------
    async def health(self, request: Request, t0: float) -> Response:
        try:
            self.engine.check_health()
        except EngineError as e:
            raise P.APIError(503, f"unhealthy: {e}", "server_error", code="unhealthy") from None
        e = self.engine.engine
        return JSONResponse({"status": "ok", "model": self.settings.model_name, "running": e.num_running,
                             "waiting": e.num_waiting, "free_slots": e.num_free_slots})

    def _model_card(self) -> dict:
        return {"id": self.settings.model_name, "object": "model", "created": self.created, "owned_by": "whale",
                "root": self.settings.model_uri or self.settings.model_name,
                "max_model_len": self.engine.engine.max_seq_len}

    async def models(self, request: Request, t0: float) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request, t0: float) -> Response:
        self._check_model(request.path_params["model_id"])
        return JSONResponse(self._model_card())

    async def stats(self, request: Request, t0: float) -> Response:
        e = self.engine.engine
        return JSONResponse({"model": self.settings.model_name, "num_slots": e.num_slots, "running": e.num_running,
                             "waiting": e.num_waiting, "free_slots": e.num_free_slots, "use_mtp": e.use_mtp,
                             "max_seq_len": e.max_seq_len, "engine": e.stats.snapshot()})

    # -- generation routes --------------------------------------------------------------------
    async def completions(self, request: Request, t0: float) -> Response:
        body = await self._read_json(request)
        try:
            req = P.CompletionRequest.model_validate(body)
        except ValidationError as e:
            raise P.validation_error(e) from None
        P.check_completion(req, self.settings.max_n)
        self._check_model(req.model)
        prompts = self._completion_prompts(req)
        job = self._submit("completion", "cmpl", req, prompts, self.settings.completion_default_max_tokens,
                           "prompt", reasoning=False, t0=t0)
        return await self._respond(job)

    async def chat(self, request: Request, t0: float) -> Response:
        body = await self._read_json(request)
        try:
            req = P.ChatCompletionRequest.model_validate(body)
        except ValidationError as e:
            raise P.validation_error(e) from None
        P.check_chat(req, self.settings.max_n)
        self._check_model(req.model)
        messages = P.chat_messages(req)
        try:
            ids = self.tok.encode_chat(messages, add_generation_prompt=True).ids
        except (ValueError, TypeError) as e:
            raise P.APIError(400, f"messages: {e}", param="messages") from None
        if req.max_tokens is None and req.max_completion_tokens is not None:
            req.max_tokens = req.max_completion_tokens
        job = self._submit("chat", "chatcmpl", req, [ids], self.settings.default_max_tokens, "messages",
                           reasoning=True, t0=t0)
        return await self._respond(job)

    def _completion_prompts(self, req: P.CompletionRequest) -> list[list[int]]:
        p = req.prompt
        items = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not items:
            raise P.APIError(400, "prompt is empty", param="prompt")
        prompts = []
        for i, item in enumerate(items):
            ids = self.tok.encode(item) if isinstance(item, str) else list(item)
            if not ids:
                raise P.APIError(400, f"prompt {i} is empty", param="prompt")
            bad = next((t for t in ids if not 0 <= t < self.engine.engine.vocab_size), None)
            if bad is not None:
                raise P.APIError(400, f"prompt {i}: token id {bad} is outside the vocabulary "
                                      f"[0, {self.engine.engine.vocab_size})", param="prompt")
            prompts.append(ids)
        return prompts

    def _max_tokens(self, requested: int | None, prompt_len: int, default: int, prompt_param: str) -> int:
        ctx = self.engine.engine.max_seq_len
        room = ctx - prompt_len
        if requested is not None and requested < 1:
            raise P.APIError(400, f"max_tokens must be at least 1, got {requested}", param="max_tokens")
        if room < 1:
            raise P.APIError(400, f"This model's maximum context length is {ctx} tokens, but the prompt has "
                                  f"{prompt_len} tokens; shorten it", code="context_length_exceeded",
                             param=prompt_param)
        if requested is None:
            return min(default, room)
        if requested > room:
            raise P.APIError(400, f"This model's maximum context length is {ctx} tokens; you requested "
                                  f"{prompt_len + requested} ({prompt_len} in the prompt, {requested} for the "
                                  f"completion); lower max_tokens to at most {room}",
                             code="context_length_exceeded", param="max_tokens")
        return requested

    def _submit(self, kind: P.Kind, id_prefix: str, req, prompts: list[list[int]], default_max_tokens: int,
                prompt_param: str, *, reasoning: bool, t0: float) -> _Job:
        """Check every prompt's budget, then queue all engine requests (all or none)."""
        wanted, most = len(prompts) * req.n, self.engine.engine.num_slots + self.engine.engine.config.max_waiting
        if wanted > most:  # could never be admitted, however long the client waits: not a 503
            raise P.APIError(400, f"this request needs {wanted} generations (prompts x n); the server holds at most "
                                  f"{most} at once ({self.engine.engine.num_slots} running + "
                                  f"{self.engine.engine.config.max_waiting} queued): split it",
                             code="too_many_prompts", param="prompt")
        budgets = [self._max_tokens(req.max_tokens, len(p), default_max_tokens, prompt_param) for p in prompts]
        stops = P.stop_strings(req)
        top_k = req.top_k if req.top_k and req.top_k > 0 else 0
        temperature = 1.0 if req.temperature is None else req.temperature
        choices: list[_Choice] = []
        try:
            for pi, (prompt, budget) in enumerate(zip(prompts, budgets, strict=True)):
                for j in range(req.n):
                    seed = None if req.seed is None else (req.seed + pi * req.n + j) % 2**63
                    params = GenerationParams(max_tokens=budget, temperature=temperature,
                                              top_p=1.0 if req.top_p is None else req.top_p, top_k=top_k,
                                              seed=seed, ignore_eos=req.ignore_eos)
                    rid = self.engine.add(prompt, params)
                    choices.append(_Choice(len(choices), rid, TextStream(self.tok.decode_bytes, stops),
                                           ReasoningSplitter() if reasoning else None))
        except BaseException as e:
            for c in choices:
                self.engine.abort(c.request_id)
            raise _engine_error(e) from None
        include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        return _Job(self.engine, kind, P.new_id(id_prefix), P.now(), choices, sum(map(len, prompts)), t0,
                    req.stream, include_usage)

    async def _respond(self, job: _Job) -> Response:
        if job.stream:
            return StreamingResponse(self._sse(job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                async with contextlib.aclosing(self._deltas(job)) as deltas:
                    async for d in deltas:
                        c = job.choices[d.index]
                        c.content.append(d.content)
                        c.reasoning.append(d.reasoning)
        except TimeoutError:
            raise P.APIError(504, f"generation did not finish within {self.settings.request_timeout_s:g}s",
                             "server_error", code="timeout") from None
        except _EngineFailure as e:
            raise P.APIError(e.status, f"generation failed: {e}", "server_error", code="engine_error") from None
        choices = []
        for c in job.choices:
            if job.kind == "chat":
                reasoning = "".join(c.reasoning) if c.splitter.has_reasoning else None
                message = {"role": "assistant", "content": "".join(c.content), **P.reasoning_fields(reasoning)}
                choices.append({"index": c.index, "message": message, "logprobs": None,
                                "finish_reason": c.finish_reason})
            else:
                choices.append({"index": c.index, "text": "".join(c.content), "logprobs": None,
                                "finish_reason": c.finish_reason})
        completion_tokens = sum(c.tokens for c in job.choices)
        return JSONResponse(P.envelope(job.kind, False, job.id, job.created, self.settings.model_name, choices,
                                       P.usage(job.prompt_tokens, completion_tokens)))

    async def _sse(self, job: _Job) -> AsyncIterator[str]:
        status = 200
        try:
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    if job.kind == "chat":   # the role comes first, once per choice
                        for c in job.choices:
                            yield self._chunk(job, {"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None})
                    async with contextlib.aclosing(self._deltas(job)) as deltas:
                        async for d in deltas:
                            yield self._chunk(job, self._stream_choice(job, d))
                if job.include_usage:
                    yield _sse_data(P.envelope(job.kind, True, job.id, job.created, self.settings.model_name, [],
                                               P.usage(job.prompt_tokens, sum(c.tokens for c in job.choices))))
            except TimeoutError:
                status = 504
                yield _sse_data(P.error_body(f"generation did not finish within {self.settings.request_timeout_s:g}s",
                                             "server_error", "timeout"))
            except _EngineFailure as e:
                status = e.status
                yield _sse_data(P.error_body(f"generation failed: {e}", "server_error", "engine_error"))
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            status = CLIENT_CLOSED
            raise
        finally:
            self.metrics.request_done(job.kind if job.kind == "chat" else "completions", status,
                                      time.monotonic() - job.started)

    def _chunk(self, job: _Job, choice: dict) -> str:
        return _sse_data(P.envelope(job.kind, True, job.id, job.created, self.settings.model_name, [choice],
                                    with_usage_key=job.include_usage))

    @staticmethod
    def _stream_choice(job: _Job, d: _Delta) -> dict:
        if job.kind == "chat":
            delta: dict = {}
            if d.reasoning:
                delta.update(P.reasoning_fields(d.reasoning))
            if d.content:
                delta["content"] = d.content
            return {"index": d.index, "delta": delta, "logprobs": None, "finish_reason": d.finish_reason}
        return {"index": d.index, "text": d.content, "logprobs": None, "finish_reason": d.finish_reason}

    # -- engine outputs -> text deltas ----------------------------------------------------------
    async def _deltas(self, job: _Job) -> AsyncIterator[_Delta]:
        """Deltas of all choices as they come (choices run concurrently in the engine's batch)."""
        streams = [self._choice_deltas(job, c) for c in job.choices]
        first = True
        async with contextlib.aclosing(_merge(streams)) as merged:
            async for d in merged:
                if first and (d.content or d.reasoning):
                    first = False
                    self.metrics.first_token(time.monotonic() - job.started)
                if d.content or d.reasoning or d.finish_reason:
                    yield d

    async def _choice_deltas(self, job: _Job, c: _Choice) -> AsyncIterator[_Delta]:
        async with contextlib.aclosing(self.engine.stream(c.request_id)) as outputs:
            async for out in outputs:
                if out.error:
                    raise _EngineFailure(out.error, 503 if out.finish_reason == "shutdown" else 500)
                c.tokens = out.num_output_tokens
                text = c.text.feed(out.new_token_ids)
                if c.text.stopped:           # a stop string ends the request here
                    c.finish_reason = "stop"
                    self.engine.abort(c.request_id, reason="stop")
                elif out.finished:
                    text += c.text.finish()
                    c.finish_reason = "length" if out.finish_reason == "length" else "stop"
                reasoning, content = "", text
                if c.splitter is not None:
                    reasoning, content = c.splitter.feed(text)
                    if c.finish_reason:
                        r2, c2 = c.splitter.finish()
                        reasoning, content = reasoning + r2, content + c2
                yield _Delta(c.index, content, reasoning, c.finish_reason)
                if c.finish_reason:
                    return


async def _merge(streams: list[AsyncIterator[_Delta]]) -> AsyncIterator[_Delta]:
    """Items of several async iterators as they arrive; closing the merge closes them all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(stream: AsyncIterator[_Delta]) -> None:
        try:
            async with contextlib.aclosing(stream) as s:
                async for item in s:
                    queue.put_nowait(item)
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait(e)
        finally:
            queue.put_nowait(done)

    tasks = [asyncio.get_running_loop().create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sse_data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _error_response(e: P.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _engine_error(e: BaseException) -> BaseException:
    """Engine admission errors as API errors (raised before any response byte is sent)."""
    if isinstance(e, P.APIError):
        return e
    if isinstance(e, EngineOverloaded):
        return P.APIError(503, f"The server is overloaded: {e}", "server_error", code="server_overloaded",
                          headers={"Retry-After": "1"})
    if isinstance(e, EngineError):
        return P.APIError(503, f"The server cannot take requests now: {e}", "server_error", code="unavailable")
    if isinstance(e, ContextLengthExceeded):
        return P.APIError(400, str(e), code="context_length_exceeded", param="max_tokens")
    if isinstance(e, ValueError):
        return P.APIError(400, str(e))
    return e
