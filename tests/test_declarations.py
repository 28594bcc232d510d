import shutil

import pytest
import torch

from ctal_bench import catalog, declarations
from ctal_bench.config import apply_overrides
from ctal_bench.declarations import Param
from ctal_bench.errors import UserError
from ctal_bench.experiment.plan import base_config
from ctal_bench.registry import MODELS

catalog.load()


def test_shipped_declarations_load_and_resolve():
    decl = declarations.load()
    for name in ("no_pretraining", "no_cross_modal_pretraining", "no_fusion", "causal_audio",
                 "no_orthogonality_loss", "text_only_head", "audio_only_head", "mask_ratio"):
        assert name in decl.ablations
    assert {"smoke", "paper"} <= set(decl.suites)
    sweep = decl.ablations.get("mask_ratio")
    assert [v.overrides["pretrain.mask_ratio"] for v in sweep.variants()] == [0.05, 0.15, 0.3, 0.5]
    assert decl.suites.get("paper").seeds == (0, 1, 2, 3, 4)


def write(tmp_path, text):
    for shipped in declarations.DEFAULT_DIR.glob("*.toml"):
        shutil.copy(shipped, tmp_path / shipped.name)
    path = tmp_path / "extra.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, message", [
    ('[ablation.bad]\nsummary = "x"\nfoo = 1\n', r"\[ablation.bad\]: unknown key 'foo'"),
    ('[ablation.bad]\nsummary = "x"\nset = { "finetune.nosuchkey" = 1 }\n',
     r"\[ablation.bad\]: unknown config key 'finetune.nosuchkey'"),
    ('[ablation.bad]\nsummary = "x"\nset = { "finetune.epochs" = "many" }\n',
     r"\[ablation.bad\]: config key 'finetune.epochs' expects int"),
    ('[ablation.bad]\nsummary = "x"\nmodel = "nosuchmodel"\n', r"\[ablation.bad\]: unknown model 'nosuchmodel'"),
    ('[ablation.bad]\nset = {}\n', r"\[ablation.bad\]: missing required key 'summary'"),
    ('[ablation.bad]\nsummary = "x"\nsweep = "pretrain.mask_ratio"\n', r"\[ablation.bad\]: a sweep needs"),
    ('[ablation.bad]\nsummary = "x"\nsweep = "pretrain.mask_ratio"\nvalues = ["high"]\n',
     r"\[ablation.bad\]: config key 'pretrain.mask_ratio' expects float"),
    ('[suite.bad]\nsummary = "x"\ntasks = ["emotoin"]\n', r"\[suite.bad\]: unknown task 'emotoin'; did you mean emotion"),
    ('[suite.bad]\nsummary = "x"\ntasks = ["emotion"]\nablations = ["no_such"]\n', r"\[suite.bad\]: unknown ablation"),
    ('[suite.bad]\nsummary = "x"\ntasks = ["emotion"]\nseeds = 0\n', r"\[suite.bad\]: key 'seeds'"),
    ('[widget.bad]\nsummary = "x"\n', r"unknown table \[widget\]"),
    ('[model.nosuchmodel]\nsummary = "x"\n', r"\[model.nosuchmodel\]: unknown model 'nosuchmodel'"),
    ('[model.ctal]\nsummary = "x"\nset = { "finetune.lrr" = 1 }\n', r"\[model.ctal\]: unknown config key 'finetune.lrr'"),
    ('[ablation.bad\nsummary = "x"\n', "not valid TOML"),
    # The training budget is the suite's: no model, ablation or search space may give its own.
    ('[model.ctal]\nsummary = "x"\nset = { "finetune.epochs" = 50 }\n',
     r"\[model.ctal\]: sets finetune.epochs, the training budget"),
    ('[ablation.bad]\nsummary = "x"\nset = { "finetune.patience" = 3 }\n',
     r"\[ablation.bad\]: sets finetune.patience, the training budget"),
    ('[ablation.bad]\nsummary = "x"\nsweep = "finetune.epochs"\nvalues = [5, 10]\n',
     r"\[ablation.bad\]: sets finetune.epochs, the training budget"),
    ('[search.ctal2]\nsummary = "x"\n[search.ctal2.space]\n"finetune.epochs" = { low = 5, high = 50 }\n',
     r"\[search.ctal2\]"),
    ('[suite.bad]\nsummary = "x"\ntasks = ["emotion"]\nmodels = ["ctal"]\n'
     'budget_exceptions = { tfn = { "finetune.epochs" = 50 } }\n',
     r"\[suite.bad\]: budget_exceptions names 'tfn', not a model or ablation variant"),
    ('[suite.bad]\nsummary = "x"\ntasks = ["emotion"]\nmodels = ["ctal", "tfn"]\n'
     'budget_exceptions = { tfn = { "finetune.lr" = 0.1 } }\n',
     r"\[suite.bad\]: budget_exceptions.tfn expects a table of finetune.epochs and/or finetune.patience"),
])
def test_malformed_declarations_name_file_and_entry(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(UserError, match=message) as e:
        declarations.load(tmp_path)
    assert str(path) in str(e.value)


def write_search_spaces(tmp_path, text):
    """The shipped declarations with ``text`` in place of the shipped search spaces."""
    path = write(tmp_path, text)
    (tmp_path / "search_spaces.toml").unlink()
    return path


@pytest.mark.parametrize("body, message", [
    ('[search.nosuchmodel]\nsummary = "x"\nspace = { "finetune.lr" = { low = 1e-4, high = 1e-2 } }\n',
     r"\[search.nosuchmodel\]: unknown model 'nosuchmodel'"),
    ('[search.bad]\nsummary = "x"\n', r"\[search.bad\]: missing required key 'space'"),
    ('[search.tfn]\nsummary = "x"\nspace = { "finetune.lrr" = { low = 1e-4, high = 1e-2 } }\n',
     r"\[search.tfn\]: unknown config key 'finetune.lrr'"),
    ('[search.tfn]\nsummary = "x"\nspace = { "finetune.lr" = { low = 1e-2, high = 1e-4 } }\n',
     r"\[search.tfn\]: 'finetune.lr': low \(0.01\) must be below high \(0.0001\)"),
    ('[search.tfn]\nsummary = "x"\nspace = { "finetune.weight_decay" = { low = 0.0, high = 1e-2, log = true } }\n',
     r"\[search.tfn\]: 'finetune.weight_decay': a log range needs low > 0"),
    ('[search.tfn]\nsummary = "x"\nspace = { "finetune.lr" = { low = 0.0, high = 1e-2, log = true } }\n',
     r"\[search.tfn\]: config key 'finetune.lr' must be greater than 0"),
    ('[search.tfn]\nsummary = "x"\nspace = { "finetune.lr" = { low = 1e-4 } }\n',
     r"\[search.tfn\]: 'finetune.lr': a range needs both low and high"),
    ('[search.tfn]\nsummary = "x"\nspace = { "model.hidden" = { low = 8.5, high = 64 } }\n',
     r"\[search.tfn\]: config key 'model.hidden' expects int"),
    ('[search.tfn]\nsummary = "x"\nspace = { "model.hidden" = { choices = [] } }\n',
     r"\[search.tfn\]: 'model.hidden': choices must be a non-empty list"),
    ('[search.tfn]\nsummary = "x"\nspace = { "model.hidden" = { choices = [16], low = 1, high = 2 } }\n',
     r"\[search.tfn\]: 'model.hidden': give either choices or a range"),
    ('[search.tfn]\nsummary = "x"\nspace = { "model.hidden" = { low = 16, high = 64, steps = 8 } }\n',
     r"\[search.tfn\]: 'model.hidden': unknown key 'steps'"),
    ('[search.tfn]\nsummary = "x"\nspace = { "run.seed" = { choices = [0, 1] } }\n',
     r"\[search.tfn\]: 'run.seed': each trial sets this itself"),
    ('[search.tfn]\nsummary = "x"\nspace = { "model.head" = { choices = ["concat", 3] } }\n',
     r"\[search.tfn\]: config key 'model.head' expects str, got 3"),
    ('[search.tfn]\nsummary = "x"\nspace = {}\n', r"\[search.tfn\]: 'space' is empty"),
])
def test_malformed_search_spaces_name_file_entry_and_key(tmp_path, body, message):
    path = write_search_spaces(tmp_path, body)
    with pytest.raises(UserError, match=message) as e:
        declarations.load(tmp_path)
    assert str(path) in str(e.value)


def test_search_space_keys_nest_or_quote_alike(tmp_path):
    write_search_spaces(tmp_path, '[search.tfn]\nsummary = "x"\n[search.tfn.space]\n'
                                  '"finetune.lr" = { low = 1e-4, high = 1e-2, log = true }\n'
                                  'model = { hidden = { low = 16, high = 64, step = 16 }, '
                                  'dropout = { low = 0, high = 0.5 } }\n')
    params = {p.key: p for p in declarations.load(tmp_path).search_spaces.get("tfn").params}
    assert params["finetune.lr"] == Param("finetune.lr", 1e-4, 1e-2, log=True)
    assert params["model.hidden"] == Param("model.hidden", 16, 64, step=16)
    assert params["model.dropout"] == Param("model.dropout", 0.0, 0.5)
    assert isinstance(params["model.dropout"].low, float)  # a float key's range is drawn as floats


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_has_a_search_space_that_builds_it_at_every_extreme(model):
    """A value the model cannot take (an unused size field, a bad width) would fail a trial."""
    decl = declarations.load()
    for param in decl.search_spaces.get(model).params:
        for value in param.choices or (param.low, param.high):
            cfg = apply_overrides(base_config(decl, "smoke", model), {param.key: value, "model.name": model})
            with torch.device("meta"):
                MODELS.get(model)(cfg.model, 4, cfg.data.vocab_size)


def test_duplicate_entry_names_both_files(tmp_path):
    write(tmp_path, '[suite.smoke]\nsummary = "again"\ntasks = ["emotion"]\n')
    with pytest.raises(UserError, match=r"\[suite.smoke\] is declared twice"):
        declarations.load(tmp_path)


def test_extends_one_level(tmp_path):
    write(tmp_path, '[ablation.base0]\nsummary = "b"\nset = { "model.head" = "concat" }\n'
                    '[ablation.child]\nsummary = "c"\nextends = "base0"\nset = { "model.audio_causal" = true }\n'
                    '[ablation.grandchild]\nsummary = "g"\nextends = "child"\n')
    with pytest.raises(UserError, match="one level only"):
        declarations.load(tmp_path)
    write(tmp_path, '[ablation.base0]\nsummary = "b"\nset = { "model.head" = "concat" }\n'
                    '[ablation.child]\nsummary = "c"\nextends = "base0"\nset = { "model.audio_causal" = true }\n')
    child = declarations.load(tmp_path).ablations.get("child")
    assert child.overrides == {"model.head": "concat", "model.audio_causal": True}


def test_a_scale_extends_another_and_overrides_its_keys(tmp_path):
    write(tmp_path, '[scale.base]\nsummary = "b"\nset = { "finetune.epochs" = 3, "model.size" = "mini" }\n'
                    '[scale.longer]\nsummary = "l"\nextends = "base"\nset = { "finetune.epochs" = 9 }\n')
    longer = declarations.load(tmp_path).scales.get("longer")
    assert longer.overrides == {"finetune.epochs": 9, "model.size": "mini"}
    write(tmp_path, '[scale.orphan]\nsummary = "o"\nextends = "nosuch"\n')
    with pytest.raises(UserError, match=r"\[scale.orphan\]: extends unknown scale 'nosuch'"):
        declarations.load(tmp_path)


def test_model_settings_apply_after_the_scale_and_before_overrides():
    from ctal_bench.declarations import Variant
    from ctal_bench.experiment.plan import Request, cell_config

    decl = declarations.load()
    suite = decl.suites.get("paper")
    request = Request("paper", (), ("emotion",), (0,), "smoke", ("finetune.epochs=3",))
    tfn = cell_config(decl, suite, request, Variant("tfn", "tfn"), "emotion", 0)
    ctal = cell_config(decl, suite, request, Variant("ctal", "ctal"), "emotion", 0)
    late_fusion = cell_config(decl, suite, request, Variant("late_fusion", "late_fusion"), "emotion", 0)
    assert late_fusion.finetune.lr == 2e-3 and late_fusion.finetune.batch_size == 64  # its own entry
    assert tfn.finetune.weight_decay == 0.0  # tfn's own entry
    assert ctal.finetune.lr == 1e-3 and ctal.finetune.weight_decay == 0.01  # scale, default
    assert tfn.finetune.epochs == ctal.finetune.epochs == 3  # --set last
    assert tfn.model.size == ctal.model.size == "mini"  # sizes come from the scale
    assert tfn.finetune.epochs == ctal.finetune.epochs == 3  # --set wins


def test_a_scales_ctal_switch_reaches_ctal_only(tmp_path):
    """A baseline has no such part and would reject the value, so the scale's value skips it."""
    from ctal_bench.declarations import Variant
    from ctal_bench.experiment.plan import Request, cell_config

    write(tmp_path, '[scale.switched]\nsummary = "x"\nextends = "smoke"\n'
                    'set = { "model.orthogonality_weight" = 0.03 }\n')
    decl = declarations.load(tmp_path)
    suite = decl.suites.get("paper")
    request = Request("paper", (), ("emotion",), (0,), "switched")
    tfn = cell_config(decl, suite, request, Variant("tfn", "tfn"), "emotion", 0)
    ctal = cell_config(decl, suite, request, Variant("ctal", "ctal"), "emotion", 0)
    assert ctal.model.orthogonality_weight == 0.03 and tfn.model.orthogonality_weight == 1.0


def test_every_cell_of_a_shipped_suite_has_the_same_budget():
    from ctal_bench.experiment.plan import Request, cell_config, suite_variants

    decl = declarations.load()
    for name in decl.suites:
        suite = decl.suites.get(name)
        request = Request(name, tuple(suite_variants(decl, suite, None)), suite.tasks, suite.seeds, suite.scale)
        budgets = {(cfg.finetune.epochs, cfg.finetune.patience)
                   for variant in request.variants for task in suite.tasks
                   for cfg in [cell_config(decl, suite, request, variant, task, 0)]}
        assert len(budgets) == 1, (name, budgets)


def test_a_declared_budget_exception_reaches_only_its_variant(tmp_path):
    from ctal_bench.declarations import Variant
    from ctal_bench.experiment.plan import Request, cell_config

    write(tmp_path, '[suite.uneven]\nsummary = "x"\ntasks = ["emotion"]\nmodels = ["ctal", "tfn"]\nscale = "smoke"\n'
                    'budget_exceptions = { tfn = { "finetune.epochs" = 99 } }\n')
    decl = declarations.load(tmp_path)
    suite = decl.suites.get("uneven")
    request = Request("uneven", (Variant("ctal", "ctal"), Variant("tfn", "tfn")), ("emotion",), (0,), "smoke")
    epochs = {v.name: cell_config(decl, suite, request, v, "emotion", 0).finetune.epochs for v in request.variants}
    assert epochs["tfn"] == 99 and epochs["ctal"] == decl.scales.get("smoke").overrides["finetune.epochs"]
