"""Statistics: agreement with scipy / statsmodels / deepsig on the same numbers, and behaviour."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from ctal_bench.analysis import stats


def test_summary_is_mean_sample_std_and_t_interval():
    x = [0.61, 0.58, 0.64, 0.60, 0.57]
    s = stats.summarise(x)
    assert s.mean == pytest.approx(np.mean(x)) and s.std == pytest.approx(np.std(x, ddof=1)) and s.n == 5
    low, high = sp.t.interval(0.95, 4, loc=np.mean(x), scale=sp.sem(x))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))
    one = stats.summarise([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_paired_comparison_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.6, 0.02, 5), rng.normal(0.58, 0.02, 5)
    c = stats.compare_seeds(a, b, higher_is_better=True)
    reference = sp.ttest_rel(a, b)
    interval = reference.confidence_interval(0.95)
    assert c.p_value == pytest.approx(reference.pvalue)
    assert (c.ci_low, c.ci_high) == pytest.approx((interval.low, interval.high))
    assert c.difference == pytest.approx(np.mean(a - b))
    u = sp.mannwhitneyu(a, b).statistic
    assert c.p_superiority == pytest.approx(u / 25)
    assert math.isnan(c.aso_eps_min) and c.rank_test_verdict == "inconclusive"


def test_direction_flips_for_lower_is_better():
    a, b = np.array([0.50, 0.52, 0.49]), np.array([0.60, 0.61, 0.62])  # A lower: better MAE
    c = stats.compare_seeds(a, b, higher_is_better=False)
    assert c.a_is_better and c.difference < 0 and c.p_superiority == 1.0
    assert not stats.compare_seeds(a, b, higher_is_better=True).a_is_better


def test_identical_scores_give_p_one_not_nan():
    c = stats.compare_seeds([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], higher_is_better=True)
    assert c.p_value == 1.0 and c.difference == 0.0 and not c.a_is_better and c.zero_variance


def test_a_constant_nonzero_difference_has_no_p_value_not_p_zero():
    """scipy's t is infinite and its p 0 here: the t-test is undefined, and says so (issue 25, item 2)."""
    c = stats.compare_seeds([0.6, 0.7], [0.5, 0.6], higher_is_better=True)
    assert math.isnan(c.p_value) and c.zero_variance
    assert c.difference == pytest.approx(0.1) and (c.ci_low, c.ci_high) == pytest.approx((0.1, 0.1))
    c = stats.compare_seeds([0.6, 0.7, 0.8 + 1e-15], [0.5, 0.6, 0.7], higher_is_better=True)  # rounding noise
    assert math.isnan(c.p_value) and c.zero_variance
    varied = stats.compare_seeds([0.6, 0.71, 0.8], [0.5, 0.6, 0.7], higher_is_better=True)
    assert 0 < varied.p_value < 1 and not varied.zero_variance


def test_the_rank_test_limit_is_the_paired_wilcoxons_not_mann_whitneys():
    """At N = 5 the paired Wilcoxon's smallest two-sided p is 2 / 2^5 = 0.0625; Mann-Whitney's at
    5 vs 5 is 2 / C(10, 5) = 0.0079, so the module must not say "a rank test" cannot reach 0.05."""
    a, b = np.arange(5) + 10.0, np.arange(5) * 0.1
    assert sp.wilcoxon(a, b).pvalue == pytest.approx(0.0625)
    assert sp.wilcoxon(np.append(a, 15), np.append(b, 0.5)).pvalue == pytest.approx(0.03125)
    assert sp.mannwhitneyu(a, b).pvalue == pytest.approx(2 / 252)
    assert stats.RANK_TEST_MIN_N == 6
    doc = " ".join((stats.__doc__ + stats.SeedComparison.rank_test_verdict.__doc__).split())
    assert "Wilcoxon" in doc and "Mann-Whitney" in doc and "a rank test cannot" not in doc


@pytest.mark.integration
def test_aso_is_deepsigs_and_orders_clear_cases_also_when_compared_in_worker_processes():
    from deepsig import aso

    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 5), rng.normal(0.0, 0.1, 5)
    c = stats.compare_seeds(a, b, higher_is_better=True, with_aso=True)
    assert c.aso_eps_min == aso(a, b, confidence_level=0.95, num_comparisons=1, seed=0, show_progress=False)
    assert c.aso_eps_min < stats.ASO_TAU
    # Two ASO comparisons go to one process per core; the seeded results are the same.
    same, reverse = stats.compare_many([(a, b, True, True), (a, b, False, True)])
    assert same == c
    # lower is better: B's scores are the better ones, so A does not dominate
    assert reverse.aso_eps_min > 0.5


