"""Transcript normalisation and the byte-level BPE tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

from ctal_bench.data import text
from ctal_bench.data.text import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    encode,
    load_or_train_tokenizer,
    normalise,
    train_tokenizer,
)
from ctal_bench.errors import UserError

CORPUS = [
    "The food was not good at all!",
    "Honestly, it WASN'T bad.",
    "I really loved the quiet garden.",
    "The service was terrible; we never went back.",
    "What a wonderful, wonderful evening",
    "My neighbour's dog barked all night...",
] * 20


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "hello world"),
    ("It wasn't ME.", "it wasn't me"),
    ("'quoted' and students' books", "quoted and students books"),
    ("Don\u2019t  stop\t\n now", "don't stop now"),
    ("rock-n-roll_band (live)", "rock n roll band live"),
    ("  ...!?  ", ""),
    ("Caf\u00c9 costs 12 euros", "caf\u00e9 costs 12 euros"),
])
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def test_special_token_ids_are_fixed():
    tok = train_tokenizer(CORPUS, 300)
    assert tok.get_vocab_size() == 300
    for expected, token in zip((PAD_ID, CLS_ID, SEP_ID, UNK_ID, MASK_ID), SPECIAL_TOKENS):
        assert tok.token_to_id(token) == expected


def test_tokenizer_normalises_and_round_trips():
    tok = train_tokenizer(CORPUS, 320)
    assert tok.encode("The FOOD, was good!").ids == tok.encode("the food was good").ids
    # byte-level: unseen characters still encode (no <unk>) and decode back
    ids = tok.encode("zebra \u00fcber \u6f22").ids
    assert UNK_ID not in ids
    assert tok.decode(ids).strip() == "zebra \u00fcber \u6f22"


def test_training_is_deterministic():
    a, b = train_tokenizer(CORPUS, 300), train_tokenizer(list(reversed(CORPUS)), 300)
    assert a.get_vocab() == b.get_vocab()


def test_vocab_smaller_than_bytes_is_a_user_error():
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer(CORPUS, 100)


def test_encode_adds_specials_and_truncates_keeping_end():
    tok = train_tokenizer(CORPUS, 300)
    short, long_ = encode(tok, ["good", "the service was terrible and the food was not good"], 6)
    assert short.dtype == np.int64
    assert short[0] == CLS_ID and short[-1] == SEP_ID
    assert list(short[1:-1]) == tok.encode("good").ids
    assert len(long_) == 6 and long_[0] == CLS_ID and long_[-1] == SEP_ID
    full = tok.encode("the service was terrible and the food was not good").ids
    assert list(long_[1:-1]) == full[:4]
    (empty,) = encode(tok, ["?!"], 6)
    assert list(empty) == [CLS_ID, SEP_ID]
    with pytest.raises(UserError, match="max_text_len"):
        encode(tok, ["good"], 1)


def test_load_or_train_reuses_the_cached_tokenizer(tmp_path, monkeypatch):
    first = load_or_train_tokenizer(CORPUS, 300, tmp_path)
    (saved,) = (tmp_path / "tokenizers").glob("*.json")
    monkeypatch.setattr(text, "train_tokenizer", lambda *_: pytest.fail("retrained"))
    # order and surface form do not matter: the key is over sorted normalised texts
    again = load_or_train_tokenizer([t.upper() for t in reversed(CORPUS)], 300, tmp_path)
    assert again.get_vocab() == first.get_vocab()
    monkeypatch.undo()
    load_or_train_tokenizer(CORPUS, 320, tmp_path)  # another vocab size is another file
    load_or_train_tokenizer(CORPUS[:3], 300, tmp_path)  # and so is another corpus
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 3
    saved.write_text("{ not json")
    assert load_or_train_tokenizer(CORPUS, 300, tmp_path).get_vocab() == first.get_vocab()
