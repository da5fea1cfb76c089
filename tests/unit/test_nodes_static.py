"""The node pack without ComfyUI: schemas read statically from nodes/*.py, shipped workflows checked
against them, and the browser's tile-plan geometry (js/) checked against the engine's make_plan."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from temporal_tiling.plan import make_plan

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / "nodes"
WORKFLOWS = ROOT / "workflows"
CATEGORY = "sana/temporal tiling"

DISPLAY_NAMES = {
    "SanaTemporalTilePlanner": "Tile Planner",
    "SanaTemporalBCLACache": "BCLA Cache",
    "SanaTemporalGlobalContext": "Global Context Encoder",
    "SanaTemporalCausalSampler": "Causal SANA Sampler",
    "SanaTemporalTilePrompts": "Tile Prompts",
    "SanaTemporalTileSplit": "Split Into Tiles",
    "SanaTemporalSeamBlender": "Seam Blender",
    "SanaTemporalTileMetrics": "Quality Metrics",
}
WORKFLOW_NAMES = (
    "txt2img_temporal_tiling",
    "txt2img_tile_prompts",
    "upscale_temporal_tiling",
    "upscale_split_img2img_blend",
    "compare_methods",
)

SOCKETS = {
    "Int": "INT",
    "Float": "FLOAT",
    "String": "STRING",
    "Boolean": "BOOLEAN",
    "Combo": "COMBO",
    "Image": "IMAGE",
    "Latent": "LATENT",
    "Model": "MODEL",
    "Vae": "VAE",
    "Clip": "CLIP",
    "Conditioning": "CONDITIONING",
    "Mask": "MASK",
    "TilePlanSocket": "TILE_PLAN",
    "GlobalContextSocket": "GLOBAL_CONTEXT",
    "TileConditioningSocket": "TILE_CONDITIONING",
}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# Stock ComfyUI (v0.3.64) nodes the workflows use: inputs (name -> type) and output types.
CORE = {
    "CLIPTextEncode": ({"text": "STRING", "clip": "CLIP"}, ["CONDITIONING"]),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ["IMAGE"]),
    "VAEDecodeTiled": (
        {
            "samples": "LATENT",
            "vae": "VAE",
            "tile_size": "INT",
            "overlap": "INT",
            "temporal_size": "INT",
            "temporal_overlap": "INT",
        },
        ["IMAGE"],
    ),
    "VAEEncode": ({"pixels": "IMAGE", "vae": "VAE"}, ["LATENT"]),
    "VAEEncodeTiled": (
        {
            "pixels": "IMAGE",
            "vae": "VAE",
            "tile_size": "INT",
            "overlap": "INT",
            "temporal_size": "INT",
            "temporal_overlap": "INT",
        },
        ["LATENT"],
    ),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, []),
    "PreviewImage": ({"images": "IMAGE"}, []),
    "LoadImage": ({"image": "COMBO"}, ["IMAGE", "MASK"]),
    "ImageScale": (
        {"image": "IMAGE", "upscale_method": "COMBO", "width": "INT", "height": "INT", "crop": "COMBO"},
        ["IMAGE"],
    ),
    "ImageScaleBy": ({"image": "IMAGE", "upscale_method": "COMBO", "scale_by": "FLOAT"}, ["IMAGE"]),
    "KSampler": (
        {
            "model": "MODEL",
            "seed": "INT",
            "steps": "INT",
            "cfg": "FLOAT",
            "sampler_name": "COMBO",
            "scheduler": "COMBO",
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "latent_image": "LATENT",
            "denoise": "FLOAT",
        },
        ["LATENT"],
    ),
    "Note": ({}, []),
}
# ComfyUI_ExtraModels' SANA nodes (Efficient-Large-Model fork) that the ExtraModels workflow uses.
EXTRAMODELS = {
    "SanaCheckpointLoader": (
        {"ckpt_name": "COMBO", "model": "COMBO", "dtype": "COMBO", "enable_cfg_passthrough": "BOOLEAN"},
        ["MODEL"],
    ),
    "GemmaLoader": ({"model_name": "COMBO", "device": "COMBO", "dtype": "COMBO"}, ["GEMMA"]),
    "SanaTextEncode": ({"text": "STRING", "GEMMA": "GEMMA"}, ["CONDITIONING"]),
    "ExtraVAELoader": ({"vae_name": "COMBO", "vae_type": "COMBO", "dtype": "COMBO"}, ["VAE"]),
}
KNOWN = CORE | EXTRAMODELS
EXTRAMODELS_WORKFLOW = "extramodels_txt2img_temporal_tiling"
SHIPPED = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
"""Every UI workflow ComfyUI's template browser lists (the .json directly in workflows/)."""


