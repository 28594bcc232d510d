"""What ``bench.py list`` shows: rows of plain data (``rows``, ``--format json``) and the rich
table of them (``table``), whose names never wrap or shorten and whose descriptions wrap."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ctal_bench import catalog, declarations
from ctal_bench.config import DataConfig, ModelConfig
from ctal_bench.registry import DATASETS, MODELS, TASKS

WHAT = ("models", "datasets", "tasks", "ablations", "suites", "scales")
# columns that may wrap (descriptions, lists of names, wrapped between names); the rest never do
WRAPPING = {"summary", "own settings", "changes", "settings", "models", "ablations", "tasks"}


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


def rows(what: str, ablations_dir: Path | None = None) -> list[dict]:
    """One dict per registered or declared thing, for scripts (``list --format json``)."""
    catalog.load()
    if what == "models":
        settings = declarations.load(ablations_dir).models
        return [{"model": name, "parameters": {size: parameter_count(MODELS.get(name), size)
                                               for size in MODELS.get(name).presets},
                 "summary": _first_line(MODELS.get(name)),
                 "own settings": settings.get(name).summary if name in settings else None} for name in MODELS]
    if what == "datasets":
        return [{"dataset": name, "tasks": list(DATASETS.get(name).tasks),
                 "pretraining corpus": bool(DATASETS.get(name).has_pretraining),
                 "summary": _first_line(DATASETS.get(name))} for name in DATASETS]
    if what == "tasks":
        return [{"task": name, "metrics": list(TASKS.get(name).metric_names),
                 "selection metric": TASKS.get(name).selection_metric,
                 "higher is better": TASKS.get(name).higher_is_better} for name in TASKS]
    decl = declarations.load(ablations_dir)
    if what == "ablations":
        found = []
        for name in decl.ablations:
            a = decl.ablations.get(name)
            found.append({"ablation": name, "summary": a.summary, "drops": a.drop or None,
                          "changes": dict(a.overrides), "sweep": a.sweep or None,
                          "values": list(a.values) if a.sweep else None})
        return found
    if what == "suites":
        return [{"suite": name, "summary": s.summary, "models": list(s.models), "ablations": list(s.ablations),
                 "tasks": list(s.tasks), "seeds": list(s.seeds), "scale": s.scale or None}
                for name in decl.suites for s in [decl.suites.get(name)]]
    return [{"scale": name, "summary": decl.scales.get(name).summary,
             "settings": dict(decl.scales.get(name).overrides)} for name in decl.scales]


def _cells(what: str, row: dict) -> dict[str, str]:
    """A row of ``rows`` as the table's text, column by column."""
    def joined(values) -> str:
        return ", ".join(map(str, values)) or "-"

    if what == "models":
        return {"model": row["model"], "sizes (parameters; vocab 1000, 4 outputs)":
                ", ".join(f"{size} {_millions(n)}" for size, n in row["parameters"].items()),
                "summary": row["summary"], "own settings": row["own settings"] or "-"}
    if what == "datasets":
        return {"dataset": row["dataset"], "tasks": joined(row["tasks"]),
                "pre-training corpus": "yes" if row["pretraining corpus"] else "-", "summary": row["summary"]}
    if what == "tasks":
        return {"task": row["task"], "metrics": joined(row["metrics"]),
                "selection (dev)": f"{row['selection metric']} {'↑' if row['higher is better'] else '↓'}"}
    if what == "ablations":
        changes = ", ".join(f"{k}={v}" for k, v in row["changes"].items())
        if row["sweep"]:
            changes = f"{row['sweep']} in {row['values']}" + (f"; {changes}" if changes else "")
        return {"ablation": row["ablation"], "summary": row["summary"], "drops": row["drops"] or "-",
                "changes": changes}
    if what == "suites":
        return {"suite": row["suite"], "summary": row["summary"], "models": joined(row["models"]),
                "ablations": joined(row["ablations"]), "tasks": joined(row["tasks"]), "seeds": str(len(row["seeds"])),
                "scale": row["scale"] or "-"}
    return {"scale": row["scale"], "summary": row["summary"],
            "settings": ", ".join(f"{k}={v}" for k, v in row["settings"].items())}


def table(what: str, ablations_dir: Path | None = None) -> Table:
    """``rows`` as a rich table: print it with ``tables.print_rich`` so that no name is cut."""
    from rich.text import Text

    found = [_cells(what, row) for row in rows(what, ablations_dir)]
    headers = list(found[0]) if found else [what.removesuffix("s")]
    t = Table(title="scales" if what == "scales" else what)
    for header in headers:
        t.add_column(header, no_wrap=header not in WRAPPING, overflow="fold")
    for row in found:
        t.add_row(*(Text(row[h]) for h in headers))
    return t
