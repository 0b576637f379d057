"""decode(encode(s)) == s for every string, and typed special tokens stay text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer.special import N_SPECIAL, SPECIAL_TOKENS

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that break naive tokenizers: whitespace of every kind, sentencepiece's own "▁",
# byte-fallback territory (CJK, emoji with ZWJ and skin tones, combining marks), NUL and BOM.
TRICKY = [" ", "  ", "    ", "\t", "\n", "\r\n", "\r", "\x00", "\u2581", "\u3000", "\xa0", "\u200b",
          "\ufeff", "\u2028", "日本語", "中文", "한국어", "😀", "👩🏽‍💻", "e\u0301", "ﬁ", "①", "Ⅻ",
          "0123", "def f(x):\n\treturn x\n", "<think>", "</think>", "<｜User｜>", "<unk>", "<0x41>"]
tricky_text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=8)), max_size=24).map("".join)
any_text = st.one_of(st.text(), tricky_text)
special_texts = st.sampled_from([t.text for t in SPECIAL_TOKENS])
# <unk> is a sentencepiece requirement, never produced: allow_special does not match it either
matchable_special_texts = st.sampled_from([t.text for t in SPECIAL_TOKENS if t.name != "unk"])


@PROPERTY
@given(any_text)
def test_decode_inverts_encode(tok, s):
    assert tok.decode(tok.encode(s)) == s


@PROPERTY
@given(st.lists(st.one_of(any_text, special_texts), max_size=12).map("".join))
def test_roundtrip_with_specials_allowed(tok, s):
    assert tok.decode(tok.encode(s, allow_special=True)) == s


@pytest.mark.parametrize("s", ["", " ", "  leading", "trailing  ", "a\r\nb", "\t\tx", " " * 37,
                               "\n\n\n", "▁", "▁▁ ▁", "x ▁y", "中文 and English 😀", "\x00"])
def test_roundtrip_examples(tok, s):
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert (ids == []) == (s == "")


def test_whitespace_is_not_collapsed_or_prefixed(tok):
    # no dummy prefix: a leading space is a token of its own, and "x" alone has none
    assert tok.decode(tok.encode("x")[:1]) == "x"
    assert tok.decode(tok.encode(" x")[:1]).startswith(" ")
    assert tok.decode(tok.encode("a    b")) == "a    b"


@PROPERTY
@given(st.lists(st.one_of(any_text, special_texts), max_size=12).map("".join))
def test_typed_special_tokens_are_plain_text(tok, s):
    ids = tok.encode(s)
    assert all(i >= N_SPECIAL for i in ids)  # no marker, EOS or think tag can be injected
    assert tok.decode(ids) == s


@PROPERTY
@given(st.lists(st.tuples(st.text(alphabet=st.characters(codec="ascii", exclude_characters="<"), max_size=6),
                          matchable_special_texts), max_size=6))
def test_allow_special_maps_each_special_string_to_its_id(tok, parts):
    # plain parts without "<" cannot spell a special token themselves
    s = "".join(a + b for a, b in parts)
    ids = tok.encode(s, allow_special=True)
    specials = [i for i in ids if i < N_SPECIAL]
    assert specials == [next(t.id for t in SPECIAL_TOKENS if t.text == b) for _, b in parts]


@PROPERTY
@given(st.lists(any_text, max_size=8))
def test_encode_batch_equals_encode(tok, texts):
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, bos=True, eos=True) == [tok.encode(t, bos=True, eos=True) for t in texts]
    assert tok.decode_batch(tok.encode_batch(texts)) == texts


@PROPERTY
@given(any_text, st.integers(min_value=0, max_value=50))
def test_decode_bytes_streams(tok, s, cut):
    """Bytes of any split of the ids concatenate to the text's bytes (streaming decode)."""
    ids = tok.encode(s)
    cut = min(cut, len(ids))
    assert tok.decode_bytes(ids[:cut]) + tok.decode_bytes(ids[cut:]) == s.encode("utf-8")


@PROPERTY
@given(any_text)
def test_token_byte_lengths_account_for_every_byte(tok, s):
    lengths = tok.token_byte_lengths()
    assert sum(int(lengths[i]) for i in tok.encode(s)) == len(s.encode("utf-8"))


def test_unk_text_is_never_special(tok):
    assert all(i >= N_SPECIAL for i in tok.encode("<unk>", allow_special=True))


def test_bos_eos_flags(tok):
    assert tok.encode("hi", bos=True, eos=True) == [tok.bos_id, *tok.encode("hi"), tok.eos_id]


def test_lone_surrogate_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="lone surrogate U\\+D800 at index 3"):
        tok.encode("abc\ud800def")


def test_non_string_input_is_rejected(tok):
    with pytest.raises(TypeError, match="expects str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_out_of_range_ids_are_a_clear_error(tok):
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([5, tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])


def test_invalid_utf8_from_sampled_bytes_decodes_with_replacement(tok):
    byte_ff = tok.piece_to_id("<0xFF>")
    assert tok.decode([byte_ff]) == "\ufffd"
