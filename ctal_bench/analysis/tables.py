"""The paper's tables from a cells frame (``results.frame``): Markdown, LaTeX (booktabs), rich.

A table is of one dataset and one scale (``report.table_groups`` splits a suite's cells; a
builder given several raises ValueError): numbers from different datasets are never averaged.
Every number is a mean +- sample std over seeds (folds are averaged within a seed first, so N
is the number of seeds; a seed missing a fold, or with a NaN metric, is left out rather than
averaged over what remains). Marks come from paired t-tests on matched seeds against a
reference, corrected over the table's whole family (``stats.correct``): † at 0.05, ‡ at 0.01;
no mark below MIN_MARK_N = 3 matched seeds, nor where the difference is the same on every seed
(zero variance: the t-test is undefined; a note names it). A mean over fewer seeds than the
table's N shows "(n=k)" and is never bold; failed cells and NaN metrics are listed under the
table. Each caption states N, the test, the correction, alpha, the metric directions, the data,
the scale and the fine-tuning budget. A variant whose selected epoch came late in its budget
for several seeds is marked ˢ (``still_improving``): its number may be short of what more
epochs would give.

LaTeX (``to_latex``) is made to paste into a two-column ACL / EMNLP paper: task over its metrics
(``\\cmidrule``), compact cells (0.450 with a subscript ±.044), the cost columns only when
asked, ``table`` where the table fits a column and ``table*`` where it does not, scaled to the
line as a last resort. The terminal's tables (``to_rich``, ``print_rich``) never cut a name or
a number, also in a pipe.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ctal_bench.analysis import stats
from ctal_bench.registry import TASKS
from ctal_bench.train.metrics import HIGHER_IS_BETTER

ALPHAS = (0.05, 0.01)
MARKS = ("†", "‡")  # significant at ALPHAS[0] / ALPHAS[1] after correction
LATE_SHARE = Fraction(1, 5)  # the end of a budget where a selected epoch says "still improving"
IMPROVING_SEEDS = 2  # one seed peaking late can be chance; two are a pattern
MIN_MARK_N = 3  # no significance mark on fewer matched seeds: a t-test on two rests on one difference of differences
IMPROVING_MARK = "ˢ"
IMPROVING_NOTE = (f"{IMPROVING_MARK} best dev epoch in the last {float(LATE_SHARE):.0%} of the budget for at "
                  f"least {IMPROVING_SEEDS} seeds: still improving, more epochs might change this number.")


@dataclass
class Entry:
    text: str = "–"
    bold: bool = False
    mark: str = ""  # significance
    flag: str = ""  # IMPROVING_MARK or ""
    suffix: str = ""  # " (n=k)" for a mean over fewer seeds than the table's N

    @property
    def shown(self) -> str:
        return self.text + self.mark + self.flag + self.suffix


@dataclass
class TableData:
    name: str  # file stem under results/tables/
    title: str
    caption: str
    columns: list[str]  # header labels after the row-label column
    rows: list[tuple[str, list[Entry]]] = field(default_factory=list)
    comparisons: pd.DataFrame | None = None  # every test behind the marks, one row each
    notes: list[str] = field(default_factory=list)  # footnotes, printed under the table
    groups: list[tuple[str, int]] = field(default_factory=list)  # LaTeX: header groups (label, columns spanned)
    subcolumns: list[str] = field(default_factory=list)  # LaTeX: the header row under ``groups``, one per column
    efficiency: int = 0  # trailing columns of cost (parameters, throughput, FLOPs): LaTeX shows them when asked
    efficiency_caption: str = ""  # the caption's sentences about those columns

    def full_caption(self, efficiency: bool = True) -> str:
        return self.caption + (self.efficiency_caption if efficiency and self.efficiency else "")


def _one_group(rows: pd.DataFrame, what: str) -> None:
    """A ValueError where ``rows`` hold more than one dataset or scale: never a mean across them."""
    for column in ("dataset", "scale"):
        found = sorted({str(v) for v in rows[column].dropna()}) if column in rows else []
        if len(found) > 1:
            raise ValueError(f"{what}: cells of {column}s {', '.join(found)}; build one table per dataset and "
                             "scale (report.table_groups), never a mean across them")


def per_seed(cells: pd.DataFrame, variant: str, task: str, metric: str, dataset: str | None = None) -> pd.Series:
    """seed -> the metric averaged over that seed's folds, for one variant and task on one dataset.

    A seed counts only where every fold of the task (every fold any variant has in ``cells``) has
    a finite value: a failed fold or a NaN metric leaves the seed out, rather than averaging the
    folds that remain. Without ``dataset`` the rows must hold one dataset and one scale (else
    ValueError): numbers from different datasets or scales are never averaged.
    """
    of_task = cells[cells["task"] == task]
    if dataset is not None:
        of_task = of_task[of_task["dataset"] == dataset]
    own = of_task[of_task["variant"] == variant]
    _one_group(own, f"{variant} on {task}")
    if own.empty or metric not in own:
        return pd.Series(dtype=float)
    values = own.groupby("seed")[metric]
    complete = values.count() == of_task["fold"].nunique()
    return values.mean()[complete]


def still_improving(best_epoch: int, epochs: int) -> bool:
    """Whether a cell's selected epoch (0-based) lies in the last 20% of its budget of ``epochs``:
    dev was still getting better when the budget ran out. Exact fractions: of 10 epochs the 9th
    and 10th count, the 8th does not; of 30, the 25th to the 30th."""
    return best_epoch + 1 > (1 - LATE_SHARE) * epochs


def improving_seeds(cells: pd.DataFrame, variant: str, task: str) -> int:
    """How many seeds of ``variant`` on ``task`` are still improving (``still_improving``) in
    any of their folds; cells without a known budget do not count."""
    own = cells[(cells["variant"] == variant) & (cells["task"] == task)].dropna(subset=["best_epoch", "epochs"])
    late = [still_improving(int(b), int(e)) for b, e in zip(own["best_epoch"], own["epochs"])]
    return own.loc[np.array(late, dtype=bool), "seed"].nunique()


def _flag(cells: pd.DataFrame, variant: str, task: str) -> str:
    return IMPROVING_MARK if improving_seeds(cells, variant, task) >= IMPROVING_SEEDS else ""


def _note_flags(table: TableData) -> None:
    """Explain the still-improving mark under a table that shows it."""
    if any(entry.flag for _, entries in table.rows for entry in entries):
        table.notes.append(IMPROVING_NOTE)


def _budget_text(epochs: float, patience: float) -> str:
    if 0 < patience < epochs:
        return f"up to {epochs:.0f} epochs, early stopping after {patience:.0f} epochs without dev improvement"
    return f"{epochs:.0f} epochs without early stopping"  # patience 0 never stops; >= epochs cannot


def budget_sentence(cells: pd.DataFrame, variants: Sequence[str], tasks: Sequence[str]) -> str:
    """The fine-tuning budget of these variants' cells, for a caption. Where budgets differ (a
    suite's declared exception), each is named with its variants (and tasks, where a variant's
    budget differs between tasks), the most common first. "" when no cell records its budget."""
    own = cells[cells["variant"].isin(variants) & cells["task"].isin(tasks)].dropna(subset=["epochs", "patience"])
    if own.empty:
        return ""
    budgets = own.groupby(["epochs", "patience"]).size().sort_values(ascending=False, kind="stable").index
    if len(budgets) == 1:
        return f" Budget: {_budget_text(*budgets[0])}, best dev epoch selected."
    parts = []
    for epochs, patience in budgets:
        given = own[(own["epochs"] == epochs) & (own["patience"] == patience)]
        names = []
        for variant in ordered(variants, given["variant"].unique()):
            with_it = ordered(tasks, given.loc[given["variant"] == variant, "task"].unique())
            every = own.loc[own["variant"] == variant, "task"].nunique() == len(with_it)
            names.append(variant if every else f"{variant} ({', '.join(with_it)})")
        parts.append(f"{_budget_text(epochs, patience)} for {', '.join(names)}")
    return " Budgets differ: " + "; ".join(parts) + "; best dev epoch selected."


def _arrow(metric: str) -> str:
    return "↑" if HIGHER_IS_BETTER[metric] else "↓"


def _columns(tasks: Sequence[str], metrics_of) -> list[tuple[str, str]]:
    return [(task, metric) for task in tasks for metric in metrics_of(task)]


def _groups(columns: Sequence[tuple[str, str]]) -> list[tuple[str, int]]:
    """(task, its number of columns) for (task, metric) columns: the LaTeX header's upper row."""
    groups: list[tuple[str, int]] = []
    for task, _ in columns:
        if groups and groups[-1][0] == task:
            groups[-1] = (task, groups[-1][1] + 1)
        else:
            groups.append((task, 1))
    return groups


