"""Metrics against independent references (sklearn, scipy, brute force) and hand-checked cases."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from scipy.stats import pearsonr
from sklearn import metrics as skm

from ctal_bench.data.base import Trial
from ctal_bench.errors import UserError
from ctal_bench.train import metrics

# ---------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------

label_pairs = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 3), min_size=n, max_size=n),
    st.lists(st.integers(0, 3), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None)
@given(label_pairs)
def test_classification_matches_sklearn(pair):
    y_true, y_pred = (np.array(v) for v in pair)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when y_pred has classes y_true lacks
        expected_ua = skm.balanced_accuracy_score(y_true, y_pred)
    got = metrics.classification_metrics(y_true, y_pred, 4)
    assert got["wa"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert got["ua"] == pytest.approx(expected_ua)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert metrics.weighted_f1(y_true, y_pred, 4) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="weighted", zero_division=0))
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, y_pred, 4),
                                  skm.confusion_matrix(y_true, y_pred, labels=range(4)))
    assert metrics.weighted_accuracy(y_true, y_pred, 4) == got["wa"]
    assert metrics.unweighted_accuracy(y_true, y_pred, 4) == got["ua"]
    assert metrics.macro_f1(y_true, y_pred, 4) == got["macro_f1"]


def test_classification_hand_checked():
    # truth  0 0 0 1 2 2   pred 0 0 1 1 2 0
    # recalls: class 0 2/3, class 1 1/1, class 2 1/2 -> UA = (2/3 + 1 + 1/2) / 3 = 13/18
    # F1: class 0: 2*2/(3+3) = 2/3; class 1: 2*1/(1+2) = 2/3; class 2: 2*1/(2+1) = 2/3
    # class 3 never occurs and is left out of the macro average.
    got = metrics.classification_metrics([0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 2, 0], 4)
    assert got == pytest.approx({"wa": 4 / 6, "ua": 13 / 18, "macro_f1": 2 / 3})


def test_ua_differs_from_wa_under_imbalance():
    # Always predicting the majority class: WA 0.9 but UA 0.5.
    y_true = np.array([0] * 9 + [1])
    got = metrics.classification_metrics(y_true, np.zeros(10, dtype=int), 2)
    assert got["wa"] == pytest.approx(0.9)
    assert got["ua"] == pytest.approx(0.5)


@pytest.mark.parametrize("y_true, y_pred", [([0, 4], [0, 1]), ([0, 1], [0, -1]), ([0.0, 1.0], [0, 1]),
                                            ([0, 1, 2], [0, 1]), ([], [])])
def test_classification_rejects_bad_input(y_true, y_pred):
    with pytest.raises(ValueError):
        metrics.classification_metrics(np.array(y_true), np.array(y_pred), 4)


# ---------------------------------------------------------------------------------------
# Sentiment
# ---------------------------------------------------------------------------------------

# Hand-checked case (see the comments in test_sentiment_hand_checked).
TARGET = np.array([-3.0, -1.5, 0.0, 0.0, 0.4, 2.6, 1.0, -0.2])
PREDICTION = np.array([-2.2, 0.2, -0.1, 0.3, 1.6, 3.4, 0.5, -0.4])


def test_sentiment_hand_checked():
    got = metrics.sentiment_metrics(PREDICTION, TARGET)
    # |errors| = 0.8 1.7 0.1 0.3 1.2 0.8 0.5 0.2 -> sum 5.6 -> MAE 0.7
    assert got["mae"] == pytest.approx(0.7)
    # has-zero: truth >= 0: F F T T T T T F; pred >= 0: F T F T T T T F -> 6/8 agree
    assert got["acc2_has0"] == pytest.approx(0.75)
    # weighted F1 has-zero: class T (5 true) TP 4 FP 1 FN 1 -> 8/10; class F (3 true) TP 2 FP 1 FN 1 -> 4/6
    # -> (5 * 0.8 + 3 * 2/3) / 8 = 0.75
    assert got["f1_has0"] == pytest.approx(0.75)
    # non-zero: 6 examples (indices 0 1 4 5 6 7); truth > 0: F F T T T F; pred > 0: F T T T T F -> 5/6
    assert got["acc2_non0"] == pytest.approx(5 / 6)
    # weighted F1 non-zero: class T TP 3 FP 1 FN 0 -> 6/7; class F TP 2 FP 0 FN 1 -> 4/5; 3 and 3 true
    assert got["f1_non0"] == pytest.approx((6 / 7 + 4 / 5) / 2)
    # Acc-7, rounding half to even: truth -3 -2 0 0 0 3 1 -0; pred -2 0 -0 0 2 3 0 -0
    # (-1.5 -> -2 and 0.5 -> 0) -> agree at indices 2 3 5 7 -> 4/8
    assert got["acc7"] == pytest.approx(0.5)
    # Acc-5, clipped to [-2, 2]: truth -2 -2 0 0 0 2 1 -0; pred -2 0 -0 0 2 2 0 -0 -> 5/8
    assert got["acc5"] == pytest.approx(5 / 8)
    assert metrics.acc7(PREDICTION, TARGET) == got["acc7"]
    assert metrics.acc5(PREDICTION, TARGET) == got["acc5"]
    assert got["corr"] == pytest.approx(pearsonr(PREDICTION, TARGET).statistic)


def test_sentiment_matches_mmsa_reference_on_random_data():
    rng = np.random.default_rng(0)
    target = np.round(rng.uniform(-3, 3, 300) * 3) / 3  # MOSEI-like thirds, with exact zeros
    target[:20] = 0.0
    prediction = target + rng.normal(0, 1.0, 300)
    prediction[:5] = 0.0
    got = metrics.sentiment_metrics(prediction, target)
    # The reference computations as MMSA's MetricsTop writes them, with sklearn and numpy.
    nonzero = target != 0
    expected = {
        "mae": np.mean(np.abs(prediction - target)),
        "corr": np.corrcoef(prediction, target)[0][1],
        "acc2_has0": skm.accuracy_score(target >= 0, prediction >= 0),
        "f1_has0": skm.f1_score(target >= 0, prediction >= 0, average="weighted"),
        "acc2_non0": skm.accuracy_score(target[nonzero] > 0, prediction[nonzero] > 0),
        "f1_non0": skm.f1_score(target[nonzero] > 0, prediction[nonzero] > 0, average="weighted"),
        "acc7": np.mean(np.round(np.clip(prediction, -3, 3)) == np.round(np.clip(target, -3, 3))),
        "acc5": np.mean(np.round(np.clip(prediction, -2, 2)) == np.round(np.clip(target, -2, 2))),
    }
    assert got == pytest.approx(expected)
    assert got["corr"] == pytest.approx(pearsonr(prediction, target).statistic)


def test_sentiment_undefined_values_are_nan():
    target = np.array([0.0, 0.0, 0.0])
    got = metrics.sentiment_metrics(np.array([1.0, 1.0, 1.0]), target)
    # Constant predictions and targets: r undefined; no non-zero target: non-zero Acc-2 undefined.
    assert math.isnan(got["corr"]) and math.isnan(got["acc2_non0"]) and math.isnan(got["f1_non0"])
    assert got["acc2_has0"] == 1.0 and got["mae"] == 1.0
    assert math.isnan(metrics.pearson_r([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]))


def test_pearson_of_perfect_line_is_one():
    x = np.linspace(-3, 3, 50)
    assert metrics.pearson_r(2 * x + 0.1, x) == pytest.approx(1.0)
    assert metrics.pearson_r(-x, x) == pytest.approx(-1.0)


def test_sentiment_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        metrics.sentiment_metrics([0.0, 1.0], [0.0])


# ---------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------

def reference_eer(scores, labels) -> float:
    """The common recipe: where sklearn's ROC crosses tpr = 1 - fpr, found by root search."""
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def brute_force_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0) -> float:
    """The definition, literally: every threshold "accept if score >= t", plus accept-none."""
    targets, nontargets = scores[labels == 1], scores[labels == 0]
    best = math.inf
    for t in list(np.unique(scores)) + [math.inf]:
        p_miss = np.mean(targets < t)
        p_fa = np.mean(nontargets >= t)
        best = min(best, c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target))
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


