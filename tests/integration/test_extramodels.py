"""The pack beside ComfyUI_ExtraModels (city96's or the Efficient-Large-Model fork) in a real ComfyUI.

EXTRAMODELS_PATH points at an ExtraModels checkout (its requirements, e.g. timm, installed in ComfyUI's
Python); the tests marked `extramodels` are skipped otherwise. Both packs load side by side with
every node of each; ExtraModels' SANA, loaded by its own loader from a tiny original-layout checkpoint,
runs through BCLA Cache, Tile Planner, Global Context Encoder and the Causal SANA Sampler, and is decoded
by ExtraModels' VAE. ExtraModels has no config for a toy model, so the tests add one to its config tables.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest
from sana_comfy import PACK_ROOT, ComfyServer, pack_module

EXTRAMODELS_PATH = os.environ.get("EXTRAMODELS_PATH")
CKPT = "tiny_extramodels_sana.safetensors"
VAE = "tiny_extramodels_dcae.safetensors"
TINY = "tiny (tests)"
COMPRESSION = 4
# A SanaMS with the layout of SANA 1600M 1K, 64 wide and 2 blocks; 32 latent channels like every
# ExtraModels SANA (its latent format fixes them) and 32-wide captions from the tiny Gemma-2.
TINY_SANA_CONF = {
    "target": "SanaMS",
    "unet_config": {
        "in_channels": 32,
        "depth": 2,
        "hidden_size": 64,
        "patch_size": 1,
        "num_heads": 2,
        "linear_head_dim": 32,
        "model_max_length": 300,
        "caption_channels": 32,
        "y_norm": True,
        "attn_type": "linear",
        "ffn_type": "glumbconv",
        "mlp_ratio": 2.5,
        "mlp_acts": ["silu", "silu", None],
        "use_pe": False,
        "pred_sigma": False,
        "learn_sigma": False,
        "fp32_attention": True,
    },
    "sampling_settings": {"shift": 3.0},
}

needs_extramodels = pytest.mark.extramodels


def extramodels_node_ids(path: Path) -> set[str]:
    """Node ids in ExtraModels' NODE_CLASS_MAPPINGS literals (its packages each keep one)."""
    pattern = re.compile(r"""^\s*["']([A-Za-z0-9_]+)["']\s*:""", re.M)
    ids: set[str] = set()
    for nodes_file in path.glob("*/nodes.py"):
        text = nodes_file.read_text(encoding="utf-8")
        if "NODE_CLASS_MAPPINGS" in text:
            ids |= set(pattern.findall(text.split("NODE_CLASS_MAPPINGS", 1)[1]))
    return ids


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """A ComfyUI server whose custom_nodes hold this pack and ExtraModels."""
    base = tmp_path_factory.mktemp("comfy_base_extramodels")
    custom = base / "custom_nodes"
    custom.mkdir()
    (custom / "sana_temporal_tiling").symlink_to(PACK_ROOT, target_is_directory=True)
    (custom / "ComfyUI_ExtraModels").symlink_to(Path(EXTRAMODELS_PATH), target_is_directory=True)
    (base / "models").mkdir()
    server = ComfyServer(
        Path(os.environ["COMFYUI_PATH"]).expanduser(), base, tmp_path_factory.mktemp("logs") / "comfyui.log"
    )
    yield server
    server.stop()


@needs_extramodels
def test_both_packs_keep_every_node(side_by_side):
    from test_workflows import pack_node_ids

    object_info = side_by_side.get("/object_info")
    theirs = extramodels_node_ids(Path(EXTRAMODELS_PATH))
    ours = pack_node_ids()
    assert {"SanaCheckpointLoader", "ExtraVAELoader", "GemmaLoader"} <= theirs
    assert theirs - set(object_info) == set(), side_by_side.log_tail()
    assert ours - set(object_info) == set(), side_by_side.log_tail()
    # ExtraModels' own loader answers to its id (inputs ckpt_name + model config), not this pack's
    assert "model" in object_info["SanaCheckpointLoader"]["input"]["required"]
    assert (
        object_info["SanaCheckpointLoader"]["python_module"]
        != object_info["SanaTemporalCheckpointLoader"]["python_module"]
    )


