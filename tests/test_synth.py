"""The embedded synth dataset: reproducible builds, label rules, planted effects, roles, splits, bad input."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from ctal_bench.data import synth
from ctal_bench.data.base import EMOTIONS
from ctal_bench.errors import DataError, UserError

pytestmark = pytest.mark.integration  # builds of the synth set

TINY = synth.SIZES["tiny"]
TINY_SPEAKERS = TINY.speakers_per_role()
TINY_UTTERANCES = TINY.utterances_per_role()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """One tiny build (2 workers) shared by the module; tests must not modify it."""
    return synth.build(tmp_path_factory.mktemp("a"), "tiny", workers=2, progress=False)


@pytest.fixture(scope="module")
def second_root(tmp_path_factory) -> Path:
    """An independent tiny build in another directory, with a different worker count."""
    return synth.build(tmp_path_factory.mktemp("b"), "tiny", workers=1, progress=False)


@pytest.fixture(scope="module")
def rows(tiny_root) -> list[dict]:
    return synth.read_utterances(tiny_root)


@pytest.fixture(scope="module")
def dataset(tiny_root) -> synth.SynthDataset:
    return synth.SynthDataset(tiny_root)


def manifest(root: Path) -> dict:
    return json.loads((root / synth.MANIFEST).read_text())


# --- building ---------------------------------------------------------------------------------

def test_two_fresh_builds_are_byte_identical(tiny_root, second_root):
    digest = manifest(tiny_root)["digest"]
    assert manifest(second_root)["digest"] == digest
    assert synth.verify(tiny_root) == digest
    for rel in (synth.UTTERANCES, "audio/spk009/spk009_003.flac"):  # spk009 is a breathy +f2 voice
        assert (tiny_root / rel).read_bytes() == (second_root / rel).read_bytes()


def test_build_layout_and_counts(tiny_root, rows):
    m = manifest(tiny_root)
    assert m["size"] == "tiny" and m["counts"]["utterances"] == len(rows) == TINY.n_utterances == 384
    assert m["counts"]["speakers"] == TINY.n_speakers == 24
    assert {role: m["counts"][f"{role}_utterances"] for role in synth.ROLES} == TINY_UTTERANCES
    assert m["generation"]["format_version"] == synth.FORMAT_VERSION == 2
    assert m["generation"] == synth.generation_parameters("tiny")
    flacs = sorted(p.relative_to(tiny_root).as_posix() for p in tiny_root.rglob("*.flac"))
    assert flacs == sorted(r["audio"] for r in rows)
    info = soundfile.info(str(tiny_root / rows[0]["audio"]))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 1, "PCM_16", "FLAC")
    assert info.frames == rows[0]["n_samples"] > 0.5 * synth.SAMPLE_RATE
    # No staging leftovers next to the finished build.
    assert [p.name for p in tiny_root.parent.iterdir()] == ["synth-tiny"]


def test_second_build_only_verifies(tiny_root):
    before = {p: p.stat().st_mtime_ns for p in (tiny_root / synth.MANIFEST, tiny_root / synth.UTTERANCES)}
    inode = tiny_root.stat().st_ino
    assert synth.build(tiny_root.parent, "tiny", progress=False) == tiny_root
    assert tiny_root.stat().st_ino == inode  # not replaced by a new directory
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_tampered_build_fails_verify_and_is_rebuilt(tiny_root, second_root):
    flac = second_root / "audio/spk001/spk001_000.flac"
    original = flac.read_bytes()
    flac.write_bytes(original[:-10])
    with pytest.raises(UserError, match="do not match the digest"):
        synth.verify(second_root)
    assert synth.build(second_root.parent, "tiny", workers=2, progress=False) == second_root
    assert flac.read_bytes() == original
    assert synth.verify(second_root) == manifest(tiny_root)["digest"]


def test_unfinished_build_is_not_mistaken_for_a_finished_one(tiny_root, tmp_path):
    """A directory with audio and table but no manifest (an interrupted build) does not load."""
    partial = tmp_path / "synth-smoke"
    shutil.copytree(tiny_root, partial)
    (partial / synth.MANIFEST).unlink()
    with pytest.raises(DataError, match=re.escape(str(partial / synth.MANIFEST))):
        synth.SynthDataset(partial)
    with pytest.raises(DataError):
        synth.verify(partial)


def test_bad_arguments():
    with pytest.raises(UserError, match="unknown synth size 'huge'"):
        synth.build(Path("unused"), "huge")
    with pytest.raises(UserError, match="workers"):
        synth.build(Path("unused"), "tiny", workers=0)


# --- synthesize -------------------------------------------------------------------------------

def test_synthesize_is_reproducible_and_matches_the_build(tiny_root, rows):
    row = next(r for r in rows if r["voice"].endswith("+f2"))  # breathy: uses the engine's RNG
    args = (row["text"], row["voice"], row["pitch"], row["range"], row["rate"], row["volume"])
    first, second = synth.synthesize(*args), synth.synthesize(*args)
    assert first.dtype == np.int16 and first.ndim == 1 and len(first) == row["n_samples"]
    assert np.array_equal(first, second)
    stored, rate = soundfile.read(str(tiny_root / row["audio"]), dtype="int16")
    assert rate == synth.SAMPLE_RATE and np.array_equal(first, stored)


def test_synthesize_rejects_bad_input():
    with pytest.raises(UserError, match="unknown eSpeak NG voice"):
        synth.synthesize("hello there", "xx-nowhere+m1", 50, 50, 170, 80)
    with pytest.raises(UserError, match=r"pitch must be an integer in \[0, 100\]"):
        synth.synthesize("hello there", "en-us+m1", 150, 50, 170, 80)
    with pytest.raises(UserError, match="text is empty"):
        synth.synthesize("  ", "en-us+m1", 50, 50, 170, 80)


# --- labels -----------------------------------------------------------------------------------

NEGATION_WORDS = {"not", "never", "wasn't", "isn't"}


def adjectives(text: str) -> list[str]:
    return [w for w in text.split() if w in synth.POSITIVE or w in synth.NEGATIVE]


def valence_from_text(text: str) -> int:
    """Re-derive valence from the words alone: adjective polarity, flipped by a negation."""
    if any(phrase in text for phrase in synth.NEUTRAL):
        assert not adjectives(text), text
        return 0
    (adjective,) = adjectives(text)
    negated = bool(NEGATION_WORDS & set(text.split()))
    polarity = 1 if adjective in synth.POSITIVE else -1
    return -polarity if negated else polarity


def test_valence_is_compositional_in_the_text(rows):
    for r in rows:
        assert valence_from_text(r["text"]) == r["valence"], r
        negation = NEGATION_WORDS & set(r["text"].split())
        assert bool(negation) == bool(r["negated"]), r
    negated_share = np.mean([r["negated"] for r in rows])
    assert negated_share == pytest.approx(synth.NEGATION_RATE, abs=0.02)
    # Negation appears with both polarities, so the word "not" alone does not give valence.
    assert {r["valence"] for r in rows if r["negated"]} == {-1, 0, 1}


def test_emotion_is_valence_by_arousal_except_flagged_noise(rows):
    flipped = [r for r in rows if r["emotion_flipped"]]
    for r in rows:
        rule = synth.emotion_of(r["valence"], r["arousal"])
        assert (r["emotion"] == rule) != bool(r["emotion_flipped"]), r
    assert 0 < len(flipped) / len(rows) < 2.5 * synth.EMOTION_FLIP_RATE
    assert {synth.emotion_of(v, a) for v in (-1, 0, 1) for a in (0, 1, 2)} == set(EMOTIONS)
    assert synth.emotion_of(0, 1) == "happy" and synth.emotion_of(1, 0) == "neutral"
    assert synth.emotion_of(-1, 2) == "angry" and synth.emotion_of(-1, 0) == "sad"


def test_sentiment_sign_follows_valence_and_stays_in_range(rows):
    for r in rows:
        s = r["sentiment"]
        assert -3.0 <= s <= 3.0
        if r["valence"] == 0:
            assert abs(s) <= synth.SENTIMENT_NOISE_CLIP + 1e-9
        else:
            assert np.sign(s) == r["valence"], r
            assert abs(abs(s) - (r["arousal"] + 1)) <= synth.SENTIMENT_NOISE_CLIP + 1e-9, r


def test_each_speaker_has_stratified_labels_and_prosody_tracks_arousal(rows):
    by_speaker: dict[str, list[dict]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r)
    for speaker_rows in by_speaker.values():
        n = TINY.utterances_per_speaker()[speaker_rows[0]["role"]]
        assert len(speaker_rows) == n
        assert Counter(r["arousal"] for r in speaker_rows) == {0: n // 2, 1: n // 4, 2: n // 4}
        assert Counter(r["valence"] for r in speaker_rows) == {-1: n // 2, 1: 3 * n // 8, 0: n // 8}
        assert len({r["voice"] for r in speaker_rows}) == 1
        # Within a speaker, high arousal is higher pitched, louder and faster on average.
        for key in ("pitch", "volume", "rate"):
            low = np.mean([r[key] for r in speaker_rows if r["arousal"] == 0])
            high = np.mean([r[key] for r in speaker_rows if r["arousal"] >= 1])
            assert high > low, (key, speaker_rows[0]["speaker"])


# --- planted effects (version 2) ------------------------------------------------------------

@pytest.fixture(scope="module")
def default_plan() -> list[dict]:
    """The default size's utterance rows: plan() is pure and needs no audio."""
    return synth.plan("default")[1]


