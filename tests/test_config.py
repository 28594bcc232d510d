import subprocess
import sys

import pytest

from ctal_bench.config import Config, apply_overrides, config_hash, from_toml, parse_override
from ctal_bench.errors import UserError

HASH_SNIPPET = (
    "from ctal_bench.config import Config, apply_overrides, config_hash;"
    "print(config_hash(apply_overrides(Config(), ['finetune.lr=3e-5', 'model.head=concat'])))"
)


def test_hash_is_stable_across_processes():
    """Same config, same hash, in fresh interpreters with different hash seeds."""
    hashes = {
        subprocess.run([sys.executable, "-c", HASH_SNIPPET], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout.strip()
        for seed in (1, 2)
    }
    here = config_hash(apply_overrides(Config(), ["finetune.lr=3e-5", "model.head=concat"]))
    assert hashes == {here}


def test_hash_changes_with_any_value():
    base = Config()
    assert config_hash(base) == config_hash(Config())
    assert config_hash(apply_overrides(base, ["pretrain.mask_ratio=0.3"])) != config_hash(base)
    assert config_hash(apply_overrides(base, ["data.features.n_mels=40"])) != config_hash(base)


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(Config(), ["finetune.lr=3e-5", "model.head=concat", "finetune.epochs=3",
                                     "model.audio_causal=true", "data.features.hop_ms=20"])
    assert cfg.finetune.lr == 3e-5 and cfg.finetune.epochs == 3
    assert cfg.model.head == "concat" and cfg.model.audio_causal is True
    assert cfg.data.features.hop_ms == 20.0 and isinstance(cfg.data.features.hop_ms, float)
    assert Config().finetune.lr == 5e-5  # frozen defaults untouched


@pytest.mark.parametrize("override, message", [
    ("finetune.nosuchkey=1", "unknown config key 'finetune.nosuchkey'"),
    ("nosection.lr=1", "unknown config key 'nosection'"),
    ("finetune.epochs=abc", "'finetune.epochs' expects int"),
    ("finetune.epochs=1.5", "'finetune.epochs' expects int"),
    ("model.audio_causal=1", "'model.audio_causal' expects bool"),
    ("finetune=3", "'finetune' is a section"),
    ("finetune.lr", "expected KEY=VALUE"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(Config(), [override])


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError) as e:
        apply_overrides(Config(), ["finetune.bach_size=8"])
    assert "finetune.batch_size" in str(e.value)


def test_toml_loading(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[pretrain]\nmask_ratio = 0.3\n[data.features]\nn_mels = 40\n")
    cfg = from_toml(path)
    assert cfg.pretrain.mask_ratio == 0.3 and cfg.data.features.n_mels == 40
    path.write_text("[pretrain]\nmask_ratio = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        from_toml(path)


def test_parse_override_reads_toml_values():
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("a=word") == {"a": "word"}


@pytest.mark.parametrize("override, message", [
    ("finetune.epochs=0", "'finetune.epochs' must be at least 1, got 0"),
    ("finetune.lr=-1", "'finetune.lr' must be greater than 0, got -1.0"),
    ("finetune.lr=0", "'finetune.lr' must be greater than 0"),
    ("pretrain.mask_ratio=1.5", "'pretrain.mask_ratio' must be in [0, 1], got 1.5"),
    ("finetune.patience=-2", "'finetune.patience' must be at least 0"),
])
def test_out_of_range_values_are_refused_with_the_key(override, message):
    with pytest.raises(UserError) as e:
        apply_overrides(Config(), [override])
    assert message in str(e.value)


def test_every_default_is_in_range():
    from ctal_bench.config import RANGES, to_dict

    flat = {f"{section}.{key}": value for section, values in to_dict(Config()).items()
            for key, value in values.items() if not isinstance(value, dict)}
    assert set(RANGES) <= set(flat)
    apply_overrides(Config(), {key: flat[key] for key in RANGES})  # raises if a default is out of range
