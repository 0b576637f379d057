import pytest
import torch

from model.sampling import SamplingParams, sample_tokens

from .conftest import micro_model

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = [[7, 3, 200], [1, 2, 3, 4, 5, 6, 7, 8, 9], list(range(30, 47))]


def test_cached_decoding_equals_recomputing(micro_lm):
    """Batched prompts of different lengths: the logits of every decode step from the latent cache
    equal a full forward over prompt + generated tokens, and ``generate`` picks their argmax."""
    gens = micro_lm.generate(PROMPTS, max_new_tokens=10, stop_token_ids=[])
    cache = micro_lm.new_kv_cache(len(PROMPTS), 32)
    slots = [cache.allocate() for _ in PROMPTS]
    for slot, prompt, g in zip(slots, PROMPTS, gens, strict=True):
        assert len(g.tokens) == 10 and g.finish_reason == "length"
        micro_lm.step(cache, [slot], torch.tensor([prompt]))
    steps = [micro_lm.step(cache, slots, torch.tensor([[g.tokens[i]] for g in gens])).logits[:, 0]
             for i in range(9)]
    for b, (prompt, g) in enumerate(zip(PROMPTS, gens, strict=True)):
        full = micro_lm(torch.tensor([prompt + g.tokens])).logits[0]
        n = len(prompt)
        assert torch.allclose(torch.stack([s[b] for s in steps]), full[n:n + 9], atol=1e-4)
        assert g.tokens == full[n - 1:n + 9].argmax(-1).tolist()


@pytest.mark.parametrize("mode", ["absorbed", "expanded"])
def test_both_mla_paths_over_the_cache(micro_lm, mode):
    ids = torch.tensor([PROMPTS[2]])
    want = micro_lm(ids).logits
    cache = micro_lm.new_kv_cache(2, 32)
    slot = cache.allocate()
    pre = micro_lm.step(cache, [slot], ids[:, :10], mla_mode=mode)
    rest = [micro_lm.step(cache, [slot], ids[:, i:i + 1], mla_mode=mode).logits for i in range(10, 17)]
    got = torch.cat([pre.logits, *rest], dim=1)
    assert torch.allclose(got, want, atol=1e-5)
    assert cache.lengths[slot] == 17


def test_step_api_chunked_prefill_verify_and_truncate(micro_lm):
    ids = torch.tensor([PROMPTS[1] + [11, 12]])
    full = micro_lm(ids)
    cache = micro_lm.new_kv_cache(3, 16)
    a, b = cache.allocate(), cache.allocate()
    # chunked prefill of slot a, whole prefill of slot b
    o1 = micro_lm.step(cache, [a], ids[:, :4])
    o2 = micro_lm.step(cache, [a], ids[:, 4:9])
    ob = micro_lm.step(cache, [b], ids[:, :9])
    assert torch.allclose(torch.cat([o1.logits, o2.logits], 1), ob.logits, atol=1e-5)
    assert torch.allclose(ob.hidden, full.hidden_states[:, :9], atol=1e-5)
    # verify two tokens for both slots in one step
    two = micro_lm.step(cache, [a, b], ids[:, 9:11].expand(2, 2))
    assert torch.allclose(two.logits, full.logits[:, 9:11].expand(2, -1, -1), atol=1e-5)
    # reject the last token of slot a, then feed it again: same result
    cache.truncate(a, 10)
    again = micro_lm.step(cache, [a], ids[:, 10:11])
    assert torch.allclose(again.logits[0, 0], full.logits[0, 10], atol=1e-5)
    assert (cache.lengths[a], cache.lengths[b]) == (11, 11)
    cache.free(b)
    assert cache.allocate() == b and cache.lengths[b] == 0


