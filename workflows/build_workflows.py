"""Writes the shipped example workflows, each in UI format (drag into ComfyUI) and API format (scripts).

One graph description per workflow produces both files, so they always agree. The UI files sit in
``workflows/``, where ComfyUI's template browser lists them (Templates → Custom Nodes: it lists the
``*.json`` directly inside a custom node's ``workflows/`` or ``example_workflows/`` folder, with the
``.jpg`` of the same name as thumbnail); the API files sit one level down in ``workflows/api/``, which
the browser does not read (an API file opened there is an empty canvas). All use the pack's
embedded seam-lab model, so they run as shipped on a fresh install. Run from the repository root:
``python workflows/build_workflows.py``.
"""

from __future__ import annotations

import colorsys
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from temporal_tiling.options import (  # noqa: E402  (the pack root is not installed)
    DEFAULT_GUIDE_DENOISE,
    DEFAULT_TILE_PROMPT_SIGMA,
    DEFAULT_WORD_SIGMA,
    DEFAULT_WORD_THRESHOLD,
    HALO_AUTO,
)
from temporal_tiling.plan import TilePlan, make_plan  # noqa: E402

EMBEDDED = "seamlab-sana (embedded)"
FROM_CHECKPOINT = "(from checkpoint folder)"
PROMPT = "a blue to pink sky with one sun at top left"
UPSCALE_PROMPT = "a blue sky"
"""The upscale workflow refines ComfyUI's example drawing (a figure on a green hill under a blue sky);
the embedded model knows only seam-lab words, and a prompt naming a sun turns the hill into suns."""
TILE_PROMPTS_SCENE = "a blue to pink sky"
TILE_PROMPTS_TEXT = "one sun at top left"
"""Tile 1 (top left) hears "a blue to pink sky, one sun at top left"; the other tiles the sky alone."""
EMBEDDED_COMPRESSION = 8
"""Pixels per latent cell of the embedded model's autoencoder (the Tile Planner reads it from the VAE)."""

