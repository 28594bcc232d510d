"""Run a request's cells on an executor, then refresh the suite's report."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ctal_bench.analysis import report, tables
from ctal_bench.declarations import Declarations
from ctal_bench.experiment.cell import record_failure, share_result
from ctal_bench.experiment.executors import InProcess, Workspace
from ctal_bench.experiment.plan import Cell, Request, expand, plan_rows, plan_table, triage
from ctal_bench.experiment.progress import HEARTBEAT_S, LiveView, LogView, RunCounts
from ctal_bench.results import FAILED, ResultsStore


@dataclass
class Summary:
    ran: list[tuple[Cell, dict]] = field(default_factory=list)
    skipped: list[tuple[Cell, dict]] = field(default_factory=list)
    failed: list[tuple[Cell, dict]] = field(default_factory=list)
    unfinished: list[Cell] = field(default_factory=list)  # their worker died; a rerun runs them

    @property
    def records(self) -> list[tuple[Cell, dict]]:
        return self.skipped + self.ran + self.failed


def run_cells(cells: list[Cell], data, store: ResultsStore, console: Console, executor_for=None,
              workspace: Workspace | None = None, heartbeat: float = HEARTBEAT_S) -> Summary:
    """Run the cells not already done, on ``executor_for(number of cells to train)`` (default: this
    process); cells with a twin share its result (``triage``). A failing cell is recorded with its
    traceback and the rest go on. On a terminal a live view shows progress; elsewhere (a log
    file) ``LogView`` prints a line per finished cell and a heartbeat every ``heartbeat`` s."""
    workspace = workspace or Workspace(store.root, data.data_dir, tuple(data.data_paths.items()))
    summary, plan = Summary(), triage(cells, store)
    for damaged in store.take_damaged():
        console.print(f"skipped unreadable {damaged}: its cell runs again", markup=False, highlight=False,
                      soft_wrap=True)
    if plan.replaced:
        console.print(f"replacing {len(plan.replaced)} cells finished with another config (e.g. "
                      f"{plan.replaced[0].key.id}); report refuses a table row that mixes configs", markup=False,
                      highlight=False, soft_wrap=True)
    summary.skipped = [(cell, plan.records[cell.key]) for cell in plan.done]
    summary.ran = [(cell, share_result(twin, cell, store)) for cell, twin in plan.shared]
    todo, twins, left = plan.todo, plan.twins, plan.left
    executor = executor_for(len(todo)) if executor_for else InProcess()
    console.print(f"{len(cells)} cells: {len(summary.skipped)} already done, {left} to run"
                  + (f" ({left - len(todo)} share a result)" if len(todo) < left else ""))
    counts = RunCounts(len(todo), len(todo) + sum(map(len, twins.values())), executor.workers)
    counts.done = len(summary.ran)
    view = (LiveView(console, counts, left, isinstance(executor, InProcess)) if console.is_terminal
            else LogView(console, counts, len(cells), heartbeat))
    with view:
        for cell, record in executor.run(todo, data, workspace, view.start, view.step):
            counts.trained, counts.workers = counts.trained + 1, executor.workers  # a cluster's is known once it runs
            group = [cell, *twins[cell.key]]
            if record is None:  # its worker died: left unfinished for the next run
                summary.unfinished += group
                shown = [(c, None) for c in group]
            elif record["status"] == FAILED:
                shown = [(cell, record)] + [(twin, record_failure(store, twin, f"shares the config of {cell.key.id}, "
                                                                  f"which failed:\n{record['traceback']}"))
                                            for twin in group[1:]]
                summary.failed += shown
            else:
                shown = [(cell, record)] + [(twin, share_result(cell, twin, store)) for twin in group[1:]]
                summary.ran += shown
            counts.waiting -= len(group)
            counts.done, counts.failed = len(summary.ran), len(summary.failed)
            view.finished(shown)
    return summary


def summary_table(summary: Summary, title: str) -> Table:
    """One row per cell: its test metrics (first three), selected epoch and wall time. Print it
    with ``tables.print_rich``: no cell id or number is cut."""
    table = Table(title=title)
    for column in ("cell", "status", "test metrics", "epoch", "s"):
        table.add_column(column, no_wrap=column != "test metrics")
    cached = {cell.key for cell, _ in summary.skipped}
    for cell, record in summary.records:
        if record["status"] == FAILED:
            shown = record["traceback"].strip().splitlines()[-1]
        else:
            test = record["metrics"]["test"]
            shown = "  ".join(f"{name} {test[name]:.3f}" for name in list(test)[:3])
        seconds = record.get("timing", {}).get("cell_seconds")
        k = cell.key
        table.add_row(Text(f"{k.variant} {k.task} f{k.fold} s{k.seed}"),
                      Text(record["status"] + (" (cached)" if k in cached else "")
                           + (f" (= {record['shared_from'].split('__')[0]})" if record.get("shared_from") else "")),
                      Text(shown), str(record.get("best_epoch", "-")), f"{seconds:.0f}" if seconds else "-")
    return table


def execute(decl: Declarations, request: Request, results: Path, data_dir: Path, title: str,
            executor_for=None, comparison: bool = False, dry_run: bool = False, fmt: str = "table",
            sweep: str | None = None) -> int:
    """Run the request's cells (on ``executor_for(number of cells to train)``), refresh the suite's report, and
    print the per-cell summary before it or (``comparison``) after it the report's own ablation table (or,
    with ``sweep``, its table of that sweep) of each dataset and scale: the same numbers and tests.

    A comparison that ran nothing leaves the suite's report as the run that made its cells wrote it:
    ``ablate`` after a paper run prints its table in seconds, not after minutes of re-testing.
    ``dry_run`` prints every cell's plan (``plan_rows``; ``fmt`` "table" or "json") and runs nothing.
    """
    from ctal_bench.data.prepare import DataPipeline

    console = Console()
    data = DataPipeline(data_dir, request.data_paths)
    cells = expand(decl, request)
    if dry_run:
        rows = plan_rows(cells, ResultsStore(results), data)
        if fmt == "json":
            print(json.dumps(rows, indent=1))
        else:  # wide enough that no name or number is cut, on a terminal or in a file
            Console(width=max(console.width, 170)).print(
                plan_table(rows, f"{title}: {len(rows)} cells (dry run: nothing is trained)"))
        return 0
    store = ResultsStore(results)
    with store.lock(f"bench.py {title}"):  # before any work: a second run on this folder stops at once
        for name, size in sorted({(c.config.data.dataset, c.config.data.size) for c in cells}):
            data.dataset(name, size)  # build or check every dataset before any cell runs
        for tuned in request.tuned.values():
            console.print(f"tuned settings: {tuned.source}")
        summary = run_cells(cells, data, store, console, executor_for)
        if not comparison:
            tables.print_rich(console, summary_table(summary, title))
        if summary.ran or (summary.skipped and not comparison):
            try:
                report.report(results, decl, [request.suite], console=console)
            except report.MixedConfigs as error:  # the cells are fine; the report waits for one config per row
                console.print(f"no report: {error}", markup=False, highlight=False, soft_wrap=True)
    if comparison:
        console.print(title)
        for group, table in report.comparison_tables(ResultsStore(results).records(request.suite), decl,
                                                     request.suite, sweep):
            tables.print_rich(console, tables.to_rich(table, f"{request.suite} · {group}"))
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} of {len(cells)} cells failed:[/red] "
                      + ", ".join(cell.key.id for cell, _ in summary.failed)
                      + f" (tracebacks in {results}/runs/{request.suite}/)")
    if summary.unfinished:
        console.print(f"[red]{len(summary.unfinished)} cells unfinished[/red] (a worker died): rerun the same "
                      "command to run them")
    return 1 if summary.failed or summary.unfinished else 0
