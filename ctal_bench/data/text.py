"""Transcript normalisation and the byte-level BPE tokenizer (from the `tokenizers` library)."""
from __future__ import annotations

# RoBERTa-style specials; their ids are their positions, fixed for every vocabulary.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
PAD_ID, CLS_ID, SEP_ID, UNK_ID, MASK_ID = range(len(SPECIAL_TOKENS))
