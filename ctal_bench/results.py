"""The results store: it owns every path under ``--results`` and every reader of what is there.

``runs/<suite>/<cell id>.json`` is a cell's record (its full config and hash, metrics, curves,
timing, environment), ``<cell id>.preds.csv`` its test predictions, whose row count and digest
the record holds. A cell is (suite, variant, task, dataset, fold, seed); a rerun skips a cell
only when its record is readable, finished with the same config hash, and its predictions are
complete. Anything unreadable is noted in ``damaged`` (file and reason) for the caller to name,
and the cell runs again. Beside ``runs/``: ``checkpoints/``, ``tables/``, ``figures/``,
``tuned/``, ``profile/`` and the run lock ``.lock``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import pandas as pd

from ctal_bench.config import config_hash
from ctal_bench.errors import UserError
from ctal_bench.files import atomic_write_text, new_file_mode

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


class Damaged(NamedTuple):
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


class ResultsStore:
    """Every file under one ``--results`` folder, written atomically and read defensively."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.damaged: dict[Path, Damaged] = {}  # unreadable files met so far, for the caller to name

    # ---- where things are ------------------------------------------------------------------------
    def runs_dir(self, suite: str) -> Path:
        return self.root / "runs" / suite

    def cell_path(self, key: CellKey) -> Path:
        return self.runs_dir(key.suite) / f"{key.id}.json"

    def predictions_path(self, key: CellKey) -> Path:
        return self.runs_dir(key.suite) / f"{key.id}.preds.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tuned(self) -> Path:
        return self.root / "tuned"

    @property
    def profiles(self) -> Path:
        return self.root / "profile"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @contextlib.contextmanager
    def lock(self, holder: str) -> Iterator[None]:
        """Hold this folder for one run (``holder``: what runs, for the message). A second run on
        it stops at once with one line naming the holder, instead of training every cell twice.
        The kernel drops the lock when its process dies, so a killed run leaves no stale lock."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, new_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.pread(fd, 1000, 0).decode("utf-8", errors="replace").strip() or "another run"
            os.close(fd)
            raise UserError(f"--results {self.root}: in use by {held_by}; wait for it to finish, or give this "
                            "run another --results") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode("utf-8"), 0)
            yield
        finally:
            os.close(fd)

    def tables_dir(self, suite: str, group: str) -> Path:
        return self.root / "tables" / suite / group

    def figures_dir(self, suite: str) -> Path:
        return self.root / "figures" / suite

    # ---- writing -----------------------------------------------------------------------------------
    def write(self, key: CellKey, record: dict[str, Any]) -> Path:
        path = self.cell_path(key)
        atomic_write_text(path, json.dumps({"cell": asdict(key), **record}, indent=1, default=_jsonable),
                          durable=True)
        return path

    def write_predictions(self, key: CellKey, predictions: pd.DataFrame) -> dict[str, Any]:
        """Write the predictions; return their fingerprint (rows, digest) for the cell's record."""
        text = predictions.to_csv(index=False)
        atomic_write_text(self.predictions_path(key), text, durable=True)
        return {"rows": len(predictions), "sha256": _digest(text.encode("utf-8"))}

    # ---- reading -----------------------------------------------------------------------------------
    def read(self, key: CellKey) -> dict[str, Any] | None:
        """The cell's record; None if it is absent or unreadable (then noted in ``damaged``)."""
        return self._read_record(self.cell_path(key))

    def read_predictions(self, key: CellKey) -> pd.DataFrame | None:
        record = self.read(key)
        return None if record is None else self.predictions_of(key, record)

    def predictions(self, cell_id: str) -> pd.DataFrame | None:
        """The predictions of ``<suite>/<cell id>`` (a frame's ``cell_id``), checked against the
        record; None if missing, damaged (noted) or the record is unreadable."""
        suite, _, name = cell_id.partition("/")
        path = self.runs_dir(suite) / f"{name}.json"
        record = self._read_record(path)
        return None if record is None else self.predictions_of(CellKey(**record["cell"]), record)

    def is_done(self, key: CellKey, config_hash: str) -> bool:
        return self.complete(key, self.read(key), config_hash)

    def complete(self, key: CellKey, record: dict[str, Any] | None, config_hash: str) -> bool:
        """Whether ``record`` (the cell's, as read) finished with this config hash, and its
        predictions are complete."""
        if not (record and record["status"] == DONE and record["config_hash"] == config_hash):
            return False
        return self.predictions_of(key, record) is not None

    def records(self, suite: str | None = None) -> Iterator[dict[str, Any]]:
        """Every readable cell record (of one suite, or all), in file-name order."""
        pattern = f"{suite}/*.json" if suite else "*/*.json"
        for path in sorted((self.root / "runs").glob(pattern)):
            record = self._read_record(path)
            if record is not None:
                yield record

    def _read_record(self, path: Path) -> dict[str, Any] | None:
        if path.name.startswith("."):
            return None  # a writer's temporary file
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return self._note(path, f"not JSON: {error}")
        except OSError as error:
            return self._note(path, error.strerror or str(error))
        problem = _record_problem(record)
        return self._note(path, problem) if problem else record

    def predictions_of(self, key: CellKey, record: dict[str, Any]) -> pd.DataFrame | None:
        """The cell's predictions, checked against its ``record`` (row count and digest); None if
        missing or damaged (noted)."""
        path = self.predictions_path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return self._note(path, "missing") if record.get("status") == DONE else None
        except OSError as error:
            return self._note(path, error.strerror or str(error))
        expected = record.get("predictions")
        if expected and _digest(data) != expected.get("sha256"):
            return self._note(path, f"does not match its record (expected {expected.get('rows')} rows)")
        try:
            return pd.read_csv(io.BytesIO(data))
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
            return self._note(path, f"not a CSV table: {str(error).splitlines()[0]}")

    def _note(self, path: Path, reason: str) -> None:
        self.damaged[path] = Damaged(path, reason)
        return None

    def take_damaged(self) -> list[Damaged]:
        """The unreadable files noted since the last call, in path order."""
        found = [self.damaged[p] for p in sorted(self.damaged)]
        self.damaged.clear()
        return found


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_KEY_FIELDS = {f.name for f in fields(CellKey)}


