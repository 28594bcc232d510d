"""The command line: parses, validates, calls the library; no logic of its own.

Heavy imports (torch) happen inside the commands so that ``--help`` stays quick. A user error
anywhere ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctal_bench.errors import UserError, storage_error

EXAMPLES = """examples:
  python bench.py run --suite smoke
  python bench.py run --suite paper --data iemocap=/data/IEMOCAP_full_release
  python bench.py ablate --drop fusion --suite smoke
  python bench.py ablate --sweep mask_ratio
  python bench.py run --suite paper --jobs 4
  python bench.py run --suite paper --executor ray --address auto
  python bench.py pretrain --scale smoke --seed 0
  torchrun --nproc-per-node 8 bench.py pretrain --scale paper
  python bench.py tune --model tfn --task emotion --trials 20
  python bench.py run --suite paper --tuned
  python bench.py list ablations
  python bench.py data synth --size default
  python bench.py data check /data/IEMOCAP_full_release --format iemocap
  python bench.py import-ctal ctal_base.pt --tokenizer roberta-base/
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print usage too)
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _results_arg(p):
    p.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                   help="where results are read and written (default: results/)")


def _data_arg(p):
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="datasets and feature caches (default: $CTAL_BENCH_DATA_DIR or ~/.cache/ctal-bench)")


def _declarations_arg(p):
    p.add_argument("--ablations-dir", type=Path, default=None, metavar="DIR",
                   help="directory of ablation/suite TOML declarations (default: the shipped ctal_bench/ablations/)")


