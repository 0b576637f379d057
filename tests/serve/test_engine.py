"""The continuous-batching engine without Ray: outputs, scheduling, admission, cancellation, MTP."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import torch

from model import DeepSeekV3, ModelConfig
from model.engine import AsyncEngine, ContextLengthExceeded, Engine, EngineConfig, EngineOverloaded, GenerationParams
from model.engine.request import Status
from tests.serve.helpers import TINY_MODEL, counting_batch, train_counting_model

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 640
PROMPTS = [[7, 3, 200], list(range(40, 49)), list(range(300, 347)), [5]]


def tiny_model(seed: int = 0) -> DeepSeekV3:
    torch.manual_seed(seed)
    model = DeepSeekV3(ModelConfig.model_validate({**TINY_MODEL, "vocab_size": VOCAB})).eval()
    with torch.no_grad():   # random routing biases: every expert-selection path runs
        for moe in model.moe_layers().values():
            moe.gate.e_score_correction_bias.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def model() -> DeepSeekV3:
    return tiny_model()


@pytest.fixture(scope="module")
def counting_model() -> DeepSeekV3:
    """A model whose MTP module has learnt to agree with it (drafts get accepted)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_counting_model(tiny_model(1), steps=50, batch=8, seq_len=24)
    finally:
        torch.set_num_threads(threads)


def engine(model, **kw) -> Engine:
    cfg = dict(num_slots=2, max_seq_len=128, max_num_batched_tokens=16, max_prefill_chunk=8, use_mtp=False)
    return Engine(model, EngineConfig(**{**cfg, **kw}), eos_token_ids=[])


def run_to_end(e: Engine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while e.has_unfinished():
        for out in e.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return tokens


# -- outputs ------------------------------------------------------------------------------------

def test_greedy_outputs_equal_model_generate_under_queueing_and_chunked_prefill(model):
    """4 prompts through 2 slots, prompts prefilled in chunks of 8 beside running decodes: every
    request gets exactly the tokens of plain cached greedy decoding."""
    ref = model.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[])
    e = engine(model)
    got = e.generate(PROMPTS, GenerationParams(max_tokens=12))
    assert [c.token_ids for c in got] == [r.tokens for r in ref]
    assert all(c.finish_reason == "length" for c in got)
    assert e.num_free_slots == 2 and not e.has_unfinished()
    assert e.stats.prompt_tokens == sum(map(len, PROMPTS)) and e.stats.generated_tokens == 4 * 12


def test_seeded_sampling_does_not_depend_on_the_batch(model):
    params = GenerationParams(max_tokens=10, temperature=0.9, top_p=0.9, top_k=50, seed=7)
    alone = engine(model, num_slots=1).generate([PROMPTS[1]], params)[0].token_ids
    others = GenerationParams(max_tokens=10, temperature=1.0, seed=0)
    crowded = engine(model, num_slots=4, max_num_batched_tokens=64).generate(PROMPTS, [others, params, params, others])
    assert crowded[1].token_ids == alone and crowded[2].token_ids != alone   # other prompt, other tokens


def test_stop_tokens_end_a_request_and_are_not_returned(model):
    ref = model.generate([PROMPTS[0]], max_new_tokens=8, stop_token_ids=[])[0].tokens
    stop = ref[3]
    e = engine(model)
    out = e.generate([PROMPTS[0]], GenerationParams(max_tokens=8, stop_token_ids=(stop,)))[0]
    assert out.finish_reason == "stop" and out.stop_token_id == stop
    assert out.token_ids == ref[:ref.index(stop)]


def test_bad_requests_are_refused_before_queueing(model):
    e = engine(model, max_seq_len=32)
    with pytest.raises(ContextLengthExceeded, match="context is 32 tokens"):
        e.add_request(list(range(20)), GenerationParams(max_tokens=13))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        e.add_request([1, VOCAB], GenerationParams(max_tokens=1))
    with pytest.raises(ValueError, match="empty"):
        e.add_request([], GenerationParams(max_tokens=1))
    with pytest.raises(ValueError, match="max_tokens"):
        GenerationParams(max_tokens=0)
    assert not e.has_unfinished()


def test_engine_config_is_checked():
    with pytest.raises(ValueError, match="must exceed num_slots"):
        EngineConfig(num_slots=16, max_num_batched_tokens=32, use_mtp=True)
    EngineConfig(num_slots=16, max_num_batched_tokens=33, use_mtp=True)