# Socket inputs (name, type) in schema order and outputs (name, type) of every node type used.
SOCKETS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "SanaTemporalCheckpointLoader": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "SanaTemporalBCLACache": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "SanaTemporalTilePlanner": (
        [("image", "IMAGE"), ("latent", "LATENT"), ("vae", "VAE"), ("model", "MODEL")],
        [("TILE_PLAN", "TILE_PLAN"), ("preview", "IMAGE")],
    ),
    "SanaTemporalCausalSampler": (
        [
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("tile_plan", "TILE_PLAN"),
            ("latent_image", "LATENT"),
            ("global_context", "GLOBAL_CONTEXT"),
            ("vae", "VAE"),
            ("tile_conditioning", "TILE_CONDITIONING"),
        ],
        [("canvas", "LATENT"), ("tiles", "LATENT"), ("guide", "LATENT")],
    ),
    "SanaTemporalTilePrompts": (
        [("clip", "CLIP"), ("tile_plan", "TILE_PLAN")],
        [("positive", "CONDITIONING"), ("tile_conditioning", "TILE_CONDITIONING")],
    ),
    "SanaTemporalGlobalContext": (
        [("image", "IMAGE"), ("vae", "VAE"), ("latent", "LATENT")],
        [("GLOBAL_CONTEXT", "GLOBAL_CONTEXT")],
    ),
    "SanaTemporalTileSplit": (
        [("tile_plan", "TILE_PLAN"), ("image", "IMAGE"), ("latent", "LATENT")],
        [("image_tiles", "IMAGE"), ("latent_tiles", "LATENT")],
    ),
    "SanaTemporalSeamBlender": (
        [("images", "IMAGE"), ("tile_plan", "TILE_PLAN"), ("reference", "IMAGE")],
        [("IMAGE", "IMAGE")],
    ),
    "SanaTemporalTileMetrics": (
        [
            ("image", "IMAGE"),
            ("tile_plan", "TILE_PLAN"),
            ("tiles", "IMAGE"),
            ("reference", "IMAGE"),
            ("guide", "IMAGE"),
        ],
        [
            ("report", "STRING"),
            ("gradient_ratio", "FLOAT"),
            ("delta_e", "FLOAT"),
            ("overlap_psnr", "FLOAT"),
            ("heatmap", "IMAGE"),
            ("line_jump", "FLOAT"),
            ("seamless", "BOOLEAN"),
        ],
    ),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], [("LATENT", "LATENT")]),
    "VAEDecodeTiled": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "VAEEncodeTiled": ([("pixels", "IMAGE"), ("vae", "VAE")], [("LATENT", "LATENT")]),
    "KSampler": (
        [
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
        ],
        [("LATENT", "LATENT")],
    ),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "ImageScale": ([("image", "IMAGE")], [("IMAGE", "IMAGE")]),
    "ImageScaleBy": ([("image", "IMAGE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "Note": ([], []),
    # ComfyUI_ExtraModels (Efficient-Large-Model fork; city96's original takes the same first widgets)
    "SanaCheckpointLoader": ([], [("model", "MODEL")]),
    "GemmaLoader": ([], [("GEMMA", "GEMMA")]),
    "SanaTextEncode": ([("GEMMA", "GEMMA")], [("CONDITIONING", "CONDITIONING")]),
    "ExtraVAELoader": ([], [("VAE", "VAE")]),
}
UI_ONLY = object()
"""Marks a widget value the UI stores but the API prompt does not (seed's control_after_generate)."""


# How the ComfyUI front end (LiteGraph ``computeSize``) sizes a node: one 20 px row per socket on
# the longer side, 20 px + 4 px spacing per widget, 8 px below the widgets; a multi-line text box is
# at least 50 px; an image shown on the node (saved/previewed images, the sampler's live preview)
# adds a 190 px preview plus its widget row. The title bar sits above ``pos``.
SLOT_HEIGHT, WIDGET_HEIGHT, WIDGETS_PAD, TEXT_BOX_HEIGHT = 20, 24, 8, 54
IMAGE_PREVIEW_HEIGHT = 212
TITLE_HEIGHT = 30
MULTILINE_NODES = {"CLIPTextEncode", "Note", "SanaTemporalTilePrompts"}
EXTRA_HEIGHT = {
    "SanaTemporalTilePlanner": 208,  # js/tile_plan_preview.js: PREVIEW_HEIGHT + MARGIN
    "SanaTemporalTileMetrics": 128,  # js/tile_plan_preview.js: REPORT_HEIGHT + MARGIN
    "SanaTemporalCausalSampler": IMAGE_PREVIEW_HEIGHT,
    "KSampler": IMAGE_PREVIEW_HEIGHT,
    "SaveImage": IMAGE_PREVIEW_HEIGHT,
    "PreviewImage": IMAGE_PREVIEW_HEIGHT,
    "LoadImage": IMAGE_PREVIEW_HEIGHT,
}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: list[tuple[object, object]] = field(default_factory=list)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] = (320, 200)


def drawn_height(node: Node) -> int:
    """The least height the front end draws ``node`` at (below its title bar)."""
    inputs, outputs = SOCKETS[node.type]
    height = max(len(inputs), len(outputs), 1) * SLOT_HEIGHT
    if node.widgets:
        per_widget = TEXT_BOX_HEIGHT if node.type in MULTILINE_NODES else WIDGET_HEIGHT
        height += len(node.widgets) * per_widget + WIDGETS_PAD
    return height + EXTRA_HEIGHT.get(node.type, 0)


def loader(node_id: int, pos) -> Node:
    widgets = [
        ("ckpt_name", EMBEDDED),
        ("vae_name", FROM_CHECKPOINT),
        ("text_encoder_name", FROM_CHECKPOINT),
        ("weight_dtype", "default"),
        ("prompt_template", "auto"),
    ]
    return Node(node_id, "SanaTemporalCheckpointLoader", pos, widgets, size=(340, 180))


def text(node_id: int, pos, prompt: str, title: str) -> Node:
    return Node(node_id, "CLIPTextEncode", pos, [("text", prompt)], {"clip": (1, 1)}, title, (340, 120))


def planner(
    node_id: int,
    pos,
    size=(384, 256),
    tile=(128, 128),
    overlap=32,
    title=None,
    compression=EMBEDDED_COMPRESSION,
    **links,
) -> Node:
    widgets = [
        ("width", size[0]),
        ("height", size[1]),
        ("tile_width", tile[0]),
        ("tile_height", tile[1]),
        ("overlap", overlap),
        ("fit", "grow"),
        ("order", "raster"),
        ("shuffle_seed", 0),
        ("compression", compression),
        ("tile_size", "manual"),
        ("max_tiles", 1024),
    ]
    return Node(node_id, "SanaTemporalTilePlanner", pos, widgets, links, title, size=(340, 560))


def sampler(
    node_id: int, pos, model: tuple[int, int], mode: str, title: str, steps: int = 12, **links
) -> Node:
    widgets = [
        ("seed", 42),
        (UI_ONLY, "fixed"),
        ("steps", steps),
        ("cfg", 4.0),
        ("sampler_name", "euler"),
        ("scheduler", "simple"),
        ("denoise", 1.0),
        ("mode", mode),
        ("lock_feather", 2),
        ("lock_margin", 1),
        ("lock_release", 0.0),
        ("release_band", 0),
        ("batch_size", 1),
        ("guide_denoise", DEFAULT_GUIDE_DENOISE),
        ("tile_steps", 0),
        ("seam_refine", 0.0),
        ("halo", HALO_AUTO),
    ]
    wires = {"model": model, "positive": (2, 0), "negative": (3, 0), "tile_plan": (5, 0), **links}
    return Node(node_id, "SanaTemporalCausalSampler", pos, widgets, wires, title, (400, 380))


def bcla_cache(node_id: int, pos) -> Node:
    widgets = [
        ("mode", "cumulative"),
        ("strength", 1.0),
        ("source", "synchronous"),
        ("decay", 0.5),
        ("record_locked", True),
    ]
    return Node(node_id, "SanaTemporalBCLACache", pos, widgets, {"model": (1, 0)}, size=(320, 220))


def metrics(node_id: int, pos, prefix: str, **links) -> Node:
    widgets = [("filename_prefix", prefix)]
    return Node(node_id, "SanaTemporalTileMetrics", pos, widgets, links, size=(420, 300))


def note(node_id: int, pos, body: str) -> Node:
    return Node(node_id, "Note", pos, [(UI_ONLY, body)], size=(340, 260))


# --- the three workflows ---------------------------------------------------------------------------
def planned(node: Node) -> TilePlan:
    """The plan a Tile Planner node makes from its widgets; its compression widget is the VAE's own
    (the embedded model's 8, the DC-AE's 32), which the connected VAE gives it at run time."""
    w = dict(node.widgets)
    sizes_px = {f"{k}_px": w[k] for k in ("width", "height", "tile_width", "tile_height", "overlap")}
    return make_plan(
        **sizes_px, compression=w["compression"], order=w["order"], seed=w["shuffle_seed"], fit=w["fit"]
    )


def describe(plan: TilePlan) -> str:
    tiles = "one tile" if len(plan) == 1 else f"{plan.cols}×{plan.rows} tiles"
    return f"{plan.width_px}×{plan.height_px} px as {tiles} of {plan.tile_width_px}×{plan.tile_height_px} px"


def txt2img() -> list[Node]:
    canvas = planner(5, (400, 40), vae=(1, 2))
    plan = planned(canvas)
    return [
        loader(1, (20, 40)),
        text(2, (20, 300), PROMPT, "positive"),
        text(3, (20, 470), "", "negative"),
        bcla_cache(4, (400, 680)),
        canvas,
        sampler(6, (800, 40), (4, 0), "guided", "Causal SANA Sampler (guided)"),
        Node(7, "VAEDecode", (1240, 40), links={"samples": (6, 0), "vae": (1, 2)}, size=(220, 60)),
        Node(
            8,
            "SaveImage",
            (1700, 40),
            [("filename_prefix", "sana_tiling/txt2img_canvas")],
            {"images": (7, 0)},
            size=(420, 360),
        ),
        Node(
            9,
            "VAEDecode",
            (1240, 150),
            links={"samples": (6, 1), "vae": (1, 2)},
            title="decode tiles",
            size=(220, 60),
        ),
        Node(
            10,
            "SanaTemporalSeamBlender",
            (1240, 260),
            [("method", "feather"), ("ramp", "cosine"), ("color_correction", "none"), ("batch_size", 1)],
            {"images": (9, 0), "tile_plan": (5, 0)},
            size=(320, 160),
        ),
        Node(
            11,
            "SaveImage",
            (1700, 450),
            [("filename_prefix", "sana_tiling/txt2img_blended")],
            {"images": (10, 0)},
            size=(420, 360),
        ),
        metrics(
            12,
            (1240, 590),
            "sana_tiling/txt2img_metrics",
            image=(7, 0),
            tile_plan=(5, 0),
            tiles=(9, 0),
            guide=(18, 0),
        ),
        note(
            14,
            (20, 640),
            f"Temporal tiling, text to image, guide first. The sampler (mode = guided) renders the whole "
            f"scene at the tile's size in one pass, enlarges it, and generates the canvas from it at "
            f"{describe(plan)} (overlap ≥ {dict(canvas.widgets)['overlap']} px), one tile after another in "
            "the Tile Planner's order, at guide_denoise: the canvas keeps the whole-scene layout. Each "
            "tile keeps what the earlier ones made in the overlap and sees their attention statistics "
            "(and the whole-scene pass's) through the BCLA Cache. Quality Metrics compares the canvas "
            "with the decoded whole-scene pass (layout). Runs on CPU with the pack's embedded seam-lab "
            "model. For a real SANA checkpoint pick it in Load SANA and set the planner to e.g. "
            "4096×2048 with 1024 px tiles.",
        ),
        Node(
            18,
            "VAEDecode",
            (1240, 480),
            links={"samples": (6, 2), "vae": (1, 2)},
            title="decode whole-scene pass",
            size=(220, 60),
        ),
    ]


def tile_prompts() -> list[Node]:
    """Text to image where only the tiles that should show the sun are told about it."""
    canvas = planner(5, (400, 40), vae=(1, 2))
    plan = planned(canvas)
    prompts = Node(
        2,
        "SanaTemporalTilePrompts",
        (20, 300),
        [
            ("prompt", TILE_PROMPTS_SCENE),
            ("tile_prompts", TILE_PROMPTS_TEXT),
            ("combine", "append"),
            ("automatic", False),
            ("word_threshold", DEFAULT_WORD_THRESHOLD),
            ("tile_prompt_sigma", DEFAULT_TILE_PROMPT_SIGMA),
            ("word_sigma", DEFAULT_WORD_SIGMA),
        ],
        {"clip": (1, 1), "tile_plan": (5, 0)},
        size=(340, 220),
    )
    sample = sampler(
        6, (800, 40), (4, 0), "causal", "Causal SANA Sampler (tile prompts)", tile_conditioning=(2, 1)
    )
    sample.links["positive"] = (2, 0)
    return [
        loader(1, (20, 40)),
        prompts,
        text(3, (20, 770), "", "negative"),
        bcla_cache(4, (400, 680)),
        canvas,
        sample,
        Node(7, "VAEDecode", (1240, 40), links={"samples": (6, 0), "vae": (1, 2)}, size=(220, 60)),
        Node(
            8,
            "SaveImage",
            (1700, 40),
            [("filename_prefix", "sana_tiling/tile_prompts_canvas")],
            {"images": (7, 0)},
            size=(420, 360),
        ),
        Node(
            9,
            "VAEDecode",
            (1240, 150),
            links={"samples": (6, 1), "vae": (1, 2)},
            title="decode tiles",
            size=(220, 60),
        ),
        metrics(
            12, (1240, 260), "sana_tiling/tile_prompts_metrics", image=(7, 0), tile_plan=(5, 0), tiles=(9, 0)
        ),
        Node(13, "PreviewImage", (400, 960), links={"images": (5, 1)}, title="tile plan", size=(340, 260)),
        note(
            14,
            (20, 940),
            f"Tile prompts: {describe(plan)}, causal tiles from noise. Every tile hears the scene prompt; "
            "only the tiles the Tile Prompts node names also hear their words, so an object named once "
            "is painted once instead of in every tile. Tiles are numbered as the Tile Planner's preview "
            "shows them (1 = generated first); a line 'x,y,w,h: words' gives the words to every tile a "
            "rectangle of the canvas (pixels) touches. Works with mode causal, guided and independent. "
            "automatic = true (tile_prompts empty, the whole prompt in prompt) lets the sampler drop from "
            "each tile the words whose attention on the whole scene lies elsewhere.",
        ),
    ]


def upscale() -> list[Node]:
    return [
        loader(1, (20, 40)),
        text(2, (20, 300), UPSCALE_PROMPT, "positive"),
        text(3, (20, 470), "", "negative"),
        Node(4, "LoadImage", (20, 650), [("image", "example.png"), (UI_ONLY, "image")], size=(320, 340)),
        Node(
            6,
            "ImageScale",
            (400, 640),
            [("upscale_method", "bicubic"), ("width", 384), ("height", 256), ("crop", "center")],
            {"image": (4, 0)},
            title="upscale to the canvas",
            size=(320, 140),
        ),
        planner(5, (400, 40), image=(6, 0), vae=(1, 2)),
        Node(
            7,
            "SanaTemporalTileSplit",
            (800, 40),
            links={"tile_plan": (5, 0), "image": (6, 0)},
            size=(260, 80),
        ),
        Node(8, "VAEEncode", (800, 180), links={"pixels": (7, 0), "vae": (1, 2)}, size=(220, 60)),
        Node(
            9,
            "KSampler",
            (1120, 40),
            [
                ("seed", 7),
                (UI_ONLY, "fixed"),
                ("steps", 12),
                ("cfg", 4.0),
                ("sampler_name", "euler"),
                ("scheduler", "simple"),
                ("denoise", 0.35),
            ],
            {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (8, 0)},
            title="img2img every tile",
            size=(320, 300),
        ),
        Node(10, "VAEDecode", (1500, 40), links={"samples": (9, 0), "vae": (1, 2)}, size=(220, 60)),
        Node(
            11,
            "SanaTemporalSeamBlender",
            (1500, 160),
            [("method", "laplacian"), ("ramp", "cosine"), ("color_correction", "apt"), ("batch_size", 1)],
            {"images": (10, 0), "tile_plan": (5, 0)},
            size=(320, 160),
        ),
        Node(
            12,
            "SaveImage",
            (1960, 40),
            [("filename_prefix", "sana_tiling/upscale_blended")],
            {"images": (11, 0)},
            size=(420, 360),
        ),
        metrics(
            13, (1500, 380), "sana_tiling/upscale_metrics", image=(11, 0), tile_plan=(5, 0), tiles=(10, 0)
        ),
        note(
            14,
            (20, 1040),
            "Upscale an existing picture: scale it to the canvas, cut it into the plan's "
            "tiles, refine every tile with the stock KSampler (img2img, denoise 0.35), stitch them back with "
            "the Seam Blender (multi-band blend, colour matched across overlaps) and measure the seams. Any "
            "per-tile nodes can sit between Split Into Tiles and Seam Blender.",
        ),
    ]


def compare() -> list[Node]:
    canvas = planner(5, (20, 920), vae=(1, 2))
    nodes = [
        loader(1, (20, 40)),
        text(2, (20, 300), PROMPT, "positive"),
        text(3, (20, 470), "", "negative"),
        bcla_cache(4, (20, 650)),
        canvas,
        note(
            6,
            (20, 1540),
            f"Side by side on one plan ({describe(planned(canvas))}), one seed and one noise: independent "
            "tiles (overlaps averaged), MultiDiffusion (per-step overlap averaging), causal tiling with the "
            "BCLA cache, and guided (the default: the whole scene in one pass first, then causal tiles "
            "refined from it). Each row saves its canvas and shows its seam metrics (gradient ratio against "
            "the image's own floor, ΔE2000, line jump, overlap PSNR between neighbouring tiles) and its "
            "layout against the guided row's decoded whole-scene pass: only guided starts from it, the "
            "others show how far tiles drift from one scene.",
        ),
    ]
    rows = (("independent", (1, 0)), ("multidiffusion", (1, 0)), ("causal", (4, 0)), ("guided", (4, 0)))
    guided = 10 + 10 * (len(rows) - 1)
    whole_scene = guided + 5
    row_height = 820  # the sampler with its live preview, and a gap
    for row, (mode, model) in enumerate(rows):
        base, y = 10 + 10 * row, 40 + row_height * row
        nodes += [
            sampler(base, (400, y), model, mode, f"{mode} tiles"),
            Node(
                base + 1, "VAEDecode", (840, y), links={"samples": (base, 0), "vae": (1, 2)}, size=(220, 60)
            ),
            Node(
                base + 2,
                "VAEDecode",
                (840, y + 110),
                links={"samples": (base, 1), "vae": (1, 2)},
                title="decode tiles",
                size=(220, 60),
            ),
            Node(
                base + 3,
                "SaveImage",
                (1100, y),
                [("filename_prefix", f"sana_tiling/compare_{mode}")],
                {"images": (base + 1, 0)},
                size=(300, 300),
            ),
            metrics(
                base + 4,
                (1440, y),
                f"sana_tiling/compare_{mode}_metrics",
                image=(base + 1, 0),
                tile_plan=(5, 0),
                tiles=(base + 2, 0),
                guide=(whole_scene, 0),
            ),
        ]
    nodes.append(
        Node(
            whole_scene,
            "VAEDecode",
            (840, 40 + row_height * (len(rows) - 1) + 220),
            links={"samples": (guided, 2), "vae": (1, 2)},
            title="decode whole-scene pass",
            size=(220, 60),
        )
    )
    return nodes


def extramodels_txt2img() -> list[Node]:
    """The tiling nodes on a SANA loaded by ComfyUI_ExtraModels: its loader, Gemma and VAE nodes."""
    gemma = {"GEMMA": (2, 0)}
    canvas = planner(7, (440, 300), (2048, 1024), (1024, 1024), 256, compression=32, vae=(5, 0))
    return [
        Node(
            1,
            "SanaCheckpointLoader",
            (20, 40),
            [
                ("ckpt_name", "Efficient-Large-Model/Sana_1600M_1024px_BF16"),
                ("model", "SanaMS_1600M_P1_D20"),
                ("dtype", "auto"),
                ("enable_cfg_passthrough", True),
            ],
            title="Sana Checkpoint Loader (ExtraModels)",
            size=(380, 160),
        ),
        Node(
            2,
            "GemmaLoader",
            (20, 240),
            [("model_name", "Efficient-Large-Model/gemma-2-2b-it"), ("device", "cpu"), ("dtype", "default")],
            title="Gemma Loader (ExtraModels)",
            size=(380, 130),
        ),
        Node(3, "SanaTextEncode", (20, 420), [("text", PROMPT)], gemma, "positive", (380, 140)),
        Node(4, "SanaTextEncode", (20, 600), [("text", "")], gemma, "negative", (380, 140)),
        Node(
            5,
            "ExtraVAELoader",
            (20, 780),
            [
                ("vae_name", "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers"),
                ("vae_type", "dcae-f32c32-sana-1.1-diffusers"),
                ("dtype", "BF16"),
            ],
            title="ExtraVAELoader (DC-AE)",
            size=(380, 130),
        ),
        bcla_cache(6, (440, 40)),
        canvas,
        sampler(
            8,
            (840, 40),
            (6, 0),
            "causal",
            "Causal SANA Sampler",
            steps=20,
            positive=(3, 0),
            negative=(4, 0),
            tile_plan=(7, 0),
        ),
        Node(9, "VAEDecode", (1280, 40), links={"samples": (8, 0), "vae": (5, 0)}, size=(220, 60)),
        Node(
            10,
            "SaveImage",
            (1540, 40),
            [("filename_prefix", "sana_tiling/extramodels_canvas")],
            {"images": (9, 0)},
            size=(520, 320),
        ),
        note(
            12,
            (1280, 440),
            "Temporal tiling on the SANA of ComfyUI_ExtraModels: its loader, Gemma and text-encode nodes "
            f"and its DC-AE VAE, with this pack's BCLA Cache, Tile Planner and Causal SANA Sampler: "
            f"{describe(planned(canvas))}. Written for the Efficient-Large-Model fork of ExtraModels, which "
            "downloads the listed models. With city96's original pick your files in the three loaders and "
            "set the VAE's vae_type to dcae-f32c32-sana-1.0 (that fork has no -diffusers configs).",
        ),
    ]


# --- serialisation ---------------------------------------------------------------------------------
def refine() -> list[Node]:
    """The way to refine or upscale a picture: the sampler's guided mode from the picture itself."""
    autoencoder_tiles = [("tile_size", 256), ("overlap", 64), ("temporal_size", 64), ("temporal_overlap", 8)]
    scale = Node(
        8,
        "ImageScaleBy",
        (20, 1060),
        [("upscale_method", "lanczos"), ("scale_by", 0.5)],
        {"image": (7, 0)},
        title="enlarge",
        size=(320, 110),
    )
    encode = Node(
        9,
        "VAEEncodeTiled",
        (400, 1060),
        autoencoder_tiles,
        {"pixels": (8, 0), "vae": (1, 2)},
        size=(320, 180),
    )
    return [
        loader(1, (20, 40)),
        text(2, (20, 300), UPSCALE_PROMPT, "positive"),
        text(3, (20, 470), "", "negative"),
        bcla_cache(4, (400, 680)),
        planner(5, (400, 40), latent=(9, 0), vae=(1, 2)),
        sampler(
            6, (800, 40), (4, 0), "guided", "refine from the picture (guided + BCLA)", latent_image=(9, 0)
        ),
        Node(7, "LoadImage", (20, 650), [("image", "example.png"), (UI_ONLY, "image")], size=(320, 340)),
        scale,
        encode,
        Node(
            10,
            "VAEDecodeTiled",
            (1240, 40),
            autoencoder_tiles,
            {"samples": (6, 0), "vae": (1, 2)},
            size=(320, 180),
        ),
        Node(
            11,
            "SanaTemporalSeamBlender",
            (1240, 260),
            [("method", "feather"), ("ramp", "cosine"), ("color_correction", "reference"), ("batch_size", 1)],
            {"images": (10, 0), "tile_plan": (5, 0), "reference": (8, 0)},
            title="colour correction against the input",
            size=(320, 160),
        ),
        Node(
            12,
            "SaveImage",
            (1640, 40),
            [("filename_prefix", "sana_tiling/upscale_temporal_tiling")],
            {"images": (11, 0)},
            size=(420, 360),
        ),
        metrics(
            13,
            (1240, 480),
            "sana_tiling/upscale_temporal_tiling_metrics",
            image=(11, 0),
            tile_plan=(5, 0),
            guide=(8, 0),
        ),
        note(
            14,
            (20, 1220),
            "Refine or upscale a picture with temporal tiling: enlarge it (scale_by 2 = a 2× upscale; the "
            "example's 0.5 keeps it quick on a CPU), encode it in tiles, and let the "
            "Causal SANA Sampler (mode = guided) repaint it tile after tile from itself: the picture is the "
            "guide (its attention statistics seed the BCLA cache, each tile's colours are pulled toward it, "
            "earlier tiles are locked). guide_denoise sets how much is repainted. Decode in tiles, take the "
            "low frequencies from the input (Seam Blender, reference) and measure the seams and the "
            "fidelity to the input (Quality Metrics). Replaces upscale_split_img2img_blend (independent "
            "tiles through the stock KSampler), kept as a baseline to compare with.",
        ),
    ]


def to_api(nodes: list[Node]) -> dict:
    prompt = {}
    for node in nodes:
        if node.type == "Note":
            continue
        inputs = {name: value for name, value in node.widgets if name is not UI_ONLY}
        inputs |= {name: [str(src), slot] for name, (src, slot) in node.links.items()}
        prompt[str(node.id)] = {
            "class_type": node.type,
            "inputs": inputs,
            "_meta": {"title": node.title or node.type},
        }
    return prompt


def to_ui(nodes: list[Node]) -> dict:
    by_id = {n.id: n for n in nodes}
    links, outputs = [], {}
    for node in nodes:
        socket_inputs = dict(SOCKETS[node.type][0])
        for name, (src, slot) in node.links.items():
            link_id = len(links) + 1
            socket = SOCKETS[by_id[src].type][1][slot][1]
            assert socket_inputs[name] == socket, (node.type, name, socket)
            links.append([link_id, src, slot, node.id, list(socket_inputs).index(name), socket])
            outputs.setdefault((src, slot), []).append(link_id)
    link_of = {(link[3], link[4]): link[0] for link in links}
    ui_nodes = []
    for order, node in enumerate(nodes):
        inputs, outs = SOCKETS[node.type]
        entry = {
            "id": node.id,
            "type": node.type,
            "pos": list(node.pos),
            "size": [node.size[0], max(node.size[1], drawn_height(node))],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [
                {"name": n, "type": t, "link": link_of.get((node.id, i))} for i, (n, t) in enumerate(inputs)
            ],
            "outputs": [
                {"name": n, "type": t, "links": outputs.get((node.id, i), []), "slot_index": i}
                for i, (n, t) in enumerate(outs)
            ],
            "properties": {"Node name for S&R": node.type},
            "widgets_values": [value for _, value in node.widgets],
        }
        if node.title:
            entry["title"] = node.title
        ui_nodes.append(entry)
    return {
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
        "version": 0.4,
    }


WORKFLOWS = {
    "txt2img_temporal_tiling": txt2img,
    "txt2img_tile_prompts": tile_prompts,
    "upscale_temporal_tiling": refine,
    "upscale_split_img2img_blend": upscale,
    "compare_methods": compare,
    "extramodels_txt2img_temporal_tiling": extramodels_txt2img,
}


# --- thumbnails ------------------------------------------------------------------------------------
THUMBNAIL_SIZE = (512, 512)
BACKGROUND, NODE_BODY, NODE_TITLE, PACK_TITLE = "#1e1e1e", "#353535", "#2a2a2a", "#3d6b4f"
TEXT, WIDGET = "#e0e0e0", "#222222"
SOCKET_COLOURS = {
    "MODEL": "#b39ddb",
    "CLIP": "#ffd500",
    "VAE": "#ff6e6e",
    "LATENT": "#ff9cf9",
    "IMAGE": "#64b5f6",
    "CONDITIONING": "#ffa931",
    "TILE_PLAN": "#7ccf8a",
    "GLOBAL_CONTEXT": "#4dd0e1",
    "GEMMA": "#ffd500",
}


DISPLAY_NAMES = {
    "SanaTemporalCheckpointLoader": "Load SANA",
    "SanaTemporalBCLACache": "BCLA Cache",
    "SanaTemporalTilePlanner": "Tile Planner",
    "SanaTemporalCausalSampler": "Causal SANA Sampler",
    "SanaTemporalGlobalContext": "Global Context Encoder",
    "SanaTemporalTileSplit": "Split Into Tiles",
    "SanaTemporalSeamBlender": "Seam Blender",
    "SanaTemporalTileMetrics": "Quality Metrics",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "VAEDecode": "VAE Decode",
    "VAEEncode": "VAE Encode",
    "SaveImage": "Save Image",
    "LoadImage": "Load Image",
    "ImageScale": "Upscale Image",
}
"""The titles the front end shows for nodes saved without one."""


def _fitted(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text`` cut to ``width`` px with an ellipsis, as the canvas cuts long titles."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _draw_plan(draw: ImageDraw.ImageDraw, plan: TilePlan, box: tuple[float, float, float, float]) -> None:
    """The tile outlines in plan order, as the Tile Planner shows them on the node."""
    x0, y0, x1, y1 = box
    scale = min((x1 - x0) / plan.width_px, (y1 - y0) / plan.height_px)
    left = x0 + ((x1 - x0) - plan.width_px * scale) / 2
    top = y0 + ((y1 - y0) - plan.height_px * scale) / 2
    cell = plan.compression * scale
    for tile in plan.tiles:
        hue = tile.index / max(1, len(plan))
        colour = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.75, 1.0))
        corner = (left + tile.x * cell, top + tile.y * cell)
        draw.rectangle(
            (*corner, corner[0] + tile.width * cell - 1, corner[1] + tile.height * cell - 1), outline=colour
        )