def _describe(cells: pd.DataFrame) -> str:
    datasets = ", ".join(sorted(cells["dataset"].unique()))
    scales = ", ".join(sorted(s for s in cells["scale"].unique() if s)) or "unnamed"
    return f"test split of {datasets}, scale {scales}"


def _n_text(ns: set[int]) -> str:
    return f"N = {min(ns)}" if len(ns) == 1 else f"N = {min(ns)}-{max(ns)}"


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


# (variant, task, metric) -> (comparison with its reference, corrected p; NaN where not tested)
Tests = dict[tuple[str, str, str], tuple[stats.SeedComparison, float]]


def _summary_text(values: pd.Series, interval: bool = False) -> str:
    """mean +- sample std, or mean [95% t-interval]; the mean alone for one seed."""
    s = stats.summarise(values.to_numpy())
    if s.n < 2:
        return _fmt(s.mean)
    return f"{_fmt(s.mean)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]" if interval else f"{_fmt(s.mean)} ± {_fmt(s.std)}"


def _n_suffix(n: int, table_n: int) -> str:
    """" (n=k)" after a mean over fewer seeds than the table's N."""
    return f" (n={n})" if n < table_n else ""


def _n_sentence(table: TableData, table_n: int, bold: bool = False) -> None:
    """Explain "(n=k)" in the caption of a table that shows it (and, in one that bolds the best
    mean, that such a mean is never bold)."""
    if any(entry.suffix for _, entries in table.rows for entry in entries):
        table.caption += (f" (n=k): a mean over k seeds, fewer than the table's N = {table_n} (failed cells or NaN "
                          "metrics, listed below)" + ("; such a mean is never bold." if bold else "."))


