"""``bench.py pretrain``: one pre-training, in one process or under torchrun one per device."""
from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ctal_bench import declarations
from ctal_bench.cli.common import parse_data_paths
from ctal_bench.config import Config, apply_overrides, load_toml, merge
from ctal_bench.data.prepare import DataPipeline
from ctal_bench.declarations import Declarations
from ctal_bench.errors import UserError
from ctal_bench.experiment.plan import base_config
from ctal_bench.registry import MODELS
from ctal_bench.results import ResultsStore
from ctal_bench.train.device import resolve_device
from ctal_bench.train.distributed import from_environment, process_group
from ctal_bench.train.pretrain import checkpoint_path, pretrained_weights


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

    decl = declarations.load(args.ablations_dir)
    cfg = command_config(decl, args.scale, args.config, args.overrides, args.seed, args.device)
    data_paths = parse_data_paths(args.data)
    world = from_environment()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    console = Console(quiet=not world.is_main)
    checkpoints = ResultsStore(args.results).checkpoints
    with process_group(world, resolve_device(cfg.run.device)) as device:
        data = DataPipeline(args.data_dir, data_paths, progress=world.is_main)
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
