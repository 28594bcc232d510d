"""Fine-tuning: one recipe for every model and task.

The task supplies targets, loss and metrics; the model supplies forward; ``training.fit`` does
the loop. Model selection (best epoch, early stopping) looks at dev only; test is evaluated once,
with the selected weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from ctal_bench.config import Config
from ctal_bench.data import batching
from ctal_bench.data.prepare import TaskData
from ctal_bench.models.base import build_model
from ctal_bench.registry import TASKS
from ctal_bench.train.loop import FitResult, Schedule, fit
from ctal_bench.train.tasks import EvalOutputs, Task


@dataclass
class Outcome:
    metrics: dict  # {"dev": {...}, "test": {...}, "test_subsets": {subset name: {...}}}
    best_epoch: int
    curve: list[dict[str, float]]
    predictions: pd.DataFrame  # test split, per example (or per trial)
    timing: dict[str, float]
    parameters: int
    extra: dict  # task diagnostics on test, e.g. the emotion confusion matrix


def load_pretrained(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load pre-trained encoder weights; only the fine-tuning head may be missing."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    stray = [k for k in missing if not k.startswith("head.")]
    assert not stray and not unexpected, f"pre-trained weights do not fit: missing {stray}, unexpected {unexpected}"


@torch.no_grad()
def collect(model: torch.nn.Module, items: list[batching.Item], batch_size: int, device: torch.device,
            trials=()) -> EvalOutputs:
    """Run the model over ``items`` in a fixed order (deterministic evaluation)."""
    model.eval()
    uids, speakers, targets, logits, embeddings = [], [], [], [], []
    for batch in batching.iterate(items, batch_size, seed=None):
        out = model(batch.to(device))
        uids += batch.uids
        speakers += batch.speakers
        targets.append(batch.targets.cpu())
        logits.append(out.logits.float().cpu())
        embeddings.append(out.embedding.float().cpu())
    return EvalOutputs(tuple(uids), tuple(speakers), torch.cat(targets).numpy(), torch.cat(logits).numpy(),
                       torch.cat(embeddings).numpy(), tuple(trials))


def train(cfg: Config, task_name: str, data: TaskData, pretrained: dict[str, torch.Tensor] | None,
          device: torch.device, on_step=None, on_epoch=None) -> tuple[torch.nn.Module, FitResult]:
    """Build the model and train it, selecting the epoch on dev; the selected weights are in place.

    Reads the train and dev splits only, never test: tuning calls this directly.
    """
    task: Task = TASKS.get(task_name)
    model = build_model(cfg, data.n_outputs, data.vocab_size)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    model.to(device)
    f = cfg.finetune
    seed = cfg.run.seed
    train_lengths = [len(item.audio) for item in data.train]
    steps = len(batching.bucket_batches(train_lengths, f.batch_size, seed=seed))
    dev_trials = task.eval_trials(data.split, "dev")

    def dev_score() -> float:
        return task.evaluate(collect(model, data.dev, f.batch_size, device, dev_trials))[task.selection_metric]

    result = fit(model,
                 batches=lambda epoch: batching.iterate(data.train, f.batch_size, seed=seed * 1000 + epoch),
                 steps_per_epoch=steps,
                 loss_fn=lambda m, b: _losses(task, m, b),
                 schedule=Schedule(epochs=f.epochs, lr=f.lr, weight_decay=f.weight_decay, warmup=f.warmup,
                                   clip=f.clip, schedule=f.schedule, patience=f.patience),
                 device=device, evaluate=dev_score, selection_metric=task.selection_metric, on_step=on_step,
                 on_epoch=on_epoch)
    return model, result


def finetune(cfg: Config, task_name: str, data: TaskData, pretrained: dict[str, torch.Tensor] | None,
             device: torch.device, on_step=None) -> Outcome:
    """Train (``train``), then score dev and test once with the selected weights."""
    task: Task = TASKS.get(task_name)
    model, result = train(cfg, task_name, data, pretrained, device, on_step)
    f = cfg.finetune

    # The selected weights are in place: dev for the record, then test, once.
    started = time.perf_counter()
    dev = collect(model, data.dev, f.batch_size, device, task.eval_trials(data.split, "dev"))
    test = collect(model, data.test, f.batch_size, device, task.eval_trials(data.split, "test"))
    eval_seconds = time.perf_counter() - started
    n_eval = len(data.dev) + len(data.test)
    predictions = task.predictions(test)
    if "uid" in predictions:  # per example: which named subsets each belongs to
        of = {e.uid: ";".join(e.subsets) for e in data.split.test}
        predictions["subsets"] = [of[uid] for uid in predictions["uid"]]
    return Outcome(
        metrics={"dev": task.evaluate(dev), "test": task.evaluate(test),
                 "test_subsets": task.evaluate_subsets(test, data.split.test)},
        best_epoch=result.best_epoch, curve=result.curve, predictions=predictions,
        timing={"train_seconds": result.train_seconds, "steps": result.steps,
                "train_samples_per_second": result.samples / max(result.train_seconds, 1e-9),
                "train_audio_seconds_per_second": result.audio_frames * batching.frame_ms(cfg.data) / 1000
                / max(result.train_seconds, 1e-9),
                "eval_samples_per_second": n_eval / max(eval_seconds, 1e-9)},
        parameters=sum(p.numel() for p in model.parameters()), extra=task.diagnostics(test))


def _losses(task: Task, model, batch) -> dict[str, torch.Tensor]:
    out = model(batch)
    return {"task": task.loss(out.logits, batch.targets), "aux": out.aux_loss}

