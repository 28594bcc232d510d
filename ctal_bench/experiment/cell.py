"""One cell: pre-train (or reuse), fine-tune, evaluate, and write its record and predictions."""
from __future__ import annotations

import time
from pathlib import Path

from ctal_bench.config import Config, to_dict
from ctal_bench.experiment.plan import Cell, starts_pretrained
from ctal_bench.results import DONE, FAILED, ResultsStore, environment
from ctal_bench.train.device import peak_memory, resolve_device


def pretrained_weights(cfg: Config, data, checkpoints: Path, device, on_step=None) -> tuple[dict | None, dict | None]:
    """The weights fine-tuning starts from and their record: a pre-trained model's (from the
    cache in ``checkpoints``, trained now, or imported with ``pretrain.init``), else (None, None)."""
    from ctal_bench.train import pretrain

    if not starts_pretrained(cfg):
        return None, None
    if cfg.pretrain.init:
        from ctal_bench.models.released import init_weights

        return init_weights(Path(cfg.pretrain.init), cfg.model, cfg.data.frame_stack)
    return pretrain.pretrained_weights(cfg, data, checkpoints, device, on_step)


def run_cell(cell: Cell, data, store: ResultsStore, checkpoints: Path, on_step=None) -> dict:
    """Pre-train (or reuse), fine-tune, evaluate, and write the cell's record and predictions."""
    import torch

    from ctal_bench.train import finetune

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
    record["predictions"] = store.write_predictions(cell.key, outcome.predictions)
    store.write(cell.key, record)
    return record


def share_result(twin: Cell, cell: Cell, store: ResultsStore) -> dict:
    """Record ``cell`` from a finished cell with the identical config instead of training again."""
    source = store.read(twin.key)
    record = {k: v for k, v in source.items() if k != "cell"}
    record.update(variant=cell.variant.name, ablation=cell.variant.ablation, sweep_value=cell.variant.sweep_value,
                  scale=cell.scale, shared_from=twin.key.id)
    predictions = store.predictions_of(twin.key, source)
    if predictions is not None:
        record["predictions"] = store.write_predictions(cell.key, predictions)
    store.write(cell.key, record)
    return record


def record_failure(store: ResultsStore, cell, message: str) -> dict:
    """Write ``cell`` as failed, with ``message`` (a traceback) as its reason; return the record."""
    record = {"status": FAILED, "config_hash": cell.hash, "config": to_dict(cell.config),
              "variant": cell.variant.name, "traceback": message, "environment": environment()}
    store.write(cell.key, record)
    return record