# Targets 0.9 0.8 0.4; non-targets 0.7 0.3 0.2 0.1.
HAND_SCORES = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
HAND_LABELS = np.array([1, 1, 1, 0, 0, 0, 0])


def test_verification_hand_checked():
    # Operating points (fpr, fnr) from the top: (0,1) (0,2/3) (0,1/3) (1/4,1/3) (1/4,0) ...
    # fpr = fnr is crossed on the vertical step at fpr = 1/4 -> EER 0.25.
    # p_target 0.01: DCF/C_default = (0.01 P_miss + 0.99 P_fa) / 0.01 = P_miss + 99 P_fa;
    # best is to accept {0.9, 0.8}: P_miss 1/3, P_fa 0 -> 1/3 (accept none costs 1).
    # p_target 0.5: P_miss + P_fa; accepting down to 0.4 gives 0 + 1/4 -> 0.25.
    got = metrics.verification_metrics(HAND_SCORES, HAND_LABELS)
    assert got == pytest.approx({"eer": 0.25, "min_dcf": 1 / 3})
    assert metrics.eer(HAND_SCORES, HAND_LABELS) == pytest.approx(0.25)
    assert metrics.min_dcf(HAND_SCORES, HAND_LABELS, p_target=0.5) == pytest.approx(0.25)
    assert brute_force_min_dcf(HAND_SCORES, HAND_LABELS, 0.01) == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(6))
