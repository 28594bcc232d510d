"""Figures from a fabricated results set: which files are written, and the numbers they draw."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import det_curve, roc_curve

from ctal_bench.analysis import plots
from ctal_bench.results import DONE, FAILED, CellKey, ResultsStore, frame
from ctal_bench.train import metrics

SUITE = "smoke"
PLAIN = ("ctal", "tfn", "no_fusion")
SWEEP_VALUES = (0.05, 0.3, 0.5)
TASK_METRICS = {"emotion": ("ua", 0.6), "sentiment": ("mae", 0.8), "verification": ("eer", 0.2)}
SEEDS = (0, 1, 2)
TRIALS_PER_CELL = 60
EPOCHS = 10
PRETRAIN_EPOCHS = 6
PRETRAINED_BY = {"ctal": "ctal", "no_fusion": "ctal"}  # variant -> whose pre-training it shares; tfn has none


def _variants() -> list[tuple[str, str]]:
    """(variant, ablation) in the order the suite runs them."""
    ablation = {"ctal": "", "tfn": "", "no_fusion": "no_fusion"}
    return [(v, ablation[v]) for v in PLAIN] + [(f"mask_ratio={x}", "mask_ratio") for x in SWEEP_VALUES]


def _trials(rng: np.random.Generator, n: int) -> pd.DataFrame:
    target = np.arange(n) % 2
    return pd.DataFrame({"enroll": [f"e{i}" for i in range(n)], "test": [f"t{i}" for i in range(n)],
                         "enroll_speaker": "a", "test_speaker": np.where(target == 1, "a", "b"),
                         "target": target, "score": rng.normal(size=n) + 1.5 * target})


def _confusion(rng: np.random.Generator) -> list[list[int]]:
    return (rng.integers(0, 5, size=(4, 4)) + 10 * np.eye(4, dtype=int)).tolist()


def _finetune_curve(rng: np.random.Generator, level: float) -> list[dict]:
    """A dev curve rising towards ``level``, stopped early at a random epoch."""
    epochs = int(rng.integers(5, EPOCHS + 1))
    return [{"epoch": e, "train_task": 1.0 / (e + 1), "train_aux": 0.0, "train_loss": 1.0 / (e + 1),
             "dev_score": level * (1 - np.exp(-(e + 1) / 3)) + 0.01 * rng.normal()} for e in range(epochs)]


def _pretraining(variant: str, seed: int) -> tuple[dict | None, list[dict] | None]:
    """(pre-training record, its curve): one per pre-trained config and seed, shared as the runner shares it."""
    owner = PRETRAINED_BY.get(variant, variant if variant.startswith("mask_ratio") else None)
    if owner is None:
        return None, None
    curve = [{"epoch": e, "train_mlm": 6.0 / (e + 1) + seed, "train_mam": 1.0 / (e + 1), "train_loss": 0.0}
             for e in range(PRETRAIN_EPOCHS)]
    return {"key": f"{owner}-seed{seed}", "reused": True}, curve


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[ResultsStore, list[dict]]:
    """A store holding every cell (3 seeds) of 6 variants x 3 tasks, plus verification predictions."""
    store = ResultsStore(tmp_path_factory.mktemp("results"))
    rng = np.random.default_rng(0)
    for variant, ablation in _variants():
        for task, (metric, level) in TASK_METRICS.items():
            for seed in SEEDS:
                key = CellKey(SUITE, variant, task, "synth", "0", seed)
                extra = {"confusion_matrix": _confusion(rng)} if task == "emotion" else {}
                curve = _finetune_curve(rng, level)
                pretrain, pretrain_curve = _pretraining(variant, seed)
                store.write(key, {
                    "status": DONE, "config_hash": "h", "model": "ctal", "ablation": ablation,
                    "sweep_value": float(variant.split("=")[1]) if "=" in variant else None, "scale": "smoke",
                    "metrics": {"test": {metric: level + 0.05 * rng.normal()}}, "parameters": 1000,
                    "timing": {"train_samples_per_second": float(rng.uniform(10, 1000))},
                    "best_epoch": int(np.argmax([row["dev_score"] for row in curve])),
                    "config": {"finetune": {"epochs": EPOCHS, "patience": 3}},
                    "curves": {"finetune": curve, "pretrain": pretrain_curve}, "pretrain": pretrain,
                    "extra": extra})
                if task == "verification":
                    store.write_predictions(key, _trials(rng, TRIALS_PER_CELL))
    store.write(CellKey(SUITE, "broken", "emotion", "synth", "0", 0),
                {"status": FAILED, "config_hash": "h", "traceback": "boom"})
    return store, list(store.records(SUITE))


@pytest.fixture(scope="module")
def cells(results) -> pd.DataFrame:
    return frame(results[1])


def _assert_figures(paths: list[Path], stems: set[str]) -> None:
    """Exactly one PNG and one PDF per stem, each a non-empty file of its format."""
    assert sorted(p.name for p in paths) == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "pdf"))
    for path in paths:
        head = path.read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else head.startswith(b"%PDF")


def test_seed_distributions_one_figure_per_task(cells, tmp_path):
    paths = plots.seed_distributions(cells, tmp_path / "new" / "dir")
    _assert_figures(paths, {f"seeds-{task}" for task in TASK_METRICS})


def test_sweep_curves_one_figure_per_task_and_none_without_rows(cells, tmp_path):
    paths = plots.sweep_curves(cells, "mask_ratio", tmp_path)
    _assert_figures(paths, {f"sweep-mask_ratio-{task}" for task in TASK_METRICS})
    assert plots.sweep_curves(cells, "no_such_sweep", tmp_path / "none") == []
    assert plots.sweep_curves(cells, "no_fusion", tmp_path / "none") == []  # an ablation, not a sweep
    assert not (tmp_path / "none").exists()


def test_sweep_curves_draw_a_single_seed_without_an_interval(cells, tmp_path):
    one_seed = cells[(cells["seed"] == 0) & (cells["task"] == "emotion")]
    _assert_figures(plots.sweep_curves(one_seed, "mask_ratio", tmp_path), {"sweep-mask_ratio-emotion"})


def test_quality_vs_throughput_one_figure_per_task(cells, tmp_path):
    _assert_figures(plots.quality_vs_throughput(cells, tmp_path), {f"throughput-{t}" for t in TASK_METRICS})


def test_normalised_confusion_sums_then_divides_each_row():
    a = [[3, 1, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0], [1, 0, 0, 1]]
    b = [[1, 1, 0, 2], [0, 0, 4, 0], [0, 0, 0, 0], [0, 0, 0, 2]]
    summed = np.array([[4, 2, 0, 2], [0, 2, 6, 0], [np.nan] * 4, [1, 0, 0, 3]])
    expected = summed / np.array([[8], [8], [1], [4]])
    got = plots.normalised_confusion([a, b])
    np.testing.assert_allclose(got, expected)  # equal_nan: a class never seen has no recall
    np.testing.assert_allclose(got[[0, 1, 3]].sum(axis=1), 1.0)


def test_confusion_matrices_one_figure_per_variant_with_emotion_cells(results, tmp_path):
    paths = plots.confusion_matrices(results[1], tmp_path)
    stems = {"confusion-ctal", "confusion-tfn", "confusion-no_fusion"} | {
        f"confusion-mask_ratio-{x}" for x in SWEEP_VALUES}  # no figure for the failed "broken" cell
    _assert_figures(paths, stems)


def test_det_points_are_sklearn_det_curve():
    trials = _trials(np.random.default_rng(1), 500)
    fpr, fnr = plots.det_points(trials["target"], trials["score"])
    expected_fpr, expected_fnr, _ = det_curve(trials["target"], trials["score"])
    np.testing.assert_array_equal(fpr, expected_fpr)
    np.testing.assert_array_equal(fnr, expected_fnr)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_det_curve_crosses_the_diagonal_at_the_roc_eer(seed):
    """The EER marker (metrics.eer) lies on the drawn curve, at sklearn's ROC-based EER."""
    trials = _trials(np.random.default_rng(seed), 400)
    fpr, fnr = plots.det_points(trials["target"], trials["score"])
    gap = fnr - fpr
    order = np.argsort(gap)
    crossing = np.interp(0.0, gap[order], fpr[order])
    roc_fpr, roc_tpr, _ = roc_curve(trials["target"], trials["score"])
    roc_eer = brentq(lambda x: 1.0 - x - interp1d(roc_fpr, roc_tpr)(x), 0.0, 1.0)
    assert crossing == pytest.approx(roc_eer, abs=1e-6)
    assert metrics.eer(trials["score"], trials["target"]) == pytest.approx(roc_eer, abs=1e-6)


