"""What `run` prints while it works when stdout is not a terminal (a log file, nohup, a scheduler)."""
from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from ctal_bench import catalog, declarations
from ctal_bench.experiment.executors import Workspace
from ctal_bench.experiment.plan import Request, expand, suite_variants
from ctal_bench.experiment.progress import LogView, RunCounts
from ctal_bench.experiment.run import run_cells
from ctal_bench.results import ResultsStore


@pytest.fixture(scope="module")
def smoke_cells():
    """The smoke suite's three cells (ctal on three tasks, one seed); no data is opened."""
    catalog.load()
    decl = declarations.load()
    suite = decl.suites.get("smoke")
    request = Request("smoke", tuple(suite_variants(decl, suite, None)), suite.tasks, suite.seeds, suite.scale)
    return expand(decl, request)


class FakeExecutor:
    """Runs nothing: each cell 'trains' for ``seconds`` of wall time; the second one fails."""

    workers = 1

    def __init__(self, seconds: float):
        self.seconds = seconds

    def run(self, cells, data, workspace, on_start=None, on_step=None):
        for i, cell in enumerate(cells):
            on_start(cell)
            on_step()
            time.sleep(self.seconds)
            if i == 1:
                yield cell, {"status": "failed",
                             "traceback": "Traceback (most recent call last):\nRuntimeError: boom\n"}
            else:
                yield cell, {"status": "done", "metrics": {"test": {"ua": 0.61, "mae": 0.8, "eer": 0.25}},
                             "timing": {"cell_seconds": 12.3}, "best_epoch": 1}


def test_a_log_gets_a_line_per_finished_cell_and_a_heartbeat(smoke_cells, tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=80)  # not a terminal, 80 columns: what a log file gets
    assert not console.is_terminal
    store = ResultsStore(tmp_path)
    summary = run_cells(smoke_cells, None, store, console, executor_for=lambda n: FakeExecutor(0.25),
                        workspace=Workspace(tmp_path, tmp_path, ()), heartbeat=0.1)
    assert len(summary.ran) == 2 and len(summary.failed) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == "3 cells: 0 already done, 3 to run"
    cell_lines = [line for line in lines if " cell " in line]
    assert [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in cell_lines] == [
        "cell 1/3 done ctal__emotion__synth__fold-0__seed-0: ua 0.610, 12 s",
        "cell 2/3 failed ctal__sentiment__synth__fold-0__seed-0: RuntimeError: boom",
        "cell 3/3 done ctal__verification__synth__fold-0__seed-0: eer 0.250, 12 s"]
    beats = [line for line in lines if "progress:" in line]
    assert beats, "a heartbeat while cells run"
    assert re.search(r"progress: 0/3 cells recorded \(done 0, failed 0\), running 1, left 3; elapsed 0m00s, "
                     r"ETA unknown", beats[0])
    assert not any("\x1b" in line or "…" in line for line in lines)  # no colour codes, nothing cut


def test_the_heartbeat_states_the_time_left_at_the_pace_so_far():
    now = [1000.0]
    counts = RunCounts(todo=4, waiting=4, workers=2, clock=lambda: now[0])
    out = io.StringIO()
    view = LogView(Console(file=out, width=80), counts, total=6)
    now[0] += 200
    counts.trained, counts.done, counts.waiting = 2, 2, 2
    view.heartbeat()
    assert re.search(r"progress: 4/6 cells recorded \(done 2, failed 0\), running 2, left 2; elapsed 3m20s, "
                     r"ETA 3m20s$", out.getvalue().strip())


def test_the_live_view_leaves_cells_whose_worker_died_unfinished(smoke_cells):
    """After a worker dies its cells are not done: the bar stops short and says how many."""
    from ctal_bench.experiment.progress import LiveView

    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    counts = RunCounts(todo=3, waiting=3, workers=1)
    with LiveView(console, counts, left=3, steps_visible=False) as view:
        view.finished([(smoke_cells[0], {"status": "done"})])
        counts.done = 1
        view.finished([(cell, None) for cell in smoke_cells[1:]])
    overall = view.progress.tasks[view.overall]
    assert overall.completed == 1 and overall.total == 3
    assert "unfinished 2" in overall.description
