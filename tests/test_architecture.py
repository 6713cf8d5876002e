"""Imports flow one way: no cycle between the package's modules, and no import up the layer order of
docs/ARCHITECTURE.md. A small AST check (every ``import`` statement, at module level or inside a function);
imports made by name at run time (``importlib.import_module``, the marker's detector table) are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "instit_edge"

# Lowest first; a unit (a top-level module or subpackage of instit_edge) may import only units of a lower
# rank (and itself). Units of one rank are independent of each other. Keep in step with docs/ARCHITECTURE.md.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "system", "drawing", "terminal"),  # leaves: no package imports (terminal: consoles, progress)
    ("atomic", "prompting"),                # atomic writes; the prompt protocol and chat templates
    ("bundle",),                            # the bundle manifest
    ("marker",),                            # detect -> track -> draw Set-of-Marks
    ("data",),                              # Inst-IT readers, the synthetic world (draws marks with the marker)
    ("models",),                            # checkpoints: load, convert, tiny builder, the torch vision path
    ("export",),                            # GGUF / ONNX / mmproj writers
    ("runtime",),                           # EdgeSession and its backends
    ("quant",),                             # quantized variants (measured with the runtime)
    ("eval", "train", "demo", "serve", "annotate"),  # applications of the stages below
    ("bench",),                             # measures the stages and the applications (demo engine, server)
    ("doctor",),
    ("cli", "__init__"),                    # the command line; the package's lazy public names
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

# Known cycles, each with the reason it stays and the way out (none today).
ALLOWED_CYCLES: set[frozenset] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports."""

    def nearest(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(nearest(a.name) for a in node.names if a.name.split(".")[0] == "instit_edge")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").split(".")[0] == "instit_edge":
                    name = node.module
                else:
                    continue
                for a in node.names:  # ``from pkg import submodule`` imports the submodule
                    deps.add(f"{name}.{a.name}" if f"{name}.{a.name}" in mods else nearest(name))
        deps.discard(None)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def _unit(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


@pytest.fixture(scope="module")
def graph():
    return _imports(_modules())


def test_the_checker_sees_imports(graph):
    """The checker resolves relative, absolute, submodule and function-level imports (or it would pass on nothing)."""
    assert "instit_edge.errors" in graph["instit_edge.cli"]
    assert "instit_edge.prompting" in graph["instit_edge.runtime.session"]  # ``from .. import prompting as P``
    assert "instit_edge.marker.base" in graph["instit_edge.marker.pipeline"]  # absolute
    assert "instit_edge.bench.commands" in graph["instit_edge.cli"]  # ``from .bench import commands``
    assert "instit_edge.models.vision" in graph["instit_edge.runtime.torch_ref"]  # inside a method
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    missing = sorted(units - set(RANK))
    assert not missing, f"place {missing} in LAYERS here and in docs/ARCHITECTURE.md"
    assert not sorted(set(RANK) - units), "LAYERS names a unit that no longer exists"


def test_no_import_cycle(graph):
    cycles = [c for c in _cycles(graph) if frozenset(c) not in ALLOWED_CYCLES]
    detail = "; ".join(" <-> ".join(c) + " (" + ", ".join(f"{a}->{b}" for a in c for b in sorted(graph[a])
                                                           if b in c) + ")" for c in cycles)
    assert not cycles, f"import cycles: {detail}"


def test_imports_flow_down_the_layers(graph):
    upward = sorted(f"{a} -> {b} ({_unit(a)} rank {RANK[_unit(a)]}, {_unit(b)} rank {RANK[_unit(b)]})"
                    for a, deps in graph.items() for b in deps
                    if _unit(a) != _unit(b) and RANK[_unit(b)] >= RANK[_unit(a)])
    assert not upward, "imports against the layer order of docs/ARCHITECTURE.md:\n" + "\n".join(upward)
