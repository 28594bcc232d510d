"""`bench.py report`: result cells -> tables (results/tables/<suite>/<dataset>/) and figures
(results/figures/<suite>/), and each main table on the terminal.

A table is per dataset and scale, never a mean across them (``table_groups``): a suite's cells
on synth go to ``results/tables/<suite>/synth/``, those of a ``--data mosi=PATH`` run of the
same suite to ``results/tables/<suite>/mosi/``. Where one dataset's cells in a suite come from
more than one scale, each scale has its own folder, ``<dataset>-<scale>`` (``synth-smoke``).
Figures stay per suite: each per-task figure has a panel per dataset.

Which rows go where follows from the cells: plain models make the main table, declared
ablations the ablation table (against full CTAL), sweeps one sweep table and figure each; the
convergence table has every variant, to show whether the fine-tuning budget was enough; the
controls table (``ctal_bench.controls``) says which effects planted in the data the suite detected.
Row order follows the suite's declaration where the suite is declared. Failed cells are listed
under the tables they are missing from (``failures``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from rich.console import Console

from ctal_bench import controls, tables
from ctal_bench.declarations import Declarations
from ctal_bench.errors import UserError
from ctal_bench.registry import TASKS
from ctal_bench.results import FAILED, ResultsStore, frame

FORMATS = ("md", "tex")
FULL_MODEL = "ctal"  # ablations are variants of it


def parse_formats(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise UserError(f"--format {text!r}: expected a comma-separated list of {', '.join(FORMATS)}")
    return chosen


def load_profiles(results: Path) -> dict[str, dict]:
    """model -> its ``bench.py profile`` record, where one exists."""
    profiles = {}
    for path in sorted((Path(results) / "profile").glob("*.json")):
        record = json.loads(path.read_text())
        profiles[record["model"]] = record
    return profiles


FAILURE_COLUMNS = ("suite", "variant", "model", "task", "dataset", "fold", "seed", "reason")


def failures(records) -> pd.DataFrame:
    """One row per failed cell: its coordinates, its model and the last line of its traceback."""
    rows = []
    for record in records:
        if record.get("status") != FAILED or "cell" not in record:
            continue
        lines = (record.get("traceback") or "").strip().splitlines()
        rows.append({**record["cell"], "model": record.get("config", {}).get("model", {}).get("name", ""),
                     "reason": lines[-1] if lines else "unknown"})
    return pd.DataFrame(rows, columns=list(FAILURE_COLUMNS))


def table_groups(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(folder name, cells) per dataset and scale of one suite's cells, datasets in order of
    first appearance: ``<dataset>``, or ``<dataset>-<scale>`` per scale where a dataset has
    cells from more than one scale."""
    groups = []
    for dataset, of_dataset in cells.groupby("dataset", sort=False):
        scales = list(dict.fromkeys(of_dataset["scale"].fillna("")))
        for scale in scales:
            group = of_dataset[of_dataset["scale"].fillna("") == scale]
            groups.append((str(dataset) if len(scales) == 1 else f"{dataset}-{scale or 'unnamed'}", group))
    return groups


@dataclass(frozen=True)
class Layout:
    """A suite's cells sorted into the rows of its tables, in order."""

    tasks: list[str]
    models: list[str]  # plain models: the main table
    ablations: list[str]  # ablation variants: the ablation table
    sweeps: dict[str, list[str]]  # sweep -> its variants by swept value: a sweep table each

    @property
    def variants(self) -> list[str]:
        return self.models + self.ablations + [v for swept in self.sweeps.values() for v in swept]