def share(values) -> float:
    return float(np.mean(list(values)))


@pytest.mark.parametrize("size", list(synth.SIZES))
def test_pretraining_pool_is_many_times_the_labelled_training_set(size):
    spec = synth.SIZES[size]
    utterances = spec.utterances_per_role()
    assert utterances["pretrain"] >= synth.PRETRAIN_RATIO * utterances["train"]
    assert synth.PRETRAIN_RATIO >= 8
    speakers, rows = synth.plan(size)
    assert len(rows) == spec.n_utterances and len(speakers) == spec.n_speakers
    roles = {s["name"]: s["role"] for s in speakers}
    assert Counter(roles.values()) == spec.speakers_per_role()
    assert all(roles[r["speaker"]] == r["role"] for r in rows)  # speakers never change role
    # No train transcript holds a transfer word, at any size.
    assert not any(r["transfer"] for r in rows if r["role"] == "train")


def test_sizes_grow_and_default_voices_are_distinct():
    n = {size: spec.n_utterances for size, spec in synth.SIZES.items()}
    assert n["tiny"] < n["small"] < n["default"] < n["large"]
    assert 0.4 <= n["small"] / n["default"] <= 0.7 and 2 <= n["large"] / n["default"] <= 3
    speakers, _ = synth.plan("default")
    voices = [(s["accent"], s["variant"]) for s in speakers]
    assert len(set(voices)) == len(voices)
    for role in ("dev", "test", "verify"):  # every accent in each evaluation group
        assert {s["accent"] for s in speakers if s["role"] == role} == set(synth.ACCENTS)


