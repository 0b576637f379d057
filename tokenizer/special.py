"""The special tokens and their fixed ids.

The ids are part of the model's contract (embedding rows, stop tokens, the chat template), so they
are fixed here, independent of vocabulary size and training data: sentencepiece places them first
(ids 0..31), then come the 256 byte-fallback pieces (ids 32..287), then the learned pieces.

    id  token                      role
     0  <｜begin▁of▁sentence｜>     BOS: starts every chat rendering
     1  <｜end▁of▁sentence｜>       EOS: ends a document in the training shards and ends every
                                    assistant turn (the stop token at generation time)
     2  <｜▁pad▁｜>                 PAD: batch padding, never trained on
     3  <unk>                      required by sentencepiece; never produced (byte fallback)
     4  <｜System｜>                system turn marker
     5  <｜User｜>                  user turn marker
     6  <｜Assistant｜>             assistant turn marker (and the generation prompt)
     7  <think>                    opens the assistant's reasoning
     8  </think>                   closes it
     9  <｜fim▁begin｜>             fill-in-the-middle, DeepSeek's PSM order (V3 §4.1):
    10  <｜fim▁hole｜>                 <｜fim▁begin｜> prefix <｜fim▁hole｜> suffix <｜fim▁end｜> middle
    11  <｜fim▁end｜>                  so fim_begin precedes the prefix, fim_hole the suffix, fim_end the middle
 12-31  <｜reserved▁k｜>, k=0..19    unused; room for tool-call markers without renumbering

The names follow DeepSeek-V3's tokenizer (fullwidth bar U+FF5C, "▁" U+2581). DeepSeek has no
system marker (its system prompt follows BOS bare); Whale adds <｜System｜> so every role boundary
is a token and a rendered conversation parses back unambiguously.

A special token is produced only structurally (chat template, FIM formatting, shard EOS) or when a
caller passes ``allow_special=True``: the same string typed by a user is encoded as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialToken:
    name: str
    text: str
    id: int
    # Hugging Face's notion: special tokens are dropped by decode(skip_special_tokens=True).
    # The reasoning tags stay visible there, as in DeepSeek-R1's tokenizer.
    hf_special: bool = True


N_RESERVED = 20

_NAMED = (
    ("bos", "<｜begin▁of▁sentence｜>", True),
    ("eos", "<｜end▁of▁sentence｜>", True),
    ("pad", "<｜▁pad▁｜>", True),
    ("unk", "<unk>", True),
    ("system", "<｜System｜>", True),
    ("user", "<｜User｜>", True),
    ("assistant", "<｜Assistant｜>", True),
    ("think", "<think>", False),
    ("think_end", "</think>", False),
    ("fim_begin", "<｜fim▁begin｜>", True),
    ("fim_hole", "<｜fim▁hole｜>", True),
    ("fim_end", "<｜fim▁end｜>", True),
)

SPECIAL_TOKENS: tuple[SpecialToken, ...] = tuple(
    SpecialToken(name, text, i, hf) for i, (name, text, hf) in enumerate(_NAMED)
) + tuple(
    SpecialToken(f"reserved_{k}", f"<｜reserved▁{k}｜>", len(_NAMED) + k) for k in range(N_RESERVED)
)

BY_NAME: dict[str, SpecialToken] = {t.name: t for t in SPECIAL_TOKENS}
BY_TEXT: dict[str, SpecialToken] = {t.text: t for t in SPECIAL_TOKENS}
N_SPECIAL = len(SPECIAL_TOKENS)  # 32
N_BYTES = 256
FIRST_BYTE_ID = N_SPECIAL  # <0x00> .. <0xFF> follow the specials
FIRST_LEARNED_ID = N_SPECIAL + N_BYTES

BOS, EOS, PAD, UNK = (BY_NAME[n].text for n in ("bos", "eos", "pad", "unk"))
SYSTEM, USER, ASSISTANT = (BY_NAME[n].text for n in ("system", "user", "assistant"))
THINK, THINK_END = BY_NAME["think"].text, BY_NAME["think_end"].text
FIM_BEGIN, FIM_HOLE, FIM_END = (BY_NAME[n].text for n in ("fim_begin", "fim_hole", "fim_end"))

# sentencepiece gets BOS/EOS/PAD/UNK as its own meta pieces and everything else as control
# symbols: control symbols are never matched in input text, which is exactly "typed specials are
# plain text". Their slots follow the four meta ids in order, which is what fixes ids 4..31.
SENTENCEPIECE_CONTROL_SYMBOLS: tuple[str, ...] = tuple(t.text for t in SPECIAL_TOKENS[4:])


def check_ids(piece_to_id) -> None:
    """Raise if a model's special tokens are not at the ids recorded above."""
    wrong = [(t.text, t.id, piece_to_id(t.text)) for t in SPECIAL_TOKENS if piece_to_id(t.text) != t.id]
    if wrong:
        listed = ", ".join(f"{text} expected id {want}, found {got}" for text, want, got in wrong)
        raise ValueError(f"tokenizer model has special tokens at unexpected ids: {listed}")
