"""Suites -> cells -> results: expand a declared suite, run what is missing, summarise.

A cell is one (variant, task, dataset, fold, seed). Cells finished with the same config hash
are skipped, so a rerun resumes; a failing cell is recorded with its traceback and the suite
goes on. Pre-training is shared: one per distinct pre-training config and seed.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ctal_bench import declarations, tables
from ctal_bench.config import Config, apply_overrides, config_hash, to_dict
from ctal_bench.declarations import Declarations, Suite, Variant
from ctal_bench.errors import UserError
from ctal_bench.executors import InProcess, Workspace, executor_from_args, record_failure
from ctal_bench.registry import DATASETS, MODELS, TASKS
from ctal_bench.results import DONE, FAILED, CellKey, ResultsStore, environment

if TYPE_CHECKING:
    from ctal_bench.tune import Tuned


@dataclass(frozen=True)
class Cell:
    key: CellKey
    config: Config  # resolved: the model's preset sizes filled in
    variant: Variant
    scale: str = ""  # the declared scale it ran at, for captions
    tuned: str = ""  # the tuned file applied (`run --tuned`), "" for none

    @property
    def versions(self) -> dict[str, int]:
        return code_versions(self.config, self.key.task)

    @property
    def hash(self) -> str:
        """What shapes the cell: its resolved config, the preset's fixed widths and the declared
        versions of its model, dataset and task. A changed preset or a bumped version reruns it."""
        model = MODELS.get(self.config.model.name)
        return config_hash({"config": to_dict(self.config), "preset": model.presets[self.config.model.size],
                            "versions": self.versions})


def code_versions(cfg: Config, task: str) -> dict[str, int]:
    """The declared versions of the code a config runs: model, dataset and task."""
    return {"model": MODELS.get(cfg.model.name).version, "dataset": DATASETS.get(cfg.data.dataset).version,
            "task": TASKS.get(task).version}


def resolved(cfg: Config) -> Config:
    """``cfg`` with its model's preset expanded (a UserError for a size or width that does not fit)."""
    return dataclasses.replace(cfg, model=MODELS.get(cfg.model.name).resolve(cfg.model))


@dataclass
class Summary:
    ran: list[tuple[Cell, dict]] = field(default_factory=list)
    skipped: list[tuple[Cell, dict]] = field(default_factory=list)
    failed: list[tuple[Cell, dict]] = field(default_factory=list)
    unfinished: list[Cell] = field(default_factory=list)  # their worker died; a rerun runs them

    @property
    def records(self) -> list[tuple[Cell, dict]]:
        return self.skipped + self.ran + self.failed


