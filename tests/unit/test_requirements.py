"""The requirement floors are the first releases that have what the pack uses.

``FIRST_RELEASE`` records, per distribution, that release and what needs it; each was checked by
downloading the release before it and the release itself (``pip download --no-deps``) and reading their
files (docs/requirements.md lists the checks). The tests hold requirements.txt and pyproject.toml to the
table, every third-party module the runtime imports to a requirement, and the installed versions to
the features the table names.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("temporal_tiling", "nodes")

FIRST_RELEASE = {  # distribution: (floor, what the pack uses that first ships there)
    "diffusers": (
        "0.36",
        "models.transformers.transformer_sana_video (SANA-Video processors); not in 0.35.2",
    ),
    "transformers": ("4.42", "Gemma2, SANA's text encoder (models/gemma2); not in 4.41.2"),
    "safetensors": ("0.3", "safetensors.SafetensorError (corrupt-file messages); not in 0.2.8"),
    "kornia": ("0.7.2", 'color.ColorMap("hot") by name (the seam heatmap); abstract in 0.7.1'),
    "numpy": ("1.17", "numpy.random.default_rng (NumPy's docs: new in 1.17.0)"),
    "peft": (
        "0.6",
        "diffusers' PEFT backend behind load_lora_adapter: MIN_PEFT_VERSION 0.6.0 in diffusers 0.36",
    ),
    "pillow": ("10.1", "ImageFont.load_default(size=...) (the tile-plan preview); 10.0.1 takes no size"),
    "tqdm": ("4.1", "tqdm(dynamic_ncols=...), .total, .n; 4.1.0 is the oldest 4.x the index holds"),
    "accelerate": ("0.8", "accelerate.init_empty_weights (models built without random init); not in 0.7.0"),
    "tifffile": (
        "2018.11.6",
        "TiffFile (with, pages[0].dtype) and imread: 16-bit TIFF input of refine; read from its wheel",
    ),
    "sentencepiece": (
        "0.2",
        "not imported: transformers' Gemma tokenizer needs it for a bare tokenizer.model",
    ),
}
NOT_IMPORTED = {"peft", "sentencepiece"}
"""Needed through another library, never imported by the pack itself."""
MODULE_TO_DISTRIBUTION = {"PIL": "pillow"}
PROVIDED = {
    "torch",
    "comfy",
    "comfy_api",
    "comfy_execution",
    "folder_paths",
    "latent_preview",
    "node_helpers",
}
"""Owned by ComfyUI (and torch), never pinned by the pack."""


def requirements(lines: list[str]) -> dict[str, Requirement]:
    found = [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]
    return {r.name.lower(): r for r in found}


def floor(requirement: Requirement) -> Version:
    (spec,) = requirement.specifier
    assert spec.operator == ">=", f"{requirement}: a floor only (>=)"
    return Version(spec.version)


def test_requirements_txt_floors_are_the_first_releases():
    found = requirements((ROOT / "requirements.txt").read_text().splitlines())
    assert set(found) == set(FIRST_RELEASE)
    assert {name: str(floor(r)) for name, r in found.items()} == {
        name: str(Version(version)) for name, (version, _) in FIRST_RELEASE.items()
    }


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_pyproject_lists_the_same_requirements():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    txt = requirements((ROOT / "requirements.txt").read_text().splitlines())
    assert requirements(project["dependencies"]) == txt


def runtime_imports() -> set[str]:
    """Top-level third-party modules the engine and the nodes import (at any depth, from the source)."""
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for package in RUNTIME:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    found.add(node.module.split(".")[0])
                elif isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
    return found - stdlib - PROVIDED - {"__future__", *RUNTIME}


def test_every_runtime_import_is_a_requirement_and_every_requirement_is_used():
    imported = {MODULE_TO_DISTRIBUTION.get(module, module) for module in runtime_imports()}
    assert imported == set(FIRST_RELEASE) - NOT_IMPORTED


FEATURES = {  # what FIRST_RELEASE names, tried on the installed versions
    "diffusers": lambda: importlib.import_module("diffusers.models.transformers.transformer_sana_video"),
    "transformers": lambda: importlib.import_module("transformers").Gemma2Model,
    "safetensors": lambda: importlib.import_module("safetensors").SafetensorError,
    "kornia": lambda: importlib.import_module("kornia").color.ColorMap("hot", num_colors=4),
    "numpy": lambda: importlib.import_module("numpy").random.default_rng(0),
    "pillow": lambda: importlib.import_module("PIL.ImageFont").load_default(size=10),
    "accelerate": lambda: importlib.import_module("accelerate").init_empty_weights,
    "tifffile": lambda: importlib.import_module("tifffile").TiffFile.__enter__,
}


@pytest.mark.parametrize("distribution", list(FEATURES))
def test_the_installed_versions_have_the_recorded_features(distribution):
    assert FEATURES[distribution]() is not None
