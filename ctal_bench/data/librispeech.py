"""LibriSpeech: the pre-training corpus (audio-transcript pairs) and speaker verification.

Layout (under the root, e.g. the extracted ``LibriSpeech`` folder):
    <split>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac
    <split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   "<utterance id> TRANSCRIPT" lines

Every subdirectory of the root is a split (train-clean-100, dev-clean, test-clean, ...);
plain files at the root (SPEAKERS.TXT, README.TXT) are ignored. A .flac without a transcript
line is skipped and counted in ``dropped``.

Pre-training uses every utterance of the splits named ``train*``.

Verification (one fold, "0"):
- train: speaker classification over the train* speakers, minus the dev speakers;
- dev: a seeded subset (``dev_fraction``, at least two) of the train* speakers, removed from
  the classification set, so dev trials measure unseen speakers just as test trials do
  without touching the test speakers; dev trials are built from them with the run seed;
- test: the trials of ``trials.txt`` at the root (or ``trials_path``), VoxCeleb format,
  entries being utterance ids or paths relative to the root, none from a train* split;
  without a trial file, the test* splits' utterances with trials built with ``trials_seed``,
  which is fixed rather than the run seed so that every run scores the same test list.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from ctal_bench.data.base import Dataset, Example, Split
from ctal_bench.data.trials import build_trials, max_balanced_trials, read_trials
from ctal_bench.errors import DataError, UserError
from ctal_bench.registry import DATASETS

TRIALS_FILE = "trials.txt"


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


@DATASETS.register("librispeech")
class LibriSpeech(Dataset):
    name = "librispeech"
    tasks = ("verification",)
    has_pretraining = True

    def __init__(self, root: Path, trials_path: Path | None = None, n_trials: int = 4000,
                 dev_fraction: float = 0.1, trials_seed: int = 0):
        super().__init__(root)
        if not 0.0 < dev_fraction < 1.0:
            raise UserError(f"librispeech dev_fraction must be in (0, 1), got {dev_fraction}")
        self.n_trials, self.dev_fraction, self.trials_seed = n_trials, dev_fraction, trials_seed
        default_trials = self.root / TRIALS_FILE
        if trials_path is not None:
            self.trials_path: Path | None = Path(trials_path)
            if not self.trials_path.is_file():
                raise UserError(f"{self.trials_path}: trial file not found")
        else:
            self.trials_path = default_trials if default_trials.is_file() else None
        self.dropped: Counter[str] = Counter()
        self.split_of: dict[str, str] = {}  # uid -> split directory name
        self.relative_path: dict[str, str] = {}  # uid -> audio path relative to the root
        examples: list[Example] = []
        split_dirs = _subdirs(self.root)
        if not split_dirs:
            raise DataError(self.root, "expected split directories (train-clean-100, test-clean, ...); found none")
        for split_dir in split_dirs:
            for example in self._read_split(split_dir):
                examples.append(example)
                self.split_of[example.uid] = split_dir.name
                self.relative_path[example.uid] = example.audio.relative_to(self.root).as_posix()
        self.examples = tuple(examples)
        if not self._in_splits("train"):
            raise DataError(self.root, "expected at least one split directory named train* "
                                       f"(found {', '.join(d.name for d in split_dirs)})")

    def _read_split(self, split_dir: Path) -> list[Example]:
        examples = []
        for speaker_dir in _subdirs(split_dir):
            for chapter_dir in _subdirs(speaker_dir):
                examples += self._read_chapter(chapter_dir, speaker_dir.name)
        return examples

    def _read_chapter(self, chapter_dir: Path, speaker: str) -> list[Example]:
        chapter = chapter_dir.name
        transcript = chapter_dir / f"{speaker}-{chapter}.trans.txt"
        if not transcript.is_file():
            raise DataError(chapter_dir, f"expected the transcript file {transcript.name}")
        uid_pattern = re.compile(rf"{re.escape(speaker)}-{re.escape(chapter)}-\d+")
        try:
            lines = transcript.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError(transcript, "expected UTF-8 text") from None
        examples = []
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if not uid_pattern.fullmatch(uid) or not text.strip():
                raise DataError(transcript, f"expected '{speaker}-{chapter}-<number> TRANSCRIPT', "
                                            f"got {line.strip()[:80]!r}", line_no)
            audio = chapter_dir / f"{uid}.flac"
            if not audio.is_file():
                raise DataError(transcript, f"utterance {uid}: audio clip {audio} is missing", line_no)
            examples.append(Example(uid=uid, audio=audio, text=text.strip(), speaker=speaker))
        listed = {e.uid for e in examples}
        self.dropped["audio without transcript"] += sum(
            1 for p in chapter_dir.glob("*.flac") if p.stem not in listed)
        return examples

    def _in_splits(self, prefix: str) -> tuple[Example, ...]:
        return tuple(e for e in self.examples if self.split_of[e.uid].startswith(prefix))

    def pretraining(self) -> tuple[Example, ...]:
        return self._in_splits("train")

    def split(self, task: str, fold: str, seed: int) -> Split:
        self.check_fold(task, fold)
        training = self._in_splits("train")
        speakers = sorted({e.speaker for e in training})
        n_dev = max(2, round(self.dev_fraction * len(speakers)))
        if len(speakers) - n_dev < 2:
            raise DataError(self.root, f"the train* splits have {len(speakers)} speakers; verification needs "
                                       f"{n_dev} dev speakers and at least 2 to classify")
        dev_speakers = set(np.random.default_rng(seed).choice(speakers, size=n_dev, replace=False).tolist())
        train = tuple(e for e in training if e.speaker not in dev_speakers)
        dev = tuple(e for e in training if e.speaker in dev_speakers)
        dev_trials = build_trials(dev, min(self.n_trials, max_balanced_trials(dev)), seed)
        test, test_trials = self._test_trials(training)
        return Split(train=train, dev=dev, test=test, dev_trials=dev_trials, test_trials=test_trials)

    def _test_trials(self, training: tuple[Example, ...]):
        training_speakers = {e.speaker for e in training}
        if self.trials_path is None:
            test = self._in_splits("test")
            if not test:
                raise DataError(self.root, f"expected a test* split directory or a {TRIALS_FILE} for verification")
            overlap = sorted({e.speaker for e in test} & training_speakers)
            if overlap:
                raise DataError(self.root, f"speaker(s) {', '.join(overlap[:5])} appear in both train* and "
                                           "test* splits; verification needs held-out test speakers")
            return test, build_trials(test, min(self.n_trials, max_balanced_trials(test)), self.trials_seed)
        by_entry = {uid: uid for uid in self.split_of}
        for uid, relative in self.relative_path.items():
            by_entry[relative] = uid
            by_entry[relative.split("/", 1)[1]] = uid  # without the split folder
        trials = read_trials(self.trials_path, by_entry)
        used = {uid for t in trials for uid in (t.enroll, t.test)}
        example_of = {e.uid: e for e in self.examples}
        leaked = sorted(uid for uid in used if example_of[uid].speaker in training_speakers)
        if leaked:
            raise DataError(self.trials_path, f"utterance {leaked[0]} is by a train* speaker "
                                              f"({len(leaked)} such); trials must use held-out speakers")
        return tuple(example_of[uid] for uid in sorted(used)), trials