def _paired_difference(cells: pd.DataFrame, variant: str, reference: str, task: str, metric: str) -> float | None:
    """mean(variant - reference) over the seeds both have, or None where they share none."""
    a, b = per_seed(cells, variant, task, metric), per_seed(cells, reference, task, metric)
    seeds = sorted(set(a.index) & set(b.index))
    return float((a[seeds] - b[seeds]).mean()) if seeds else None


def _compared_rows(table: TableData, cells: pd.DataFrame, variants: Sequence[str], reference: str,
                   metrics: dict[str, str], tests: Tests, interval: bool, worse_only: bool) -> int:
    """One row per variant and one column per task's metric, marked from ``tests``: only where
    worse (``worse_only``, with the signed paired difference from ``reference`` shown) or
    wherever different. Returns the table's N (the most seeds behind any mean)."""
    values = {(v, t): per_seed(cells, v, t, m) for v in variants for t, m in metrics.items()}
    table_n = max((len(x) for x in values.values()), default=0)
    for variant in variants:
        entries = []
        for task, metric in metrics.items():
            own = values[(variant, task)]
            if not len(own):
                entries.append(Entry())
                continue
            text = _summary_text(own, interval)
            if worse_only and variant != reference:
                delta = _paired_difference(cells, variant, reference, task, metric)
                text += "" if delta is None else f" (Δ {delta:+.3f})"
            comparison, p = tests.get((variant, task, metric), (None, math.nan))
            mark = significance_mark(comparison, p, "worse" if worse_only else "either")
            entries.append(Entry(text, mark=mark, flag=_flag(cells, variant, task),
                                 suffix=_n_suffix(len(own), table_n)))
        table.rows.append((variant, entries))
    _note_flags(table)
    return table_n


def test_family(matched: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, bool, bool]],
                method: str) -> Tests:
    """Compare each (a, b, higher_is_better, with_aso) of ``matched`` (matched seeds, at least 2)
    and correct the p-values of one family with ``method``. The family holds the comparisons
    with at least MIN_MARK_N seeds and a defined t-test; the rest (too few seeds, or a
    difference the same on every seed: zero variance) keep a corrected p of NaN and no mark."""
    found = dict(zip(matched, stats.compare_many(list(matched.values()))))
    family = [key for key, c in found.items() if c.n >= MIN_MARK_N and not math.isnan(c.p_value)]
    adjusted = dict(zip(family, stats.correct([found[key].p_value for key in family], method)))
    return {key: (c, float(adjusted.get(key, math.nan))) for key, c in found.items()}


def _significance(cells: pd.DataFrame, pairs: list[tuple[str, str, str, str]], method: str,
                  aso: bool) -> Tests:
    """``test_family`` over every pair (variant, reference, task, metric) with at least two
    matched seeds. With ``aso``, ASO is computed for each task's selection metric (it costs
    seconds per comparison)."""
    matched = {}
    for variant, reference, task, metric in pairs:
        a, b = per_seed(cells, variant, task, metric), per_seed(cells, reference, task, metric)
        seeds = sorted(set(a.index) & set(b.index))
        if len(seeds) >= 2:
            matched[(variant, task, metric)] = (a[seeds].to_numpy(), b[seeds].to_numpy(), HIGHER_IS_BETTER[metric],
                                                aso and metric == TASKS.get(task).selection_metric)
    return test_family(matched, method)


def _family_size(tests: Tests) -> int:
    return sum(1 for _, p in tests.values() if not math.isnan(p))


def _comparisons(tests: Tests, reference: str, method: str) -> pd.DataFrame:
    rows = [{"variant": variant, "reference": reference, "task": task, "metric": metric, "n": c.n,
             "difference": c.difference, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p_value,
             f"p_{method}": p, "p_superiority": c.p_superiority, "aso_eps_min": c.aso_eps_min,
             "better": c.a_is_better, "zero_variance": c.zero_variance}
            for (variant, task, metric), (c, p) in tests.items()]
    return pd.DataFrame(rows)


def _mark(p_adjusted: float) -> str:
    mark = ""
    for alpha, symbol in zip(ALPHAS, MARKS):
        if p_adjusted < alpha:
            mark = symbol
    return mark


