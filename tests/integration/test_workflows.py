"""The pack inside a running ComfyUI server: it imports cleanly and registers exactly its nodes, every
shipped API workflow runs through /prompt + /history and writes its outputs, the UI workflows only use
node types the server knows, and bad inputs come back as validation errors on the right node."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from sana_comfy import PACK_ROOT

WORKFLOWS = (
    "txt2img_temporal_tiling",
    "txt2img_tile_prompts",
    "upscale_temporal_tiling",
    "upscale_split_img2img_blend",
    "compare_methods",
)
EMBEDDED_ENTRY = "seamlab-sana (embedded)"
TINY = "tiny_sana_diffusers/"
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def workflow(name: str, api: bool = True) -> dict:
    folder = PACK_ROOT / "workflows" / ("api" if api else "")
    return json.loads((folder / f"{name}{'_api' if api else ''}.json").read_text())


def pack_node_ids() -> set[str]:
    """Every node id the pack's modules declare (``node_id="..."`` in nodes/*.py)."""
    pattern = re.compile(r"""node_id\s*=\s*["']([A-Za-z0-9_]+)["']""")
    return {m for path in (PACK_ROOT / "nodes").glob("*.py") for m in pattern.findall(path.read_text())}


def with_model(graph: dict, ckpt: str) -> dict:
    graph = copy.deepcopy(graph)
    for node in graph.values():
        if node["class_type"] == "SanaTemporalCheckpointLoader":
            node["inputs"]["ckpt_name"] = ckpt
    return graph


@pytest.fixture(scope="module")
def comfy_server(server, models_dir):
    """The session server, with ComfyUI's example picture in its input folder (as on a fresh install)."""
    source = Path(os.environ["COMFYUI_PATH"]).expanduser() / "input" / "example.png"
    (models_dir / "input").mkdir(exist_ok=True)
    shutil.copy(source, models_dir / "input" / "example.png")
    return server


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get("/object_info")


def _embedded_available(object_info) -> bool:
    kind, options = object_info["SanaTemporalCheckpointLoader"]["input"]["required"]["ckpt_name"][:2]
    choices = options.get("options", []) if kind == "COMBO" else kind  # schema API or classic combo
    return EMBEDDED_ENTRY in choices


