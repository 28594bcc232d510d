"""The paper's tables from a cells frame (``results.frame``): Markdown, LaTeX (booktabs), rich.

Every number is a mean +- sample std over seeds (folds are averaged within a seed first, so N
is the number of seeds). Marks come from paired t-tests on matched seeds against a reference,
corrected over the table's whole family (``stats.correct``): † at 0.05, ‡ at 0.01. Each caption
states N, the test, the correction, alpha, the metric directions, the data, the scale and the
fine-tuning budget. A variant whose selected epoch came late in its budget for several seeds is
marked ˢ (``still_improving``): its number may be short of what more epochs would give.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ctal_bench import stats
from ctal_bench.metrics import HIGHER_IS_BETTER
from ctal_bench.registry import TASKS

ALPHAS = (0.05, 0.01)
MARKS = ("†", "‡")  # significant at ALPHAS[0] / ALPHAS[1] after correction
LATE_SHARE = Fraction(1, 5)  # the end of a budget where a selected epoch says "still improving"
IMPROVING_SEEDS = 2  # one seed peaking late can be chance; two are a pattern
IMPROVING_MARK = "ˢ"
IMPROVING_NOTE = (f"{IMPROVING_MARK} best dev epoch in the last {float(LATE_SHARE):.0%} of the budget for at "
                  f"least {IMPROVING_SEEDS} seeds: still improving, more epochs might change this number.")


@dataclass
class Entry:
    text: str = "–"
    bold: bool = False
    mark: str = ""  # significance
    flag: str = ""  # IMPROVING_MARK or ""


@dataclass
class TableData:
    name: str  # file stem under results/tables/
    title: str
    caption: str
    columns: list[str]  # header labels after the row-label column
    rows: list[tuple[str, list[Entry]]] = field(default_factory=list)
    comparisons: pd.DataFrame | None = None  # every test behind the marks, one row each
    notes: list[str] = field(default_factory=list)  # footnotes, printed under the table


def per_seed(cells: pd.DataFrame, variant: str, task: str, metric: str) -> pd.Series:
    """seed -> the metric averaged over that seed's folds, for one variant and task."""
    own = cells[(cells["variant"] == variant) & (cells["task"] == task)]
    return own.groupby("seed")[metric].mean().dropna()


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


def _describe(cells: pd.DataFrame) -> str:
    datasets = ", ".join(sorted(cells["dataset"].unique()))
    scales = ", ".join(sorted(s for s in cells["scale"].unique() if s)) or "unnamed"
    return f"test split of {datasets}, scale {scales}"


def _n_text(ns: set[int]) -> str:
    return f"N = {min(ns)}" if len(ns) == 1 else f"N = {min(ns)}-{max(ns)}"


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


Tests = dict[tuple[str, str, str], tuple[stats.SeedComparison, float]]


def _summary_text(values: pd.Series, interval: bool = False) -> str:
    """mean +- sample std, or mean [95% t-interval]; the mean alone for one seed."""
    s = stats.summarise(values.to_numpy())
    if s.n < 2:
        return _fmt(s.mean)
    return f"{_fmt(s.mean)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]" if interval else f"{_fmt(s.mean)} ± {_fmt(s.std)}"


def _compared_rows(table: TableData, cells: pd.DataFrame, variants: Sequence[str], metrics: dict[str, str],
                   tests: Tests, interval: bool, worse_only: bool) -> None:
    """One row per variant and one column per task's metric, marked from ``tests``: only where
    worse (``worse_only``, with the signed difference shown) or wherever different."""
    for variant in variants:
        entries = []
        for task, metric in metrics.items():
            values = per_seed(cells, variant, task, metric)
            if not len(values):
                entries.append(Entry())
                continue
            text, mark = _summary_text(values, interval), ""
            comparison, p = tests.get((variant, task, metric), (None, 1.0))
            if comparison is not None:
                if worse_only:
                    text += f" (Δ {comparison.difference:+.3f})"
                mark = "" if worse_only and comparison.a_is_better else _mark(p)
            entries.append(Entry(text, mark=mark, flag=_flag(cells, variant, task)))
        table.rows.append((variant, entries))
    _note_flags(table)


def _significance(cells: pd.DataFrame, pairs: list[tuple[str, str, str, str]], method: str,
                  aso: bool) -> Tests:
    """(variant, task, metric) -> (comparison with its reference, corrected p) for every pair
    (variant, reference, task, metric) with at least two matched seeds; one family. With
    ``aso``, ASO is computed for each task's selection metric (it costs seconds per comparison)."""
    matched = {}
    for variant, reference, task, metric in pairs:
        a, b = per_seed(cells, variant, task, metric), per_seed(cells, reference, task, metric)
        seeds = sorted(set(a.index) & set(b.index))
        if len(seeds) >= 2:
            matched[(variant, task, metric)] = (a[seeds].to_numpy(), b[seeds].to_numpy(), HIGHER_IS_BETTER[metric],
                                                aso and metric == TASKS.get(task).selection_metric)
    found = dict(zip(matched, stats.compare_many(list(matched.values()))))
    adjusted = stats.correct([c.p_value for c in found.values()], method)
    return {key: (comparison, float(p)) for (key, comparison), p in zip(found.items(), adjusted)}


