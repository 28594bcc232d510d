"""Honest comparisons: across seeds, and per example from saved predictions.

Across seeds (the unit of replication): mean, sample std (ddof=1), N and the 95% t-interval;
a paired t-test on matched seeds with the t-interval of the mean difference; P(A > B) as
Mann-Whitney U / (m n); and, for N >= 5, the Almost Stochastic Order eps_min (Dror et al. 2019,
via ``deepsig``). No percentile bootstrap over seeds: it undercovers at small N. With N <= 5
matched seeds the paired rank test (Wilcoxon signed-rank) cannot reach p < 0.05 (its smallest
two-sided p is 2 / 2^5 = 0.0625), so its verdict there is "inconclusive", never "no difference";
the unpaired Mann-Whitney U can (2 / C(10, 5) = 0.0079 at 5 vs 5), but it ignores the pairing.
A difference that is the same on every seed has zero variance: the t statistic is undefined
(scipy answers t = inf, p = 0), so its p-value is NaN (``zero_variance``), never 0.

Per example (same test set, two models): exact McNemar on correctness, and a paired bootstrap
that resamples speakers (clusters), not utterances, for any metric of a predictions table.

Multiple comparisons are corrected over an explicit family (``correct``, statsmodels'
``multipletests`` numbers): Holm for main and ablation tables, Benjamini-Hochberg for sweeps. Every function takes the
metric's direction, so "better" means lower for MAE and EER.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ASO_TAU = 0.2  # eps_min below this: A almost stochastically dominates B
ASO_MIN_N = 5
RANK_TEST_MIN_N = 6  # with N <= 5 pairs the two-sided paired Wilcoxon cannot reach p < 0.05
ZERO_VARIANCE_ATOL = 1e-12  # differences this close are one value (rounding noise is not variance)


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float  # sample std, ddof=1 (NaN for N = 1)
    n: int
    ci_low: float  # 95% t-interval of the mean (NaN for N = 1)
    ci_high: float


def summarise(values: Sequence[float]) -> SeedSummary:
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = float(x.mean())
    if n == 1:
        return SeedSummary(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return SeedSummary(mean, std, n, mean - half, mean + half)


@dataclass(frozen=True)
class SeedComparison:
    """A against B on matched seeds. ``difference`` is mean(A - B) in the metric's own units."""

    n: int
    difference: float
    ci_low: float  # 95% t-interval of the mean difference
    ci_high: float
    p_value: float  # two-sided paired t-test; 1.0 when every difference is 0, NaN when all equal another value
    p_superiority: float  # P(A better than B) = U / (m n), ties counted half
    aso_eps_min: float  # Almost Stochastic Order, A over B; NaN for N < 5 or when not asked
    a_is_better: bool  # the mean difference points the metric's better way
    zero_variance: bool = False  # every seed's difference is the same: no t-test is defined

    @property
    def rank_test_verdict(self) -> str:
        """What the paired rank test (Wilcoxon signed-rank) can say at this N: "inconclusive" at
        N <= 5, where it cannot reach p < 0.05, else "testable". (The unpaired Mann-Whitney U
        behind ``p_superiority`` can reach 0.0079 at 5 vs 5; the limit is the paired test's.)"""
        return "inconclusive" if self.n < RANK_TEST_MIN_N else "testable"


