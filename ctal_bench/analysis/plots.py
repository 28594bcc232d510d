"""Figures of a results frame: seed spread, sweeps, cost, confusions, DET and learning curves.

Tables give means; figures show what means hide: how far seeds scatter, where a sweep bends,
what quality costs in throughput, which emotions get confused, how verification errors
trade off at every threshold, and whether the training budget let each model converge. Each
per-task figure has one panel per dataset, because scores on different datasets are not on one
scale. Every figure is written as PNG (150 dpi) and PDF.
Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot's global
state, so nothing opens a window or stays in memory after saving.

Variants are listed in one order in every figure (``variant_order``: the suite's declared rows,
else models, then ablations, then sweep values), down the page where there are many; the
reference is named, and a scatter's variants are told apart by a legend, never by labels at the
points, which would pile up where variants cost the same.

Cells whose metric is NaN (a diverged run) cannot be drawn and are left out; the tables of
``ctal_bench.analysis.stats`` are where they count.
"""
from __future__ import annotations

import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy.stats import norm

from ctal_bench import catalog
from ctal_bench.analysis.stats import summarise
from ctal_bench.analysis.tables import LATE_SHARE
from ctal_bench.data.base import EMOTIONS
from ctal_bench.registry import TASKS
from ctal_bench.results import DONE
from ctal_bench.train import metrics

DPI = 150
PANEL_SIZE = (4.5, 3.6)  # inches per dataset panel
DET_TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
DET_LEGEND_INSIDE = 6  # more curves than this: the legend goes beside the panel
DET_LEGEND_WIDTH = 2.8  # inches beside each panel for that legend
DET_RATE_FLOOR = 0.001  # rates of 0 or 1 have no probit; draw them at 0.1% / 99.9%
SEED_ROW_HEIGHT = 0.28  # inches per variant of a seed figure: 18 variants in 6 inches
CURVE_PANEL_SIZE = (2.6, 2.0)  # inches per variant panel of the learning curves
CURVE_COLUMNS = 6  # variant panels per row: a paper suite's 18 variants in three rows
PRETRAIN_LOSSES = {"train_mlm": "MLM", "train_mam": "MAM"}  # pre-training curve columns -> names


def variant_order(cells: pd.DataFrame, order: Sequence[str] | None = None) -> list[str]:
    """The variants of ``cells`` in the order figures list them: those of ``order`` (a suite's
    declared rows: models, ablations, sweep values) first, in that order; then the rest grouped as
    plain models, ablations, then each sweep by swept value, each group in order of appearance."""
    present = list(dict.fromkeys(cells["variant"]))
    first = [v for v in (order or ()) if v in set(present)]
    rest = cells[~cells["variant"].isin(first)]
    models = list(dict.fromkeys(rest.loc[rest["ablation"] == "", "variant"]))
    ablations = list(dict.fromkeys(rest.loc[(rest["ablation"] != "") & rest["sweep_value"].isna(), "variant"]))
    swept = rest[rest["sweep_value"].notna()].sort_values(["ablation", "sweep_value"], kind="stable")
    return first + models + ablations + list(dict.fromkeys(swept["variant"]))


def _group_of(cells: pd.DataFrame) -> dict[str, str]:
    """variant -> "model", "ablation" or "sweep <name>"."""
    groups = {}
    for row in cells[["variant", "ablation", "sweep_value"]].drop_duplicates("variant").itertuples():
        groups[row.variant] = ("model" if row.ablation == "" else "ablation" if pd.isna(row.sweep_value)
                               else f"sweep {row.ablation}")
    return groups


def _label(variant: str, reference: str | None) -> str:
    return f"{variant} (reference)" if variant == reference else variant


