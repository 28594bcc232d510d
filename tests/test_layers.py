"""The package's import graph: arrows point one way (cli -> experiment -> analysis -> train ->
models -> data -> the foundation), there is no cycle, and only cli/ parses arguments.

Read from the source with ``ast``, imports inside functions included: a lazy import is still an
arrow."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ctal_bench"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = (
    ("ctal_bench", "ctal_bench.errors", "ctal_bench.files", "ctal_bench.registry", "ctal_bench.catalog",
     "ctal_bench.config", "ctal_bench.declarations", "ctal_bench.results"),
    ("ctal_bench.data",),
    ("ctal_bench.models", "ctal_bench.baselines"),
    ("ctal_bench.train",),
    ("ctal_bench.analysis",),
    ("ctal_bench.experiment",),
    ("ctal_bench.cli", "ctal_bench.__main__"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:
            if name in MODULES and name != module:
                found.add(name)
                break
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_is_in_a_layer_and_imports_point_down():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in sorted(GRAPH.items()) for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_the_graph_is_read_from_the_source():
    """A check that cannot fail is no check: the reader sees a known downward arrow and a lazy one."""
    assert "ctal_bench.train.loop" in GRAPH["ctal_bench.train.finetune"]
    assert "ctal_bench.train.pretrain" in GRAPH["ctal_bench.experiment.cell"]  # imported inside a function
    assert layer("ctal_bench.cli.run") > layer("ctal_bench.experiment.run") > layer("ctal_bench.train.loop")


def test_only_cli_parses_arguments():
    users = sorted(m for m, p in MODULES.items() if "argparse" in p.read_text(encoding="utf-8")
                   and not (m == "ctal_bench.cli" or m.startswith("ctal_bench.cli.")))
    assert not users, f"argparse outside cli/: {users}"
