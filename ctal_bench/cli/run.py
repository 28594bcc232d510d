"""``bench.py run`` and ``bench.py ablate``: a request from the arguments, then ``experiment.run.execute``."""
from __future__ import annotations

from ctal_bench import declarations
from ctal_bench.cli.common import executor_from_args, parse_data_paths
from ctal_bench.declarations import Declarations, Suite, Variant
from ctal_bench.errors import UserError
from ctal_bench.experiment.plan import Request, dataset_for, find_ablation, suite_variants, validate
from ctal_bench.experiment.run import execute
from ctal_bench.registry import TASKS
from ctal_bench.results import ResultsStore


def request_from_args(args, decl: Declarations, suite: Suite, variants: list[Variant]) -> Request:
    tasks = tuple(args.tasks or suite.tasks)
    for task in tasks:
        TASKS.get(task)
    seeds = suite.seeds
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError(f"--seeds {args.seeds}: expected a positive number of seeds")
        seeds = tuple(range(args.seeds)) if args.seeds > len(seeds) else seeds[:args.seeds]
    scale = args.scale or suite.scale
    if scale:
        decl.scales.get(scale)
    data_paths = parse_data_paths(args.data)
    tuned = {}
    if args.tuned:
        from ctal_bench.experiment.tuned import find_tuned

        directory = ResultsStore(args.results).tuned if args.tuned is True else args.tuned
        wanted = {(v.model, task, dataset_for(task, data_paths, suite.dataset_for(task)))
                  for v in variants for task in tasks}
        tuned = find_tuned(directory, wanted, scale)
    return Request(suite.name, tuple(variants), tasks, seeds, scale, tuple(args.overrides), data_paths,
                   args.device, tuned)


def run_from_cli(args) -> int:
    decl = declarations.load(args.ablations_dir)
    suite = decl.suites.get(args.suite)
    request = request_from_args(args, decl, suite, suite_variants(decl, suite, args.models))
    validate(decl, request)
    return execute(decl, request, args.results, args.data_dir, f"suite {suite.name}", executor_from_args(args),
                   dry_run=args.dry_run, fmt=args.format)


def ablate_from_cli(args) -> int:
    decl = declarations.load(args.ablations_dir)
    suite = decl.suites.get(args.suite)
    if args.sweep:
        chosen = [decl.ablations.get(args.sweep)]
        if not chosen[0].sweep:
            raise UserError(f"ablation {args.sweep!r} is not a sweep; use --drop {args.sweep}")
    else:
        chosen = [find_ablation(decl, part) for part in args.drop]
    base = sorted({a.model for a in chosen})
    variants = [Variant(m, m) for m in base] + [v for a in chosen for v in a.variants()]
    request = request_from_args(args, decl, suite, variants)
    validate(decl, request)
    return execute(decl, request, args.results, args.data_dir,
                   f"ablation {', '.join(a.name for a in chosen)} (suite {suite.name})", executor_from_args(args),
                   comparison=True, dry_run=args.dry_run, fmt=args.format, sweep=args.sweep)
