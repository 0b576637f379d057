"""Export to Hugging Face format: tokenizer.json, tokenizer_config.json, special_tokens_map.json.

The sentencepiece model becomes a ``tokenizers`` BPE model with byte fallback:
- vocabulary: every piece at its own id, with "▁" written as the space it stands for. Then a
  literal "▁" in the input matches no piece and falls back to its bytes, exactly as our encoder
  does; no normalizer or pre-tokenizer is needed (none is applied at encode time by
  sentencepiece either: its word splitting only constrains which pieces training may learn).
- merges: sentencepiece merges, at each step, the adjacent pair whose concatenation is the
  highest-scored piece; HF merges the pair of lowest rank. Listing, for every learned piece in
  score order, each way of splitting it into two vocabulary pieces makes the two agree.
- special tokens: added tokens at their fixed ids, matched on the raw string before BPE. Through
  the chat template, message text cannot produce them: the template writes each "<" of a
  message as U+E000 (``HF_TEXT_ESCAPE``) and the normalizer, which runs after special tokens were
  matched, turns it back into "<", so the ids equal Whale's own tokenizer's (typed specials are
  text). A bare ``tok(text)`` still matches specials in ``text``, as every HF tokenizer does
  (``split_special_tokens=True`` turns that off).
- no post-processor: ``tok(text)`` adds no BOS/EOS, like ``Tokenizer.encode``; the chat template
  writes its own BOS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizer.chat import CHAT_TEMPLATE, HF_TEXT_ESCAPE
from tokenizer.special import BY_NAME, N_SPECIAL, SPECIAL_TOKENS, UNK

if TYPE_CHECKING:
    from tokenizer.tokenizer import Tokenizer

HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _vocab_and_merges(tok: "Tokenizer") -> tuple[dict[str, int], list[tuple[str, str]]]:
    import sentencepiece.sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(tok.model_proto)
    vocab: dict[str, int] = {}
    normal: list[tuple[float, int, str]] = []
    for i, p in enumerate(proto.pieces):
        if i < N_SPECIAL or p.type == pb.ModelProto.SentencePiece.BYTE:
            vocab[p.piece] = i
        else:
            text = p.piece.replace("\u2581", " ")
            vocab[text] = i
            normal.append((p.score, i, text))
    normal_ids = {text: i for _, i, text in normal}
    merges: list[tuple[float, int, int, int, str, str]] = []
    for score, i, text in normal:
        for k in range(1, len(text)):
            left, right = text[:k], text[k:]
            if left in normal_ids and right in normal_ids:
                merges.append((-score, i, normal_ids[left], normal_ids[right], left, right))
    merges.sort()
    return vocab, [(m[4], m[5]) for m in merges]


def build_hf_tokenizer(tok: "Tokenizer"):
    """The ``tokenizers.Tokenizer`` equivalent of ``tok`` (same ids for every text)."""
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab, merges = _vocab_and_merges(tok)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True,
                                fuse_unk=False))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf.normalizer = normalizers.Replace(HF_TEXT_ESCAPE, "<")  # see the module docstring
    hf.add_tokens([AddedToken(t.text, special=t.hf_special, normalized=False)
                   for t in SPECIAL_TOKENS if t.name != "unk"])
    return hf


def export_hf(tok: "Tokenizer", directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf = build_hf_tokenizer(tok)
    hf.save(str(directory / "tokenizer.json"))
    for t in SPECIAL_TOKENS:  # the added tokens must land on the recorded ids
        if t.name != "unk" and hf.token_to_id(t.text) != t.id:
            raise RuntimeError(f"HF export put {t.text} at {hf.token_to_id(t.text)}, expected {t.id}")

    named = {f"{n}_token": BY_NAME[n].text for n in ("bos", "eos", "pad")}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **named,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(t.id): {"content": t.text, "special": t.hf_special, "normalized": False,
                        "lstrip": False, "rstrip": False, "single_word": False}
            for t in SPECIAL_TOKENS if t.name != "unk"},
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", named)
    return directory


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
