"""AsyncEngine: the engine driven by an asyncio task, for servers.

    engine = AsyncEngine(Engine(model, config))
    async with contextlib.aclosing(engine.generate(prompt_ids, params)) as stream:
        async for out in stream:          # one RequestOutput per step that emitted tokens
            ...

One background task loops: schedule on the event loop, run the model step in a single worker
thread (so the loop keeps accepting requests and streaming tokens while the model computes),
postprocess on the loop and hand each request its output through its own queue. Requests join
and leave between steps. When the consumer of ``generate`` goes away (a client disconnect, which
ASGI servers and Ray Serve deliver as ``asyncio.CancelledError``, a timeout, ``aclose()``), the
request is aborted and its KV-cache slot is freed at the next step boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from model.engine.engine import Engine
from model.engine.request import EngineError, EngineStopped, GenerationParams, RequestOutput

log = logging.getLogger(__name__)

# consecutive failed steps after which the engine reports itself unhealthy (restart it)
MAX_CONSECUTIVE_FAILURES = 3


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._queues: dict[str, asyncio.Queue[RequestOutput]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whale-engine")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._failures = 0
        self._dead: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.started_at = time.time()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the step loop on the running event loop (``generate`` does it on first use)."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
            self._task = self._loop.create_task(self._step_loop(), name="whale-engine-loop")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def check_health(self) -> None:
        """Raise if the engine cannot serve (loop died, steps keep failing, shut down)."""
        if self._dead is not None:
            raise EngineError(f"the engine loop died: {self._dead!r}")
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            raise EngineError(f"the last {self._failures} engine steps failed")
        if self.engine.stopped:
            raise EngineStopped("the engine is shut down")

    async def shutdown(self, drain_timeout_s: float = 0.0) -> None:
        """Refuse new requests, let running ones finish for up to ``drain_timeout_s``, abort the
        rest and stop the loop."""
        self.engine.stopped = True
        deadline = time.monotonic() + drain_timeout_s
        while self.engine.has_unfinished() and time.monotonic() < deadline and self.running:
            await asyncio.sleep(0.05)
        for rid in list(self._queues):
            self.engine.abort(rid)
            self._queues[rid].put_nowait(RequestOutput(rid, [], 0, 0, finished=True, finish_reason="shutdown",
                                                       error="the server is shutting down"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- requests -----------------------------------------------------------------------------
    def add(self, prompt: Sequence[int], params: GenerationParams, request_id: str | None = None) -> str:
        """Queue a request now (raising ValueError / EngineOverloaded / EngineStopped at once,
        before any response is sent); read its outputs with ``stream(request_id)``."""
        self.check_health()
        self.start()
        rid = self.engine.add_request(prompt, params, request_id)
        self._queues[rid] = asyncio.Queue()
        self._wakeup.set()
        return rid

    async def stream(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """Outputs of a request added with ``add``, until it finishes. Leaving early (break,
        cancellation, aclose) aborts the request."""
        queue = self._queues[request_id]
        finished = False
        try:
            while not finished:
                out = await queue.get()
                finished = out.finished
                yield out
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    async def generate(self, prompt: Sequence[int], params: GenerationParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        rid = self.add(prompt, params, request_id)
        async with contextlib.aclosing(self.stream(rid)) as outputs:
            async for out in outputs:
                yield out

    def release(self, request_id: str) -> None:
        """Abort a request that may never be streamed (its response was dropped before it
        started) and forget its queue. Safe from any thread."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.release, request_id)
            return
        self._queues.pop(request_id, None)
        self.abort(request_id)

    def abort(self, request_id: str, reason: str = "abort") -> None:
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.abort, request_id, reason)   # engine state is loop-owned
            return
        if self.engine.abort(request_id, reason) and self._wakeup is not None:
            self._wakeup.set()   # an idle loop applies the abort now

    # -- the step loop ------------------------------------------------------------------------
    async def _step_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.engine.has_unfinished():
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                plan = self.engine.schedule()
                error = None
                if not plan.empty:
                    try:
                        await loop.run_in_executor(self._executor, self.engine.execute, plan)
                        self._failures = 0
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # noqa: BLE001 - the step's requests fail, serving goes on
                        log.exception("engine step failed")
                        error, self._failures = e, self._failures + 1
                for out in self.engine.postprocess(plan, error):
                    queue = self._queues.get(out.request_id)
                    if queue is not None:
                        queue.put_nowait(out)
                if plan.empty:
                    await asyncio.sleep(0.001)   # only aborts were applied; let the loop breathe
                else:
                    await asyncio.sleep(0)       # let handlers stream before the next step
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - recorded for check_health, then re-raised
            self._dead = e
            log.exception("engine loop died")
            for rid, queue in list(self._queues.items()):
                queue.put_nowait(RequestOutput(rid, [], 0, 0, finished=True, finish_reason="error",
                                               error=f"engine loop died: {e!r}"))
            raise
