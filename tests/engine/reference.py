"""The naive greedy reference the engine is checked against: no cache, no batching, a full
forward over prompt + tokens so far for every new token (what "correct" means, nothing else)."""

from __future__ import annotations

import torch


@torch.no_grad()
def naive_greedy(model, prompt: list[int], max_new_tokens: int, vocab_size: int | None = None) -> list[int]:
    ids = list(prompt)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1, :vocab_size]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]