def layout(cells: pd.DataFrame, decl: Declarations, suite: str, failed: pd.DataFrame | None = None) -> Layout:
    """The rows of a suite's cells: tasks, models and ablations in the suite's declared order
    (undeclared ones after, sorted), each sweep's variants by swept value. A model or ablation
    whose every cell ``failed`` (on these cells' datasets) keeps its row, to show it is missing."""
    declared = decl.suites.get(suite) if suite in decl.suites else None
    task_order = list(declared.tasks) if declared else list(TASKS)
    lost = pd.DataFrame(columns=list(FAILURE_COLUMNS)) if failed is None else failed[
        failed["dataset"].isin(set(cells["dataset"])) & ~failed["variant"].isin(set(cells["variant"]))
        & ~failed["variant"].str.contains("=", regex=False)]
    plain_names = set(cells.loc[cells["ablation"] == "", "variant"]) | set(lost.loc[lost["variant"] == lost["model"],
                                                                                    "variant"])
    model_order = list(declared.models) if declared else []
    models = tables.ordered(model_order, plain_names) + sorted(plain_names - set(model_order))
    names = sorted(set(cells.loc[(cells["ablation"] != "") & cells["sweep_value"].isna(), "variant"])
                   | set(lost.loc[lost["variant"] != lost["model"], "variant"]))
    if declared:
        names = tables.ordered(list(declared.ablations), names) + [n for n in names if n not in declared.ablations]
    swept = cells[cells["sweep_value"].notna()].sort_values("sweep_value")
    sweeps = {sweep: list(swept.loc[swept["ablation"] == sweep, "variant"].drop_duplicates())
              for sweep in sorted(swept["ablation"].unique())}
    return Layout(tables.ordered(task_order, cells["task"].unique()), models, names, sweeps)


def suite_tables(cells: pd.DataFrame, rows: Layout, reference: str, profiles: dict[str, dict] | None = None,
                 failed: pd.DataFrame | None = None, aso: bool = True) -> list[tables.TableData]:
    """The main, ablation and sweep tables of one dataset and scale (``table_groups``). ``aso``
    adds ASO to the comparisons; no mark or number depends on it."""
    built = [tables.main_table(cells, rows.models, rows.tasks, reference, aso, profiles, failed)] if rows.models else []
    if rows.ablations and FULL_MODEL in rows.models:
        built.append(tables.ablation_table(cells, FULL_MODEL, rows.ablations, rows.tasks, aso, failed))
    for sweep in rows.sweeps:
        built.append(tables.sweep_table(cells, sweep, FULL_MODEL, rows.tasks, aso, failed))
    return built


def comparison_tables(records, decl: Declarations, suite: str, sweep: str | None = None
                      ) -> list[tuple[str, tables.TableData]]:
    """(group, table): the report's ablation table of ``suite`` (or its table of ``sweep``) for
    each dataset and scale, built as ``report`` builds it (ASO aside, which no number or mark
    uses): what ``bench.py ablate`` prints."""
    records = [r for r in records if r.get("cell", {}).get("suite") == suite]
    cells, failed = frame(records), failures(records)
    found = []
    for group, own in table_groups(cells) if not cells.empty else []:
        rows = layout(own, decl, suite, failed)
        if sweep and sweep in rows.sweeps:  # as suite_tables builds them
            found.append((group, tables.sweep_table(own, sweep, FULL_MODEL, rows.tasks, False, failed)))
        elif not sweep and rows.ablations and FULL_MODEL in rows.models:
            found.append((group, tables.ablation_table(own, FULL_MODEL, rows.ablations, rows.tasks, False, failed)))
    return found


def _write_table(table: tables.TableData, table_dir: Path, formats: Sequence[str]) -> list[Path]:
    """``<name>.md`` and ``<name>.tex``; a table with cost columns also ``<name>.efficiency.tex``
    (the paper's LaTeX leaves them out unless asked). LaTeX labels name the folder
    (``tab:synth-main``), so that tables of two datasets can sit in one paper."""
    label = f"tab:{table_dir.name}-{table.name}"
    paths = []
    for fmt in formats:
        path = table_dir / f"{table.name}.{fmt}"
        path.write_text(tables.to_markdown(table) if fmt == "md" else tables.to_latex(table, label=label))
        paths.append(path)
        if fmt == "tex" and table.efficiency:
            path = table_dir / f"{table.name}.efficiency.tex"
            path.write_text(tables.to_latex(table, efficiency=True, label=f"{label}-efficiency"))
            paths.append(path)
    return paths


