"""The one training loop, used by pre-training and fine-tuning alike.

The recipe supplies the batches, the loss and (optionally) a dev evaluation; the loop does the
optimiser, the per-step schedule, gradient clipping, bf16 autocast on CUDA, best-epoch selection
and early stopping on dev, throughput accounting and resumable checkpoints. Training steps run
under autocast; the dev evaluation does not: it runs in fp32, as the dev and test scores a
record keeps are computed, so the score that selected an epoch is the score recorded for it.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from ctal_bench.data.batching import Batch
from ctal_bench.files import save_atomic
from ctal_bench.train.distributed import SINGLE_PROCESS, World, unwrap
from ctal_bench.train.metrics import is_better
from ctal_bench.train.optim import adamw, lr_at

LossFn = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Schedule:
    epochs: int
    lr: float
    weight_decay: float
    warmup: float
    clip: float
    schedule: str = "linear"
    patience: int = 0  # epochs without dev improvement before stopping; 0 = never stop early


@dataclass
class FitResult:
    curve: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = -1
    best_score: float | None = None
    steps: int = 0
    train_seconds: float = 0.0
    samples: int = 0
    audio_frames: int = 0


def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def fit(model: nn.Module, batches: Callable[[int], Iterable[Batch]], steps_per_epoch: int, loss_fn: LossFn,
        schedule: Schedule, device: torch.device, evaluate: Callable[[], float] | None = None,
        selection_metric: str = "", checkpoint: Path | None = None,
        on_step: Callable[[], None] | None = None, world: World = SINGLE_PROCESS,
        on_epoch: Callable[[int, float], None] | None = None) -> FitResult:
    """Train ``model``; ``batches(epoch)`` yields that epoch's (seeded) ``steps_per_epoch`` batches.

    With ``evaluate`` (the dev value of ``selection_metric``), the weights of the best epoch are
    restored at the end, and ``on_epoch(epoch, dev_score)`` hears each epoch's score (tuning
    stops an unpromising trial by raising from it).
    With ``checkpoint``, state is saved after every epoch and a rerun resumes from it.
    Data-parallel (``world``, ``model`` wrapped by ``distributed.data_parallel``), every rank gets
    every global batch and ``loss_fn`` returns its rank's share of the loss; the curve shows the
    global losses, and rank 0 alone writes the checkpoint. A checkpoint holds the unwrapped
    model's state, so a run resumes with any number of processes.
    """
    total_steps = steps_per_epoch * schedule.epochs
    optimizer = adamw(model, schedule.lr, schedule.weight_decay)
    result, start_epoch, best_state, since_best = FitResult(), 0, None, 0
    own = unwrap(model)  # what checkpoints hold

    if checkpoint is not None and checkpoint.exists():  # resume an interrupted run
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        own.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        result, start_epoch = FitResult(**state["result"]), state["epoch"] + 1
        best_state, since_best = state["best_state"], state["since_best"]

    for epoch in range(start_epoch, schedule.epochs):
        # ---- train one epoch; losses stay on the device until the epoch ends (no host sync)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        frames = torch.zeros((), device=device, dtype=torch.long)
        started = time.perf_counter()
        for batch in batches(epoch):
            batch = batch.to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(result.steps, total_steps, schedule.lr, schedule.warmup, schedule.schedule)
            with _autocast(device):
                losses = loss_fn(model, batch)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if schedule.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), schedule.clip)
            optimizer.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            result.steps += 1
            result.samples += len(batch)
            frames += batch.audio_mask.sum()
            if on_step is not None:
                on_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        result.train_seconds += time.perf_counter() - started
        result.audio_frames += int(frames)
        means = world.average({k: v / steps_per_epoch for k, v in sums.items()})  # each rank's share -> global
        row = {"epoch": epoch, **{f"train_{k}": v.item() for k, v in means.items()}}
        row["train_loss"] = sum(v for k, v in row.items() if k.startswith("train_"))

        # ---- select on dev only, in fp32: the precision of the recorded dev and test scores
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                score = evaluate()
            row["dev_score"] = score
            if result.best_score is None or is_better(selection_metric, score, result.best_score):
                result.best_epoch, result.best_score, since_best = epoch, score, 0
                best_state = copy.deepcopy(own.state_dict())
            else:
                since_best += 1
            if on_epoch is not None:
                on_epoch(epoch, score)
        else:
            result.best_epoch = epoch
        result.curve.append(row)

        if checkpoint is not None and world.is_main:
            save_atomic(checkpoint, {"model": own.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": torch.get_rng_state(), "epoch": epoch,
                               "result": dataclasses.asdict(result), "best_state": best_state,
                               "since_best": since_best})
        if evaluate is not None and schedule.patience and since_best >= schedule.patience:
            break

    if best_state is not None:
        own.load_state_dict(best_state)
    model.eval()
    return result
