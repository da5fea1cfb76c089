"""The lab (`lab/`: trainer, seam-lab scenes, test fixtures) lives beside the shipped engine: it imports
the engine, never the other way round, and ``python -m lab.training`` is the documented trainer command
(``test_imports`` checks the whole pack, the lab included, for import cycles)."""

import argparse
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_imports import import_graph

from temporal_tiling.lora import LoraError
from temporal_tiling.options import EMBEDDED_MODEL

ROOT = Path(__file__).resolve().parents[2]
TRAINING = "lab.training"
RUNTIME = ("temporal_tiling", "nodes")


def test_every_training_module_imports():
    package = importlib.import_module(TRAINING)
    names = [info.name for info in pkgutil.iter_modules(package.__path__) if info.name != "__main__"]
    assert {"losses", "toy_models", "loop", "plots", "temporal_lora", "embedded_recipe", "cli"} <= set(names)
    for name in names:
        importlib.import_module(f"{TRAINING}.{name}")


def test_runtime_modules_never_import_the_lab():
    """Read from the source, imports inside functions included (the nodes import ComfyUI, so they are
    read rather than imported here)."""
    graph = import_graph()
    assert any(name.startswith("lab.") for name in graph), "the lab is missing from the import graph"
    runtime = [name for name in graph if name.split(".")[0] in RUNTIME]
    offenders = {name: sorted(t for t in graph[name] if t.split(".")[0] == "lab") for name in runtime}
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_every_engine_module_loads_no_lab_module():
    """What really runs: every `temporal_tiling` module imported in a fresh interpreter, then no `lab`
    module in sys.modules."""
    code = (
        "import importlib, pkgutil, sys, temporal_tiling\n"
        "for info in pkgutil.walk_packages(temporal_tiling.__path__, 'temporal_tiling.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "import nodes\n"
        "print(len(sys.modules))\n"
        "print(sorted(m for m in sys.modules if m == 'lab' or m.startswith('lab.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert int(out[0]) > 100, "the engine modules were not imported"
    assert out[1] == "[]"


def test_the_shipped_package_holds_no_lab_code():
    engine = ROOT / "temporal_tiling"
    assert not (engine / "training").exists()
    assert not (engine / "seamlab.py").exists()
    assert not (engine / "sana" / "fixtures.py").exists()


def test_the_documented_command_runs():
    out = subprocess.run(
        [sys.executable, "-m", TRAINING, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "usage: python -m lab.training" in out and "{build,lora}" in out


def test_the_lora_command_reaches_the_trainer(tmp_path):
    from lab.training.cli import main

    with pytest.raises(LoraError, match="not a SanaPipeline folder"):
        main(["lora", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")])


@pytest.mark.parametrize(
    "argv",
    [
        ["build"],
        ["lora"],
        ["build", "--out", str(EMBEDDED_MODEL)],
        ["lora", "--out", str(EMBEDDED_MODEL / "temporal_lora")],
    ],
)
def test_training_never_writes_over_the_shipped_model_unless_asked(argv, tmp_path, capsys):
    """No default --out, and an --out inside the embedded model is refused without --overwrite-embedded
    (before anything loads or is written)."""
    from lab.training.cli import main

    before = sorted((p.relative_to(EMBEDDED_MODEL), p.stat().st_mtime_ns) for p in EMBEDDED_MODEL.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--work", str(tmp_path / "work")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and ("required" in err or "--overwrite-embedded" in err)
    assert (
        sorted((p.relative_to(EMBEDDED_MODEL), p.stat().st_mtime_ns) for p in EMBEDDED_MODEL.rglob("*"))
        == before
    )
    assert not (tmp_path / "work").exists()


def test_the_shipped_model_is_written_only_with_overwrite_embedded():
    from lab.training.cli import overwrites_shipped_model, parser

    args = parser().parse_args(["build", "--out", str(EMBEDDED_MODEL), "--overwrite-embedded"])
    assert overwrites_shipped_model(args.out) and args.overwrite_embedded
    assert not overwrites_shipped_model(str(EMBEDDED_MODEL.parent / "elsewhere"))


def test_every_training_flag_has_help():
    from lab.training.cli import parser

    subcommands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, command in subcommands.choices.items()
        for action in command._actions
        if action.option_strings and not action.help
    ]
    assert missing == []