def seed_distributions(cells: pd.DataFrame, out_dir: Path, order: Sequence[str] | None = None,
                       reference: str | None = None) -> list[Path]:
    """Per task: the selection metric of every seed and fold (points) over a box per variant,
    variants down the page (``variant_order``: models, ablations, sweep values; dotted lines
    between the groups), the reference named; a panel per dataset, rows aligned across panels."""
    if cells.empty:
        return []
    written = []
    ordered = variant_order(cells, order)
    groups = _group_of(cells)
    for task, rows in _by_task(cells):
        metric = _selection_metric(task)
        present = [v for v in ordered if v in set(rows["variant"])]
        datasets = list(rows.groupby("dataset", sort=False))
        height = max(PANEL_SIZE[1], SEED_ROW_HEIGHT * len(present) + 1.0)
        fig = Figure(figsize=(PANEL_SIZE[0] * len(datasets) + 1.6, height), layout="constrained")
        fig.get_layout_engine().set(w_pad=0.1, wspace=0.06)  # room between panels for their outer x labels
        axes = fig.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
        for ax, (dataset, data) in zip(axes, datasets):
            sns.boxplot(data=data, x=metric, y="variant", order=present, orient="h", ax=ax, color="0.9",
                        showfliers=False)  # the strip plot already shows every point
            sns.stripplot(data=data, x=metric, y="variant", order=present, orient="h", ax=ax, color="C0", size=4)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=4))
            for i in range(1, len(present)):
                if groups[present[i]] != groups[present[i - 1]]:
                    ax.axhline(i - 0.5, color="0.6", linewidth=0.7, linestyle=":")
            ax.set(title=f"{task} · {dataset}", ylabel="", xlabel=_metric_label(metric))
        axes[0].set_yticks(range(len(present)), [_label(v, reference) for v in present], fontsize=8)
        written += _save(fig, out_dir, f"seeds-{task}")
    return written


def sweep_curves(cells: pd.DataFrame, sweep: str, out_dir: Path) -> list[Path]:
    """Per task: mean metric against the swept value, with the 95% t-interval over seeds and folds.

    A sweep value with a single cell has no interval and is drawn without error bars.
    Returns [] when the frame has no row of ``sweep``.
    """
    if cells.empty:
        return []
    rows = cells[(cells["ablation"] == sweep) & cells["sweep_value"].notna()]
    written = []
    for task, task_rows in _by_task(rows):
        metric = _selection_metric(task)
        fig, panels = _dataset_panels(task_rows)
        for ax, (dataset, data) in panels:
            points = _summary_by(data, "sweep_value", metric)
            ax.errorbar(points.index, points["mean"], yerr=_error_bars(points), marker="o", capsize=3,
                        label="mean, 95% t-interval")
            ax.set(title=f"{task} · {dataset}", xlabel=sweep, ylabel=_metric_label(metric))
            ax.legend(fontsize=7)
        written += _save(fig, out_dir, f"sweep-{sweep}-{task}")
    return written


MARKERS = {"model": "o", "ablation": "s"}  # sweep values: "^"


def quality_vs_throughput(cells: pd.DataFrame, out_dir: Path, order: Sequence[str] | None = None,
                          reference: str | None = None) -> list[Path]:
    """Per task: each variant's mean selection metric against its mean training throughput. Each
    variant has its own colour and a marker for its group (circle: model, square: ablation,
    triangle: sweep value), named in one legend beside the panels: labels at the points would
    pile up where variants cost the same (the CTAL family)."""
    written = []
    ordered = variant_order(cells, order) if not cells.empty else []
    groups = _group_of(cells) if not cells.empty else {}
    colors = sns.color_palette("tab20" if len(ordered) > 10 else "tab10", max(len(ordered), 1))
    style = {v: (colors[i % len(colors)], MARKERS.get(groups[v], "^")) for i, v in enumerate(ordered)}
    for task, rows in _by_task(cells):
        metric = _selection_metric(task)
        rows = rows[rows["train_samples_per_second"].notna()]  # records from before timing was kept
        if rows.empty:
            continue
        fig, panels = _dataset_panels(rows)
        drawn = {}
        for ax, (dataset, data) in panels:
            means = data.groupby("variant", sort=False)[[metric, "train_samples_per_second"]].mean()
            for variant in [v for v in ordered if v in means.index]:
                color, marker = style[variant]
                point = means.loc[variant]
                drawn[variant] = ax.scatter(point["train_samples_per_second"], point[metric], color=color,
                                            marker=marker, s=60 if variant == reference else 30,
                                            edgecolors="black" if variant == reference else "none", zorder=3)
            ax.set_xscale("log")
            _plain_log_ticks(ax)
            ax.margins(x=0.15, y=0.1)
            ax.set(title=f"{task} · {dataset}", xlabel="training samples / s (log)", ylabel=_metric_label(metric))
        names = [v for v in ordered if v in drawn]
        fig.legend([drawn[v] for v in names], [_label(v, reference) for v in names], loc="outside right upper",
                   fontsize=7, frameon=False)
        written += _save(fig, out_dir, f"throughput-{task}")
    return written


