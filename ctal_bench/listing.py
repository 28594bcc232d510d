"""Rich tables for ``bench.py list``."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ctal_bench import catalog, declarations
from ctal_bench.config import DataConfig, ModelConfig
from ctal_bench.registry import DATASETS, MODELS, TASKS


def _first_line(obj) -> str:
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


def parameter_count(model_cls, size: str, vocab_size: int = DataConfig().vocab_size, n_outputs: int = 4) -> int:
    """Parameters of one preset, counted on the meta device (no memory, no init cost)."""
    import torch

    with torch.device("meta"):
        model = model_cls(ModelConfig(name="", size=size), n_outputs, vocab_size)
    return sum(p.numel() for p in model.parameters())


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def table(what: str, ablations_dir: Path | None = None) -> Table:
    catalog.load()
    if what == "models":
        settings = declarations.load(ablations_dir).models
        t = Table("model", "sizes (parameters; vocab 1000, 4 outputs)", "summary", "own settings",
                  title="models")
        for name in MODELS:
            cls = MODELS.get(name)
            sizes = ", ".join(f"{size} {_millions(parameter_count(cls, size))}" for size in cls.presets)
            own = settings.get(name).summary if name in settings else "-"
            t.add_row(name, sizes, _first_line(cls), own)
        return t
    if what == "datasets":
        t = Table("dataset", "tasks", "pre-training corpus", "summary", title="datasets")
        for name in DATASETS:
            cls = DATASETS.get(name)
            t.add_row(name, ", ".join(cls.tasks), "yes" if cls.has_pretraining else "-", _first_line(cls))
        return t
    if what == "tasks":
        t = Table("task", "metrics", "selection (dev)", title="tasks")
        for name in TASKS:
            task = TASKS.get(name)
            arrow = "↑" if task.higher_is_better else "↓"
            t.add_row(name, ", ".join(task.metric_names), f"{task.selection_metric} {arrow}")
        return t
    decl = declarations.load(ablations_dir)
    if what == "ablations":
        t = Table("ablation", "summary", "drops", "changes", title="ablations")
        for name in decl.ablations:
            a = decl.ablations.get(name)
            changes = ", ".join(f"{k}={v}" for k, v in a.overrides.items())
            if a.sweep:
                changes = f"{a.sweep} in {list(a.values)}" + (f"; {changes}" if changes else "")
            t.add_row(name, a.summary, a.drop or "-", changes)
        return t
    if what == "suites":
        t = Table("suite", "summary", "models", "ablations", "tasks", "seeds", "scale", title="suites")
        for name in decl.suites:
            s = decl.suites.get(name)
            t.add_row(name, s.summary, ", ".join(s.models), ", ".join(s.ablations) or "-",
                      ", ".join(s.tasks), str(len(s.seeds)), s.scale or "-")
        return t
    t = Table("scale", "summary", "settings", title="scales")
    for name in decl.scales:
        s = decl.scales.get(name)
        t.add_row(name, s.summary, ", ".join(f"{k}={v}" for k, v in s.overrides.items()))
    return t
