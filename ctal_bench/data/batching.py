"""Length-bucketed batches with padding masks: the one input type every model takes."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from ctal_bench.config import DataConfig
from ctal_bench.data.base import Example
from ctal_bench.data.text import PAD_ID
from ctal_bench.errors import UserError

AUDIO_DIM = 160  # one feature frame: 80 log-mel + 80 deltas
BUCKET_BATCHES = 50  # a bucket holds this many batches' worth of items before sorting by length


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # (B, L) long: <s> ... </s>, padded with PAD_ID
    token_mask: torch.Tensor  # (B, L) bool, True = real token
    audio: torch.Tensor  # (B, T, 160 * frame_stack) float32, zero where padded
    audio_mask: torch.Tensor  # (B, T) bool, True = real frame
    targets: torch.Tensor | None  # (B,) long class / speaker index, or float sentiment
    uids: tuple[str, ...]
    speakers: tuple[str, ...]

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, tokens=move(self.tokens), token_mask=move(self.token_mask),
                       audio=move(self.audio), audio_mask=move(self.audio_mask),
                       targets=move(self.targets))

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True)
class Item:
    """One utterance ready for batching."""

    uid: str
    speaker: str
    tokens: np.ndarray  # (L,) int64, <s> ... </s>
    audio: np.ndarray  # (T, 160 * frame_stack) float16
    target: int | float | None  # class / speaker index, sentiment score, or None (pre-training)


def audio_dim(data: DataConfig) -> int:
    """Width of a model frame: ``data.frame_stack`` feature frames side by side."""
    return AUDIO_DIM * data.frame_stack


def frame_ms(data: DataConfig) -> float:
    """Milliseconds of audio per model frame."""
    return data.features.hop_ms * data.frame_stack


def stack_frames(audio: np.ndarray, frame_stack: int) -> np.ndarray:
    """(T, D) -> (ceil(T / k), k * D): k consecutive frames side by side, the last group zero-padded."""
    short = -len(audio) % frame_stack
    if short:
        audio = np.concatenate([audio, np.zeros((short, audio.shape[1]), dtype=audio.dtype)])
    return audio.reshape(len(audio) // frame_stack, frame_stack * audio.shape[1])


def make_items(examples: Sequence[Example],
               features: Mapping[str, np.ndarray] | Sequence[np.ndarray],
               token_ids: Sequence[np.ndarray], targets: Sequence[int | float | None] | None,
               max_audio_frames: int, frame_stack: int = 1) -> tuple[list[Item], int]:
    """Items in example order, audio cut to ``max_audio_frames``; also the number cut.

    ``features`` is keyed by uid (as ``features.extract_features`` returns it) or aligned
    with ``examples``; ``token_ids`` and ``targets`` are aligned with ``examples`` (as
    ``text.encode`` returns them); ``targets=None`` means unlabelled. With ``frame_stack`` k > 1
    each item's frames are stacked k at a time (``stack_frames``) after the cut.
    """
    if max_audio_frames < 1:
        raise UserError(f"config key 'data.max_audio_frames' must be >= 1, got {max_audio_frames}")
    if frame_stack < 1:
        raise UserError(f"config key 'data.frame_stack' must be >= 1, got {frame_stack}")
    aligned = [len(token_ids)] + ([] if targets is None else [len(targets)])
    if not isinstance(features, Mapping):
        aligned.append(len(features))
    if any(n != len(examples) for n in aligned):
        raise ValueError(f"{len(examples)} examples but {len(token_ids)} token sequences, "
                         f"{'no' if targets is None else len(targets)} targets and "
                         f"{'uid-keyed' if isinstance(features, Mapping) else len(features)} features")
    items, truncated = [], 0
    for i, example in enumerate(examples):
        if isinstance(features, Mapping):
            if example.uid not in features:
                raise ValueError(f"no features for utterance {example.uid!r}")
            audio = features[example.uid]
        else:
            audio = features[i]
        if len(audio) > max_audio_frames:
            audio = audio[:max_audio_frames]
            truncated += 1
        audio = np.asarray(audio, dtype=np.float16)
        items.append(Item(uid=example.uid, speaker=example.speaker,
                          tokens=np.asarray(token_ids[i], dtype=np.int64),
                          audio=stack_frames(audio, frame_stack),
                          target=None if targets is None else targets[i]))
    return items, truncated


def bucket_batches(lengths: Sequence[int], batch_size: int, seed: int | None) -> list[list[int]]:
    """Index batches of similar length, covering every index exactly once.

    With a seed: shuffle, cut into buckets of BUCKET_BATCHES * batch_size, sort each bucket by
    length, cut into batches, shuffle the batch order. Different seeds give different batches,
    and each batch stays nearly length-homogeneous (little padding).
    With ``seed=None``: sort everything by length (stable) and keep that order, for evaluation.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if seed is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    bucket = np.arange(n) // (BUCKET_BATCHES * batch_size)
    # lexsort: last key is primary -> by bucket, then by length; stable, so equal lengths
    # keep their shuffled order.
    order = perm[np.lexsort((lengths[perm], bucket))]
    batches = [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _target_tensor(targets: Sequence[int | float | None]) -> torch.Tensor | None:
    if any(t is None for t in targets):
        return None
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in targets):
        return torch.tensor(targets, dtype=torch.long)
    return torch.tensor(targets, dtype=torch.float32)


def collate(items: Sequence[Item]) -> Batch:
    """Pad to the longest item; masks are True on real tokens and frames."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    token_lens = np.array([len(it.tokens) for it in items])
    audio_lens = np.array([len(it.audio) for it in items])
    dim = items[0].audio.shape[1]
    tokens = np.full((len(items), token_lens.max()), PAD_ID, dtype=np.int64)  # (B, L)
    # Padded in the cache's float16, widened by torch: numpy's float16 -> float32 cast is the slow
    # part of collating (2x, measured).
    audio = np.zeros((len(items), audio_lens.max(), dim), dtype=np.float16)  # (B, T, D)
    for i, it in enumerate(items):
        tokens[i, :token_lens[i]] = it.tokens
        audio[i, :audio_lens[i]] = it.audio
    return Batch(
        tokens=torch.from_numpy(tokens),
        token_mask=torch.from_numpy(np.arange(tokens.shape[1]) < token_lens[:, None]),
        audio=torch.from_numpy(audio).float(),
        audio_mask=torch.from_numpy(np.arange(audio.shape[1]) < audio_lens[:, None]),
        targets=_target_tensor([it.target for it in items]),
        uids=tuple(it.uid for it in items),
        speakers=tuple(it.speaker for it in items),
    )


def iterate(items: Sequence[Item], batch_size: int, seed: int | None) -> Iterator[Batch]:
    """Batches bucketed by audio length (frames); ``seed=None`` for a fixed evaluation order."""
    for batch in bucket_batches([len(it.audio) for it in items], batch_size, seed):
        yield collate([items[i] for i in batch])
