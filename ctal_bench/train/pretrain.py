"""CTAL pre-training: masked language modelling + masked cross-modal acoustic modelling.

Loss = MLM + MAM, unweighted. With ``pretrain.cross_modal = false`` the streams are pre-trained
apart (the audio stream runs without cross-attention; the text stream never sees audio anyway),
which is the no_cross_modal_pretraining ablation. Checkpoints are cached by the hash of
everything that shapes them, so fine-tuning-only variants and other tasks reuse them.

``bench.py pretrain`` runs this alone, and under torchrun with DistributedDataParallel: the same
global batches, split over the processes, give the same model as one process (up to float
rounding), and the suites then reuse its checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ctal_bench.config import Config, to_dict
from ctal_bench.data import batching
from ctal_bench.data.batching import Batch
from ctal_bench.data.prepare import DataPipeline
from ctal_bench.errors import UserError
from ctal_bench.files import save_atomic
from ctal_bench.models.base import build_model
from ctal_bench.registry import DATASETS, MODELS
from ctal_bench.train.device import peak_memory
from ctal_bench.train.distributed import SINGLE_PROCESS, World, data_parallel
from ctal_bench.train.loop import Schedule, fit
from ctal_bench.train.masking import IGNORE_INDEX, mam_loss, mask_audio_spans, mask_tokens, mlm_loss

# Model fields that only shape the fine-tuning head: variants differing in them share pre-training.
FINETUNE_ONLY_FIELDS = ("head", "orthogonality_weight", "released_cosine")


def pretrain_key(cfg: Config, data: DataPipeline) -> str:
    """Digest of everything that shapes a pre-trained checkpoint: the model with its preset
    expanded, the data and pre-training settings, the corpus, the seed, and the declared versions
    of the model's and the corpus's code. Opens nothing."""
    model_cls = MODELS.get(cfg.model.name)
    model = {k: v for k, v in to_dict(model_cls.resolve(cfg.model)).items() if k not in FINETUNE_ONLY_FIELDS}
    settings = {k: v for k, v in to_dict(cfg.data).items() if k not in ("dataset", "fold", "pretrain_dataset")}
    corpus_dataset, corpus = data.pretraining_source(cfg)
    shaping = {"model": model, "preset": model_cls.presets[cfg.model.size], "data": settings, "corpus": corpus,
               "pretrain": to_dict(cfg.pretrain), "seed": cfg.run.seed,
               "versions": {"model": model_cls.version, "corpus": DATASETS.get(corpus_dataset).version}}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_losses(model: nn.Module, batch: Batch, cfg: Config, vocab_size: int, generator: torch.Generator,
                    world: World = SINGLE_PROCESS) -> dict[str, torch.Tensor]:
    """MLM and MAM losses of ``batch`` for a pre-training ``model`` (``CTAL.pretraining()``).

    Data-parallel, every rank holds the whole global batch and draws the masks for all of it from
    the same seeded generator, so they are a single process's masks; it then runs its share of
    the rows and divides the share's summed losses by the global counts over the world size.
    DDP averages gradients over ranks, so the update is exactly that of the global-batch mean.
    """
    p = cfg.pretrain
    tokens, labels = mask_tokens(batch.tokens, batch.token_mask, p.mlm_prob, vocab_size, generator)
    audio, chosen = mask_audio_spans(batch.audio, batch.audio_mask, p.mask_ratio, p.span_min, p.span_max,
                                     generator)
    n_labelled = (labels != IGNORE_INDEX).sum().clamp_min(1)
    n_chosen = (chosen.sum() * batch.audio.shape[-1]).clamp_min(1)

    rows = world.rows(len(batch))
    # A last batch smaller than the world leaves a rank without rows; it runs one row at weight 0
    # all the same, because DDP needs every rank's backward.
    weight = 1.0 if rows.stop > rows.start else 0.0
    if not weight:
        rows = slice(0, 1)
    mlm_logits, mam_pred = model(tokens[rows], batch.token_mask[rows], audio[rows], batch.audio_mask[rows],
                                 cross_modal=p.cross_modal)
    return {"mlm": weight * mlm_loss(mlm_logits, labels[rows], n_labelled / world.size),
            "mam": weight * mam_loss(mam_pred, batch.audio[rows], chosen[rows], n_chosen / world.size)}


def checkpoint_path(checkpoints: Path, key: str) -> Path:
    return checkpoints / f"pretrain-{key}.pt"


def load_cached(path: Path) -> dict | None:
    """The cached checkpoint at ``path``, or None if there is none. A damaged one (cut short,
    overwritten, not ours) is named on stderr and moved aside, and None returned: the caller
    pre-trains again instead of failing every cell that starts from it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and "record" in state):
            raise ValueError("not a pre-training checkpoint of this package")
        return state
    except FileNotFoundError:
        return None
    except Exception as error:  # torch reports a damaged file in several exception types
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another worker moved it first
            pass
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"warning: {path}: unreadable checkpoint ({reason}); moved to {aside.name}, pre-training again",
              file=sys.stderr)
        return None


