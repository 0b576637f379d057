"""Engine counters: what a metrics exporter or a benchmark reads (``Engine.stats.snapshot()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EngineStats:
    steps: int = 0
    prompt_tokens: int = 0          # prefilled into the cache
    generated_tokens: int = 0       # emitted (stop tokens included)
    finished_requests: int = 0
    aborted_requests: int = 0
    failed_requests: int = 0
    # MTP speculative decoding: each step of a speculative request verifies one draft and emits
    # 1 token (draft rejected) or 2 (accepted)
    spec_drafted: int = 0
    spec_accepted: int = 0
    spec_tokens: int = 0
    # MTP auto-off: decode steps with speculative requests, by whether speculation ran
    spec_steps_on: int = 0
    spec_steps_off_batch: int = 0          # more speculative rows than mtp_max_batch
    spec_steps_off_acceptance: int = 0     # measured acceptance below mtp_min_acceptance
    spec_acceptance_ema: float | None = None

    @property
    def acceptance_rate(self) -> float:
        return self.spec_accepted / self.spec_drafted if self.spec_drafted else 0.0

    @property
    def tokens_per_spec_step(self) -> float:
        """Tokens a speculative request gains per main-model step (1 without MTP, at most 2)."""
        return self.spec_tokens / self.spec_drafted if self.spec_drafted else 0.0

    def snapshot(self) -> dict[str, float]:
        d = asdict(self)
        d["spec_acceptance_rate"] = self.acceptance_rate
        d["spec_tokens_per_step"] = self.tokens_per_spec_step
        return d