# --- static schema reading -------------------------------------------------------------------------
def _socket(call: ast.Call) -> str | None:
    """`io.Int.Input(...)` / `TilePlanSocket.Output(...)` -> socket type, else None."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in ("Input", "Output"):
        return None
    owner = func.value
    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
    return SOCKETS.get(name)


def _kw(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _const(node) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _name_or_const(node) -> object:
    """A constant's value, or the name of the module constant it refers to."""
    return node.id if isinstance(node, ast.Name) else _const(node)


def _entry(call: ast.Call) -> dict:
    first = call.args[0] if call.args else _kw(call, "id")
    return {
        "name": _const(first),
        "display_name": _const(_kw(call, "display_name")),
        "type": _socket(call),
        "optional": _const(_kw(call, "optional")) is True,
        "tooltip": _kw(call, "tooltip") is not None,
        "control_after_generate": _const(_kw(call, "control_after_generate")) is True,
    }


def _module_sequences(tree: ast.Module) -> dict[str, list[ast.expr]]:
    """Module-level ``NAME = (...)`` / ``[...]`` assignments: what a ``*NAME`` in a schema list expands to."""
    return {
        node.targets[0].id: node.value.elts
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Tuple | ast.List)
    }


def _expanded(elements: list[ast.expr], sequences: dict[str, list[ast.expr]]) -> list[ast.expr]:
    out = []
    for element in elements:
        if isinstance(element, ast.Starred) and isinstance(element.value, ast.Name):
            out += sequences[element.value.id]
        else:
            out.append(element)
    return out


def read_schemas() -> dict[str, dict]:
    """node_id -> {display_name, category, inputs, outputs, module} from every io.Schema(...) in nodes/."""
    schemas: dict[str, dict] = {}
    for path in sorted(NODES.glob("*.py")):
        tree = ast.parse(path.read_text())
        sequences = _module_sequences(tree)
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "Schema"):
                continue
            node_id = _const(_kw(call, "node_id"))
            inputs = [_entry(c) for c in _expanded(getattr(_kw(call, "inputs"), "elts", []), sequences)]
            outputs = [
                _entry(c) for c in getattr(_kw(call, "outputs"), "elts", []) if isinstance(c, ast.Call)
            ]
            schemas[node_id] = {
                "display_name": _const(_kw(call, "display_name")),
                "category": _name_or_const(_kw(call, "category")),
                "inputs": inputs,
                "outputs": outputs,
                "module": path.stem,
            }
    return schemas


SCHEMAS = read_schemas()


def _signature(node_type: str) -> tuple[dict[str, str], list[str]]:
    if node_type in KNOWN:
        return KNOWN[node_type]
    schema = SCHEMAS[node_type]
    return {i["name"]: i["type"] for i in schema["inputs"]}, [o["type"] for o in schema["outputs"]]


def _widget_names(node_type: str) -> list[str]:
    """Widget order of a node in UI format (a seed with control_after_generate adds one value)."""
    if node_type in KNOWN:
        return [n for n, t in KNOWN[node_type][0].items() if t in WIDGETS]
    names = []
    for i in SCHEMAS[node_type]["inputs"]:
        if i["type"] in WIDGETS:
            names.append(i["name"])
            if i["control_after_generate"] or (i["type"] == "INT" and i["name"] in ("seed", "noise_seed")):
                names.append(f"{i['name']}:control_after_generate")
    return names


