"""Figures of a results frame: seed spread, sweeps, cost, confusions and DET curves.

Tables give means; figures show what means hide: how far seeds scatter, where a sweep bends,
what quality costs in throughput, which emotions get confused, and how verification errors
trade off at every threshold. Each per-task figure has one panel per dataset, because scores
on different datasets are not on one scale. Every figure is written as PNG (150 dpi) and PDF.
Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot's global
state, so nothing opens a window or stays in memory after saving.

Cells whose metric is NaN (a diverged run) cannot be drawn and are left out; the tables of
``ctal_bench.stats`` are where they count.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy.stats import norm

from ctal_bench import catalog, metrics
from ctal_bench.data.base import EMOTIONS
from ctal_bench.registry import TASKS
from ctal_bench.results import DONE
from ctal_bench.stats import summarise

DPI = 150
PANEL_SIZE = (4.5, 3.6)  # inches per dataset panel
DET_TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
DET_RATE_FLOOR = 0.001  # rates of 0 or 1 have no probit; draw them at 0.1% / 99.9%


def seed_distributions(cells: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per task: the selection metric of every seed and fold (points) over a box per variant."""
    if cells.empty:
        return []
    written = []
    order = _variants_in_order(cells)
    for task, rows in _by_task(cells):
        metric = _selection_metric(task)
        fig, panels = _dataset_panels(rows)
        for ax, (dataset, data) in panels:
            here = set(data["variant"])
            present = [v for v in order if v in here]
            sns.boxplot(data=data, x="variant", y=metric, order=present, ax=ax, color="0.9",
                        showfliers=False)  # the strip plot already shows every point
            sns.stripplot(data=data, x="variant", y=metric, order=present, ax=ax, color="C0", size=5)
            ax.set(title=f"{task} · {dataset}", xlabel="", ylabel=_metric_label(metric))
            ax.tick_params(axis="x", labelrotation=30)
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


def quality_vs_throughput(cells: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per task: each variant's mean selection metric against its mean training throughput."""
    written = []
    for task, rows in _by_task(cells):
        metric = _selection_metric(task)
        rows = rows[rows["train_samples_per_second"].notna()]  # records from before timing was kept
        if rows.empty:
            continue
        fig, panels = _dataset_panels(rows)
        for ax, (dataset, data) in panels:
            means = data.groupby("variant", sort=False)[[metric, "train_samples_per_second"]].mean()
            ax.scatter(means["train_samples_per_second"], means[metric])
            for variant, point in means.iterrows():
                ax.annotate(str(variant), (point["train_samples_per_second"], point[metric]),
                            xytext=(4, 4), textcoords="offset points", fontsize=8)
            ax.set_xscale("log")
            _plain_log_ticks(ax)
            ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
            ax.set(title=f"{task} · {dataset}", xlabel="training samples / s (log)",
                   ylabel=_metric_label(metric))
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


def det_curves(cells: pd.DataFrame, runs_dir: Path, out_dir: Path) -> list[Path]:
    """One figure of DET curves, a panel per verification dataset and a curve per variant.

    ``runs_dir`` is the results store's ``runs/`` folder. A variant's trials are pooled over its
    seeds and folds (``runs_dir/<cell_id>.preds.csv``); pooling mixes each seed's score
    calibration, so the pooled EER in the legend can sit above the mean per-seed EER of the
    tables. A variant with any predictions file missing, or any NaN score (a diverged run), is
    left out and named in the legend, rather than drawn from a subset of its seeds.
    """
    if cells.empty:
        return []
    rows = cells[cells["task"] == "verification"]
    if rows.empty:
        return []
    fig, panels = _dataset_panels(rows, square=True)
    for ax, (dataset, data) in panels:
        for variant in _variants_in_order(data):
            trials = _pooled_trials(Path(runs_dir), data.loc[data["variant"] == variant, "cell_id"])
            if trials is None:
                ax.plot([], [], " ", label=f"{variant}: left out (missing or NaN predictions)")
            else:
                _draw_det(ax, variant, trials)
        _det_axes(ax, title=f"verification · {dataset}")
    return _save(fig, out_dir, "det-verification")


def write_all(cells: pd.DataFrame, records: Iterable[dict[str, Any]], runs_dir: Path, out_dir: Path,
              sweeps: Sequence[str]) -> list[Path]:
    """Every figure of one results set; the paths written."""
    written = seed_distributions(cells, out_dir) + quality_vs_throughput(cells, out_dir)
    for sweep in sweeps:
        written += sweep_curves(cells, sweep, out_dir)
    return written + confusion_matrices(records, out_dir) + det_curves(cells, runs_dir, out_dir)


# ---- helpers ----------------------------------------------------------------------------------

def _selection_metric(task: str) -> str:
    catalog.load()
    return TASKS.get(task).selection_metric


def _metric_label(metric: str) -> str:
    return f"{metric} {'↑' if metrics.HIGHER_IS_BETTER[metric] else '↓'}"


def _variants_in_order(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["variant"]))


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


def _dataset_panels(rows: pd.DataFrame,
                    square: bool = False) -> tuple[Figure, list[tuple[Axes, tuple[str, pd.DataFrame]]]]:
    """A figure with one panel per dataset in ``rows``, each paired with (dataset, its rows)."""
    datasets = list(rows.groupby("dataset", sort=False))
    width, height = (PANEL_SIZE[1], PANEL_SIZE[1]) if square else PANEL_SIZE
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


def _probit(rate: np.ndarray | float) -> np.ndarray:
    return norm.ppf(np.clip(rate, DET_RATE_FLOOR, 1 - DET_RATE_FLOOR))


def _pooled_trials(runs_dir: Path, cell_ids: Iterable[str]) -> pd.DataFrame | None:
    """The trials of all ``cell_ids`` in one table; None if a file is missing or a score is NaN."""
    paths = [runs_dir / f"{cell_id}.preds.csv" for cell_id in cell_ids]
    if not all(path.exists() for path in paths):
        return None
    trials = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
    return None if trials["score"].isna().any() else trials


def _draw_det(ax: Axes, variant: str, trials: pd.DataFrame) -> None:
    fpr, fnr = det_points(trials["target"], trials["score"])
    pooled_eer = metrics.eer(trials["score"], trials["target"])
    line, = ax.plot(_probit(fpr), _probit(fnr), label=f"{variant} (EER {pooled_eer:.1%})")
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
    ax.legend(fontsize=7, loc="upper right", title="pooled over seeds and folds", title_fontsize=7)


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{_safe_name(stem)}.{suffix}" for suffix in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths
