"""Tables and `report`: marks where (and only where) the truth says, honest captions, valid output."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctal_bench import catalog, declarations
from ctal_bench.analysis import tables
from ctal_bench.analysis.report import report
from ctal_bench.results import CellKey, ResultsStore, frame

ROOT = Path(__file__).resolve().parent.parent
TASK_METRICS = {"emotion": ("wa", "ua", "macro_f1"), "sentiment": ("mae", "corr"), "verification": ("eer", "min_dcf")}


@pytest.fixture(autouse=True, scope="module")
def registered():
    catalog.load()


def record(variant, task, seed, metrics, suite="paper", ablation="", best_epoch=1, epochs=10, patience=3,
           trained=None, fold="0", dataset="synth"):
    """A finished cell; it trained ``trained`` epochs (default: the whole budget)."""
    sweep_value = float(variant.split("=")[1]) if "=" in variant else None
    curve = [{"epoch": e, "train_loss": 1.0, "dev_score": 0.5} for e in range(epochs if trained is None else trained)]
    return {"status": "done", "config_hash": f"h{seed}", "model": "ctal" if ablation else variant,
            "ablation": ablation, "sweep_value": sweep_value, "scale": "cpu", "metrics": {"dev": metrics, "test": metrics},
            "parameters": 1000, "timing": {"train_samples_per_second": 100.0}, "best_epoch": best_epoch,
            "config": {"finetune": {"epochs": epochs, "patience": patience}},
            "curves": {"finetune": curve, "pretrain": None},
            "cell": {"suite": suite, "variant": variant, "task": task, "dataset": dataset, "fold": fold,
                     "seed": seed}}


def fabricate(rng, shifts: dict[str, float], seeds=5, noise=0.01, ablation=None):
    """Records whose test metrics are reference values + ``shifts[variant]`` (in the better
    direction for positive shifts) + seed noise."""
    base = {"wa": 0.6, "ua": 0.6, "macro_f1": 0.6, "mae": 0.8, "corr": 0.7, "eer": 0.2, "min_dcf": 0.5}
    lower_is_better = {"mae", "eer", "min_dcf"}
    records = []
    for variant, shift in shifts.items():
        for task, names in TASK_METRICS.items():
            for seed in range(seeds):
                metrics = {m: base[m] + (-shift if m in lower_is_better else shift) + rng.normal(0, noise)
                           for m in names}
                records.append(record(variant, task, seed, metrics, ablation=(ablation or {}).get(variant, "")))
    return records


def marks(table: tables.TableData) -> dict[tuple[str, str], str]:
    return {(label.removesuffix(" (reference)"), column): entry.mark
            for label, entries in table.rows for column, entry in zip(table.columns, entries)}


def test_daggers_appear_where_and_only_where_a_real_difference_is():
    rng = np.random.default_rng(0)
    cells = frame(fabricate(rng, {"late_fusion": 0.0, "better": 0.05, "same": 0.0, "worse": -0.05}, noise=0.005))
    table = tables.main_table(cells, ["late_fusion", "better", "same", "worse"],
                              ["emotion", "sentiment", "verification"], "late_fusion", aso=False)
    found = marks(table)
    metric_columns = [c for c in table.columns if c not in ("params", "samples/s")]
    assert len(metric_columns) == 6
    for column in metric_columns:
        assert found[("better", column)] == "‡", column  # p far below 0.01 after Holm
        assert found[("same", column)] == "" and found[("worse", column)] == ""
        assert found[("late_fusion", column)] == ""
    # the best mean is bold, in each column's own direction (lower MAE / EER is better)
    bold = {(label, col) for label, entries in table.rows for col, e in zip(table.columns, entries) if e.bold}
    assert bold == {("better", c) for c in metric_columns}
    assert "Holm" in table.caption and "N = 5" in table.caption and "alpha = 0.05 / 0.01" in table.caption
    assert "↓ lower is better" in table.caption and "synth" in table.caption and "cpu" in table.caption
    comparisons = table.comparisons
    assert len(comparisons) == 3 * 6 and set(comparisons["variant"]) == {"better", "same", "worse"}


@pytest.mark.slow  # 200 simulated tables: 40-85 s on 2 cores
def test_a_over_a_false_positive_rate_is_controlled():
    """200 simulations where no model differs from the reference, N = 5 seeds each."""
    rng = np.random.default_rng(1)
    marked = tested = 0
    for _ in range(200):
        cells = frame(fabricate(rng, {"late_fusion": 0.0, "a": 0.0, "b": 0.0, "c": 0.0}, noise=0.02))
        table = tables.main_table(cells, ["late_fusion", "a", "b", "c"], ["emotion"], "late_fusion", aso=False)
        found = marks(table)
        for (label, column), mark in found.items():
            if label != "late_fusion" and column.startswith("emotion"):
                tested += 1
                marked += mark != ""
    assert tested == 200 * 3 * 2
    assert marked / tested <= 0.07


def a_over_a(rng, families: int, variants: int = 3, metrics: int = 2, n: int = 5) -> dict[str, float]:
    """``families`` simulated tables where no variant differs from the reference (N = ``n`` seeds,
    a seed effect shared by every variant, ``variants`` x ``metrics`` comparisons each), tested and
    marked by the code the tables use. Returns the rate of raw p < 0.05 per comparison, and per
    family the rate of any Holm-corrected rejection (either way) and of any mark (better only)."""
    raw = comparisons = rejected = marked = 0
    for _ in range(families):
        matched = {}
        for metric in range(metrics):
            seed_effect = rng.normal(0, 0.02, n)
            reference = 0.6 + seed_effect + rng.normal(0, 0.02, n)
            for v in range(variants):
                matched[(f"v{v}", "emotion", f"m{metric}")] = (0.6 + seed_effect + rng.normal(0, 0.02, n),
                                                               reference, True, False)
        tests = tables.test_family(matched, "holm")
        comparisons += len(tests)
        raw += sum(c.p_value < tables.ALPHAS[0] for c, _ in tests.values())
        rejected += any(p < tables.ALPHAS[0] for _, p in tests.values())
        marked += any(tables.significance_mark(c, p, "better") for c, p in tests.values())
    return {"per_comparison": raw / comparisons, "comparisons": comparisons, "family_wise": rejected / families,
            "family_wise_marked": marked / families}


def test_a_over_a_p_values_are_calibrated_and_marks_family_wise_controlled():
    """Fast A/A (1500 tables of 6 comparisons, N = 5): raw p-values reject at alpha per comparison
    (a z-test in place of the t-test rejects 12%); Holm keeps the family-wise rate at or below
    alpha (without Holm: 12%); one-sided marks ("better than") at or below alpha / 2 (without the
    direction check: 5%). Bounds: binomial 99.9% intervals."""
    from scipy.stats import binom

    families, alpha = 1500, tables.ALPHAS[0]
    found = a_over_a(np.random.default_rng(11), families)
    low, high = binom.interval(0.999, found["comparisons"], alpha)
    assert low / found["comparisons"] <= found["per_comparison"] <= high / found["comparisons"], found
    assert found["family_wise"] <= binom.ppf(0.999, families, alpha) / families, found
    assert found["family_wise_marked"] <= binom.ppf(0.999, families, alpha / 2) / families, found


def test_ablation_table_marks_only_significantly_worse_variants():
    rng = np.random.default_rng(2)
    records = fabricate(rng, {"ctal": 0.0, "no_fusion": -0.05, "no_orthogonality_loss": 0.0, "causal_audio": 0.05},
                        ablation={"no_fusion": "no_fusion", "no_orthogonality_loss": "no_orthogonality_loss",
                                  "causal_audio": "causal_audio"})
    cells = frame(records)
    table = tables.ablation_table(cells, "ctal", ["no_fusion", "no_orthogonality_loss", "causal_audio"],
                                  ["emotion", "sentiment"], aso=False)
    assert [label for label, _ in table.rows] == ["ctal", "no_fusion", "no_orthogonality_loss", "causal_audio"]
    found = marks(table)
    for column in table.columns:
        assert found[("no_fusion", column)] == "‡"
        assert found[("no_orthogonality_loss", column)] == "" and found[("causal_audio", column)] == ""
    no_fusion_emotion = dict(zip(table.columns, table.rows[1][1]))["emotion ua ↑"]
    assert re.search(r"\(Δ -0\.0[45]\d\)", no_fusion_emotion.text)


def test_sweep_table_has_one_row_per_value_in_order_with_intervals():
    rng = np.random.default_rng(3)
    records = fabricate(rng, {"ctal": 0.0})
    for value in (0.5, 0.05, 0.3):
        records += fabricate(rng, {f"mask_ratio={value}": 0.0}, ablation={f"mask_ratio={value}": "mask_ratio"})
    table = tables.sweep_table(frame(records), "mask_ratio", "ctal", ["emotion"], aso=False)
    assert [label for label, _ in table.rows] == ["mask_ratio=0.05", "mask_ratio=0.3", "mask_ratio=0.5"]
    assert "Benjamini-Hochberg" in table.caption
    assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", table.rows[0][1][0].text)


def test_markdown_and_latex_are_well_formed():
    rng = np.random.default_rng(4)
    cells = frame(fabricate(rng, {"late_fusion": 0.0, "better": 0.05}))
    table = tables.main_table(cells, ["late_fusion", "better"], ["emotion", "sentiment"], "late_fusion", aso=False)
    md = tables.to_markdown(table).splitlines()
    header = next(i for i, line in enumerate(md) if line.startswith("| "))
    widths = {line.count("|") for line in md[header:]}
    assert len(widths) == 1 and re.fullmatch(r"\|---\|(---:\|)+", md[header + 1])
    assert "**" in md[header + 3] and "‡" in md[header + 3]

    tex = tables.to_latex(table)
    env = "table*" if r"\begin{table*}" in tex else "table"
    assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    spec = re.search(r"\\begin\{tabular\}\{(l(r+))\}", tex).group(1)
    body = tex[tex.index(r"\toprule") + len(r"\toprule"):tex.index(r"\bottomrule")].replace(r"\midrule", "")
    rows = [row for row in body.split(r"\\") if row.strip()]
    spans = [sum(int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", row)) - len(re.findall(r"\\multicolumn", row))
             for row in rows]  # a cell spanning k columns stands for k - 1 separators
    assert rows and all(row.count("&") - row.count(r"\&") + extra == len(spec) - 1 for row, extra in zip(rows, spans))
    assert "late\\_fusion" in tex and r"$^{\ddagger}$" in tex and "±" not in tex


PAPER_MODELS = ("ctal", "late_fusion", "tfn", "lmf", "mult", "text_only", "audio_only")
PAPER_ABLATIONS = ("no_pretraining", "no_cross_modal_pretraining", "no_fusion", "no_orthogonality_loss", "causal_audio",
                   "text_only_head", "audio_only_head", "reseeded")
TWO_COLUMN_PAPER = r"""\documentclass[10pt,twocolumn]{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\usepackage{graphicx}
\setlength{\textwidth}{455.24pt}  % EMNLP / ACL: 16 cm of text in two 7.7 cm columns
\setlength{\columnsep}{0.6cm}
\setlength{\textheight}{9.25in}
\setlength{\topmargin}{-0.5in}
\begin{document}
Some text in the first column.
\input{table}
\end{document}
"""


def paper_sized_results(root: Path, seeds: int = 5) -> None:
    """A paper suite's results: 7 models, 8 ablations and a 4-value sweep on three tasks, with a
    failed cell, a NaN Pearson r and profiles for the efficiency columns."""
    rng = np.random.default_rng(12)
    shifts = {m: 0.01 * i for i, m in enumerate(PAPER_MODELS)} | {a: -0.01 for a in PAPER_ABLATIONS}
    shifts |= {f"mask_ratio={v}": 0.0 for v in (0.05, 0.15, 0.3, 0.5)}
    ablation = {a: a for a in PAPER_ABLATIONS} | {f"mask_ratio={v}": "mask_ratio" for v in (0.05, 0.15, 0.3, 0.5)}
    records = fabricate(rng, shifts, seeds=seeds, ablation=ablation)
    for r in records:
        if r["cell"]["variant"] == "tfn" and r["cell"]["task"] == "sentiment" and r["cell"]["seed"] == 1:
            r["metrics"]["test"]["corr"] = float("nan")
    lost = next(r for r in records if r["cell"]["variant"] == "mult" and r["cell"]["seed"] == 2)
    records.remove(lost)
    store = write_records(root, records)
    store.write(CellKey(**lost["cell"]), {"status": "failed", "config_hash": "h", "model": "mult",
                                          "traceback": "Traceback (most recent call last):\n"
                                                       "RuntimeError: CUDA out of memory"})
    (root / "profile").mkdir()
    for model in PAPER_MODELS:
        (root / "profile" / f"{model}.json").write_text(json.dumps({
            "model": model, "dtype": "bf16", "scale": "paper", "environment": {"device": "NVIDIA H100 80GB HBM3"},
            "phases": {"finetune": {"flops_per_sample": 2.5e10}, "latency_batch1": {"median": {"p50_s": 0.0123}}}}))


def test_latex_is_booktabs_with_grouped_headers_compact_cells_and_a_width_that_fits():
    rng = np.random.default_rng(4)
    cells = frame(fabricate(rng, {"late_fusion": 0.0, "better": 0.05}))
    table = tables.main_table(cells, ["late_fusion", "better"], ["emotion", "sentiment", "verification"],
                              "late_fusion", aso=False)
    tex = tables.to_latex(table)
    assert tex.splitlines()[1] == r"\begin{table*}[t]" and r"\cmidrule(lr){2-3}" in tex
    assert r"\multicolumn{2}{c}{emotion} & \multicolumn{2}{c}{sentiment} & \multicolumn{2}{c}{verification}" in tex
    assert re.search(r"0\.\d{3}\$_\{\\pm\.\d{3}\}\$", tex)  # 0.650$_{\pm.004}$
    assert "params" not in tex and "samples/s" not in tex and "Params:" not in tex  # efficiency: optional
    full = tables.to_latex(table, efficiency=True)
    assert "params" in full and "Params: trainable parameters" in full
    narrow = tables.to_latex(tables.ablation_table(cells, "late_fusion", ["better"], ["emotion"], aso=False))
    assert narrow.splitlines()[1] == r"\begin{table}[t]"  # one task column fits a column of a two-column paper


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended; "
                    ".ci/run installs them)")
def test_every_generated_table_fits_a_two_column_paper(tmp_path):
    """Every .tex that `report` writes for a paper-sized suite compiles in a two-column EMNLP-sized
    page with no overfull box and no float taller than the page."""
    paper_sized_results(tmp_path, seeds=3)  # N < 5: no ASO, which takes seconds per comparison
    written = report(tmp_path, declarations.load(), ["paper"], figures=False)
    sources = [p for p in written if p.suffix == ".tex"]
    assert {p.name for p in sources} >= {"main.tex", "main.efficiency.tex", "ablations.tex", "sweep-mask_ratio.tex",
                                          "convergence.tex"}
    for source in sources:
        work = tmp_path / "latex" / source.stem
        work.mkdir(parents=True)
        (work / "table.tex").write_text(source.read_text())
        (work / "paper.tex").write_text(TWO_COLUMN_PAPER)
        proc = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", "paper.tex"], cwd=work,
                              capture_output=True, text=True, timeout=120)
        log = (work / "paper.log").read_text(errors="replace")
        assert proc.returncode == 0, (source.name, proc.stdout[-2000:])
        bad = [line for line in log.splitlines() if line.startswith(("Overfull", "LaTeX Warning: Float too large"))]
        assert not bad, (source.name, bad)


def test_still_improving_is_the_last_fifth_of_the_budget():
    assert not tables.still_improving(7, 10)  # the 8th of 10 epochs
    assert tables.still_improving(8, 10) and tables.still_improving(9, 10)
    assert not tables.still_improving(23, 30) and tables.still_improving(24, 30)  # the 25th of 30
    assert tables.still_improving(0, 1) and not tables.still_improving(0, 5) and tables.still_improving(4, 5)


def late(best_epochs: dict[str, tuple[int, ...]], ablation: dict[str, str] | None = None, **budget) -> pd.DataFrame:
    """Cells of each variant on emotion, seed i selecting ``best_epochs[variant][i]`` (0-based)."""
    metrics = {"wa": 0.6, "ua": 0.6}
    return frame([record(variant, "emotion", seed, metrics, best_epoch=b, ablation=(ablation or {}).get(variant, ""),
                         **budget)
                  for variant, bests in best_epochs.items() for seed, b in enumerate(bests)])


def test_still_improving_mark_needs_two_seeds_in_the_last_fifth():
    best_epochs = {"two_late": (8, 9, 2), "boundary": (8, 7, 7), "one_late": (9, 1, 1), "none": (1, 2, 3)}
    cells = late(best_epochs)
    assert [tables.improving_seeds(cells, v, "emotion") for v in best_epochs] == [2, 1, 1, 0]
    table = tables.main_table(cells, list(best_epochs), ["emotion"], "none", aso=False)
    flags = {label.removesuffix(" (reference)"): [e.flag for e in entries] for label, entries in table.rows}
    assert flags == {"two_late": ["ˢ", "", "", ""], "boundary": [""] * 4, "one_late": [""] * 4, "none": [""] * 4}
    assert table.notes == [tables.IMPROVING_NOTE] and "at least 2 seeds" in tables.IMPROVING_NOTE
    md = tables.to_markdown(table)
    assert "0.000ˢ" in md and md.rstrip().endswith(tables.IMPROVING_NOTE)
    tex = tables.to_latex(table)
    assert r"$_{\pm.000}$\textsuperscript{s}" in tex and r"\footnotesize \textsuperscript{s} best dev epoch" in tex
    quiet = tables.main_table(cells, ["boundary", "none"], ["emotion"], "none", aso=False)
    assert quiet.notes == [] and "ˢ" not in tables.to_markdown(quiet)


def test_still_improving_counts_seeds_not_folds():
    metrics = {"wa": 0.6, "ua": 0.6}
    cells = frame([record("ctal", "emotion", 0, metrics, best_epoch=9, fold=fold) for fold in "12"]
                  + [record("ctal", "emotion", 1, metrics, best_epoch=2, fold=fold) for fold in "12"])
    assert tables.improving_seeds(cells, "ctal", "emotion") == 1


def test_ablation_and_sweep_tables_mark_still_improving_variants():
    cells = late({"ctal": (1, 1), "no_fusion": (9, 8), "mask_ratio=0.3": (8, 8)},
                 ablation={"no_fusion": "no_fusion", "mask_ratio=0.3": "mask_ratio"})
    ablations = tables.ablation_table(cells, "ctal", ["no_fusion"], ["emotion"], aso=False)
    assert [e.flag for _, entries in ablations.rows for e in entries] == ["", "ˢ"] and ablations.notes
    sweep = tables.sweep_table(cells, "mask_ratio", "ctal", ["emotion"], aso=False)
    assert [e.flag for _, entries in sweep.rows for e in entries] == ["ˢ"] and sweep.notes


def test_captions_state_the_budget():
    cells = late({"ctal": (1, 1), "late_fusion": (1, 1)})
    caption = tables.main_table(cells, ["ctal", "late_fusion"], ["emotion"], "late_fusion", aso=False).caption
    assert ("Budget: up to 10 epochs, early stopping after 3 epochs without dev improvement, best dev epoch "
            "selected.") in caption
    cells = late({"ctal": (1, 1), "no_fusion": (1, 1)}, ablation={"no_fusion": "no_fusion"}, epochs=8, patience=8)
    caption = tables.ablation_table(cells, "ctal", ["no_fusion"], ["emotion"], aso=False).caption
    assert "Budget: 8 epochs without early stopping, best dev epoch selected." in caption  # patience >= epochs
    old = [{k: v for k, v in r.items() if k != "config"} for r in fabricate(np.random.default_rng(0), {"a": 0.0})]
    assert "Budget" not in tables.main_table(frame(old), ["a"], ["emotion"], "a", aso=False).caption  # unknown


def test_captions_name_who_got_which_budget_where_budgets_differ():
    metrics = {"wa": 0.6, "ua": 0.6, "mae": 0.8, "corr": 0.7}
    records = [record(v, task, seed, metrics) for v in ("ctal", "late_fusion") for task in ("emotion", "sentiment")
               for seed in range(2)]
    records += [record("tfn", task, seed, metrics, epochs=25, patience=8) for task in ("emotion", "sentiment")
                for seed in range(2)]
    records += [record("lmf", "emotion", seed, metrics) for seed in range(2)]
    records += [record("lmf", "sentiment", seed, metrics, epochs=25, patience=8) for seed in range(2)]
    table = tables.main_table(frame(records), ["ctal", "late_fusion", "tfn", "lmf"], ["emotion", "sentiment"],
                              "late_fusion", aso=False)
    assert ("Budgets differ: up to 10 epochs, early stopping after 3 epochs without dev improvement for ctal, "
            "late_fusion, lmf (emotion); up to 25 epochs, early stopping after 8 epochs without dev improvement "
            "for tfn, lmf (sentiment); best dev epoch selected.") in table.caption


def test_convergence_counts_match_a_hand_count():
    metrics = {"wa": 0.6, "ua": 0.6}
    records = [record("ctal", "emotion", 0, metrics, best_epoch=9),  # 10th of 10: improving
               record("ctal", "emotion", 1, metrics, best_epoch=8),  # 9th: improving
               record("ctal", "emotion", 2, metrics, best_epoch=3, trained=7),  # stopped early at 7
               record("ctal", "emotion", 3, metrics, best_epoch=7),  # 8th: not improving
               record("tfn", "emotion", 0, metrics, best_epoch=2, epochs=25, patience=8, trained=11),
               record("tfn", "emotion", 1, metrics, best_epoch=24, epochs=25, patience=8)]
    old = record("lmf", "emotion", 0, metrics, best_epoch=4)
    del old["config"], old["curves"]  # a record from before budgets were kept
    summary = tables.convergence(frame(records + [old]), ["ctal", "tfn", "lmf", "absent"], ["emotion"])
    assert summary.to_dict("records") == [
        {"variant": "ctal", "task": "emotion", "cells": 4, "epochs": 10, "patience": 3, "median_best_epoch": 8.5,
         "still_improving": 2, "stopped_early": 1},
        {"variant": "tfn", "task": "emotion", "cells": 2, "epochs": 25, "patience": 8, "median_best_epoch": 14.0,
         "still_improving": 1, "stopped_early": 1},
        {"variant": "lmf", "task": "emotion", "cells": 1, "epochs": None, "patience": None,  # NA
         "median_best_epoch": 5.0, "still_improving": None, "stopped_early": None}]
    rendered = tables.to_markdown(tables.convergence_table(summary))
    assert "| ctal | emotion | 4 | 10 | 3 | 8.5 | 2 | 1 |" in rendered
    assert "| lmf | emotion | 1 | – | – | 5 | – | – |" in rendered


def test_report_writes_tables_for_every_suite_and_prints_the_main_table(tmp_path):
    rng = np.random.default_rng(5)
    store = ResultsStore(tmp_path)
    records = fabricate(rng, {"late_fusion": 0.0, "ctal": 0.05, "no_fusion": 0.0},
                        ablation={"no_fusion": "no_fusion"}, seeds=3)
    for r in records:
        store.write(CellKey(**r["cell"]), {k: v for k, v in r.items() if k != "cell"})
    frame_rows = len(frame(store.records()))
    assert frame_rows == len(records)
    written = report(tmp_path, declarations.load(), ["paper"], figures=False)
    names = sorted(p.name for p in written)
    assert {"main.md", "main.tex", "ablations.md", "ablations.tex", "main.comparisons.csv", "convergence.md",
            "convergence.tex", "convergence.csv"} <= set(names)
    main = (tmp_path / "tables" / "paper" / "synth" / "main.md").read_text()
    assert main.index("| ctal") < main.index("| late_fusion")  # the suite's declared order
    comparisons = pd.read_csv(tmp_path / "tables" / "paper" / "synth" / "main.comparisons.csv")
    assert set(comparisons["variant"]) == {"ctal"} and (comparisons["n"] == 3).all()
    assert "Budget: up to 10 epochs, early stopping after 3 epochs" in main
    convergence = pd.read_csv(tmp_path / "tables" / "paper" / "synth" / "convergence.csv")
    assert list(convergence["variant"].drop_duplicates()) == ["ctal", "late_fusion", "no_fusion"]
    assert (convergence["cells"] == 3).all() and (convergence["still_improving"] == 0).all()


def test_report_joins_profile_results_into_the_main_table(tmp_path):
    rng = np.random.default_rng(6)
    store = ResultsStore(tmp_path)
    for r in fabricate(rng, {"late_fusion": 0.0, "ctal": 0.0}, seeds=2):
        store.write(CellKey(**r["cell"]), {k: v for k, v in r.items() if k != "cell"})
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "ctal.json").write_text(json.dumps({
        "model": "ctal", "dtype": "fp32", "scale": "cpu", "environment": {"device": "cpu"},
        "phases": {"finetune": {"flops_per_sample": 2.5e8}, "latency_batch1": {"median": {"p50_s": 0.0012}}}}))
    report(tmp_path, declarations.load(), ["paper"], figures=False)
    main = (tmp_path / "tables" / "paper" / "synth" / "main.md").read_text()
    assert "| GFLOPs/sample | b1 ms |" in main and "from bench.py profile (cpu, fp32, scale cpu)" in main
    ctal_row = next(line for line in main.splitlines() if line.startswith("| ctal"))
    late_row = next(line for line in main.splitlines() if line.startswith("| late_fusion"))
    assert ctal_row.endswith("| 0.250 | 1.2 |") and late_row.endswith("| – | – |")


def test_report_on_an_empty_directory_is_a_user_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "report", "--results", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no finished result cells" in proc.stderr and "Traceback" not in proc.stderr


# ---- issue 25: tables that cannot mislead ---------------------------------------------------------

def write_records(root: Path, records: list[dict]) -> ResultsStore:
    store = ResultsStore(root)
    for r in records:
        store.write(CellKey(**r["cell"]), {k: v for k, v in r.items() if k != "cell"})
    return store


def two_datasets() -> list[dict]:
    """A synth run and a mosi run of the same suite: MAE 0.80-0.82 on synth, 1.20-1.22 on mosi."""
    records = []
    for dataset, level in (("synth", 0.80), ("mosi", 1.20)):
        for variant, shift in (("late_fusion", 0.0), ("ctal", -0.05)):
            records += [record(variant, "sentiment", seed,
                               {"mae": level + shift + 0.01 * seed, "corr": 0.5 + 0.01 * seed}, dataset=dataset)
                        for seed in range(3)]
    return records


def test_per_seed_never_averages_across_datasets():
    cells = frame(two_datasets())
    synth, mosi = (tables.per_seed(cells, "late_fusion", "sentiment", "mae", d) for d in ("synth", "mosi"))
    assert synth.tolist() == pytest.approx([0.80, 0.81, 0.82]) and mosi.tolist() == pytest.approx([1.20, 1.21, 1.22])
    with pytest.raises(ValueError, match="mosi, synth"):
        tables.per_seed(cells, "late_fusion", "sentiment", "mae")
    with pytest.raises(ValueError, match="one table per dataset"):
        tables.main_table(cells, ["ctal", "late_fusion"], ["sentiment"], "late_fusion", aso=False)


def test_report_writes_one_table_per_dataset_never_their_mean(tmp_path):
    write_records(tmp_path, two_datasets())
    written = report(tmp_path, declarations.load(), ["paper"], figures=False)
    synth = (tmp_path / "tables" / "paper" / "synth" / "main.md").read_text()
    mosi = (tmp_path / "tables" / "paper" / "mosi" / "main.md").read_text()
    assert "| late_fusion (reference) | 0.810 ± 0.010 |" in synth and "test split of synth," in synth
    assert "| late_fusion (reference) | 1.210 ± 0.010 |" in mosi and "test split of mosi," in mosi
    assert "1.010" not in synth + mosi
    for dataset in ("synth", "mosi"):
        assert tmp_path / "tables" / "paper" / dataset / "convergence.csv" in written
        comparisons = pd.read_csv(tmp_path / "tables" / "paper" / dataset / "main.comparisons.csv")
        assert (comparisons["n"] == 3).all()
    assert not (tmp_path / "tables" / "paper" / "main.md").exists()


def test_report_keeps_scales_of_one_dataset_apart(tmp_path):
    records = [record(v, "sentiment", seed, {"mae": 0.8, "corr": 0.5}) for v in ("ctal", "late_fusion")
               for seed in range(3)]
    for r in records[:3]:
        r["scale"] = "smoke"  # ctal at another scale than late_fusion
    write_records(tmp_path, records)
    report(tmp_path, declarations.load(), ["paper"], figures=False)
    assert sorted(p.name for p in (tmp_path / "tables" / "paper").iterdir()) == ["synth-cpu", "synth-smoke"]


def test_no_mark_below_three_seeds_even_for_a_constant_difference():
    """Every seed 0.05 better: scipy's p = 0 used to print a double dagger on N = 2."""
    records = [record(v, "emotion", seed, {"ua": base + 0.1 * seed, "wa": base + 0.1 * seed})
               for v, base in (("late_fusion", 0.5), ("ctal", 0.55)) for seed in range(2)]
    table = tables.main_table(frame(records), ["ctal", "late_fusion"], ["emotion"], "late_fusion", aso=False)
    assert set(marks(table).values()) == {""}
    assert "no mark below N = 3" in table.caption
    assert table.comparisons["p"].isna().all() and table.comparisons["zero_variance"].all()
    # three seeds, the same difference on each: zero variance, reported as such, unmarked
    records = [record(v, "emotion", seed, {"ua": base + 0.1 * seed, "wa": base + 0.1 * seed})
               for v, base in (("late_fusion", 0.5), ("ctal", 0.55)) for seed in range(3)]
    table = tables.main_table(frame(records), ["ctal", "late_fusion"], ["emotion"], "late_fusion", aso=False)
    assert set(marks(table).values()) == {""}
    assert any("same on every seed" in note and "ctal" in note for note in table.notes)


def test_a_mean_over_fewer_seeds_shows_its_n_is_never_bold_and_what_is_missing_is_listed():
    rng = np.random.default_rng(7)
    records = fabricate(rng, {"late_fusion": 0.0, "ctal": 0.02, "tfn": 0.2}, noise=0.005)
    for r in records:  # tfn: a constant predictor on 3 of 5 seeds, its Pearson r undefined
        if r["cell"]["variant"] == "tfn" and r["cell"]["task"] == "sentiment" and r["cell"]["seed"] >= 2:
            r["metrics"]["test"]["corr"] = float("nan")
    failed = pd.DataFrame([{"suite": "paper", "variant": "ctal", "task": "emotion", "dataset": "synth", "fold": "0",
                            "seed": 4, "reason": "RuntimeError: out of memory"}])
    records = [r for r in records if not (r["cell"]["variant"] == "ctal" and r["cell"]["task"] == "emotion"
                                          and r["cell"]["seed"] == 4)]
    table = tables.main_table(frame(records), ["late_fusion", "ctal", "tfn"], ["emotion", "sentiment"],
                              "late_fusion", aso=False, failed=failed)
    entries = {(label.removesuffix(" (reference)"), column): e for label, row in table.rows
               for column, e in zip(table.columns, row)}
    corr = entries[("tfn", "sentiment corr ↑")]
    assert re.fullmatch(r"0\.9\d\d ± 0\.0\d\d \(n=2\)", corr.shown) and not corr.bold and corr.mark == ""
    assert entries[("ctal", "sentiment corr ↑")].bold  # the best mean over all 5 seeds
    ua = entries[("ctal", "emotion ua ↑")]
    assert ua.shown.endswith("(n=4)") and not ua.bold
    assert entries[("tfn", "emotion ua ↑")].shown.count("(n=") == 0
    notes = "\n".join(table.notes)
    assert "tfn · sentiment · corr: seeds 2, 3, 4" in notes and "NaN" in notes
    assert "ctal · emotion · seed 4: RuntimeError: out of memory" in notes and "Failed" in notes
    assert "(n=k)" in table.caption
    md = tables.to_markdown(table)
    assert "(n=2)" in md and "**0.9" not in md.split("tfn")[1].split("\n")[0]


def test_a_seed_with_a_failed_fold_is_not_averaged_over_the_other_folds():
    metrics = {"wa": 0.6, "ua": 0.6}
    records = [record("ctal", "emotion", seed, {**metrics, "ua": 0.5 + 0.1 * int(fold)}, fold=fold)
               for seed in range(3) for fold in "12" if (seed, fold) != (2, "2")]
    values = tables.per_seed(frame(records), "ctal", "emotion", "ua")
    assert values.to_dict() == pytest.approx({0: 0.65, 1: 0.65})


def test_ablate_prints_the_reports_ablation_table_with_seeds_as_replicates(tmp_path):
    """Five folds x three seeds: N is 3 (folds averaged within a seed), not 15, as in the report."""
    from ctal_bench.analysis.report import comparison_tables

    rng = np.random.default_rng(8)
    records = [record(v, "emotion", seed, {"ua": 0.6 + shift + 0.02 * rng.normal(), "wa": 0.6},
                      ablation="" if v == "ctal" else v, fold=str(fold))
               for v, shift in (("ctal", 0.0), ("no_fusion", -0.05)) for seed in range(3) for fold in range(1, 6)]
    write_records(tmp_path, records)
    report(tmp_path, declarations.load(), ["paper"], figures=False)
    found = comparison_tables(ResultsStore(tmp_path).records(), declarations.load(), "paper")
    assert [group for group, _ in found] == ["synth"]
    table = found[0][1]
    assert "N = 3;" in table.caption and tables.to_markdown(table) == (
        tmp_path / "tables" / "paper" / "synth" / "ablations.md").read_text()
    assert comparison_tables(ResultsStore(tmp_path).records(), declarations.load(), "paper", sweep="mask_ratio") == []


def test_a_table_on_a_non_terminal_never_cuts_a_name_or_a_number():
    """rich squeezes tables into 80 columns in a pipe: `emoti…`, `no_cross_modal_p…` (issue 25, item 5)."""
    import io

    from rich.console import Console

    rng = np.random.default_rng(9)
    variants = ["late_fusion", "ctal", "no_cross_modal_pretraining"]
    table = tables.main_table(frame(fabricate(rng, {v: 0.0 for v in variants})), variants,
                              ["emotion", "sentiment", "verification"], "late_fusion", aso=False)
    out = io.StringIO()
    tables.print_rich(Console(file=out, width=80), tables.to_rich(table, "paper · synth"))
    printed = out.getvalue()
    assert "…" not in printed
    for text in [*table.columns, *variants, *(e.shown for _, entries in table.rows for e in entries)]:
        assert text in printed, text


def test_a_model_whose_every_cell_failed_keeps_its_row_and_its_failures_are_listed(tmp_path):
    rng = np.random.default_rng(13)
    store = write_records(tmp_path, fabricate(rng, {"late_fusion": 0.0, "ctal": 0.0}, seeds=3))
    for seed in range(3):
        store.write(CellKey("paper", "tfn", "emotion", "synth", "0", seed),
                    {"status": "failed", "config_hash": "h", "config": {"model": {"name": "tfn"}},
                     "traceback": "Traceback (most recent call last):\nValueError: nan loss"})
    report(tmp_path, declarations.load(), ["paper"], figures=False)
    main = (tmp_path / "tables" / "paper" / "synth" / "main.md").read_text()
    assert "| tfn | – | – |" in main
    assert "Failed cells, left out of the means: tfn · emotion · seeds 0, 1, 2: ValueError: nan loss." in main
