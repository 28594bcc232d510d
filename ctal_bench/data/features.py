"""Acoustic features: 80 log-mel + deltas = 160-d per 10 ms frame, cached per utterance.

Audio is decoded with soundfile (any rate, channels averaged to mono), resampled to
``FeatureConfig.sample_rate`` with torchaudio, turned into a log-mel filterbank plus its
deltas, and normalised per utterance (mean 0, variance 1 per dimension).

The cache stores one float16 ``.npy`` per distinct audio content under
``cache_dir/features/v<version>-<config hash>/<digest[:2]>/<digest>.npy``, so the same file
under two names is computed once and a renamed dataset still hits the cache. Entries are
written atomically (temp file + rename), so an error or a crash never leaves a half-written
entry and never invalidates the ones already written. A small index keyed by
(path, size, mtime_ns) avoids rehashing unchanged files on later runs.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile
import torch
import torchaudio

from ctal_bench.config import FeatureConfig, config_hash
from ctal_bench.data.base import Example, progress_bar
from ctal_bench.errors import DataError, UserError
from ctal_bench.files import atomic_write

# Bump when the extraction algorithm changes, so old cache entries are not reused.
FEATURE_VERSION = 1
# Floor added to mel power before the log: digital silence (exact zeros, common in
# synthesised speech) would otherwise sit near log(0) and dominate the per-utterance statistics.
LOG_FLOOR = 1e-6
NORM_EPS = 1e-5  # variance floor: a constant dimension normalises to 0 instead of NaN
DELTA_WINDOW = 5  # frames; torchaudio's (and Kaldi's) default
# Only trust a (path, size, mtime_ns) index entry for files that were already this old when
# hashed: a file rewritten within the filesystem's timestamp granularity (2 s on FAT) could
# otherwise keep its size and mtime with new content ("racy git" problem).
INDEX_MIN_AGE_NS = 2_000_000_000
MAX_CHUNK = 32  # files per worker task


def feature_dim(cfg: FeatureConfig) -> int:
    return cfg.n_mels * (2 if cfg.deltas else 1)


def feature_cache_root(cache_dir: Path, cfg: FeatureConfig) -> Path:
    """The directory holding every cached utterance for this feature configuration."""
    return Path(cache_dir) / "features" / f"v{FEATURE_VERSION}-{config_hash(cfg)}"


def _check_config(cfg: FeatureConfig) -> None:
    for key in ("sample_rate", "n_mels", "win_ms", "hop_ms"):
        if getattr(cfg, key) <= 0:
            raise UserError(f"config key 'data.features.{key}' must be > 0, got {getattr(cfg, key)!r}")
    for key in ("win_ms", "hop_ms"):
        if round(cfg.sample_rate * getattr(cfg, key) / 1000) < 1:
            raise UserError(f"config key 'data.features.{key}' is shorter than one sample "
                            f"at {cfg.sample_rate} Hz")


# --- one utterance, no cache ---------------------------------------------------------------

class _Extractor:
    """The torch modules for one FeatureConfig; resampling kernels cached per source rate."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        win = round(cfg.sample_rate * cfg.win_ms / 1000)
        hop = round(cfg.sample_rate * cfg.hop_ms / 1000)
        n_fft = 1 << (win - 1).bit_length()  # next power of two >= window (400 -> 512)
        # center=True: frame i is centred on sample i * hop, so T = 1 + samples // hop at any
        # source rate; constant padding also handles clips shorter than half a window.
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=n_fft, win_length=win, hop_length=hop,
            n_mels=cfg.n_mels, power=2.0, center=True, pad_mode="constant")
        self.resamplers: dict[int, torchaudio.transforms.Resample] = {}

    def resample(self, wave: torch.Tensor, rate: int) -> torch.Tensor:
        if rate == self.cfg.sample_rate:
            return wave
        if rate not in self.resamplers:
            self.resamplers[rate] = torchaudio.transforms.Resample(rate, self.cfg.sample_rate)
        return self.resamplers[rate](wave)

    @torch.inference_mode()
    def __call__(self, samples: np.ndarray, rate: int) -> torch.Tensor:
        # oneDNN builds a new convolution primitive for every input length (about 2 ms each,
        # 5x the resampling itself); utterance lengths all differ, so use the native kernels.
        mkldnn_was = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            return self._features(torch.from_numpy(samples), rate)
        finally:
            torch.backends.mkldnn.enabled = mkldnn_was

    def _features(self, samples: torch.Tensor, rate: int) -> torch.Tensor:
        wave = self.resample(samples, rate)
        feats = torch.log(self.mel(wave) + LOG_FLOOR)  # (n_mels, T)
        if self.cfg.deltas:
            deltas = torchaudio.functional.compute_deltas(feats, win_length=DELTA_WINDOW)
            feats = torch.cat([feats, deltas], dim=0)  # (2 * n_mels, T)
        feats = feats.T  # (T, dim)
        if self.cfg.normalise:
            var, mean = torch.var_mean(feats, dim=0, correction=0, keepdim=True)
            feats = (feats - mean) * torch.rsqrt(var + NORM_EPS)
        return feats