def significance_mark(comparison: stats.SeedComparison | None, p_adjusted: float, direction: str) -> str:
    """The mark of one comparison: † / ‡ where the corrected p is below ALPHAS and the difference
    points ``direction``: "better" (than the reference), "worse", or "either". None, or a NaN p
    (not in the family: too few seeds, zero variance), gives no mark."""
    if comparison is None or math.isnan(p_adjusted):
        return ""
    if (direction == "better" and not comparison.a_is_better) or (direction == "worse" and comparison.a_is_better):
        return ""
    return _mark(p_adjusted)


def _test_sentence(family: int, method: str, direction: str, reference: str, n_text: str) -> str:
    correction = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg"}[method]
    if not family:
        return (f"No significance marks: no mark below N = {MIN_MARK_N} matched seeds or where the t-test is "
                f"undefined, which leaves no comparison here ({n_text}).")
    return (f"{MARKS[0]} / {MARKS[1]}: {direction} {reference} in a two-sided paired t-test on matched "
            f"seeds, {correction}-corrected over the {family} comparisons in this table, at "
            f"alpha = {ALPHAS[0]} / {ALPHAS[1]}; no mark below N = {MIN_MARK_N} matched seeds.")


def _zero_variance_note(table: TableData, tests: Tests) -> None:
    """Name the comparisons whose difference is the same on every seed: no t-test, no mark."""
    constant = [f"{variant} on {task} {metric} ({c.difference:+.3f} on each of {c.n} seeds)"
                for (variant, task, metric), (c, _) in tests.items() if c.zero_variance and c.difference != 0]
    if constant:
        table.notes.append("Difference from the reference the same on every seed (zero variance: the t-test is "
                           "undefined, so no mark): " + "; ".join(constant) + ".")


def _seed_text(rows: pd.DataFrame, folds: int) -> str:
    """"seed 4", "seeds 2, 3, 4", or with several folds "seed 2 (fold 1), seed 3 (folds 1, 2)"."""
    seeds = sorted(rows["seed"].unique())
    if folds <= 1:
        return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))
    parts = []
    for seed in seeds:
        own = sorted(rows.loc[rows["seed"] == seed, "fold"].astype(str).unique())
        parts.append(f"seed {seed} (fold{'s' * (len(own) > 1)} {', '.join(own)})")
    return ", ".join(parts)


def _missing_notes(table: TableData, cells: pd.DataFrame, failed: pd.DataFrame | None, variants: Sequence[str],
                   columns: Sequence[tuple[str, str]]) -> None:
    """List under the table what its means leave out: NaN metrics and failed cells."""
    folds = {task: cells.loc[cells["task"] == task, "fold"].nunique() for task, _ in columns}
    undefined = []
    for variant in variants:
        for task, metric in columns:
            own = cells[(cells["variant"] == variant) & (cells["task"] == task)]
            bad = own[own[metric].isna()] if metric in own else own
            if len(bad):
                undefined.append(f"{variant} · {task} · {metric}: {_seed_text(bad, folds[task])}")
    if undefined:
        table.notes.append("NaN metrics, left out of the means (e.g. Pearson r of a constant prediction): "
                           + "; ".join(undefined) + ".")
    if failed is None or failed.empty:
        return
    tasks = list(dict.fromkeys(task for task, _ in columns))
    mine = failed[failed["variant"].isin(variants) & failed["task"].isin(tasks)
                  & failed["dataset"].isin(set(cells["dataset"]))]
    lines = []
    for variant in variants:
        for task in tasks:
            own = mine[(mine["variant"] == variant) & (mine["task"] == task)]
            for reason, rows in own.groupby("reason", sort=False):
                seeds = _seed_text(rows, max(folds.get(task, 1), rows["fold"].nunique()))
                lines.append(f"{variant} · {task} · {seeds}: {reason}")
    if lines:
        table.notes.append("Failed cells, left out of the means: " + "; ".join(lines) + ".")


def _profile_sentence(profiles: dict[str, dict] | None) -> str:
    if not profiles:
        return ""
    first = next(iter(profiles.values()))
    return (f" GFLOPs/sample (fine-tuning step) and b1 ms (median batch-1 latency) from bench.py profile "
            f"({first['environment']['device']}, {first['dtype']}, scale {first['scale']}).")