# --- schema tests ----------------------------------------------------------------------------------
def test_node_ids_display_names_and_category():
    ours = {k: v for k, v in SCHEMAS.items() if k in DISPLAY_NAMES}
    assert {k: v["display_name"] for k, v in ours.items()} == DISPLAY_NAMES
    assert {v["category"] for v in ours.values()} <= {"CATEGORY", CATEGORY}
    assert f'CATEGORY = "{CATEGORY}"' in (NODES / "common.py").read_text()


# Node ids that other SANA packs register. ComfyUI keeps one class per id, so sharing one would hide
# theirs (ComfyUI_ExtraModels by city96 and its Efficient-Large-Model fork, then other SANA packs).
OTHER_SANA_PACK_IDS = frozenset(
    {
        "SanaCheckpointLoader",
        "GemmaLoader",
        "SanaTextEncode",
        "EmptySanaLatentImage",
        "ExtraVAELoader",
        "EmptyDCAELatentImage",
        "SanaResolutionSelect",
        "SanaResolutionCond",
        "ScmModelSampling",
        "SanaVAELoader",
        "SanaCLIPLoader",
        "SanaEmptyLatentImage",
        "SanaLoRALoader",
    }
)
NODE_ID_PREFIX = "SanaTemporal"


def core_node_ids(comfyui: Path) -> set[str]:
    """Node ids of a ComfyUI checkout, read statically: NODE_CLASS_MAPPINGS dict keys and schema node_ids
    in nodes.py, comfy_extras/ and comfy_api_nodes/ (importing them needs ComfyUI's whole runtime)."""
    files = [comfyui / "nodes.py", *(comfyui / "comfy_extras").rglob("*.py")]
    files += (comfyui / "comfy_api_nodes").rglob("*.py")
    ids: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                if any(getattr(t, "id", None) == "NODE_CLASS_MAPPINGS" for t in node.targets):
                    ids |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
            elif (
                isinstance(node, ast.keyword)
                and node.arg == "node_id"
                and isinstance(node.value, ast.Constant)
            ):
                ids.add(node.value.value)
    return ids


def test_node_ids_are_prefixed_and_unused_by_other_sana_packs():
    assert len(SCHEMAS) >= 11
    assert [i for i in SCHEMAS if not i.startswith(NODE_ID_PREFIX)] == []
    assert set(SCHEMAS) & OTHER_SANA_PACK_IDS == set()


def test_front_end_extends_existing_node_ids():
    """js/ finds its nodes by id; a renamed id would silently drop the plan preview."""
    script = (ROOT / "js" / "tile_plan_preview.js").read_text()
    used = set(re.findall(r"""nodeData\.name === ["']([A-Za-z0-9_]+)["']""", script))
    assert used == {"SanaTemporalTilePlanner", "SanaTemporalTileMetrics"}
    assert used <= set(SCHEMAS)


def test_node_ids_unused_by_core_comfyui():
    """Needs a ComfyUI checkout at COMFYUI_PATH; the ids are read from its source without importing it."""
    comfyui = Path(os.environ.get("COMFYUI_PATH", "/nonexistent"))
    if not (comfyui / "nodes.py").is_file():
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to compare with its node ids")
    core = core_node_ids(comfyui)
    assert {"KSampler", "CheckpointLoaderSimple", "VAEDecodeTiled", "ModelSamplingSD3"} <= core
    assert set(SCHEMAS) & core == set()


def test_every_input_and_output_has_a_tooltip():
    missing = [
        f"{node_id}.{entry['name'] or entry['display_name']}"
        for node_id, schema in SCHEMAS.items()
        for entry in schema["inputs"] + schema["outputs"]
        if not entry["tooltip"]
    ]
    assert missing == []
    assert all(entry["type"] for s in SCHEMAS.values() for entry in s["inputs"] + s["outputs"])


