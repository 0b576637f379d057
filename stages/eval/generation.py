"""Loading a model folder for evaluation, and batched sampling with per-row seeds.

Every completion's seed is a function of (pipeline seed, item id, sample index) only, so the
candidate and the champion see the same seeds, and a row's tokens do not depend on which other
rows share its batch (model.generate keeps one generator per row).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stages.common.problems import stable_hash
from stages.eval.config import SamplingSection


@dataclass
class LoadedModel:
    path: Path
    model: object        # model.DeepSeekV3, eval mode
    tokenizer: object    # tokenizer.Tokenizer

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("eval.device is cuda but no CUDA device is visible to this process")
    return device


def load_model(path: Path, device: str = "cpu") -> LoadedModel:
    from model import DeepSeekV3
    from tokenizer import Tokenizer

    if not (path / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.model: expected the HF export with tokenizer files "
                                f"that pretrain/distill write to <out>/hf")
    tok = Tokenizer.load(path)
    model = DeepSeekV3.from_pretrained(path, device=resolve_device(device)).eval()
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.vocab_size} ids but the model only "
                         f"{model.config.vocab_size} embedding rows")
    return LoadedModel(path, model, tok)


def row_seed(seed: int, item_id: str, sample: int) -> int:
    return int(stable_hash([seed, item_id, sample], 8), 16)


@dataclass
class Sample:
    tokens: list[int]          # generated ids (without the stop token)
    finish_reason: str         # stop | length | too_long (prompt + max_new_tokens exceed the context)


def sample_many(lm: LoadedModel, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: SamplingSection,
                log: Callable[[str], None] | None = None, what: str = "") -> list[Sample]:
    """Sample one completion per (prompt, seed) row, ``sampling.batch_size`` rows per generate call."""
    ctx = lm.context_length
    out: list[Sample | None] = [None] * len(prompts)
    rows = []
    for i, p in enumerate(prompts):
        if len(p) + sampling.max_new_tokens > ctx:
            out[i] = Sample([], "too_long")
        else:
            rows.append(i)
    # similar lengths together: less padding work in each decode step's attention
    rows.sort(key=lambda i: len(prompts[i]))
    t0, done = time.perf_counter(), 0
    for start in range(0, len(rows), sampling.batch_size):
        batch = rows[start:start + sampling.batch_size]
        gens = lm.model.generate([prompts[i] for i in batch], max_new_tokens=sampling.max_new_tokens,
                                 temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                 seed=[seeds[i] for i in batch], stop_token_ids=[lm.tokenizer.eos_id])
        for i, g in zip(batch, gens, strict=True):
            out[i] = Sample(list(g.tokens), g.finish_reason)
        done += len(batch)
        if log:
            log(f"{what}: {done}/{len(rows)} completions ({time.perf_counter() - t0:.0f}s)")
    return out  # type: ignore[return-value]


def decode(lm: LoadedModel, ids: Sequence[int]) -> str:
    """Text of generated ids; ids past the tokenizer (a padded embedding) are dropped, not decoded."""
    vocab = lm.tokenizer.vocab_size
    return lm.tokenizer.decode([t for t in ids if t < vocab])