_EXTRACTORS: dict[FeatureConfig, _Extractor] = {}


def _extractor(cfg: FeatureConfig) -> _Extractor:
    if cfg not in _EXTRACTORS:
        _EXTRACTORS[cfg] = _Extractor(cfg)
    return _EXTRACTORS[cfg]


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 mono samples and its sample rate."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise DataError(path, f"expected a readable audio file (WAV, FLAC, OGG or MP3); {reason}") from None
    if data.shape[0] == 0:
        raise DataError(path, "audio file has no samples; expected at least one")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def audio_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete, finite audio file, or None: decodes it all. Catches what
    a header alone hides: no bytes, a header without samples, a file cut short (a WAV by its data
    chunk's declared size, any format by decoding fewer frames than its header states), NaN or
    infinite samples."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        return e.strerror or str(e)
    if size == 0:
        return "empty file (0 bytes)"
    declared, available = _wav_data_sizes(path, size)
    if declared is not None and available < declared:
        return f"cut short: its WAV header declares {declared} bytes of samples, the file holds {available}"
    try:
        info = soundfile.info(str(path))
        data, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        return f"not readable audio: {getattr(e, 'error_string', None) or e}"
    if info.frames == 0 or len(data) == 0:
        return "no samples (a header only)"
    if len(data) < info.frames:
        return f"cut short: decoded {len(data)} of the {info.frames} frames its header states"
    if not np.isfinite(data).all():
        return "NaN or infinite samples"
    return None


def _wav_data_sizes(path: Path, size: int) -> tuple[int | None, int]:
    """(bytes of samples a WAV's data chunk declares, bytes the file holds after its header);
    (None, 0) for another format or a streamed WAV (which declares no size)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None, 0
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk = f.read(8)
            length = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                return (None, 0) if length in (0, 0xFFFFFFFF) else (length, size - offset - 8)
            offset += 8 + length + (length & 1)
    return None, 0


def compute_features(path: Path, cfg: FeatureConfig) -> np.ndarray:
    """Features of one audio file, bypassing the cache: float16 (T, feature_dim(cfg))."""
    samples, rate = read_mono(path)
    feats = _extractor(cfg)(samples, rate).numpy().astype(np.float16)
    if not np.isfinite(feats).all():
        raise DataError(path, "features contain NaN or inf; expected finite audio samples")
    return feats


# --- cache entries and the digest index -----------------------------------------------------

def _entry_path(root: Path, digest: str) -> Path:
    return root / digest[:2] / f"{digest}.npy"


def _load_entry(path: Path, dim: int) -> np.ndarray | None:
    """A cached array, or None when missing or unusable (then it is recomputed and replaced)."""
    try:
        feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if feats.dtype != np.float16 or feats.ndim != 2 or feats.shape[1] != dim:
        return None
    return feats


def _extract_and_store(path: Path, cfg: FeatureConfig, entry: Path) -> np.ndarray:
    feats = compute_features(path, cfg)
    atomic_write(entry, lambda f: np.save(f, feats, allow_pickle=False))
    return feats


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes, hex."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise DataError(path, "audio file not found") from None
    except OSError as e:
        raise DataError(path, f"expected a readable audio file; {e.strerror}") from None


class _DigestIndex:
    """Remembers content digests by (absolute path, size, mtime_ns) across runs.

    Losing it (a concurrent run overwriting it, a corrupt file) only costs rehashing.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, list] = {}  # abs path -> [size, mtime_ns, digest]
        self.changed = False
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                self.entries = loaded
        except (OSError, ValueError):
            pass

    def digest(self, path: Path) -> str:
        key = os.path.abspath(path)
        try:
            st = os.stat(key)
        except FileNotFoundError:
            raise DataError(path, "audio file not found") from None
        except OSError as e:
            raise DataError(path, f"expected a readable audio file; {e.strerror}") from None
        known = self.entries.get(key)
        if isinstance(known, list) and len(known) == 3 and known[:2] == [st.st_size, st.st_mtime_ns]:
            return known[2]
        digest = file_digest(path)
        if time.time_ns() - st.st_mtime_ns > INDEX_MIN_AGE_NS:
            self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
            self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            text = json.dumps(self.entries, separators=(",", ":")).encode()
            atomic_write(self.path, lambda f: f.write(text))
            self.changed = False