def test_package_registers_every_module_with_nodes():
    """nodes/__init__.py gathers the NODES list of every module that defines one."""
    with_nodes = {
        path.stem
        for path in NODES.glob("*.py")
        if path.stem != "__init__"
        and any(
            any(
                getattr(t, "id", None) == "NODES" for t in getattr(n, "targets", [getattr(n, "target", None)])
            )
            for n in ast.parse(path.read_text()).body
        )
    }
    package = ast.parse((NODES / "__init__.py").read_text())
    relative = [n for n in ast.walk(package) if isinstance(n, ast.ImportFrom) and n.level == 1]
    imported = {alias.name for n in relative for alias in n.names}
    assigns = [n for n in ast.walk(package) if isinstance(n, ast.Assign)]
    listed = next(n.value for n in assigns if getattr(n.targets[0], "id", "") == "modules")
    assert with_nodes >= {"loaders", "planner", "bcla_cache", "context", "sampler", "tiles", "metrics"}
    assert with_nodes <= imported
    assert with_nodes == {e.id for e in listed.elts}


# --- workflows -------------------------------------------------------------------------------------
def _load(name: str) -> tuple[dict, dict]:
    return (
        json.loads((WORKFLOWS / f"{name}.json").read_text()),
        json.loads((WORKFLOWS / "api" / f"{name}_api.json").read_text()),
    )


@pytest.mark.parametrize("name", (*WORKFLOW_NAMES, EXTRAMODELS_WORKFLOW))
def test_ui_workflow_uses_existing_nodes_and_consistent_links(name):
    ui, _ = _load(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    for node in nodes.values():
        assert node["type"] in KNOWN or node["type"] in SCHEMAS, f"unknown node type {node['type']}"
    seen = set()
    for link_id, source, slot, target, target_slot, socket in ui["links"]:
        assert link_id not in seen
        seen.add(link_id)
        src, dst = nodes[source], nodes[target]
        out, inp = src["outputs"][slot], dst["inputs"][target_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == inp["type"] == socket
        inputs, outputs = _signature(dst["type"]), _signature(src["type"])
        assert inputs[0][inp["name"]] == socket, f"{dst['type']}.{inp['name']} is not {socket}"
        assert outputs[1][slot] == socket
    # Every declared link appears in the links table, and every required socket input is connected.
    for node in nodes.values():
        for inp in node.get("inputs", []):
            assert inp.get("link") is None or inp["link"] in seen
        for out in node.get("outputs", []):
            assert all(link in seen for link in out.get("links") or [])
        if node["type"] in EXTRAMODELS:
            assert len(node["widgets_values"]) == len(_widget_names(node["type"]))
        if node["type"] in SCHEMAS:
            connected = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
            required = {
                i["name"]
                for i in SCHEMAS[node["type"]]["inputs"]
                if not i["optional"] and i["type"] not in WIDGETS
            }
            assert required <= connected, f"{node['type']} misses {required - connected}"
            assert len(node["widgets_values"]) == len(_widget_names(node["type"]))
    assert ui["last_link_id"] >= max(seen) and ui["last_node_id"] >= max(nodes)


@pytest.mark.parametrize("name", (*WORKFLOW_NAMES, EXTRAMODELS_WORKFLOW))
def test_api_workflow_agrees_with_ui_workflow(name):
    ui, api = _load(name)
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] != "Note"}
    assert set(api) == set(nodes)
    links = {link[0]: link for link in ui["links"]}
    for node_id, node in nodes.items():
        entry = api[node_id]
        assert entry["class_type"] == node["type"]
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, source, slot, *_ = links[inp["link"]]
                assert entry["inputs"][inp["name"]] == [str(source), slot], f"{node_id}.{inp['name']}"
        if node["type"] in SCHEMAS or node["type"] in EXTRAMODELS:
            names = _widget_names(node["type"])
            widgets = dict(zip(names, node["widgets_values"], strict=True))
            for key, value in entry["inputs"].items():
                if not isinstance(value, list):
                    assert widgets[key] == value, f"{node_id}.{key}: UI {widgets[key]!r} != API {value!r}"
            assert {k for k in names if ":" not in k} <= set(entry["inputs"])


def test_workflows_use_the_embedded_model():
    for name in WORKFLOW_NAMES:
        _, api = _load(name)
        loaders = [n for n in api.values() if n["class_type"] == "SanaTemporalCheckpointLoader"]
        assert loaders, f"{name} loads no SANA model"
        assert all("embedded" in json.dumps(n["inputs"]).lower() for n in loaders)


def _embedded_compression() -> int:
    config = json.loads((ROOT / "temporal_tiling/embedded/seamlab-sana/vae/config.json").read_text())
    return 2 ** (len(config["encoder_block_out_channels"]) - 1)


