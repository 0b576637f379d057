"""Prometheus metrics of the model server, through Ray's metrics pipeline.

``ray.serve.metrics`` objects carry the deployment, replica and application tags; Ray's metrics
agent on each node exposes them to Prometheus (names get the ``ray_`` prefix):

    ray_whale_requests_total{route, status}          requests by route and HTTP status
    ray_whale_request_errors_total{route, status}    the 4xx/5xx among them
    ray_whale_request_latency_seconds{route}         whole request (histogram)
    ray_whale_time_to_first_token_seconds            arrival to first generated token (histogram)
    ray_whale_generated_tokens_total                 rate() = tokens/s
    ray_whale_prompt_tokens_total
    ray_whale_tokens_per_second                      engine output over the last interval (gauge)
    ray_whale_spec_drafted_total / _accepted_total   MTP drafts verified / accepted
    ray_whale_spec_acceptance_rate                   accepted / drafted since start (gauge)
    ray_whale_spec_steps_total{mode}                 decode steps with speculative requests, by whether
                                                     MTP ran: on | off_batch | off_acceptance (auto-off)
    ray_whale_spec_acceptance_ema                    the moving average the auto-off rule reads (gauge)
    ray_whale_running_requests / _waiting_requests / _free_kv_slots   (gauges)

``NullMetrics`` keeps the HTTP app usable without Ray (unit tests, uvicorn).
"""

from __future__ import annotations

import time

LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


class NullMetrics:
    def request_done(self, route: str, status: int, latency_s: float) -> None: ...
    def first_token(self, ttft_s: float) -> None: ...
    def engine_snapshot(self, stats: dict, running: int, waiting: int, free_slots: int) -> None: ...


class ServeMetrics(NullMetrics):
    def __init__(self):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.requests = Counter("whale_requests_total", description="HTTP requests by route and status",
                                tag_keys=("route", "status"))
        self.errors = Counter("whale_request_errors_total", description="HTTP requests answered 4xx/5xx",
                              tag_keys=("route", "status"))
        self.latency = Histogram("whale_request_latency_seconds", description="request latency",
                                 boundaries=LATENCY_BOUNDARIES, tag_keys=("route",))
        self.ttft = Histogram("whale_time_to_first_token_seconds", description="time to first token",
                              boundaries=LATENCY_BOUNDARIES)
        self.generated = Counter("whale_generated_tokens_total", description="tokens generated")
        self.prompt = Counter("whale_prompt_tokens_total", description="prompt tokens prefilled")
        self.tokens_per_s = Gauge("whale_tokens_per_second", description="generated tokens/s, last interval")
        self.drafted = Counter("whale_spec_drafted_total", description="MTP drafts verified")
        self.accepted = Counter("whale_spec_accepted_total", description="MTP drafts accepted")
        self.acceptance = Gauge("whale_spec_acceptance_rate", description="MTP acceptance rate since start")
        self.spec_steps = Counter("whale_spec_steps_total", description="decode steps by MTP mode (auto-off)",
                                  tag_keys=("mode",))
        self.acceptance_ema = Gauge("whale_spec_acceptance_ema", description="MTP acceptance, moving average")
        self.running = Gauge("whale_running_requests", description="requests in the running batch")
        self.waiting = Gauge("whale_waiting_requests", description="requests queued for a KV-cache slot")
        self.free_slots = Gauge("whale_free_kv_slots", description="free KV-cache slots")
        self._last: dict = {}
        self._last_t = time.monotonic()

    def request_done(self, route: str, status: int, latency_s: float) -> None:
        tags = {"route": route, "status": str(status)}
        self.requests.inc(1, tags)
        if status >= 400:
            self.errors.inc(1, tags)
        self.latency.observe(latency_s, {"route": route})

    def first_token(self, ttft_s: float) -> None:
        self.ttft.observe(ttft_s)

    def engine_snapshot(self, stats: dict, running: int, waiting: int, free_slots: int) -> None:
        """Called periodically with ``EngineStats.snapshot()``: counters advance by the delta."""
        now = time.monotonic()
        last = self._last or {k: 0 for k in stats}
        for counter, key in ((self.generated, "generated_tokens"), (self.prompt, "prompt_tokens"),
                             (self.drafted, "spec_drafted"), (self.accepted, "spec_accepted")):
            delta = stats[key] - last.get(key, 0)
            if delta > 0:
                counter.inc(delta)
        dt = max(now - self._last_t, 1e-6)
        self.tokens_per_s.set((stats["generated_tokens"] - last.get("generated_tokens", 0)) / dt)
        self.acceptance.set(stats["spec_acceptance_rate"])
        for mode in ("on", "off_batch", "off_acceptance"):
            delta = stats.get(f"spec_steps_{mode}", 0) - last.get(f"spec_steps_{mode}", 0)
            if delta > 0:
                self.spec_steps.inc(delta, {"mode": mode})
        if stats.get("spec_acceptance_ema") is not None:
            self.acceptance_ema.set(stats["spec_acceptance_ema"])
        self.running.set(running)
        self.waiting.set(waiting)
        self.free_slots.set(free_slots)
        self._last, self._last_t = dict(stats), now