def main_table(cells: pd.DataFrame, models: Sequence[str], tasks: Sequence[str], reference: str,
               aso: bool = True, profiles: dict[str, dict] | None = None,
               failed: pd.DataFrame | None = None) -> TableData:
    """Models x (task, metric) on one dataset and scale: mean +- std, bold best (among the means
    over the most seeds), marks where better than ``reference``; a mean over fewer seeds than the
    table's N shows its n. ``failed`` (``report.failures``) and NaN metrics are listed under the
    table. With ``profiles`` (model -> its ``bench.py profile`` record), FLOPs and batch-1 latency too."""
    _one_group(cells, "main table")
    columns = _columns(tasks, lambda task: TASKS.get(task).table_metrics)
    pairs = [(m, reference, t, metric) for m in models if m != reference for t, metric in columns]
    tests = _significance(cells, pairs, "holm", aso)
    means = {(m, t, metric): per_seed(cells, m, t, metric) for m in models for t, metric in columns}
    table_n = max((len(s) for s in means.values()), default=0)
    best = {}
    for t, metric in columns:
        most = max(len(means[(m, t, metric)]) for m in models) if models else 0
        scored = {m: s.mean() for m in models if len(s := means[(m, t, metric)]) and len(s) == most}
        if scored:
            pick = max if HIGHER_IS_BETTER[metric] else min
            best[(t, metric)] = pick(scored, key=scored.get)
    ns = {len(s) for s in means.values() if len(s)} or {0}
    efficiency = ["params", "samples/s"] + (["GFLOPs/sample", "b1 ms"] if profiles else [])
    table = TableData(
        "main", "CTAL and baselines",
        f"Mean ± sample std over seeds ({_n_text(ns)}; {_describe(cells)}). Bold: best mean. "
        + (_test_sentence(_family_size(tests), "holm", "better than", reference, _n_text(ns)) if reference in models
           else f"No significance marks: the reference {reference} has no cells here.")
        + budget_sentence(cells, models, tasks) + " ↑ higher is better, ↓ lower is better.",
        [f"{t} {metric} {_arrow(metric)}" for t, metric in columns] + efficiency,
        groups=_groups(columns) + [("cost", len(efficiency))],
        subcolumns=[f"{metric} {_arrow(metric)}" for _, metric in columns] + efficiency,
        efficiency=len(efficiency),
        efficiency_caption=" Params: trainable parameters; samples/s: training throughput of the cell (mean over "
                           "cells)." + _profile_sentence(profiles))
    for model in models:
        entries = []
        for t, metric in columns:
            values = means[(model, t, metric)]
            if not len(values):
                entries.append(Entry())
                continue
            comparison, p = tests.get((model, t, metric), (None, math.nan))
            flag = _flag(cells, model, t) if metric == TASKS.get(t).selection_metric else ""
            entries.append(Entry(_summary_text(values), best.get((t, metric)) == model,
                                 significance_mark(comparison, p, "better"), flag, _n_suffix(len(values), table_n)))
        own = cells[cells["variant"] == model]
        params = own["parameters"].dropna()
        speed = own["train_samples_per_second"].dropna()
        entries.append(Entry(f"{params.median() / 1e6:.2f}M" if len(params) else "–"))
        entries.append(Entry(f"{speed.mean():.0f}" if len(speed) else "–"))
        if profiles:
            profile = profiles.get(model)
            entries += [Entry(), Entry()] if profile is None else [
                Entry(f"{profile['phases']['finetune']['flops_per_sample'] / 1e9:.3f}"),
                Entry(f"{profile['phases']['latency_batch1']['median']['p50_s'] * 1e3:.1f}")]
        table.rows.append((model + (" (reference)" if model == reference else ""), entries))
    table.comparisons = _comparisons(tests, reference, "holm")
    _n_sentence(table, table_n, bold=True)
    _note_flags(table)
    _zero_variance_note(table, tests)
    _missing_notes(table, cells, failed, models, columns)
    return table


def ablation_table(cells: pd.DataFrame, full: str, variants: Sequence[str], tasks: Sequence[str],
                   aso: bool = True, failed: pd.DataFrame | None = None) -> TableData:
    """Full CTAL first, then each variant, on one dataset and scale: mean +- std and the signed
    paired difference, marked where significantly worse than full CTAL."""
    _one_group(cells, "ablation table")
    metrics = {t: TASKS.get(t).selection_metric for t in tasks}
    pairs = [(v, full, t, metrics[t]) for v in variants for t in tasks]
    tests = _significance(cells, pairs, "holm", aso)
    ns = {len(per_seed(cells, v, t, metrics[t])) for v in [full, *variants] for t in tasks} - {0} or {0}
    table = TableData(
        "ablations", "Ablations of CTAL",
        f"Mean ± sample std over seeds ({_n_text(ns)}; {_describe(cells)}); Δ = mean paired "
        f"difference from full CTAL ({full}). "
        + _test_sentence(_family_size(tests), "holm", "worse than", full, _n_text(ns))
        + budget_sentence(cells, [full, *variants], tasks) + " ↑ higher is better, ↓ lower is better.",
        [f"{t} {metrics[t]} {_arrow(metrics[t])}" for t in tasks], groups=_groups(list(metrics.items())),
        subcolumns=[f"{metrics[t]} {_arrow(metrics[t])}" for t in tasks])
    table_n = _compared_rows(table, cells, [full, *variants], full, metrics, tests, interval=False, worse_only=True)
    table.comparisons = _comparisons(tests, full, "holm")
    _n_sentence(table, table_n)
    _zero_variance_note(table, tests)
    _missing_notes(table, cells, failed, [full, *variants], list(metrics.items()))
    return table