def thumbnail(nodes: list[Node]) -> Image.Image:
    """The graph as the canvas draws it, scaled to a template-browser card: nodes at their saved positions
    and sizes with their titles (the pack's own nodes with a green title bar), links coloured by socket type.
    Drawn from the same description as the workflow files, so it never goes stale."""
    boxes = {
        n.id: (n.pos[0], n.pos[1] - TITLE_HEIGHT, n.size[0], max(n.size[1], drawn_height(n))) for n in nodes
    }
    left = min(x for x, _, _, _ in boxes.values())
    top = min(y for _, y, _, _ in boxes.values())
    right = max(x + w for x, _, w, _ in boxes.values())
    bottom = max(y + TITLE_HEIGHT + h for _, y, _, h in boxes.values())
    margin, extent = 40, (right - left, bottom - top)
    scale = min((side - 2 * margin) / size for side, size in zip(THUMBNAIL_SIZE, extent, strict=True))
    offset = [(side - size * scale) / 2 for side, size in zip(THUMBNAIL_SIZE, extent, strict=True)]

    def at(x: float, y: float) -> tuple[float, float]:
        return offset[0] + (x - left) * scale, offset[1] + (y - top) * scale

    picture = Image.new("RGB", THUMBNAIL_SIZE, BACKGROUND)
    draw = ImageDraw.Draw(picture)
    by_id = {n.id: n for n in nodes}
    for node in nodes:
        inputs = [name for name, _ in SOCKETS[node.type][0]]
        for name, (src, slot) in node.links.items():
            sx, sy, sw, _ = boxes[src]
            tx, ty, _, _ = boxes[node.id]
            socket = SOCKETS[by_id[src].type][1][slot][1]
            start = at(sx + sw, sy + TITLE_HEIGHT + SLOT_HEIGHT * (slot + 0.5))
            end = at(tx, ty + TITLE_HEIGHT + SLOT_HEIGHT * (inputs.index(name) + 0.5))
            draw.line((start, end), fill=SOCKET_COLOURS.get(socket, TEXT), width=2)
    font = ImageFont.load_default(size=max(8, round(18 * scale)))
    for node in nodes:
        x, y, w, h = boxes[node.id]
        x0, y0 = at(x, y)
        x1, y1 = at(x + w, y + TITLE_HEIGHT + h)
        title_bottom = at(x, y + TITLE_HEIGHT)[1]
        draw.rounded_rectangle((x0, y0, x1, y1), radius=4, fill=NODE_BODY, outline="#555555")
        own = node.type.startswith("SanaTemporal")
        draw.rounded_rectangle((x0, y0, x1, title_bottom), radius=4, fill=PACK_TITLE if own else NODE_TITLE)
        title = _fitted(draw, node.title or DISPLAY_NAMES.get(node.type, node.type), font, x1 - x0 - 8)
        draw.text((x0 + 4, (y0 + title_bottom) / 2), title, fill=TEXT, font=font, anchor="lm")
        rows = max(len(SOCKETS[node.type][0]), len(SOCKETS[node.type][1]), 1)
        per_widget = TEXT_BOX_HEIGHT if node.type in MULTILINE_NODES else WIDGET_HEIGHT
        for index in range(len(node.widgets)):  # the widget rows, as empty fields
            row = y + TITLE_HEIGHT + rows * SLOT_HEIGHT + index * per_widget
            draw.rounded_rectangle((*at(x + 12, row + 2), *at(x + w - 12, row + per_widget - 4)), 3, WIDGET)
        if node.type == "SanaTemporalTilePlanner":
            preview_top = at(x, y + TITLE_HEIGHT + h - EXTRA_HEIGHT[node.type])[1]
            _draw_plan(draw, planned(node), (x0 + 6, preview_top, x1 - 6, y1 - 6))
    return picture


API_FOLDER = HERE / "api"


def main() -> None:
    API_FOLDER.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        nodes = build()
        (HERE / f"{name}.json").write_text(json.dumps(to_ui(nodes), indent=2, ensure_ascii=False) + "\n")
        api = API_FOLDER / f"{name}_api.json"
        api.write_text(json.dumps(to_api(nodes), indent=2, ensure_ascii=False) + "\n")
        thumbnail(nodes).save(HERE / f"{name}.jpg", quality=90)


if __name__ == "__main__":
    main()
