"""The pack's modules import each other in one direction only, and methods are dispatched in one place.

Imports are read from the source (``ast``), module-level and inside functions alike: a cycle hidden in
a function body is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("temporal_tiling", "nodes", "lab")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The pack modules ``path`` imports (``from .x import y`` counts ``x``, or ``x.y`` if y is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph.get(node, ()):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert graph["temporal_tiling.pipeline"], "the graph reader found no imports: it is broken"
    assert cycles(graph) == []


def test_the_engine_never_imports_the_nodes_and_the_loops_never_import_the_run_path() -> None:
    graph = import_graph()
    engine = {m: deps for m, deps in graph.items() if m.startswith("temporal_tiling")}
    assert {m for m, deps in engine.items() if any(d.startswith("nodes") for d in deps)} == set()
    lower = (
        "temporal_tiling.plan",
        "temporal_tiling.contracts",
        "temporal_tiling.flow",
        "temporal_tiling.sampling",
    )
    assert {m for m in lower if "temporal_tiling.pipeline" in graph[m]} == set()


def test_one_place_dispatches_methods() -> None:
    """The tile loops are called from the run path only (tests aside)."""
    call = re.compile(r"\b(sample_causal|sample_independent|multidiffusion_denoiser)\(")
    sources = [
        p
        for folder in ("temporal_tiling", "nodes", "bench", "workflows")
        for p in (ROOT / folder).rglob("*.py")
    ]
    callers = sorted(str(p.relative_to(ROOT)) for p in sources if call.search(p.read_text(encoding="utf-8")))
    assert callers == ["temporal_tiling/pipeline.py", "temporal_tiling/sampling.py"]
