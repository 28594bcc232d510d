"""``data check``: open a dataset in a registered format and summarise what the benchmark will see.

Opening the dataset runs its layout validation, so a malformed corpus fails here with the
same one-line DataError a run would give. Split counts use seed 0 (dev speakers are seeded).
"""
from __future__ import annotations

import os
import re
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ctal_bench.data.base import Dataset, Example
from ctal_bench.data.features import audio_problem
from ctal_bench.registry import DATASETS

CHECK_SEED = 0
SPEAKERS_LISTED = 20  # beyond this many speakers, show the distribution instead of the list


@dataclass(frozen=True)
class SplitCounts:
    task: str
    fold: str
    train: int
    dev: int
    test: int
    dev_trials: int = 0
    test_trials: int = 0
    # Named subsets (Example.subsets, e.g. synth's "transfer") -> utterances in dev and test.
    dev_subsets: dict[str, int] = field(default_factory=dict)
    test_subsets: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSummary:
    fmt: str
    root: Path
    n_examples: int  # distinct utterances used by any task split or the pre-training corpus
    splits: tuple[SplitCounts, ...]
    emotions: dict[str, int] = field(default_factory=dict)  # class -> utterances
    sentiment_bins: dict[int, int] = field(default_factory=dict)  # rounded label (-3..3) -> utterances
    speakers: dict[str, int] = field(default_factory=dict)  # speaker -> utterances
    dropped: dict[str, int] = field(default_factory=dict)  # reason or source code -> utterances
    n_pretraining: int | None = None  # None: the dataset has no pre-training corpus
    bad_audio: dict[str, str] = field(default_factory=dict)  # audio file -> why it cannot be used

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["root"] = str(self.root)
        return out


def _natural_key(name: str) -> list:
    """Natural order, so numeric speaker ids sort as numbers: 19 before 121."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def sentiment_bin(label: float) -> int:
    """The Acc-7 class of a sentiment score: rounded to the nearest integer in [-3, 3]."""
    return int(round(min(3.0, max(-3.0, label))))


def _subset_counts(examples) -> dict[str, int]:
    return dict(sorted(Counter(name for e in examples for name in e.subsets).items()))


def summarise(dataset: Dataset, fmt: str, progress: bool = True) -> DatasetSummary:
    used: dict[str, Example] = {}
    splits = []
    for task in dataset.tasks:
        for fold in dataset.folds(task):
            split = dataset.split(task, fold, CHECK_SEED)
            for example in split.train + split.dev + split.test:
                used[example.uid] = example
            splits.append(SplitCounts(task, fold, len(split.train), len(split.dev), len(split.test),
                                      len(split.dev_trials), len(split.test_trials),
                                      _subset_counts(split.dev), _subset_counts(split.test)))
    n_pretraining = None
    if dataset.has_pretraining:
        corpus = dataset.pretraining()
        n_pretraining = len(corpus)
        used.update((e.uid, e) for e in corpus)
    examples = list(used.values())
    bad_audio = check_audio(sorted({e.audio for e in examples}), progress)
    emotions = Counter(e.emotion for e in examples if e.emotion is not None)
    bins = Counter(sentiment_bin(e.sentiment) for e in examples if e.sentiment is not None)
    return DatasetSummary(
        fmt=fmt, root=dataset.root, n_examples=len(examples), splits=tuple(splits),
        emotions=dict(sorted(emotions.items())), sentiment_bins=dict(sorted(bins.items())),
        speakers=dict(sorted(Counter(e.speaker for e in examples).items(), key=lambda kv: _natural_key(kv[0]))),
        dropped=dict(sorted(getattr(dataset, "dropped", {}).items())),
        n_pretraining=n_pretraining, bad_audio=bad_audio)


def check_audio(paths: list[Path], progress: bool = True) -> dict[str, str]:
    """Decode every audio file (``features.audio_problem``) in a thread pool, with a progress bar;
    the unusable ones and why."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.progress import track

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = list(track(pool.map(audio_problem, paths), total=len(paths), description="decoding audio",
                           disable=not progress, transient=True))
    return {str(path): problem for path, problem in zip(paths, found) if problem is not None}