@needs_extramodels
def test_shipped_extramodels_workflow_fits_both_packs(side_by_side):
    """Every node of the shipped workflow exists beside ExtraModels and gets its required inputs; the
    pack's nodes get only inputs they declare, with valid options. (City96's loaders declare fewer
    widgets than the fork the workflow is written for; ComfyUI ignores the extra ones.)"""
    from test_workflows import pack_node_ids

    object_info = side_by_side.get("/object_info")
    name = "extramodels_txt2img_temporal_tiling"
    ui = json.loads((PACK_ROOT / "workflows" / f"{name}.json").read_text())
    api = json.loads((PACK_ROOT / "workflows" / "api" / f"{name}_api.json").read_text())
    assert {n["type"] for n in ui["nodes"]} - {"Note"} <= set(object_info)
    ours = pack_node_ids()
    for node_id, node in api.items():
        declared = object_info[node["class_type"]]["input"]
        required = declared["required"]
        assert set(required) <= set(node["inputs"]), f"{node_id} {node['class_type']}"
        if node["class_type"] not in ours:
            continue
        known = {**required, **declared.get("optional", {})}
        assert set(node["inputs"]) <= set(known), f"{node_id} {node['class_type']}"
        for key, value in node["inputs"].items():
            kind = known[key][0]
            if isinstance(kind, list) or kind == "COMBO":
                options = kind if isinstance(kind, list) else known[key][1]["options"]
                assert value in options, f"{node_id}.{key} = {value!r}"


# --- in-process: ExtraModels' SANA through this pack's nodes ------------------------------------------
@pytest.fixture(scope="module")
def extramodels(comfy, registered):
    """ExtraModels loaded as ComfyUI loads a custom node, with tiny SANA and DC-AE configs added to its
    config tables and their weights written where its loaders look."""
    import torch
    from safetensors.torch import save_file

    import nodes as comfy_nodes
    from lab import fixtures

    assert asyncio.run(comfy_nodes.load_custom_node(EXTRAMODELS_PATH))
    mapping = comfy_nodes.NODE_CLASS_MAPPINGS
    sys.modules[mapping["SanaCheckpointLoader"].__module__].sana_conf[TINY] = TINY_SANA_CONF
    sd = fixtures.original_state_dict(64, 2, grid=32, caption_channels=32, in_channels=32)
    save_file(sd, registered / "models" / "checkpoints" / CKPT)

    vae_nodes = sys.modules[mapping["ExtraVAELoader"].__module__]
    dcae = importlib.import_module(vae_nodes.__name__.rsplit(".", 1)[0] + ".models.dcae")
    full = next(c for c in vae_nodes.vae_conf.values() if c["type"] in ("DCAE", "AutoencoderDC"))
    tiny = dict(full, embed_scale=COMPRESSION)  # 3 stages: 4× instead of 32×
    if full["type"] == "DCAE":  # city96: the original DC-AE code
        for side in ("encoder", "decoder"):
            tiny |= {
                f"{side}_block_type": ["ResBlock", "ResBlock", "EViTS5GLU"],
                f"{side}_width_list": [8, 16, 32],
                f"{side}_depth_list": [1, 1, 1],
            }
        net = dcae.DCAE(**tiny)
    else:  # Efficient-Large-Model fork: diffusers' AutoencoderDC layout
        for side in ("encoder", "decoder"):
            tiny |= {
                f"{side}_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
                f"{side}_block_out_channels": [8, 16, 32],
                f"{side}_layers_per_block": [1, 1, 1],
                f"{side}_qkv_multiscales": [[], [], [5]],
            }
        net = dcae.AutoencoderDC(**tiny)
    vae_nodes.vae_conf[TINY] = tiny
    # small weights, unit norms: the toy DC-AE stays finite (a default init gives NaN in city96's encoder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, registered / "models" / "vae" / VAE)
    return mapping


def _run_node(cls, **inputs):
    """Call a classic ComfyUI node with the inputs its INPUT_TYPES declares (the forks differ)."""
    declared = cls.INPUT_TYPES()
    names = {**declared.get("required", {}), **declared.get("optional", {})}
    return getattr(cls(), cls.FUNCTION)(**{k: v for k, v in inputs.items() if k in names})


