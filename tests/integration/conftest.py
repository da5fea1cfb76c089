"""Integration tier: the pack inside a real ComfyUI.

Runs when COMFYUI_PATH points at a ComfyUI checkout and pytest runs with that ComfyUI's Python
(`bash tools/integration.sh` sets both up); every test here is skipped with the reason otherwise, and so
are the tests marked `extramodels` without EXTRAMODELS_PATH. With CI=true every skip here is a failure:
CI has the host, both ExtraModels forks and Chromium, so a skip there means a test silently did not run.
Tiny models with the real key layouts are written into a temporary model
folder that ComfyUI is told about (folder_paths in-process, --base-directory for the server).
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
from sana_comfy import PACK_ROOT, TINY_VARIANTS, ComfyServer

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
EXTRAMODELS_PATH = os.environ.get("EXTRAMODELS_PATH")
IN_CI = os.environ.get("CI") == "true"
HERE = Path(__file__).resolve().parent
SKIP_REASON = (
    "COMFYUI_PATH is not set: point it at a ComfyUI checkout and run pytest with that ComfyUI's Python "
    "to run the integration tests"
)
EXTRAMODELS_SKIP_REASON = (
    "EXTRAMODELS_PATH is not set: point it at a ComfyUI_ExtraModels checkout (with its requirements "
    "installed in ComfyUI's Python) to test the pack beside it"
)

if COMFYUI_PATH:
    # ComfyUI's own top-level modules (nodes, folder_paths, comfy) must win over the pack's `nodes/`.
    sys.path.insert(0, str(Path(COMFYUI_PATH).expanduser().resolve()))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        if not COMFYUI_PATH:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        elif not EXTRAMODELS_PATH and item.get_closest_marker("extramodels"):
            item.add_marker(pytest.mark.skip(reason=EXTRAMODELS_SKIP_REASON))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI=true a skip of this tier (a missing host, fork, browser or embedded model) is a failure."""
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every integration test must run: {reason}"
    return report


@pytest.fixture(scope="session")
def comfy(models_dir):
    """ComfyUI imported as a library on the CPU (args set before model_management picks a device), with its
    folders (models, input, output, temp, user) in the temporary base directory, like the server: the host
    tree is only read (CI gives it no write bits; ExtraModels creates models/t5 when it loads)."""
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(models_dir)  # read when folder_paths is first imported
    import comfy.model_management  # noqa: F401
    import folder_paths

    if Path(folder_paths.base_path) != models_dir:
        raise RuntimeError("folder_paths was imported before the `comfy` fixture set its base directory")
    return types.SimpleNamespace(args=args, folder_paths=folder_paths)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A ComfyUI base directory with tiny SANA parts in models/: a diffusers pipeline folder, original-layout
    single files of several variants, a separate VAE folder and text encoder folder, and a non-SANA file."""
    import torch
    from safetensors.torch import save_file

    from lab import fixtures

    base = tmp_path_factory.mktemp("comfy_base")
    models = base / "models"
    for kind in ("checkpoints", "diffusion_models", "vae", "text_encoders"):
        (models / kind).mkdir(parents=True)
    fixtures.write_pipeline_folder(models / "checkpoints" / "tiny_sana_diffusers")
    # the same parts with SANA 2K/4K's sin-cos position embedding
    fixtures.write_pipeline_folder(models / "checkpoints" / "tiny_sana_pe_diffusers", interpolation_scale=2)
    pipeline = models / "checkpoints" / "tiny_sana_diffusers"
    # separate parts, as users keep them: DC-AE folder in vae/, Gemma-2 folder in text_encoders/
    (models / "vae" / "tiny_dcae").symlink_to(pipeline / "vae", target_is_directory=True)
    text = models / "text_encoders" / "tiny_gemma2"
    text.mkdir()
    for part in ("text_encoder", "tokenizer"):
        (text / part).symlink_to(pipeline / part, target_is_directory=True)
    config = {"num_cross_attention_heads": 1}  # a custom size stores what its weights cannot tell
    for name, kwargs in TINY_VARIANTS.items():
        sd = fixtures.original_state_dict(64, 2, grid=4, caption_channels=32, in_channels=8, **kwargs)
        if name.endswith(".pth"):
            torch.save({"state_dict": sd, "config": config}, models / "diffusion_models" / name)
        else:
            save_file(sd, models / "checkpoints" / name, metadata={"config": json.dumps(config)})
    wrong = fixtures.original_state_dict(64, 2, grid=4, caption_channels=32, in_channels=16)
    save_file(
        wrong, models / "checkpoints" / "tiny_sana_16ch.safetensors", metadata={"config": json.dumps(config)}
    )
    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
        models / "checkpoints" / "sd15.safetensors",
    )
    (models / "checkpoints" / "truncated_sana.safetensors").write_bytes(
        (models / "checkpoints" / "tiny_sana_1k.safetensors").read_bytes()[:2000]
    )
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "sana_temporal_tiling").symlink_to(PACK_ROOT, target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def registered(comfy, models_dir):
    """The temporary model folders registered with ComfyUI's folder_paths (in-process)."""
    for kind in ("checkpoints", "diffusion_models", "vae", "text_encoders"):
        comfy.folder_paths.add_model_folder_path(kind, str(models_dir / "models" / kind), is_default=True)
    return models_dir


@pytest.fixture(scope="session")
def server(models_dir, tmp_path_factory):
    comfy_server = ComfyServer(
        Path(COMFYUI_PATH).expanduser(), models_dir, tmp_path_factory.mktemp("logs") / "comfyui.log"
    )
    yield comfy_server
    comfy_server.stop()
