"""Transcript normalisation and the byte-level BPE tokenizer (from the `tokenizers` library).

Normalisation lives in one place, the tokenizer's own normaliser pipeline (so a saved
tokenizer JSON normalises exactly as it did when trained); ``normalise`` runs that same
pipeline on a single string.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ctal_bench.errors import UserError
from ctal_bench.files import atomic_write_text

# RoBERTa-style specials; their ids are their positions, fixed for every vocabulary.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
PAD_ID, CLS_ID, SEP_ID, UNK_ID, MASK_ID = range(len(SPECIAL_TOKENS))

TOKENIZER_VERSION = 1  # bump when the pipeline below changes, so cached tokenizers are retrained
BYTE_ALPHABET = 256
MIN_VOCAB = len(SPECIAL_TOKENS) + BYTE_ALPHABET  # every byte must be a token


def _normaliser() -> normalizers.Normalizer:
    """Lower-case, punctuation stripped (apostrophes inside words kept), whitespace collapsed."""
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Lowercase(),
        normalizers.Replace(Regex("[\u2018\u2019\u02bc]"), "'"),  # typographic apostrophes
        normalizers.Replace(Regex(r"[^\w\s']|_"), " "),  # punctuation -> word boundary
        normalizers.Replace(Regex(r"(?<!\w)'|'(?!\w)"), " "),  # quotes, not "wasn't"
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ])


_NORMALISER = _normaliser()


def normalise(text: str) -> str:
    """``"Well, it WASN'T 'bad'!"`` -> ``"well it wasn't bad"``."""
    return _NORMALISER.normalize_str(text)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``texts``; specials get ids PAD_ID..MASK_ID."""
    if vocab_size < MIN_VOCAB:
        raise UserError(f"config key 'data.vocab_size' must be at least {MIN_VOCAB} "
                        f"({len(SPECIAL_TOKENS)} specials + {BYTE_ALPHABET} bytes), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = _normaliser()
    # add_prefix_space: a word is tokenised the same at the start of a sentence as inside it.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, f"special {token} is not id {expected_id}"
    return tokenizer


def tokenizer_key(texts: Iterable[str], vocab_size: int) -> str:
    """Hash of (sorted normalised texts, vocab size, pipeline version): 16 hex."""
    h = hashlib.sha256(f"v{TOKENIZER_VERSION}\0{vocab_size}\0".encode())
    for text in sorted(normalise(t) for t in texts):
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def load_or_train_tokenizer(texts: Iterable[str], vocab_size: int, cache_dir: Path) -> Tokenizer:
    """The tokenizer for this corpus and vocabulary size, trained once and reused from
    ``cache_dir/tokenizers/bpe-<vocab>-<key>.json``."""
    texts = list(texts)
    path = Path(cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{tokenizer_key(texts, vocab_size)}.json"
    if path.exists():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # the library raises a bare Exception for a corrupt file: retrain
            pass
    tokenizer = train_tokenizer(texts, vocab_size)
    atomic_write_text(path, tokenizer.to_str())
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> list[np.ndarray]:
    """int64 ids ``<s> ... </s>`` per text, at most ``max_len`` long (truncation keeps ``</s>``)."""
    if max_len < 2:
        raise UserError(f"config key 'model.max_text_len' must be at least 2 (<s> and </s>), got {max_len}")
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    out = []
    for enc in encodings:
        body = enc.ids[:max_len - 2]
        ids = np.empty(len(body) + 2, dtype=np.int64)
        ids[0], ids[1:-1], ids[-1] = CLS_ID, body, SEP_ID
        out.append(ids)
    return out
