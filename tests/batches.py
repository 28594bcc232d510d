"""Random, correctly padded model batches for model tests."""
from __future__ import annotations

import torch

from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.data.text import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS


def random_batch(vocab: int, token_lengths, frame_lengths, seed: int = 0, n_classes: int | None = None,
                 audio_dim: int = AUDIO_DIM) -> Batch:
    """<s> ... </s> token rows and random frames of width ``audio_dim``, padded to the longest; with
    ``n_classes``, random class targets (drawn last from the same seeded generator), else none."""
    g = torch.Generator().manual_seed(seed)
    B, L, T = len(token_lengths), max(token_lengths), max(frame_lengths)
    token_mask = torch.arange(L) < torch.tensor(token_lengths)[:, None]  # (B, L)
    audio_mask = torch.arange(T) < torch.tensor(frame_lengths)[:, None]  # (B, T)
    tokens = torch.randint(len(SPECIAL_TOKENS), vocab, (B, L), generator=g)
    tokens[:, 0] = CLS_ID
    tokens[torch.arange(B), torch.tensor(token_lengths) - 1] = SEP_ID
    tokens[~token_mask] = PAD_ID
    audio = torch.randn(B, T, audio_dim, generator=g) * audio_mask[..., None]
    targets = None if n_classes is None else torch.randint(0, n_classes, (B,), generator=g)
    return Batch(tokens, token_mask, audio, audio_mask, targets,
                 uids=tuple(f"u{i}" for i in range(B)), speakers=tuple(f"s{i}" for i in range(B)))
