"""ComfyUI's own pyproject parser (``comfy_config.config_parser``, what ComfyUI and the Registry read) on
the pack: every Registry field comes through."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_comfyui_reads_the_registry_fields():
    pytest.importorskip("pydantic_settings")
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(ROOT))
    project, comfy = config.project, config.tool_comfy
    assert project.name == "comfyui-sana-temporal-tiling" and project.version
    assert project.urls.repository and project.urls.documentation and project.urls.issues
    assert project.license.text == "Apache-2.0"
    assert project.supported_os == ["OS Independent"]
    assert project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    assert project.supported_comfyui_version == ">=0.3.64"
    assert project.dependencies and all(">=" in d for d in project.dependencies)
    assert comfy.publisher_id and comfy.display_name == "SANA Temporal Tiling"
    assert comfy.icon.endswith("/docs/icon.png") and comfy.includes == ["temporal_tiling/embedded"]