def test_eer_and_min_dcf_match_references(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 400)
    labels[:2] = (0, 1)
    scores = rng.normal(labels * 1.2, 1.0)
    if seed % 2:
        scores = np.round(scores, 1)  # many ties
    assert metrics.eer(scores, labels) == pytest.approx(reference_eer(scores, labels), abs=1e-9)
    for p_target, c_miss, c_fa in ((0.01, 1, 1), (0.05, 1, 1), (0.01, 10, 1)):
        assert metrics.min_dcf(scores, labels, p_target, c_miss, c_fa) == pytest.approx(
            brute_force_min_dcf(scores, labels, p_target, c_miss, c_fa))


def test_error_rates_match_sklearn_roc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels, 1.0), 1)
    thresholds, fpr, fnr = metrics.error_rates(scores, labels)
    sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(fnr, 1 - sk_tpr)
    np.testing.assert_array_equal(thresholds, sk_thresholds)


def test_verification_edge_cases():
    labels = np.array([1, 1, 0, 0])
    assert metrics.verification_metrics([0.9, 0.8, 0.1, 0.2], labels) == {"eer": 0.0, "min_dcf": 0.0}
    assert metrics.eer([0.1, 0.2, 0.9, 0.8], labels) == 1.0  # perfectly wrong
    assert metrics.eer([0.5, 0.5, 0.5, 0.5], labels) == pytest.approx(0.5)  # no information
    assert metrics.min_dcf([0.5, 0.5, 0.5, 0.5], labels) == pytest.approx(1.0)  # = reject all
    nan_scores = metrics.verification_metrics([0.9, math.nan, 0.1, 0.2], labels)
    assert math.isnan(nan_scores["eer"]) and math.isnan(nan_scores["min_dcf"])


def test_verification_rejects_one_kind_of_trial():
    with pytest.raises(UserError, match="both target and non-target"):
        metrics.eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        metrics.eer([0.1, 0.2], [1, 2])


