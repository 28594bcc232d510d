"""Ablations, suites and scales declared as TOML tables in ctal_bench/ablations/*.toml.

Any file may hold any of ``[ablation.NAME]``, ``[suite.NAME]``, ``[scale.NAME]``,
``[model.NAME]`` (a registered model's own training settings, e.g. a baseline's published
learning rate), ``[search.NAME]`` (a registered model's tuning search space) and
``[control.NAME]`` (an effect planted in the data that a suite should, or should not, detect). Every entry
is validated on load: an unknown key, an unknown model, task or dataset, or an override of a
config key that does not exist is a UserError naming the file and the entry. Nothing is skipped
silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctal_bench import catalog
from ctal_bench.config import Config, apply_overrides, key_type, load_toml
from ctal_bench.errors import UserError
from ctal_bench.registry import DATASETS, MODELS, TASKS, Registry

DEFAULT_DIR = Path(__file__).resolve().parent / "ablations"  # shipped as package data


@dataclass(frozen=True)
class Variant:
    """One configuration to run: a model, or CTAL changed by an ablation (or a sweep value)."""

    name: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config keys
    ablation: str = ""  # the declaring ablation, "" for a plain model
    sweep_value: Any = None  # the swept key's value, for a sweep's variants
    # Added to each cell's seed: the cell of seed i runs with seed i + offset, and is still paired
    # with the other variants' seed i (the negative control: the same model on another seed list).
    seed_offset: int = 0


@dataclass(frozen=True)
class Ablation:
    name: str
    summary: str
    source: Path
    version: int = 1
    model: str = "ctal"
    drop: str = ""  # what it takes away, for tables ("fusion", "pretraining", ...)
    overrides: dict[str, Any] = field(default_factory=dict)
    sweep: str = ""  # a config key swept over ``values``
    values: tuple = ()
    seed_offset: int = 0

    def variants(self) -> list[Variant]:
        if self.sweep:
            return [Variant(f"{self.name}={v}", self.model, {**self.overrides, self.sweep: v}, self.name, v,
                            self.seed_offset) for v in self.values]
        return [Variant(self.name, self.model, dict(self.overrides), self.name, seed_offset=self.seed_offset)]


@dataclass(frozen=True)
class Settings:
    """Named config overrides: a scale (sizes models, data and training together) or a
    model's own training settings."""

    name: str
    summary: str
    source: Path
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    summary: str
    source: Path
    version: int = 1
    models: tuple[str, ...] = ("ctal",)
    ablations: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("emotion", "sentiment", "verification")
    datasets: dict[str, str] = field(default_factory=dict)  # task -> dataset; default synth
    seeds: tuple[int, ...] = (0,)
    scale: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    # variant -> budget keys it trains with instead of the suite's: declared, and named in captions
    budget_exceptions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dataset_for(self, task: str) -> str:
        return self.datasets.get(task, "synth")


@dataclass(frozen=True)
class Param:
    """One searched config key: a range ``low``..``high`` (integers for an int key; ``log`` or
    ``step`` optional), or a list of ``choices``."""

    key: str
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple = ()


@dataclass(frozen=True)
class SearchSpace:
    """A model's tuning search space: the config keys a tuning trial draws."""

    name: str  # the model
    summary: str
    source: Path
    params: tuple[Param, ...]


@dataclass(frozen=True)
class Control:
    """A planted effect as a family of paired comparisons: each of ``better`` against each of
    ``worse`` on one task's ``metric`` (over ``subset`` of the test set, "" = all of it), on the
    dataset it is planted in. ``expect`` "better": the first should win; "none": no difference
    (a negative control)."""

    name: str
    summary: str
    source: Path
    task: str
    metric: str
    better: tuple[str, ...]
    worse: tuple[str, ...]
    subset: str = ""
    expect: str = "better"
    dataset: str = "synth"

    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.better for b in self.worse if a != b]


EXPECTATIONS = ("better", "none")


@dataclass(frozen=True)
class Declarations:
    ablations: Registry
    suites: Registry
    scales: Registry
    models: Registry  # Settings by model name; a model without an entry uses the defaults
    search_spaces: Registry  # SearchSpace by model name
    controls: Registry  # Control by name