def _suite_narrowing_args(p):
    p.add_argument("--models", nargs="+", metavar="MODEL", help="only these models")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="only these tasks")
    p.add_argument("--seeds", type=int, metavar="N", help="use the first N seeds of the suite's list")
    p.add_argument("--scale", metavar="SCALE", help="a declared scale instead of the suite's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set finetune.lr=3e-5 (repeatable)")
    p.add_argument("--data", nargs="+", default=[], metavar="NAME=PATH",
                   help="point tasks at real data, e.g. iemocap=PATH mosei=PATH librispeech=PATH")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this machine (default); ray: tasks on a Ray cluster (pip install -e '.[ray]')")
    p.add_argument("--jobs", default="auto", metavar="N",
                   help="local executor: cells run in N worker processes, cores/N threads each; 1: in this "
                   "process; auto (default): one per core for a CPU run of 8 or more cells, else 1")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="ray executor: auto (the cluster this node belongs to) or HOST:PORT; default: start a "
                   "local cluster")
    p.add_argument("--cpus-per-cell", type=int, default=1, metavar="N", help="ray executor: CPUs per cell task")
    p.add_argument("--dry-run", action="store_true",
                   help="print every cell with its budget, optimiser settings, pre-training and status "
                   "(done / shared / to run), and exit without training or writing anything")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="--dry-run's output: a table (default) or JSON for scripts")
    # A bare --tuned gives True, read as <results>/tuned (argparse does not convert a const).
    p.add_argument("--tuned", nargs="?", const=True, default=None, type=Path, metavar="DIR",
                   help="apply the settings `tune` chose, from DIR/<model>__<task>__<dataset>.toml "
                   "(default DIR: <results>/tuned); a cell without such a file keeps the defaults")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench.py", description="CTAL vs late fusion: runs, ablations, reports.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a declared suite", description="Run a declared suite; "
                       "finished cells with the same config hash are skipped.")
    p.add_argument("--suite", required=True, help="a declared suite (see: list suites)")
    _suite_narrowing_args(p), _results_arg(p), _data_arg(p), _declarations_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ablate", help="run declared ablations against full CTAL",
                       description="Run full CTAL and declared ablation variants on a suite's "
                       "tasks, seeds and scale, then print the comparison.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--drop", nargs="+", metavar="PART",
                      help="ablations by name or by what they drop (e.g. fusion, no_fusion)")
    what.add_argument("--sweep", metavar="NAME", help="a declared sweep (e.g. mask_ratio)")
    p.add_argument("--suite", default="paper", help="suite giving tasks, seeds and scale (default: paper)")
    _suite_narrowing_args(p), _results_arg(p), _data_arg(p), _declarations_arg(p)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("pretrain", help="pre-train CTAL alone, on several GPUs under torchrun",
                       description="Pre-train CTAL (MLM + MAM) and cache the checkpoint in <results>/checkpoints, "
                       "where `run` and `ablate` reuse it when scale, overrides and seed match. Under "
                       "torchrun each process takes its share of every global batch (pretrain.batch_size) "
                       "with DistributedDataParallel.",
                       epilog="examples:\n  python bench.py pretrain --scale smoke --seed 1\n"
                       "  torchrun --nproc-per-node 4 bench.py pretrain --scale paper --set pretrain.epochs=20\n"
                       "  torchrun --nproc-per-node 8 bench.py pretrain --scale paper "
                       "--data librispeech=/data/LibriSpeech --set data.pretrain_dataset=librispeech\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="smoke", help="a declared scale (default: smoke; see: list scales)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML of config overrides applied after the scale, e.g. [pretrain] epochs = 20")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied after --config, e.g. --set pretrain.lr=1e-4 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="run.seed (default: the config's, 0 unless set)")
    p.add_argument("--data", nargs="+", default=[], metavar="NAME=PATH",
                   help="real data, e.g. librispeech=PATH (with --set data.pretrain_dataset=librispeech)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _results_arg(p), _data_arg(p), _declarations_arg(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("report", help="results -> tables (.md, .tex) and figures",
                       description="Aggregate result cells over seeds, test against a reference, and "
                       "write tables to results/tables/<suite>/<dataset>/ (one set per dataset and scale) and "
                       "figures to results/figures/<suite>/.")
    p.add_argument("--suite", nargs="+", default=None, help="suites to report (default: every suite with results)")
    p.add_argument("--reference", default=None, help="the main table's reference model (default: late_fusion)")
    p.add_argument("--keep", action="append", default=[], metavar="HASH",
                   help="where a table row mixes configurations, keep the cells of this settings hash "
                        "(the error names them; repeatable)")
    p.add_argument("--format", default="md,tex", help="table formats, comma-separated: md, tex")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    _results_arg(p), _declarations_arg(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("profile", help="timing, throughput, memory, FLOPs and MFU per model",
                       description="Profile each model's pre-training and fine-tuning steps, inference "
                       "over a batch-size sweep and batch-1 latency at shapes taken from the data; "
                       "write results/profile/<model>.json and an efficiency table.")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (more warm-up steps)")
    p.add_argument("--models", nargs="+", help="default: every registered model")
    p.add_argument("--scale", default="smoke", help="the declared scale that sizes models and data")
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement (default 50)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _results_arg(p), _data_arg(p), _declarations_arg(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("tune", help="Optuna tuning on dev with an equal budget per model",
                       description="Tune one model on one task: TPE draws settings from the model's declared "
                       "search space ([search.MODEL]), a median pruner stops weak trials on dev, and the best "
                       "trial is written to <results>/tuned/<model>__<task>__<dataset>.toml for `run --tuned`. "
                       "The test split is never loaded. Rerunning continues the same study.")
    p.add_argument("--model", required=True, help="a registered model (see: list models)")
    p.add_argument("--task", required=True, help="emotion, sentiment or verification")
    p.add_argument("--trials", type=int, default=20,
                   help="the study's budget of finished (completed or pruned) trials, earlier runs' "
                   "included (default 20)")
    p.add_argument("--scale", default="smoke", help="the declared scale trials run at (default: smoke)")
    p.add_argument("--seed", type=int, default=0, help="every trial's run seed, and the sampler's (default 0)")
    p.add_argument("--sampler-seed", type=int, default=None, metavar="N",
                   help="the TPE sampler's seed (default: --seed); give each parallel worker its own")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage (default: sqlite:///<results>/optuna.db); an RDB URL such as "
                   "postgresql://... lets many workers share one study")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every trial, e.g. --set finetune.epochs=10 (repeatable)")
    p.add_argument("--data", nargs="+", default=[], metavar="NAME=PATH",
                   help="tune on real data, e.g. iemocap=PATH (default: synth)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _results_arg(p), _data_arg(p), _declarations_arg(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("data", help="build the embedded dataset or check a real one")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data_sub.add_parser("synth", help="build (or verify) the embedded synthetic dataset")
    q.add_argument("--size", default="default", help="tiny, small, default or large")
    q.add_argument("--workers", type=int, default=2)
    q.add_argument("--probe", action="store_true", help="also run the linear calibration probes")
    _data_arg(q)
    q.set_defaults(func=cmd_data_synth)
    q = data_sub.add_parser("check", help="validate a dataset directory and count its contents")
    q.add_argument("path", type=Path)
    q.add_argument("--format", required=True, help="a registered dataset (see: list datasets)")
    q.set_defaults(func=cmd_data_check)

    p = sub.add_parser("import-ctal", help="convert a released CTAL checkpoint into ours",
                       description="Map the authors' released CTAL weights (and their vocab.json + "
                       "merges.txt) onto our CTAL and write them as a pre-trained checkpoint.")
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="the released .pt / .pth file")
    p.add_argument("--tokenizer", required=True, type=Path, metavar="DIR",
                   help="directory with the released vocab.json and merges.txt")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle everything in the file (can run arbitrary code); default: tensors only")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="default: <results>/checkpoints/released-<CKPT name>.pt")
    _results_arg(p)
    p.set_defaults(func=cmd_import_ctal)

    p = sub.add_parser("list", help="list registered models, datasets, tasks, ablations, suites",
                       epilog="examples:\n  python bench.py list ablations\n"
                       "  python bench.py list ablations --format json | jq -r '.[].ablation'\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["models", "datasets", "tasks", "ablations", "suites", "scales"])
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="a table (default; names are never shortened, descriptions wrap) or JSON for scripts")
    _declarations_arg(p)
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_paths(args)
        return args.func(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that failed for space or permission outside a cell
        stop = storage_error(e)
        if stop is None:
            raise
        print(f"error: {stop}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells and trials are saved; rerun the same command to resume", file=sys.stderr)
        return 130


def check_paths(args) -> None:
    """Before any work: ``--data-dir`` (default filled in here, once) is a directory or can be one,
    and ``--results`` is a directory this process can write (a dry run only checks it is not a file)."""
    from ctal_bench.data import default_data_dir
    from ctal_bench.files import not_a_file, writable_dir

    if hasattr(args, "data_dir"):
        args.data_dir = not_a_file(args.data_dir or default_data_dir(), "--data-dir")
    if hasattr(args, "results"):
        if getattr(args, "dry_run", False):  # a dry run writes nothing
            not_a_file(args.results, "--results")
        else:
            writable_dir(args.results, "--results")


def cmd_run(args) -> int:
    from ctal_bench.cli import run

    return run.run_from_cli(args)


def cmd_ablate(args) -> int:
    from ctal_bench.cli import run

    return run.ablate_from_cli(args)


def cmd_pretrain(args) -> int:
    from ctal_bench.cli import pretrain

    return pretrain.pretrain_from_cli(args)


def cmd_tune(args) -> int:
    from ctal_bench.cli import tune

    return tune.tune_from_cli(args)


def cmd_report(args) -> int:
    from ctal_bench import declarations
    from ctal_bench.analysis import report

    report.report(args.results, declarations.load(args.ablations_dir), args.suite, args.reference,
                  report.parse_formats(args.format), figures=not args.no_figures, keep=args.keep)
    return 0


def cmd_profile(args) -> int:
    from ctal_bench import catalog, declarations
    from ctal_bench.data.prepare import DataPipeline
    from ctal_bench.experiment import profile as profiling
    from ctal_bench.registry import MODELS
    from ctal_bench.train.device import resolve_device

    catalog.load()
    decl = declarations.load(args.ablations_dir)
    decl.scales.get(args.scale)
    models = args.models or list(MODELS)
    for name in models:
        MODELS.get(name)
    if args.steps < 5:
        raise UserError(f"--steps {args.steps}: expected at least 5 timed steps")
    profiling.run(decl, models, args.scale, args.overrides, resolve_device(args.device or "auto"), args.dtype,
                  args.compile, args.results, DataPipeline(args.data_dir), args.steps)
    return 0


def cmd_data_synth(args) -> int:
    from ctal_bench.data import synth

    root = synth.build(args.data_dir, args.size, workers=args.workers)
    from rich.console import Console

    console = Console()
    console.print(f"synth-{args.size}: {root}")
    if args.probe:
        from ctal_bench.data import probe

        console.print(probe.render(probe.probe(root, args.data_dir, workers=args.workers)))
    return 0


def cmd_data_check(args) -> int:
    from rich.console import Console

    from ctal_bench.data import check

    summary = check.check_dataset(args.path, args.format)
    Console().print(check.render(summary))
    if summary.bad_audio:
        raise UserError(f"{args.path}: {len(summary.bad_audio)} audio files cannot be used (listed above)")
    return 0


def cmd_import_ctal(args) -> int:
    from ctal_bench.models import released
    from ctal_bench.results import ResultsStore

    out = args.out or ResultsStore(args.results).checkpoints / f"released-{args.checkpoint.stem}.pt"
    for line in released.convert(args.checkpoint, args.tokenizer, out, trust=args.trust_checkpoint):
        print(line)
    return 0


def cmd_list(args) -> int:
    from ctal_bench.cli import listing

    if args.format == "json":
        import json

        print(json.dumps(listing.rows(args.what, args.ablations_dir), indent=1))
        return 0
    from rich.console import Console

    from ctal_bench.analysis.tables import print_rich

    print_rich(Console(), listing.table(args.what, args.ablations_dir))
    return 0