def test_det_curves_pool_seeds_and_leave_out_a_variant_missing_predictions(results, cells, tmp_path,
                                                                           monkeypatch):
    store, _ = results
    drawn_trials = []
    real_det_points = plots.det_points

    def recording_det_points(targets, scores):
        drawn_trials.append(len(targets))
        return real_det_points(targets, scores)

    monkeypatch.setattr(plots, "det_points", recording_det_points)
    _assert_figures(plots.det_curves(cells, store.predictions, tmp_path), {"det-verification"})
    assert drawn_trials == [len(SEEDS) * TRIALS_PER_CELL] * len(_variants())

    drawn_trials.clear()
    one_file_missing = cells.copy()
    tfn_seed_1 = (cells["variant"] == "tfn") & (cells["task"] == "verification") & (cells["seed"] == 1)
    one_file_missing.loc[tfn_seed_1, "cell_id"] += "-never-written"
    _assert_figures(plots.det_curves(one_file_missing, store.predictions, tmp_path), {"det-verification"})
    assert drawn_trials == [len(SEEDS) * TRIALS_PER_CELL] * (len(_variants()) - 1)


def test_det_curves_without_verification_rows_write_nothing(cells, tmp_path):
    assert plots.det_curves(cells[cells["task"] == "emotion"], ResultsStore(tmp_path).predictions, tmp_path / "out") == []