_KEYS = {
    "ablation": {"summary", "version", "model", "drop", "set", "sweep", "values", "extends", "seed_offset"},
    "suite": {"summary", "version", "models", "ablations", "tasks", "datasets", "seeds", "scale", "set",
              "budget_exceptions"},
    "scale": {"summary", "set", "extends"},
    "model": {"summary", "set"},
    "search": {"summary", "space"},
    "control": {"summary", "task", "metric", "subset", "better", "worse", "expect", "dataset"},
}
_REQUIRED = {"ablation": {"summary"}, "suite": {"summary", "tasks"}, "scale": {"summary"}, "model": {"summary"},
             "search": {"summary", "space"}, "control": {"summary", "task", "metric", "better", "worse"}}
# The training budget: every model and ablation in a suite fine-tunes with the same maximum epochs
# and early-stopping rule, so only a scale, a suite (for all its variants alike, or as a declared
# exception) or --set may give them; a model's settings, an ablation or a search space may not.
BUDGET_KEYS = ("finetune.epochs", "finetune.patience")
# The coordinates every tuning trial sets itself, so a search space cannot draw them.
_NOT_SEARCHABLE = ("model.name", "data.dataset", "data.fold", "run.seed")
_RANGE_KEYS = {"low", "high", "log", "step"}


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"pretrain": {"mask_ratio": 0.3}}`` -> ``{"pretrain.mask_ratio": 0.3}``."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _Entry:
    """Validation helpers that put the file and entry in every message."""

    def __init__(self, kind: str, name: str, body: Any, source: Path):
        self.kind, self.name, self.source = kind, name, source
        if not isinstance(body, dict):
            self.fail("expected a table of keys")
        unknown = sorted(set(body) - _KEYS[kind])
        if unknown:
            self.fail(f"unknown key {unknown[0]!r}; expected one of {', '.join(sorted(_KEYS[kind]))}")
        missing = sorted(_REQUIRED[kind] - set(body))
        if missing:
            self.fail(f"missing required key {missing[0]!r}")
        self.body = body

    def fail(self, message: str):
        raise UserError(f"{self.source}: [{self.kind}.{self.name}]: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.body:
            return default
        value = self.body[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.fail(f"key {key!r} expects {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        return value

    def names(self, key: str, registry: Registry, default: tuple) -> tuple[str, ...]:
        values = self.get(key, list, list(default))
        for value in values:
            if value not in registry:
                self.fail(registry.unknown_message(value))
        return tuple(values)

    def overrides(self, table: dict[str, Any], budget: bool = True) -> dict[str, Any]:
        """Validated dotted overrides; ``budget=False`` refuses the training budget's keys."""
        flat = flatten(table)
        try:
            apply_overrides(Config(), flat)
        except UserError as e:
            self.fail(str(e))
        if not budget:
            self.refuse_budget(flat)
        return flat

    def refuse_budget(self, keys) -> None:
        given = [k for k in BUDGET_KEYS if k in keys]
        if given:
            self.fail(f"sets {', '.join(given)}, the training budget, which every model in a suite shares: "
                      "set it in the scale or the suite (or, for one variant, in the suite's budget_exceptions)")


def load(directory: Path | None = None) -> Declarations:
    """Read and validate every ``*.toml`` in ``directory`` (default: the shipped ctal_bench/ablations/)."""
    directory = Path(directory or DEFAULT_DIR)
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise UserError(f"{directory}: no declaration files (*.toml) found")
    catalog.load()
    raw: dict[str, dict[str, _Entry]] = {kind: {} for kind in _KEYS}
    for path in files:
        for kind, entries in load_toml(path).items():
            if kind not in _KEYS:
                raise UserError(f"{path}: unknown table [{kind}]; expected {', '.join(_KEYS)}")
            if not isinstance(entries, dict):
                raise UserError(f"{path}: [{kind}] must hold named entries like [{kind}.NAME]")
            for name, body in entries.items():
                if name in raw[kind]:
                    raise UserError(f"{path}: [{kind}.{name}] is declared twice "
                                    f"(also in {raw[kind][name].source})")
                raw[kind][name] = _Entry(kind, name, body, path)

    scales = Registry("scale")
    for name, e in raw["scale"].items():
        e = _extended(e, raw["scale"])
        scales.add(name, Settings(name, e.get("summary", str), e.source, e.overrides(e.get("set", dict, {}))))

    models = Registry("model settings")
    for name, e in raw["model"].items():
        if name not in MODELS:
            e.fail(MODELS.unknown_message(name))
        models.add(name, Settings(name, e.get("summary", str), e.source,
                                  e.overrides(e.get("set", dict, {}), budget=False)))

    search_spaces = Registry("search space")
    for name, e in raw["search"].items():
        search_spaces.add(name, _search_space(e))

    ablations = Registry("ablation")
    for name, e in raw["ablation"].items():
        ablations.add(name, _ablation(e, raw["ablation"]))

    suites = Registry("suite")
    for name, e in raw["suite"].items():
        seeds = e.get("seeds", (int, list), 1)
        seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
        if not seeds or not all(isinstance(s, int) for s in seeds):
            e.fail(f"key 'seeds' expects a positive count or a list of integers, got {seeds!r}")
        datasets = e.get("datasets", dict, {})
        for task, dataset in datasets.items():
            if task not in TASKS:
                e.fail(TASKS.unknown_message(task))
            if dataset not in DATASETS:
                e.fail(DATASETS.unknown_message(dataset))
        scale = e.get("scale", str, "")
        if scale and scale not in scales:
            e.fail(scales.unknown_message(scale))
        model_names = e.names("models", MODELS, ("ctal",))
        ablation_names = e.names("ablations", ablations, ())
        variants = set(model_names) | {v.name for a in ablation_names for v in ablations.get(a).variants()}
        exceptions = {}
        for variant, table in e.get("budget_exceptions", dict, {}).items():
            if variant not in variants:
                e.fail(f"budget_exceptions names {variant!r}, not a model or ablation variant of the suite")
            overrides = e.overrides(table) if isinstance(table, dict) else {}
            if not overrides or set(overrides) - set(BUDGET_KEYS):
                e.fail(f"budget_exceptions.{variant} expects a table of {' and/or '.join(BUDGET_KEYS)}")
            exceptions[variant] = overrides
        suites.add(name, Suite(
            name, e.get("summary", str), e.source, version=e.get("version", int, 1),
            models=model_names, ablations=ablation_names,
            tasks=e.names("tasks", TASKS, ()), datasets=dict(datasets), seeds=seeds, scale=scale,
            overrides=e.overrides(e.get("set", dict, {})), budget_exceptions=exceptions))
    controls = Registry("control")
    variant_names = set(MODELS) | {v.name for a in ablations for v in ablations.get(a).variants()}
    for name, e in raw["control"].items():
        controls.add(name, _control(e, variant_names))
    return Declarations(ablations, suites, scales, models, search_spaces, controls)


def _extended(e: _Entry, all_entries: dict[str, _Entry]) -> _Entry:
    """``e`` with at most one level of ``extends`` merged in: the parent's keys, then its own;
    ``set`` tables merge key by key."""
    parent_name = e.get("extends", str, "")
    if not parent_name:
        return e
    parent = all_entries.get(parent_name)
    if parent is None:
        e.fail(f"extends unknown {e.kind} {parent_name!r}")
    if "extends" in parent.body:
        e.fail(f"extends {parent_name!r}, which itself extends another; one level only")
    body = {**parent.body, **e.body, "set": {**flatten(parent.body.get("set", {})),
                                              **flatten(e.body.get("set", {}))}}
    return _Entry(e.kind, e.name, {k: v for k, v in body.items() if k != "extends"}, e.source)


def _ablation(e: _Entry, all_entries: dict[str, _Entry]) -> Ablation:
    """Build one ablation (after ``extends``)."""
    e = _extended(e, all_entries)
    model = e.get("model", str, "ctal")
    if model not in MODELS:
        e.fail(MODELS.unknown_message(model))
    sweep = e.get("sweep", str, "")
    values = tuple(e.get("values", list, []))
    if bool(sweep) != bool(values):
        e.fail("a sweep needs both 'sweep' (a config key) and 'values' (a non-empty list)")
    overrides = e.overrides(e.get("set", dict, {}), budget=False)
    e.refuse_budget([sweep])
    for value in values:
        e.overrides({sweep: value})  # each swept value must fit the key's type
    return Ablation(e.name, e.get("summary", str), e.source, version=e.get("version", int, 1),
                    model=model, drop=e.get("drop", str, ""), overrides=overrides, sweep=sweep,
                    values=values, seed_offset=e.get("seed_offset", int, 0))


def _control(e: _Entry, variant_names: set[str]) -> Control:
    task = e.get("task", str)
    if task not in TASKS:
        e.fail(TASKS.unknown_message(task))
    metric = e.get("metric", str)
    if metric not in TASKS.get(task).metric_names:
        e.fail(f"metric {metric!r} is not one of {task}'s: {', '.join(TASKS.get(task).metric_names)}")
    sides = {}
    for side in ("better", "worse"):
        names = e.get(side, list)
        unknown = [n for n in names if n not in variant_names]
        if not names or unknown:
            e.fail(f"{side!r} expects a non-empty list of models or ablation variants"
                   + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else ""))
        sides[side] = tuple(names)
    expect = e.get("expect", str, "better")
    if expect not in EXPECTATIONS:
        e.fail(f"expect {expect!r}: expected one of {', '.join(EXPECTATIONS)}")
    dataset = e.get("dataset", str, "synth")
    if dataset not in DATASETS:
        e.fail(DATASETS.unknown_message(dataset))
    return Control(e.name, e.get("summary", str), e.source, task, metric, sides["better"], sides["worse"],
                   e.get("subset", str, ""), expect, dataset)


def _search_space(e: _Entry) -> SearchSpace:
    """Build one model's search space; every parameter is checked against the config schema."""
    if e.name not in MODELS:
        e.fail(MODELS.unknown_message(e.name))
    params = tuple(_param(e, key, spec) for key, spec in _space_entries(e.get("space", dict)))
    if not params:
        e.fail("'space' is empty; declare at least one config key to search")
    return SearchSpace(e.name, e.get("summary", str), e.source, params)


def _space_entries(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, spec)`` pairs; a key may be written quoted (``"finetune.lr" = {...}``) or
    as nested tables. A table holding ``low``, ``high`` or ``choices`` is a spec."""
    out = []
    for key, value in table.items():
        if isinstance(value, dict) and not ({"low", "high", "choices"} & set(value)):
            out += _space_entries(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _param(e: _Entry, key: str, spec: Any) -> Param:
    def fail(message: str):
        e.fail(f"{key!r}: {message}")

    if key in _NOT_SEARCHABLE:
        fail("each trial sets this itself (model, dataset, fold, seed); it cannot be searched")
    e.refuse_budget([key])
    if not isinstance(spec, dict):
        fail(f"expected a table like {{ low = 1e-4, high = 1e-2, log = true }} or {{ choices = [...] }}, got {spec!r}")
    unknown = sorted(set(spec) - _RANGE_KEYS - {"choices"})
    if unknown:
        fail(f"unknown key {unknown[0]!r}; expected low, high, log, step or choices")
    if "choices" in spec:
        if set(spec) & _RANGE_KEYS:
            fail("give either choices or a range (low, high, log, step), not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            fail(f"choices must be a non-empty list, got {choices!r}")
        for value in choices:
            e.overrides({key: value})  # a config key, and the value fits its type
        return Param(key, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        fail("a range needs both low and high")
    low, high, step = spec["low"], spec["high"], spec.get("step")
    e.overrides({key: low})
    e.overrides({key: high})
    tp = key_type(key)
    if tp not in (int, float):
        fail(f"a {tp.__name__} key takes choices, not a range")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        fail(f"log must be true or false, got {log!r}")
    if not low < high:
        fail(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        fail(f"a log range needs low > 0, got {low}")
    if step is not None:
        if log:
            fail("give log or step, not both")
        number = isinstance(step, int) if tp is int else isinstance(step, (int, float))
        if isinstance(step, bool) or not number or step <= 0:
            fail(f"step must be a positive {tp.__name__}, got {step!r}")
    if tp is float:
        low, high, step = float(low), float(high), None if step is None else float(step)
    return Param(key, low, high, log, step)