def sweep_table(cells: pd.DataFrame, sweep: str, full: str, tasks: Sequence[str], aso: bool = True,
                failed: pd.DataFrame | None = None) -> TableData:
    """One row per swept value, on one dataset and scale: mean and 95% t-interval; marks where
    different from full CTAL (Benjamini-Hochberg over the sweep)."""
    _one_group(cells, "sweep table")
    own = cells[cells["ablation"] == sweep]
    variants = list(own.sort_values("sweep_value")["variant"].drop_duplicates())
    metrics = {t: TASKS.get(t).selection_metric for t in tasks}
    pairs = [(v, full, t, metrics[t]) for v in variants for t in tasks]
    tests = _significance(cells, pairs, "fdr_bh", aso)
    ns = {len(per_seed(cells, v, t, metrics[t])) for v in variants for t in tasks} - {0} or {0}
    table = TableData(
        f"sweep-{sweep}", f"Sweep over {sweep}",
        f"Mean [95% t-interval] over seeds ({_n_text(ns)}; {_describe(cells)}). "
        + _test_sentence(_family_size(tests), "fdr_bh", "different from full CTAL", f"({full})", _n_text(ns))
        + budget_sentence(cells, variants, tasks) + " ↑ higher is better, ↓ lower is better.",
        [f"{t} {metrics[t]} {_arrow(metrics[t])}" for t in tasks], groups=_groups(list(metrics.items())),
        subcolumns=[f"{metrics[t]} {_arrow(metrics[t])}" for t in tasks])
    table_n = _compared_rows(table, cells, variants, full, metrics, tests, interval=True, worse_only=False)
    table.comparisons = _comparisons(tests, full, "fdr_bh")
    _n_sentence(table, table_n)
    _zero_variance_note(table, tests)
    _missing_notes(table, cells, failed, variants, list(metrics.items()))
    return table


def per_example(cells: pd.DataFrame, models: Sequence[str], reference: str,
                predictions: Callable[[str], pd.DataFrame | None], resamples: int = 1000) -> pd.DataFrame:
    """Each model against ``reference`` on the same test examples, seed by seed (and fold by
    fold), from the saved predictions (``predictions(cell_id)``, the results store's reader; a
    pair with one unreadable is left out): the selection metric's difference with a paired bootstrap
    over speakers (clusters), and for emotion the exact McNemar test on correctness. Holm over
    the bootstrap p-values of the whole family."""
    rows = []
    for model in models:
        if model == reference:
            continue
        own = cells[cells["variant"] == model]
        for _, cell in own.iterrows():
            match = cells[(cells["variant"] == reference) & (cells["task"] == cell["task"])
                          & (cells["fold"] == cell["fold"]) & (cells["seed"] == cell["seed"])]
            if len(match) != 1:
                continue
            a, b = predictions(cell["cell_id"]), predictions(match["cell_id"].iloc[0])
            if a is None or b is None:
                continue
            task = TASKS.get(cell["task"])
            b = b.set_index(list(task.row_keys)).loc[a.set_index(list(task.row_keys)).index].reset_index()
            boot = stats.paired_bootstrap(a, b, task.score_predictions, task.cluster, resamples,
                                          seed=int(cell["seed"]))
            row = {"variant": model, "reference": reference, "task": cell["task"], "fold": cell["fold"],
                   "seed": cell["seed"], "metric": task.selection_metric, "difference": boot.difference,
                   "ci_low": boot.ci_low, "ci_high": boot.ci_high, "p_bootstrap": boot.p_value,
                   "clusters": a[task.cluster].nunique()}
            if cell["task"] == "emotion":
                row["p_mcnemar"] = stats.mcnemar_exact(a["target"] == a["prediction"],
                                                       b["target"] == b["prediction"])
            rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table["p_bootstrap_holm"] = stats.correct(table["p_bootstrap"], "holm")
    return table


def convergence(cells: pd.DataFrame, variants: Sequence[str], tasks: Sequence[str]) -> pd.DataFrame:
    """Whether the budget was enough, one row per variant, task and budget: the cells, the budget,
    the median selected epoch (1-based), how many cells are still improving
    (``still_improving``) and how many stopped early (trained fewer epochs than the budget).
    Counts are NA where no cell records what they need (records from before budgets were kept)."""
    rows = []
    for variant in variants:
        for task in tasks:
            own = cells[(cells["variant"] == variant) & (cells["task"] == task)]
            for (epochs, patience), group in own.groupby(["epochs", "patience"], dropna=False):
                known = group.dropna(subset=["best_epoch", "epochs"])
                trained = group.dropna(subset=["epochs_trained", "epochs"])
                rows.append({
                    "variant": variant, "task": task, "cells": len(group), "epochs": epochs, "patience": patience,
                    "median_best_epoch": (group["best_epoch"] + 1).median(),
                    "still_improving": sum(still_improving(int(b), int(e))
                                           for b, e in zip(known["best_epoch"], known["epochs"]))
                    if len(known) else pd.NA,
                    "stopped_early": int((trained["epochs_trained"] < trained["epochs"]).sum())
                    if len(trained) else pd.NA})
    columns = ["variant", "task", "cells", "epochs", "patience", "median_best_epoch", "still_improving",
               "stopped_early"]
    counts = ["epochs", "patience", "still_improving", "stopped_early"]
    return pd.DataFrame(rows, columns=columns).astype({c: "Int64" for c in counts})