def check_dataset(path: Path, fmt: str) -> DatasetSummary:
    """Open ``path`` as dataset format ``fmt`` (a DATASETS name) and summarise it."""
    if fmt not in DATASETS:
        # Import the registering modules only when needed: checking data should not load models.
        from ctal_bench import catalog

        catalog.load()
    dataset_cls = DATASETS.get(fmt)
    return summarise(dataset_cls(Path(path)), fmt)


def _counts_table(title: str, header: str, counts: dict, total: int) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(header)
    table.add_column("utterances", justify="right")
    table.add_column("share", justify="right")
    for key, n in counts.items():
        table.add_row(str(key), str(n), f"{100 * n / total:.1f}%")
    return table


def render(summary: DatasetSummary) -> Group:
    """A rich renderable: header line, splits, label distribution, speakers, dropped counts."""
    n_speakers = len(summary.speakers)
    header = Text.assemble((f"{summary.fmt}", "bold"), f" at {summary.root}: ",
                           f"{summary.n_examples} utterances, {n_speakers} speakers")
    if summary.n_pretraining is not None:
        header.append(f", {summary.n_pretraining} in the pre-training corpus")
        largest_train = max((s.train for s in summary.splits), default=0)
        if largest_train:
            header.append(f" ({summary.n_pretraining / largest_train:.1f}x the largest labelled "
                          f"training split, {largest_train})")
    parts: list[Any] = [header]

    splits = Table(title="Splits (seed 0)", title_justify="left")
    for column in ("task", "fold", "train", "dev", "test"):
        splits.add_column(column, justify="left" if column in ("task", "fold") else "right")
    has_trials = any(s.dev_trials or s.test_trials for s in summary.splits)
    if has_trials:
        splits.add_column("dev trials", justify="right")
        splits.add_column("test trials", justify="right")
    subsets = sorted({name for s in summary.splits for name in (*s.dev_subsets, *s.test_subsets)})
    for name in subsets:
        splits.add_column(f"dev {name}", justify="right")
        splits.add_column(f"test {name}", justify="right")
    for s in summary.splits:
        row = [s.task, s.fold, str(s.train), str(s.dev), str(s.test)]
        row += [str(s.dev_trials), str(s.test_trials)] if has_trials else []
        for name in subsets:
            row += [str(s.dev_subsets.get(name, 0)), str(s.test_subsets.get(name, 0))]
        splits.add_row(*row)
    parts.append(splits)

    if summary.emotions:
        parts.append(_counts_table("Emotion classes", "class", summary.emotions, sum(summary.emotions.values())))
    if summary.sentiment_bins:
        parts.append(_counts_table("Sentiment (rounded label)", "bin", summary.sentiment_bins,
                                   sum(summary.sentiment_bins.values())))
    if n_speakers <= SPEAKERS_LISTED:
        parts.append(_counts_table("Speakers", "speaker", summary.speakers, summary.n_examples))
    elif n_speakers:
        per_speaker = sorted(summary.speakers.values())
        parts.append(Text(f"Utterances per speaker: min {per_speaker[0]}, median "
                          f"{statistics.median(per_speaker):g}, max {per_speaker[-1]}"))
    if any(summary.dropped.values()):
        dropped = Table(title="Dropped or skipped", title_justify="left")
        dropped.add_column("reason or source label")
        dropped.add_column("utterances", justify="right")
        for reason, n in summary.dropped.items():
            dropped.add_row(reason, str(n))
        parts.append(dropped)
    else:
        parts.append(Text("Nothing dropped or skipped."))
    if summary.bad_audio:
        bad = Table(title=f"Unusable audio files ({len(summary.bad_audio)})", title_justify="left")
        bad.add_column("file", overflow="fold")
        bad.add_column("problem", overflow="fold")
        for path, problem in summary.bad_audio.items():
            bad.add_row(path, problem)
        parts.append(bad)
    else:
        parts.append(Text("Every audio file decodes in full."))
    return Group(*parts)
