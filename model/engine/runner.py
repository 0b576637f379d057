"""Run one step plan on the model: chunked prefill, batched decode, MTP draft + verify.

Self-speculative decoding with the MTP module (DeepSeek-V3 §5.4.3), greedy requests only:

    state   x = last emitted token (not yet in the cache); the MTP module has been fed every
            (h_p, t_{p+1}) pair up to x's predecessor, where h_p is the main model's final hidden
            state at position p
    draft   MTP(h_{x-1}, x) -> d, its guess for the token after x
    verify  one main-model step over [x, d] gives y = argmax after x and z = argmax after d
    accept  y == d: emit d and z (two tokens for one main-model step)
    reject  emit y, and forget d's cache entry (``cache.truncate``)

Every emitted token is the main model's own argmax given the tokens before it, so the output
equals plain greedy decoding; the MTP module only decides how many tokens one step yields.
Sampled requests (temperature > 0) decode one token per step.
"""

from __future__ import annotations

import torch

from model.engine.config import EngineConfig
from model.engine.experts import GroupedExperts, grouped_experts
from model.engine.request import Request, Status
from model.engine.scheduler import StepPlan
from model.kv_cache import LatentKVCache
from model.sampling import sample_tokens


class ModelRunner:
    def __init__(self, model, cache: LatentKVCache, mla_mode: str = "auto", vocab_size: int | None = None,
                 config: EngineConfig | None = None):
        self.model = model
        # ids >= vocab_size (a padded embedding the tokenizer cannot decode) are never chosen
        self.vocab_size = vocab_size if vocab_size is not None and vocab_size < model.config.vocab_size else None
        self.cache = cache
        self.mla_mode = mla_mode
        self.config = config or EngineConfig()
        self.device = cache.device
        self.experts = GroupedExperts()
        # MTP auto-off: moving average of draft acceptance (starts optimistic, so a few early
        # rejections, e.g. the draft right after the prompt, do not switch it off at once) and
        # steps since speculation last ran
        self.acceptance_ema: float | None = 1.0 if self.config.use_mtp else None
        self._steps_off = 0

    @torch.no_grad()
    def execute(self, plan: StepPlan) -> None:
        with grouped_experts(self.model, self.experts):
            self._execute(plan)

    def _execute(self, plan: StepPlan) -> None:
        for r, n in plan.prefill:
            self._prefill_chunk(r, n)
        spec = [r for r in plan.decode if r.speculative]
        plan.spec_mode = self._speculation_mode(len(spec)) if spec else ""
        if plan.spec_mode != "on":
            spec = []
        plain = [r for r in plan.decode if not (r.speculative and spec)]
        if plain:
            self._decode(plain)
        if spec:
            before = sum(r.num_generated for r in spec), sum(r.accepted for r in spec)
            self._speculative_decode(spec)
            plan.spec_rows = len(spec)
            plan.spec_tokens = sum(r.num_generated for r in spec) - before[0]
            plan.spec_accepted = sum(r.accepted for r in spec) - before[1]
            rate = plan.spec_accepted / plan.spec_rows
            self.acceptance_ema = 0.8 * self.acceptance_ema + 0.2 * rate

    def _speculation_mode(self, n_spec: int) -> str:
        """"on", or why speculation is off this step: "off_batch" (more speculative rows than
        ``mtp_max_batch``: verifying 2 tokens per row costs more than it yields) or
        "off_acceptance" (measured acceptance below ``mtp_min_acceptance``; one probe step every
        ``mtp_probe_interval`` steps re-measures it)."""
        cfg = self.config
        if n_spec > cfg.mtp_max_batch:
            return "off_batch"
        low = self.acceptance_ema is not None and self.acceptance_ema < cfg.mtp_min_acceptance
        if low and self._steps_off + 1 < cfg.mtp_probe_interval:
            self._steps_off += 1
            return "off_acceptance"
        self._steps_off = 0
        return "on"

    # -- prefill ------------------------------------------------------------------------------
    def _prefill_chunk(self, r: Request, n: int) -> None:
        start = r.num_prefilled
        chunk = r.prompt[start:start + n]
        out = self.model.step(self.cache, [r.slot], self._tensor([chunk]), last_only=True,
                              mla_mode=self.mla_mode)
        r.num_prefilled += n
        if r.speculative:
            self._feed_mtp_prompt(r, chunk, out.hidden[0])
        if r.prompt_remaining == 0:
            token = int(sample_tokens(self._valid(out.logits[:, -1]), [r.params.sampling], [r.generator])[0])
            r.status = Status.DECODE
            if not r.emit(token):
                r.next_token = token
                if r.speculative:
                    r.mtp_pending.append((r.last_hidden, token))

    def _feed_mtp_prompt(self, r: Request, chunk: list[int], hidden: torch.Tensor) -> None:
        """The MTP module's input pairs (h_p, t_{p+1}) for the prompt, queued as it is prefilled;
        they are fed at the first draft, so a request that never speculates (auto-off) never pays
        for them. The chunk's last hidden state waits for the token after it."""
        pairs_h = ([r.last_hidden] if r.last_hidden is not None else []) + list(hidden[:-1])
        pairs_t = chunk if r.last_hidden is not None else chunk[1:]
        r.last_hidden = hidden[-1]
        r.mtp_pending.extend(zip(pairs_h, pairs_t, strict=True))

    # -- plain decode -------------------------------------------------------------------------
    def _decode(self, rows: list[Request]) -> None:
        out = self.model.step(self.cache, [r.slot for r in rows], self._tensor([[r.next_token] for r in rows]),
                              mla_mode=self.mla_mode)
        tokens = sample_tokens(self._valid(out.logits[:, -1]), [r.params.sampling for r in rows],
                               [r.generator for r in rows]).tolist()
        for i, (r, token) in enumerate(zip(rows, tokens, strict=True)):
            r.next_token = None if r.emit(token) else token
            if r.speculative and r.next_token is not None:
                # MTP is off this step: keep its input pairs so drafting can resume later
                r.mtp_pending.append((out.hidden[i, -1], token))

    # -- speculative decode -------------------------------------------------------------------
    def _speculative_decode(self, rows: list[Request]) -> None:
        drafts = self._draft(rows)
        feed = self._tensor([[r.next_token, drafts[r.id]] for r in rows])
        out = self.model.step(self.cache, [r.slot for r in rows], feed, mla_mode=self.mla_mode)
        choice = self._valid(out.logits).float().argmax(dim=-1).tolist()   # [B, 2]: after x, after d
        for i, r in enumerate(rows):
            d = drafts[r.id]
            (y, z), (h_x, h_d) = choice[i], out.hidden[i]
            r.drafted += 1
            r.next_token = None
            if y == d:
                r.accepted += 1
                if r.emit(d) or r.emit(z):
                    continue
                r.next_token, r.mtp_pending = z, [(h_x, d), (h_d, z)]
            else:
                self.cache.truncate(r.slot, self.cache.lengths[r.slot] - 1)
                if r.emit(y):
                    continue
                r.next_token, r.mtp_pending = y, [(h_x, y)]

    def _draft(self, rows: list[Request]) -> dict[str, int]:
        """One MTP draft per row, batched. A row feeds 2 pending pairs after an acceptance but 1
        after a rejection (or the prompt); such a row steps its MTP cache back one position and
        feeds the last pair again (same input, same cache entry), so all rows usually form one
        batch of 2. Rows that cannot (nothing fed yet) form their own group."""
        if any(len(r.mtp_pending) == 2 for r in rows):
            for r in rows:
                if len(r.mtp_pending) == 1 and r.mtp_last_fed is not None:
                    self.cache.mtp_lengths[r.slot] -= 1
                    r.mtp_pending.insert(0, r.mtp_last_fed)
        drafts: dict[str, int] = {}
        for k in sorted({len(r.mtp_pending) for r in rows}):
            group = [r for r in rows if len(r.mtp_pending) == k]
            hidden = torch.stack([torch.stack([h for h, _ in r.mtp_pending]) for r in group])
            tokens = self._tensor([[t for _, t in r.mtp_pending] for r in group])
            logits = self.model.mtp_draft(self.cache, [r.slot for r in group], hidden, tokens,
                                          mla_mode=self.mla_mode, last_only=True)
            for r, d in zip(group, self._valid(logits[:, -1]).float().argmax(dim=-1).tolist(), strict=True):
                drafts[r.id] = d
                r.mtp_last_fed = r.mtp_pending[-1]
                r.mtp_pending = []
        return drafts

    def _valid(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits restricted to the tokenizer's vocabulary (the one place ids past it are masked)."""
        return logits if self.vocab_size is None else logits[..., :self.vocab_size]

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)