def convergence_table(summary: pd.DataFrame) -> TableData:
    """``convergence``'s rows as a table, one row per variant and task."""
    table = TableData(
        "convergence", "Convergence within the fine-tuning budget",
        "Per variant and task, over seeds and folds: the cells, their budget (epochs, patience), the "
        "median selected (best dev) epoch, 1-based; still improving: cells whose selected epoch lies in the "
        f"last {float(LATE_SHARE):.0%} of the budget; stopped early: cells that stopped before the budget's "
        "last epoch because dev stopped improving.",
        ["task", "cells", "epochs", "patience", "median best epoch", "still improving", "stopped early"])
    for row in summary.itertuples(index=False):
        values = [row.task, row.cells, row.epochs, row.patience, row.median_best_epoch, row.still_improving,
                  row.stopped_early]
        table.rows.append((row.variant, [Entry("–" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v))
                                         for v in values]))
    return table


# ---- rendering ----------------------------------------------------------------------------------

def to_markdown(table: TableData) -> str:
    def cell(entry: Entry) -> str:
        return f"**{entry.shown}**" if entry.bold else entry.shown

    lines = [f"**{table.title}.** {table.full_caption()}", "",
             "| " + " | ".join(["", *table.columns]) + " |",
             "|" + "---|" + "---:|" * len(table.columns)]
    for label, entries in table.rows:
        lines.append("| " + " | ".join([label, *map(cell, entries)]) + " |")
    for note in table.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$", "↑": r"$\uparrow$",
                  "↓": r"$\downarrow$", "Δ": r"$\Delta$", "–": "--", "·": r"$\cdot$",
                  IMPROVING_MARK: r"\textsuperscript{s}"}
# The parts of a cell that LaTeX sets small: the spread of a mean, its interval, a Δ and an n.
_COMPACT = re.compile(r"(?P<mean>-?\d+\.\d+) ± (?P<std>\d+\.\d+)"
                      r"| ?\[(?P<low>-?\d+\.\d+), (?P<high>-?\d+\.\d+)\]"
                      r"| ?\(Δ (?P<delta>[+-]\d+\.\d+)\)"
                      r"| ?\(n=(?P<n>\d+)\)")
COLUMN_WIDTH_PT = 219.0  # one column of a two-column ACL / EMNLP page (7.7 cm); wider tables span both
_CHAR_PT, _SMALL_CHAR_PT, _PADDING_PT = 4.4, 3.3, 8.0  # \footnotesize estimates, and 2 \tabcolsep per column
# A table wider than the line (an estimate can be wrong) is scaled down to it, never over it.
_FIT = (r"\providecommand{\ctalfit}[1]{\sbox0{#1}\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\usebox0}"
        r"\else\usebox0\fi}")


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol, latex in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, latex)
    return out


def _short(number: str) -> str:
    """0.044 -> .044, -0.012 -> -.012: a spread needs no leading zero."""
    return re.sub(r"^([+-]?)0\.", r"\1.", number)


def latex_cell(text: str) -> str:
    """A cell's text in compact LaTeX: ``0.450 ± 0.044`` as 0.450 with a subscript ±.044, an
    interval, a Δ and an (n=k) in script size."""
    out, pos = [], 0
    for m in _COMPACT.finditer(text):
        out.append(latex_escape(text[pos:m.start()]))
        if m["mean"]:
            out.append(rf"{m['mean']}$_{{\pm{_short(m['std'])}}}$")
        elif m["low"]:
            out.append(rf"$_{{[{_short(m['low'])},{_short(m['high'])}]}}$")
        elif m["delta"]:
            out.append(rf"\,{{\scriptsize($\Delta${m['delta'][0].replace('-', '$-$')}{_short(m['delta'][1:])})}}")
        else:
            out.append(rf"\,{{\scriptsize(n={m['n']})}}")
        pos = m.end()
    out.append(latex_escape(text[pos:]))
    return "".join(out)


def _width_pt(text: str) -> float:
    """Roughly how wide ``latex_cell(text)`` sets at \\footnotesize."""
    small = sum(len(m[0]) for m in _COMPACT.finditer(text)) - sum(len(m["mean"] or "") for m in _COMPACT.finditer(text))
    return _CHAR_PT * (len(text) - small) + _SMALL_CHAR_PT * small


