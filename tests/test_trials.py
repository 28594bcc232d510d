import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctal_bench.data.base import Example, Trial
from ctal_bench.data.trials import build_trials, count_pairs, max_balanced_trials, read_trials, write_trials
from ctal_bench.errors import DataError, UserError


def examples(per_speaker: dict[str, int]) -> list[Example]:
    return [Example(uid=f"{spk}-{u:03d}", audio=Path(f"{spk}/{u}.wav"), text="x", speaker=spk)
            for spk, n in per_speaker.items() for u in range(n)]


SPEAKERS = {"a": 4, "b": 3, "c": 5, "d": 1}


def test_balanced_distinct_and_labelled_correctly():
    pool = examples(SPEAKERS)
    speaker = {e.uid: e.speaker for e in pool}
    trials = build_trials(pool, 30, seed=3)
    assert len(trials) == 30
    assert sum(t.target for t in trials) == 15
    for t in trials:
        assert t.enroll != t.test
        assert t.target == int(speaker[t.enroll] == speaker[t.test])
    unordered = {frozenset((t.enroll, t.test)) for t in trials}
    assert len(unordered) == 30  # no pair twice, in either orientation


def test_deterministic_for_seed_and_independent_of_input_order():
    pool = examples(SPEAKERS)
    shuffled = pool[:]
    random.Random(7).shuffle(shuffled)
    assert build_trials(pool, 20, seed=1) == build_trials(shuffled, 20, seed=1)
    assert build_trials(pool, 20, seed=1) != build_trials(pool, 20, seed=2)


def test_odd_count_adds_a_nontarget_and_labels_are_mixed_in_order():
    trials = build_trials(examples(SPEAKERS), 21, seed=0)
    assert sum(t.target for t in trials) == 10
    labels = [t.target for t in trials]
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


def test_can_use_every_pair_and_refuses_more():
    pool = examples(SPEAKERS)
    n_target, n_nontarget = count_pairs(pool)
    assert (n_target, n_nontarget) == (6 + 3 + 10, 78 - 19)  # 13 utterances: C(13, 2) = 78 pairs
    limit = max_balanced_trials(pool)
    assert limit == 38
    trials = build_trials(pool, limit, seed=0)
    assert {frozenset((t.enroll, t.test)) for t in trials if t.target} == {
        frozenset((x.uid, y.uid)) for x in pool for y in pool if x.uid < y.uid and x.speaker == y.speaker}
    with pytest.raises(UserError, match="at most 19 target"):
        build_trials(pool, limit + 2, seed=0)


def test_single_speaker_cannot_make_trials():
    with pytest.raises(UserError):
        build_trials(examples({"a": 5}), 2, seed=0)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefg"), st.integers(1, 6), min_size=2), st.integers(0, 2**31), st.data())
def test_property_balanced_and_valid(per_speaker, seed, data):
    pool = examples(per_speaker)
    limit = max_balanced_trials(pool)
    if limit < 2:
        return
    n = data.draw(st.integers(2, limit))
    trials = build_trials(pool, n, seed)
    speaker = {e.uid: e.speaker for e in pool}
    assert len({frozenset((t.enroll, t.test)) for t in trials}) == n
    assert sum(t.target for t in trials) == n // 2
    assert all(t.target == int(speaker[t.enroll] == speaker[t.test]) for t in trials)


def test_read_trials_roundtrip(tmp_path):
    trials = build_trials(examples(SPEAKERS), 16, seed=5)
    path = tmp_path / "trials.txt"
    write_trials(path, trials)
    known = {e.uid: e.uid for e in examples(SPEAKERS)}
    assert read_trials(path, known) == trials
    assert read_trials(path, lambda entry: known.get(entry)) == trials


def test_read_trials_maps_entries_and_skips_blank_lines(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a/1.wav a/2.wav\n\n0 a/1.wav b/1.wav\n")
    mapping = {"a/1.wav": "a1", "a/2.wav": "a2", "b/1.wav": "b1"}
    assert read_trials(path, mapping) == (Trial(1, "a1", "a2"), Trial(0, "a1", "b1"))


@pytest.mark.parametrize("bad_line, expected", [
    ("1 a/1.wav", "expected 'label enroll test'"),
    ("2 a/1.wav b/1.wav", "label 0 or 1"),
    ("yes a/1.wav b/1.wav", "label 0 or 1"),
    ("0 a/1.wav nobody.wav", "unknown utterance 'nobody.wav'"),
])
def test_read_trials_bad_line_names_file_and_line(tmp_path, bad_line, expected):
    path = tmp_path / "trials.txt"
    path.write_text(f"1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n{bad_line}\n")
    mapping = {"a/1.wav": "a1", "a/2.wav": "a2", "b/1.wav": "b1"}
    with pytest.raises(DataError, match=expected) as info:
        read_trials(path, mapping)
    assert str(info.value).startswith(f"{path}:3: ")


def test_read_trials_callable_raising_keyerror_is_unknown(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 x y\n")
    with pytest.raises(DataError, match=r":1: unknown utterance 'x'"):
        read_trials(path, lambda entry: {}[entry])


def test_read_trials_needs_both_kinds(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a1 a2\n1 a2 a3\n")
    with pytest.raises(DataError, match="both target"):
        read_trials(path, {u: u for u in ("a1", "a2", "a3")})
