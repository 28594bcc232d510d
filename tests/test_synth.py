"""The embedded synth dataset: reproducible builds, label rules, roles, splits, bad input."""
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

TINY = synth.SIZES["tiny"]


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
    assert m["size"] == "tiny" and m["counts"]["utterances"] == len(rows) == 384
    assert m["counts"]["speakers"] == TINY.n_speakers == 24
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

def valence_from_text(text: str) -> int:
    """Re-derive valence from the words alone: adjective polarity, flipped by a negation."""
    if any(phrase in text for phrase in synth.NEUTRAL):
        return 0
    words = text.split()
    (adjective,) = [w for w in words if w in synth.POSITIVE or w in synth.NEGATIVE]
    negated = bool({"not", "never", "wasn't", "isn't"} & set(words))
    polarity = 1 if adjective in synth.POSITIVE else -1
    return -polarity if negated else polarity


def test_valence_is_compositional_in_the_text(rows):
    for r in rows:
        assert valence_from_text(r["text"]) == r["valence"], r
        negation = {"not", "never", "wasn't", "isn't"} & set(r["text"].split())
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
    n = TINY.utterances_per_speaker
    by_speaker: dict[str, list[dict]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r)
    for speaker_rows in by_speaker.values():
        assert Counter(r["arousal"] for r in speaker_rows) == {0: n // 2, 1: n // 4, 2: n // 4}
        assert Counter(r["valence"] for r in speaker_rows) == {-1: n // 2, 1: 3 * n // 8, 0: n // 8}
        assert len({r["voice"] for r in speaker_rows}) == 1
        # Within a speaker, high arousal is higher pitched, louder and faster on average.
        for key in ("pitch", "volume", "rate"):
            low = np.mean([r[key] for r in speaker_rows if r["arousal"] == 0])
            high = np.mean([r[key] for r in speaker_rows if r["arousal"] >= 1])
            assert high > low, (key, speaker_rows[0]["speaker"])


# --- roles and splits -------------------------------------------------------------------------

def test_speaker_roles_are_disjoint_and_sized(rows, tiny_root):
    roles_of = {}
    for r in rows:
        roles_of.setdefault(r["speaker"], set()).add(r["role"])
    assert all(len(roles) == 1 for roles in roles_of.values())
    per_role = Counter(next(iter(roles)) for roles in roles_of.values())
    assert per_role == TINY.speakers_per_role()
    voices = [f"{s['accent']}+{s['variant']}" for s in manifest(tiny_root)["speakers"]]
    assert len(set(voices)) == len(voices)  # distinct accent x variant voices


def speakers(examples) -> set[str]:
    return {e.speaker for e in examples}


@pytest.mark.parametrize("task", ["emotion", "sentiment"])
def test_labelled_split_is_speaker_disjoint(dataset, task):
    assert dataset.folds(task) == ("0",)
    split = dataset.split(task, "0", seed=0)
    parts = [speakers(split.train), speakers(split.dev), speakers(split.test), speakers(dataset.pretraining())]
    assert [len(p) for p in parts] == [TINY.train, TINY.dev, TINY.test, TINY.pretrain]
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
    assert len(pairs) == TINY.pretrain * TINY.utterances_per_speaker
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
    assert result["arousal_accuracy_audio"] > 0.75  # 85.9% measured; chance is 50%
    assert abs(result["sentiment"]["audio"]["r"]) < 0.3  # audio alone has no sign
    assert probe.render(result).row_count == 3
