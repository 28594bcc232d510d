"""`bench.py report`: result cells -> tables (results/tables/<suite>/) and figures
(results/figures/<suite>/), and the main table on the terminal.

Which rows go where follows from the cells: plain models make the main table, declared
ablations the ablation table (against full CTAL), sweeps one sweep table and figure each; the
convergence table has every variant, to show whether the fine-tuning budget was enough; the
controls table (``ctal_bench.controls``) says which effects planted in the data the suite detected.
Row order follows the suite's declaration where the suite is declared.
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
from ctal_bench.results import ResultsStore, frame

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


def layout(cells: pd.DataFrame, decl: Declarations, suite: str) -> Layout:
    """The rows of a suite's cells: tasks, models and ablations in the suite's declared order
    (undeclared ones after, sorted), each sweep's variants by swept value."""
    declared = decl.suites.get(suite) if suite in decl.suites else None
    task_order = list(declared.tasks) if declared else list(TASKS)
    plain = cells[cells["ablation"] == ""]
    model_order = list(declared.models) if declared else []
    models = tables.ordered(model_order, plain["variant"].unique()) + sorted(
        set(plain["variant"]) - set(model_order))
    names = sorted(cells.loc[(cells["ablation"] != "") & cells["sweep_value"].isna(), "variant"].unique())
    if declared:
        names = tables.ordered(list(declared.ablations), names) + [n for n in names if n not in declared.ablations]
    swept = cells[cells["sweep_value"].notna()].sort_values("sweep_value")
    sweeps = {sweep: list(swept.loc[swept["ablation"] == sweep, "variant"].drop_duplicates())
              for sweep in sorted(swept["ablation"].unique())}
    return Layout(tables.ordered(task_order, cells["task"].unique()), models, names, sweeps)


def suite_tables(cells: pd.DataFrame, rows: Layout, reference: str,
                 profiles: dict[str, dict] | None = None) -> list[tables.TableData]:
    built = [tables.main_table(cells, rows.models, rows.tasks, reference, profiles=profiles)] if rows.models else []
    if rows.ablations and FULL_MODEL in rows.models:
        built.append(tables.ablation_table(cells, FULL_MODEL, rows.ablations, rows.tasks))
    for sweep in rows.sweeps:
        built.append(tables.sweep_table(cells, sweep, FULL_MODEL, rows.tasks))
    return built


def _write_table(table: tables.TableData, table_dir: Path, formats: Sequence[str]) -> list[Path]:
    paths = [table_dir / f"{table.name}.{fmt}" for fmt in formats]
    for path, fmt in zip(paths, formats):
        path.write_text(tables.to_markdown(table) if fmt == "md" else tables.to_latex(table))
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
    written = []
    for suite in suites or available:
        own = cells[cells["suite"] == suite]
        rows = layout(own, decl, suite)
        built = suite_tables(own, rows, reference, load_profiles(results))
        table_dir = Path(results) / "tables" / suite
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
            control_table = controls.table(outcomes, f"Controls planted in the data (suite {suite})")
            written += _write_table(control_table, table_dir, formats)
            outcomes.to_csv(table_dir / "controls.csv", index=False)
            written.append(table_dir / "controls.csv")
        if built:
            console.print(tables.to_rich(built[0]))
        if control_table is not None:
            console.print(tables.to_rich(control_table))
        if figures:
            from ctal_bench import plots

            suite_records = [r for r in records if r.get("cell", {}).get("suite") == suite]
            written += plots.write_all(own, suite_records, Path(results) / "runs",
                                       Path(results) / "figures" / suite, list(rows.sweeps))
        console.print(f"suite {suite}: tables in {table_dir}" + (
            f", figures in {Path(results) / 'figures' / suite}" if figures else ""))
    return written