def test_cache_slot_errors(micro_lm):
    cache = micro_lm.new_kv_cache(1, 8)
    slot = cache.allocate()
    with pytest.raises(RuntimeError, match="slots are in use"):
        cache.allocate()
    with pytest.raises(ValueError, match="exceed max_seq_len=8"):
        micro_lm.step(cache, [slot], torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="not allocated"):
        micro_lm.step(cache, [slot + 1], torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        micro_lm.new_kv_cache(1, 10_000)
    assert cache.bytes_per_token() == 4 * 4 * (32 + 8)   # 3 layers + MTP, fp32, latent + rope key


def test_batch_does_not_change_a_rows_tokens(micro_lm):
    kw = dict(max_new_tokens=8, stop_token_ids=[], temperature=0.9, top_p=0.9, top_k=50)
    batch = micro_lm.generate(PROMPTS, seed=[11, 12, 13], **kw)
    for prompt, seed, g in zip(PROMPTS, [11, 12, 13], batch, strict=True):
        assert micro_lm.generate([prompt], seed=seed, **kw)[0].tokens == g.tokens
    greedy = micro_lm.generate(PROMPTS, max_new_tokens=8, stop_token_ids=[])
    assert [micro_lm.generate([p], max_new_tokens=8, stop_token_ids=[])[0].tokens for p in PROMPTS] == [
        g.tokens for g in greedy]


def test_sampling_controls(micro_lm):
    greedy = micro_lm.generate([PROMPTS[0]], max_new_tokens=12, stop_token_ids=[])[0].tokens
    for kw in [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)]:
        temperature = kw.pop("temperature", 1.0)
        got = micro_lm.generate([PROMPTS[0]], max_new_tokens=12, stop_token_ids=[], temperature=temperature,
                                seed=0, **kw)[0].tokens
        assert got == greedy, kw
    s1 = micro_lm.generate([PROMPTS[0]] * 2, max_new_tokens=12, stop_token_ids=[], temperature=1.5, seed=[5, 5])
    s2 = micro_lm.generate([PROMPTS[0]], max_new_tokens=12, stop_token_ids=[], temperature=1.5, seed=6)
    assert s1[0].tokens == s1[1].tokens != s2[0].tokens
    assert s1[0].tokens != greedy


def test_top_k_and_top_p_restrict_the_support():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    top_p = sample_tokens(logits, [SamplingParams(1.0, 0.7)] * 4000, [gen] * 4000)
    assert set(top_p.tolist()) == {0, 1}                         # 0.5 + 0.3 reaches 0.7
    assert (top_p == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.03)
    top_k = sample_tokens(logits, [SamplingParams(1.0, top_k=3)] * 4000, [gen] * 4000)
    assert set(top_k.tolist()) == {0, 1, 2}
    assert (top_k == 2).float().mean().item() == pytest.approx(0.15 / 0.95, abs=0.03)
    mixed = sample_tokens(logits[:2], [SamplingParams(), SamplingParams(1.0, top_k=1)], [None, gen])
    assert mixed.tolist() == [0, 0]
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(1.0, top_p=0.0)


def test_stop_tokens_and_max_new_tokens(micro_lm):
    free = micro_lm.generate([PROMPTS[1]], max_new_tokens=10, stop_token_ids=[])[0]
    stop = free.tokens[3]
    first = free.tokens.index(stop)
    g = micro_lm.generate([PROMPTS[1]], max_new_tokens=10, stop_token_ids=[stop])[0]
    assert g.tokens == free.tokens[:first] and g.finish_reason == "stop" and g.stop_token == stop
    micro_lm.config.eos_token_id = stop   # default stops: the config's EOS
    try:
        assert micro_lm.generate([PROMPTS[1]], max_new_tokens=10)[0].tokens == free.tokens[:first]
    finally:
        micro_lm.config.eos_token_id = 1
    g = micro_lm.generate([PROMPTS[1]], max_new_tokens=4, stop_token_ids=[])[0]
    assert g.tokens == free.tokens[:4] and g.finish_reason == "length"
    with pytest.raises(ValueError, match="at least one token"):
        micro_lm.generate([[]])


def test_mtp_speculative_greedy_equals_plain_greedy(micro_lm):
    plain = micro_lm.generate(PROMPTS, max_new_tokens=9, stop_token_ids=[])
    spec = micro_lm.generate(PROMPTS, max_new_tokens=9, stop_token_ids=[], use_mtp=True)
    assert [g.tokens for g in spec] == [g.tokens for g in plain]
    assert all(g.drafted > 0 for g in spec)
    with pytest.raises(ValueError, match="greedy"):
        micro_lm.generate(PROMPTS, temperature=0.7, use_mtp=True)


def test_mtp_drafts_are_accepted_once_learnt():
    """Train on counting sequences (t+1 follows t): the MTP module learns t+2, so most drafts
    are accepted and tokens still equal plain greedy."""
    model = micro_model(seed=1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        ids = (torch.randint(0, 256, (16, 1)) + torch.arange(24)) % 256
        out = model(ids, ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    prompts = [[50, 51, 52], [100, 101, 102, 103, 104, 105]]
    plain = model.generate(prompts, max_new_tokens=12, stop_token_ids=[])
    spec = model.generate(prompts, max_new_tokens=12, stop_token_ids=[], use_mtp=True)
    assert [g.tokens for g in spec] == [g.tokens for g in plain]
    assert plain[0].tokens[:4] == [53, 54, 55, 56]
    assert sum(g.accepted for g in spec) / sum(g.drafted for g in spec) > 0.7
