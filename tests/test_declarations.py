import shutil

import pytest

from ctal_bench import declarations
from ctal_bench.errors import UserError


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
])
def test_malformed_declarations_name_file_and_entry(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(UserError, match=message) as e:
        declarations.load(tmp_path)
    assert str(path) in str(e.value)


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
    from ctal_bench.runner import Request, cell_config

    decl = declarations.load()
    suite = decl.suites.get("paper")
    request = Request("paper", (), ("emotion",), (0,), "smoke", ("finetune.epochs=3",))
    tfn = cell_config(decl, suite, request, Variant("tfn", "tfn"), "emotion", 0)
    ctal = cell_config(decl, suite, request, Variant("ctal", "ctal"), "emotion", 0)
    assert tfn.finetune.patience == 8 and tfn.finetune.weight_decay == 0.0  # tfn's own entry
    assert ctal.finetune.patience == 10 and ctal.finetune.weight_decay == 0.01  # scale, default
    assert tfn.model.size == ctal.model.size == "mini"  # sizes come from the scale
    # the scale's CTAL switch reaches CTAL only (a baseline has no such part and would reject it)
    assert ctal.model.orthogonality_weight == 0.03 and tfn.model.orthogonality_weight == 1.0
    assert tfn.finetune.epochs == ctal.finetune.epochs == 3  # --set wins
