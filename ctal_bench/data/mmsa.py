"""CMU-MOSEI and CMU-MOSI in the MMSA raw layout: sentiment regression in [-3, 3].

Layout (under the root):
    label.csv                         video_id, clip_id, text, label, mode
                                      (label_T, label_A, label_V, annotation may follow; unused)
    Raw/<video_id>/<clip_id>.wav      or .flac: the clip's audio

``mode`` is train, valid or test and fixes the split (valid -> dev); there is one fold, "0".
Speaker = video_id: a video is one speaker, so it is the cluster the speaker bootstrap resamples.
"""
from __future__ import annotations

import math
from pathlib import Path

from ctal_bench.data.base import Dataset, Example, Split, csv_rows
from ctal_bench.errors import DataError, UserError
from ctal_bench.registry import DATASETS

REQUIRED_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
MODE_TO_PART = {"train": "train", "valid": "dev", "test": "test"}
AUDIO_SUFFIXES = (".wav", ".flac")


class MMSADataset(Dataset):
    """Shared reader; the registered subclasses differ only in name."""

    tasks = ("sentiment",)

    def __init__(self, root: Path):
        super().__init__(root)
        self.label_path = self.root / "label.csv"
        raw_dir = self.root / "Raw"
        if not self.label_path.is_file():
            raise UserError(f"{self.label_path}: missing label file; expected the MMSA raw layout "
                            "(label.csv and Raw/<video_id>/<clip_id>.wav)")
        if not raw_dir.is_dir():
            raise UserError(f"{raw_dir}: missing directory of audio clips; expected Raw/<video_id>/<clip_id>.wav")
        self.dropped: dict[str, int] = {}  # nothing is dropped: every row is used or is an error
        self.parts: dict[str, tuple[Example, ...]] = self._read_labels(raw_dir)
        self.examples = self.parts["train"] + self.parts["dev"] + self.parts["test"]

    def _read_labels(self, raw_dir: Path) -> dict[str, tuple[Example, ...]]:
        path = self.label_path
        parts: dict[str, list[Example]] = {part: [] for part in MODE_TO_PART.values()}
        seen: dict[str, int] = {}  # uid -> line of its first row
        for line, row in csv_rows(path, REQUIRED_COLUMNS, encoding="utf-8-sig"):
            example, part = self._parse_row(row, line, raw_dir)
            if example.uid in seen:
                raise DataError(path, f"clip {example.uid} repeats line {seen[example.uid]}", line)
            seen[example.uid] = line
            parts[part].append(example)
        for mode, part in MODE_TO_PART.items():
            if not parts[part]:
                raise DataError(path, f"no row with mode {mode!r}; expected rows for each of train, valid, test")
        return {part: tuple(examples) for part, examples in parts.items()}

    def _parse_row(self, row: dict, line: int, raw_dir: Path) -> tuple[Example, str]:
        path = self.label_path
        video_id, clip_id = row["video_id"].strip(), row["clip_id"].strip()
        if not video_id or not clip_id:
            raise DataError(path, "expected a non-empty video_id and clip_id", line)
        try:
            label = float(row["label"])
        except ValueError:
            raise DataError(path, f"label {row['label']!r} is not a number; expected a value in [-3, 3]",
                            line) from None
        if not (math.isfinite(label) and -3.0 <= label <= 3.0):
            raise DataError(path, f"label {label} is outside [-3, 3]", line)
        mode = row["mode"].strip()
        if mode not in MODE_TO_PART:
            raise DataError(path, f"mode {mode!r}; expected train, valid or test", line)
        candidates = [raw_dir / video_id / f"{clip_id}{suffix}" for suffix in AUDIO_SUFFIXES]
        audio = next((p for p in candidates if p.is_file()), None)
        if audio is None:
            raise DataError(path, f"clip {video_id}/{clip_id}: audio missing; expected "
                                  f"{candidates[0]} or {candidates[1].name}", line)
        example = Example(uid=f"{video_id}_{clip_id}", audio=audio, text=row["text"].strip(),
                          speaker=video_id, sentiment=label)
        return example, MODE_TO_PART[mode]

    def split(self, task: str, fold: str, seed: int) -> Split:
        """The fixed MMSA split; ``seed`` has nothing to choose here."""
        self.check_fold(task, fold)
        return Split(train=self.parts["train"], dev=self.parts["dev"], test=self.parts["test"])


@DATASETS.register("mosei")
class MOSEI(MMSADataset):
    name = "mosei"


@DATASETS.register("mosi")
class MOSI(MMSADataset):
    name = "mosi"
