"""Positive and negative controls: did a suite detect the effects planted in its data?

Each declared control (``[control.NAME]`` in ctal_bench/ablations/) names comparisons: every ``better``
variant against every ``worse`` one on one task's metric, over the whole test set or a named
subset of it (synth's ``transfer``). Each comparison is a paired t-test over matched seeds; the
p-values of all the controls a suite can test form one family, corrected with Holm. A positive
control is "detected" when the corrected p is below ALPHA and the difference points the planted
way, "wrong direction" when it is significant the other way, else "not detected". A negative
control (expect = "none") passes when it is not detected.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ctal_bench.analysis import stats
from ctal_bench.analysis.tables import MIN_MARK_N, Entry, TableData, per_seed
from ctal_bench.declarations import Control
from ctal_bench.results import metric_column
from ctal_bench.train.metrics import HIGHER_IS_BETTER

ALPHA = 0.05


def testable(controls: Sequence[Control], cells: pd.DataFrame) -> list[Control]:
    """The controls whose every variant has cells here, on the control's task and dataset."""
    present = set(zip(cells["variant"], cells["task"], cells["dataset"]))
    return [c for c in controls if all((v, c.task, c.dataset) in present for v in (*c.better, *c.worse))]


def evaluate(controls: Sequence[Control], cells: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison of ``controls`` on the cells of one suite, dataset and scale.

    ``difference`` is mean(A - B) signed so that positive = A better (lower MAE or EER counts as
    better), with its 95% t-interval; ``p`` is the paired t-test's, ``p_holm`` after Holm over
    every comparison with at least MIN_MARK_N matched seeds (the tables' own minimum for a mark).
    """
    rows = []
    for control in controls:
        column = metric_column(control.metric, control.subset)
        sign = 1.0 if HIGHER_IS_BETTER[control.metric] else -1.0
        for a, b in control.pairs():
            x, y = (per_seed(cells, v, control.task, column, control.dataset) for v in (a, b))
            seeds = sorted(set(x.index) & set(y.index))
            row = {"control": control.name, "a": a, "b": b, "task": control.task, "metric": control.metric,
                   "subset": control.subset or "all", "expect": control.expect, "n": len(seeds),
                   "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
            if len(seeds) >= MIN_MARK_N:
                result = stats.compare_seeds(x[seeds].to_numpy(), y[seeds].to_numpy(), True)
                low, high = sorted((sign * result.ci_low, sign * result.ci_high))
                row.update(difference=sign * result.difference, ci_low=low, ci_high=high, p=result.p_value)
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    tested = out["p"].notna()
    out["p_holm"] = np.nan
    out.loc[tested, "p_holm"] = stats.correct(out.loc[tested, "p"].to_numpy(), "holm")
    out["outcome"] = [_outcome(row) for row in out.itertuples()]
    out["as_planted"] = [(o == "detected") if e == "better" else (o == "not detected")
                         for o, e in zip(out["outcome"], out["expect"])]
    return out


def _outcome(row) -> str:
    if np.isnan(row.p_holm):
        return f"untested (n={row.n})"
    if row.p_holm >= ALPHA:
        return "not detected"
    if row.expect == "none":
        return "detected"  # any significant difference is a false positive here
    return "detected" if row.difference > 0 else "wrong direction"


def table(results: pd.DataFrame, title: str) -> TableData:
    """The controls as a table for Markdown, LaTeX and the terminal."""
    n = sorted(results["n"].unique())
    caption = (f"Each row: A vs B on the test set (or its subset), paired over N = "
               f"{'-'.join(map(str, (n[0], n[-1]))) if len(n) > 1 else n[0]} seeds; difference = mean(A - B), "
               "positive = A better (lower MAE / EER counts as better), with its 95% t-interval; p from a "
               f"two-sided paired t-test, Holm-corrected over all {int(results['p'].notna().sum())} comparisons; "
               f"detected = p_Holm < {ALPHA}. Expected: A > B, or no difference for a negative control.")
    data = TableData("controls", title, caption,
                     ["A vs B", "task · metric · subset", "expected", "difference [95% CI]", "p (Holm)", "outcome"])
    for row in results.itertuples():
        expected = "A > B" if row.expect == "better" else "no difference"
        if np.isnan(row.difference):
            measured, p = "–", "–"
        else:
            measured = f"{row.difference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
            p = f"{row.p_holm:.3g}"
        outcome = row.outcome + ("" if row.as_planted else " (!)")
        data.rows.append((row.control, [Entry(f"{row.a} vs {row.b}"),
                                        Entry(f"{row.task} · {row.metric} · {row.subset}"),
                                        Entry(expected), Entry(measured), Entry(p),
                                        Entry(outcome, bold=not row.as_planted)]))
    data.notes.append("(!) not as planted: a finding to explain (too few seeds, too little pre-training, a bug), "
                      "never a reason to change what is planted.")
    return data
