"""The command line as a user meets it: exit codes and one-line messages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the command line, mostly as a child process

ROOT = Path(__file__).resolve().parent.parent


def bench(*args, cwd=ROOT, columns="250"):
    env = {**os.environ, "COLUMNS": columns}  # rich wraps tables to the terminal width
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=env)


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_lists_commands_and_options():
    proc = bench("--help")
    assert proc.returncode == 0
    for command in ("run", "ablate", "pretrain", "report", "profile", "tune", "data", "list", "import-ctal"):
        assert command in proc.stdout
    for command, option in (("run", "--results"), ("run", "--data-dir"), ("ablate", "--drop"),
                            ("pretrain", "--config"), ("report", "--results"), ("profile", "--data-dir"),
                            ("tune", "--trials")):
        assert option in bench(command, "--help").stdout


def test_list_ablations_and_suites():
    proc = bench("list", "ablations")
    assert proc.returncode == 0, proc.stderr
    assert "no_cross_modal_pretraining" in proc.stdout and "mask_ratio" in proc.stdout
    assert "Causal audio self-attention" in proc.stdout  # the summary is shown
    proc = bench("list", "suites")
    assert "smoke" in proc.stdout and "paper" in proc.stdout


def test_piped_list_never_shortens_a_name_and_json_is_for_scripts():
    """`list ablations | grep NAME` finds every name in 80 columns; descriptions wrap instead."""
    from ctal_bench import declarations

    names = list(declarations.load().ablations)
    proc = bench("list", "ablations", columns="80")
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    for name in names:
        assert any(line.startswith(f"│ {name} ") for line in proc.stdout.splitlines()), name
    for what in ("suites", "scales", "models", "tasks", "datasets"):
        assert "…" not in bench("list", what, columns="80").stdout, what
    proc = bench("list", "ablations", "--format", "json", columns="80")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [row["ablation"] for row in rows] == names
    assert next(r for r in rows if r["ablation"] == "mask_ratio")["values"] == [0.05, 0.15, 0.3, 0.5]
    models = json.loads(bench("list", "models", "--format", "json").stdout)
    assert all(isinstance(n, int) for row in models for n in row["parameters"].values())


def test_list_models_shows_parameter_counts():
    proc = bench("list", "models")
    assert proc.returncode == 0, proc.stderr
    assert "ctal" in proc.stdout and "mini" in proc.stdout and "M" in proc.stdout


def test_unknown_suite_names_closest():
    assert_user_error(bench("run", "--suite", "smok"), "unknown suite 'smok'", "smoke")


def test_unknown_config_key_is_named(tmp_path):
    proc = bench("run", "--suite", "smoke", "--set", "finetune.nosuchkey=1", "--results", str(tmp_path))
    assert_user_error(proc, "finetune.nosuchkey")
    assert not (tmp_path / "runs").exists()  # rejected before any work


def test_wrong_type_is_named(tmp_path):
    proc = bench("run", "--suite", "smoke", "--set", "finetune.epochs=many", "--results", str(tmp_path))
    assert_user_error(proc, "finetune.epochs", "expects int")


def test_out_of_range_value_is_refused_before_any_work(tmp_path):
    for override, needle in (("finetune.epochs=0", "must be at least 1"), ("finetune.lr=-1", "greater than 0")):
        proc = bench("run", "--suite", "smoke", "--set", override, "--results", str(tmp_path / "results"),
                     "--data-dir", str(tmp_path / "data"))
        assert_user_error(proc, override.split("=")[0], needle)
        assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_unknown_ablation_for_drop():
    assert_user_error(bench("ablate", "--drop", "fusoin", "--suite", "smoke"), "unknown ablation", "no_fusion")


def test_tune_refuses_bad_arguments_before_any_work(tmp_path):
    assert_user_error(bench("tune", "--model", "tfm", "--task", "emotion", "--results", str(tmp_path)),
                      "unknown model 'tfm'", "tfn")
    assert_user_error(bench("tune", "--model", "tfn", "--task", "emotion", "--trials", "0", "--results", str(tmp_path)),
                      "--trials 0")
    assert_user_error(bench("tune", "--model", "tfn", "--task", "emotion", "--set", "finetune.lr=1e-3",
                            "--results", str(tmp_path)), "finetune.lr is searched", "search_spaces.toml")
    assert not list(tmp_path.iterdir())  # no study, no tuned file


def test_malformed_declarations_via_cli(tmp_path):
    (tmp_path / "x.toml").write_text('[ablation.broken]\nsummary = "x"\nset = { "pretrain.nope" = 1 }\n')
    assert_user_error(bench("list", "ablations", "--ablations-dir", str(tmp_path)),
                      str(tmp_path / "x.toml"), "[ablation.broken]", "pretrain.nope")


def test_data_check_missing_directory(tmp_path):
    assert_user_error(bench("data", "check", str(tmp_path / "nope"), "--format", "iemocap"), "nope")


def test_bad_data_argument():
    assert_user_error(bench("run", "--suite", "smoke", "--data", "iemocap"), "expected NAME=PATH")


def test_pretrain_config_errors_are_named(tmp_path):
    config = tmp_path / "pretrain.toml"
    config.write_text("[pretrain]\nepochs = 2\nbach_size = 8\n")
    assert_user_error(bench("pretrain", "--config", str(config), "--results", str(tmp_path)), "pretrain.bach_size")
    assert_user_error(bench("pretrain", "--config", str(tmp_path / "nope.toml")), "nope.toml", "not found")
    assert_user_error(bench("pretrain", "--set", "model.name=tfn"), "'tfn' has no pre-training", "ctal")
    assert not (tmp_path / "checkpoints").exists()  # rejected before any work


def test_argparse_errors_are_one_line():
    assert_user_error(bench("run"), "--suite")