def _latex_header(table: TableData, keep: int) -> list[str]:
    if not table.groups or len(table.subcolumns) != len(table.columns):
        return [" & ".join(["", *map(latex_escape, table.columns[:keep])]) + r" \\"]
    top, rules, start = [""], [], 2
    for label, span in table.groups:
        span = min(span, keep + 2 - start)
        if span <= 0:
            break
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(label)}}}" if span > 1 else latex_escape(label))
        if label:
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    return [" & ".join(top) + r" \\", "".join(rules), " & ".join(["", *map(latex_escape, table.subcolumns[:keep])])
            + r" \\"]


def to_latex(table: TableData, efficiency: bool = False, label: str | None = None) -> str:
    """A booktabs table for a two-column paper (needs \\usepackage{booktabs}, and graphicx for a
    table that must be scaled to fit): task over its metrics (``\\cmidrule``), compact cells, the
    cost columns only with ``efficiency``. A table that fits one column (an estimate) is a
    ``table``, a wider one a ``table*`` over both; one wider than its line is scaled down to it."""
    keep = len(table.columns) - (0 if efficiency else table.efficiency)

    def cell(entry: Entry) -> str:
        text = latex_cell(entry.shown)
        return rf"\textbf{{{text}}}" if entry.bold else text

    widths = [max([_width_pt(label) for label, _ in table.rows] + [0.0])]
    headers = table.subcolumns if table.groups and len(table.subcolumns) == len(table.columns) else table.columns
    for i in range(keep):
        widths.append(max([_width_pt(headers[i])] + [_width_pt(entries[i].shown) for _, entries in table.rows]))
    env = "table" if sum(widths) + _PADDING_PT * len(widths) <= COLUMN_WIDTH_PT else "table*"
    lines = [_FIT, rf"\begin{{{env}}}[t]", r"\centering", r"\footnotesize", r"\sloppy",
             r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{latex_escape(table.title + '. ' + table.full_caption(efficiency))}}}",
             rf"\label{{{label or 'tab:' + table.name}}}",
             r"\ctalfit{\begin{tabular}{l" + "r" * keep + "}", r"\toprule", *_latex_header(table, keep), r"\midrule"]
    for row_label, entries in table.rows:
        lines.append(" & ".join([latex_escape(row_label), *map(cell, entries[:keep])]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    lines += [rf"\par\smallskip{{\footnotesize {latex_escape(note)}\par}}" for note in table.notes]
    lines.append(rf"\end{{{env}}}")
    return "\n".join(lines) + "\n"


def to_rich(table: TableData, where: str = ""):
    """A rich table; ``where`` (e.g. "paper · synth") is added to the title. Labels and numbers
    never wrap: print it with ``print_rich`` so that they are never cut either."""
    from rich.table import Table
    from rich.text import Text

    out = Table(title=table.title + (f" ({where})" if where else ""),
                caption=" ".join([table.full_caption(), *table.notes]))
    out.add_column("", no_wrap=True)
    for column in table.columns:
        out.add_column(column, justify="right", no_wrap=True)
    for label, entries in table.rows:
        out.add_row(Text(label), *[Text(e.shown, style="bold" if e.bold else "") for e in entries])
    return out


def print_rich(console, renderable) -> None:
    """Print ``renderable`` so that nothing in a column that does not wrap (names, numbers) is cut
    to an ellipsis, on a terminal or in a pipe, where rich would otherwise squeeze a table into 80
    columns. Such columns keep their full width; wrapping columns (descriptions) share the rest of
    the console's width, each at least as wide as its longest word (so no name in them is split);
    the output grows wider than the console where that needs it; captions wrap."""
    from rich.measure import Measurement
    from rich.table import Table

    wide = console.options.update_width(1 << 16)  # Measurement.get never answers more than the width it is given
    if isinstance(renderable, Table):
        spans = [[Measurement.get(console, wide, cell) for cell in (column.header, *column.cells)]
                 for column in renderable.columns]
        longest = [max(m.maximum for m in measured) for measured in spans]
        word = [max(m.minimum for m in measured) for measured in spans]
        wrapping = [i for i, column in enumerate(renderable.columns) if not column.no_wrap]
        for i, column in enumerate(renderable.columns):
            column.width = word[i] if i in wrapping else longest[i]
        surplus = console.width - Measurement.get(console, wide, renderable).maximum
        deficits = {i: longest[i] - word[i] for i in wrapping}
        if surplus > 0 and sum(deficits.values()):
            share = min(1.0, surplus / sum(deficits.values()))
            for i, deficit in deficits.items():
                renderable.columns[i].width = word[i] + int(deficit * share)
    needed = Measurement.get(console, wide, renderable).minimum
    if needed <= console.width:
        console.print(renderable)
        return
    width = console.width
    console.width = needed
    try:
        console.print(renderable)
    finally:
        console.width = width


def ordered(values: Sequence[str], among: np.ndarray | Sequence[str]) -> list[str]:
    """``values`` that occur in ``among``, in the order of ``values``."""
    present = set(among)
    return [v for v in values if v in present]
