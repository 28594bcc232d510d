"""End to end on the tiny synth build: cells written, resumed, failures recorded, reproducible."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from processes import start_bench

from ctal_bench import catalog, declarations
from ctal_bench.config import Config, apply_overrides
from ctal_bench.data import batching
from ctal_bench.data.prepare import DataPipeline
from ctal_bench.experiment.plan import base_config, suite_variants
from ctal_bench.models.base import build_model
from ctal_bench.registry import TASKS
from ctal_bench.train.loop import Schedule, fit
from ctal_bench.train.pretrain import pretrain_losses

pytestmark = pytest.mark.integration  # end-to-end runs of suites

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "data.size=tiny", "--set", "pretrain.epochs=2", "--set", "finetune.epochs=2",
        "--set", "run.threads=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def bench(*args, data_dir):
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env, timeout=600)


def cells(results: Path, suite="smoke"):
    return {p.name: json.loads(p.read_text()) for p in sorted((results / "runs" / suite).glob("*.json"))}


def test_run_writes_cells_reuses_pretraining_and_resumes(tmp_path, data_dir):
    results = tmp_path / "results"
    proc = bench("run", "--suite", "smoke", "--results", str(results), *TINY, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = cells(results)
    assert len(written) == 3 and all(r["status"] == "done" for r in written.values())
    # stdout is a pipe here, as in `run > log.txt`: a plain line per finished cell (issue 25, item 6)
    for i, task in enumerate(("emotion", "sentiment", "verification"), 1):
        assert f"cell {i}/3 done ctal__{task}__synth__fold-0__seed-0: " in proc.stdout, proc.stdout[-3000:]
    for name, record in written.items():
        assert record["config_hash"] and record["environment"]["versions"]["torch"]
        assert record["curves"]["finetune"] and record["curves"]["pretrain"]
        assert record["timing"]["train_samples_per_second"] > 0 and record["timing"]["peak_memory_bytes"] > 0
        assert record["pretrain"]["peak_memory_bytes"] > 0 and record["scale"] == "smoke"
        assert set(record["metrics"]) == {"dev", "test", "test_subsets"}
        assert (results / "runs" / "smoke" / name.replace(".json", ".preds.csv")).exists()
    # One pre-training, shared by the three tasks.
    assert sorted(r["pretrain"]["reused"] for r in written.values()) == [False, True, True]
    assert len(list((results / "checkpoints").glob("pretrain-*.pt"))) == 1

    # A rerun skips every finished cell and leaves the files alone.
    mtimes = {p: p.stat().st_mtime_ns for p in (results / "runs" / "smoke").iterdir()}
    proc = bench("run", "--suite", "smoke", "--results", str(results), *TINY, data_dir=data_dir)
    assert proc.returncode == 0 and "3 already done, 0 to run" in proc.stdout
    assert mtimes == {p: p.stat().st_mtime_ns for p in (results / "runs" / "smoke").iterdir()}

    # A changed config re-runs (new hash); a deleted cell is the only one redone.
    (results / "runs" / "smoke" / "ctal__sentiment__synth__fold-0__seed-0.json").unlink()
    proc = bench("run", "--suite", "smoke", "--results", str(results), *TINY, data_dir=data_dir)
    assert "2 already done, 1 to run" in proc.stdout

    # Same seed, fresh results directory: identical metrics on CPU.
    again = tmp_path / "again"
    assert bench("run", "--suite", "smoke", "--results", str(again), *TINY, data_dir=data_dir).returncode == 0
    first, second = cells(results), cells(again)
    assert {k: v["metrics"] for k, v in first.items()} == {k: v["metrics"] for k, v in second.items()}


def test_a_failing_cell_is_recorded_and_the_suite_goes_on(tmp_path, data_dir):
    decl_dir = tmp_path / "decl"
    shutil.copytree(declarations.DEFAULT_DIR, decl_dir)
    # A new ablation is one TOML entry; this one breaks at training time (unknown schedule).
    (decl_dir / "broken.toml").write_text(
        '[ablation.broken_schedule]\nsummary = "raises inside the cell"\nset = { "finetune.schedule" = "step" }\n'
        '[suite.tiny]\nsummary = "t"\ntasks = ["emotion"]\nablations = ["broken_schedule"]\nseeds = [0]\n'
        'scale = "smoke"\n')
    results = tmp_path / "results"
    proc = bench("run", "--suite", "tiny", "--results", str(results), "--ablations-dir", str(decl_dir), *TINY,
                 data_dir=data_dir)
    assert proc.returncode == 1
    assert "1 of 2 cells failed" in proc.stdout and "broken_schedule__emotion" in proc.stdout
    written = cells(results, "tiny")
    assert written["ctal__emotion__synth__fold-0__seed-0.json"]["status"] == "done"
    failed = written["broken_schedule__emotion__synth__fold-0__seed-0.json"]
    assert failed["status"] == "failed" and "unknown schedule 'step'" in failed["traceback"]


def test_pretraining_losses_fall(data_dir):
    catalog.load()
    torch.set_num_threads(1)
    cfg = apply_overrides(Config(), declarations.load().scales.get("smoke").overrides)
    cfg = apply_overrides(cfg, ["data.size=tiny"])
    data = DataPipeline(data_dir, workers=1, progress=False)
    items = data.pretraining_items(cfg)[:32]
    vocab_size = data.tokenizer(cfg).get_vocab_size()
    model = build_model(cfg, 1, vocab_size)
    generator = torch.Generator().manual_seed(0)
    result = fit(model.pretraining(), batches=lambda epoch: batching.iterate(items, 16, seed=epoch),
                 steps_per_epoch=2, loss_fn=lambda m, b: pretrain_losses(m, b, cfg, vocab_size, generator),
                 schedule=Schedule(epochs=25, lr=2e-3, weight_decay=0.01, warmup=0.1, clip=1.0),
                 device=torch.device("cpu"))
    first, last = result.curve[0], result.curve[-1]
    assert last["train_mlm"] < 0.8 * first["train_mlm"]
    assert last["train_mam"] < first["train_mam"]


def test_fit_resumes_from_its_checkpoint(tmp_path):
    """An interrupted run resumed from its checkpoint ends where an uninterrupted one does."""
    torch.manual_seed(0)
    xs, ys = torch.randn(64, 4), torch.randn(64, 1)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, batch):
            return self.lin(batch.audio[:, 0, :4])

    def batches(epoch):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(64, generator=g)
        for i in range(0, 64, 16):
            idx = order[i:i + 16]
            yield batching.Batch(torch.zeros(16, 1, dtype=torch.long), torch.ones(16, 1, dtype=torch.bool),
                                 xs[idx, None, :], torch.ones(16, 1, dtype=torch.bool), ys[idx], (), ())

    loss = lambda m, b: {"mse": ((m(b) - b.targets) ** 2).mean()}  # noqa: E731
    schedule = Schedule(epochs=4, lr=0.1, weight_decay=0.0, warmup=0.1, clip=1.0)

    torch.manual_seed(1)
    straight = Tiny()
    fit(straight, batches, 4, loss, schedule, torch.device("cpu"))

    torch.manual_seed(1)
    interrupted = Tiny()
    ckpt = tmp_path / "ckpt.pt"
    steps = []

    def crash_in_third_epoch():
        steps.append(1)
        if len(steps) == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, batches, 4, loss, schedule, torch.device("cpu"), checkpoint=ckpt,
            on_step=crash_in_third_epoch)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # the last finished epoch
    resumed = Tiny()
    fit(resumed, batches, 4, loss, schedule, torch.device("cpu"), checkpoint=ckpt)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.cuda
def test_smoke_pipeline_on_gpu_with_bf16(tmp_path, data_dir):
    """The same tiny suite on CUDA (bf16 autocast inside the training loop)."""
    results = tmp_path / "results"
    proc = bench("run", "--suite", "smoke", "--results", str(results), *TINY, "--device", "cuda",
                 data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = cells(results)
    assert len(written) == 3 and all(r["status"] == "done" for r in written.values())
    assert all(r["environment"]["device"] != "cpu" for r in written.values())


@pytest.fixture(scope="module")
def tiny_data(data_dir):
    catalog.load()
    return DataPipeline(data_dir, workers=1, progress=False)


@pytest.mark.parametrize("task", ["emotion", "sentiment", "verification"])
@pytest.mark.parametrize("model", ["ctal", "text_only", "audio_only", "late_fusion", "tfn", "lmf", "mult"])
def test_every_model_runs_every_task_through_the_one_loop(tiny_data, model, task):
    from ctal_bench.train.finetune import finetune

    torch.set_num_threads(1)
    cfg = base_config(declarations.load(), "smoke", model)
    cfg = apply_overrides(cfg, ["data.size=tiny", "finetune.epochs=1", f"model.name={model}"])
    outcome = finetune(cfg, task, tiny_data.task_data(cfg, task, "0"), None, torch.device("cpu"))
    assert set(outcome.metrics["test"]) == set(TASKS.get(task).metric_names)
    assert len(outcome.predictions) > 0 and outcome.parameters > 0


def _run_until(args, data_dir, ready, sig):
    """Start `bench.py run`, wait until ``ready()`` holds, send ``sig``; returns the exit code."""
    proc = start_bench(*args, data_dir=data_dir, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_resumes_to_the_uninterrupted_results(tmp_path, data_dir, sig):
    """Killed during pre-training and again after the first cell, the reruns finish only what is
    missing and end with exactly the metrics of a run that was never interrupted."""
    args = ["run", "--suite", "smoke", *TINY, "--set", "pretrain.epochs=3"]
    reference = tmp_path / "reference"
    assert bench(*args, "--results", str(reference), data_dir=data_dir).returncode == 0

    results = tmp_path / "results"
    runs = results / "runs" / "smoke"
    partial = lambda: any((results / "checkpoints").glob(".pretrain-*.partial.pt"))  # noqa: E731
    code, stderr = _run_until([*args, "--results", str(results)], data_dir, partial, sig)
    assert not runs.exists() or not list(runs.glob("*.json"))  # stopped inside the first pre-training
    if sig == signal.SIGINT:
        assert code == 130 and "rerun the same command to resume" in stderr and "Traceback" not in stderr
    else:
        assert code == -signal.SIGKILL

    first_cell = lambda: runs.exists() and len(list(runs.glob("*.json"))) >= 1  # noqa: E731
    _run_until([*args, "--results", str(results)], data_dir, first_cell, sig)
    done = len(list(runs.glob("*.json")))
    assert 1 <= done < 3
    proc = bench(*args, "--results", str(results), data_dir=data_dir)
    assert proc.returncode == 0 and f"{done} already done, {3 - done} to run" in proc.stdout
    resumed = cells(results)
    assert {k: v["metrics"] for k, v in resumed.items()} == {k: v["metrics"] for k, v in cells(reference).items()}
    assert not list((results / "checkpoints").glob(".*.partial.pt"))  # nothing half-done is left behind


def test_ablate_runs_ctal_and_the_variants_and_prints_their_comparison(tmp_path, data_dir):
    results = tmp_path / "results"
    proc = bench("ablate", "--drop", "fusion", "orthogonality loss", "--suite", "smoke", "--tasks", "emotion",
                 "--results", str(results), *TINY, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = cells(results)
    assert sorted(written) == ["ctal__emotion__synth__fold-0__seed-0.json",
                               "no_fusion__emotion__synth__fold-0__seed-0.json",
                               "no_orthogonality_loss__emotion__synth__fold-0__seed-0.json"]
    # fine-tuning-only ablations reuse CTAL's pre-training
    assert sorted(r["pretrain"]["reused"] for r in written.values()) == [False, True, True]
    ua = {name.split("__")[0]: r["metrics"]["test"]["ua"] for name, r in written.items()}
    table = proc.stdout[proc.stdout.index("ablation no_fusion, no_orthogonality_loss"):]
    # the report's ablation table (seeds are the replicates, one here: no test, no mark)
    assert "Ablations of CTAL (smoke · synth)" in table and "emotion ua ↑" in table
    assert re.search(rf"│ ctal +│ +{ua['ctal']:.3f} +│", table), table
    for variant in ("no_fusion", "no_orthogonality_loss"):
        assert f"{ua[variant]:.3f} (Δ {ua[variant] - ua['ctal']:+.3f})" in table
    assert "tables in" not in table, "the comparison is the last thing printed, after the suite's report"
    # Again, with every cell done: the same table at once, the report left as it is.
    tables = results / "tables" / "smoke" / "synth" / "main.md"
    written_at = tables.stat().st_mtime_ns
    again = bench("ablate", "--drop", "fusion", "orthogonality loss", "--suite", "smoke", "--tasks", "emotion",
                  "--results", str(results), *TINY, data_dir=data_dir)
    assert again.returncode == 0 and "3 already done, 0 to run" in again.stdout
    assert again.stdout[again.stdout.index("ablation no_fusion, no_orthogonality_loss"):] == table
    assert tables.stat().st_mtime_ns == written_at


def test_a_sweep_value_equal_to_the_default_shares_full_ctals_result(tmp_path, data_dir):
    decl_dir = tmp_path / "decl"
    shutil.copytree(declarations.DEFAULT_DIR, decl_dir)
    (decl_dir / "tiny_sweep.toml").write_text(
        '[ablation.tiny_mask]\nsummary = "two mask ratios, one the default"\nsweep = "pretrain.mask_ratio"\n'
        'values = [0.15, 0.3]\n')
    results = tmp_path / "results"
    proc = bench("ablate", "--sweep", "tiny_mask", "--suite", "smoke", "--tasks", "emotion", "sentiment",
                 "--results", str(results), "--ablations-dir", str(decl_dir), *TINY, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = cells(results)
    default = written["tiny_mask=0.15__emotion__synth__fold-0__seed-0.json"]
    ctal = written["ctal__emotion__synth__fold-0__seed-0.json"]
    other = written["tiny_mask=0.3__emotion__synth__fold-0__seed-0.json"]
    assert default["shared_from"] == "ctal__emotion__synth__fold-0__seed-0" and "shared_from" not in other
    assert default["config_hash"] == ctal["config_hash"] != other["config_hash"]
    assert default["metrics"] == ctal["metrics"] and default["sweep_value"] == 0.15
    assert (results / "runs" / "smoke" / "tiny_mask=0.15__emotion__synth__fold-0__seed-0.preds.csv").exists()
    # the same config on another task is other work: shared only with that task's own cell
    sentiment = written["tiny_mask=0.15__sentiment__synth__fold-0__seed-0.json"]
    assert sentiment["shared_from"] == "ctal__sentiment__synth__fold-0__seed-0"
    assert set(sentiment["metrics"]["test"]) == set(written["ctal__sentiment__synth__fold-0__seed-0.json"]
                                                    ["metrics"]["test"]) and "mae" in sentiment["metrics"]["test"]


def test_the_paper_suite_runs_every_variant_and_reports_every_table(tmp_path, data_dir):
    """Every model and ablation of `paper` on every task, at the tiny size and one epoch."""
    results = tmp_path / "results"
    proc = bench("run", "--suite", "paper", "--seeds", "1", "--results", str(results), *TINY,
                 "--set", "pretrain.epochs=1", "--set", "finetune.epochs=1", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = cells(results, "paper")
    decl = declarations.load()
    variants = suite_variants(decl, decl.suites.get("paper"), None)  # 19 since the reseeded negative control
    assert len(written) == len(variants) * 3 and all(r["status"] == "done" for r in written.values())
    assert {name for name, r in written.items() if r.get("shared_from")} == {
        f"mask_ratio=0.15__{task}__synth__fold-0__seed-0.json" for task in ("emotion", "sentiment", "verification")}
    tables_dir = results / "tables" / "paper" / "synth"
    for name in ("main", "ablations", "sweep-mask_ratio"):
        assert (tables_dir / f"{name}.md").exists() and (tables_dir / f"{name}.tex").exists()
    assert (tables_dir / "main.per_example.csv").exists()
    figures = {p.name for p in (results / "figures" / "paper").iterdir()}
    assert {"det-verification.png", "sweep-mask_ratio-emotion.png", "seeds-sentiment.pdf"} <= figures


def test_a_run_on_real_data_of_the_same_suite_gets_its_own_tables(tmp_path, data_dir):
    """synth and a real-format MOSI fixture in one results folder: a table each, never their mean."""
    from fixtures import make_mmsa

    mosi = make_mmsa(tmp_path / "mosi")
    results = tmp_path / "results"
    run = ("run", "--suite", "smoke", "--tasks", "sentiment", "--results", str(results), *TINY)
    assert bench(*run, data_dir=data_dir).returncode == 0
    proc = bench(*run, "--data", f"mosi={mosi}", "--set", "data.pretrain_dataset=synth", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = cells(results)
    assert sorted(written) == [f"ctal__sentiment__{d}__fold-0__seed-0.json" for d in ("mosi", "synth")]
    for dataset in ("synth", "mosi"):
        main = (results / "tables" / "smoke" / dataset / "main.md").read_text()
        mae = written[f"ctal__sentiment__{dataset}__fold-0__seed-0.json"]["metrics"]["test"]["mae"]
        assert f"test split of {dataset}, scale smoke" in main and re.search(rf"\| ctal \| \**{mae:.3f}\** \|", main)
