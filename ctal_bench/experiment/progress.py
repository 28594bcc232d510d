"""A run's progress: a live view on a terminal, plain lines and a heartbeat in a log."""
from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ctal_bench.experiment.plan import Cell
from ctal_bench.registry import TASKS
from ctal_bench.results import FAILED

HEARTBEAT_S = 60.0  # a log's progress line, when stdout is not a terminal


def _key_metric(cell: Cell, record: dict) -> str:
    """The task's selection metric on test, "metric value", for a one-line report of a cell."""
    metric = TASKS.get(cell.key.task).selection_metric
    value = record.get("metrics", {}).get("test", {}).get(metric)
    return f"{metric} {value:.3f}" if isinstance(value, (int, float)) else f"{metric} -"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class RunCounts:
    """What a run has done so far, for either display."""

    def __init__(self, todo: int, waiting: int, workers: int, clock=time.monotonic):
        self.todo, self.waiting, self.workers, self.clock = todo, waiting, workers, clock
        self.trained = self.done = self.failed = self.unfinished = 0
        self.started = clock()

    @property
    def running(self) -> int:
        return min(self.workers, self.todo - self.trained)

    def eta(self) -> float | None:
        """Seconds left at the pace so far (cells to train, not twins, which cost nothing)."""
        if not self.trained:
            return None
        return (self.clock() - self.started) / self.trained * (self.todo - self.trained)


class LiveView:
    """A terminal's view: a bar over cells, and one over the running cell's training steps."""

    def __init__(self, console: Console, counts: RunCounts, left: int, steps_visible: bool):
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        self.counts, self.progress = counts, Progress(*columns, console=console, transient=False)
        self.overall = self.progress.add_task("cells", total=left, completed=left - counts.waiting)
        self.steps = self.progress.add_task("steps", total=None, visible=steps_visible)

    def __enter__(self) -> LiveView:
        self.progress.__enter__()
        self._describe()
        return self

    def __exit__(self, *exc) -> None:
        c = self.counts
        unfinished = f", unfinished {c.unfinished}" if c.unfinished else ""
        self.progress.update(self.overall, description=f"cells (done {c.done}, failed {c.failed}{unfinished})")
        self.progress.__exit__(*exc)

    def _describe(self) -> None:
        c = self.counts
        per_cell = f", {(c.clock() - c.started) / c.trained:.0f} s/cell" if c.trained else ""
        self.progress.update(self.overall, description=f"cells (done {c.done}, failed {c.failed}, "
                             f"running {c.running}, left {c.waiting}{per_cell})")

    def start(self, cell: Cell) -> None:
        k = cell.key
        self.progress.update(self.steps, completed=0,
                             description=f"running {k.variant} · {k.task} · fold {k.fold} · seed {k.seed}")

    def step(self) -> None:
        self.progress.advance(self.steps)

    def finished(self, group: list[tuple[Cell, dict | None]]) -> None:
        for cell, record in group:
            if record is not None and record["status"] == FAILED:
                self.progress.console.print(f"[red]failed[/red] {cell.key.id}: "
                                            f"{record['traceback'].strip().splitlines()[-1]}")
                break  # its twins fail with it
        recorded = sum(record is not None for _, record in group)
        self.counts.unfinished += len(group) - recorded
        self.progress.advance(self.overall, recorded)  # a cell whose worker died is not done: the bar says so
        self._describe()


class LogView:
    """Progress for a log (stdout not a terminal: nohup, a batch scheduler, ``> log.txt``): one
    plain line per finished cell (its id, status, key metric and seconds) and, every ``every``
    seconds from a background thread, a heartbeat: cells done, failed, running and left, and the
    time left at the pace so far. No colour, no cursor movement, nothing cut."""

    def __init__(self, console: Console, counts: RunCounts, total: int, every: float = HEARTBEAT_S):
        self.console, self.counts, self.total, self.every = console, counts, total, every
        self.recorded = total - counts.waiting  # done before this run, or shared from done cells
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)

    def __enter__(self) -> LogView:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self.heartbeat()

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def heartbeat(self) -> None:
        c = self.counts
        eta = c.eta()
        self._print(f"[{time.strftime('%H:%M:%S')}] progress: {self.total - c.waiting}/{self.total} cells recorded "
                    f"(done {c.done}, failed {c.failed}), running {c.running}, left {c.waiting}; elapsed "
                    f"{_duration(c.clock() - c.started)}, ETA {'unknown' if eta is None else _duration(eta)}")

    def start(self, cell: Cell) -> None:
        pass

    def step(self) -> None:
        pass

    def finished(self, group: list[tuple[Cell, dict | None]]) -> None:
        for cell, record in group:
            self.recorded += 1
            if record is None:
                status, shown = "unfinished", "its worker died; a rerun runs it"
            elif record["status"] == FAILED:
                status, shown = "failed", record["traceback"].strip().splitlines()[-1]
            else:
                status = "shared" if record.get("shared_from") else "done"
                shown = _key_metric(cell, record)
            seconds = (record or {}).get("timing", {}).get("cell_seconds")
            self._print(f"[{time.strftime('%H:%M:%S')}] cell {self.recorded}/{self.total} {status} {cell.key.id}: "
                        f"{shown}" + (f", {seconds:.0f} s" if seconds and status == "done" else ""))