def _record_problem(record: Any) -> str | None:
    """Why ``record`` is not a cell record this store wrote, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    cell = record.get("cell")
    if not isinstance(cell, dict) or set(cell) != _KEY_FIELDS:
        return "no cell coordinates"
    if record.get("status") not in (DONE, FAILED) or not isinstance(record.get("config_hash"), str):
        return "no status or config hash"
    if record["status"] == DONE:
        metrics = record.get("metrics")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("test"), dict):
            return "a finished cell without test metrics"
    return None


def row_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What must agree between the cells of one table row: the config without the cell's own
    coordinates and execution details (``run.*``: seed, device, threads; ``data.fold``)."""
    shared = {k: v for k, v in config.items() if k != "run"}
    shared["data"] = {k: v for k, v in shared.get("data", {}).items() if k != "fold"}
    return shared


def settings_hash(record: dict[str, Any]) -> str:
    """The hash of a record's ``row_settings`` and declared code versions. Records without a
    config fall back to their config hash."""
    config = record.get("config")
    if not isinstance(config, dict):
        return record.get("config_hash", "")
    return config_hash({"config": row_settings(config), "versions": record.get("versions")})


FRAME_COLUMNS = ("suite", "variant", "task", "dataset", "fold", "seed", "model", "ablation", "sweep_value",
                 "scale", "config_hash", "settings_hash", "parameters", "train_samples_per_second", "best_epoch",
                 "epochs", "patience", "epochs_trained", "cell_id")


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
        rows.append({**record["metrics"]["test"], **subsets, **asdict(key), "model": record.get("model", key.variant),
                     "ablation": record.get("ablation", ""),
                     "sweep_value": float("nan") if sweep_value is None else sweep_value,
                     "scale": record.get("scale", ""), "config_hash": record["config_hash"],
                     "settings_hash": settings_hash(record),
                     "parameters": record.get("parameters"),
                     "train_samples_per_second": record.get("timing", {}).get("train_samples_per_second"),
                     "best_epoch": record.get("best_epoch"), "epochs": budget.get("epochs"),
                     "patience": budget.get("patience"), "epochs_trained": None if curve is None else len(curve),
                     "cell_id": f"{key.suite}/{key.id}"})
    return pd.DataFrame(rows, columns=None if rows else list(FRAME_COLUMNS))


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
