"""The trainer is the package `temporal_tiling.training`: it imports the engine, never the other way
round (``test_imports`` checks the whole pack, the trainer included, for import cycles)."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_imports import import_graph

from temporal_tiling.lora import LoraError

ROOT = Path(__file__).resolve().parents[2]
TRAINING = "temporal_tiling.training"


def test_every_training_module_imports():
    package = importlib.import_module(TRAINING)
    names = [info.name for info in pkgutil.iter_modules(package.__path__) if info.name != "__main__"]
    assert {"losses", "toy_models", "loop", "plots", "temporal_lora", "embedded_recipe", "cli"} <= set(names)
    for name in names:
        importlib.import_module(f"{TRAINING}.{name}")


def test_runtime_modules_never_import_the_trainer():
    graph = import_graph()
    assert any(name.startswith(TRAINING) for name in graph), "the training package is missing"
    runtime = [name for name in graph if not name.startswith(TRAINING)]
    offenders = {
        name: sorted(t for t in graph[name] if t == TRAINING or t.startswith(TRAINING + "."))
        for name in runtime
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_documented_command_runs():
    out = subprocess.run(
        [sys.executable, "-m", TRAINING, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "usage: python -m temporal_tiling.training" in out and "{build,lora}" in out


def test_the_lora_command_reaches_the_trainer(tmp_path):
    from temporal_tiling.training.cli import main

    with pytest.raises(LoraError, match="not a SanaPipeline folder"):
        main(["lora", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")])