@pytest.fixture(scope="module")
def parts(extramodels):
    """(MODEL, VAE, positive, negative) from ExtraModels' own nodes."""
    from lab import fixtures

    model = _run_node(extramodels["SanaCheckpointLoader"], ckpt_name=CKPT, model=TINY, dtype="FP32")[0]
    vae = _run_node(extramodels["ExtraVAELoader"], vae_name=VAE, vae_type=TINY, dtype="FP32")[0]
    tokenizer = fixtures.tiny_tokenizer()
    tokenizer.padding_side = "right"  # as GemmaLoader sets it
    gemma = {"tokenizer": tokenizer, "text_encoder": fixtures.tiny_gemma2(len(tokenizer))}
    encode = extramodels["SanaTextEncode"]
    positive = _run_node(encode, text="a blue to pink sky", GEMMA=gemma)[0]
    negative = _run_node(encode, text="", GEMMA=gemma)[0]
    return types.SimpleNamespace(model=model, vae=vae, positive=positive, negative=negative, gemma=gemma)


@pytest.fixture(scope="module")
def pack():
    return types.SimpleNamespace(
        **{name: pack_module(f"nodes.{name}") for name in ("bcla_cache", "context", "planner", "sampler")}
    )


def _sample(pack, parts, model, plan, **overrides):
    """The pack's node tests' sampler settings (3 euler steps, cfg 3, causal) on ExtraModels' parts."""
    from test_nodes import _sample as sample_nodes

    return sample_nodes(pack, model, (parts.positive, parts.negative), plan, **overrides)


@needs_extramodels
def test_pack_text_encode_gives_extramodels_sana_the_conditioning_of_its_own_node(parts):
    """ExtraModels' SANA gets no attention mask and attends all 300 caption rows, and its Gemma node
    zeroes the padding rows: the pack's CLIP on the same Gemma must zero the same rows (before, they held
    Gemma's hidden states of the pad token, which ExtraModels' SANA then attended). The attended rows
    differ slightly: ExtraModels' template quotes "Enhanced prompt" with double quotes, SANA's with single."""
    import torch

    encoder = pack_module("temporal_tiling.sana.text").SanaTextEncoder(
        parts.gemma["text_encoder"], parts.gemma["tokenizer"]
    )
    clip = pack_module("nodes.sana_model").make_clip(encoder, torch.float32)
    embeds, extra = clip.encode_from_tokens_scheduled(clip.tokenize("a blue to pink sky"))[0]
    theirs = parts.positive[0][0].squeeze(1)  # [1, 1, 300, D]: ExtraModels keeps a head axis
    assert embeds.shape == theirs.shape
    rows = (embeds != 0).any(-1)
    assert torch.equal(rows, (theirs != 0).any(-1)) and int(rows.sum()) == 7
    assert torch.equal(rows, extra["attention_mask"].bool()), "the mask the pack's own SANA applies"


