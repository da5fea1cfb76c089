"""The trainer is the package `temporal_tiling.training`: it imports the engine, never the other way round,
and its modules import each other in one direction only (no cycle through it or the runtime LoRA loader)."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from temporal_tiling.lora import LoraError

ROOT = Path(__file__).resolve().parents[2]
TRAINING = "temporal_tiling.training"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    """Every module of the engine and the nodes, named from the pack root (`nodes.x`, `temporal_tiling.y`)."""
    files = [*(ROOT / "temporal_tiling").rglob("*.py"), *(ROOT / "nodes").glob("*.py")]
    return {_module_name(f): f for f in files}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the pack that `name` imports, relative imports resolved (`from . import x` -> `pkg.x`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base, *(f"{base}.{alias.name}" if base else alias.name for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in known)
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        name = todo.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return False


def test_every_training_module_imports():
    package = importlib.import_module(TRAINING)
    names = [info.name for info in pkgutil.iter_modules(package.__path__) if info.name != "__main__"]
    assert {"losses", "toy_models", "loop", "plots", "temporal_lora", "embedded_recipe", "cli"} <= set(names)
    for name in names:
        importlib.import_module(f"{TRAINING}.{name}")


def test_runtime_modules_never_import_the_trainer():
    graph = _graph()
    assert any(name.startswith(TRAINING) for name in graph), "the training package is missing"
    runtime = [name for name in graph if not name.startswith(TRAINING)]
    offenders = {
        name: sorted(t for t in graph[name] if t == TRAINING or t.startswith(TRAINING + "."))
        for name in runtime
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_no_import_cycle_through_the_trainer_or_the_lora_loader():
    graph = _graph()
    checked = [n for n in graph if n.startswith(TRAINING) or n == "temporal_tiling.lora"]
    assert "temporal_tiling.lora" in checked
    cycles = [name for name in checked if _reaches(graph, name, name)]
    assert not cycles, f"these modules import themselves back through others: {cycles}"


def test_the_documented_command_runs():
    out = subprocess.run(
        [sys.executable, "-m", TRAINING, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "usage: python -m temporal_tiling.training" in out and "{build,lora}" in out


def test_the_lora_command_reaches_the_trainer(tmp_path):
    from temporal_tiling.training.cli import main

    with pytest.raises(LoraError, match="not a SanaPipeline folder"):
        main(["lora", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")])