# --- worker processes ----------------------------------------------------------------------

def _init_worker() -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes


def _worker_extract(chunk: list[tuple[str, str]], cfg: FeatureConfig,
                    ) -> tuple[list[np.ndarray], DataError | None]:
    """Extract and cache (audio path, cache entry) pairs in order, stopping at the first error."""
    results = []
    for path, entry in chunk:
        try:
            results.append(_extract_and_store(Path(path), cfg, Path(entry)))
        except DataError as e:
            return results, e  # the results before it are cached and kept
    return results, None


Job = tuple[str, Path, Path]  # (digest, audio path, cache entry)


def _compute_missing(jobs: Sequence[Job], cfg: FeatureConfig, workers: int,
                     done: Callable[[str, np.ndarray], None]) -> None:
    """Extract every job, calling ``done(digest, feats)`` as each finishes; first error raises."""
    if workers <= 1 or len(jobs) <= 1:
        # One intra-op thread, as in a worker: these ops are too small to gain from threads, and
        # with busy cores torch's thread pool made extraction 7x slower (measured).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for digest, path, entry in jobs:
                done(digest, _extract_and_store(path, cfg, entry))
        finally:
            torch.set_num_threads(threads)
        return
    workers = min(workers, len(jobs))
    # Several files per task to amortise inter-process overhead; about 8 tasks per worker so
    # the load stays balanced and the progress bar moves.
    size = min(MAX_CHUNK, -(-len(jobs) // (8 * workers)))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    # spawn, not fork: forking a process that has started torch's thread pools can deadlock.
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_worker_extract, [(str(path), str(entry)) for _, path, entry in chunk],
                               cfg): chunk for chunk in chunks}
        for future in as_completed(futures):
            results, failure = future.result()
            for (digest, _, _), feats in zip(futures[future], results):
                done(digest, feats)
            if failure is not None:
                raise failure
    finally:
        # On an error, entries already written stay; queued chunks are dropped, running ones finish.
        pool.shutdown(wait=True, cancel_futures=True)


def extract_features(examples: Sequence[Example], cfg: FeatureConfig, cache_dir: Path,
                     workers: int = 2, progress: bool = True) -> dict[str, np.ndarray]:
    """uid -> float16 (T, feature_dim(cfg)) for every example, from the cache where possible.

    Missing entries are computed in ``workers`` processes (1 = in this process) and cached.
    An unreadable or empty file, or non-finite features, raise DataError naming the file.
    """
    _check_config(cfg)
    cache_dir = Path(cache_dir)
    root = feature_cache_root(cache_dir, cfg)
    dim = feature_dim(cfg)
    index = _DigestIndex(cache_dir / "features" / "digests.json")
    found: dict[str, np.ndarray] = {}
    waiting: dict[str, list[str]] = {}  # digest -> uids that need it
    jobs: list[Job] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("features", total=len(examples))
        try:
            for example in examples:
                digest = index.digest(example.audio)
                if digest in waiting:  # same content as an earlier file still to compute
                    waiting[digest].append(example.uid)
                    continue
                entry = _entry_path(root, digest)
                feats = _load_entry(entry, dim)
                if feats is None:
                    waiting[digest] = [example.uid]
                    jobs.append((digest, Path(example.audio), entry))
                else:
                    found[example.uid] = feats
                    bar.advance(task)
        finally:
            index.save()

        def done(digest: str, feats: np.ndarray) -> None:
            for uid in waiting[digest]:
                found[uid] = feats
            bar.advance(task, len(waiting[digest]))

        _compute_missing(jobs, cfg, workers, done)
    return {example.uid: found[example.uid] for example in examples}
