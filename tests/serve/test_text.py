"""Streaming text: incremental UTF-8, stop strings and the reasoning split agree with one-shot
processing whatever the chunking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from model.engine import StopStringMatcher, TextStream
from stages.serve.reasoning import ReasoningSplitter
from tokenizer.chat import format_completion, split_reasoning
from tokenizer.special import THINK, THINK_END


def byte_decoder(ids, skip_special_tokens=True):
    return bytes(ids)          # "token id" = one byte: the harshest split of UTF-8


def stream_bytes(data: bytes, cuts: list[int], stops: list[str]) -> tuple[str, bool]:
    ts = TextStream(byte_decoder, stops)
    out, pos = [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        out.append(ts.feed(list(data[pos:c])))
        pos = c
        if ts.stopped:
            break
    if not ts.stopped:
        out.append(ts.finish())
    return "".join(out), ts.stopped


TEXT = st.text(alphabet=st.sampled_from(list("ab \n<>/é€😀")), max_size=30)


@settings(max_examples=300, deadline=None)
@given(TEXT, st.lists(st.text(alphabet="ab<>é", min_size=1, max_size=4), max_size=3),
       st.lists(st.integers(0, 120), max_size=20))
def test_streamed_text_equals_the_one_shot_decode_cut_at_the_first_stop(text, stops, cuts):
    data = text.encode()
    got, stopped = stream_bytes(data, [c for c in cuts if c <= len(data)], stops)
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    assert got == (text[:min(hits)] if hits else text)
    assert stopped == bool(hits)


def test_incomplete_utf8_at_the_end_becomes_a_replacement_character():
    assert stream_bytes("é".encode()[:1], [], []) == ("\ufffd", False)


def test_stop_matcher_holds_back_only_possible_prefixes():
    m = StopStringMatcher(["STOP"])
    assert m.feed("abcST") == ("abc", False)
    assert m.feed("x") == ("STx", False)
    assert m.feed("..S") == ("..", False)
    assert m.feed("TOP and more") == ("", True)


PART = st.lists(st.sampled_from(["a", " ", "\n", "<", "/", ">", "think", THINK, THINK_END]), max_size=8).map("".join)


def split_streaming(full: str, cuts: list[int]) -> tuple[str | None, str]:
    s = ReasoningSplitter()
    reasoning, answer, pos = [], [], 0
    for c in sorted(set(cuts)) + [len(full)]:
        r, a = s.feed(full[pos:c])
        reasoning.append(r)
        answer.append(a)
        pos = c
    r, a = s.finish()
    return ("".join(reasoning + [r]) if s.has_reasoning else None), "".join(answer + [a])


@settings(max_examples=400, deadline=None)
@given(PART, PART, st.integers(0, 200), st.lists(st.integers(0, 200), max_size=12), st.sampled_from(["", " ", "\n"]))
def test_streamed_reasoning_split_equals_split_reasoning(reasoning, answer, cut_at, cuts, lead):
    """Whole completions, completions cut off anywhere (max_tokens), leading whitespace."""
    full = lead + format_completion(reasoning, answer)
    full = full[:cut_at] if cut_at < len(full) else full
    if not full.lstrip().startswith(THINK) and THINK_END in full:
        return   # documented: without an opening <think> everything is answer
    assert split_streaming(full, [c for c in cuts if c <= len(full)]) == split_reasoning(full)


def test_plain_answers_pass_through_untouched():
    assert split_streaming("  Hello <b>world</b>", [1, 3, 8]) == (None, "  Hello <b>world</b>")
    assert split_streaming(THINK + "\nhmm\n" + THINK_END + "\n\nYes.", [2, 9, 12, 14]) == ("hmm", "Yes.")