@dataclass(frozen=True)
class Request:
    """What the user asked for: a suite, narrowed or adjusted from the command line."""

    suite: str
    variants: tuple[Variant, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    scale: str
    overrides: tuple[str, ...] = ()
    data_paths: dict[str, Path] = field(default_factory=dict)
    device: str | None = None
    tuned: dict[tuple[str, str, str], Tuned] = field(default_factory=dict)  # (model, task, dataset) -> file


def parse_data_paths(specs: Sequence[str]) -> dict[str, Path]:
    paths = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise UserError(f"--data {spec!r}: expected NAME=PATH, e.g. iemocap=/data/IEMOCAP_full_release")
        DATASETS.get(name)  # unknown name -> "did you mean"
        if not Path(path).is_dir():
            raise UserError(f"--data {name}={path}: directory does not exist")
        paths[name] = Path(path)
    return paths


def suite_variants(decl: Declarations, suite: Suite, models: Sequence[str] | None) -> list[Variant]:
    from ctal_bench.registry import MODELS

    chosen = list(models) if models else list(suite.models)
    for name in chosen:
        MODELS.get(name)
    variants = [Variant(name, name) for name in chosen]
    for name in suite.ablations:
        ablation = decl.ablations.get(name)
        if ablation.model in chosen:
            variants += ablation.variants()
    return variants


def request_from_args(args, decl: Declarations, suite: Suite, variants: list[Variant]) -> Request:
    tasks = tuple(args.tasks or suite.tasks)
    for task in tasks:
        TASKS.get(task)
    seeds = suite.seeds
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError(f"--seeds {args.seeds}: expected a positive number of seeds")
        seeds = tuple(range(args.seeds)) if args.seeds > len(seeds) else seeds[:args.seeds]
    scale = args.scale or suite.scale
    if scale:
        decl.scales.get(scale)
    data_paths = parse_data_paths(args.data)
    tuned = {}
    if args.tuned:
        from ctal_bench.tune import TUNED_DIR, find_tuned

        directory = args.results / TUNED_DIR if args.tuned is True else args.tuned
        wanted = {(v.model, task, dataset_for(task, data_paths, suite.dataset_for(task)))
                  for v in variants for task in tasks}
        tuned = find_tuned(directory, wanted, scale)
    return Request(suite.name, tuple(variants), tasks, seeds, scale, tuple(args.overrides), data_paths,
                   args.device, tuned)


def base_config(decl: Declarations, scale: str, model: str) -> Config:
    """Defaults <- the scale ("" = none) <- the model's own settings (``[model.NAME]``).

    A scale's values for fields the model has no part for (its ``unused_fields``, e.g. CTAL's
    switches on a baseline) do not reach it; set any other way, they are an error.
    """
    cfg = Config()
    if scale:
        unused = {f"model.{name}" for name in getattr(MODELS.get(model), "unused_fields", ())}
        overrides = decl.scales.get(scale).overrides
        cfg = apply_overrides(cfg, {k: v for k, v in overrides.items() if k not in unused})
    if model in decl.models:
        cfg = apply_overrides(cfg, decl.models.get(model).overrides)
    return cfg


def cell_config(decl: Declarations, suite: Suite, request: Request, variant: Variant, task: str, seed: int) -> Config:
    """Defaults <- scale <- the model's own settings <- its tuned settings (``--tuned``) <- suite
    <- variant <- the suite's declared budget exception for it <- --set, then the cell's own
    coordinates. An ablation variant takes its model's tuned settings."""
    dataset = dataset_for(task, request.data_paths, suite.dataset_for(task))
    cfg = base_config(decl, request.scale, variant.model)
    tuned = request.tuned.get((variant.model, task, dataset))
    if tuned is not None:
        cfg = apply_overrides(cfg, tuned.overrides)
    cfg = apply_overrides(cfg, suite.overrides)
    cfg = apply_overrides(cfg, variant.overrides)
    cfg = apply_overrides(cfg, suite.budget_exceptions.get(variant.name, {}))
    cfg = apply_overrides(cfg, list(request.overrides))
    return at_coordinates(cfg, variant.model, dataset, seed + variant.seed_offset, request.device)


def at_coordinates(cfg: Config, model: str, dataset: str, seed: int, device: str | None) -> Config:
    """``cfg`` for one model, dataset and seed (and ``--device``, when given): set last, so that
    no declaration or override moves a run off its coordinates."""
    coordinates = {"model.name": model, "data.dataset": dataset, "run.seed": seed}
    if device:
        coordinates["run.device"] = device
    return apply_overrides(cfg, coordinates)


def dataset_for(task: str, data_paths: dict[str, Path], default: str = "synth") -> str:
    """The dataset for a task: the one --data points at real data for it, else ``default``."""
    for name in data_paths:
        if task in DATASETS.get(name).tasks:
            return name
    return default


def expand(decl: Declarations, request: Request) -> list[Cell]:
    """Every cell of the request, cheapest informative first: seed by seed, variant by variant.
    Opens no data: folds are a fact of each dataset's layout."""
    suite = decl.suites.get(request.suite)
    cells = []
    for seed in request.seeds:
        for variant in request.variants:
            for task in request.tasks:
                cfg = cell_config(decl, suite, request, variant, task, seed)
                dataset = DATASETS.get(cfg.data.dataset)
                folds = (cfg.data.fold,) if cfg.data.fold else dataset.folds(task)
                for fold in folds:
                    fold_cfg = resolved(apply_overrides(cfg, {"data.fold": fold}))
                    key = CellKey(request.suite, variant.name, task, cfg.data.dataset, fold, seed)
                    tuned = request.tuned.get((variant.model, task, cfg.data.dataset))
                    cells.append(Cell(key, fold_cfg, variant, request.scale, str(tuned.source) if tuned else ""))
    return cells


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device=cuda but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise UserError(f"run.device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def starts_pretrained(cfg: Config) -> bool:
    """Whether fine-tuning starts from pre-trained weights (pre-trained here, or imported with
    ``pretrain.init``)."""
    return cfg.pretrain.enabled and getattr(MODELS.get(cfg.model.name), "pretrainable", False)


def pretrained_weights(cfg: Config, data, checkpoints: Path, device, on_step=None) -> tuple[dict | None, dict | None]:
    """The weights fine-tuning starts from and their record: a pre-trained model's (from the
    cache in ``checkpoints``, trained now, or imported with ``pretrain.init``), else (None, None)."""
    from ctal_bench import pretrain

    if not starts_pretrained(cfg):
        return None, None
    if cfg.pretrain.init:
        from ctal_bench.released import init_weights

        return init_weights(Path(cfg.pretrain.init), cfg.model, cfg.data.frame_stack)
    return pretrain.pretrained_weights(cfg, data, checkpoints, device, on_step)


def run_cell(cell: Cell, data, store: ResultsStore, checkpoints: Path, on_step=None) -> dict:
    """Pre-train (or reuse), fine-tune, evaluate, and write the cell's record and predictions."""
    import torch

    from ctal_bench import finetune
    from ctal_bench.profiling import peak_memory

    cfg = cell.config
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    task_data = data.task_data(cfg, cell.key.task, cell.key.fold)
    pretrained, pretrain_record = pretrained_weights(cfg, data, checkpoints, device, on_step)
    outcome = finetune.finetune(cfg, cell.key.task, task_data, pretrained, device, on_step)
    record = {
        "status": DONE, "config_hash": cell.hash, "config": to_dict(cfg), "versions": cell.versions,
        "variant": cell.variant.name,
        "model": cfg.model.name, "ablation": cell.variant.ablation,
        "sweep_value": cell.variant.sweep_value, "scale": cell.scale, "tuned": cell.tuned or None,
        "metrics": outcome.metrics, "best_epoch": outcome.best_epoch, "parameters": outcome.parameters,
        "curves": {"finetune": outcome.curve, "pretrain": (pretrain_record or {}).get("curve")},
        "pretrain": pretrain_record and {k: v for k, v in pretrain_record.items() if k != "curve"},
        "timing": {**outcome.timing, "cell_seconds": time.perf_counter() - started, **peak_memory(device)},
        "data": {"train": len(task_data.train), "dev": len(task_data.dev), "test": len(task_data.test),
                 "truncated": task_data.truncated},
        "extra": outcome.extra, "environment": environment(), "traceback": None,
    }
    store.write_predictions(cell.key, outcome.predictions)
    store.write(cell.key, record)
    return record


def share_result(twin: Cell, cell: Cell, store: ResultsStore) -> dict:
    """Record ``cell`` from a finished cell with the identical config instead of training again."""
    record = {k: v for k, v in store.read(twin.key).items() if k != "cell"}
    record.update(variant=cell.variant.name, ablation=cell.variant.ablation, sweep_value=cell.variant.sweep_value,
                  scale=cell.scale, shared_from=twin.key.id)
    predictions = store.read_predictions(twin.key)
    if predictions is not None:
        store.write_predictions(cell.key, predictions)
    store.write(cell.key, record)
    return record


@dataclass
class Triage:
    """What a run does with each cell: skip it (done), share another cell's result, or train it."""

    done: list[Cell] = field(default_factory=list)
    shared: list[tuple[Cell, Cell]] = field(default_factory=list)  # (cell, the done one it copies)
    todo: list[Cell] = field(default_factory=list)
    twins: dict[CellKey, list[Cell]] = field(default_factory=dict)  # a cell to train -> cells sharing its result

    @property
    def left(self) -> int:
        return len(self.shared) + len(self.todo) + sum(map(len, self.twins.values()))


def triage(cells: list[Cell], store: ResultsStore) -> Triage:
    """A cell whose task and hash equal another's shares that cell's result instead of training
    again (the task is a cell coordinate, not part of the config)."""
    plan, finished, first = Triage(), {}, {}
    for cell in cells:
        if store.is_done(cell.key, cell.hash):
            plan.done.append(cell)
            finished.setdefault((cell.key.task, cell.hash), cell)
    done = {cell.key for cell in plan.done}
    for cell in cells:
        same = (cell.key.task, cell.hash)
        if cell.key in done:
            continue
        if same in finished:
            plan.shared.append((cell, finished[same]))
        elif same in first:
            plan.twins[first[same].key].append(cell)
        else:
            first[same] = cell
            plan.twins[cell.key] = []
            plan.todo.append(cell)
    return plan


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
        self.trained = self.done = self.failed = 0
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
        self.progress.update(self.overall, description=f"cells (done {c.done}, failed {c.failed})")
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
        self.progress.advance(self.overall, len(group))
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


def run_cells(cells: list[Cell], data, store: ResultsStore, console: Console, executor_for=None,
              workspace: Workspace | None = None, heartbeat: float = HEARTBEAT_S) -> Summary:
    """Run the cells not already done, on ``executor_for(number of cells to train)`` (default: this
    process); cells with a twin share its result (``triage``). A failing cell is recorded with its
    traceback and the rest go on. On a terminal a live view shows progress; elsewhere (a log
    file) ``LogView`` prints a line per finished cell and a heartbeat every ``heartbeat`` s."""
    workspace = workspace or Workspace(store.root, data.data_dir, tuple(data.data_paths.items()))
    summary, plan = Summary(), triage(cells, store)
    summary.skipped = [(cell, store.read(cell.key)) for cell in plan.done]
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


def plan_rows(cells: list[Cell], store: ResultsStore, data) -> list[dict]:
    """One row per cell with the settings that decide a comparison, and what a run would do with
    it (done, shared with another cell, or to run). Trains, builds and writes nothing."""
    from ctal_bench import pretrain

    plan = triage(cells, store)
    status = {c.key: "done" for c in plan.done}
    status.update({c.key: f"shared ({twin.key.variant})" for c, twin in plan.shared})
    status.update({c.key: f"shared ({first.variant})" for first, group in plan.twins.items() for c in group})
    rows = []
    for cell in cells:
        cfg, k = cell.config, cell.key
        if not starts_pretrained(cfg):
            pretraining = "-"
        else:
            pretraining = f"init {cfg.pretrain.init}" if cfg.pretrain.init else pretrain.pretrain_key(cfg, data)
        rows.append({"variant": k.variant, "model": cfg.model.name, "task": k.task, "dataset": k.dataset,
                     "fold": k.fold, "seed": k.seed, "epochs": cfg.finetune.epochs,
                     "patience": cfg.finetune.patience, "lr": cfg.finetune.lr,
                     "batch_size": cfg.finetune.batch_size, "pretraining": pretraining,
                     "status": status.get(k, "to run"), "config_hash": cell.hash})
    return rows


def plan_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title, caption="epochs = the most fine-tuning epochs; patience = epochs without dev "
                  "improvement before stopping; pretraining = the key of the checkpoint it starts from")
    columns = [c for c in rows[0] if c != "config_hash"] if rows else []
    for column in columns:
        table.add_column(column, no_wrap=True, justify="right" if column in ("seed", "epochs", "patience", "lr",
                                                                             "batch_size") else "left")
    for row in rows:
        table.add_row(*(f"{row[c]:g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return table


def execute(decl: Declarations, request: Request, results: Path, data_dir: Path | None, title: str,
            executor_for=None, comparison: bool = False, dry_run: bool = False, fmt: str = "table",
            sweep: str | None = None) -> int:
    """Run the request's cells (on ``executor_for(number of cells to train)``), refresh the suite's report, and
    print the per-cell summary before it or (``comparison``) after it the report's own ablation table (or,
    with ``sweep``, its table of that sweep) of each dataset and scale: the same numbers and tests.

    A comparison that ran nothing leaves the suite's report as the run that made its cells wrote it:
    ``ablate`` after a paper run prints its table in seconds, not after minutes of re-testing.
    ``dry_run`` prints every cell's plan (``plan_rows``; ``fmt`` "table" or "json") and runs nothing.
    """
    from ctal_bench.data import default_data_dir
    from ctal_bench.data.prepare import DataPipeline

    console = Console()
    data = DataPipeline(data_dir or default_data_dir(), request.data_paths)
    cells = expand(decl, request)
    if dry_run:
        rows = plan_rows(cells, ResultsStore(results), data)
        if fmt == "json":
            print(json.dumps(rows, indent=1))
        else:  # wide enough that no name or number is cut, on a terminal or in a file
            Console(width=max(console.width, 170)).print(
                plan_table(rows, f"{title}: {len(rows)} cells (dry run: nothing is trained)"))
        return 0
    for name, size in sorted({(c.config.data.dataset, c.config.data.size) for c in cells}):
        data.dataset(name, size)  # build or check every dataset before any cell runs
    for tuned in request.tuned.values():
        console.print(f"tuned settings: {tuned.source}")
    summary = run_cells(cells, data, ResultsStore(results), console, executor_for)
    from ctal_bench import report

    if not comparison:
        tables.print_rich(console, summary_table(summary, title))
    if summary.ran or (summary.skipped and not comparison):
        report.report(results, decl, [request.suite], console=console)
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


def run_from_cli(args) -> int:
    decl = declarations.load(args.ablations_dir)
    suite = decl.suites.get(args.suite)
    request = request_from_args(args, decl, suite, suite_variants(decl, suite, args.models))
    _validate(decl, request)
    return execute(decl, request, args.results, args.data_dir, f"suite {suite.name}", executor_from_args(args),
                   dry_run=args.dry_run, fmt=args.format)


def ablate_from_cli(args) -> int:
    decl = declarations.load(args.ablations_dir)
    suite = decl.suites.get(args.suite)
    if args.sweep:
        chosen = [decl.ablations.get(args.sweep)]
        if not chosen[0].sweep:
            raise UserError(f"ablation {args.sweep!r} is not a sweep; use --drop {args.sweep}")
    else:
        chosen = [find_ablation(decl, part) for part in args.drop]
    base = sorted({a.model for a in chosen})
    variants = [Variant(m, m) for m in base] + [v for a in chosen for v in a.variants()]
    request = request_from_args(args, decl, suite, variants)
    _validate(decl, request)
    return execute(decl, request, args.results, args.data_dir,
                   f"ablation {', '.join(a.name for a in chosen)} (suite {suite.name})", executor_from_args(args),
                   comparison=True, dry_run=args.dry_run, fmt=args.format, sweep=args.sweep)


def find_ablation(decl: Declarations, part: str):
    """An ablation by name, by ``no_<part>``, or by what it drops."""
    for name in (part, f"no_{part}"):
        if name in decl.ablations:
            return decl.ablations.get(name)
    for name in decl.ablations:
        if decl.ablations.get(name).drop == part:
            return decl.ablations.get(name)
    return decl.ablations.get(part)  # raises with close matches


def _validate(decl: Declarations, request: Request) -> None:
    """Build every cell's config before any work, so a bad --set fails at once."""
    suite = decl.suites.get(request.suite)
    for variant in request.variants:
        for task in request.tasks:
            cell_config(decl, suite, request, variant, task, request.seeds[0])