def test_transfer_words_are_held_out_of_labelled_training(rows, dataset):
    assert set(synth.TRANSFER_WORDS) <= set(synth.POSITIVE) | set(synth.NEGATIVE)
    assert len(set(synth.TRANSFER_WORDS) & set(synth.POSITIVE)) == 5
    assert len(set(synth.TRANSFER_WORDS) & set(synth.NEGATIVE)) == 5
    for r in rows:
        has_word = bool(set(synth.TRANSFER_WORDS) & set(r["text"].split()))
        assert r["transfer"] == int(has_word), r
        if r["role"] == "train":
            assert not has_word, r
    for role in ("pretrain", "test"):
        assert any(r["transfer"] for r in rows if r["role"] == role), role
    # The Example carries the subset exactly when its row says so.
    examples = [e for role in synth.ROLES for e in dataset.by_role[role]]
    flagged = {r["uid"] for r in rows if r["transfer"]}
    assert {e.uid for e in examples if e.subsets == (synth.TRANSFER_SUBSET,)} == flagged
    assert all(e.subsets == () for e in examples if e.uid not in flagged)
    # Train sees every other polarity word.
    seen = {w for r in rows if r["role"] == "train" for w in adjectives(r["text"])}
    assert not seen & set(synth.TRANSFER_WORDS)


def test_default_plan_has_a_transfer_test_subset_of_the_intended_size(default_plan):
    test = [r for r in default_plan if r["role"] == "test"]
    assert 80 <= sum(r["transfer"] for r in test) <= 150
    # Every transfer word appears in pre-training and in test transcripts.
    for role in ("pretrain", "test"):
        words = {w for r in default_plan if r["role"] == role for w in r["text"].split()}
        assert set(synth.TRANSFER_WORDS) <= words, role


def test_negation_is_a_minority_and_adjectives_carry_first_order_signal(default_plan):
    assert share(r["negated"] for r in default_plan) == pytest.approx(synth.NEGATION_RATE, abs=0.01)
    assert share(r["valence"] < 0 for r in default_plan) == pytest.approx(0.5, abs=0.01)
    polar = [r for r in default_plan if r["valence"] != 0]
    # The adjective's own polarity agrees with the sign in the non-negated sentences.
    agrees = [(adjectives(r["text"])[0] in synth.POSITIVE) == (r["valence"] > 0) for r in polar]
    assert share(agrees) == pytest.approx(1 - synth.NEGATION_RATE, abs=0.02)