def test_write_all_writes_every_figure(results, cells, tmp_path):
    store, records = results
    small = cells[cells["variant"].isin(["ctal", "mask_ratio=0.3"]) & (cells["seed"] < 2)]
    small_records = [r for r in records if r["cell"]["variant"] == "ctal"]
    paths = plots.write_all(small, small_records, store.predictions, tmp_path, sweeps=["mask_ratio"])
    kinds = ("seeds", "throughput", "sweep-mask_ratio")
    per_task = {f"{kind}-{task}" for kind in kinds for task in TASK_METRICS}
    curves = {f"curves-{task}" for task in TASK_METRICS}
    _assert_figures(paths, per_task | curves | {"confusion-ctal", "det-verification", "pretrain-curves"})


def test_finetune_curves_one_row_per_epoch_and_the_selected_epoch_marked(results):
    records = [r for r in results[1] if r["status"] == DONE]
    curves = plots.finetune_curves(records)
    assert len(curves) == sum(len(r["curves"]["finetune"]) for r in records)
    selected = curves[curves["selected"]]
    assert len(selected) == len(records)  # one per cell, 1-based
    assert sorted(selected["epoch"]) == sorted(r["best_epoch"] + 1 for r in records)
    assert (curves["budget"] == EPOCHS).all()


def test_learning_curves_one_figure_per_task_and_none_without_curves(results, tmp_path):
    _, records = results
    _assert_figures(plots.learning_curves(records, tmp_path), {f"curves-{task}" for task in TASK_METRICS})
    no_curves = [{k: v for k, v in r.items() if k != "curves"} for r in records]
    assert plots.learning_curves(no_curves, tmp_path / "none") == []
    assert plots.pretrain_curves(no_curves, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_learning_curves_of_many_variants_and_budgets(results, tmp_path):
    """18 variants (a paper suite's count) in one figure; one variant with its own budget."""
    _, records = results
    many = []
    for copy in range(3):
        for r in records:
            if r["status"] == DONE and r["cell"]["task"] == "emotion":
                budget = {"epochs": 20, "patience": 5} if r["cell"]["variant"] == "tfn" and copy == 0 else None
                many.append({**r, "cell": {**r["cell"], "variant": f"{r['cell']['variant']}-{copy}"},
                             "config": {"finetune": budget} if budget else r["config"]})
    _assert_figures(plots.learning_curves(many, tmp_path), {"curves-emotion"})


def test_pretrain_runs_count_each_pretraining_once_and_group_its_seeds():
    from_fixture = []
    for variant in ("ctal", "no_fusion", "tfn", "mask_ratio=0.3"):
        for task in TASK_METRICS:
            for seed in SEEDS:
                pretrain, curve = _pretraining(variant, seed)
                from_fixture.append({"status": DONE, "cell": {"variant": variant, "task": task},
                                     "pretrain": pretrain, "curves": {"finetune": [], "pretrain": curve}})
    runs = plots.pretrain_runs(from_fixture)
    assert {label: len(curves) for label, curves in runs.items()} == {"ctal, no_fusion": 3, "mask_ratio=0.3": 3}
    assert sorted(c[0]["train_mlm"] for c in runs["ctal, no_fusion"]) == [6.0, 7.0, 8.0]  # a curve per seed


def test_pretrain_runs_name_tasks_where_variants_alone_are_ambiguous():
    """Per-task settings (say, tuned ones) make a pre-training per task: same variant, two configs."""
    def used(task, seed):
        return {"status": DONE, "cell": {"variant": "ctal", "task": task}, "pretrain": {"key": f"{task}{seed}"},
                "curves": {"pretrain": [{"epoch": 0, "train_mlm": 1.0, "train_mam": 1.0}]}}

    runs = plots.pretrain_runs([used(task, seed) for task in ("emotion", "sentiment") for seed in SEEDS])
    assert {label: len(curves) for label, curves in runs.items()} == {"ctal (emotion)": 3, "ctal (sentiment)": 3}


def test_pretrain_curves_written_only_where_a_pretraining_is(results, tmp_path):
    _, records = results
    _assert_figures(plots.pretrain_curves(records, tmp_path), {"pretrain-curves"})
    baselines = [r for r in records if r["cell"]["variant"] == "tfn"]
    assert plots.pretrain_curves(baselines, tmp_path / "none") == []
    _assert_figures(plots.learning_curves(baselines, tmp_path / "tfn"), {f"curves-{t}" for t in TASK_METRICS})


# ---- figures a paper can use (issue 25, item 8) ---------------------------------------------------

@pytest.fixture(scope="module")
def paper_sized(tmp_path_factory):
    """Every variant of the declared paper suite (models, ablations, sweep values), 3 seeds on
    each task of two datasets, in an alphabetical mix as the results store lists them."""
    from ctal_bench import catalog, declarations
    from ctal_bench.experiment.plan import suite_variants

    catalog.load()
    decl = declarations.load()
    variants = suite_variants(decl, decl.suites.get("paper"), None)
    assert len(variants) >= 18
    store = ResultsStore(tmp_path_factory.mktemp("paper"))
    rng = np.random.default_rng(5)
    for variant in sorted(variants, key=lambda v: v.name):
        for dataset in ("synth", "mosi"):
            for task, (metric, level) in TASK_METRICS.items():
                for seed in SEEDS:
                    key = CellKey("paper", variant.name, task, dataset, "0", seed)
                    curve = _finetune_curve(rng, level)
                    store.write(key, {
                        "status": DONE, "config_hash": "h", "model": variant.model, "ablation": variant.ablation,
                        "sweep_value": variant.sweep_value, "scale": "smoke",
                        "metrics": {"test": {metric: level + 0.002 * rng.normal()}}, "parameters": 1000,
                        "timing": {"train_samples_per_second": float(200 + rng.normal())},  # one cluster
                        "best_epoch": int(np.argmax([row["dev_score"] for row in curve])),
                        "config": {"finetune": {"epochs": EPOCHS, "patience": 3}},
                        "curves": {"finetune": curve, "pretrain": None}, "pretrain": None,
                        "extra": {"confusion_matrix": _confusion(rng)} if task == "emotion" else {}})
                    if task == "verification":
                        store.write_predictions(key, _trials(rng, TRIALS_PER_CELL))
    order = [v.name for v in variants]
    return store, list(store.records("paper")), order


def _label_boxes(fig) -> list[tuple[str, object]]:
    """(text, window extent) of every visible tick label, annotation and legend entry of ``fig``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    def drawn(labels, limits, coordinate):  # matplotlib keeps labels of ticks outside the view, undrawn
        low, high = sorted(limits)
        span = high - low
        return [t for t in labels if low - 1e-9 * span <= t.get_position()[coordinate] <= high + 1e-9 * span]

    texts = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += drawn(ax.get_xticklabels(), ax.get_xlim(), 0) + drawn(ax.get_yticklabels(), ax.get_ylim(), 1)
        texts += list(ax.texts)
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    for legend in fig.legends:
        texts += legend.get_texts()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]


def _overlaps(boxes) -> list[tuple[str, str]]:
    found = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if width > 1 and height > 1:  # pixels: touching is fine
                found.append((a, b))
    return found


@pytest.mark.integration
def test_figures_at_the_paper_suites_size_have_no_overlapping_labels(paper_sized, tmp_path, monkeypatch):
    store, records, order = paper_sized
    figures = {}
    real_save = plots._save

    def keep(fig, out_dir, stem):
        figures[stem] = fig
        return real_save(fig, out_dir, stem)

    monkeypatch.setattr(plots, "_save", keep)
    plots.write_all(frame(records), records, store.predictions, tmp_path, ["mask_ratio"], order=order,
                    reference="late_fusion")
    assert {"seeds-emotion", "throughput-emotion", "sweep-mask_ratio-emotion", "det-verification",
            "curves-emotion"} <= set(figures)
    for stem, fig in figures.items():
        assert not _overlaps(_label_boxes(fig)), (stem, _overlaps(_label_boxes(fig))[:5])


def test_seed_figures_list_variants_down_the_page_grouped_with_the_reference_marked(paper_sized, tmp_path,
                                                                                     monkeypatch):
    store, records, order = paper_sized
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem: figures.setdefault(stem, fig) and [])
    plots.seed_distributions(frame(records), tmp_path, order=order, reference="late_fusion")
    ax = figures["seeds-emotion"].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    expected = [name + (" (reference)" if name == "late_fusion" else "") for name in order]
    assert labels == expected  # models, then ablations, then sweep values: the suite's order, top down
    # without a declared order: models, then ablations, then each sweep by value
    cells = frame(records)
    grouped = plots.variant_order(cells)
    plain = set(cells.loc[cells["ablation"] == "", "variant"])
    swept = list(cells.loc[cells["sweep_value"].notna()].sort_values("sweep_value")["variant"].drop_duplicates())
    assert set(grouped[:len(plain)]) == plain and grouped[-len(swept):] == swept
