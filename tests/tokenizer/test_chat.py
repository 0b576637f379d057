"""The chat template, the training mask, and reasoning parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer.chat import format_completion, render, split_reasoning
from tokenizer.special import N_SPECIAL

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "old thoughts"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "6", "reasoning_content": "3+3 is 6"},
]


def test_render_golden():
    assert render(CONVERSATION) == (
        "<｜begin▁of▁sentence｜><｜System｜>Be brief.<｜User｜>2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>"
        "<｜User｜>and 3+3?<｜Assistant｜><think>\n3+3 is 6\n</think>\n\n6<｜end▁of▁sentence｜>")


def test_generation_prompt_is_a_prefix_of_the_answered_conversation():
    prompt = render(CONVERSATION[:-1], add_generation_prompt=True)
    assert prompt.endswith("<｜User｜>and 3+3?<｜Assistant｜>")
    full = render(CONVERSATION)
    assert full.startswith(prompt)
    completion = full[len(prompt):].removesuffix("<｜end▁of▁sentence｜>")
    assert split_reasoning(completion) == ("3+3 is 6", "6")


def test_reasoning_aliases_and_absence():
    for key in ("reasoning_content", "thinking", "reasoning"):
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", key: "r"}]
        assert "<think>\nr\n</think>\n\na" in render(msgs)
    no_reasoning = render([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert "<think>" not in no_reasoning and no_reasoning.endswith("<｜Assistant｜>a<｜end▁of▁sentence｜>")
    empty = render([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": ""}])
    assert empty.endswith("<｜Assistant｜><think>\n\n</think>\n\na<｜end▁of▁sentence｜>")


def test_content_parts_and_none():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
             {"role": "assistant", "content": None}]
    assert render(parts) == "<｜begin▁of▁sentence｜><｜User｜>ab<｜Assistant｜><｜end▁of▁sentence｜>"


@pytest.mark.parametrize("messages, match", [
    ([{"role": "tool", "content": "x"}], "role must be one of"),
    ([{"content": "x"}], "role must be one of"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "content parts"),
    ([{"role": "assistant", "content": "a", "reasoning_content": ["r"]}], "reasoning must be a string"),
])
def test_bad_messages_are_clear_errors(messages, match):
    with pytest.raises(ValueError, match=match):
        render(messages)


def test_encode_chat_matches_encoding_the_rendered_text(tok):
    enc = tok.encode_chat(CONVERSATION)
    assert enc.ids == tok.encode(render(CONVERSATION), allow_special=True)
    assert tok.decode(enc.ids) == render(CONVERSATION)
    assert len(enc.mask) == len(enc.ids)


def test_mask_covers_exactly_the_last_assistant_turn_and_its_eos(tok):
    enc = tok.encode_chat(CONVERSATION)
    trained = [i for i, m in zip(enc.ids, enc.mask, strict=True) if m]
    assert tok.decode(trained) == "<think>\n3+3 is 6\n</think>\n\n6<｜end▁of▁sentence｜>"
    assert trained[-1] == tok.eos_id
    # the token before the trained span is the assistant marker, which is not trained
    first = enc.mask.index(1)
    assert enc.ids[first - 1] == tok.assistant_id and enc.mask[first - 1] == 0
    assert enc.mask[first:] == [1] * (len(enc.ids) - first)


def test_train_on_all_marks_every_assistant_answer(tok):
    enc = tok.encode_chat(CONVERSATION, train_on="all")
    trained = tok.decode([i for i, m in zip(enc.ids, enc.mask, strict=True) if m])
    assert trained == ("4<｜end▁of▁sentence｜>"
                       "<think>\n3+3 is 6\n</think>\n\n6<｜end▁of▁sentence｜>")
    with pytest.raises(ValueError, match="train_on"):
        tok.encode_chat(CONVERSATION, train_on="first")


def test_generation_prompt_has_nothing_to_train(tok):
    enc = tok.encode_chat(CONVERSATION[:2], add_generation_prompt=True)
    assert enc.ids[-1] == tok.assistant_id and not any(enc.mask)


@settings(max_examples=150, deadline=None)
@given(st.text(), st.sampled_from(["<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<think>",
                                   "</think>", "<｜System｜>", "<｜begin▁of▁sentence｜>"]), st.text())
def test_message_text_cannot_inject_special_tokens(tok, before, special, after):
    evil = before + special + after
    msgs = [{"role": "system", "content": evil}, {"role": "user", "content": evil},
            {"role": "assistant", "content": evil, "reasoning_content": evil}]
    enc = tok.encode_chat(msgs)
    structural = [tok.bos_id, tok.system_id, tok.user_id, tok.assistant_id, tok.think_id,
                  tok.think_end_id, tok.eos_id]
    assert [i for i in enc.ids if i < N_SPECIAL] == structural
    assert tok.decode(enc.ids) == render(msgs)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text()), st.text())
def test_split_reasoning_inverts_format_completion(reasoning, answer):
    if reasoning is not None and "</think>" in reasoning:
        reasoning = reasoning.replace("</think>", "")
    if reasoning is None and ("<think>" in answer or "</think>" in answer or answer.lstrip().startswith("<think>")):
        answer = answer.replace("</think>", "").replace("<think>", "")
    assert split_reasoning(format_completion(reasoning, answer)) == (reasoning, answer)


@pytest.mark.parametrize("completion, expected", [
    ("<think>\nstill thinking about", ("still thinking about", "")),          # cut off mid-thought
    ("  <think>\nr\n</think>\n\na", ("r", "a")),                               # leading whitespace
    ("<think>\nr\n</think>\n\na<｜end▁of▁sentence｜>", ("r", "a")),            # EOS left in
    ("r\n</think>\n\na", ("r", "a")),                                          # prompt opened <think>
    ("<think>r</think>a", ("r", "a")),                                         # no newlines
    ("just an answer", (None, "just an answer")),
    ("", (None, "")),
])
def test_split_reasoning_is_robust(completion, expected):
    assert split_reasoning(completion) == expected
