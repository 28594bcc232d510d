"""Acoustic features: shape, normalisation, resampling, the cache and bad input."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ctal_bench.config import FeatureConfig
from ctal_bench.data import features
from ctal_bench.data.base import Example
from ctal_bench.data.features import compute_features, extract_features, feature_cache_root
from ctal_bench.errors import DataError

torch.set_num_threads(1)
CFG = FeatureConfig()
TONES_HZ = (220.0, 1250.0, 3100.0)


def signal(rate: int, seconds: float, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """Three tones with a slow amplitude wobble plus a little noise: every mel band moves."""
    t = np.arange(int(round(rate * seconds))) / rate
    tones = sum(np.sin(2 * np.pi * f * t) for f in TONES_HZ) / len(TONES_HZ)
    envelope = 0.5 + 0.4 * np.sin(2 * np.pi * 3 * t)
    hiss = np.random.default_rng(seed).standard_normal(len(t))
    return (0.5 * envelope * tones + noise * hiss).astype(np.float32)


def write(path: Path, rate: int = 16000, seconds: float = 1.0, seed: int = 0, **kw) -> Path:
    sf.write(path, signal(rate, seconds, seed), rate, **kw)
    return path


def example(path: Path, uid: str | None = None) -> Example:
    return Example(uid=uid or path.stem, audio=path, text="", speaker="spk")


def extract(paths, cache, **kw):
    kw.setdefault("workers", 1)
    return extract_features([example(p) for p in paths], CFG, cache, progress=False, **kw)


def make_old(path: Path) -> None:
    """Backdate the file so the digest index trusts its (size, mtime)."""
    past = time.time() - 3600
    os.utime(path, (past, past))


def test_shape_dtype_and_per_utterance_normalisation(tmp_path):
    path = write(tmp_path / "a.wav", seconds=2.0)
    feats = extract([path], tmp_path / "cache")["a"]
    assert feats.dtype == np.float16
    assert feats.shape == (1 + 32000 // 160, 160)  # centred 10 ms frames
    as32 = feats.astype(np.float32)
    np.testing.assert_allclose(as32.mean(axis=0), 0.0, atol=5e-3)
    np.testing.assert_allclose(as32.std(axis=0), 1.0, atol=5e-3)


def test_without_deltas_or_normalisation(tmp_path):
    path = write(tmp_path / "a.wav")
    cfg = FeatureConfig(deltas=False, normalise=False)
    feats = extract_features([example(path)], cfg, tmp_path / "cache", workers=1, progress=False)["a"]
    assert feats.shape == (101, 80)
    assert feats.astype(np.float32).mean() < -1.0  # raw log-mel power, not centred


@pytest.mark.parametrize("rate", [22050, 44100, 8000])
def test_other_rates_are_resampled_to_16k(tmp_path, rate):
    cfg = FeatureConfig(normalise=False, deltas=False)
    tones = {r: tmp_path / f"{r}.wav" for r in (16000, rate)}
    for r, path in tones.items():
        sf.write(path, signal(r, 1.5, noise=0.0), r, subtype="FLOAT")
    native, resampled = (compute_features(p, cfg).astype(np.float32) for p in tones.values())
    assert resampled.shape == native.shape == (1 + 24000 // 160, 80)
    if rate > 16000:  # the same tones, all below 8 kHz: the same spectrum after resampling
        inner = slice(5, -5)  # edge frames see the resampler's zero padding
        assert np.abs(resampled[inner] - native[inner]).mean() < 0.1
        assert np.corrcoef(native[inner].ravel(), resampled[inner].ravel())[0, 1] > 0.99


def test_channels_are_averaged(tmp_path):
    mono = signal(16000, 1.0)
    sf.write(tmp_path / "stereo.wav", np.stack([mono, 0.5 * mono], axis=1), 16000, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", 0.75 * mono, 16000, subtype="FLOAT")
    cfg = FeatureConfig(normalise=False)
    np.testing.assert_allclose(compute_features(tmp_path / "stereo.wav", cfg).astype(np.float32),
                               compute_features(tmp_path / "mono.wav", cfg).astype(np.float32),
                               atol=2e-2)


def test_cached_second_call_does_not_compute(tmp_path, monkeypatch):
    paths = [write(tmp_path / f"u{i}.flac", seed=i) for i in range(3)]
    first = extract(paths, tmp_path / "cache")
    entries = list(feature_cache_root(tmp_path / "cache", CFG).rglob("*.npy"))
    assert len(entries) == 3

    def fail(*_):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(features, "compute_features", fail)
    monkeypatch.setattr(features, "read_mono", fail)
    second = extract(paths, tmp_path / "cache")
    assert second.keys() == first.keys()
    for uid in first:
        np.testing.assert_array_equal(second[uid], first[uid])


def test_same_content_computed_once_and_config_change_recomputes(tmp_path, monkeypatch):
    calls = []
    real = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda p, c: calls.append(p) or real(p, c))
    a = write(tmp_path / "a.wav")
    b = tmp_path / "b.wav"
    b.write_bytes(a.read_bytes())
    out = extract([a, b], tmp_path / "cache")
    assert len(calls) == 1
    np.testing.assert_array_equal(out["a"], out["b"])
    other = extract_features([example(a)], FeatureConfig(n_mels=40), tmp_path / "cache",
                             workers=1, progress=False)
    assert len(calls) == 2 and other["a"].shape == (101, 80)


def test_digest_index_skips_hashing_but_sees_changes(tmp_path, monkeypatch):
    path = write(tmp_path / "a.wav", seed=1)
    make_old(path)
    first = extract([path], tmp_path / "cache")["a"]
    with monkeypatch.context() as m:
        m.setattr(features, "file_digest", lambda p: pytest.fail("unchanged file was rehashed"))
        np.testing.assert_array_equal(extract([path], tmp_path / "cache")["a"], first)
    write(path, seed=2)  # same size, new content, and a new mtime
    make_old(path)
    changed = extract([path], tmp_path / "cache")["a"]
    assert not np.array_equal(changed, first)


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    path = write(tmp_path / "a.wav")
    first = extract([path], tmp_path / "cache")["a"]
    (entry,) = feature_cache_root(tmp_path / "cache", CFG).rglob("*.npy")
    entry.write_bytes(b"truncated")
    np.testing.assert_array_equal(extract([path], tmp_path / "cache")["a"], first)
    np.testing.assert_array_equal(np.load(entry), first)


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(DataError, match="garbage.wav.*readable audio"):
        extract([bad], tmp_path / "cache")
    with pytest.raises(DataError, match="missing.wav.*not found"):
        extract([tmp_path / "missing.wav"], tmp_path / "cache")


def test_empty_file_names_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match="empty.wav.*no samples"):
        extract([empty], tmp_path / "cache")


def test_nan_audio_names_the_file(tmp_path):
    samples = signal(16000, 1.0)
    samples[4000] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav.*NaN or inf"):
        extract([tmp_path / "nan.wav"], tmp_path / "cache")


def test_cache_survives_an_error_on_a_later_file(tmp_path, monkeypatch):
    good = [write(tmp_path / f"good{i}.wav", seed=i) for i in range(2)]
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match="empty.wav"):
        extract([*good, empty], tmp_path / "cache")
    monkeypatch.setattr(features, "compute_features", lambda *_: pytest.fail("cache was lost"))
    out = extract(good, tmp_path / "cache")
    assert set(out) == {"good0", "good1"}
    assert not list(tmp_path.joinpath("cache").rglob("*.tmp"))  # no half-written entries


def test_worker_processes_match_in_process_and_report_errors(tmp_path):
    paths = [write(tmp_path / f"u{i}.wav", rate=22050, seed=i) for i in range(4)]
    in_process = extract(paths, tmp_path / "c1", workers=1)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 50)
    with pytest.raises(DataError, match="bad.wav"):
        extract([*paths, bad], tmp_path / "c2", workers=2)
    pooled = extract(paths, tmp_path / "c2", workers=2)
    for uid in in_process:
        np.testing.assert_array_equal(pooled[uid], in_process[uid])