def test_aso_of_scores_whose_resamples_coincide_is_deepsigs_without_its_warning():
    from deepsig import aso

    a, b = np.array([0.5, 0.5, 0.5, 0.5, 0.6]), np.full(5, 0.5)  # many resamples of a equal b
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eps = stats.aso_eps_min(a, b)
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        assert eps == aso(a, b, confidence_level=0.95, num_comparisons=1, seed=0, show_progress=False, num_jobs=1)
    assert raised, "deepsig itself warns here, so the test exercises the filter"


def test_holm_and_bh_match_statsmodels():
    p = [0.01, 0.04, 0.03, 0.20, 0.001]
    np.testing.assert_allclose(stats.correct(p, "holm"), multipletests(p, method="holm")[1])
    np.testing.assert_allclose(stats.correct(p, "fdr_bh"), multipletests(p, method="fdr_bh")[1])
    assert stats.correct([], "holm").size == 0
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 40):
        for p in (rng.random(size), rng.random(size) ** 4, np.round(rng.random(size), 1)):  # ties too
            for method in ("holm", "fdr_bh"):
                np.testing.assert_allclose(stats.correct(p, method), multipletests(p, method=method)[1])


def test_mcnemar_exact_matches_statsmodels():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 0, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    table = [[3, 4], [1, 2]]  # both, a only / b only, neither
    assert stats.mcnemar_exact(a, b) == pytest.approx(mcnemar(table, exact=True).pvalue)


def _predictions(rng, accuracy, speakers=12, per_speaker=20):
    n = speakers * per_speaker
    target = rng.integers(0, 4, n)
    correct = rng.random(n) < accuracy
    prediction = np.where(correct, target, (target + 1) % 4)
    return pd.DataFrame({"speaker": np.repeat([f"s{i}" for i in range(speakers)], per_speaker),
                         "target": target, "prediction": prediction})


def accuracy(columns):
    return float(np.mean(columns["target"] == columns["prediction"]))


def test_paired_bootstrap_resamples_whole_speakers_and_finds_a_real_difference():
    rng = np.random.default_rng(3)
    a = _predictions(rng, 0.9)
    b = a.copy()
    b["prediction"] = np.where(rng.random(len(b)) < 0.6, b["target"], (b["target"] + 1) % 4)
    seen = []

    def metric(columns):
        seen.append(np.unique(columns["speaker"], return_counts=True)[1])
        return accuracy(columns)

    result = stats.paired_bootstrap(a, b, metric, "speaker", resamples=200, seed=0)
    assert result.difference == pytest.approx(accuracy(a) - accuracy(b))
    assert result.ci_low > 0 and result.p_value < 0.05
    assert all(np.all(counts % 20 == 0) for counts in seen)  # speakers come whole (20 rows each)
    again = stats.paired_bootstrap(a, b, accuracy, "speaker", resamples=200, seed=0)
    assert again == stats.paired_bootstrap(a, b, accuracy, "speaker", resamples=200, seed=0)


def test_paired_bootstrap_of_a_model_with_itself_is_not_significant():
    a = _predictions(np.random.default_rng(4), 0.7)
    result = stats.paired_bootstrap(a, a.copy(), accuracy, "speaker", resamples=100, seed=0)
    assert result.difference == 0 and result.p_value == 1.0


def test_paired_bootstrap_skips_resamples_where_the_metric_is_undefined():
    from ctal_bench import catalog
    from ctal_bench.registry import TASKS

    catalog.load()
    verification = TASKS.get("verification")
    # enrolment speaker "a" has only target trials, "b" only non-target ones: a resample of
    # only "a" (or only "b") has no EER
    trials = pd.DataFrame({"enroll_speaker": ["a"] * 4 + ["b"] * 4, "target": [1] * 4 + [0] * 4,
                           "score": [0.9, 0.8, 0.7, 0.4, 0.5, 0.3, 0.2, 0.1]})
    assert math.isnan(verification.score_predictions(trials[trials["enroll_speaker"] == "a"]))
    other = trials.assign(score=trials["score"][::-1].to_numpy())
    result = stats.paired_bootstrap(trials, other, verification.score_predictions, "enroll_speaker",
                                    resamples=200, seed=0)
    assert 0 < result.resamples < 200 and math.isfinite(result.p_value)
    assert result.difference == pytest.approx(verification.score_predictions(trials)
                                              - verification.score_predictions(other))
