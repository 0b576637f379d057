"""Fixed special-token ids, save/load, FIM, skipping specials, dtype choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenizer import Tokenizer
from tokenizer.special import FIRST_BYTE_ID, FIRST_LEARNED_ID, N_SPECIAL, SPECIAL_TOKENS

EXPECTED = {
    0: "<｜begin▁of▁sentence｜>", 1: "<｜end▁of▁sentence｜>", 2: "<｜▁pad▁｜>", 3: "<unk>",
    4: "<｜System｜>", 5: "<｜User｜>", 6: "<｜Assistant｜>", 7: "<think>", 8: "</think>",
    9: "<｜fim▁begin｜>", 10: "<｜fim▁hole｜>", 11: "<｜fim▁end｜>",
    12: "<｜reserved▁0｜>", 31: "<｜reserved▁19｜>",
}


def test_special_ids_are_fixed(tok):
    for i, text in EXPECTED.items():
        assert tok.id_to_piece(i) == text
        assert SPECIAL_TOKENS[i].text == text
    assert N_SPECIAL == 32
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (0, 1, 2, 3)
    assert (tok.system_id, tok.user_id, tok.assistant_id) == (4, 5, 6)
    assert (tok.think_id, tok.think_end_id) == (7, 8)
    assert (tok.fim_begin_id, tok.fim_hole_id, tok.fim_end_id) == (9, 10, 11)
    # byte fallback pieces follow, then the learned vocabulary
    assert tok.id_to_piece(FIRST_BYTE_ID) == "<0x00>" and tok.id_to_piece(FIRST_LEARNED_ID - 1) == "<0xFF>"
    assert all(tok.is_byte(i) for i in range(FIRST_BYTE_ID, FIRST_LEARNED_ID))
    assert not tok.is_byte(FIRST_LEARNED_ID) and not tok.is_special(FIRST_LEARNED_ID)


def test_save_load_roundtrip(tok, tmp_path):
    tok.save(tmp_path, hf=False)
    loaded = Tokenizer.load(tmp_path)
    text = "def f(x):\n\treturn x  # ▁ 😀\r\n"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size
    record = json.loads((tmp_path / "special_tokens.json").read_text())
    assert {t["text"]: t["id"] for t in record["special_tokens"]} == {t.text: t.id for t in SPECIAL_TOKENS}


def test_load_errors_name_the_cause(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model is missing"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        Tokenizer.load(tmp_path)
    tok.save(tmp_path, hf=False)
    record = json.loads((tmp_path / "special_tokens.json").read_text())
    record["special_tokens"][1]["id"] = 7
    (tmp_path / "special_tokens.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="special tokens that differ"):
        Tokenizer.load(tmp_path)


def test_skip_special_tokens_keeps_think_tags(tok):
    ids = tok.encode("<｜Assistant｜><think>\nhm\n</think>\n\nyes<｜end▁of▁sentence｜>", allow_special=True)
    assert tok.decode(ids, skip_special_tokens=True) == "<think>\nhm\n</think>\n\nyes"


def test_fim_uses_deepseek_psm_order(tok):
    ids = tok.encode_fim("def f(x):\n", "\n", middle="    return x")
    assert ids[0] == tok.fim_begin_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == ("<｜fim▁begin｜>def f(x):\n<｜fim▁hole｜>\n<｜fim▁end｜>"
                               "    return x<｜end▁of▁sentence｜>")
    assert tok.encode_fim("a", "b")[-1] == tok.fim_end_id


def test_token_dtype_widens_past_65536_ids(tok):
    assert tok.token_dtype == np.uint16
    import sentencepiece.sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(tok.model_proto)
    for k in range(65_600 - len(proto.pieces)):  # pad with rare pieces to cross 2**16 ids
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"zz{k}", -1e6 - k, pb.ModelProto.SentencePiece.NORMAL
    big = Tokenizer(proto.SerializeToString())
    assert big.vocab_size == 65_600 and big.token_dtype == np.uint32
    assert big.decode(big.encode("hello ▁ world")) == "hello ▁ world"


def test_pickles_as_model_bytes_and_decodes_arrays(tok):
    import pickle

    import torch

    copy = pickle.loads(pickle.dumps(tok))
    ids = tok.encode("pickled ▁ 😀")
    assert copy.encode("pickled ▁ 😀") == ids
    assert tok.decode(np.array(ids, dtype=np.uint16)) == tok.decode(torch.tensor(ids)) == "pickled ▁ 😀"
