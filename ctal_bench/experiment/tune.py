"""Hyper-parameter tuning with Optuna: every model gets the same trial budget, chosen on dev.

A study is one (model, task, dataset, scale, seed). TPE draws each trial's settings from the
model's declared search space (``[search.MODEL]``, ctal_bench/ablations/search_spaces.toml); the trial
fine-tunes through the one training loop, reports its dev score after every epoch to a median
pruner, and returns its best dev score. The test split is never loaded. The best of the study's
first ``--trials`` finished trials is written as ``<results>/tuned/<model>__<task>__<dataset>.toml``,
a config override that ``bench.py run --tuned`` applies. Studies live in an Optuna storage
(SQLite by default; any RDB URL lets many workers share one study), so a rerun continues.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from ctal_bench.config import Config, apply_overrides, parse_override, to_dict
from ctal_bench.declarations import Declarations, Param, SearchSpace, flatten
from ctal_bench.errors import UserError
from ctal_bench.experiment.cell import pretrained_weights
from ctal_bench.experiment.plan import at_coordinates, base_config, dataset_for
from ctal_bench.experiment.tuned import tuned_path, tuned_text
from ctal_bench.files import atomic_write_text
from ctal_bench.registry import MODELS, TASKS
from ctal_bench.results import ResultsStore
from ctal_bench.train.device import resolve_device
from ctal_bench.train.metrics import HIGHER_IS_BETTER, is_better

# The median pruner judges a trial only once 5 trials have completed, and not in the first third
# of its epochs: a from-scratch model's dev score can sit at chance for several epochs whatever it
# reaches later (TFN on synth emotion at its own settings: the first 4 of 25). A share, not a
# count, so that it means the same for CTAL's 10 smoke epochs as for a baseline's 25.
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_SHARE = 1 / 3
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # trials that use up the budget


@dataclass(frozen=True)
class TuneRequest:
    """What the user asked to tune, validated by ``tune``."""

    model: str
    task: str
    trials: int
    scale: str
    seed: int  # every trial's run.seed
    sampler_seed: int
    storage: str
    overrides: tuple[str, ...] = ()  # --set, applied to every trial
    data_paths: dict[str, Path] = field(default_factory=dict)
    device: str | None = None


def study_name(model: str, task: str, dataset: str, scale: str, seed: int) -> str:
    return f"{model}__{task}__{dataset}__{scale}__seed-{seed}"


def tune(decl: Declarations, request: TuneRequest, results: Path, data, console: Console) -> Path:
    """Run the study up to its budget, then write and return the tuned file."""
    import torch

    from ctal_bench.train import finetune

    if request.trials < 1:
        raise UserError(f"--trials {request.trials}: expected a positive number of trials")
    task, metric = request.task, TASKS.get(request.task).selection_metric
    space = _search_space(decl, request.model)
    fixed, dataset, fold = _fixed_config(decl, request, space, data)
    if fixed.run.threads:
        torch.set_num_threads(fixed.run.threads)
    device = resolve_device(fixed.run.device)
    name = study_name(request.model, task, dataset, request.scale, request.seed)
    results.mkdir(parents=True, exist_ok=True)  # the default storage lives there
    study = _open_study(name, request, HIGHER_IS_BETTER[metric], int(fixed.finetune.epochs * PRUNER_WARMUP_SHARE),
                        _fingerprint(fixed, space.params))
    # A live line under the trial lines: the running trial's epoch and dev score.
    status = console.status("preparing data (and pre-training, for a pre-trained model)")

    def objective(trial: optuna.Trial) -> float:
        cfg = apply_overrides(fixed, {p.key: suggest(trial, p) for p in space.params})
        task_data = data.task_data(cfg, task, fold, with_test=False)
        pretrained, _ = pretrained_weights(cfg, data, ResultsStore(results).checkpoints, device)

        def report(epoch: int, dev_score: float) -> None:
            status.update(f"trial {trial.number}: epoch {epoch + 1}, dev {metric} {dev_score:.4f}")
            trial.report(dev_score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        _, fitted = finetune.train(cfg, task, task_data, pretrained, device, on_epoch=report)
        return fitted.best_score

    remaining = request.trials - len(_counted(study, request.trials))
    console.print(f"study {name} in {request.storage}")
    console.print(f"{request.trials - remaining} of {request.trials} trials finished, {remaining} to run; "
                  f"selecting on dev {metric} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}")
    if remaining > 0:
        with status:
            # Features, tokenizer and pre-training (cached) before trial 0, so its time is its own.
            data.task_data(fixed, task, fold, with_test=False)
            pretrained_weights(fixed, data, ResultsStore(results).checkpoints, device)
            # Another worker on the same study may finish the budget first: stop when it is spent.
            study.optimize(objective, n_trials=remaining,
                           callbacks=[MaxTrialsCallback(request.trials, states=COUNTED),
                                      lambda _, trial: console.print(trial_line(trial, metric))])

    counted = _counted(study, request.trials)
    best = _best(counted, metric)
    if best is None:
        raise UserError(f"study {name}: none of its {len(counted)} finished trials completed "
                        "(all pruned or failed); nothing to write")
    path = tuned_path(ResultsStore(results).tuned, request.model, task, dataset)
    meta = {"model": request.model, "task": task, "dataset": dataset, "fold": fold, "scale": request.scale,
            "seed": request.seed, "command_line_set": list(request.overrides), "study": name,
            "metric": metric, "best_dev": best.value, "best_trial": best.number, "trials": len(counted),
            "completed": sum(t.state == TrialState.COMPLETE for t in counted),
            "pruned": sum(t.state == TrialState.PRUNED for t in counted), "sampler_seed": request.sampler_seed}
    atomic_write_text(path, tuned_text(meta, best.params))
    console.print(f"best of {len(counted)} trials ({meta['completed']} completed, {meta['pruned']} pruned): "
                  f"trial {best.number}, dev {metric} {best.value:.4f}  {_params_text(best.params)}")
    console.print(f"wrote {path} (`bench.py run --tuned` applies it)")
    return path


def suggest(trial: optuna.Trial, param: Param) -> Any:
    """Draw one declared parameter; the Optuna parameter name is its config key."""
    if param.choices:
        return trial.suggest_categorical(param.key, list(param.choices))
    if isinstance(param.low, int):  # an int config key (declarations turn float ranges to floats)
        return trial.suggest_int(param.key, param.low, param.high, step=param.step or 1, log=param.log)
    return trial.suggest_float(param.key, param.low, param.high, step=param.step, log=param.log)


def trial_line(trial: FrozenTrial, metric: str) -> str:
    """One progress line per finished trial: number, outcome, seconds, settings."""
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    if trial.state == TrialState.COMPLETE:
        outcome = f"dev {metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        outcome = f"[yellow]pruned after epoch {trial.last_step + 1}[/yellow]"
    else:
        outcome = "[red]failed: no finite dev score[/red]"
    return f"trial {trial.number:3d}  {outcome}  {seconds:6.1f} s  {_params_text(trial.params)}"


def _params_text(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _search_space(decl: Declarations, model: str) -> SearchSpace:
    MODELS.get(model)
    if model not in decl.search_spaces:
        raise UserError(f"no search space for model {model!r}: declare [search.{model}] "
                        "(see ctal_bench/ablations/search_spaces.toml)")
    return decl.search_spaces.get(model)


def _fixed_config(decl: Declarations, request: TuneRequest, space: SearchSpace, data) -> tuple[Config, str, str]:
    """What every trial shares: the scale, the model's own settings, --set and the coordinates;
    also the dataset and the fold it tunes on (the dataset's first unless data.fold is set)."""
    if request.scale:
        decl.scales.get(request.scale)
    searched = {p.key for p in space.params}
    for text in request.overrides:
        for key in flatten(parse_override(text)):
            if key in searched:
                raise UserError(f"--set {text}: {key} is searched ([search.{request.model}] in {space.source}); "
                                "a fixed value would make the search meaningless")
    dataset = dataset_for(request.task, request.data_paths)
    cfg = apply_overrides(base_config(decl, request.scale, request.model), list(request.overrides))
    cfg = at_coordinates(cfg, request.model, dataset, request.seed, request.device)
    source = data.dataset(dataset, cfg.data.size)
    source.check_task(request.task)
    fold = cfg.data.fold or source.folds(request.task)[0]
    source.check_fold(request.task, fold)
    return apply_overrides(cfg, {"data.fold": fold}), dataset, fold


def _fingerprint(fixed: Config, params: tuple[Param, ...]) -> str:
    """Digest of what a study's trials must share: the fixed config and the search space. Where
    and how fast a trial runs (run.device, run.threads, run.workers) may differ between workers."""
    config = {**to_dict(fixed), "run": {"seed": fixed.run.seed}}
    text = json.dumps({"config": config, "space": [asdict(p) for p in params]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open_study(name: str, request: TuneRequest, maximise: bool, warmup_epochs: int,
                fingerprint: str) -> optuna.Study:
    """Create the study, or load it to continue; refuse one whose trials ran with other settings."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print our own line per trial
    try:
        study = optuna.create_study(
            study_name=name, storage=request.storage, load_if_exists=True,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                               n_warmup_steps=warmup_epochs),
            direction="maximize" if maximise else "minimize")
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as e:
        raise UserError(f"--storage {request.storage}: {str(e).splitlines()[0]}") from None
    # A sampler seeded as in an earlier run would draw that run's first points again, so it is
    # seeded with how far the study has got: reproducible, and a resumed study does not repeat itself.
    study.sampler = optuna.samplers.TPESampler(seed=request.sampler_seed + len(study.trials))
    recorded = study.user_attrs.get("fingerprint")
    if recorded is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif recorded != fingerprint:
        raise UserError(f"study {name} in {request.storage} ran with other settings (--set, the model's "
                        "settings or its search space changed); pass another --storage to start afresh")
    return study


def _counted(study: optuna.Study, budget: int) -> list[FrozenTrial]:
    """The first ``budget`` finished trials by number: the same budget for every model, even when
    parallel workers finish a few more."""
    finished = study.get_trials(deepcopy=False, states=COUNTED)
    return sorted(finished, key=lambda t: t.number)[:budget]


def _best(trials: list[FrozenTrial], metric: str) -> FrozenTrial | None:
    """The completed trial with the best dev value; the earliest wins a tie."""
    best = None
    for trial in trials:
        if trial.state == TrialState.COMPLETE and (best is None or is_better(metric, trial.value, best.value)):
            best = trial
    return best
