"""The types every dataset module produces: examples, splits and verification trials."""
from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

from ctal_bench.errors import DataError, UserError

EMOTIONS = ("neutral", "happy", "sad", "angry")  # class index = position


@dataclass(frozen=True)
class Example:
    """One utterance: audio file, transcript, speaker and whatever labels the source has."""

    uid: str  # unique within the dataset
    audio: Path
    text: str
    speaker: str
    emotion: str | None = None  # one of EMOTIONS
    sentiment: float | None = None  # in [-3, 3]
    # Named test subsets the example belongs to (synth: "transfer" = its transcript holds a word
    # that pre-training saw and labelled training never did); metrics are also reported per subset.
    subsets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trial:
    """A verification trial in VoxCeleb order: label (1 = same speaker), enrolment, test."""

    target: int
    enroll: str  # Example.uid
    test: str


@dataclass(frozen=True)
class Split:
    """Train/dev/test for one task and fold. Dev is for model selection; test is used once."""

    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...]
    dev_trials: tuple[Trial, ...] = ()  # verification only
    test_trials: tuple[Trial, ...] = ()


class Dataset(ABC):
    """A dataset in one documented on-disk layout, opened from its root directory.

    The constructor validates the layout and raises DataError naming the offending file.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]  # of "emotion", "sentiment", "verification"
    has_pretraining: ClassVar[bool] = False
    version: ClassVar[int] = 1  # bump when the examples or splits a config reads change

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: dataset directory for {self.name!r} does not exist")

    @classmethod
    def folds(cls, task: str) -> tuple[str, ...]:
        """Fold names for a task (a fact of the layout: known before a dataset is opened or built);
        a source with fixed splits has the one fold "0"."""
        cls.check_task(task)
        return ("0",)

    @abstractmethod
    def split(self, task: str, fold: str, seed: int) -> Split:
        """Train/dev/test for a task and fold; ``seed`` fixes any seeded choice (dev speakers)."""

    def pretraining(self) -> tuple[Example, ...]:
        """Unlabelled audio-transcript pairs for pre-training."""
        raise UserError(f"dataset {self.name!r} has no pre-training corpus")

    def check_fold(self, task: str, fold: str) -> None:
        folds = self.folds(task)
        if fold not in folds:
            raise UserError(f"dataset {self.name!r} has no fold {fold!r} for {task}; folds: {', '.join(folds)}")

    @classmethod
    def check_task(cls, task: str) -> None:
        if task not in cls.tasks:
            raise UserError(f"dataset {cls.name!r} has no task {task!r}; it has {', '.join(cls.tasks)}")


def csv_rows(path: Path, columns: Sequence[str],
             encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) for each row of a CSV file whose header names ``columns``.

    A missing column, a row with more or fewer fields than the header, or a file that is not
    UTF-8 text or not CSV is a DataError naming the file (and the line); opening errors propagate.
    """
    with open(path, newline="", encoding=encoding) as f:
        try:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise DataError(path, f"missing column(s) {', '.join(missing)}; "
                                      f"expected a header with {', '.join(columns)}", 1)
            for row in reader:
                if None in row or None in row.values():
                    raise DataError(path, f"expected {len(reader.fieldnames)} fields as in the header",
                                    reader.line_num)
                yield reader.line_num, row
        except UnicodeDecodeError:
            raise DataError(path, "expected a UTF-8 CSV file") from None
        except csv.Error as e:
            raise DataError(path, f"malformed CSV ({e})") from None


def progress_bar(enabled: bool):
    """The bar long data work (building, feature extraction) shows on stderr: done / total and time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)
