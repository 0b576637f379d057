"""The Tokenizer: a trained sentencepiece BPE model plus Whale's special tokens and chat template.

Encoding runs in sentencepiece (C++). Decoding is a byte-table lookup done here: every id maps to
the exact bytes it stands for (a learned piece with "▁" read as a space, a byte-fallback piece to
its single byte, a special token to its text), and the concatenated bytes are decoded as UTF-8.
That keeps ``decode(encode(s)) == s`` exact, makes ``decode_bytes`` available for streaming, and
gives ``token_byte_lengths`` (bits-per-byte accounting) from the same table.

One sentencepiece quirk is handled on the way in: the trainer stores a space as "▁" (U+2581), so
the model would read a literal "▁" in the text as a space. The text is split at literal "▁" and
each one is encoded as its three UTF-8 byte pieces, which decode back to "▁".

Files in a saved tokenizer folder:
    tokenizer.model           the sentencepiece model (what ``Tokenizer.load`` reads)
    special_tokens.json       the special tokens with their ids, checked on load
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
                              the Hugging Face export (``tokenizer.hf``), for transformers/vLLM
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tokenizer import chat
from tokenizer.special import BY_NAME, BY_TEXT, FIRST_BYTE_ID, N_SPECIAL, SPECIAL_TOKENS, SpecialToken, check_ids

MODEL_FILE = "tokenizer.model"
SPECIALS_FILE = "special_tokens.json"
FORMAT_VERSION = 1

_LOWER_BLOCK = "\u2581"  # "▁", sentencepiece's stand-in for a space


class Tokenizer:
    """Byte-fallback BPE with fixed special-token ids (see ``tokenizer.special``)."""

    bos_id: int = BY_NAME["bos"].id
    eos_id: int = BY_NAME["eos"].id
    pad_id: int = BY_NAME["pad"].id
    unk_id: int = BY_NAME["unk"].id
    system_id: int = BY_NAME["system"].id
    user_id: int = BY_NAME["user"].id
    assistant_id: int = BY_NAME["assistant"].id
    think_id: int = BY_NAME["think"].id
    think_end_id: int = BY_NAME["think_end"].id
    fim_begin_id: int = BY_NAME["fim_begin"].id
    fim_hole_id: int = BY_NAME["fim_hole"].id
    fim_end_id: int = BY_NAME["fim_end"].id
    special_tokens: tuple[SpecialToken, ...] = SPECIAL_TOKENS

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
        check_ids(self._sp.piece_to_id)
        self.vocab_size: int = self._sp.get_piece_size()

        self._bytes: list[bytes] = []
        for i in range(self.vocab_size):
            if i < N_SPECIAL:
                self._bytes.append(SPECIAL_TOKENS[i].text.encode())
            elif self._sp.is_byte(i):
                self._bytes.append(bytes([int(self._sp.id_to_piece(i)[3:5], 16)]))
            else:
                self._bytes.append(self._sp.id_to_piece(i).replace(_LOWER_BLOCK, " ").encode())
        skipped = {t.id for t in SPECIAL_TOKENS if t.hf_special}
        self._bytes_skipping = [b"" if i in skipped else b for i, b in enumerate(self._bytes)]
        self._lower_block_ids = [FIRST_BYTE_ID + b for b in _LOWER_BLOCK.encode()]
        # what allow_special matches: every special but <unk>, which nothing ever produces (as in
        # the HF export); longest first, so no text shadows a longer one sharing its prefix
        texts = sorted((t.text for t in SPECIAL_TOKENS if t.name != "unk"), key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, texts)))

    # pickles as the model bytes (Ray tasks, DataLoader workers), rebuilt on the other side
    def __getstate__(self) -> dict:
        return {"model_proto": self._model_proto}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"])

    # -- persistence ----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    def save(self, directory: str | Path, hf: bool = True) -> Path:
        """Write the model, the special-token record and (by default) the Hugging Face export."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MODEL_FILE).write_bytes(self._model_proto)
        record = {"format": FORMAT_VERSION, "vocab_size": self.vocab_size,
                  "special_tokens": [{"name": t.name, "text": t.text, "id": t.id} for t in SPECIAL_TOKENS]}
        (directory / SPECIALS_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        if hf:
            from tokenizer.hf import export_hf

            export_hf(self, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        directory = Path(directory)
        model = directory / MODEL_FILE
        if not model.is_file():
            raise FileNotFoundError(f"no tokenizer at {directory}: {MODEL_FILE} is missing "
                                    f"(expected the tokenizer stage's <out>/tokenizer folder)")
        try:
            tok = cls(model.read_bytes())
        except RuntimeError as e:  # sentencepiece could not parse the file
            raise ValueError(f"{model} is not a valid sentencepiece model: {e}") from None
        record_path = directory / SPECIALS_FILE
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            recorded = {t["text"]: t["id"] for t in record.get("special_tokens", [])}
            ours = {t.text: t.id for t in SPECIAL_TOKENS}
            if recorded != ours:
                raise ValueError(f"{record_path} records special tokens that differ from this library's "
                                 f"(tokenizer.special); the tokenizer was made by another version")
        return tok

    @property
    def model_proto(self) -> bytes:
        """The serialized sentencepiece model (small; ship it to Ray workers by value)."""
        return self._model_proto

    # -- encoding -------------------------------------------------------------------------
    def encode(self, text: str, *, allow_special: bool = False, bos: bool = False,
               eos: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token strings in ``text`` are plain text unless
        ``allow_special``: a prompt cannot smuggle in a role marker or an end of turn."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = [self.bos_id] if bos else []
        if allow_special:
            pos = 0
            for m in self._special_re.finditer(text):
                ids += self._encode_plain(text[pos:m.start()])
                ids.append(BY_TEXT[m.group()].id)
                pos = m.end()
            ids += self._encode_plain(text[pos:])
        else:
            ids += self._encode_plain(text)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = False, bos: bool = False,
                     eos: bool = False, num_threads: int = 1) -> list[list[int]]:
        """``encode`` for many texts; the common case runs as one sentencepiece batch call."""
        texts = list(texts)
        plain = [i for i, t in enumerate(texts)
                 if isinstance(t, str) and _LOWER_BLOCK not in t
                 and not (allow_special and self._special_re.search(t))]
        out: list[list[int] | None] = [None] * len(texts)
        if plain:
            try:
                encoded = self._sp.encode([texts[i] for i in plain], num_threads=num_threads)
            except (UnicodeEncodeError, RuntimeError):
                for i in plain:
                    _check_unicode(texts[i])
                raise
            for i, ids in zip(plain, encoded, strict=True):
                out[i] = ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])
        for i, t in enumerate(texts):
            if out[i] is None:
                out[i] = self.encode(t, allow_special=allow_special, bos=bos, eos=eos)
        return out  # type: ignore[return-value]

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        try:
            if _LOWER_BLOCK not in text:
                return self._sp.encode(text)
            ids: list[int] = []
            for k, part in enumerate(text.split(_LOWER_BLOCK)):
                if k:
                    ids += self._lower_block_ids
                if part:
                    ids += self._sp.encode(part)
            return ids
        except (UnicodeEncodeError, RuntimeError):
            _check_unicode(text)
            raise

    # -- decoding -------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> bytes:
        """The exact bytes ``ids`` stand for (may end inside a UTF-8 character: for streaming)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy arrays, torch tensors
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} is out of range for a vocabulary of {self.vocab_size}")
        table = self._bytes_skipping if skip_special_tokens else self._bytes
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. Invalid UTF-8 (possible from sampled byte tokens) becomes U+FFFD.
        ``skip_special_tokens`` drops every special token except the <think> tags."""
        return self.decode_bytes(ids, skip_special_tokens=skip_special_tokens).decode("utf-8", "replace")

    def decode_batch(self, batch: Iterable[Iterable[int]], *, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    # -- vocabulary -----------------------------------------------------------------------
    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)

    def is_special(self, i: int) -> bool:
        return 0 <= i < N_SPECIAL

    def is_byte(self, i: int) -> bool:
        return self._sp.is_byte(i)

    def special(self, name: str) -> SpecialToken:
        return BY_NAME[name]

    @property
    def token_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id (uint16 up to 65,536 ids)."""
        return np.dtype(np.uint16) if self.vocab_size <= 1 << 16 else np.dtype(np.uint32)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for; 0 for special tokens. Bits per byte over any set of
        predicted tokens = sum(loss_nats) / ln 2 / sum(token_byte_lengths()[targets])."""
        lengths = np.array([len(b) for b in self._bytes], dtype=np.int32)
        lengths[:N_SPECIAL] = 0
        return lengths

    # -- chat -------------------------------------------------------------------------------
    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The chat template (``tokenizer.chat``) as text."""
        return chat.render(messages, add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                    train_on: str = "last") -> "chat.ChatEncoding":
        """Token ids of the rendered conversation plus the mask of tokens to train on: the
        assistant's tokens (reasoning, answer and the closing EOS) of the turns ``train_on``
        selects ("last": those after the final user message; "all": every assistant turn).
        Message text is always encoded as plain text, whatever special strings it contains."""
        return chat.encode_chat(self, messages, add_generation_prompt=add_generation_prompt,
                                train_on=train_on)

    @staticmethod
    def split_reasoning(completion: str) -> tuple[str | None, str]:
        return chat.split_reasoning(completion)

    def encode_fim(self, prefix: str, suffix: str, middle: str | None = None) -> list[int]:
        """Fill-in-the-middle in DeepSeek's PSM order:
        <｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>[middle<｜end▁of▁sentence｜>]."""
        ids = [self.fim_begin_id, *self.encode(prefix), self.fim_hole_id, *self.encode(suffix),
               self.fim_end_id]
        if middle is not None:
            ids += [*self.encode(middle), self.eos_id]
        return ids

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, specials={N_SPECIAL})"


def _check_unicode(text: str) -> None:
    """Raise a clear error if ``text`` holds a lone surrogate (not encodable as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not valid Unicode: lone surrogate U+{ord(text[e.start]):04X} at "
                         f"index {e.start} cannot be encoded as UTF-8") from None
