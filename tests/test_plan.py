"""Planning a run: every cell's hash follows what shapes it, and a dry run shows the plan only."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctal_bench import catalog, declarations
from ctal_bench.experiment.plan import Request, expand, suite_variants
from ctal_bench.models import ctal
from ctal_bench.registry import DATASETS, MODELS, TASKS

ROOT = Path(__file__).resolve().parent.parent
catalog.load()


def smoke_hashes(names=("ctal", "tfn", "no_fusion"), overrides=()) -> dict[str, str]:
    decl = declarations.load()
    suite = decl.suites.get("paper")
    variants = tuple(v for v in suite_variants(decl, suite, None) if v.name in names)
    request = Request("paper", variants, suite.tasks, (0,), suite.scale, tuple(overrides))
    return {cell.key.id: cell.hash for cell in expand(decl, request)}


def test_cells_hold_the_resolved_config():
    decl = declarations.load()
    suite = decl.suites.get("smoke")
    cell = expand(decl, Request("smoke", tuple(suite_variants(decl, suite, None)), ("emotion",), (0,), "smoke"))[0]
    assert cell.config.model.d_model == ctal.PRESETS["mini"]["d_model"]  # not 0 = "take the preset"


def test_the_hash_follows_presets_and_versions_and_nothing_else(monkeypatch):
    before = smoke_hashes()
    assert smoke_hashes() == before  # stable
    # Spelling out the preset's own value changes nothing: the resolved config is the same.
    ctal_only = ("ctal", "no_fusion")
    spelled = smoke_hashes(ctal_only, [f"model.ffn_dim={ctal.PRESETS['mini']['ffn_dim']}"])
    assert spelled == smoke_hashes(ctal_only) == {k: v for k, v in before.items() if k.startswith(ctal_only)}

    monkeypatch.setitem(ctal.PRESETS, "mini", {**ctal.PRESETS["mini"], "ffn_dim": 128})
    changed = smoke_hashes()
    assert all(changed[k] != before[k] for k in before if k.startswith(("ctal", "no_fusion")))
    assert all(changed[k] == before[k] for k in before if k.startswith("tfn"))
    monkeypatch.undo()

    for registry, name, prefix in ((MODELS, "tfn", "tfn"), (TASKS, "emotion", None), (DATASETS, "synth", None)):
        owner = registry.get(name)
        cls = owner if isinstance(owner, type) else type(owner)
        monkeypatch.setattr(cls, "version", cls.version + 1)
        bumped = smoke_hashes()
        for key in before:
            touched = key.startswith(prefix) if prefix else f"__{name}__" in key
            assert (bumped[key] != before[key]) == touched, (name, key)
        monkeypatch.undo()


def bench(*args):
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.integration
def test_dry_run_shows_every_cell_and_trains_and_writes_nothing(tmp_path):
    results, data = tmp_path / "results", tmp_path / "data"
    proc = bench("run", "--suite", "paper", "--dry-run", "--results", str(results), "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert "285 cells" in proc.stdout and "no_cross_modal_pretraining" in proc.stdout  # names never cut
    proc = bench("ablate", "--drop", "fusion", "--dry-run", "--format", "json", "--results", str(results),
                 "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["variant"] for r in rows} == {"ctal", "no_fusion"} and len(rows) == 30
    assert len({(r["epochs"], r["patience"]) for r in rows}) == 1
    assert {r["status"] for r in rows} == {"to run"}
    assert all(r["pretraining"] != "-" for r in rows)  # both start from a pre-trained checkpoint
    assert not results.exists() and not data.exists()