def _comparisons(tests: Tests, reference: str, method: str) -> pd.DataFrame:
    rows = [{"variant": variant, "reference": reference, "task": task, "metric": metric, "n": c.n,
             "difference": c.difference, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p_value,
             f"p_{method}": p, "p_superiority": c.p_superiority, "aso_eps_min": c.aso_eps_min,
             "better": c.a_is_better} for (variant, task, metric), (c, p) in tests.items()]
    return pd.DataFrame(rows)


def _mark(p_adjusted: float) -> str:
    mark = ""
    for alpha, symbol in zip(ALPHAS, MARKS):
        if p_adjusted < alpha:
            mark = symbol
    return mark


def _test_sentence(family: int, method: str, direction: str, reference: str, n_text: str) -> str:
    correction = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg"}[method]
    if not family:
        return f"No significance test: fewer than 2 matched seeds ({n_text})."
    return (f"{MARKS[0]} / {MARKS[1]}: {direction} {reference} in a two-sided paired t-test on matched "
            f"seeds, {correction}-corrected over the {family} comparisons in this table, at "
            f"alpha = {ALPHAS[0]} / {ALPHAS[1]}.")


def _profile_sentence(profiles: dict[str, dict] | None) -> str:
    if not profiles:
        return ""
    first = next(iter(profiles.values()))
    return (f" GFLOPs/sample (fine-tuning step) and b1 ms (median batch-1 latency) from bench.py profile "
            f"({first['environment']['device']}, {first['dtype']}, scale {first['scale']}).")


def main_table(cells: pd.DataFrame, models: Sequence[str], tasks: Sequence[str], reference: str,
               aso: bool = True, profiles: dict[str, dict] | None = None) -> TableData:
    """Models x (task, metric): mean +- std, bold best, marks where better than ``reference``;
    with ``profiles`` (model -> its ``bench.py profile`` record), FLOPs and batch-1 latency too."""
    columns = _columns(tasks, lambda task: TASKS.get(task).table_metrics)
    pairs = [(m, reference, t, metric) for m in models if m != reference for t, metric in columns]
    tests = _significance(cells, pairs, "holm", aso)
    means = {(m, t, metric): per_seed(cells, m, t, metric) for m in models for t, metric in columns}
    best = {}
    for t, metric in columns:
        scored = {m: s.mean() for m in models if len(s := means[(m, t, metric)])}
        if scored:
            pick = max if HIGHER_IS_BETTER[metric] else min
            best[(t, metric)] = pick(scored, key=scored.get)
    ns = {len(s) for s in means.values() if len(s)} or {0}
    table = TableData(
        "main", "CTAL and baselines",
        f"Mean ± sample std over seeds ({_n_text(ns)}; {_describe(cells)}). Bold: best mean. "
        + (_test_sentence(len(tests), "holm", "better than", reference, _n_text(ns)) if reference in models
           else f"No significance marks: the reference {reference} has no cells here.")
        + budget_sentence(cells, models, tasks)
        + " ↑ higher is better, ↓ lower is better. Params: trainable parameters; "
          "samples/s: training throughput of the cell (mean over cells)." + _profile_sentence(profiles),
        [f"{t} {metric} {_arrow(metric)}" for t, metric in columns] + ["params", "samples/s"]
        + (["GFLOPs/sample", "b1 ms"] if profiles else []))
    for model in models:
        entries = []
        for t, metric in columns:
            values = means[(model, t, metric)]
            if not len(values):
                entries.append(Entry())
                continue
            text = _summary_text(values)
            comparison, p = tests.get((model, t, metric), (None, 1.0))
            mark = _mark(p) if comparison is not None and comparison.a_is_better else ""
            flag = _flag(cells, model, t) if metric == TASKS.get(t).selection_metric else ""
            entries.append(Entry(text, best.get((t, metric)) == model, mark, flag))
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
    _note_flags(table)
    return table