def report(results: Path, decl: Declarations, suites: Sequence[str] | None = None, reference: str = "late_fusion",
           formats: Sequence[str] = FORMATS, console: Console | None = None, figures: bool = True
           ) -> list[Path]:
    """Write every table and figure for ``suites`` (default: every suite with results);
    print each main table. Returns the files written."""
    console = console or Console()
    store = ResultsStore(results)
    records = list(store.records())
    cells = frame(records)
    if cells.empty:
        raise UserError(f"no finished result cells under {Path(results) / 'runs'}: run a suite first")
    available = sorted(cells["suite"].unique())
    for suite in suites or ():
        if suite not in available:
            raise UserError(f"no results for suite {suite!r} under {Path(results) / 'runs'}; "
                            f"found: {', '.join(available)}")
    failed = failures(records)
    written = []
    for suite in suites or available:
        own = cells[cells["suite"] == suite]
        folders = []
        for group, group_cells in table_groups(own):
            table_dir = Path(results) / "tables" / suite / group
            written += _report_group(group_cells, decl, suite, group, reference, failed, results, table_dir,
                                     formats, console)
            folders.append(str(table_dir))
        if figures:
            from ctal_bench import plots

            rows = layout(own, decl, suite)
            suite_records = [r for r in records if r.get("cell", {}).get("suite") == suite]
            written += plots.write_all(own, suite_records, Path(results) / "runs",
                                       Path(results) / "figures" / suite, list(rows.sweeps), rows.variants,
                                       reference)
        console.print(f"suite {suite}: tables in {', '.join(folders)}" + (
            f", figures in {Path(results) / 'figures' / suite}" if figures else ""))
    return written


def _report_group(own: pd.DataFrame, decl: Declarations, suite: str, group: str, reference: str,
                  failed: pd.DataFrame, results: Path, table_dir: Path, formats: Sequence[str],
                  console: Console) -> list[Path]:
    """The tables of one suite's cells on one dataset and scale, written to ``table_dir``."""
    written = []
    rows = layout(own, decl, suite, failed)
    built = suite_tables(own, rows, reference, load_profiles(results), failed)
    table_dir.mkdir(parents=True, exist_ok=True)
    for table in built:
        written += _write_table(table, table_dir, formats)
        if table.comparisons is not None and len(table.comparisons):
            path = table_dir / f"{table.name}.comparisons.csv"
            table.comparisons.to_csv(path, index=False)
            written.append(path)
    if rows.models:
        examples = tables.per_example(own, rows.models, reference, Path(results) / "runs")
        if len(examples):
            path = table_dir / "main.per_example.csv"
            examples.to_csv(path, index=False)
            written.append(path)
    convergence = tables.convergence(own, rows.variants, rows.tasks)
    written += _write_table(tables.convergence_table(convergence), table_dir, formats)
    convergence.to_csv(table_dir / "convergence.csv", index=False)
    written.append(table_dir / "convergence.csv")
    checked = controls.testable([decl.controls.get(name) for name in decl.controls], own)
    control_table = None
    if checked:
        outcomes = controls.evaluate(checked, own)
        control_table = controls.table(outcomes, f"Controls planted in the data (suite {suite}, {group})")
        written += _write_table(control_table, table_dir, formats)
        outcomes.to_csv(table_dir / "controls.csv", index=False)
        written.append(table_dir / "controls.csv")
    if built:
        tables.print_rich(console, tables.to_rich(built[0], f"{suite} · {group}"))
    if control_table is not None:
        tables.print_rich(console, tables.to_rich(control_table))
    return written
