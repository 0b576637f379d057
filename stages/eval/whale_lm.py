"""Our model as an lm-evaluation-harness ``LM``: in-process, batched, every request type.

    loglikelihood          log p(continuation | context) and whether greedy decoding would produce it
    loglikelihood_rolling  log p(text), scored in windows like bits-per-byte
    generate_until         model.engine (greedy unless the task samples), cut at the task's stop strings

Contexts start after an EOS (our document separator) unless they are a rendered chat, which
starts with BOS and is encoded with its special tokens.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM

from stages.eval.bpb import windows
from stages.eval.config import SamplingSection
from stages.eval.generation import LoadedModel, decode, sample_many


class WhaleLM(LM):
    def __init__(self, lm: LoadedModel, batch_size: int = 8, max_length: int | None = None,
                 max_gen_toks: int = 256, seed: int = 0):
        super().__init__()
        self.lm = lm
        self.tok = lm.tokenizer
        self.model = lm.model
        self.batch_size = batch_size
        self.max_length = min(max_length or lm.context_length, lm.context_length)
        self.max_gen_toks = max_gen_toks
        self.seed = seed
        self._device = lm.model.lm_head.weight.device   # LM.device reads it

    # -- encoding ------------------------------------------------------------------------------
    def _context_ids(self, context: str) -> list[int]:
        bos_text = self.tok.special("bos").text
        if context.startswith(bos_text):  # a rendered chat (apply_chat_template)
            return self.tok.encode(context, allow_special=True)
        return [self.tok.eos_id, *self.tok.encode(context)]

    @property
    def tokenizer_name(self) -> str:
        return str(self.lm.path)

    def chat_template(self, chat_template=False) -> str:
        return "whale"

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        return self.tok.render(chat_history, add_generation_prompt=add_generation_prompt)

    # -- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """rows: (token ids, n) -> (sum log p of the last n tokens given the rest, all greedy)."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            T = max(len(ids) for ids, _ in batch) - 1
            inputs = torch.full((len(batch), T), self.tok.pad_id, dtype=torch.long)
            for b, (ids, _) in enumerate(batch):
                inputs[b, :len(ids) - 1] = torch.tensor(ids[:-1])
            logprobs = F.log_softmax(self.model(inputs.to(self._device)).logits.float(), dim=-1).cpu()
            for b, (ids, n) in enumerate(batch):
                L = len(ids) - 1
                targets = torch.tensor(ids[L - n + 1:])
                lp = logprobs[b, L - n:L]
                out.append((float(lp.gather(-1, targets[:, None]).sum()), bool((lp.argmax(-1) == targets).all())))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        rows = []
        for req in requests:
            context, continuation = req.args
            # a context's trailing space belongs to the continuation, as the harness' HF backend does
            n_space = len(context) - len(context.rstrip(" "))
            context, continuation = context[:len(context) - n_space], context[len(context) - n_space:] + continuation
            ctx_ids, cont_ids = self._context_ids(context), self.tok.encode(continuation)
            if not cont_ids:
                raise ValueError(f"empty continuation for context {context[-80:]!r}")
            ids = (ctx_ids + cont_ids)[-(self.max_length + 1):]
            rows.append((ids, min(len(cont_ids), len(ids) - 1)))
        return self._score(rows)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            wins = windows(self.tok.encode(text), self.tok.eos_id, self.max_length)
            scored = self._score([(x + y[-1:], len(y)) for x, y in wins])
            out.append(sum(lp for lp, _ in scored))
        return out

    # -- generation ----------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[repr(sorted(req.args[1].items()))].append(i)
        out: list[str | None] = [None] * len(requests)
        t0 = time.perf_counter()
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1])
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            top_p = float(kwargs.get("top_p", 1.0)) if temperature > 0 else 1.0
            prompts = [self._context_ids(requests[i].args[0])[-(self.max_length - max_new):] for i in members]
            sampling = SamplingSection(temperature=temperature, top_p=top_p, max_new_tokens=max_new,
                                       batch_size=self.batch_size)
            samples = sample_many(self.lm, prompts, [self.seed + i for i in members], sampling)
            for i, sample in zip(members, samples, strict=True):
                text = decode(self.lm, sample.tokens)
                cut = min((j for s in until if s and (j := text.find(s)) != -1), default=len(text))
                out[i] = text[:cut]
        print(f"[eval] lm-eval: {len(requests)} generations ({time.perf_counter() - t0:.0f}s)", flush=True)
        return out  # type: ignore[return-value]