def ablation_table(cells: pd.DataFrame, full: str, variants: Sequence[str], tasks: Sequence[str],
                   aso: bool = True) -> TableData:
    """Full CTAL first, then each variant: mean +- std and the signed difference, marked where
    significantly worse than full CTAL."""
    metrics = {t: TASKS.get(t).selection_metric for t in tasks}
    pairs = [(v, full, t, metrics[t]) for v in variants for t in tasks]
    tests = _significance(cells, pairs, "holm", aso)
    ns = {len(per_seed(cells, v, t, metrics[t])) for v in [full, *variants] for t in tasks} - {0} or {0}
    table = TableData(
        "ablations", "Ablations of CTAL",
        f"Mean ± sample std over seeds ({_n_text(ns)}; {_describe(cells)}); Δ = mean paired "
        f"difference from full CTAL ({full}). "
        + _test_sentence(len(tests), "holm", "worse than", full, _n_text(ns))
        + budget_sentence(cells, [full, *variants], tasks) + " ↑ higher is better, ↓ lower is better.",
        [f"{t} {metrics[t]} {_arrow(metrics[t])}" for t in tasks])
    _compared_rows(table, cells, [full, *variants], metrics, tests, interval=False, worse_only=True)
    table.comparisons = _comparisons(tests, full, "holm")
    return table


def sweep_table(cells: pd.DataFrame, sweep: str, full: str, tasks: Sequence[str], aso: bool = True
                ) -> TableData:
    """One row per swept value: mean and 95% t-interval; marks where different from full CTAL
    (Benjamini-Hochberg over the sweep)."""
    own = cells[cells["ablation"] == sweep]
    variants = list(own.sort_values("sweep_value")["variant"].drop_duplicates())
    metrics = {t: TASKS.get(t).selection_metric for t in tasks}
    pairs = [(v, full, t, metrics[t]) for v in variants for t in tasks]
    tests = _significance(cells, pairs, "fdr_bh", aso)
    ns = {len(per_seed(cells, v, t, metrics[t])) for v in variants for t in tasks} - {0} or {0}
    table = TableData(
        f"sweep-{sweep}", f"Sweep over {sweep}",
        f"Mean [95% t-interval] over seeds ({_n_text(ns)}; {_describe(cells)}). "
        + _test_sentence(len(tests), "fdr_bh", "different from full CTAL", f"({full})", _n_text(ns))
        + budget_sentence(cells, variants, tasks) + " ↑ higher is better, ↓ lower is better.",
        [f"{t} {metrics[t]} {_arrow(metrics[t])}" for t in tasks])
    _compared_rows(table, cells, variants, metrics, tests, interval=True, worse_only=False)
    table.comparisons = _comparisons(tests, full, "fdr_bh")
    return table


def per_example(cells: pd.DataFrame, models: Sequence[str], reference: str, runs_dir: Path,
                resamples: int = 1000) -> pd.DataFrame:
    """Each model against ``reference`` on the same test examples, seed by seed (and fold by
    fold), from the saved predictions: the selection metric's difference with a paired bootstrap
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
            paths = [runs_dir / f"{cell_id}.preds.csv" for cell_id in (cell["cell_id"], *match["cell_id"])]
            if len(paths) != 2 or not all(p.exists() for p in paths):
                continue
            task = TASKS.get(cell["task"])
            a, b = (pd.read_csv(p) for p in paths)
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
        text = entry.text + entry.mark + entry.flag
        return f"**{text}**" if entry.bold else text

    lines = [f"**{table.title}.** {table.caption}", "",
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
                  "↓": r"$\downarrow$", "Δ": r"$\Delta$", "–": "--", IMPROVING_MARK: r"\textsuperscript{s}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol, latex in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, latex)
    return out


def to_latex(table: TableData) -> str:
    """A booktabs table (needs \\usepackage{booktabs})."""
    def cell(entry: Entry) -> str:
        text = latex_escape(entry.text + entry.mark + entry.flag)
        return rf"\textbf{{{text}}}" if entry.bold else text

    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(table.title + '. ' + table.caption)}}}",
             rf"\label{{tab:{table.name}}}",
             r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
             " & ".join(["", *map(latex_escape, table.columns)]) + r" \\", r"\midrule"]
    for label, entries in table.rows:
        lines.append(" & ".join([latex_escape(label), *map(cell, entries)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip{{\footnotesize {latex_escape(note)}}}" for note in table.notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_rich(table: TableData):
    from rich.table import Table

    out = Table(title=table.title, caption=" ".join([table.caption, *table.notes]))
    out.add_column("")
    for column in table.columns:
        out.add_column(column, justify="right")
    for label, entries in table.rows:
        out.add_row(label, *[(f"[bold]{e.text}{e.mark}{e.flag}[/bold]" if e.bold else e.text + e.mark + e.flag)
                             for e in entries])
    return out


def ordered(values: Sequence[str], among: np.ndarray | Sequence[str]) -> list[str]:
    """``values`` that occur in ``among``, in the order of ``values``."""
    present = set(among)
    return [v for v in values if v in present]