@needs_extramodels
def test_extramodels_sana_runs_causal_bcla_tiling(pack, parts, extramodels):
    import torch

    import nodes as comfy_nodes
    from temporal_tiling.bcla import BCLALiteLAMatmul

    c = COMPRESSION
    plan = pack.planner.SanaTilePlanner.execute(
        6 * c, 4 * c, 4 * c, 4 * c, c, "shift", "raster", 0, 32, "manual", vae=parts.vae
    ).result[0]
    assert plan.compression == c, "the compression comes from ExtraModels' VAE, not the widget (32)"
    empty = _run_node(extramodels["EmptySanaLatentImage"], width=6 * 32, height=4 * 32, batch_size=1)[0]
    from_latent = pack.planner.SanaTilePlanner.execute(
        64, 64, 4 * c, 4 * c, c, "shift", "raster", 0, c, "manual", latent=empty, vae=parts.vae
    ).result[0]
    assert (from_latent.canvas_height, from_latent.canvas_width) == (4, 6)
    bcla = pack.bcla_cache.SanaBCLACache.execute(parts.model, "cumulative", 1.0, "synchronous", 0.5, True)
    model = bcla.result[0]

    inner = parts.model.model.diffusion_model
    plain, _ = _sample(pack, parts, parts.model, plan)
    canvas, tiles = _sample(pack, parts, model, plan)
    zero = pack.bcla_cache.SanaBCLACache.execute(parts.model, "cumulative", 0.0, "synchronous", 0.5, True)
    off, _ = _sample(pack, parts, zero.result[0], plan)
    assert canvas.shape == (1, 32, 4, 6) and tiles.shape == (2, 32, 4, 4)
    assert torch.isfinite(canvas).all()
    assert torch.equal(off, plain), "strength 0 must give exactly the model without BCLA"
    assert (canvas - plain).abs().max() > 1e-4, "the cached statistics must reach the second tile"
    assert not isinstance(inner.blocks[0].attn.__dict__.get("attn_matmul"), BCLALiteLAMatmul), (
        "the object patches are undone after the run"
    )

    image = comfy_nodes.VAEDecode().decode(parts.vae, {"samples": canvas})[0]
    assert image.shape == (1, 4 * c, 6 * c, 3) and torch.isfinite(image).all()


@needs_extramodels
def test_extramodels_sana_takes_a_global_context_seed(pack, parts):
    """Guide image encoded by ExtraModels' VAE, its statistics recorded on LiteLA and seeded into tiles."""
    import torch

    c = COMPRESSION
    plan = pack.planner.SanaTilePlanner.execute(
        6 * c, 4 * c, 4 * c, 4 * c, c, "shift", "raster", 0, c, "manual"
    ).result[0]
    model = pack.bcla_cache.SanaBCLACache.execute(parts.model, "cumulative", 1.0, "synchronous", 0.5, True)
    image = torch.rand(1, 8, 12, 3, generator=torch.Generator().manual_seed(5))
    spec = pack.context.SanaGlobalContext.execute(
        0.0, 0.0, 1.0, 3.0, 0.5, 0, 12, image=image, vae=parts.vae
    ).result[0]
    assert spec.guide.shape == (1, 32, 2, 3)
    with_seed, _ = _sample(pack, parts, model.result[0], plan, global_context=spec)
    without, _ = _sample(pack, parts, model.result[0], plan)
    assert torch.isfinite(with_seed).all()
    assert (with_seed - without).abs().max() > 1e-4, "the seed statistics recorded on LiteLA must be used"


@needs_extramodels
def test_bcla_cache_refuses_replaced_lite_la_and_models_without_linear_attention(pack, parts):
    import comfy.model_patcher
    import torch

    replaced = parts.model.clone()
    replaced.add_object_patch("diffusion_model.blocks.1.attn.attn_matmul", lambda q, k, v: q)
    with pytest.raises(ValueError, match=r"LiteLA layer blocks\.1\.attn of this MODEL runs function"):
        pack.bcla_cache.SanaBCLACache.execute(replaced, "cumulative", 1.0, "synchronous", 0.5, True)
    holder = torch.nn.Module()
    holder.diffusion_model = torch.nn.Linear(2, 2)
    other = comfy.model_patcher.ModelPatcher(holder, "cpu", "cpu")
    with pytest.raises(ValueError, match="ExtraModels' Sana Checkpoint Loader"):
        pack.bcla_cache.SanaBCLACache.execute(other, "cumulative", 1.0, "synchronous", 0.5, True)


