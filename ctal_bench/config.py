"""Typed configuration: frozen dataclasses hold the schema and the only defaults.

TOML tables and ``section.key=value`` overrides merge into it; an unknown key or a value of
the wrong type is a UserError naming the key and what was expected. ``config_hash`` is a
stable digest of the resolved config (same config, same hash, on any machine).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctal_bench.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ctal"  # a registered model
    size: str = "mini"  # a named preset of that model; explicit fields below override it
    d_model: int = 0  # 0 = take from the preset
    n_heads: int = 0
    text_layers: int = 0
    audio_layers: int = 0
    ffn_dim: int = 0
    hidden: int = 0  # baselines: per-modality encoder width
    rank: int = 0  # lmf: fusion rank
    dropout: float = 0.1
    # On attention probabilities, in CTAL and the transformer baselines (RoBERTa and MulT: 0.1).
    # Non-zero forces the materialised-matrix attention path on CPU, which costs a quarter of a
    # mini CTAL step (measured); CPU scales set 0.
    attention_dropout: float = 0.1
    max_text_len: int = 128
    max_audio_frames: int = 3000
    audio_causal: bool = False  # True reproduces the released code's causal audio self-attention
    head: str = "fusion"  # fusion | concat | text | audio
    # Weight of the fusion head's orthogonality loss (the paper: 1; 0 = off). Its gradient
    # scales as 1/|pooled vector| ~ 1/sqrt(d_model), so small models need a smaller weight.
    orthogonality_weight: float = 1.0
    released_cosine: bool = False  # True reproduces the released code's double audio-norm division


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    deltas: bool = True  # 80 log-mel + 80 deltas = 160-d
    normalise: bool = True  # per-utterance mean/variance


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synth"
    size: str = "default"  # synth only: tiny | small | default | large
    fold: str = ""  # "" = every fold of the task
    pretrain_dataset: str = ""  # "" = the task's dataset when it has a pre-training corpus
    vocab_size: int = 1000  # 30,000 at paper scale
    max_audio_frames: int = 3000  # longer utterances are truncated (before stacking), and counted
    # Consecutive feature frames concatenated into one model frame: at 2, models read half as many
    # frames, each 2 x 160-d (the information stays; sequence costs halve). Masking spans and
    # model.max_audio_frames count model frames.
    frame_stack: int = 1
    features: FeatureConfig = field(default_factory=FeatureConfig)


@dataclass(frozen=True)
class PretrainConfig:
    enabled: bool = True
    # A checkpoint written by `bench.py import-ctal`: CTAL fine-tunes from it instead of being
    # pre-trained here, and every model reads text with the tokenizer saved beside it.
    init: str = ""
    cross_modal: bool = True  # False: text MLM alone, audio MAM without cross-attention
    mlm_prob: float = 0.15
    mask_ratio: float = 0.15
    span_min: int = 20
    span_max: int = 50
    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.07  # fraction of steps
    clip: float = 1.0


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 20
    patience: int = 5  # epochs without dev improvement before stopping
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.07
    schedule: str = "linear"  # linear | cosine
    clip: float = 1.0


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # 0 = torch default
    workers: int = 2  # feature-extraction processes


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Values a key may take, checked wherever a config is built (TOML, --set, declarations), so a bad
# value is one line before any work, not a failure in every cell: (low, high, low inclusive).
_AT_LEAST_1, _POSITIVE, _NON_NEGATIVE, _FRACTION = (1, None, True), (0, None, False), (0, None, True), (0, 1, True)
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "finetune.epochs": _AT_LEAST_1, "finetune.batch_size": _AT_LEAST_1, "finetune.lr": _POSITIVE,
    "finetune.patience": _NON_NEGATIVE, "finetune.weight_decay": _NON_NEGATIVE, "finetune.clip": _NON_NEGATIVE,
    "finetune.warmup": _FRACTION,
    "pretrain.epochs": _AT_LEAST_1, "pretrain.batch_size": _AT_LEAST_1, "pretrain.lr": _POSITIVE,
    "pretrain.weight_decay": _NON_NEGATIVE, "pretrain.clip": _NON_NEGATIVE, "pretrain.warmup": _FRACTION,
    "pretrain.mlm_prob": _FRACTION, "pretrain.mask_ratio": _FRACTION, "pretrain.span_min": _AT_LEAST_1,
    "pretrain.span_max": _AT_LEAST_1, "run.threads": _NON_NEGATIVE, "run.workers": _AT_LEAST_1,
}


def _check_range(key: str, value: Any) -> None:
    if key not in RANGES:
        return
    low, high, inclusive = RANGES[key]
    below = value < low if inclusive else value <= low
    if below or (high is not None and value > high):
        expected = (f"in [{low}, {high}]" if high is not None else
                    f"at least {low}" if inclusive else f"greater than {low}")
        raise UserError(f"config key {key!r} must be {expected}, got {value!r}")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
            try:
                return _coerce(key, value, arm)
            except UserError:
                pass
    raise UserError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")


def merge(obj, updates: dict[str, Any], prefix: str = ""):
    """A copy of the dataclass ``obj`` with the nested mapping ``updates`` applied."""
    types_ = _field_types(type(obj))
    changes = {}
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            valid = ", ".join(f"{prefix}{k}" for k in types_)
            raise UserError(f"unknown config key {dotted!r}; valid keys: {valid}")
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"config key {dotted!r} is a section; expected a table of keys")
            changes[key] = merge(getattr(obj, key), value, prefix=f"{dotted}.")
        else:
            changes[key] = _coerce(dotted, value, tp)
            _check_range(dotted, changes[key])
    return dataclasses.replace(obj, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """``finetune.lr=3e-5`` -> ``{"finetune": {"lr": 3e-5}}``; the value is read as TOML."""
    if "=" not in text:
        raise UserError(f"override {text!r}: expected KEY=VALUE, e.g. finetune.lr=3e-5")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: model.head=concat
    nested: dict[str, Any] = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def dotted_to_nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply ``key=value`` strings or a ``{dotted.key: value}`` mapping, in order."""
    if isinstance(overrides, dict):
        return merge(cfg, dotted_to_nested(overrides))
    for text in overrides:
        cfg = merge(cfg, parse_override(text))
    return cfg


def key_type(key: str) -> Any:
    """The annotated type of a dotted config key: ``finetune.lr`` -> float."""
    cls: Any = Config
    for part in key.split("."):
        types_ = _field_types(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in types_:
            raise UserError(f"unknown config key {key!r}")
        cls = types_[part]
    if dataclasses.is_dataclass(cls):
        raise UserError(f"config key {key!r} is a section, not a value")
    return cls


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None


def from_toml(path: Path, base: Config | None = None) -> Config:
    return merge(base or Config(), load_toml(path))


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg) -> str:
    """Stable digest of a config (or a JSON-ready dict): canonical JSON (sorted keys, repr-exact
    floats) -> sha256, 16 hex."""
    text = json.dumps(cfg if isinstance(cfg, dict) else to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
