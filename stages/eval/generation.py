"""Loading a model folder for evaluation, and batched sampling with per-row seeds.

Every completion's seed is a function of (pipeline seed, item id, sample index) only, so the
candidate and the champion see the same seeds, and a row's tokens do not depend on which other
rows share its batch (the engine keeps one generator per request).
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
    """One completion per (prompt, seed) row through ``model.engine`` (continuous batching,
    ``sampling.batch_size`` KV-cache slots, ids past the tokenizer masked)."""
    from model.engine import Engine, EngineConfig, GenerationParams

    ctx = lm.context_length
    out: list[Sample | None] = [None] * len(prompts)
    rows = [i for i, p in enumerate(prompts) if len(p) + sampling.max_new_tokens <= ctx]
    for i in set(range(len(prompts))) - set(rows):
        out[i] = Sample([], "too_long")
    if rows:
        t0 = time.perf_counter()
        slots = min(sampling.batch_size, len(rows))
        longest = max(len(prompts[i]) for i in rows) + sampling.max_new_tokens
        engine = Engine(lm.model, EngineConfig(num_slots=slots, max_seq_len=longest, use_mtp=False,
                                               max_num_batched_tokens=max(256, 4 * slots)),
                        eos_token_ids=[lm.tokenizer.eos_id], vocab_size=lm.tokenizer.vocab_size)
        params = [GenerationParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                   top_p=sampling.top_p, top_k=sampling.top_k, seed=seeds[i]) for i in rows]
        for i, c in zip(rows, engine.generate([prompts[i] for i in rows], params), strict=True):
            ids = list(c.token_ids)
            if c.finish_reason == "stop" and ids and ids[-1] == c.stop_token_id:
                ids = ids[:-1]
            out[i] = Sample(ids, c.finish_reason)
        if log:
            log(f"{what}: {len(rows)} completions ({time.perf_counter() - t0:.0f}s)")
    return out  # type: ignore[return-value]


def decode(lm: LoadedModel, ids: Sequence[int]) -> str:
    """Text of generated ids; ids past the tokenizer (a padded embedding) are dropped, not decoded."""
    vocab = lm.tokenizer.vocab_size
    return lm.tokenizer.decode([t for t in ids if t < vocab])