def test_companions_agree_with_valence_at_their_rate(default_plan):
    assert share(r["companion"] != "" for r in default_plan) == pytest.approx(synth.COMPANION_RATE, abs=0.03)
    polar = [r for r in default_plan if r["valence"] != 0 and r["companion"] != ""]
    agreement = share(r["companion"] == r["valence"] for r in polar)
    assert agreement == pytest.approx(synth.COMPANION_AGREEMENT, abs=0.03)
    assert all(r["companion"] in ("", 0) for r in default_plan if r["valence"] == 0)
    for r in default_plan:  # the clause in the text is one of its polarity's
        if r["companion"] != "":
            assert any(r["text"].endswith(" " + c) for c in synth.COMPANIONS[r["companion"]]), r
    # In every role, as in real reviews.
    for role in synth.ROLES:
        in_role = [r for r in polar if r["role"] == role]
        assert share(r["companion"] == r["valence"] for r in in_role) > 0.75, role


def test_markers_track_arousal_in_every_role(default_plan):
    for role in synth.ROLES:
        in_role = [r for r in default_plan if r["role"] == role]
        marked = [r["arousal"] >= 1 for r in in_role if r["marker"]]
        unmarked = [r["arousal"] >= 1 for r in in_role if not r["marker"]]
        assert share(marked) > share(unmarked) + 0.25, role
    marked = [r["arousal"] >= 1 for r in default_plan if r["marker"]]
    assert share(marked) == pytest.approx(0.77, abs=0.03)
    for r in default_plan:
        opens = any(r["text"].startswith(m + " ") for m in synth.MARKERS)
        assert opens == bool(r["marker"]), r


def test_vocabularies_do_not_overlap():
    """Companions and markers hold no polarity adjective, negation or neutral phrase."""
    polarity = set(synth.POSITIVE) | set(synth.NEGATIVE) | NEGATION_WORDS | {"no"}
    for phrase in [*synth.MARKERS, *(c for cs in synth.COMPANIONS.values() for c in cs)]:
        assert not polarity & set(phrase.split()), phrase
        assert not any(n in phrase for n in synth.NEUTRAL), phrase


# --- roles and splits -------------------------------------------------------------------------

def test_speaker_roles_are_disjoint_and_sized(rows, tiny_root):
    roles_of = {}
    for r in rows:
        roles_of.setdefault(r["speaker"], set()).add(r["role"])
    assert all(len(roles) == 1 for roles in roles_of.values())
    per_role = Counter(next(iter(roles)) for roles in roles_of.values())
    assert per_role == TINY_SPEAKERS
    voices = [f"{s['accent']}+{s['variant']}" for s in manifest(tiny_root)["speakers"]]
    assert len(set(voices)) == len(voices)  # distinct accent x variant voices


def speakers(examples) -> set[str]:
    return {e.speaker for e in examples}


@pytest.mark.parametrize("task", ["emotion", "sentiment"])
def test_labelled_split_is_speaker_disjoint(dataset, task):
    assert dataset.folds(task) == ("0",)
    split = dataset.split(task, "0", seed=0)
    parts = [speakers(split.train), speakers(split.dev), speakers(split.test), speakers(dataset.pretraining())]
    assert [len(p) for p in parts] == [TINY_SPEAKERS[r] for r in ("train", "dev", "test", "pretrain")]
    sizes = [TINY_UTTERANCES[r] for r in synth.LABELLED_ROLES]
    assert [len(split.train), len(split.dev), len(split.test)] == sizes
    assert len(set().union(*parts)) == sum(len(p) for p in parts)
    for example in split.train + split.dev + split.test:
        assert example.emotion in EMOTIONS and example.sentiment is not None
        assert example.audio.is_file()
    assert split.dev_trials == () and split.test_trials == ()


def test_verification_split_uses_held_out_speakers_and_seeded_trials(dataset):
    split = dataset.split("verification", "0", seed=3)
    emotion = dataset.split("emotion", "0", seed=3)
    assert speakers(split.train) == speakers(emotion.train)
    assert speakers(split.dev) == speakers(emotion.dev)
    assert not speakers(split.test) & (speakers(emotion.train) | speakers(emotion.dev)
                                       | speakers(emotion.test) | speakers(dataset.pretraining()))
    for trials, part in ((split.dev_trials, split.dev), (split.test_trials, split.test)):
        assert len(trials) == TINY.n_trials
        assert sum(t.target for t in trials) == TINY.n_trials // 2
        speaker_of = {e.uid: e.speaker for e in part}
        for t in trials:
            assert (speaker_of[t.enroll] == speaker_of[t.test]) == bool(t.target)
    assert dataset.split("verification", "0", seed=3).test_trials == split.test_trials
    assert dataset.split("verification", "0", seed=4).test_trials != split.test_trials