def test_det_curve_is_sklearns():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 100)
    scores = rng.normal(labels, 1.0)
    for got, expected in zip(metrics.det_curve(scores, labels), skm.det_curve(labels, scores)):
        np.testing.assert_array_equal(got, expected)


trial_sets = st.integers(2, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-8, 8), min_size=n, max_size=n),  # small ints: plenty of ties
    st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < len(y))))


@settings(max_examples=150, deadline=None)
@given(trial_sets, st.randoms(use_true_random=False))
def test_eer_properties(trial_set, rnd):
    scores, labels = np.array(trial_set[0], dtype=np.float64), np.array(trial_set[1])
    got = metrics.verification_metrics(scores, labels)
    assert 0.0 <= got["eer"] <= 1.0
    assert 0.0 <= got["min_dcf"] <= 1.0
    # Only the order of the scores matters, not their values, nor the order of the trials.
    for transformed in (3 * scores + 7, scores ** 3, np.exp(scores / 4)):
        assert metrics.verification_metrics(transformed, labels) == pytest.approx(got)
    order = list(range(len(scores)))
    rnd.shuffle(order)
    assert metrics.verification_metrics(scores[order], labels[order]) == pytest.approx(got)
    # Swapping the roles of targets and non-targets (and the score direction) keeps the EER.
    assert metrics.eer(-scores, 1 - labels) == pytest.approx(got["eer"])
    assert got["eer"] == pytest.approx(reference_eer(scores, labels), abs=1e-9)


# ---------------------------------------------------------------------------------------
# Cosine scoring
# ---------------------------------------------------------------------------------------

def test_cosine_scores_all_inputs_agree():
    rng = np.random.default_rng(3)
    uids = ["a", "b", "c", "d"]
    matrix = rng.normal(size=(4, 5))
    trials = [Trial(1, "a", "b"), Trial(0, "c", "a"), Trial(0, "d", "d")]
    expected = np.array([matrix[i] @ matrix[j] / np.linalg.norm(matrix[i]) / np.linalg.norm(matrix[j])
                         for i, j in ((0, 1), (2, 0), (3, 3))])
    by_dict = metrics.cosine_scores(dict(zip(uids, matrix)), trials)
    by_list = metrics.cosine_scores((matrix, uids), trials)
    by_mapping = metrics.cosine_scores((matrix[::-1], {u: 3 - i for i, u in enumerate(uids)}), trials)
    for scores, labels in (by_dict, by_list, by_mapping):
        np.testing.assert_allclose(scores, expected)
        np.testing.assert_array_equal(labels, [1, 0, 0])
    scaled, _ = metrics.cosine_scores((matrix * np.array([[2.0], [0.5], [10.0], [1.0]]), uids), trials)
    np.testing.assert_allclose(scaled, expected)


def test_cosine_zero_vector_scores_zero():
    scores, _ = metrics.cosine_scores({"a": np.zeros(3), "b": np.ones(3)}, [Trial(0, "a", "b")])
    assert scores.tolist() == [0.0]


def test_cosine_missing_uid_names_it():
    with pytest.raises(UserError, match="'zz'"):
        metrics.cosine_scores({"a": np.ones(3)}, [Trial(1, "a", "a"), Trial(0, "a", "zz")])


# ---------------------------------------------------------------------------------------
# Directions
# ---------------------------------------------------------------------------------------

def test_directions():
    assert not any(metrics.HIGHER_IS_BETTER[m] for m in ("mae", "eer", "min_dcf"))
    assert all(metrics.HIGHER_IS_BETTER[m] for m in ("wa", "ua", "macro_f1", "corr", "acc7"))
    assert metrics.is_better("ua", 0.6, 0.5) and not metrics.is_better("ua", 0.5, 0.5)
    assert metrics.is_better("eer", 0.1, 0.2) and not metrics.is_better("mae", 0.9, 0.8)
    assert not metrics.is_better("eer", math.nan, 0.2)
    assert metrics.is_better("eer", 0.4, math.nan)