def compare_seeds(a: Sequence[float], b: Sequence[float], higher_is_better: bool,
                  with_aso: bool = False, seed: int = 0) -> SeedComparison:
    """Paired comparison of two variants' per-seed scores (``a[i]`` and ``b[i]`` share seed i).

    ``with_aso`` adds the ASO eps_min (N >= 5): about 3 s each, so tables ask for it only where
    they report it.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two matched score vectors of length >= 2, got {a.shape} and {b.shape}")
    n = len(a)
    diff = a - b
    mean_diff = float(diff.mean())
    zero_variance = bool(np.all(np.abs(diff - diff[0]) <= ZERO_VARIANCE_ATOL))
    if zero_variance:  # the t statistic is undefined (scipy: inf, p = 0); no evidence either way
        p, low, high = (1.0 if abs(mean_diff) <= ZERO_VARIANCE_ATOL else math.nan), mean_diff, mean_diff
    else:
        test = stats.ttest_rel(a, b)
        interval = test.confidence_interval(CONFIDENCE)
        p, low, high = float(test.pvalue), float(interval.low), float(interval.high)
    sign = 1.0 if higher_is_better else -1.0
    u = stats.mannwhitneyu(sign * a, sign * b, alternative="two-sided").statistic
    return SeedComparison(
        n=n, difference=mean_diff, ci_low=low, ci_high=high, p_value=p,
        p_superiority=float(u) / (n * n),
        aso_eps_min=aso_eps_min(sign * a, sign * b, seed) if with_aso and n >= ASO_MIN_N else math.nan,
        a_is_better=sign * mean_diff > 0, zero_variance=zero_variance)


def compare_many(pairs: Sequence[tuple[Sequence[float], Sequence[float], bool, bool]]) -> list[SeedComparison]:
    """``compare_seeds(a, b, higher_is_better, with_aso)`` for each pair, in order. ASO takes
    seconds per comparison and runs on one core, so with two or more ASO comparisons the pairs
    are spread over one process per core (each ASO is seeded: the same results either way)."""
    with_aso = sum(1 for a, _, _, aso in pairs if aso and len(a) >= ASO_MIN_N)  # below ASO_MIN_N none is run
    workers = min(with_aso, os.cpu_count() or 1)
    if workers < 2:
        return [compare_seeds(*pair) for pair in pairs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compare_pair, pairs))


def _compare_pair(pair) -> SeedComparison:
    return compare_seeds(*pair)


def aso_eps_min(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """eps_min of "A is almost stochastically better than B" (higher = better): below
    ASO_TAU, A dominates; 0.5 means no order either way."""
    from deepsig import aso

    # With 5 seeds some bootstrap resamples of a and b coincide; deepsig then warns of a division
    # by zero and scores that resample 0.5 (no order), which is the right answer, so the warning
    # is noise in a report's output.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Division by zero encountered in violation ratio")
        return float(aso(a, b, confidence_level=CONFIDENCE, num_comparisons=1, seed=seed,
                         show_progress=False, num_jobs=1))


def correct(p_values: Sequence[float], method: str) -> np.ndarray:
    """Adjusted p-values over one family: ``holm`` (step-down) or ``fdr_bh`` (Benjamini-Hochberg
    step-up); the same numbers as statsmodels' ``multipletests``, which costs a garbage collection
    (30 ms) per call."""
    p = np.asarray(p_values, dtype=float)
    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"correction {method!r}: expected holm or fdr_bh")
    if p.size == 0:
        return p
    m = p.size
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":  # p_(i) * (m - i + 1), made monotone from the smallest up
        adjusted = np.maximum.accumulate(np.minimum(1.0, ranked * (m - np.arange(m))))
    else:  # p_(i) * m / i, made monotone from the largest down
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


# ---- per example ------------------------------------------------------------------------------

def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Exact McNemar p-value for two classifiers' correctness on the same examples."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


@dataclass(frozen=True)
class BootstrapComparison:
    difference: float  # metric(A) - metric(B) on the full test set
    ci_low: float  # percentile interval over speaker resamples
    ci_high: float
    p_value: float  # two-sided: how often the resampled difference reaches 0, (k + 1) / (R + 1)
    resamples: int  # those with the metric defined on both sides


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, metric: Callable[[Mapping[str, np.ndarray]], float],
                     cluster: str, resamples: int = 1000, seed: int = 0) -> BootstrapComparison:
    """Resample clusters (speakers) with replacement; score A and B on the same resample.

    ``a`` and ``b`` are predictions of the same examples in the same order (rows aligned);
    ``metric`` maps a predictions table's columns (name -> array) to a number. Resampling
    arrays, not DataFrames: a pandas row selection cost more than most metrics.
    """
    if len(a) != len(b):
        raise ValueError(f"predictions differ in length: {len(a)} vs {len(b)}")
    groups = pd.Index(a[cluster]).to_numpy()
    names, codes = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(codes == i) for i in range(len(names))]
    rng = np.random.default_rng(seed)
    columns_a = {name: a[name].to_numpy() for name in a.columns}
    columns_b = {name: b[name].to_numpy() for name in b.columns}
    observed = metric(columns_a) - metric(columns_b)
    diffs = np.empty(resamples)
    for r in range(resamples):
        chosen = rng.integers(0, len(names), size=len(names))
        rows = np.concatenate([members[i] for i in chosen])
        diffs[r] = (metric({name: values[rows] for name, values in columns_a.items()})
                    - metric({name: values[rows] for name, values in columns_b.items()}))
    diffs = diffs[np.isfinite(diffs)]  # a resample can leave a metric undefined (NaN)
    if not len(diffs):
        return BootstrapComparison(float(observed), math.nan, math.nan, math.nan, 0)
    low, high = np.quantile(diffs, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    # (k + 1) / (R + 1): a resampling p-value is never exactly 0
    p = min(1.0, 2 * (min(np.sum(diffs <= 0), np.sum(diffs >= 0)) + 1) / (len(diffs) + 1))
    return BootstrapComparison(float(observed), float(low), float(high), float(p), len(diffs))
