"""The results store: one JSON file per cell, written atomically, predictions beside it.

A cell is (suite, variant, task, dataset, fold, seed); its record carries the full config and
its hash, so a rerun can skip cells that finished with the same config and redo the rest.
"""
from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from ctal_bench.files import atomic_write_text

DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class CellKey:
    suite: str
    variant: str  # a model name, or "<ablation>" / "<sweep>=<value>"
    task: str
    dataset: str
    fold: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.variant}__{self.task}__{self.dataset}__fold-{self.fold}__seed-{self.seed}"


class ResultsStore:
    """``root/runs/<suite>/<cell id>.json`` and ``<cell id>.preds.csv``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def cell_path(self, key: CellKey) -> Path:
        return self.root / "runs" / key.suite / f"{key.id}.json"

    def predictions_path(self, key: CellKey) -> Path:
        return self.root / "runs" / key.suite / f"{key.id}.preds.csv"

    def write(self, key: CellKey, record: dict[str, Any]) -> Path:
        path = self.cell_path(key)
        atomic_write_text(path, json.dumps({"cell": asdict(key), **record}, indent=1, default=_jsonable),
                          durable=True)
        return path

    def write_predictions(self, key: CellKey, predictions: pd.DataFrame) -> Path:
        path = self.predictions_path(key)
        atomic_write_text(path, predictions.to_csv(index=False), durable=True)
        return path

    def read(self, key: CellKey) -> dict[str, Any] | None:
        return _read_json(self.cell_path(key))

    def read_predictions(self, key: CellKey) -> pd.DataFrame | None:
        path = self.predictions_path(key)
        return pd.read_csv(path) if path.exists() else None

    def is_done(self, key: CellKey, config_hash: str) -> bool:
        record = self.read(key)
        return bool(record) and record.get("status") == DONE and record.get("config_hash") == config_hash

    def records(self, suite: str | None = None) -> Iterator[dict[str, Any]]:
        """Every readable cell record (of one suite, or all), in file-name order."""
        pattern = f"{suite}/*.json" if suite else "*/*.json"
        for path in sorted((self.root / "runs").glob(pattern)):
            record = _read_json(path)
            if record is not None:
                yield record


FRAME_COLUMNS = ("suite", "variant", "task", "dataset", "fold", "seed", "model", "ablation", "sweep_value",
                 "scale", "config_hash", "parameters", "train_samples_per_second", "best_epoch", "epochs",
                 "patience", "epochs_trained", "cell_id")


def metric_column(metric: str, subset: str = "") -> str:
    """The frame's column of a test metric over the whole test set, or over a named subset."""
    return f"{subset}:{metric}" if subset else metric


def frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished cell: what tables, tests and figures need.

    Columns: FRAME_COLUMNS, i.e. the cell's coordinates (suite, variant, task, dataset, fold,
    seed), model, ablation ("" for a plain model), sweep_value (the swept value of a sweep
    variant, else NaN), scale, config_hash, parameters, train_samples_per_second, best_epoch
    (0-based), the fine-tuning budget (epochs, patience) and the epochs it trained (fewer when it
    stopped early), and the cell id (``<suite>/<id>``) that locates its predictions; then every
    test metric by name (NaN where a task lacks it), and by ``metric_column(metric, subset)`` over
    each named test subset (synth's ``transfer:ua``). Records from before configs and curves were
    kept have NaN budgets.
    """
    rows = []
    for record in records:
        if record.get("status") != DONE:
            continue
        key = CellKey(**record["cell"])
        sweep_value = record.get("sweep_value")
        budget = record.get("config", {}).get("finetune", {})
        curve = (record.get("curves") or {}).get("finetune")
        subsets = {metric_column(metric, subset): value
                   for subset, values in record["metrics"].get("test_subsets", {}).items()
                   for metric, value in values.items()}
        rows.append({**record["metrics"]["test"], **subsets, **asdict(key), "model": record["model"],
                     "ablation": record.get("ablation", ""),
                     "sweep_value": float("nan") if sweep_value is None else sweep_value,
                     "scale": record.get("scale", ""), "config_hash": record["config_hash"],
                     "parameters": record.get("parameters"),
                     "train_samples_per_second": record.get("timing", {}).get("train_samples_per_second"),
                     "best_epoch": record.get("best_epoch"), "epochs": budget.get("epochs"),
                     "patience": budget.get("patience"), "epochs_trained": None if curve is None else len(curve),
                     "cell_id": f"{key.suite}/{key.id}"})
    return pd.DataFrame(rows, columns=None if rows else list(FRAME_COLUMNS))


def _read_json(path: Path) -> dict[str, Any] | None:
    """A record, or None if the file is absent or not a complete JSON object."""
    if path.name.startswith("."):
        return None  # a writer's temporary file
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a result record")


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (with '+dirty'), or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """What made a result: library versions, device, threads, git commit."""
    import torch

    versions = {}
    for package in ("ctal-bench", "torch", "torchaudio", "numpy", "scipy", "scikit-learn",
                    "tokenizers", "soundfile", "espeakng-loader"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cuda = torch.cuda.is_available()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "git_commit": git_commit(),
    }