def normalised_confusion(matrices: Iterable[Sequence[Sequence[int]]]) -> np.ndarray:
    """Sum of count matrices (row = true class), each row divided by its total.

    A class absent from every test set has an all-NaN row: its recall is undefined, not zero.
    """
    total = np.sum([np.asarray(m, dtype=float) for m in matrices], axis=0)
    row_sums = total.sum(axis=1, keepdims=True)
    return np.divide(total, row_sums, out=np.full_like(total, np.nan), where=row_sums > 0)


def confusion_matrices(records: Iterable[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Per variant: the emotion confusion matrix summed over seeds and folds, each row a recall."""
    by_variant: dict[str, dict[str, list]] = {}  # variant -> dataset -> count matrices
    for record in records:
        cell = record.get("cell", {})
        matrix = (record.get("extra") or {}).get("confusion_matrix")
        if record.get("status") == DONE and cell.get("task") == "emotion" and matrix is not None:
            by_variant.setdefault(cell["variant"], {}).setdefault(cell["dataset"], []).append(matrix)
    written = []
    for variant, datasets in by_variant.items():
        fig = Figure(figsize=(PANEL_SIZE[0] * len(datasets), PANEL_SIZE[1] + 0.4), layout="constrained")
        for ax, (dataset, matrices) in zip(fig.subplots(1, len(datasets), squeeze=False)[0],
                                           datasets.items()):
            sns.heatmap(normalised_confusion(matrices), ax=ax, annot=True, fmt=".2f", vmin=0, vmax=1,
                        cmap="Blues", xticklabels=EMOTIONS, yticklabels=EMOTIONS, square=True)
            ax.set(title=f"{variant} · {dataset} ({len(matrices)} cells)", xlabel="predicted",
                   ylabel="true")
        written += _save(fig, out_dir, f"confusion-{variant}")
    return written


def det_points(targets: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-accept rate, false-reject rate) at every threshold a DET curve is drawn through."""
    fpr, fnr, _ = metrics.det_curve(scores, targets)
    return fpr, fnr


def det_curves(cells: pd.DataFrame, predictions: Callable[[str], pd.DataFrame | None], out_dir: Path,
               order: Sequence[str] | None = None) -> list[Path]:
    """One figure of DET curves, a panel per verification dataset and a curve per variant.

    ``predictions`` reads a cell's predictions by its ``cell_id`` (the results store's reader). A
    variant's trials are pooled over its seeds and folds; pooling mixes each seed's score
    calibration, so the pooled EER in the legend can sit above the mean per-seed EER of the
    tables. A variant with any predictions file missing, or any NaN score (a diverged run), is
    left out and named in the legend, rather than drawn from a subset of its seeds. Variants in
    ``variant_order``; with more than a few, the legend sits beside the panel, not over it.
    """
    if cells.empty:
        return []
    rows = cells[cells["task"] == "verification"]
    if rows.empty:
        return []
    beside = rows["variant"].nunique() > DET_LEGEND_INSIDE
    fig, panels = _dataset_panels(rows, square=True, extra_width=DET_LEGEND_WIDTH if beside else 0.0)
    every = variant_order(rows, order)
    colors = dict(zip(every, sns.color_palette("tab20" if len(every) > 10 else "tab10", len(every))))
    for ax, (dataset, data) in panels:
        for variant in variant_order(data, order):
            trials = _pooled_trials(predictions, data.loc[data["variant"] == variant, "cell_id"])
            if trials is None:
                ax.plot([], [], " ", label=f"{variant}: left out (missing or NaN predictions)")
            else:
                _draw_det(ax, variant, trials, colors[variant])
        _det_axes(ax, title=f"verification · {dataset}")
    return _save(fig, out_dir, "det-verification")


def finetune_curves(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per fine-tuning epoch of every finished cell that kept its curve: variant, task,
    dataset, epoch (1-based), dev_score, selected (the cell's best dev epoch) and the cell's
    budget of epochs (NaN where the record has no config)."""
    rows = []
    for record in records:
        curve = (record.get("curves") or {}).get("finetune")
        if record.get("status") != DONE or not curve:
            continue
        cell = record["cell"]
        budget = record.get("config", {}).get("finetune", {}).get("epochs", np.nan)
        for row in curve:
            rows.append({"variant": cell["variant"], "task": cell["task"], "dataset": cell["dataset"],
                         "epoch": row["epoch"] + 1, "dev_score": row["dev_score"],
                         "selected": row["epoch"] == record["best_epoch"], "budget": budget})
    columns = ["variant", "task", "dataset", "epoch", "dev_score", "selected", "budget"]
    return pd.DataFrame(rows, columns=columns)


def learning_curves(records: Iterable[dict[str, Any]], out_dir: Path, order: Sequence[str] | None = None
                    ) -> list[Path]:
    """Per task: the dev selection metric against fine-tuning epoch, one small panel per variant
    (a block of rows per dataset, one y scale per dataset): the median and min-max band over
    seeds and folds, each cell's selected epoch as a point, and the last 20% of the budget
    shaded. Points in the shade are cells still improving when the budget ran out
    (``tables.still_improving``). After an early stop the median covers the cells still training.
    """
    curves = finetune_curves(records)
    written = []
    for task, rows in curves.groupby("task", sort=False):
        metric = _selection_metric(task)
        blocks = [(dataset, _in_order(_variants_in_order(data), order))
                  for dataset, data in rows.groupby("dataset", sort=False)]
        columns = min(CURVE_COLUMNS, max(len(variants) for _, variants in blocks))
        block_rows = [-(-len(variants) // columns) for _, variants in blocks]  # ceiling division
        fig = Figure(figsize=(CURVE_PANEL_SIZE[0] * columns, CURVE_PANEL_SIZE[1] * sum(block_rows) + 0.9),
                     layout="constrained")
        axes = fig.subplots(sum(block_rows), columns, squeeze=False)
        for ax in axes.flat:
            ax.set_visible(False)  # shown below where a variant is drawn
        top = 0
        for (dataset, variants), n_rows in zip(blocks, block_rows):
            block = axes[top:top + n_rows].flat
            for ax, variant in zip(block, variants):
                ax.set_visible(True)
                if ax is not axes[top, 0]:
                    ax.sharey(axes[top, 0])  # x is not shared: a variant may have its own budget
                _draw_learning_curve(ax, rows[(rows["dataset"] == dataset) & (rows["variant"] == variant)])
                ax.set_title(f"{variant} · {dataset}", fontsize=8)
                ax.tick_params(labelsize=7)
            top += n_rows
        fig.suptitle(f"{task}: dev {_metric_label(metric)} against fine-tuning epoch", fontsize=10)
        fig.supylabel(f"dev {metric}", fontsize=9)
        fig.legend(handles=[Line2D([], [], color="C0", label="median over seeds and folds"),
                            Patch(color="C0", alpha=0.25, label="min-max"),
                            Line2D([], [], color="C3", marker="o", linestyle="", markersize=3,
                                   label="selected epoch of a cell"),
                            Patch(color="0.88", label=f"last {float(LATE_SHARE):.0%} of the budget")],
                   loc="outside lower center", ncols=4, fontsize=8, frameon=False)
        written += _save(fig, out_dir, f"curves-{task}")
    return written


def pretrain_runs(records: Iterable[dict[str, Any]]) -> dict[str, list[list[dict]]]:
    """label -> the loss curves of one pre-training config, one per seed.

    Cells share pre-trainings: each (its record's key) counts once. The key also hashes the seed,
    so a config's seeds are grouped by what used them: within a seed every (variant, task) uses
    one pre-training, so equal users across seeds mean an equal config. The label names the
    variants, and the tasks where that alone would not tell two configs apart.
    """
    users: dict[str, set[tuple[str, str]]] = {}  # key -> the (variant, task) that used it
    curves: dict[str, list[dict]] = {}
    for record in records:
        pretrain, curve = record.get("pretrain"), (record.get("curves") or {}).get("pretrain")
        if record.get("status") != DONE or not pretrain or not curve:
            continue
        users.setdefault(pretrain["key"], set()).add((record["cell"]["variant"], record["cell"]["task"]))
        curves[pretrain["key"]] = curve
    groups: dict[frozenset, list[list[dict]]] = {}
    for key, used_by in users.items():
        groups.setdefault(frozenset(used_by), []).append(curves[key])
    names = {group: ", ".join(sorted({variant for variant, _ in group})) for group in groups}
    ambiguous = {name for name, n in Counter(names.values()).items() if n > 1}
    return {names[group] + (f" ({', '.join(sorted({task for _, task in group}))})" if names[group] in ambiguous
                            else ""): seeds for group, seeds in groups.items()}


def pretrain_curves(records: Iterable[dict[str, Any]], out_dir: Path) -> list[Path]:
    """MLM and MAM loss against pre-training epoch, a line per distinct pre-training config
    (``pretrain_runs``): the median and min-max band over its seeds. [] when no record has a
    pre-training curve (baselines only)."""
    runs = pretrain_runs(records)
    if not runs:
        return []
    labels = [textwrap.fill(f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})", 80)
              for label, curves in runs.items()]
    legend_lines = sum(label.count("\n") + 1 for label in labels)
    fig = Figure(figsize=(2 * PANEL_SIZE[0], PANEL_SIZE[1] + 0.4 + 0.16 * legend_lines), layout="constrained")
    panels = fig.subplots(1, len(PRETRAIN_LOSSES), squeeze=False)[0]
    colors = sns.color_palette("tab10" if len(runs) <= 10 else "tab20", len(runs))
    for ax, (column, name) in zip(panels, PRETRAIN_LOSSES.items()):
        for curves, label, color in zip(runs.values(), labels, colors):
            losses = pd.DataFrame([{"epoch": row["epoch"] + 1, "loss": row[column]} for curve in curves
                                   for row in curve]).groupby("epoch")["loss"]
            ax.fill_between(losses.min().index, losses.min(), losses.max(), color=color, alpha=0.2, linewidth=0)
            ax.plot(losses.median().index, losses.median(), color=color, label=label)
        ax.set(title=f"{name} loss", xlabel="pre-training epoch", ylabel=f"{name} loss (train)")
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=7, frameon=False,
               title="median and min-max over seeds; pre-training used by", title_fontsize=7)
    return _save(fig, out_dir, "pretrain-curves")


def write_all(cells: pd.DataFrame, records: Iterable[dict[str, Any]],
              predictions: Callable[[str], pd.DataFrame | None], out_dir: Path, sweeps: Sequence[str],
              order: Sequence[str] | None = None, reference: str | None = None) -> list[Path]:
    """Every figure of one results set; the paths written. ``order``: the variants' order (a
    suite's declared rows, ``variant_order``); ``reference``: the variant named as the reference."""
    records = list(records)  # read by several figures
    written = (seed_distributions(cells, out_dir, order, reference)
               + quality_vs_throughput(cells, out_dir, order, reference))
    for sweep in sweeps:
        written += sweep_curves(cells, sweep, out_dir)
    return (written + confusion_matrices(records, out_dir) + det_curves(cells, predictions, out_dir, order)
            + learning_curves(records, out_dir, order) + pretrain_curves(records, out_dir))


# ---- helpers ----------------------------------------------------------------------------------

def _selection_metric(task: str) -> str:
    catalog.load()
    return TASKS.get(task).selection_metric


def _metric_label(metric: str) -> str:
    return f"{metric} {'↑' if metrics.HIGHER_IS_BETTER[metric] else '↓'}"


def _variants_in_order(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["variant"]))


def _in_order(variants: Sequence[str], order: Sequence[str] | None) -> list[str]:
    """``variants``, those in ``order`` first and in its order, the rest after as they come."""
    first = [v for v in (order or ()) if v in set(variants)]
    return first + [v for v in variants if v not in set(first)]


def _by_task(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(task, its rows with a finite selection metric), tasks in order of first appearance."""
    if cells.empty:
        return []
    groups = []
    for task in dict.fromkeys(cells["task"]):
        metric = _selection_metric(task)
        rows = cells[(cells["task"] == task) & cells[metric].notna()]
        if not rows.empty:
            groups.append((task, rows))
    return groups


def _dataset_panels(rows: pd.DataFrame, square: bool = False, extra_width: float = 0.0
                    ) -> tuple[Figure, list[tuple[Axes, tuple[str, pd.DataFrame]]]]:
    """A figure with one panel per dataset in ``rows``, each paired with (dataset, its rows);
    ``extra_width`` inches beside each panel (for a legend there)."""
    datasets = list(rows.groupby("dataset", sort=False))
    width, height = (PANEL_SIZE[1], PANEL_SIZE[1]) if square else PANEL_SIZE
    width += extra_width
    fig = Figure(figsize=(width * len(datasets), height + 0.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    return fig, list(zip(axes, datasets))


def _summary_by(rows: pd.DataFrame, key: str, metric: str) -> pd.DataFrame:
    """mean, ci_low, ci_high of ``metric`` per value of ``key``, sorted by that value."""
    summaries = {value: summarise(group[metric].to_numpy()) for value, group in rows.groupby(key)}
    return pd.DataFrame({"mean": [s.mean for s in summaries.values()],
                         "ci_low": [s.ci_low for s in summaries.values()],
                         "ci_high": [s.ci_high for s in summaries.values()]},
                        index=list(summaries)).sort_index()


def _error_bars(points: pd.DataFrame) -> np.ndarray:
    """(2, n) distances below and above each mean; 0 (no bar) where N = 1 leaves no interval."""
    below = (points["mean"] - points["ci_low"]).fillna(0.0)
    above = (points["ci_high"] - points["mean"]).fillna(0.0)
    return np.vstack([below.to_numpy(), above.to_numpy()])


def _plain_log_ticks(ax: Axes) -> None:
    """Label a log x axis 40, 100, 400 rather than 4x10^1, 10^2, 4x10^2 (minor ticks within a decade)."""
    ax.xaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _draw_learning_curve(ax: Axes, rows: pd.DataFrame) -> None:
    """One variant's panel of ``learning_curves``."""
    scores = rows.groupby("epoch")["dev_score"]
    low, high, median = scores.min(), scores.max(), scores.median()
    budget = rows["budget"].max()
    if not np.isnan(budget):
        ax.axvspan((1 - float(LATE_SHARE)) * budget + 0.5, budget + 0.5, color="0.88", linewidth=0, zorder=0)
    ax.fill_between(low.index, low, high, color="C0", alpha=0.25, linewidth=0)
    ax.plot(median.index, median, color="C0", linewidth=1.2)
    selected = rows[rows["selected"]]
    ax.plot(selected["epoch"], selected["dev_score"], "o", color="C3", markersize=3, zorder=3)
    ax.set_xlim(0.5, (rows["epoch"].max() if np.isnan(budget) else budget) + 0.5)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _probit(rate: np.ndarray | float) -> np.ndarray:
    return norm.ppf(np.clip(rate, DET_RATE_FLOOR, 1 - DET_RATE_FLOOR))


def _pooled_trials(predictions: Callable[[str], pd.DataFrame | None], cell_ids: Iterable[str]) -> pd.DataFrame | None:
    """The trials of all ``cell_ids`` in one table; None if one is unreadable or a score is NaN."""
    parts = [predictions(cell_id) for cell_id in cell_ids]
    if any(part is None for part in parts):
        return None
    trials = pd.concat(parts, ignore_index=True)
    return None if trials["score"].isna().any() else trials


def _draw_det(ax: Axes, variant: str, trials: pd.DataFrame, color=None) -> None:
    fpr, fnr = det_points(trials["target"], trials["score"])
    pooled_eer = metrics.eer(trials["score"], trials["target"])
    line, = ax.plot(_probit(fpr), _probit(fnr), color=color, label=f"{variant} (EER {pooled_eer:.1%})")
    ax.plot(_probit(pooled_eer), _probit(pooled_eer), "o", color=line.get_color(), markersize=4)


def _det_axes(ax: Axes, title: str) -> None:
    """Probit axes with ticks labelled in %, the fpr = fnr diagonal, and the legend."""
    limits = _probit(np.array([DET_RATE_FLOOR, 1 - DET_RATE_FLOOR]))
    ax.plot(limits, limits, color="0.7", linewidth=0.8, linestyle="--")
    ticks = _probit(np.array(DET_TICKS))
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels, fontsize=7, rotation=90)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set(xlim=limits, ylim=limits, title=title, xlabel="false accept rate (%)",
           ylabel="false reject rate (%)")
    inside = len(ax.get_legend_handles_labels()[1]) <= DET_LEGEND_INSIDE
    ax.legend(fontsize=7, title="pooled over seeds and folds", title_fontsize=7,
              **({"loc": "upper right"} if inside else {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)}))


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{_safe_name(stem)}.{suffix}" for suffix in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths
