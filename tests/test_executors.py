"""Executors: worker processes and a Ray cluster give the in-process results; a dead worker
leaves its cells for the rerun."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from processes import TINY_SMOKE, start_bench

from ctal_bench import cli, declarations

pytestmark = pytest.mark.integration  # worker pools, signals and Ray

TINY = TINY_SMOKE


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """The smoke suite run in this process, one cell after another."""
    results = tmp_path_factory.mktemp("reference")
    assert cli.main(["run", *TINY, "--results", str(results), "--data-dir", str(data_dir)]) == 0
    return metrics(results)


def metrics(results: Path, suite: str = "smoke") -> dict:
    return {path.name: json.loads(path.read_text()).get("metrics")
            for path in sorted((results / "runs" / suite).glob("*.json"))}


def test_worker_processes_give_the_in_process_results_and_share_pretraining(tmp_path, data_dir, reference):
    decl_dir = tmp_path / "decl"
    shutil.copytree(declarations.DEFAULT_DIR, decl_dir)
    (decl_dir / "broken.toml").write_text(  # one variant that raises inside its cell
        '[ablation.broken_schedule]\nsummary = "raises inside the cell"\nset = { "finetune.schedule" = "step" }\n')
    results = tmp_path / "results"
    proc = start_bench("ablate", "--drop", "broken_schedule", "no_fusion", *TINY, "--jobs", "2",
                       "--results", str(results), "--ablations-dir", str(decl_dir), data_dir=data_dir)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-2000:]
    assert "3 of 9 cells failed" in stdout and "broken_schedule__emotion" in stdout
    written = metrics(results)
    assert {name: written[name] for name in reference} == reference
    assert all(written[f"no_fusion__{task}__synth__fold-0__seed-0.json"] for task in ("emotion", "sentiment",
                                                                                     "verification"))
    failed = json.loads((results / "runs" / "smoke" / "broken_schedule__emotion__synth__fold-0__seed-0.json").read_text())
    assert failed["status"] == "failed" and "unknown schedule 'step'" in failed["traceback"]
    assert len(list((results / "checkpoints").glob("pretrain-*.pt"))) == 1  # one pre-training for all 9 cells


def _is_worker(pid: int) -> bool:
    """A live pool worker (a dead one's command line reads empty)."""
    try:
        return "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False


def _workers(pid: int) -> list[int]:
    """The pool's worker processes among ``pid``'s children (not its resource tracker)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in children if _is_worker(int(child))]


def test_a_killed_worker_leaves_its_cells_unfinished_and_a_rerun_finishes_them(tmp_path, data_dir, reference):
    results = tmp_path / "results"
    args = ["run", *TINY, "--jobs", "2", "--results", str(results)]
    proc = start_bench(*args, data_dir=data_dir)
    deadline = time.monotonic() + 120
    while not (workers := _workers(proc.pid)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers, "no worker process appeared"
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    assert "unfinished" in stdout and "Traceback" not in stderr
    finished = metrics(results) if (results / "runs").exists() else {}
    assert len(finished) < 3 and all(finished.values())  # nothing half-written, nothing recorded as failed

    rerun = start_bench(*args, data_dir=data_dir)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-2000:]
    assert f"{len(finished)} already done, {3 - len(finished)} to run" in stdout
    assert metrics(results) == reference


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopping_the_driver_stops_its_workers(tmp_path, data_dir, sig):
    proc = start_bench("run", *TINY, "--jobs", "2", "--results", str(tmp_path / "results"), data_dir=data_dir)
    deadline = time.monotonic() + 120
    while not (workers := _workers(proc.pid)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers, "no worker process appeared"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    if sig == signal.SIGINT:
        assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 30
    while any(map(_is_worker, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_is_worker, workers))


def test_a_ray_cluster_gives_the_local_results(tmp_path, data_dir, reference):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tmp_path / "results"
        code = cli.main(["run", *TINY, "--executor", "ray", "--results", str(results), "--data-dir", str(data_dir)])
        assert code == 0
        assert metrics(results) == reference
        assert len(list((results / "checkpoints").glob("pretrain-*.pt"))) == 1
    finally:
        ray.shutdown()


def test_executor_options_are_checked(capsys):
    assert cli.main(["run", "--suite", "smoke", "--jobs", "0"]) == 2
    assert "--jobs 0: expected at least 1" in capsys.readouterr().err
    assert cli.main(["run", "--suite", "smoke", "--jobs", "many"]) == 2
    assert "--jobs many: expected a number of worker processes or auto" in capsys.readouterr().err
    assert cli.main(["run", "--suite", "smoke", "--address", "auto"]) == 2
    assert "--address is for --executor ray" in capsys.readouterr().err


def test_jobs_auto_uses_a_worker_per_core_only_for_larger_cpu_runs(monkeypatch):
    from argparse import Namespace

    from ctal_bench.cli.common import POOL_MIN_CELLS, executor_from_args
    from ctal_bench.experiment.executors import InProcess, LocalPool

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    auto = executor_from_args(Namespace(executor="local", jobs="auto", address=None, device="cpu"))
    assert isinstance(auto(POOL_MIN_CELLS - 1), InProcess)
    pool = auto(POOL_MIN_CELLS)
    assert isinstance(pool, LocalPool) and pool.jobs == 4 and pool.threads == 1
    on_gpu = executor_from_args(Namespace(executor="local", jobs="auto", address=None, device="cuda"))
    assert isinstance(on_gpu(1000), InProcess)
    fixed = executor_from_args(Namespace(executor="local", jobs="2", address=None, device=None))
    assert fixed(1).jobs == 2 and fixed(1).threads == 2