def test_kv_cache_memory_caps_the_slots(model):
    e = engine(model, num_slots=64, max_num_batched_tokens=256, max_seq_len=100, kv_cache_memory_mb=1.0)
    per_slot = e.cache.bytes_per_token() * 100
    assert e.num_slots == int(2**20 // per_slot) < 64
    with pytest.raises(ValueError, match="holds no slot"):
        engine(model, max_seq_len=128, kv_cache_memory_mb=0.001)


# -- scheduling ---------------------------------------------------------------------------------

def test_decodes_never_stall_behind_a_long_prefill(model):
    """Three requests decoding, then a 60-token prompt arrives with a 16-token budget: it is
    prefilled 13 tokens per step (budget minus the decodes) while every decoder still gets a
    token in every step."""
    e = engine(model, num_slots=4, max_num_batched_tokens=16, max_prefill_chunk=32)
    short = [e.add_request([10 + i, 20 + i], GenerationParams(max_tokens=40)) for i in range(3)]
    e.step()                                   # prefill the three short prompts, first tokens out
    long = e.add_request(list(range(100, 160)), GenerationParams(max_tokens=5))
    chunks = []
    while e.requests[long].status is not Status.DECODE:
        plan = e.schedule()
        assert plan.num_tokens <= 16
        e.execute(plan)
        outs = {o.request_id: o for o in e.postprocess(plan)}
        chunks += [n for r, n in plan.prefill if r.id == long]
        assert all(len(outs[rid].new_token_ids) == 1 for rid in short)
    assert chunks == [13, 13, 13, 13, 8]


def test_admission_is_first_come_first_served_when_the_cache_is_full(model):
    e = engine(model, num_slots=2, max_waiting=2)
    ids = [e.add_request([i + 1, i + 2], GenerationParams(max_tokens=2 + 3 * i)) for i in range(4)]
    with pytest.raises(EngineOverloaded, match="max_waiting=2"):
        e.add_request([9], GenerationParams(max_tokens=2))
    e.step()
    assert [e.requests[i].status for i in ids] == [Status.DECODE, Status.DECODE, Status.WAITING, Status.WAITING]
    assert e.num_free_slots == 0
    e.step()                                    # request 0 finishes (2 tokens) and frees its slot
    assert ids[0] not in e.requests and e.num_free_slots == 1
    e.step()
    assert e.requests[ids[2]].status is not Status.WAITING and e.requests[ids[3]].status is Status.WAITING
    run_to_end(e)
    assert e.num_free_slots == 2 and e.stats.finished_requests == 4


def test_abort_frees_the_slot_at_once_or_after_the_running_step(model):
    e = engine(model, num_slots=1)
    a = e.add_request([1, 2, 3], GenerationParams(max_tokens=50))
    b = e.add_request([4, 5], GenerationParams(max_tokens=3))
    e.step()
    assert e.num_free_slots == 0 and e.requests[b].status is Status.WAITING
    assert e.abort(a) and e.num_free_slots == 1 and a not in e.requests
    assert not e.abort(a)
    plan = e.schedule()                        # b is admitted; abort it mid-step
    assert [r.id for r, _ in plan.prefill] == [b]
    e.abort(b)
    assert e.num_free_slots == 0               # the running step still owns the slot
    e.execute(plan)
    assert e.postprocess(plan) == [] and e.num_free_slots == 1 and not e.has_unfinished()
    assert e.stats.aborted_requests == 2
    c = e.add_request([6], GenerationParams(max_tokens=5))   # a caller that found a stop string
    e.step()
    assert e.abort(c, reason="stop") and e.stats.finished_requests == 1 and e.stats.aborted_requests == 2


# -- MTP speculative decoding -------------------------------------------------------------------

def test_mtp_rejections_keep_greedy_output_identical(model):
    """A random MTP module is nearly always wrong: every rejection path runs (cache truncation)
    and the output still equals plain greedy decoding."""
    plain = engine(model).generate(PROMPTS, GenerationParams(max_tokens=16))
    e = engine(model, use_mtp=True)
    spec = e.generate(PROMPTS, GenerationParams(max_tokens=16))
    assert [c.token_ids for c in spec] == [c.token_ids for c in plain]
    assert e.stats.spec_drafted > 0 and e.stats.spec_accepted < e.stats.spec_drafted


def test_mtp_acceptance_gives_more_tokens_per_step_with_identical_output(counting_model):
    prompts = counting_batch(4, 6, VOCAB, torch.Generator().manual_seed(3)).tolist()
    params = GenerationParams(max_tokens=30)
    off = engine(counting_model, num_slots=4, max_num_batched_tokens=64)
    on = engine(counting_model, num_slots=4, max_num_batched_tokens=64, use_mtp=True)
    a, b = off.generate(prompts, params), on.generate(prompts, params)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    stats = on.stats.snapshot()
    assert stats["spec_acceptance_rate"] > 0.3
    assert stats["spec_tokens_per_step"] == pytest.approx(1 + stats["spec_acceptance_rate"], abs=0.05)
    assert on.stats.steps < off.stats.steps
    assert sum(c.accepted for c in b) == on.stats.spec_accepted


def test_sampled_requests_bypass_mtp(model):
    e = engine(model, use_mtp=True, num_slots=2, max_num_batched_tokens=16, mtp_min_acceptance=0.0)
    e.generate([PROMPTS[0], PROMPTS[1]], [GenerationParams(max_tokens=6, temperature=1.0, seed=1),
                                          GenerationParams(max_tokens=6)])
    assert e.stats.spec_drafted == 5          # only the greedy request drafted (after its first token)


# -- async engine: cancellation ----------------------------------------------------------------

def test_cancelled_consumer_aborts_the_request_and_frees_its_slot(model):
    """A client disconnect reaches the handler as asyncio.CancelledError: the request must leave
    the batch and its KV-cache slot must be free again, while other requests go on."""

    async def scenario():
        e = engine(model, num_slots=2, max_seq_len=512)
        ae = AsyncEngine(e)
        got_first = asyncio.Event()

        async def consume(prompt, n):
            async for _ in ae.generate(prompt, GenerationParams(max_tokens=n)):
                got_first.set()

        victim = asyncio.create_task(consume(PROMPTS[1], 400))
        survivor = asyncio.create_task(consume(PROMPTS[0], 30))
        await got_first.wait()
        assert e.num_free_slots == 0
        victim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await victim
        await survivor
        for _ in range(100):
            if e.num_free_slots == 2:
                break
            await asyncio.sleep(0.01)
        assert e.num_free_slots == 2 and not e.has_unfinished()
        assert e.stats.aborted_requests == 1 and e.stats.finished_requests == 1
        # a timeout is a cancellation too
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                async for _ in ae.generate(PROMPTS[2], GenerationParams(max_tokens=400)):
                    pass
        await asyncio.sleep(0.05)
        assert e.num_free_slots == 2 and e.stats.aborted_requests == 2
        await ae.shutdown()

    asyncio.run(scenario())


def test_async_engine_streams_the_same_tokens_as_the_sync_engine(model):
    want = engine(model, num_slots=4, max_num_batched_tokens=64).generate(PROMPTS, GenerationParams(max_tokens=9))

    async def scenario():
        ae = AsyncEngine(engine(model, num_slots=4, max_num_batched_tokens=64))

        async def one(p):
            toks = []
            async for out in ae.generate(p, GenerationParams(max_tokens=9)):
                toks += out.new_token_ids
            return toks

        got = await asyncio.gather(*(one(p) for p in PROMPTS))
        await ae.shutdown()
        return got

    assert asyncio.run(scenario()) == [c.token_ids for c in want]


def test_ids_past_the_tokenizer_vocabulary_are_never_generated(model):
    """A padded embedding (model vocab > tokenizer vocab): the engine masks the extra ids in one place."""
    limit = 50
    e = Engine(model, EngineConfig(num_slots=2, max_seq_len=128, max_num_batched_tokens=16, max_prefill_chunk=8,
                                   use_mtp=False), eos_token_ids=[], vocab_size=limit)
    outs = e.generate([[7, 3, 20], [5]], [GenerationParams(max_tokens=24), GenerationParams(max_tokens=24,
                                                                                               temperature=1.5,
                                                                                               seed=3)])
    assert all(t < limit for c in outs for t in c.token_ids)
    unmasked = engine(model).generate([[7, 3, 20]], GenerationParams(max_tokens=24))[0].token_ids
    assert any(t >= limit for t in unmasked), "the check cannot fail: pick a smaller limit"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        e.add_request([limit], GenerationParams(max_tokens=2))
