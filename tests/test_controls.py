"""Controls: the table marks exactly the differences planted in known records."""
import numpy as np
import pytest

from ctal_bench import catalog, declarations
from ctal_bench.analysis import controls, tables
from ctal_bench.declarations import Control
from ctal_bench.results import frame

catalog.load()


def cell(variant, task, seed, metrics, subsets=None):
    return {"status": "done", "config_hash": "h", "model": variant, "ablation": "",
            "metrics": {"dev": metrics, "test": metrics, "test_subsets": subsets or {}},
            "cell": {"suite": "paper", "variant": variant, "task": task, "dataset": "synth", "fold": "0",
                     "seed": seed}}


def known_cells(seeds=5):
    """Emotion UA: fusion 0.80, text 0.55, audio 0.45 (each + seed noise 0.01); sentiment MAE:
    ctal 0.60, no_fusion 0.60 (no planted difference), reseeded = ctal's distribution; on the
    transfer subset ctal's MAE is 0.5 lower than no_pretraining's."""
    rng = np.random.default_rng(0)
    emotion = {"ctal": 0.80, "text_only": 0.55, "audio_only": 0.45, "reseeded": 0.80}
    sentiment = {"ctal": 0.60, "no_fusion": 0.60, "no_pretraining": 0.70, "reseeded": 0.60}
    transfer = {"ctal": 0.60, "no_pretraining": 1.10, "no_fusion": 0.60, "reseeded": 0.60}
    records = []
    for seed in range(seeds):
        for variant, ua in emotion.items():
            records.append(cell(variant, "emotion", seed, {"ua": ua + rng.normal(0, 0.01)}))
        for variant, mae in sentiment.items():
            records.append(cell(variant, "sentiment", seed, {"mae": mae + rng.normal(0, 0.01)},
                                {"transfer": {"mae": transfer[variant] + rng.normal(0, 0.01)}}))
    return frame(records)


DECLARED = [
    Control("fusion", "", None, "emotion", "ua", ("ctal",), ("text_only", "audio_only")),
    Control("wrong_way", "", None, "emotion", "ua", ("audio_only",), ("text_only",)),
    Control("no_effect", "", None, "sentiment", "mae", ("ctal",), ("no_fusion",)),
    Control("transfer", "", None, "sentiment", "mae", ("ctal",), ("no_pretraining",), subset="transfer"),
    Control("negative", "", None, "emotion", "ua", ("reseeded",), ("ctal",), expect="none"),
]


def test_the_controls_table_marks_exactly_the_planted_differences():
    results = controls.evaluate(DECLARED, known_cells()).set_index(["control", "a", "b"])
    outcome = results["outcome"].to_dict()
    assert outcome == {("fusion", "ctal", "text_only"): "detected", ("fusion", "ctal", "audio_only"): "detected",
                       ("wrong_way", "audio_only", "text_only"): "wrong direction",
                       ("no_effect", "ctal", "no_fusion"): "not detected",
                       ("transfer", "ctal", "no_pretraining"): "detected",
                       ("negative", "reseeded", "ctal"): "not detected"}
    # Differences point the better way (lower MAE is better) and their intervals hold the truth.
    transfer = results.loc[("transfer", "ctal", "no_pretraining")]
    assert transfer["difference"] == pytest.approx(0.5, abs=0.02)
    assert transfer["ci_low"] < 0.5 < transfer["ci_high"]
    assert results["as_planted"].to_dict()[("wrong_way", "audio_only", "text_only")] is False
    assert results.loc[("negative", "reseeded", "ctal"), "as_planted"]
    # Holm over the six comparisons: adjusted p >= raw p, and the family is all of them.
    assert (results["p_holm"] >= results["p"] - 1e-12).all()


def test_controls_need_their_variants_and_enough_seeds():
    cells = known_cells(seeds=2)
    assert [c.name for c in controls.testable(DECLARED, cells)] == ["fusion", "wrong_way", "no_effect", "transfer",
                                                                    "negative"]
    assert controls.testable(DECLARED, cells[cells["variant"] != "reseeded"])[-1].name == "transfer"
    results = controls.evaluate(DECLARED, cells)
    assert set(results["outcome"]) == {"untested (n=2)"}


def test_the_shipped_controls_resolve_and_render():
    decl = declarations.load()
    shipped = [decl.controls.get(name) for name in decl.controls]
    assert any(c.expect == "none" for c in shipped) and any(c.subset == "transfer" for c in shipped)
    results = controls.evaluate(DECLARED, known_cells())
    table = controls.table(results, "Controls")
    assert "wrong direction (!)" in tables.to_markdown(table)
    assert r"\begin{table" in tables.to_latex(table)
