"""`bench.py report`: result cells -> tables (results/tables/<suite>/) and figures
(results/figures/<suite>/), and the main table on the terminal.

Which rows go where follows from the cells: plain models make the main table, declared
ablations the ablation table (against full CTAL), sweeps one sweep table and figure each.
Row order follows the suite's declaration where the suite is declared.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd
from rich.console import Console

from ctal_bench import tables
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


def suite_tables(cells: pd.DataFrame, decl: Declarations, suite: str, reference: str,
                 profiles: dict[str, dict] | None = None) -> list[tables.TableData]:
    declared = decl.suites.get(suite) if suite in decl.suites else None
    task_order = list(declared.tasks) if declared else list(TASKS)
    tasks = tables.ordered(task_order, cells["task"].unique())
    plain = cells[cells["ablation"] == ""]
    model_order = list(declared.models) if declared else []
    models = tables.ordered(model_order, plain["variant"].unique()) + sorted(
        set(plain["variant"]) - set(model_order))
    built = [tables.main_table(cells, models, tasks, reference, profiles=profiles)] if models else []
    variants = cells[(cells["ablation"] != "") & cells["sweep_value"].isna()]
    if len(variants) and FULL_MODEL in models:
        names = sorted(variants["variant"].unique())
        if declared:
            names = tables.ordered(list(declared.ablations), names) + [n for n in names
                                                                        if n not in declared.ablations]
        built.append(tables.ablation_table(cells, FULL_MODEL, names, tasks))
    for sweep in sorted(cells.loc[cells["sweep_value"].notna(), "ablation"].unique()):
        built.append(tables.sweep_table(cells, sweep, FULL_MODEL, tasks))
    return built


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
        built = suite_tables(own, decl, suite, reference, load_profiles(results))
        table_dir = Path(results) / "tables" / suite
        table_dir.mkdir(parents=True, exist_ok=True)
        for table in built:
            for fmt in formats:
                path = table_dir / f"{table.name}.{fmt}"
                path.write_text(tables.to_markdown(table) if fmt == "md" else tables.to_latex(table))
                written.append(path)
            if table.comparisons is not None and len(table.comparisons):
                path = table_dir / f"{table.name}.comparisons.csv"
                table.comparisons.to_csv(path, index=False)
                written.append(path)
        if built and built[0].name == "main":
            models = [label.removesuffix(" (reference)") for label, _ in built[0].rows]
            examples = tables.per_example(own, models, reference, Path(results) / "runs")
            if len(examples):
                path = table_dir / "main.per_example.csv"
                examples.to_csv(path, index=False)
                written.append(path)
        if built:
            console.print(tables.to_rich(built[0]))
        if figures:
            from ctal_bench import plots

            sweeps = sorted(own.loc[own["sweep_value"].notna(), "ablation"].unique())
            suite_records = [r for r in records if r.get("cell", {}).get("suite") == suite]
            written += plots.write_all(own, suite_records, Path(results) / "runs",
                                       Path(results) / "figures" / suite, sweeps)
        console.print(f"suite {suite}: tables in {table_dir}" + (
            f", figures in {Path(results) / 'figures' / suite}" if figures else ""))
    return written
