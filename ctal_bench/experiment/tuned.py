"""The file ``tune`` writes per (model, task, dataset) and ``run --tuned`` reads: the chosen
settings as ``--set`` keys, with how they were found."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctal_bench.config import Config, apply_overrides, load_toml
from ctal_bench.declarations import flatten
from ctal_bench.errors import UserError


@dataclass(frozen=True)
class Tuned:
    """A tuned file as ``run --tuned`` reads it."""

    source: Path
    overrides: dict[str, Any]  # dotted config keys
    scale: str


def tuned_path(directory: Path, model: str, task: str, dataset: str) -> Path:
    return Path(directory) / f"{model}__{task}__{dataset}.toml"


def tuned_text(meta: dict[str, Any], params: dict[str, Any]) -> str:
    """TOML: a header, the study's metadata, and ``set``, the chosen config keys."""
    lines = [f"# Written by `bench.py tune`: the best of {meta['trials']} trials of study {meta['study']},",
             f"# selected on dev {meta['metric']} (the test split was never loaded).",
             "# `bench.py run --tuned` applies `set` after the model's own settings, before the suite,",
             "# ablation variants and --set.",
             "[tuned]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in meta.items()]
    lines.append("set = { " + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in params.items()) + " }")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # exact; TOML reads 1e-05, inf and nan
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def read_tuned(path: Path) -> Tuned:
    """A tuned file, checked: a malformed one is a UserError naming it."""
    table = load_toml(path).get("tuned")
    if not isinstance(table, dict) or not isinstance(table.get("set"), dict):
        raise UserError(f"{path}: expected a [tuned] table with a `set` table of config keys "
                        "(written by `bench.py tune`)")
    overrides = flatten(table["set"])
    try:
        apply_overrides(Config(), overrides)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    scale = table.get("scale", "")
    if not isinstance(scale, str):
        raise UserError(f"{path}: key 'scale' expects a string, got {scale!r}")
    return Tuned(path, overrides, scale)


def find_tuned(directory: Path, cells: set[tuple[str, str, str]], scale: str) -> dict[tuple[str, str, str], Tuned]:
    """The tuned file of each (model, task, dataset) that has one in ``directory``; tuned at
    another scale is an error, since its settings were chosen for other sizes."""
    if not Path(directory).is_dir():
        raise UserError(f"--tuned {directory}: directory does not exist (`bench.py tune` writes it)")
    found = {}
    for model, task, dataset in sorted(cells):
        path = tuned_path(directory, model, task, dataset)
        if path.exists():
            tuned = read_tuned(path)
            if tuned.scale != scale:
                raise UserError(f"{path}: tuned at scale {tuned.scale!r}, but this run uses {scale!r}; "
                                f"tune at {scale!r} or leave out --tuned")
            found[(model, task, dataset)] = tuned
    return found
