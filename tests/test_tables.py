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

from ctal_bench import catalog, declarations, tables
from ctal_bench.report import report
from ctal_bench.results import CellKey, ResultsStore, frame

ROOT = Path(__file__).resolve().parent.parent
TASK_METRICS = {"emotion": ("wa", "ua", "macro_f1"), "sentiment": ("mae", "corr"), "verification": ("eer", "min_dcf")}


@pytest.fixture(autouse=True, scope="module")
def registered():
    catalog.load()


def record(variant, task, seed, metrics, suite="paper", ablation="", best_epoch=1, epochs=10, patience=3,
           trained=None, fold="0"):
    """A finished cell; it trained ``trained`` epochs (default: the whole budget)."""
    sweep_value = float(variant.split("=")[1]) if "=" in variant else None
    curve = [{"epoch": e, "train_loss": 1.0, "dev_score": 0.5} for e in range(epochs if trained is None else trained)]
    return {"status": "done", "config_hash": f"h{seed}", "model": "ctal" if ablation else variant,
            "ablation": ablation, "sweep_value": sweep_value, "scale": "cpu", "metrics": {"dev": metrics, "test": metrics},
            "parameters": 1000, "timing": {"train_samples_per_second": 100.0}, "best_epoch": best_epoch,
            "config": {"finetune": {"epochs": epochs, "patience": patience}},
            "curves": {"finetune": curve, "pretrain": None},
            "cell": {"suite": suite, "variant": variant, "task": task, "dataset": "synth", "fold": fold,
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
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    spec = re.search(r"\\begin\{tabular\}\{(l(r+))\}", tex).group(1)
    body = tex[tex.index(r"\toprule") + len(r"\toprule"):tex.index(r"\bottomrule")].replace(r"\midrule", "")
    rows = [row for row in body.split(r"\\") if row.strip()]
    assert rows and all(row.count("&") - row.count(r"\&") == len(spec) - 1 for row in rows)
    assert "late\\_fusion" in tex and r"$^{\ddagger}$" in tex and "±" not in tex


def test_latex_compiles_with_pdflatex(tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (the structure is checked above)")
    rng = np.random.default_rng(4)
    cells = frame(fabricate(rng, {"late_fusion": 0.0, "better": 0.05}))
    table = tables.main_table(cells, ["late_fusion", "better"], ["emotion"], "late_fusion", aso=False)
    doc = tmp_path / "t.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   + tables.to_latex(table) + "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", doc.name], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]


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
    assert r"0.000\textsuperscript{s}" in tex and r"\footnotesize \textsuperscript{s} best dev epoch" in tex
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
    main = (tmp_path / "tables" / "paper" / "main.md").read_text()
    assert main.index("| ctal") < main.index("| late_fusion")  # the suite's declared order
    comparisons = pd.read_csv(tmp_path / "tables" / "paper" / "main.comparisons.csv")
    assert set(comparisons["variant"]) == {"ctal"} and (comparisons["n"] == 3).all()
    assert "Budget: up to 10 epochs, early stopping after 3 epochs" in main
    convergence = pd.read_csv(tmp_path / "tables" / "paper" / "convergence.csv")
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
    main = (tmp_path / "tables" / "paper" / "main.md").read_text()
    assert "| GFLOPs/sample | b1 ms |" in main and "from bench.py profile (cpu, fp32, scale cpu)" in main
    ctal_row = next(line for line in main.splitlines() if line.startswith("| ctal"))
    late_row = next(line for line in main.splitlines() if line.startswith("| late_fusion"))
    assert ctal_row.endswith("| 0.250 | 1.2 |") and late_row.endswith("| – | – |")


def test_report_on_an_empty_directory_is_a_user_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "report", "--results", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no finished result cells" in proc.stderr and "Traceback" not in proc.stderr
