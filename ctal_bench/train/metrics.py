"""Evaluation metrics: numpy arrays in, floats out, pure functions.

Classification (emotion), sentiment regression in [-3, 3] and speaker verification. Every
metric name the tasks report has a declared direction in ``HIGHER_IS_BETTER``. Rates and
accuracies are fractions in [0, 1], not percentages. A value that is undefined for the
input (Pearson r of a constant vector, Acc-2 "non-zero" with no non-zero target, EER of
NaN scores) is ``nan``, and ``nan`` never counts as an improvement (``is_better``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import det_curve as _sklearn_det_curve

from ctal_bench.data.base import Trial
from ctal_bench.errors import UserError

HIGHER_IS_BETTER: dict[str, bool] = {
    # emotion
    "wa": True,
    "ua": True,
    "macro_f1": True,
    # sentiment
    "mae": False,
    "corr": True,
    "acc2_has0": True,
    "acc2_non0": True,
    "f1_has0": True,
    "f1_non0": True,
    "acc7": True,
    "acc5": True,
    # verification
    "eer": False,
    "min_dcf": False,
}


def is_better(metric: str, candidate: float, incumbent: float) -> bool:
    """Whether ``candidate`` strictly improves on ``incumbent`` for ``metric``.

    A NaN candidate never improves; anything finite improves on a NaN incumbent.
    """
    if math.isnan(candidate):
        return False
    if math.isnan(incumbent):
        return True
    return candidate > incumbent if HIGHER_IS_BETTER[metric] else candidate < incumbent


# ---------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------

def _class_arrays(y_true, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} entries but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("classification metrics need at least one example")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"{name} holds class indices outside [0, {n_classes})")
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; row = true class, column = predicted (sklearn's layout)."""
    y_true, y_pred = _class_arrays(y_true, y_pred, n_classes)
    counts = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)  # (true, predicted)


def _accuracy(cm: np.ndarray) -> float:
    return float(np.trace(cm) / cm.sum())