def test_pack_imports_cleanly_and_registers_exactly_its_nodes(comfy_server, object_info):
    log = comfy_server.log.read_text(errors="replace")
    assert "IMPORT FAILED" not in log, log[-3000:]
    ours = {
        name for name, info in object_info.items() if info["python_module"].endswith("sana_temporal_tiling")
    }
    assert ours == pack_node_ids()
    loaders = {"SanaTemporalCheckpointLoader", "SanaTemporalVAELoader", "SanaTemporalTextEncoderLoader"}
    for name in ours - loaders:
        info = object_info[name]
        assert info["category"] == "sana/temporal tiling"
        for group in ("required", "optional"):
            for key, spec in info["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{key} has no tooltip"
        assert all(info["output_tooltips"]), name


def test_template_browser_lists_the_ui_workflows_with_their_thumbnails(comfy_server):
    """Templates → Custom Nodes: ComfyUI lists the pack's UI workflows (no API file, which opened as an
    empty canvas) and serves the .jpg thumbnail the browser asks for beside each."""
    import urllib.request

    listed = comfy_server.get("/workflow_templates")["sana_temporal_tiling"]
    shipped = {path.stem for path in (PACK_ROOT / "workflows").glob("*.json")}
    assert set(listed) == shipped and not any(name.endswith("_api") for name in listed), listed
    for name in listed:
        url = f"{comfy_server.url}/api/workflow_templates/sana_temporal_tiling/{name}.jpg"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"] == "image/jpeg" and response.read(3) == b"\xff\xd8\xff"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_uses_only_node_types_the_server_knows(object_info, name):
    types = {node["type"] for node in workflow(name, api=False)["nodes"]}
    assert types - FRONTEND_ONLY <= set(object_info)


def _run_and_check(comfy_server, models_dir, graph: dict) -> dict:
    entry = comfy_server.run(graph, timeout=600)
    assert entry.get("status", {}).get("status_str") == "success", json.dumps(entry)[:3000]
    outputs = entry["outputs"]
    for node_id, node in graph.items():
        if node["class_type"] == "SaveImage":
            images = outputs[node_id]["images"]
            assert images, node_id
            for image in images:
                assert (models_dir / "output" / image["subfolder"] / image["filename"]).is_file()
        if node["class_type"] == "SanaTemporalTileMetrics":
            report = outputs[node_id]["report_file"][0]
            saved = json.loads((models_dir / "output" / report).read_text())
            assert saved["report"]["gradient_ratio_mean"] > 0 and "verdict" in saved["report"]
            assert "| metric | seams | floor" in outputs[node_id]["text"][0]
    return entry


@pytest.mark.parametrize("name", WORKFLOWS)
def test_api_workflow_runs_as_shipped(comfy_server, models_dir, object_info, name):
    """The shipped graph with the embedded seam-lab model, exactly as a fresh install runs it."""
    if not _embedded_available(object_info):
        pytest.skip("the embedded seam-lab model is not built into temporal_tiling/embedded/seamlab-sana yet")
    _run_and_check(comfy_server, models_dir, workflow(name))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_api_workflow_graph_runs_with_a_tiny_model(comfy_server, models_dir, name):
    """The same graphs on a tiny SANA with the real layout (4× VAE): wiring and every node execute."""
    graph = with_model(workflow(name), TINY)
    for node in graph.values():
        if node["class_type"] in ("SanaTemporalCausalSampler", "KSampler"):
            node["inputs"]["steps"] = 2
    _run_and_check(comfy_server, models_dir, graph)


# --- validation before anything runs ----------------------------------------------------------------
PLANNER, SAMPLER = "5", "6"


def _refused(comfy_server, graph: dict) -> dict:
    """The answer to a graph with a validation error. ComfyUI still queues the outputs that do not depend
    on a failing node (HTTP 200 + node_errors: the browser only outlines the node in red); with none left
    it answers 400, which the browser shows as a message."""
    answer = comfy_server.post("/prompt", {"prompt": graph, "client_id": "sana-tests"})
    assert answer.get("node_errors"), answer
    return answer


@pytest.mark.parametrize(
    ("node", "changes", "message"),
    [
        (PLANNER, {"tile_width": 512}, "larger than the canvas"),
        (PLANNER, {"overlap": 128}, "must be smaller than the tile"),
        (PLANNER, {"overlap": 30}, "not a multiple of the VAE's compression factor"),
        (SAMPLER, {"denoise": 0.5}, "connect latent_image"),
        ("10", {"color_correction": "reference"}, "needs the reference input connected"),
        (SAMPLER, {"sampler_name": "foo"}, "sampler_name = 'foo' is not one of its choices"),
        (SAMPLER, {"scheduler": "bar"}, "scheduler = 'bar' is not one of its choices"),
        (PLANNER, {"width": 20000}, "width = 20000 is above its maximum 16384"),
        (PLANNER, {"tile_size": "big"}, "tile_size = 'big' is not one of its choices"),
        (
            PLANNER,
            {"width": 16384, "height": 16384, "tile_width": 64, "tile_height": 64, "overlap": 0},
            "65536 tiles",
        ),
        ("4", {"strength": 100.0}, "strength = 100.0 is above its maximum 8.0"),
        ("1", {"weight_dtype": "fp8"}, "weight_dtype = 'fp8' is not one of its choices"),
        (SAMPLER, {"steps": "abc"}, "steps, abc, invalid literal for int()"),  # ComfyUI's own conversion
        (SAMPLER, {"steps": 0}, "steps"),  # ComfyUI's own range check: "Value 0 smaller than min of 1"
        (PLANNER, {"image": ["1", 2]}, "received_type(VAE) mismatch input_type(IMAGE)"),  # link types
    ],
)
def test_bad_input_is_a_validation_error_on_its_node(comfy_server, node, changes, message):
    graph = with_model(workflow("txt2img_temporal_tiling"), TINY)
    if node == PLANNER:
        del graph[PLANNER]["inputs"]["vae"]  # compression from the widget: checked before the run
    graph[node]["inputs"].update(changes)
    answer = _refused(comfy_server, graph)
    errors = answer["node_errors"]
    assert set(errors) == {node}, errors
    assert len(errors[node]["errors"]) == 1, errors  # one message, not one per input
    details = errors[node]["errors"][0]["details"]
    assert message in details, details
    assert errors[node]["class_type"] == graph[node]["class_type"]
    if node != "10":  # every output depends on it: nothing runs, the browser shows the message
        assert answer["http_error"] == 400 and "prompt_id" not in answer, answer


def _saved(models_dir, prefix: str) -> list[Path]:
    return list((models_dir / "output").glob(f"{prefix}*"))


def test_plan_for_another_compression_fails_on_the_sampler_and_writes_nothing(comfy_server, models_dir):
    """A plan from the compression widget (no VAE: 32×) for the tiny 4× model sampled a canvas of the
    wrong size in pixels."""
    graph = with_model(workflow("txt2img_temporal_tiling"), TINY)
    graph[PLANNER]["inputs"].pop("vae", None)
    graph[PLANNER]["inputs"].update(compression=32, width=384, height=256, tile_width=128, tile_height=128)
    for node in graph.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = "refused_compression/out"
    entry = comfy_server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "error", json.dumps(entry)[:2000]
    failure = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert graph[failure["node_id"]]["class_type"] == "SanaTemporalCausalSampler"
    assert "but this model's VAE has 4 px per latent cell" in failure["exception_message"]
    assert not _saved(models_dir, "refused_compression")