def pretrained_weights(cfg: Config, data: DataPipeline, checkpoints: Path, device: torch.device,
                       on_step=None, world: World = SINGLE_PROCESS) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict of a pre-trained model (from the cache, or trained now) and its record.

    The record holds the loss curve, timing and the key; it is stored with the checkpoint.
    Under torchrun (``world``) every rank calls this: they train one model with
    DistributedDataParallel, each on its share of every global batch of ``pretrain.batch_size``,
    and rank 0 writes the checkpoints.
    """
    p = cfg.pretrain
    if p.batch_size % world.size:
        raise UserError(f"pretrain.batch_size {p.batch_size} does not split evenly over {world.size} "
                        "processes: make it a multiple of the number of processes")
    with world.main_first():  # rank 0 builds what the data directory lacks; the others then read it
        corpus = data.pretraining_dataset(cfg)
        key = pretrain_key(cfg, data)
        path = checkpoint_path(checkpoints, key)
        state = load_cached(path)
        if state is not None:
            return state["model"], {**state["record"], "reused": True}
        items = data.pretraining_items(cfg)
        vocab_size = data.tokenizer(cfg).get_vocab_size()

    model = build_model(cfg, 1, vocab_size).to(device)
    pretraining = model.pretraining()
    # Without cross-modal pre-training the audio layers' cross-attention gets no gradient.
    trained = data_parallel(pretraining, world, device, find_unused_parameters=not p.cross_modal)
    generator = torch.Generator(device=device)  # seeded per epoch below
    schedule = Schedule(epochs=p.epochs, lr=p.lr, weight_decay=p.weight_decay, warmup=p.warmup, clip=p.clip)
    steps = len(batching.bucket_batches([len(item.audio) for item in items], p.batch_size, seed=cfg.run.seed))

    def epoch_batches(epoch: int):
        # Masks depend on (seed, epoch) only, so a resumed run masks exactly as an uninterrupted one.
        generator.manual_seed(cfg.run.seed * 1000 + epoch)
        return batching.iterate(items, p.batch_size, seed=cfg.run.seed * 1000 + epoch)

    partial = checkpoints / f".pretrain-{key}.partial.pt"
    result = fit(trained, batches=epoch_batches,
                 steps_per_epoch=steps,
                 loss_fn=lambda m, b: pretrain_losses(m, b, cfg, vocab_size, generator, world),
                 schedule=schedule, device=device, checkpoint=partial, on_step=on_step, world=world)
    record = {"key": key, "corpus": str(corpus.root.name), "utterances": len(items), "curve": result.curve,
              "steps": result.steps, "train_seconds": result.train_seconds,
              "samples_per_second": result.samples / max(result.train_seconds, 1e-9), "processes": world.size,
              **peak_memory(device), "reused": False}
    weights = {k: v.detach().cpu() for k, v in pretraining.state_dict().items()}
    if world.is_main:
        save_atomic(path, {"model": weights, "record": record})
        partial.unlink(missing_ok=True)
    world.barrier()  # every rank returns once the checkpoint is there
    return weights, record


# ---- the command --------------------------------------------------------------------------------
