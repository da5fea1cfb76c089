"""The Comfy Registry metadata in pyproject.toml: URLs, an icon file the repository really holds, and a
package that ships the embedded model and not the lab (``comfy node publish`` packs the git-tracked
files less the ``.comfyignore`` patterns; ``includes`` forces folders in). ComfyUI's own parser reads
the same file in tests/integration/test_comfy_config.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = "temporal_tiling/embedded/seamlab-sana/transformer/config.json"

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_project_urls_point_at_the_repository():
    urls = pyproject()["project"]["urls"]
    repository = urls["Repository"]
    assert repository.startswith("https://github.com/")
    assert urls["Documentation"].startswith(repository) and urls["Issues"] == f"{repository}/issues"


def test_the_icon_is_a_small_image_in_the_repository_at_its_raw_url():
    project = pyproject()
    owner_and_name = project["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_and_name}/main/"
    icon = project["tool"]["comfy"]["Icon"]
    assert icon.startswith(prefix), icon
    with Image.open(ROOT / icon.removeprefix(prefix)) as image:
        assert image.format in ("PNG", "JPEG", "GIF") and image.width <= 800 and image.height <= 400


def ignored(path: str, patterns: list[str]) -> bool:
    return any(path.startswith(pattern) for pattern in patterns)


def test_the_package_ships_the_embedded_model_and_not_the_lab():
    lines = (ROOT / ".comfyignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert all(p.endswith("/") and "*" not in p for p in patterns), "folder patterns only (read as prefixes)"
    assert ignored("lab/training/cli.py", patterns) and ignored("lab/fixtures.py", patterns)
    assert not ignored(EMBEDDED, patterns) and not ignored("temporal_tiling/pipeline.py", patterns)
    assert not ignored("nodes/sampler.py", patterns) and not ignored("__init__.py", patterns)
    includes = pyproject()["tool"]["comfy"]["includes"]
    assert any(EMBEDDED.startswith(folder + "/") for folder in includes)
    assert not any(folder.startswith("lab") for folder in includes)
