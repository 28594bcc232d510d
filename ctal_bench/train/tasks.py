"""The three tasks: what a model predicts, its loss, and how an evaluation split is scored.

A task supplies targets, loss and metrics; the model supplies the forward pass; the
fine-tuning loop composes them and never special-cases a task. ``TASKS.get(name)``
returns a ready Task instance (tasks hold no state).

The loop collects, for each evaluation split, an ``EvalOutputs``: uids, speakers, targets,
logits and embeddings in example order, plus the split's trials for verification
(``task.eval_trials(split, "dev" | "test")``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ctal_bench.data.base import EMOTIONS, Example, Split, Trial
from ctal_bench.errors import UserError
from ctal_bench.registry import TASKS
from ctal_bench.train.metrics import (
    HIGHER_IS_BETTER,
    classification_metrics,
    confusion_matrix,
    cosine_scores,
    eer,
    mae,
    sentiment_metrics,
    unweighted_accuracy,
    verification_metrics,
)

UNSEEN_SPEAKER = -1  # verification target of a speaker outside the training set; the loss skips it


@dataclass(frozen=True)
class EvalOutputs:
    """What the fine-tuning loop collects over one evaluation split, in example order."""

    uids: tuple[str, ...]
    speakers: tuple[str, ...]
    targets: np.ndarray  # (N,) int class / speaker index, or float sentiment
    logits: np.ndarray  # (N, n_outputs)
    embeddings: np.ndarray  # (N, E)
    trials: tuple[Trial, ...] = ()  # verification only: the split's trial list

    def __post_init__(self):
        n = len(self.uids)
        sizes = {"speakers": len(self.speakers), "targets": len(self.targets),
                 "logits": len(self.logits), "embeddings": len(self.embeddings)}
        wrong = {name: size for name, size in sizes.items() if size != n}
        assert not wrong, f"EvalOutputs: {n} uids but {wrong}"
        assert self.logits.ndim == 2, f"EvalOutputs: logits must be (N, n_outputs), got shape {self.logits.shape}"

    def select(self, keep: np.ndarray) -> "EvalOutputs":
        """The examples where the (N,) bool ``keep`` holds (trials are not per example: dropped)."""
        return EvalOutputs(tuple(np.asarray(self.uids)[keep]), tuple(np.asarray(self.speakers)[keep]),
                           self.targets[keep], self.logits[keep], self.embeddings[keep])


class Task(ABC):
    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]  # the keys ``evaluate`` returns
    selection_metric: ClassVar[str]  # dev metric for best-epoch selection and early stopping
    table_metrics: ClassVar[tuple[str, ...]]  # the columns of the main table, selection metric first
    target_dtype: ClassVar[torch.dtype]  # dtype of the target tensor ``loss`` expects
    version: ClassVar[int] = 1  # bump when targets, loss or metrics change: cells of the old version rerun

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.selection_metric]

    @abstractmethod
    def n_outputs(self, split: Split) -> int:
        """Width of the model's logits for this split."""

    @abstractmethod
    def targets(self, examples: Sequence[Example], split: Split) -> list:
        """One target per example (int class / speaker index, or float)."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar task loss of (B, n_outputs) logits against (B,) targets."""

    @abstractmethod
    def evaluate(self, outputs: EvalOutputs) -> dict[str, float]:
        """``metric_names`` -> value for one evaluation split."""

    @abstractmethod
    def predictions(self, outputs: EvalOutputs) -> pd.DataFrame:
        """Per-example (or, for verification, per-trial) rows to save beside the result."""

    # Per-example statistics (stats.paired_bootstrap): the columns that identify a row of
    # ``predictions`` across models, and the column whose values are the resampled clusters.
    row_keys: ClassVar[tuple[str, ...]] = ("uid",)
    cluster: ClassVar[str] = "speaker"

    @abstractmethod
    def score_predictions(self, predictions: Mapping[str, np.ndarray] | pd.DataFrame) -> float:
        """The selection metric computed from a ``predictions`` table's columns (by name)."""

    def eval_trials(self, split: Split, which: str) -> tuple[Trial, ...]:
        """The trials an evaluation split is scored on; none outside verification."""
        return ()

    def diagnostics(self, outputs: EvalOutputs) -> dict:
        """JSON-ready extras stored with a result (beyond ``metric_names``)."""
        return {}

    def evaluate_subsets(self, outputs: EvalOutputs, examples: Sequence[Example]) -> dict[str, dict[str, float]]:
        """``evaluate`` on each named subset of the examples (``Example.subsets``) that holds at
        least two of them; none for a task scored on trials rather than examples."""
        if self.row_keys != ("uid",):
            return {}
        of = {e.uid: e.subsets for e in examples}
        names = sorted({name for e in examples for name in e.subsets})
        out = {}
        for name in names:
            keep = np.array([name in of[uid] for uid in outputs.uids])
            if keep.sum() >= 2:
                out[name] = self.evaluate(outputs.select(keep))
        return out


def _example_table(outputs: EvalOutputs, prediction: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"uid": list(outputs.uids), "speaker": list(outputs.speakers),
                         "target": outputs.targets, "prediction": prediction})


