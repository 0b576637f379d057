"""Next-token sampling: greedy, temperature, top-k, top-p, per-row parameters and seeds.

Each row may carry its own parameters and its own ``torch.Generator``, so a request's tokens
depend only on its prompt, parameters and seed, never on what else shares the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = no top-k cut; top_p 1 = no nucleus cut."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def sample_tokens(logits: torch.Tensor, params: Sequence[SamplingParams],
                  generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. Row b uses params[b] and generators[b]."""
    B, V = logits.shape
    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    sampled_rows = [b for b, p in enumerate(params) if not p.greedy]
    if not sampled_rows:
        return tokens
    rows = torch.tensor(sampled_rows, device=logits.device)
    sub = logits[rows]
    temperature = torch.tensor([params[b].temperature for b in sampled_rows], device=logits.device)
    top_k = torch.tensor([params[b].top_k or V for b in sampled_rows], device=logits.device)
    top_p = torch.tensor([params[b].top_p for b in sampled_rows], device=logits.device)

    sorted_logits, order = (sub / temperature[:, None]).sort(dim=-1, descending=True)
    rank = torch.arange(V, device=logits.device)
    cut = rank[None, :] >= top_k[:, None]
    probs = sorted_logits.masked_fill(cut, float("-inf")).softmax(dim=-1)
    # nucleus: drop a token once the tokens ranked above it already reach top_p (keeps the first)
    cut |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    probs = sorted_logits.masked_fill(cut, float("-inf")).softmax(dim=-1)
    for i, b in enumerate(sampled_rows):
        choice = torch.multinomial(probs[i], 1, generator=generators[b])
        tokens[b] = order[i, choice[0]]
    return tokens