def _plan_of(api: dict, node_id: str):
    w = api[node_id]["inputs"]
    sizes_px = {f"{k}_px": w[k] for k in ("width", "height", "tile_width", "tile_height", "overlap")}
    return make_plan(
        **sizes_px,
        compression=_embedded_compression(),
        order=w["order"],
        seed=w["shuffle_seed"],
        fit=w["fit"],
    )


def test_txt2img_is_guide_first_and_its_note_tells_the_plan():
    """The shipped text-to-image graph runs mode = guided, decodes its whole-scene pass into Quality
    Metrics' guide, and its note states the plan the planner really makes."""
    ui, api = _load("txt2img_temporal_tiling")
    (sampler_id, sampler), *others = [
        (k, n) for k, n in api.items() if n["class_type"] == "SanaTemporalCausalSampler"
    ]
    assert others == [] and sampler["inputs"]["mode"] == "guided"
    (metrics,) = (n for n in api.values() if n["class_type"] == "SanaTemporalTileMetrics")
    decode = api[metrics["inputs"]["guide"][0]]
    assert decode["class_type"] == "VAEDecode" and decode["inputs"]["samples"] == [sampler_id, 2]
    canvas = _plan_of(api, sampler["inputs"]["tile_plan"][0])
    (note,) = (n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note")
    tiles = f"{canvas.cols}×{canvas.rows} tiles of {canvas.tile_width_px}×{canvas.tile_height_px} px"
    assert len(canvas) > 1 and tiles in note and "mode = guided" in note, note


def test_extramodels_note_tells_the_plan_and_the_fork():
    ui, api = _load(EXTRAMODELS_WORKFLOW)
    (planner,) = (n for n in api.values() if n["class_type"] == "SanaTemporalTilePlanner")
    w = planner["inputs"]
    sizes_px = {f"{k}_px": w[k] for k in ("width", "height", "tile_width", "tile_height", "overlap")}
    # the DC-AE: 32 px per cell
    canvas = make_plan(**sizes_px, compression=32, order=w["order"], seed=w["shuffle_seed"], fit=w["fit"])
    (note,) = (n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note")
    assert f"{canvas.cols}×{canvas.rows} tiles of {canvas.tile_width_px}×{canvas.tile_height_px} px" in note
    assert "Efficient-Large-Model fork" in note and "dcae-f32c32-sana-1.0" in note


def test_compare_methods_runs_every_mode_on_one_plan_against_one_whole_scene_pass():
    """The comparison graph shows guided beside the baselines on the same plan, and every row's Quality
    Metrics measures layout against the guided sampler's decoded whole-scene pass; its note tells the plan."""
    ui, api = _load("compare_methods")
    samplers = {k: n for k, n in api.items() if n["class_type"] == "SanaTemporalCausalSampler"}
    modes = sorted(n["inputs"]["mode"] for n in samplers.values())
    assert modes == ["causal", "guided", "independent", "multidiffusion"]
    (plan_id,) = {n["inputs"]["tile_plan"][0] for n in samplers.values()}
    (guided_id,) = (k for k, n in samplers.items() if n["inputs"]["mode"] == "guided")
    metrics = [n for n in api.values() if n["class_type"] == "SanaTemporalTileMetrics"]
    assert len(metrics) == len(samplers)
    for node in metrics:
        assert node["inputs"]["tile_plan"] == [plan_id, 0]
        decode = api[node["inputs"]["guide"][0]]
        assert decode["class_type"] == "VAEDecode" and decode["inputs"]["samples"] == [guided_id, 2]
    canvas = _plan_of(api, plan_id)
    (note,) = (n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note")
    assert f"{canvas.cols}×{canvas.rows} tiles of {canvas.tile_width_px}×{canvas.tile_height_px} px" in note
    assert all(mode in note for mode in ("independent", "MultiDiffusion", "causal", "guided")), note


def _least_drawn_height(node: dict) -> int:
    """LiteGraph's computeSize: 20 px per socket row, 24 px per widget and 8 below them."""
    sockets = [i for i in node["inputs"] if i["type"] not in WIDGETS]
    height = 20 * max(len(sockets), len(node["outputs"]), 1)
    widgets = len(_widget_names(node["type"])) if node["type"] in SCHEMAS or node["type"] in KNOWN else 0
    return height + (24 * widgets + 8 if widgets else 0)


def test_template_browser_lists_only_ui_workflows_each_with_a_thumbnail():
    """ComfyUI lists every .json directly in a pack's workflows/ folder as a template (an API file opens as
    an empty canvas there) and shows the .jpg of the same name as its thumbnail; API files live in api/."""
    assert set(SHIPPED) >= {*WORKFLOW_NAMES, EXTRAMODELS_WORKFLOW}
    for name in SHIPPED:
        ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
        assert ui["nodes"] and ui["version"], name
        assert (WORKFLOWS / "api" / f"{name}_api.json").is_file(), name
        with Image.open(WORKFLOWS / f"{name}.jpg") as thumbnail:
            assert thumbnail.format == "JPEG" and min(thumbnail.size) >= 200, name


@pytest.mark.parametrize("name", SHIPPED)
def test_saved_nodes_are_as_tall_as_drawn_and_do_not_overlap(name):
    ui, _ = _load(name)
    title = 30  # the title bar is drawn above pos
    boxes = []
    for node in ui["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        assert h >= _least_drawn_height(node), f"{node['type']} {node['id']} saved {h} px tall"
        if node["type"] == "SanaTemporalCausalSampler":
            assert h >= 634, "the sampler with its live preview is drawn 634 px tall"
        boxes.append((node["id"], x, y - title, x + w, y + h))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1 :]:
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1), f"nodes {a} and {b} overlap"


# --- the browser's plan geometry ----------------------------------------------------------------
CONFIGS = [
    (2048, 1024, 1024, 1024, 256, 32, "raster", "shift"),
    (2048, 1024, 1024, 1024, 64, 32, "raster", "grow"),
    (2048, 1536, 1024, 768, 128, 32, "serpentine", "shift"),
    (4096, 2048, 1024, 1024, 96, 32, "serpentine", "grow"),
    (1280, 1280, 512, 512, 128, 32, "spiral", "shift"),
    (1280, 1280, 512, 512, 128, 32, "spiral", "grow"),
    (640, 384, 128, 128, 32, 8, "center_out", "shift"),
    (512, 256, 512, 256, 0, 8, "raster", "grow"),
    (1000, 512, 512, 512, 128, 8, "raster", "shift"),
    (2048, 1024, 1024, 1024, 1024, 32, "raster", "shift"),
    (512, 512, 1024, 512, 64, 32, "raster", "grow"),
]


def _js_plans(configs) -> list[dict]:
    source = (ROOT / "js" / "tile_plan_preview.js").read_text()
    body = "\n".join(line for line in source.splitlines() if not line.startswith("import "))
    call = "([width, height, tileWidth, tileHeight, overlap, compression, order, fit]) => planFromWidgets("
    call += "{width, height, tileWidth, tileHeight, overlap, compression, order, fit})"
    script = (
        f"const app = {{ registerExtension() {{}} }};\n{body}\nconst configs = {json.dumps(configs)};\n"
        f"console.log(JSON.stringify(configs.map({call})));"
    )
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="node (JavaScript runtime) is not installed")
def test_browser_plan_matches_make_plan():
    for config, js in zip(CONFIGS, _js_plans(CONFIGS), strict=True):
        width, height, tw, th, overlap, c, order, fit = config
        try:
            plan = make_plan(
                width_px=width,
                height_px=height,
                tile_width_px=tw,
                tile_height_px=th,
                overlap_px=overlap,
                compression=c,
                order=order,
                fit=fit,
            )
        except ValueError:
            assert "error" in js, f"{config}: the browser draws a plan the engine refuses"
            continue
        assert "error" not in js, f"{config}: {js.get('error')}"
        expected = [[t.x * c, t.y * c, t.width * c, t.height * c] for t in plan.tiles]
        assert js["tiles"] == expected, config
        assert (js["width"], js["height"]) == (plan.width_px, plan.height_px)
