"""Tests and benchmarks build their random models only through ``lab.fixtures``, so every
caller with the same arguments gets the same weights and a toy config changes in one place.

A model built under ``torch.device("meta")`` or accelerate's ``init_empty_weights()`` has no weights (it is
built for its keys, shapes or config) and may be built anywhere.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from diffusers import ModelMixin
from transformers import PreTrainedModel

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "bench")
MODEL_LIBRARIES = ("diffusers", "transformers")


def _is_model_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, (ModelMixin, PreTrainedModel))


def _imported_model_classes(tree: ast.Module) -> set[str]:
    """Local names of the diffusers / transformers model classes a file imports (at any depth)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] not in MODEL_LIBRARIES:
                continue
            module = importlib.import_module(node.module)
            names |= {
                alias.asname or alias.name
                for alias in node.names
                if _is_model_class(getattr(module, alias.name, None))
            }
    return names


def _built_class(call: ast.Call, classes: set[str]) -> str | None:
    """The model class ``call`` builds with random weights: ``Model(...)``, ``Model.from_config(...)`` or
    ``diffusers.Model(...)``; None for any other call."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in classes:
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.attr == "from_config" and func.value.id in classes:
            return func.value.id
        if func.value.id in MODEL_LIBRARIES:
            library = importlib.import_module(func.value.id)
            if _is_model_class(getattr(library, func.attr, None)):
                return func.attr
    return None


def _builds_empty(item: ast.withitem) -> bool:
    """``with torch.device("meta")`` or ``with init_empty_weights()``."""
    expr = item.context_expr
    if not isinstance(expr, ast.Call):
        return False
    name = expr.func.attr if isinstance(expr.func, ast.Attribute) else getattr(expr.func, "id", "")
    if name == "init_empty_weights":
        return True
    return name == "device" and any(isinstance(a, ast.Constant) and a.value == "meta" for a in expr.args)


def random_model_builds(source: str) -> list[tuple[int, str]]:
    """(line, class) of every diffusers / transformers model ``source`` builds with random weights."""
    tree = ast.parse(source)
    classes = _imported_model_classes(tree)
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, empty: bool) -> None:
        if isinstance(node, ast.With | ast.AsyncWith):
            empty = empty or any(_builds_empty(item) for item in node.items)
        if isinstance(node, ast.Call) and not empty:
            built = _built_class(node, classes)
            if built is not None:
                found.append((node.lineno, built))
        for child in ast.iter_child_nodes(node):
            visit(child, empty)

    visit(tree, False)
    return found


def test_the_scan_finds_direct_builds_and_lets_empty_ones_pass():
    source = """
import diffusers
from diffusers import SanaTransformer2DModel as Sana
from diffusers.models.attention_processor import Attention
from transformers import Gemma2Config, Gemma2Model

def build():
    a = Sana(num_layers=1)
    b = diffusers.AutoencoderDC()
    c = Gemma2Model.from_config(Gemma2Config())
    d = Attention(query_dim=8)
    with torch.device("meta"):
        e = Sana()
    with init_empty_weights():
        f = Gemma2Model(Gemma2Config())
"""
    assert random_model_builds(source) == [(8, "Sana"), (9, "AutoencoderDC"), (10, "Gemma2Model")]


def test_tests_and_benchmarks_build_models_only_through_the_fixtures_module():
    builds = [
        f"{path.relative_to(ROOT)}:{line} builds {name}"
        for folder in SCANNED
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, name in random_model_builds(path.read_text(encoding="utf-8"))
    ]
    assert not builds, (
        "Build random models with lab.fixtures (tiny_transformer, tiny_video_transformer, "
        "tiny_vae, tiny_gemma2) instead of calling the model class: " + "; ".join(builds)
    )