@needs_extramodels
def test_automatic_tile_prompts_run_on_extramodels_sana(pack, parts):
    """The cross-attention of ExtraModels' SANA is recorded (its blocks' cross_attn forwards, object
    patches on a clone, undone after) and a tile drops a word whose attention lies elsewhere."""
    import torch

    c = COMPRESSION
    plan = pack.planner.SanaTilePlanner.execute(
        6 * c, 4 * c, 4 * c, 4 * c, c, "shift", "raster", 0, c, "manual"
    ).result[0]
    word_maps = pack_module("temporal_tiling.word_maps")
    inner = parts.model.model.diffusion_model
    # ExtraModels' conditioning: <bos>, the template's last token, one token per word, zero padding
    embeds = parts.positive[0][0]
    length = int((embeds != 0).any(-1).sum())
    assert length == 7
    host = pack.sampler.ComfyHost(
        parts.model,
        plan,
        positive=parts.positive,
        negative=parts.negative,
        steps=3,
        cfg=3.0,
        sampler_name="euler",
        scheduler="simple",
        seed=3,
    )
    generator = torch.Generator().manual_seed(0)
    latent, noise = (torch.randn(1, 32, 4, 6, generator=generator) for _ in range(2))
    weights = host.cross_attention(latent, noise, 0.5)
    assert weights.shape == (4 * 6, length), "[image tokens, the prompt's text tokens]"
    assert torch.allclose(weights.sum(-1), torch.ones(4 * 6)), "a softmax over the text tokens"
    other = host.cross_attention(latent.flip(-1), noise, 0.5)
    assert not torch.equal(weights, other), "the weights follow the image"
    empty = parts.negative[0][0]
    assert host.cross_attention(latent, noise, 0.5, parts.negative).shape[1] == int(
        (empty != 0).any(-1).sum()
    )

    spans = (None, None, (0, 1), (2, 6), (7, 9), (10, 14), (15, 18))
    heard: dict[int, str] = {}
    automatic = word_maps.AutoTilePrompts(
        word_maps.PromptTokens("a blue to pink sky", spans),
        lambda text: parts.positive,
        1.0,
        heard.update,
        parts.positive,
    )
    tiles = pack_module("nodes.tile_prompts").TileConditioning(plan, {}, {}, parts.positive, automatic)
    canvas, _ = _sample(pack, parts, parts.model, plan, tile_conditioning=tiles)
    assert torch.isfinite(canvas).all()
    words = {"a", "blue", "to", "pink", "sky"}
    assert heard and all(set(text.split()) < words for text in heard.values()), heard
    # ComfyUI undoes a clone's object patches when it loads the next clone (here the tiles' sampling)
    assert all(
        type(vars(block.cross_attn).get("forward")).__name__ != "PackedCrossAttentionRecorder"
        for block in inner.blocks
    ), "the recorders are undone after the run"


@needs_extramodels
def test_recorded_weights_are_those_extramodels_cross_attention_applies(parts):
    """Through ExtraModels' own forward (the flash kind on a packed batch of two, the vanilla kind on
    one, as ExtraModels runs them; norms built): values that are each text token's one-hot make the
    module's output its attention weights, which the recorder must equal."""
    import torch

    word_maps = pack_module("temporal_tiling.word_maps")
    flash = type(parts.model.model.diffusion_model.blocks[0].cross_attn)
    kinds = [(flash, 2), (getattr(sys.modules[flash.__module__], "MultiHeadCrossVallinaAttention", None), 1)]
    channels, heads, tokens, length = 8, 2, 5, 3
    generator = torch.Generator().manual_seed(0)
    for kind, batch in (k for k in kinds if k[0] is not None):
        module = kind(channels, heads, qk_norm=True)
        with torch.no_grad():
            module.kv_linear.weight[channels:] = torch.eye(channels // heads, channels).repeat(heads, 1)
            module.kv_linear.bias.zero_()
            module.proj.weight.copy_(torch.eye(channels))
            module.proj.bias.zero_()
            module.q_norm.weight.uniform_(0.5, 2.0, generator=generator)
            module.k_norm.weight.uniform_(0.5, 2.0, generator=generator)
        x = torch.randn(batch, tokens, channels, generator=generator)
        cond = torch.randn(1, batch * length, channels, generator=generator)
        cond[0, :, :length] = torch.eye(length).repeat(batch, 1)  # each token's value: its one-hot
        record = word_maps.RecordedAttention()
        recorder = word_maps.PackedCrossAttentionRecorder(module, module.forward, record)
        with torch.no_grad():
            out = recorder(x, cond, [length] * batch)
        applied = out[0].view(tokens, heads, channels // heads)[..., :length].mean(1)
        assert torch.allclose(record.mean(), applied, atol=1e-5), kind.__name__