def _mean_recall(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the truth (sklearn's balanced accuracy)."""
    support = cm.sum(axis=1)
    has_support = support > 0
    return float((np.diag(cm)[has_support] / support[has_support]).mean())


def _per_class_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 of each class, and which classes occur (as truth or prediction).

    F1 = 2TP / (2TP + FP + FN); a class that occurs only as a prediction has F1 0, as in
    sklearn with zero_division=0. Averages skip classes that never occur, as sklearn does
    when ``labels`` is not given.
    """
    true_count, predicted_count = cm.sum(axis=1), cm.sum(axis=0)
    denominator = true_count + predicted_count  # = 2TP + FP + FN
    present = denominator > 0
    f1 = np.zeros(len(cm))
    f1[present] = 2 * np.diag(cm)[present] / denominator[present]
    return f1, present


def _macro_f1(cm: np.ndarray) -> float:
    f1, present = _per_class_f1(cm)
    return float(f1[present].mean())


def _weighted_f1(cm: np.ndarray) -> float:
    """Per-class F1 weighted by the class's true count (sklearn ``average='weighted'``)."""
    f1, _ = _per_class_f1(cm)
    true_count = cm.sum(axis=1)
    return float((f1 * true_count).sum() / true_count.sum())


def weighted_accuracy(y_true, y_pred, n_classes: int) -> float:
    """WA = plain accuracy (each example weighs the same)."""
    return _accuracy(confusion_matrix(y_true, y_pred, n_classes))


def unweighted_accuracy(y_true, y_pred, n_classes: int) -> float:
    """UA = mean recall over the classes present in ``y_true`` (= balanced accuracy)."""
    return _mean_recall(confusion_matrix(y_true, y_pred, n_classes))


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes that occur as truth or prediction."""
    return _macro_f1(confusion_matrix(y_true, y_pred, n_classes))


def weighted_f1(y_true, y_pred, n_classes: int) -> float:
    return _weighted_f1(confusion_matrix(y_true, y_pred, n_classes))


def classification_metrics(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """WA, UA and macro-F1 from one confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    return {"wa": _accuracy(cm), "ua": _mean_recall(cm), "macro_f1": _macro_f1(cm)}


# ---------------------------------------------------------------------------------------
# Sentiment regression in [-3, 3]
# ---------------------------------------------------------------------------------------
# Conventions follow MMSA's MetricsTop.__eval_mosei_regression (thuiar/MMSA,
# src/MMSA/utils/metricsTop.py), which descends from the CMU-MultimodalSDK / MulT
# evaluation code and is what MOSI/MOSEI papers report:
# - MAE and Pearson r on the raw (unclipped) predictions;
# - Acc-2 "has-zero": truth >= 0 vs prediction >= 0 over all examples;
# - Acc-2 "non-zero": truth > 0 vs prediction > 0 over examples whose truth != 0;
# - F1 both ways: sklearn f1_score(average="weighted") on those same binary labels;
# - Acc-7: clip both to [-3, 3], then np.round (half to even, so 2.5 -> 2) and compare;
# - Acc-5: the same after clipping to [-2, 2].

def _regression_arrays(prediction, target) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    if prediction.shape != target.shape:
        raise ValueError(f"prediction has {prediction.size} entries but target has {target.size}")
    if prediction.size == 0:
        raise ValueError("sentiment metrics need at least one example")
    return prediction, target


def mae(prediction, target) -> float:
    prediction, target = _regression_arrays(prediction, target)
    return float(np.mean(np.abs(prediction - target)))


def pearson_r(prediction, target) -> float:
    """Pearson correlation; ``nan`` when either side is constant (r is undefined there)."""
    prediction, target = _regression_arrays(prediction, target)
    if prediction.size < 2 or np.ptp(prediction) == 0 or np.ptp(target) == 0:
        return math.nan
    p = prediction - prediction.mean()
    t = target - target.mean()
    r = float(np.dot(p, t) / math.sqrt(np.dot(p, p) * np.dot(t, t)))
    return max(-1.0, min(1.0, r))  # rounding can overshoot |r| = 1 by an ulp


def _binary_accuracy_f1(true_positive: np.ndarray, pred_positive: np.ndarray) -> tuple[float, float]:
    """Accuracy and weighted F1 of two boolean arrays; ``nan`` for empty ones."""
    if true_positive.size == 0:
        return math.nan, math.nan
    cm = confusion_matrix(true_positive.astype(np.int64), pred_positive.astype(np.int64), 2)
    return _accuracy(cm), _weighted_f1(cm)


def _rounded_accuracy(prediction: np.ndarray, target: np.ndarray, bound: float) -> float:
    rounded_prediction = np.round(np.clip(prediction, -bound, bound))
    rounded_target = np.round(np.clip(target, -bound, bound))
    return float(np.mean(rounded_prediction == rounded_target))


def acc7(prediction, target) -> float:
    """7 classes -3..3: clip to [-3, 3], round half to even, compare."""
    return _rounded_accuracy(*_regression_arrays(prediction, target), 3.0)


def acc5(prediction, target) -> float:
    """5 classes -2..2: clip to [-2, 2], round half to even, compare."""
    return _rounded_accuracy(*_regression_arrays(prediction, target), 2.0)


def sentiment_metrics(prediction, target) -> dict[str, float]:
    """MAE, Pearson r, Acc-2 and weighted F1 both ways, Acc-7 and Acc-5 (MMSA conventions).

    ``acc2_non0`` / ``f1_non0`` are ``nan`` when every target is 0; ``corr`` is ``nan``
    when the predictions or the targets are constant.
    """
    prediction, target = _regression_arrays(prediction, target)
    nonzero = target != 0
    acc2_has0, f1_has0 = _binary_accuracy_f1(target >= 0, prediction >= 0)
    acc2_non0, f1_non0 = _binary_accuracy_f1(target[nonzero] > 0, prediction[nonzero] > 0)
    return {
        "mae": mae(prediction, target),
        "corr": pearson_r(prediction, target),
        "acc2_has0": acc2_has0,
        "acc2_non0": acc2_non0,
        "f1_has0": f1_has0,
        "f1_non0": f1_non0,
        "acc7": _rounded_accuracy(prediction, target, 3.0),
        "acc5": _rounded_accuracy(prediction, target, 2.0),
    }


# ---------------------------------------------------------------------------------------
# Speaker verification
# ---------------------------------------------------------------------------------------

def cosine_scores(
    embeddings: Mapping[str, np.ndarray] | tuple[np.ndarray, Mapping[str, int] | Sequence[str]],
    trials: Sequence[Trial],
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each trial's enrolment and test embedding.

    ``embeddings`` is either ``{uid: vector}`` or ``(matrix, index)`` where ``matrix`` is
    (N, E) and ``index`` maps uid -> row or lists the uids in row order. Returns
    ``(scores, labels)``: float64 scores in [-1, 1] and int64 labels (1 = same speaker), in
    trial order. A zero vector scores 0 against everything.
    """
    if not trials:
        raise UserError("cosine scoring needs at least one trial")
    if isinstance(embeddings, Mapping):
        row_of = {uid: row for row, uid in enumerate(embeddings)}
        vectors = [np.asarray(v, dtype=np.float64).ravel() for v in embeddings.values()]
        matrix = np.stack(vectors) if vectors else np.zeros((0, 1))
    else:
        matrix, index = embeddings
        matrix = np.asarray(matrix, dtype=np.float64)
        row_of = dict(index) if isinstance(index, Mapping) else {uid: row for row, uid in enumerate(index)}
        if matrix.ndim != 2 or any(not 0 <= row < len(matrix) for row in row_of.values()):
            raise ValueError(f"embedding matrix of shape {matrix.shape} does not fit its index of {len(row_of)} uids")
    enroll_rows, test_rows = [], []
    for number, trial in enumerate(trials, start=1):
        for uid, rows in ((trial.enroll, enroll_rows), (trial.test, test_rows)):
            if uid not in row_of:
                raise UserError(f"trial {number} ({trial.enroll} vs {trial.test}): no embedding for utterance {uid!r}")
            rows.append(row_of[uid])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.maximum(norms, np.finfo(np.float64).tiny)  # (N, E), rows of norm 1 or 0
    scores = np.einsum("ij,ij->i", unit[enroll_rows], unit[test_rows])  # (n_trials,)
    labels = np.array([t.target for t in trials], dtype=np.int64)
    return np.clip(scores, -1.0, 1.0), labels


def _verification_arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores has {scores.size} entries but labels has {labels.size}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (different speakers) or 1 (same speaker)")
    n_target = int(labels.sum())
    n_nontarget = labels.size - n_target
    if n_target == 0 or n_nontarget == 0:
        raise UserError(f"verification metrics need both target and non-target trials; "
                        f"got {n_target} target and {n_nontarget} non-target")
    return scores, labels.astype(np.int64)


def error_rates(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every operating point of "accept when score >= threshold".

    Returns ``(thresholds, fpr, fnr)``, thresholds strictly decreasing from +inf (accept
    nothing: fpr 0, fnr 1) to the lowest score (accept everything: fpr 1, fnr 0). Tied
    scores share one threshold, so the result does not depend on the order of the trials.
    Same points as sklearn's ``roc_curve(..., drop_intermediate=False)`` with fnr = 1 - tpr.
    """
    scores, labels = _verification_arrays(scores, labels)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    accepted_targets = np.cumsum(sorted_labels)
    accepted_nontargets = np.cumsum(1 - sorted_labels)
    # The last position of each run of equal scores closes one threshold.
    run_ends = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), sorted_scores.size - 1]
    n_target, n_nontarget = accepted_targets[-1], accepted_nontargets[-1]
    thresholds = np.r_[np.inf, sorted_scores[run_ends]]
    fpr = np.r_[0, accepted_nontargets[run_ends]] / n_nontarget
    fnr = np.r_[n_target, n_target - accepted_targets[run_ends]] / n_target
    return thresholds, fpr, fnr


def _eer_from_rates(fpr: np.ndarray, fnr: np.ndarray) -> float:
    """Where the piecewise-linear ROC (in (fpr, fnr) space) crosses fpr = fnr.

    Along the curve fpr rises and fnr falls, so fnr - fpr falls from 1 to -1 and crosses
    zero once (possibly along a flat run); we interpolate linearly on the crossing segment.
    """
    gap = fnr - fpr
    last_nonnegative = int(np.flatnonzero(gap >= 0)[-1])
    if gap[last_nonnegative] == 0:
        return float(fpr[last_nonnegative])
    i, j = last_nonnegative, last_nonnegative + 1
    weight = gap[i] / (gap[i] - gap[j])
    return float(fpr[i] + weight * (fpr[j] - fpr[i]))


def _min_dcf_from_rates(fpr: np.ndarray, fnr: np.ndarray, p_target: float,
                        c_miss: float, c_fa: float) -> float:
    """NIST SRE / VoxCeleb minDCF: min over thresholds of the detection cost, normalised.

    C_det = C_miss * P_miss * p_target + C_fa * P_fa * (1 - p_target), divided by
    C_default = min(C_miss * p_target, C_fa * (1 - p_target)), the cost of the better of
    "accept all" / "reject all"; so minDCF <= 1.
    """
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    cost = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def _rates_or_none(scores, labels) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, fnr) at every threshold, or None when a score is NaN (a diverged model)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        return None
    _, fpr, fnr = error_rates(scores, labels)
    return fpr, fnr


def eer(scores, labels) -> float:
    """Equal error rate in [0, 1]; ``nan`` if any score is NaN."""
    rates = _rates_or_none(scores, labels)
    return math.nan if rates is None else _eer_from_rates(*rates)


def min_dcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised minimum detection cost; ``nan`` if any score is NaN."""
    rates = _rates_or_none(scores, labels)
    return math.nan if rates is None else _min_dcf_from_rates(*rates, p_target, c_miss, c_fa)


def verification_metrics(scores, labels, p_target: float = 0.01) -> dict[str, float]:
    """EER and minDCF (C_miss = C_fa = 1) from one pass over the operating points."""
    rates = _rates_or_none(scores, labels)
    if rates is None:
        return {"eer": math.nan, "min_dcf": math.nan}
    return {"eer": _eer_from_rates(*rates), "min_dcf": _min_dcf_from_rates(*rates, p_target, 1.0, 1.0)}


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, fnr, thresholds)`` for a DET plot (sklearn's det_curve; plot on probit axes)."""
    scores, labels = _verification_arrays(scores, labels)
    return _sklearn_det_curve(labels, scores)
