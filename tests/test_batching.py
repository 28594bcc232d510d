"""Items, length-bucketed batches and collation with padding masks."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctal_bench.data.base import Example
from ctal_bench.data.batching import AUDIO_DIM, Item, bucket_batches, collate, iterate, make_items, stack_frames
from ctal_bench.data.text import PAD_ID
from ctal_bench.errors import UserError

torch.set_num_threads(1)


def item(uid: str, n_tokens: int, n_frames: int, target=None) -> Item:
    rng = np.random.default_rng(zlib.crc32(uid.encode()))
    return Item(uid=uid, speaker=f"spk-{uid}", tokens=rng.integers(5, 100, n_tokens),
                audio=rng.standard_normal((n_frames, AUDIO_DIM)).astype(np.float16), target=target)


def padding_fraction(batches: list[list[int]], lengths: np.ndarray) -> float:
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - lengths.sum() / padded


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 500), max_size=300), batch_size=st.integers(1, 40),
       seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_every_index_exactly_once(lengths, batch_size, seed):
    batches = bucket_batches(lengths, batch_size, seed)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert sum(len(b) < batch_size for b in batches) <= 1  # only one short batch
    assert all(isinstance(i, int) for i in flat)


def test_batches_are_length_homogeneous():
    lengths = np.random.default_rng(0).integers(50, 3000, 4000)
    bucketed = padding_fraction(bucket_batches(lengths, 32, seed=1), lengths)
    order = np.random.default_rng(1).permutation(len(lengths))
    random_batches = [order[i:i + 32] for i in range(0, len(order), 32)]
    random = padding_fraction(random_batches, lengths)
    assert random > 0.4  # random batches of uniform lengths waste about half
    assert bucketed < 0.05
    evaluation = bucket_batches(lengths, 32, seed=None)
    assert padding_fraction(evaluation, lengths) < bucketed
    flat = np.concatenate(evaluation)
    assert (np.diff(lengths[flat]) >= 0).all()  # evaluation order: sorted by length


def test_seeds_fix_the_order_and_differ():
    lengths = np.random.default_rng(0).integers(1, 1000, 500)
    assert bucket_batches(lengths, 8, seed=3) == bucket_batches(lengths, 8, seed=3)
    assert bucket_batches(lengths, 8, seed=3) != bucket_batches(lengths, 8, seed=4)
    assert bucket_batches(lengths, 8, seed=None) == bucket_batches(lengths, 8, seed=None)
    # not just the batch order: which utterances share a batch changes too
    as_sets = lambda s: {frozenset(b) for b in bucket_batches(lengths, 8, seed=s)}  # noqa: E731
    assert as_sets(3) != as_sets(4)


def test_bad_batch_size():
    with pytest.raises(UserError, match="batch size"):
        bucket_batches([1, 2, 3], 0, seed=0)


def test_collate_pads_and_masks():
    items = [item("a", 4, 7, 2), item("b", 9, 3, 0), item("c", 6, 12, 1)]
    batch = collate(items)
    assert batch.tokens.shape == (3, 9) and batch.tokens.dtype == torch.long
    assert batch.audio.shape == (3, 12, AUDIO_DIM) and batch.audio.dtype == torch.float32
    assert batch.token_mask.sum(1).tolist() == [4, 9, 6]
    assert batch.audio_mask.sum(1).tolist() == [7, 3, 12]
    for i, it in enumerate(items):
        n, t = len(it.tokens), len(it.audio)
        assert batch.token_mask[i, :n].all() and not batch.token_mask[i, n:].any()
        assert batch.audio_mask[i, :t].all() and not batch.audio_mask[i, t:].any()
        assert batch.tokens[i, :n].tolist() == it.tokens.tolist()
        assert (batch.tokens[i, n:] == PAD_ID).all()
        torch.testing.assert_close(batch.audio[i, :t], torch.from_numpy(it.audio.astype(np.float32)))
        assert (batch.audio[i, t:] == 0).all()
    assert batch.targets.dtype == torch.long and batch.targets.tolist() == [2, 0, 1]
    assert batch.uids == ("a", "b", "c") and batch.speakers == ("spk-a", "spk-b", "spk-c")
    assert len(batch) == 3


def test_collate_target_types():
    assert collate([item("a", 3, 3, 1.5), item("b", 3, 3, -2.0)]).targets.dtype == torch.float32
    assert collate([item("a", 3, 3, np.int64(1)), item("b", 3, 3, 2)]).targets.dtype == torch.long
    assert collate([item("a", 3, 3, 1), item("b", 3, 3, None)]).targets is None


def test_make_items_truncates_and_counts():
    examples = [Example(uid=f"u{i}", audio=Path(f"u{i}.wav"), text="t", speaker=f"s{i % 2}")
                for i in range(4)]
    frames = [10, 50, 51, 80]
    feats = {f"u{i}": np.ones((n, AUDIO_DIM), dtype=np.float16) for i, n in enumerate(frames)}
    tokens = [np.arange(3 + i) for i in range(4)]
    items, truncated = make_items(examples, feats, tokens, [0, 1, 2, 3], max_audio_frames=50)
    assert truncated == 2
    assert [len(it.audio) for it in items] == [10, 50, 50, 50]
    assert [it.target for it in items] == [0, 1, 2, 3]
    assert [len(it.tokens) for it in items] == [3, 4, 5, 6]
    assert items[0].tokens.dtype == np.int64 and items[0].audio.dtype == np.float16
    assert [it.speaker for it in items] == ["s0", "s1", "s0", "s1"]
    unlabelled, _ = make_items(examples, feats, tokens, None, max_audio_frames=100)
    assert all(it.target is None for it in unlabelled)
    aligned, truncated = make_items(examples, [feats[e.uid] for e in examples], tokens, None, 50)
    assert truncated == 2 and [len(it.audio) for it in aligned] == [10, 50, 50, 50]
    with pytest.raises(ValueError, match="4 examples"):
        make_items(examples, list(feats.values())[:3], tokens, None, 100)
    with pytest.raises(ValueError, match="u3"):
        make_items(examples, {k: v for k, v in feats.items() if k != "u3"}, tokens, None, 100)



def test_stacked_frames_hold_every_feature_frame_in_order():
    audio = np.arange(5 * 3, dtype=np.float16).reshape(5, 3)  # 5 frames of width 3
    stacked = stack_frames(audio, 2)
    assert stacked.shape == (3, 6) and stacked.dtype == np.float16
    np.testing.assert_array_equal(stacked[:2].reshape(4, 3), audio[:4])  # frames side by side, in order
    np.testing.assert_array_equal(stacked[2], np.concatenate([audio[4], np.zeros(3)]))  # last group padded
    np.testing.assert_array_equal(stack_frames(audio, 1), audio)


def test_make_items_stacks_after_the_cut():
    examples = [Example(uid=f"u{i}", audio=Path(f"u{i}.wav"), text="t", speaker="s") for i in range(2)]
    feats = {"u0": np.ones((7, AUDIO_DIM), dtype=np.float16), "u1": np.ones((80, AUDIO_DIM), dtype=np.float16)}
    tokens = [np.arange(3), np.arange(4)]
    items, truncated = make_items(examples, feats, tokens, None, max_audio_frames=50, frame_stack=2)
    assert truncated == 1
    assert [it.audio.shape for it in items] == [(4, 2 * AUDIO_DIM), (25, 2 * AUDIO_DIM)]
    with pytest.raises(UserError, match="data.frame_stack' must be >= 1, got 0"):
        make_items(examples, feats, tokens, None, max_audio_frames=50, frame_stack=0)

def test_iterate_covers_everything_with_little_padding():
    rng = np.random.default_rng(5)
    items = [item(f"u{i}", int(rng.integers(3, 20)), int(rng.integers(5, 200)), i % 4)
             for i in range(100)]
    batches = list(iterate(items, 8, seed=0))
    assert sorted(u for b in batches for u in b.uids) == sorted(it.uid for it in items)
    real = sum(int(b.audio_mask.sum()) for b in batches)
    padded = sum(b.audio_mask.numel() for b in batches)
    assert real / padded > 0.9
    assert [b.uids for b in iterate(items, 8, seed=0)] == [b.uids for b in batches]
