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
controls table (``ctal_bench.analysis.controls``) says which effects planted in the data the suite detected.
Row order follows the suite's declaration where the suite is declared. Failed cells are listed
under the tables they are missing from (``failures``).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from rich.console import Console

from ctal_bench.analysis import controls, tables
from ctal_bench.declarations import Declarations, flatten
from ctal_bench.errors import UserError
from ctal_bench.registry import TASKS
from ctal_bench.results import FAILED, CellKey, ResultsStore, frame, row_settings

FORMATS = ("md", "tex")
FULL_MODEL = "ctal"  # ablations are variants of it
DEFAULT_REFERENCE = "late_fusion"  # what the main table tests every model against


def parse_formats(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise UserError(f"--format {text!r}: expected a comma-separated list of {', '.join(FORMATS)}")
    return chosen


def load_profiles(store: ResultsStore, console: Console) -> dict[str, dict]:
    """model -> its ``bench.py profile`` record, where a readable one exists."""
    profiles = {}
    for path in sorted(store.profiles.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            profiles[record["model"]] = record
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            console.print(f"skipped unreadable profile {path} ({type(error).__name__})", markup=False)
    return profiles


class MixedConfigs(UserError):
    """A table row whose cells come from more than one configuration."""


def mixed_settings(records: Sequence[dict], cells: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
    """``cells`` where every table row (suite, variant, task, dataset, scale) comes from one
    configuration, seeds and folds aside (``results.settings_hash``). A row that mixes them is an
    error naming its cells and what differs, unless ``keep`` names the settings hash (or a
    prefix of it) to keep in that row."""
    row = ["suite", "variant", "task", "dataset", "scale"]
    settings = {f"{r['cell']['suite']}/{CellKey(**r['cell']).id}": flatten(row_settings(r.get("config", {})))
                for r in records}
    kept, problems = [], []
    for coordinates, group in cells.groupby(row, sort=False, dropna=False):
        hashes = list(dict.fromkeys(group["settings_hash"]))
        if len(hashes) > 1:
            chosen = [h for h in hashes if any(h.startswith(k) for k in keep)]
            if len(chosen) == 1:
                group = group[group["settings_hash"] == chosen[0]]
            else:
                parts = []
                for h in hashes:
                    of_hash = group[group["settings_hash"] == h]
                    seeds = ", ".join(str(x) for x in sorted(set(of_hash["seed"])))
                    parts.append(f"{h[:8]} (seeds {seeds}; e.g. {of_hash['cell_id'].iloc[0]})")
                first, second = (settings[group.loc[group["settings_hash"] == h, "cell_id"].iloc[0]]
                                 for h in hashes[:2])
                differs = ", ".join(f"{k}={first.get(k)!r} vs {second.get(k)!r}"
                                    for k in sorted(set(first) | set(second)) if first.get(k) != second.get(k))
                problems.append(f"{coordinates[1]} · {coordinates[2]} on {coordinates[3]} (suite {coordinates[0]}) "
                                f"mixes {len(hashes)} configurations: {' vs '.join(parts)}"
                                + (f"; they differ in {differs}" if differs else ""))
        kept.append(group)
    if problems:
        more = f" (and {len(problems) - 1} more rows)" if len(problems) > 1 else ""
        raise MixedConfigs(f"a table row must come from one configuration: {problems[0]}{more}. Rerun those cells "
                        "with one config, or keep one with report --keep HASH")
    return pd.concat(kept) if kept else cells


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


def report(results: Path, decl: Declarations, suites: Sequence[str] | None = None, reference: str | None = None,
           formats: Sequence[str] = FORMATS, console: Console | None = None, figures: bool = True,
           keep: Sequence[str] = ()) -> list[Path]:
    """Write every table and figure for ``suites`` (default: every suite with results);
    print each main table. Returns the files written. ``reference``: the main table's reference
    (default: late fusion; one given must have cells). Unreadable files are named and left out;
    a table row that mixes configurations is refused (``mixed_settings``; ``keep`` chooses)."""
    console = console or Console()
    store = ResultsStore(results)
    runs = store.root / "runs"
    available = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    for suite in suites or ():
        if suite not in available:
            raise UserError(f"no results for suite {suite!r} under {runs}; found: {', '.join(available) or 'none'}")
    records = [r for suite in suites or available for r in store.records(suite)]
    cells = frame(records)
    if cells.empty:
        _name_damaged(store, console)
        raise UserError(f"no finished result cells under {runs}: run a suite first")
    if reference is None:
        reference = DEFAULT_REFERENCE  # a suite without it gets tables without significance marks
    elif reference not in set(cells["variant"]):
        close = difflib.get_close_matches(reference, sorted(set(cells["variant"])), n=3, cutoff=0.4)
        raise UserError(f"--reference {reference!r} has no finished cells here; "
                        + (f"did you mean {', '.join(close)}?" if close else
                           f"variants with cells: {', '.join(sorted(set(cells['variant'])))}"))
    cells = mixed_settings(records, cells, keep)
    failed = failures(records)
    profiles = load_profiles(store, console)
    written = []
    for suite in sorted(set(cells["suite"]), key=(suites or available).index):
        own = cells[cells["suite"] == suite]
        folders = []
        for group, group_cells in table_groups(own):
            table_dir = store.tables_dir(suite, group)
            written += _report_group(group_cells, decl, suite, group, reference, failed, store, profiles, table_dir,
                                     formats, console)
            folders.append(str(table_dir))
        if figures:
            from ctal_bench.analysis import plots

            rows = layout(own, decl, suite)
            suite_records = [r for r in records if r["cell"]["suite"] == suite]
            written += plots.write_all(own, suite_records, store.predictions, store.figures_dir(suite),
                                       list(rows.sweeps), rows.variants, reference)
        console.print(f"suite {suite}: tables in {', '.join(folders)}" + (
            f", figures in {store.figures_dir(suite)}" if figures else ""))
    _name_damaged(store, console)
    return written


def _name_damaged(store: ResultsStore, console: Console) -> None:
    for damaged in store.take_damaged():
        console.print(f"skipped unreadable {damaged}: a rerun of its suite runs that cell again", markup=False,
                      highlight=False, soft_wrap=True)


def _report_group(own: pd.DataFrame, decl: Declarations, suite: str, group: str, reference: str,
                  failed: pd.DataFrame, store: ResultsStore, profiles: dict[str, dict], table_dir: Path,
                  formats: Sequence[str], console: Console) -> list[Path]:
    """The tables of one suite's cells on one dataset and scale, written to ``table_dir``."""
    written = []
    rows = layout(own, decl, suite, failed)
    built = suite_tables(own, rows, reference, profiles, failed)
    table_dir.mkdir(parents=True, exist_ok=True)
    for table in built:
        written += _write_table(table, table_dir, formats)
        if table.comparisons is not None and len(table.comparisons):
            path = table_dir / f"{table.name}.comparisons.csv"
            table.comparisons.to_csv(path, index=False)
            written.append(path)
    if rows.models:
        examples = tables.per_example(own, rows.models, reference, store.predictions)
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
