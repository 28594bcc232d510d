"""Suites -> cells: the one config resolution, the cells of a request and what a run does with each.

A cell is one (variant, task, dataset, fold, seed). Its config is layered in one order
(``cell_config``): defaults <- scale <- the model's own settings <- tuned <- suite <- variant
<- budget exception <- --set <- coordinates, presets expanded (``resolved``). Cells finished
with the same hash are skipped, so a rerun resumes; a cell whose config equals another's shares
its result.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich.table import Table

from ctal_bench.config import Config, apply_overrides, config_hash, to_dict
from ctal_bench.declarations import Declarations, Suite, Variant
from ctal_bench.registry import DATASETS, MODELS, TASKS
from ctal_bench.results import DONE, CellKey, ResultsStore

if TYPE_CHECKING:
    from ctal_bench.experiment.tuned import Tuned


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


def find_ablation(decl: Declarations, part: str):
    """An ablation by name, by ``no_<part>``, or by what it drops."""
    for name in (part, f"no_{part}"):
        if name in decl.ablations:
            return decl.ablations.get(name)
    for name in decl.ablations:
        if decl.ablations.get(name).drop == part:
            return decl.ablations.get(name)
    return decl.ablations.get(part)  # raises with close matches


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


def validate(decl: Declarations, request: Request) -> None:
    """Build every cell's config before any work, so a bad --set fails at once."""
    suite = decl.suites.get(request.suite)
    for variant in request.variants:
        for task in request.tasks:
            cell_config(decl, suite, request, variant, task, request.seeds[0])


def starts_pretrained(cfg: Config) -> bool:
    """Whether fine-tuning starts from pre-trained weights (pre-trained here, or imported with
    ``pretrain.init``)."""
    return cfg.pretrain.enabled and getattr(MODELS.get(cfg.model.name), "pretrainable", False)


@dataclass
class Triage:
    """What a run does with each cell: skip it (done), share another cell's result, or train it."""

    done: list[Cell] = field(default_factory=list)
    shared: list[tuple[Cell, Cell]] = field(default_factory=list)  # (cell, the done one it copies)
    todo: list[Cell] = field(default_factory=list)
    twins: dict[CellKey, list[Cell]] = field(default_factory=dict)  # a cell to train -> cells sharing its result
    replaced: list[Cell] = field(default_factory=list)  # finished with another config: this run replaces them
    records: dict[CellKey, dict] = field(default_factory=dict)  # the done cells' records, as triage read them

    @property
    def left(self) -> int:
        return len(self.shared) + len(self.todo) + sum(map(len, self.twins.values()))


def triage(cells: list[Cell], store: ResultsStore) -> Triage:
    """A cell whose task and hash equal another's shares that cell's result instead of training
    again (the task is a cell coordinate, not part of the config)."""
    plan, finished, first = Triage(), {}, {}
    for cell in cells:
        record = store.read(cell.key)
        if store.complete(cell.key, record, cell.hash):
            plan.done.append(cell)
            plan.records[cell.key] = record
            finished.setdefault((cell.key.task, cell.hash), cell)
        elif record is not None and record["status"] == DONE and record["config_hash"] != cell.hash:
            plan.replaced.append(cell)
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


def plan_rows(cells: list[Cell], store: ResultsStore, data) -> list[dict]:
    """One row per cell with the settings that decide a comparison, and what a run would do with
    it (done, shared with another cell, or to run). Trains, builds and writes nothing."""
    from ctal_bench.train import pretrain

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