def test_pretraining_is_unlabelled_pairs(dataset):
    pairs = dataset.pretraining()
    assert len(pairs) == TINY_UTTERANCES["pretrain"]
    assert all(e.emotion is None and e.sentiment is None and e.text for e in pairs)


def test_unknown_task_and_fold(dataset):
    with pytest.raises(UserError, match="no task 'asr'"):
        dataset.split("asr", "0", seed=0)
    with pytest.raises(UserError, match="no fold '1'"):
        dataset.split("emotion", "1", seed=0)


# --- malformed files --------------------------------------------------------------------------

@pytest.fixture
def copy_root(tiny_root, tmp_path) -> Path:
    root = tmp_path / "synth-smoke"
    shutil.copytree(tiny_root, root)
    return root


@pytest.mark.parametrize("content", ['{"dataset": "synth", "size": ', "[]", '{"dataset": "other"}'])
def test_corrupted_manifest_is_a_data_error_naming_the_file(copy_root, content):
    path = copy_root / synth.MANIFEST
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(str(path))) as info:
        synth.SynthDataset(copy_root)
    assert "\n" not in str(info.value)


def test_bad_utterance_row_names_file_and_line(copy_root):
    path = copy_root / synth.UTTERANCES
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",sad,", ",bored,").replace(",neutral,", ",bored,") \
                       .replace(",happy,", ",bored,").replace(",angry,", ",bored,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:4: expected emotion one of")):
        synth.SynthDataset(copy_root)


def test_transfer_column_must_match_the_text(copy_root, rows):
    path = copy_root / synth.UTTERANCES
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    index = next(i for i, r in enumerate(rows) if not r["transfer"] and "," not in r["text"])
    fields = lines[index + 1].split(",")
    fields[header.index("transfer")] = "1"
    lines[index + 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:{index + 2}: expected transfer 1 exactly")):
        synth.SynthDataset(copy_root)


def test_missing_audio_file_is_a_data_error(copy_root, rows):
    missing = copy_root / rows[5]["audio"]
    os.remove(missing)
    with pytest.raises(DataError, match=re.escape(str(missing))):
        synth.SynthDataset(copy_root)


# --- probe ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_probe_runs_and_audio_carries_arousal(tiny_root, tmp_path):
    import torch

    from ctal_bench.data import probe

    torch.set_num_threads(1)
    result = probe.probe(tiny_root, tmp_path, workers=1, progress=False)
    assert set(result["emotion_accuracy"]) == set(probe.INPUTS)
    assert all(0.0 <= v <= 1.0 for v in result["emotion_accuracy"].values())
    assert result["arousal_accuracy_audio"] > 0.6  # 71.9% measured on 32 test utterances; chance is 50%
    assert abs(result["sentiment"]["audio"]["r"]) < 0.3  # audio alone has no sign
    assert result["n_test_transfer"] == sum(synth.TRANSFER_SUBSET in e.subsets for e in
                                            synth.SynthDataset(tiny_root).by_role["test"]) > 0
    assert result["marker"]["p_high_given_marker"] > result["marker"]["p_high_given_none"]
    for name in ("unigrams", "text"):
        assert set(result["sign"][name]) == {"all", "transfer", "rest"}
    main, effects = probe.render(result).renderables
    assert main.row_count == 4 and effects.row_count == 8


def test_check_reports_pretraining_pool_and_transfer_subset(tiny_root, rows):
    from rich.console import Console

    from ctal_bench.data import check

    summary = check.check_dataset(tiny_root, "synth")
    assert summary.n_pretraining == TINY_UTTERANCES["pretrain"]
    emotion = next(s for s in summary.splits if s.task == "emotion")
    sizes = tuple(TINY_UTTERANCES[r] for r in synth.LABELLED_ROLES)
    assert (emotion.train, emotion.dev, emotion.test) == sizes
    for part in ("dev", "test"):
        expected = sum(r["transfer"] for r in rows if r["role"] == part)
        assert getattr(emotion, f"{part}_subsets") == {"transfer": expected}
    console = Console(width=200, record=True)
    console.print(check.render(summary))
    text = console.export_text()
    assert "test transfer" in text and f"{TINY_UTTERANCES['pretrain']} in the pre-training corpus" in text
