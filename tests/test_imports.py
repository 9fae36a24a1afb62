"""The package's imports point one way: no module reaches, directly or through others, back to itself.

Imports inside functions count as well (they still tie the modules together); `if TYPE_CHECKING:` blocks do
not, and neither does a package `__init__` that hands out its submodules lazily from a function.
"""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"


def modules() -> dict[str, Path]:
    found = {}
    for file in (SRC / "genlab").rglob("*.py"):
        name = ".".join(file.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = file
    return found


def imported(name: str, file: Path, known: dict[str, Path]) -> set[str]:
    """The genlab modules `name` imports (a name imported from a package is resolved to its module)."""
    tree = ast.parse(file.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    if file.name == "__init__.py":  # lazy exports: `def __getattr__` importing on first use
        skip |= {id(n) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) for n in ast.walk(fn)}
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets |= {base} | {f"{base}.{a.name}" for a in node.names}
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    known = modules()
    graph = {name: imported(name, file, known) for name, file in known.items()}
    assert len(graph) > 50 and "genlab.data.records" in graph["genlab.data.table"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
