"""Put the pack's root on sys.path so tests import the engine as `temporal_tiling`, and collect the root
as a plain folder.

Tests use one torch thread: the models are tiny, and on a small shared CPU extra threads only
oversubscribe the cores (measured here: up to 30× slower per call with two threads under load).
"""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)


class RootIsAFolder:
    """The root's __init__.py is ComfyUI's entry point, not a test package. Collected as a package, pytest
    imports it under the clone's folder name, and every test errors where that name is no identifier
    (a clone in `sana-tt/`). Registered as a plugin: a conftest's hooks do not reach its parent folder."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        return pytest.Dir.from_parent(parent, path=path) if path == ROOT else None


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(RootIsAFolder())
