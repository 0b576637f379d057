"""Tiny servable models, built in seconds (also used by bench/serve.py).

- ``train_tokenizer``: a BPE trained on the local Python installation's package descriptions.
- ``TINY_MODEL``: a DeepSeek-V3 shape that runs in milliseconds (vocabulary from the tokenizer).
- ``train_chat_model``: teaches a model one chat reply with reasoning (real <think> output to
  serve); tests/serve/conftest.py saves it with the tokenizer as the HF folder pretrain/distill
  write to ``<out>/hf``.
- ``train_counting_model``: arithmetic progressions, which the MTP module learns to draft.
"""

from __future__ import annotations

from itertools import islice

TOKENIZER_VOCAB = 640

TINY_MODEL = dict(
    hidden_size=64, num_hidden_layers=2, max_position_embeddings=512,
    num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32,
    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    intermediate_size=128, moe_intermediate_size=32, first_k_dense_replace=1,
    n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
    num_nextn_predict_layers=1, initializer_range=0.05,
)


def train_tokenizer(max_bytes: int = 200_000):
    from tokenizer import Tokenizer, TrainSettings, train_sentencepiece
    from tokenizer.local_corpus import web_documents

    texts, size = [], 0
    for doc in islice(web_documents(), 10_000):
        texts.append(doc["text"])
        size += len(doc["text"].encode())
        if size >= max_bytes:
            break
    result = train_sentencepiece(texts, TrainSettings(vocab_size=TOKENIZER_VOCAB, num_threads=1),
                                 log=lambda *_: None)
    return Tokenizer(result.model_proto)


def counting_batch(batch: int, seq_len: int, vocab_size: int, generator, low: int = 300, span: int | None = None):
    """Arithmetic progressions over ids [low, low + span): t_i = low + (s + i*k) mod span. The next
    token follows from the last two, the one after from the last one and the next: a pattern the
    main model and its MTP module both learn in seconds, so drafts are mostly accepted."""
    import torch

    span = min(span or vocab_size, vocab_size - low)
    start = torch.randint(0, span, (batch, 1), generator=generator)
    step = torch.randint(1, 4, (batch, 1), generator=generator)
    return low + (start + step * torch.arange(seq_len)) % span


def train_counting_model(model, steps: int = 150, batch: int = 16, seq_len: int = 32, lr: float = 3e-3,
                         seed: int = 0, span: int | None = None):
    """Briefly train ``model`` (main model + MTP) on ``counting_batch``; returns it in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        ids = counting_batch(batch, seq_len, model.config.vocab_size, g, span=span)
        out = model(ids, labels=ids)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        model.update_router_biases(out.expert_load)
    return model.eval()


REPLY_REASONING = "The user greets me."
REPLY_ANSWER = "Hello there!"
_WORDS = "alpha beta gamma delta apple river stone cloud green music paper light table window".split()


def train_chat_model(model, tok, steps: int = 80, batch: int = 8, lr: float = 3e-3, seed: int = 0):
    """Teach ``model`` one reply to any user message: ``<think>`` REPLY_REASONING ``</think>``
    REPLY_ANSWER, then EOS (trained on the assistant tokens only, as distillation does). Served,
    it exercises the reasoning split, stop strings and the end of turn with real generations."""
    import random

    import torch

    rng = random.Random(seed)
    reply = {"role": "assistant", "content": REPLY_ANSWER, "reasoning_content": REPLY_REASONING}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        encs = []
        for _ in range(batch):
            user = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6)))
            encs.append(tok.encode_chat([{"role": "user", "content": user}, reply]))
        T = max(len(e.ids) for e in encs)
        ids = torch.full((batch, T), tok.pad_id)
        mask = torch.zeros(batch, T, dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = torch.tensor(e.ids)
            mask[i, :len(e.ids)] = torch.tensor(e.mask)
        out = model(ids, labels=ids, loss_mask=mask)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        model.update_router_biases(out.expert_load)
    return model.eval()
