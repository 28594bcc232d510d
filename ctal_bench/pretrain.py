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
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from ctal_bench import declarations
from ctal_bench.config import Config, apply_overrides, load_toml, merge, to_dict
from ctal_bench.data import batching
from ctal_bench.data.batching import Batch
from ctal_bench.data.prepare import DataPipeline
from ctal_bench.declarations import Declarations
from ctal_bench.distributed import SINGLE_PROCESS, World, data_parallel, from_environment, process_group
from ctal_bench.errors import UserError
from ctal_bench.finetune import build_model
from ctal_bench.masking import IGNORE_INDEX, mam_loss, mask_audio_spans, mask_tokens, mlm_loss
from ctal_bench.profiling import peak_memory
from ctal_bench.registry import DATASETS, MODELS
from ctal_bench.runner import base_config, parse_data_paths, resolve_device
from ctal_bench.training import Schedule, fit, save_atomic

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
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
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

def command_config(decl: Declarations, scale: str, config_file: Path | None, overrides: list[str],
                   seed: int | None, device: str | None) -> Config:
    """Defaults <- the scale <- the model's own settings <- ``--config`` <- ``--set`` <- ``--seed``
    and ``--device``: a cell's order, so a suite at the same scale and overrides reuses the
    checkpoint."""
    cfg = base_config(decl, scale, "ctal")
    if config_file is not None:
        cfg = merge(cfg, load_toml(config_file))
    cfg = apply_overrides(cfg, overrides)
    coordinates = {}
    if seed is not None:
        coordinates["run.seed"] = seed
    if device:
        coordinates["run.device"] = device
    cfg = apply_overrides(cfg, coordinates)
    if not getattr(MODELS.get(cfg.model.name), "pretrainable", False):
        pretrainable = ", ".join(name for name in MODELS if getattr(MODELS.get(name), "pretrainable", False))
        raise UserError(f"model {cfg.model.name!r} has no pre-training; pre-trainable: {pretrainable}")
    if cfg.pretrain.init:
        raise UserError(f"pretrain.init = {cfg.pretrain.init!r} starts from released weights: nothing to pre-train")
    if not cfg.pretrain.enabled:
        raise UserError("pretrain.enabled = false: nothing to pre-train")
    return cfg


def pretrain_from_cli(args) -> int:
    """``bench.py pretrain``: one process, or under torchrun one per device (rank 0 prints)."""
    from ctal_bench.data import default_data_dir

    decl = declarations.load(args.ablations_dir)
    cfg = command_config(decl, args.scale, args.config, args.overrides, args.seed, args.device)
    data_paths = parse_data_paths(args.data)
    world = from_environment()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    console = Console(quiet=not world.is_main)
    checkpoints = args.results / "checkpoints"
    with process_group(world, resolve_device(cfg.run.device)) as device:
        data = DataPipeline(args.data_dir or default_data_dir(), data_paths, progress=world.is_main)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not world.is_main) as progress:
            steps = progress.add_task("pre-training steps", total=None)
            _, record = pretrained_weights(cfg, data, checkpoints, device, world=world,
                                           on_step=lambda: progress.advance(steps))
    console.print(f"pre-training on {record['corpus']} ({record['utterances']} utterances)")
    console.print(curve_table(record["curve"]))
    if record["reused"]:
        console.print("already pre-trained with this config: nothing to do")
    else:
        console.print(f"{record['steps']} steps in {record['train_seconds']:.0f} s: "
                      f"{record['samples_per_second']:.1f} samples/s over {record['processes']} process(es); "
                      f"peak memory {record['peak_memory_bytes'] / 2**20:.0f} MiB ({record['memory']}, rank 0)")
    console.print(f"checkpoint: {checkpoint_path(checkpoints, record['key'])}")
    return 0


def curve_table(curve: list[dict]) -> Table:
    """The pre-training losses per epoch."""
    table = Table()
    for column in ("epoch", "MLM", "MAM", "loss"):
        table.add_column(column, justify="right")
    for row in curve:
        table.add_row(str(row["epoch"]), f"{row['train_mlm']:.4f}", f"{row['train_mam']:.4f}",
                      f"{row['train_loss']:.4f}")
    return table
