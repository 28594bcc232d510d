"""``bench.py tune``: one study (model x task), resumable, shareable between workers."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ctal_bench import declarations
from ctal_bench.cli.common import parse_data_paths
from ctal_bench.experiment.tune import TuneRequest, tune


def tune_from_cli(args) -> int:
    from ctal_bench.data.prepare import DataPipeline

    decl = declarations.load(args.ablations_dir)
    results = Path(args.results)
    storage = args.storage or f"sqlite:///{results / 'optuna.db'}"
    data_paths = parse_data_paths(args.data)
    request = TuneRequest(args.model, args.task, args.trials, args.scale, args.seed,
                          args.seed if args.sampler_seed is None else args.sampler_seed, storage,
                          tuple(args.overrides), data_paths, args.device)
    tune(decl, request, results, DataPipeline(args.data_dir, data_paths), Console())
    return 0
