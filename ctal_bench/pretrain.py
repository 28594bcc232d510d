"""CTAL pre-training: masked language modelling + masked cross-modal acoustic modelling.

Loss = MLM + MAM, unweighted. With ``pretrain.cross_modal = false`` the streams are pre-trained
apart (the audio stream runs without cross-attention; the text stream never sees audio anyway),
which is the no_cross_modal_pretraining ablation. Checkpoints are cached by the hash of
everything that shapes them, so fine-tuning-only variants and other tasks reuse them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ctal_bench.config import Config, to_dict
from ctal_bench.data import batching
from ctal_bench.data.batching import Batch
from ctal_bench.data.prepare import DataPipeline
from ctal_bench.masking import mam_loss, mask_audio_spans, mask_tokens, mlm_loss
from ctal_bench.profiling import peak_memory
from ctal_bench.registry import MODELS
from ctal_bench.training import Schedule, fit, save_atomic

# Model fields that only shape the fine-tuning head: variants differing in them share pre-training.
FINETUNE_ONLY_FIELDS = ("head", "orthogonality_weight", "released_cosine")


def pretrain_key(cfg: Config, corpus_root: Path) -> str:
    """Digest of everything that shapes a pre-trained checkpoint."""
    model = {k: v for k, v in to_dict(cfg.model).items() if k not in FINETUNE_ONLY_FIELDS}
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("dataset", "fold", "pretrain_dataset")}
    shaping = {"model": model, "data": data, "corpus": corpus_root.name, "pretrain": to_dict(cfg.pretrain),
               "seed": cfg.run.seed}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_losses(model: nn.Module, batch: Batch, cfg: Config, vocab_size: int,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """MLM and MAM losses of ``batch`` for a pre-training ``model`` (``CTAL.pretraining()``)."""
    p = cfg.pretrain
    tokens, labels = mask_tokens(batch.tokens, batch.token_mask, p.mlm_prob, vocab_size, generator)
    audio, chosen = mask_audio_spans(batch.audio, batch.audio_mask, p.mask_ratio, p.span_min, p.span_max,
                                     generator)
    mlm_logits, mam_pred = model(tokens, batch.token_mask, audio, batch.audio_mask, cross_modal=p.cross_modal)
    return {"mlm": mlm_loss(mlm_logits, labels), "mam": mam_loss(mam_pred, batch.audio, chosen)}


def pretrained_weights(cfg: Config, data: DataPipeline, checkpoints: Path, device: torch.device,
                       on_step=None) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict of a pre-trained model (from the cache, or trained now) and its record.

    The record holds the loss curve, timing and the key; it is stored with the checkpoint.
    """
    corpus = data.pretraining_dataset(cfg)
    key = pretrain_key(cfg, corpus.root)
    path = checkpoints / f"pretrain-{key}.pt"
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state["model"], {**state["record"], "reused": True}

    items = data.pretraining_items(cfg)
    vocab_size = data.tokenizer(cfg).get_vocab_size()
    torch.manual_seed(cfg.run.seed)
    model = MODELS.get(cfg.model.name)(cfg.model, 1, vocab_size).to(device)
    pretraining = model.pretraining()
    generator = torch.Generator(device=device)  # seeded per epoch below
    p = cfg.pretrain
    schedule = Schedule(epochs=p.epochs, lr=p.lr, weight_decay=p.weight_decay, warmup=p.warmup, clip=p.clip)
    steps = len(batching.bucket_batches([len(item.audio) for item in items], p.batch_size, seed=cfg.run.seed))

    def epoch_batches(epoch: int):
        # Masks depend on (seed, epoch) only, so a resumed run masks exactly as an uninterrupted one.
        generator.manual_seed(cfg.run.seed * 1000 + epoch)
        return batching.iterate(items, p.batch_size, seed=cfg.run.seed * 1000 + epoch)

    result = fit(pretraining, batches=epoch_batches,
                 steps_per_epoch=steps,
                 loss_fn=lambda m, b: pretrain_losses(m, b, cfg, vocab_size, generator),
                 schedule=schedule, device=device, checkpoint=checkpoints / f".pretrain-{key}.partial.pt",
                 on_step=on_step)
    record = {"key": key, "corpus": str(corpus.root.name), "utterances": len(items), "curve": result.curve,
              "steps": result.steps, "train_seconds": result.train_seconds,
              "samples_per_second": result.samples / max(result.train_seconds, 1e-9), **peak_memory(device),
              "reused": False}
    weights = {k: v.detach().cpu() for k, v in pretraining.state_dict().items()}
    save_atomic(path, {"model": weights, "record": record})
    (checkpoints / f".pretrain-{key}.partial.pt").unlink(missing_ok=True)
    return weights, record

