"""Logit-level distillation: a loss term that pulls the student's next-token distribution towards a
local teacher's, on the assistant tokens the SFT loss trains on.

    job = TrainJob(..., loss_terms=(LogitDistillation(teacher_path, vocab_size, "forward", 0.5, 1.0),))

With p = softmax(z_teacher / τ) and q = softmax(z_student / τ) at every target position:

    forward  τ² · KL(p ‖ q) = τ² Σ_v p_v (log p_v − log q_v)   mass-covering (Hinton et al. 2015)
    reverse  τ² · KL(q ‖ p) = τ² Σ_v q_v (log q_v − log p_v)   mode-seeking (MiniLLM, Gu et al. 2024)

τ² keeps the gradient scale independent of the temperature. The trainer adds weight · (term summed
over targets) / (targets in the global batch), i.e. the per-token mean weighted like the LM loss
(``stages.common.training.step.LossTerm``). The teacher must share the student's tokenizer (the
stage checks this before training); only the first ``vocab_size`` logits (the tokenizer's ids) are
compared, so a padded embedding on either side does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from model.transformer import IGNORE_INDEX


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  divergence: Literal["forward", "reverse"] = "forward", temperature: float = 1.0) -> torch.Tensor:
    """τ²·KL per row of [N, V] logits, in FP32 -> [N]."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if divergence == "forward":
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif divergence == "reverse":
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        raise ValueError(f"divergence must be 'forward' or 'reverse', got {divergence!r}")
    return kl * temperature**2


class _BoundDistillation:
    """The opened term: the teacher lives in the worker, frozen, in eval mode."""

    def __init__(self, recipe: "LogitDistillation", device: torch.device):
        from model import DeepSeekV3

        self.recipe = recipe
        self.teacher = DeepSeekV3.from_pretrained(recipe.teacher_path, device=device).eval().requires_grad_(False)
        if self.teacher.config.vocab_size < recipe.vocab_size:
            raise ValueError(f"the teacher at {recipe.teacher_path} has {self.teacher.config.vocab_size} embedding "
                             f"rows, fewer than the tokenizer's {recipe.vocab_size} ids")

    def __call__(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        if not valid.any():
            return logits.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            teacher = self.teacher(batch["input_ids"], segment_ids=batch.get("segment_ids")).logits
        V = self.recipe.vocab_size
        return kl_divergence(logits[valid][:, :V], teacher[valid][:, :V], self.recipe.divergence,
                             self.recipe.temperature).sum()


@dataclass(frozen=True)
class LogitDistillation:
    """Recipe (picklable) for the trainer's ``loss_terms``; the teacher loads inside each worker."""

    teacher_path: str
    vocab_size: int
    divergence: Literal["forward", "reverse"] = "forward"
    weight: float = 0.5
    temperature: float = 1.0
    name: str = "kd_loss"

    def open(self, device: torch.device) -> _BoundDistillation:
        return _BoundDistillation(self, device)
