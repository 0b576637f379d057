"""The trainer's own state besides tensors: where it is and what it has seen. Saved in every
checkpoint (JSON), so a resumed run continues its counters and its loss curve."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stages.common.training.step import StepStats


@dataclass
class TrainState:
    step: int = 0                      # optimizer steps done
    input_tokens: int = 0              # tokens fed to the model, all ranks
    target_tokens: int = 0             # next-token targets scored, all ranks
    train_seconds: float = 0.0         # wall time inside steps (not eval, not checkpointing)
    skipped_steps: int = 0             # non-finite loss/gradient: no update applied
    attempts: list[int] = field(default_factory=list)      # the step each attempt started from
    history: list[dict[str, float]] = field(default_factory=list)   # one row per step
    evals: list[dict[str, float]] = field(default_factory=list)     # one row per evaluation
    expert_load: list[list[float]] | None = None   # [M][E] tokens per expert, summed over the run

    def record(self, stats: StepStats, seconds: float) -> dict[str, float]:
        self.step += 1
        self.input_tokens += stats.input_tokens
        self.target_tokens += stats.target_tokens
        self.train_seconds += seconds
        self.skipped_steps += int(stats.skipped)
        load = stats.expert_load.tolist()
        if self.expert_load is None:
            self.expert_load = load
        else:
            self.expert_load = [[a + b for a, b in zip(ra, rb, strict=True)]
                                for ra, rb in zip(self.expert_load, load, strict=True)]
        row = {"step": self.step, "loss": stats.loss, "lm_loss": stats.lm_loss, "mtp_loss": stats.mtp_loss,
               "balance_loss": stats.balance_loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
               "mtp_weight": stats.mtp_weight, "maxvio": stats.moe.get("moe/maxvio", float("nan")),
               "dropped_tokens": stats.dropped_tokens, "tokens": stats.input_tokens, "step_s": seconds,
               "data_fingerprint": stats.data_fingerprint, "skipped": int(stats.skipped), **stats.extra_losses}
        self.history.append(row)
        return row

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**d)
