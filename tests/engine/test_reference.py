"""The engine against the naive reference: greedy tokens equal a full forward per token, with and
without MTP speculation, with chunked prefill and queueing, and under the MTP auto-off rule."""

from __future__ import annotations

import pytest
import torch

from model.engine import Engine, EngineConfig, GenerationParams
from tests.engine.reference import naive_greedy
from tests.model.conftest import micro_model

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = [[7, 3, 200], list(range(40, 49)), list(range(100, 123)), [5]]
N = 10


@pytest.fixture(scope="module")
def counting_lm():
    """A micro model trained on counting (t+1 follows t): its MTP module learns t+2, so drafts are
    mostly accepted and the acceptance path runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1)
        model = micro_model(seed=1).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(80):
            ids = (torch.randint(0, 256, (16, 1)) + torch.arange(24)) % 256
            loss = model(ids, ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def run(model, prompts, **cfg) -> tuple[list[list[int]], Engine]:
    """4 prompts through 2 slots, prefilled in chunks of 4 beside running decodes."""
    config = dict(num_slots=2, max_seq_len=64, max_num_batched_tokens=12, max_prefill_chunk=4, use_mtp=False)
    e = Engine(model, EngineConfig(**{**config, **cfg}), eos_token_ids=[])
    return [c.token_ids for c in e.generate(prompts, GenerationParams(max_tokens=N))], e


@pytest.mark.parametrize("use_mtp", [False, True])
def test_engine_equals_naive_reference_random_model(micro_lm, use_mtp):
    """Random MTP: drafts nearly always rejected (cache truncation path)."""
    got, e = run(micro_lm, PROMPTS, use_mtp=use_mtp, mtp_min_acceptance=0.0)
    assert got == [naive_greedy(micro_lm, p, N) for p in PROMPTS]
    assert (e.stats.spec_drafted > 0) == use_mtp


@pytest.mark.parametrize("use_mtp", [False, True])
def test_engine_equals_naive_reference_trained_mtp(counting_lm, use_mtp):
    prompts = [[50, 51, 52], list(range(100, 109)), [7, 8], list(range(200, 213))]
    got, e = run(counting_lm, prompts, use_mtp=use_mtp)
    assert got == [naive_greedy(counting_lm, p, N) for p in prompts]
    if use_mtp:
        assert e.stats.acceptance_rate > 0.6 and e.stats.spec_steps_off_acceptance == 0


def test_generate_wrapper_is_the_engine(micro_lm):
    gens = micro_lm.generate(PROMPTS, max_new_tokens=N, stop_token_ids=[], use_mtp=True)
    assert [g.tokens for g in gens] == [naive_greedy(micro_lm, p, N) for p in PROMPTS]
    assert all(g.finish_reason == "length" and g.drafted > 0 for g in gens)


def test_padded_vocabulary_is_masked_like_the_reference(micro_lm):
    got = micro_lm.generate(PROMPTS[:2], max_new_tokens=N, stop_token_ids=[], vocab_size=210)
    assert [g.tokens for g in got] == [naive_greedy(micro_lm, p, N, vocab_size=210) for p in PROMPTS[:2]]
    assert all(t < 210 for g in got for t in g.tokens)


# -- MTP auto-off -------------------------------------------------------------------------------

def test_mtp_turns_off_when_acceptance_is_low_and_probes_again(micro_lm):
    """A random MTP head is rarely right: after a few verify steps the measured acceptance falls
    under the threshold and speculation stops, except one probe step per interval."""
    kw = dict(num_slots=1, use_mtp=True, mtp_probe_interval=4)
    e = Engine(micro_lm, EngineConfig(max_seq_len=64, **kw, mtp_min_acceptance=0.5), eos_token_ids=[])
    got = e.generate(PROMPTS[:1], GenerationParams(max_tokens=30))
    assert [c.token_ids for c in got] == [naive_greedy(micro_lm, PROMPTS[0], 30)]
    s = e.stats
    assert s.spec_acceptance_ema < 0.5 and s.acceptance_rate < 0.5
    assert s.spec_steps_off_acceptance > s.spec_steps_on > 0
    # the same run with the threshold at 0 never turns it off: the rule is what turned it off
    e0 = Engine(micro_lm, EngineConfig(max_seq_len=64, **kw, mtp_min_acceptance=0.0), eos_token_ids=[])
    e0.generate(PROMPTS[:1], GenerationParams(max_tokens=30))
    assert e0.stats.spec_steps_off_acceptance == 0 and e0.stats.spec_steps_on > s.spec_steps_on


def test_mtp_turns_off_for_a_large_running_batch(counting_lm):
    """mtp_max_batch=1: while 2 requests decode, no speculation; once one is left, it speculates
    again from where it stopped (the MTP module caught up on the skipped steps) and is accepted."""
    prompts = [[50, 51, 52], [120, 121, 122, 123]]
    config = dict(num_slots=2, max_seq_len=64, max_num_batched_tokens=12, max_prefill_chunk=4, use_mtp=True,
                  mtp_max_batch=1)
    e = Engine(counting_lm, EngineConfig(**config), eos_token_ids=[])
    out = e.generate(prompts, [GenerationParams(max_tokens=4), GenerationParams(max_tokens=20)])
    assert [c.token_ids for c in out] == [naive_greedy(counting_lm, prompts[0], 4),
                                          naive_greedy(counting_lm, prompts[1], 20)]
    assert e.stats.spec_steps_off_batch >= 2 and e.stats.spec_steps_on > 0
    assert e.stats.acceptance_rate > 0.6