class EmotionTask(Task):
    """4-way emotion classification (neutral, happy, sad, angry); selection on UA."""

    name = "emotion"
    version = 2  # metrics per named test subset
    metric_names = ("wa", "ua", "macro_f1")
    selection_metric = "ua"
    table_metrics = ("ua", "wa")
    target_dtype = torch.long

    def n_outputs(self, split: Split) -> int:
        return len(EMOTIONS)

    def targets(self, examples: Sequence[Example], split: Split) -> list[int]:
        index = {label: i for i, label in enumerate(EMOTIONS)}
        missing = next((e for e in examples if e.emotion not in index), None)
        if missing is not None:
            raise UserError(f"example {missing.uid!r} has emotion {missing.emotion!r}; "
                            f"expected one of {', '.join(EMOTIONS)}")
        return [index[e.emotion] for e in examples]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    def _predicted_classes(self, outputs: EvalOutputs) -> np.ndarray:
        return outputs.logits.argmax(axis=1)

    def evaluate(self, outputs: EvalOutputs) -> dict[str, float]:
        return classification_metrics(outputs.targets.astype(np.int64),
                                      self._predicted_classes(outputs), len(EMOTIONS))

    def diagnostics(self, outputs: EvalOutputs) -> dict:
        return {"confusion_matrix": self.confusion_matrix(outputs)}

    def confusion_matrix(self, outputs: EvalOutputs) -> list[list[int]]:
        """Counts as nested lists (JSON-ready); row = true class, column = predicted, EMOTIONS order."""
        cm = confusion_matrix(outputs.targets.astype(np.int64), self._predicted_classes(outputs), len(EMOTIONS))
        return cm.tolist()

    def predictions(self, outputs: EvalOutputs) -> pd.DataFrame:
        return _example_table(outputs, self._predicted_classes(outputs))

    def score_predictions(self, predictions: Mapping[str, np.ndarray] | pd.DataFrame) -> float:
        return unweighted_accuracy(predictions["target"], predictions["prediction"], len(EMOTIONS))


class SentimentTask(Task):
    """Sentiment regression in [-3, 3] with an L1 loss on logits[:, 0]; selection on MAE."""

    name = "sentiment"
    version = 2  # metrics per named test subset
    metric_names = ("mae", "corr", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7", "acc5")
    selection_metric = "mae"
    table_metrics = ("mae", "corr")
    target_dtype = torch.float32

    def n_outputs(self, split: Split) -> int:
        return 1

    def targets(self, examples: Sequence[Example], split: Split) -> list[float]:
        missing = next((e for e in examples if e.sentiment is None), None)
        if missing is not None:
            raise UserError(f"example {missing.uid!r} has no sentiment label; expected a number in [-3, 3]")
        return [float(e.sentiment) for e in examples]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(logits[:, 0], targets.to(logits.dtype))

    def evaluate(self, outputs: EvalOutputs) -> dict[str, float]:
        # Raw (unclipped) predictions, as MMSA scores them; see ctal_bench.train.metrics.
        return sentiment_metrics(outputs.logits[:, 0], outputs.targets)

    def predictions(self, outputs: EvalOutputs) -> pd.DataFrame:
        return _example_table(outputs, outputs.logits[:, 0])

    def score_predictions(self, predictions: Mapping[str, np.ndarray] | pd.DataFrame) -> float:
        return mae(predictions["prediction"], predictions["target"])


class VerificationTask(Task):
    """Train as speaker classification, then cosine-score embeddings on a trial list."""

    name = "verification"
    metric_names = ("eer", "min_dcf")
    selection_metric = "eer"
    table_metrics = ("eer", "min_dcf")
    target_dtype = torch.long

    @staticmethod
    def train_speakers(split: Split) -> list[str]:
        """The training speakers, sorted: a speaker's class index is its position here."""
        return sorted({e.speaker for e in split.train})

    def n_outputs(self, split: Split) -> int:
        n = len(self.train_speakers(split))
        if n < 2:
            raise UserError(f"verification training needs at least 2 training speakers, got {n}")
        return n

    def targets(self, examples: Sequence[Example], split: Split) -> list[int]:
        """Speaker class index; UNSEEN_SPEAKER for speakers outside the training set."""
        index = {speaker: i for i, speaker in enumerate(self.train_speakers(split))}
        return [index.get(e.speaker, UNSEEN_SPEAKER) for e in examples]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over seen speakers; 0 for a batch with none (held-out speakers only)."""
        total = F.cross_entropy(logits, targets, ignore_index=UNSEEN_SPEAKER, reduction="sum")
        return total / (targets != UNSEEN_SPEAKER).sum().clamp(min=1)

    def eval_trials(self, split: Split, which: str) -> tuple[Trial, ...]:
        trials = {"dev": split.dev_trials, "test": split.test_trials}[which]
        if not trials:
            raise UserError(f"the verification split has no {which} trials; expected a trial list for {which}")
        return trials

    def _scores(self, outputs: EvalOutputs) -> tuple[np.ndarray, np.ndarray]:
        return cosine_scores((outputs.embeddings, outputs.uids), outputs.trials)

    def evaluate(self, outputs: EvalOutputs) -> dict[str, float]:
        return verification_metrics(*self._scores(outputs))

    row_keys = ("enroll", "test")
    cluster = "enroll_speaker"  # a trial belongs to its enrolment speaker

    def score_predictions(self, predictions: Mapping[str, np.ndarray] | pd.DataFrame) -> float:
        """EER of a trial table; NaN when it lacks target or non-target trials (a resample can)."""
        if len(np.unique(predictions["target"])) < 2:
            return float("nan")
        return eer(predictions["score"], predictions["target"])

    def predictions(self, outputs: EvalOutputs) -> pd.DataFrame:
        scores, labels = self._scores(outputs)
        speaker_of = dict(zip(outputs.uids, outputs.speakers))
        return pd.DataFrame({
            "enroll": [t.enroll for t in outputs.trials],
            "test": [t.test for t in outputs.trials],
            "enroll_speaker": [speaker_of[t.enroll] for t in outputs.trials],
            "test_speaker": [speaker_of[t.test] for t in outputs.trials],
            "target": labels,
            "score": scores,
        })


for _task in (EmotionTask(), SentimentTask(), VerificationTask()):
    TASKS.add(_task.name, _task)
