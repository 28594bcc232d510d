"""`bench.py tune` on the tiny synth build: reproducible, blind to test labels, applied by `run --tuned`."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from ctal_bench import cli, declarations
from ctal_bench.data import batching
from ctal_bench.data.base import EMOTIONS
from ctal_bench.declarations import Variant
from ctal_bench.errors import UserError
from ctal_bench.experiment import plan
from ctal_bench.experiment.tuned import find_tuned, read_tuned, tuned_path
from ctal_bench.registry import DATASETS
from ctal_bench.train.loop import Schedule, fit

pytestmark = pytest.mark.integration  # Optuna studies end to end

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "data.size=tiny", "--set", "finetune.epochs=2", "--set", "run.threads=1"]
TUNED = "tuned/text_only__emotion__synth.toml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def tune(results: Path, data_dir: Path, *extra: str) -> None:
    """Three trials of text_only on emotion, in this process (so tests can patch the data)."""
    code = cli.main(["tune", "--model", "text_only", "--task", "emotion", "--trials", "3", "--seed", "0",
                     *TINY, *extra, "--results", str(results), "--data-dir", str(data_dir)])
    assert code == 0


def trials(results: Path) -> list[tuple]:
    study = optuna.load_study(study_name="text_only__emotion__synth__smoke__seed-0",
                              storage=f"sqlite:///{results / 'optuna.db'}")
    return [(t.number, t.state.name, t.params, t.value) for t in study.trials]


@pytest.fixture(scope="module")
def first(tmp_path_factory, data_dir):
    results = tmp_path_factory.mktemp("first")
    tune(results, data_dir)
    return results


def test_tuning_with_a_fixed_seed_is_reproducible(first, data_dir, tmp_path):
    tune(tmp_path, data_dir)
    assert trials(tmp_path) == trials(first)
    assert (tmp_path / TUNED).read_text() == (first / TUNED).read_text()

    done = trials(first)
    assert [state for _, state, _, _ in done] == ["COMPLETE"] * 3
    assert len({json.dumps(params, sort_keys=True) for _, _, params, _ in done}) == 3  # the sampler varied them
    tuned = read_tuned(first / TUNED)
    number, _, params, value = max(done, key=lambda t: (t[3], -t[0]))  # best dev UA; the earliest on a tie
    assert tuned.overrides == params and tuned.scale == "smoke"
    assert set(params) == {"finetune.lr", "finetune.weight_decay", "finetune.batch_size", "model.dropout"}
    assert f"best_trial = {number}" in (first / TUNED).read_text()
    assert f"best_dev = {value!r}" in (first / TUNED).read_text()


def test_the_choice_never_depends_on_test_labels(first, data_dir, tmp_path, monkeypatch):
    """Every test emotion label moved to the next class: the trials and the choice are unchanged."""
    synth = DATASETS.get("synth")
    clean_split = synth.split
    poisoned = []

    def poisoned_split(self, task, fold, seed):
        split = clean_split(self, task, fold, seed)
        test = tuple(dataclasses.replace(e, emotion=EMOTIONS[(EMOTIONS.index(e.emotion) + 1) % len(EMOTIONS)])
                     for e in split.test)
        poisoned.append(len(test))
        return dataclasses.replace(split, test=test)

    monkeypatch.setattr(synth, "split", poisoned_split)
    tune(tmp_path, data_dir)
    assert poisoned and all(poisoned)  # the tuner's splits were the poisoned ones
    assert trials(tmp_path) == trials(first)
    assert (tmp_path / TUNED).read_text() == (first / TUNED).read_text()


def test_run_tuned_applies_the_chosen_settings(first, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(first / "tuned", results / "tuned")
    code = cli.main(["run", "--suite", "smoke", "--models", "text_only", "--tasks", "emotion", "--tuned",
                     *TINY, "--set", "finetune.epochs=1", "--results", str(results), "--data-dir", str(data_dir)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((results / "runs/smoke/text_only__emotion__synth__fold-0__seed-0.json").read_text())
    chosen = read_tuned(results / TUNED).overrides
    config = record["config"]
    assert {key: config[key.split(".")[0]][key.split(".")[1]] for key in chosen} == chosen
    assert config["finetune"]["epochs"] == 1  # --set still wins
    assert record["tuned"] == str(results / TUNED)
    assert f"tuned settings: {results / TUNED}" in capsys.readouterr().out.replace("\n", "")


def write_tuned(directory: Path, model: str, body: str) -> Path:
    path = tuned_path(directory, model, "emotion", "synth")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def test_ablation_variants_inherit_their_models_tuned_settings(tmp_path):
    write_tuned(tmp_path, "ctal", '[tuned]\nscale = "smoke"\n'
                'set = { "finetune.lr" = 0.0007, "model.orthogonality_weight" = 0.3 }\n')
    decl = declarations.load()
    suite = decl.suites.get("smoke")
    no_orthogonality = decl.ablations.get("no_orthogonality_loss").variants()[0]
    variants = (Variant("ctal", "ctal"), no_orthogonality, Variant("tfn", "tfn"))
    tuned = find_tuned(tmp_path, {(v.model, "emotion", "synth") for v in variants}, "smoke")
    request = plan.Request("smoke", variants, ("emotion",), (0,), "smoke", tuned=tuned)
    ctal, ablated, tfn = (plan.cell_config(decl, suite, request, v, "emotion", 0) for v in variants)
    assert (ctal.finetune.lr, ctal.model.orthogonality_weight) == (0.0007, 0.3)
    assert (ablated.finetune.lr, ablated.model.orthogonality_weight) == (0.0007, 0.0)  # the ablation wins
    assert tfn.finetune.lr == decl.models.get("tfn").overrides["finetune.lr"]  # no tuned file: its own


def test_a_tuned_file_from_another_scale_or_malformed_is_refused(tmp_path):
    path = write_tuned(tmp_path, "tfn", '[tuned]\nscale = "smoke"\nset = { "finetune.lr" = 0.001 }\n')
    with pytest.raises(UserError, match="tuned at scale 'smoke', but this run uses 'cpu'") as e:
        find_tuned(tmp_path, {("tfn", "emotion", "synth")}, "cpu")
    assert str(path) in str(e.value)
    for body, message in [('[tuned]\nscale = "smoke"\nset = { "finetune.lrr" = 0.001 }\n', "finetune.lrr"),
                          ('[tuned]\nscale = "smoke"\n', r"expected a \[tuned\] table with a `set` table"),
                          ('[tuned\n', "not valid TOML")]:
        path.write_text(body)
        with pytest.raises(UserError, match=message) as e:
            find_tuned(tmp_path, {("tfn", "emotion", "synth")}, "smoke")
        assert str(path) in str(e.value)
    assert find_tuned(tmp_path, {("lmf", "emotion", "synth")}, "smoke") == {}  # none: the defaults
    with pytest.raises(UserError, match="directory does not exist"):
        find_tuned(tmp_path / "nosuch", {("lmf", "emotion", "synth")}, "smoke")


def test_bad_search_space_is_one_line_naming_file_and_key(tmp_path):
    for shipped in declarations.DEFAULT_DIR.glob("*.toml"):
        shutil.copy(shipped, tmp_path / shipped.name)
    spaces = tmp_path / "search_spaces.toml"
    spaces.write_text(spaces.read_text().replace('"model.dropout" = { low = 0.0, high = 0.5 }',
                                                 '"model.dropout" = { low = 0.5, high = 0.1 }', 1))
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "tune", "--model", "tfn", "--task", "emotion",
                           "--ablations-dir", str(tmp_path), "--results", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {spaces}: [search.tfn]: 'model.dropout': low (0.5) must be below "
                                   "high (0.1)")
    assert not (tmp_path / "results").exists()  # refused before any work


def test_on_epoch_hears_each_dev_score_and_can_stop_training():
    """The hook the pruner uses: every epoch's dev score, in order; raising from it ends fit."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batch = batching.Batch(torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.bool),
                           torch.randn(4, 1, 3), torch.ones(4, 1, dtype=torch.bool), torch.randn(4), (), ())
    loss = lambda m, b: {"mse": (m(b.audio[:, 0]).squeeze(-1) - b.targets).pow(2).mean()}  # noqa: E731
    scores = iter([0.5, 0.7, 0.6, 0.9])
    heard = []

    def on_epoch(epoch, score):
        heard.append((epoch, score))
        if epoch == 2:
            raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        fit(model, lambda epoch: [batch], 1, loss, Schedule(epochs=4, lr=0.1, weight_decay=0.0, warmup=0.0, clip=0.0),
            torch.device("cpu"), evaluate=lambda: next(scores), selection_metric="ua", on_epoch=on_epoch)
    assert heard == [(0, 0.5), (1, 0.7), (2, 0.6)]
