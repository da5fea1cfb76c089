"""The loader nodes inside ComfyUI (in-process): MODEL/CLIP/VAE objects, sampling with stock code, previews,
object patches reaching diffusers' processors, the BCLA refusal check and the loaders' error messages."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from sana_comfy import TINY_VARIANTS, pack_module, stock_node_outputs


@pytest.fixture(scope="module")
def loaders(registered):
    return pack_module("nodes.loaders")


@pytest.fixture(scope="module")
def sana_model(registered):
    return pack_module("nodes.sana_model")


@pytest.fixture(scope="module")
def folder_parts(loaders):
    """MODEL, CLIP, VAE of the diffusers folder, through the node's execute (as ComfyUI calls it)."""
    return loaders.SanaCheckpointLoader.execute(
        "tiny_sana_diffusers/", loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "default", "auto"
    ).result


def test_choices_list_folders_files_and_embedded(loaders) -> None:
    choices = loaders.model_choices()
    assert "tiny_sana_diffusers/" in choices
    assert set(TINY_VARIANTS) <= set(choices)
    assert not any("diffusion_pytorch_model" in c for c in choices)  # parts of folders are not entries
    assert (loaders.EMBEDDED_ENTRY in choices) == loaders.is_pipeline_folder(loaders.EMBEDDED_MODEL)
    assert "tiny_dcae/" in loaders.vae_choices() and "tiny_gemma2/" in loaders.text_encoder_choices()


def test_queued_prompts_do_not_rescan_the_model_folders(loaders, registered, monkeypatch) -> None:
    """ComfyUI builds the loaders' schemas on every queued prompt (validation) and node-list refresh:
    the folders are read again only after something in them changed."""
    scans = []
    scan = loaders._scan_folders
    monkeypatch.setattr(loaders, "_scan_folders", lambda *args: scans.append(args) or scan(*args))
    loaders._listings.clear()
    for _ in range(3):
        for node in loaders.NODES:
            node.INPUT_TYPES()
            assert node.validate_inputs() is True
    assert len(scans) == 4  # checkpoints, diffusion_models, vae, text_encoders: each once
    added = registered / "models" / "checkpoints" / "nested" / "added_sana"
    (added / "transformer").mkdir(parents=True)
    try:
        assert "nested/added_sana/" not in loaders.model_choices()
        assert len(scans) == 5  # checkpoints/ changed (nested/ added), diffusion_models/ did not
        (added / "model_index.json").write_text("{}")  # two levels down: only that folder's time changes
        assert "nested/added_sana/" in loaders.model_choices()
        assert len(scans) == 6
    finally:
        (added / "model_index.json").unlink()
        (added / "transformer").rmdir()
        added.rmdir()
        added.parent.rmdir()
    assert "nested/added_sana/" not in loaders.model_choices()


@pytest.mark.parametrize(
    ("name", "pe_scale", "qk_norm"),
    [
        ("tiny_sana_1k.safetensors", None, False),
        ("tiny_sana_pe1.safetensors", 1.0, False),
        ("tiny_sana_pe2.pth", 2.0, False),
        ("tiny_sana15_qknorm.safetensors", None, True),
    ],
)
def test_single_file_variants_load_with_separate_parts(loaders, sana_model, name, pe_scale, qk_norm) -> None:
    model, _, vae = loaders.SanaCheckpointLoader.execute(
        name, "tiny_dcae/", "tiny_gemma2/", "fp32", "auto"
    ).result
    transformer = sana_model.require_sana_linear_attention(model)
    assert transformer.config.interpolation_scale == pe_scale
    assert (transformer.config.qk_norm is not None) == qk_norm
    assert model.model.model_sampling.shift == pytest.approx(3.0)
    assert model.model.model_type.name == "FLOW"
    assert model.model.latent_format.latent_channels == 8
    assert model.model.latent_format.scale_factor == pytest.approx(0.5)
    assert model.model_size() > sum(p.numel() for p in transformer.parameters()) * 4 * 0.99
    assert vae.spacial_compression_decode() == 4 and vae.latent_channels == 8


def test_folder_model_has_scheduler_shift_and_conditioning(folder_parts) -> None:
    model, clip, _ = folder_parts
    assert model.model.model_sampling.shift == pytest.approx(3.0)
    tokens = clip.tokenize("a red sky over the sea")
    cond = clip.encode_from_tokens_scheduled(tokens)
    embeds, extra = cond[0]
    assert embeds.shape == (1, 300, 32) and extra["attention_mask"].shape == (1, 300)
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))[0][1]["attention_mask"]
    long = clip.encode_from_tokens_scheduled(clip.tokenize("sky " * 3000))[0]
    assert (
        int(empty.sum()) == 1
        and long[0].shape == (1, 300, 32)
        and int(long[1]["attention_mask"].sum()) == 300
    )


def _sample(model, clip, steps: int = 3, seed: int = 0) -> torch.Tensor:
    import comfy.sample

    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a blue gradient sky"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = torch.zeros(1, 4, 8, 8)  # what EmptyLatentImage gives; KSampler fixes the channels
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        model, noise, steps, 4.0, "euler", "simple", positive, negative, latent, disable_pbar=True, seed=seed
    )


def test_stock_sampler_and_object_patch_reach_diffusers_processor(folder_parts) -> None:
    model, clip, vae = folder_parts
    base = _sample(model, clip)
    assert base.shape == (1, 8, 8, 8) and torch.isfinite(base).all()
    path = "diffusion_model.transformer_blocks.0.attn1.processor"
    original = model.get_model_object(path)
    assert type(original).__name__.startswith("SanaLinearAttnProcessor")
    seen = []

    def spy(attn, hidden_states, *args, **kwargs):
        seen.append(hidden_states.shape[0])
        return original(attn, hidden_states, *args, **kwargs)

    patched = model.clone()
    patched.add_object_patch(path, spy)
    assert torch.equal(_sample(patched, clip), base)  # pass-through patch: same result
    assert seen == [2, 2, 2]  # 3 steps, cond and uncond in one batch
    assert model.get_model_object(path) is original  # the clone's patch left the shared model untouched
    images = vae.decode(base)
    assert images.shape == (1, 32, 32, 3) and float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_stock_32x_empty_latent_fits_the_model(folder_parts) -> None:
    """EmptyHunyuanImageLatent (stock, /32, 64 zero channels) is the stock empty latent for SANA's DC-AE:
    KSampler narrows its channels to the model's latent format."""
    import comfy.sample
    from comfy_extras.nodes_hunyuan import EmptyHunyuanImageLatent

    model, _, _ = folder_parts
    (latent,) = stock_node_outputs(EmptyHunyuanImageLatent, width=1024, height=512)
    fixed = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    assert fixed.shape == (1, 8, 16, 32)


def test_vae_tiled_decode_and_encode_roundtrip_shapes(folder_parts) -> None:
    _, _, vae = folder_parts
    latent = torch.randn(2, 8, 24, 24, generator=torch.Generator().manual_seed(0))
    full = vae.decode(latent)
    tiled = vae.decode_tiled(latent, tile_x=16, tile_y=16, overlap=4)
    assert tiled.shape == full.shape == (2, 96, 96, 3)
    assert torch.equal(vae.decode_tiled(latent, tile_x=24, tile_y=24, overlap=4), full)
    encoded = vae.encode(full[:, :, :, :3])
    assert encoded.shape == (2, 8, 24, 24)


def test_latent_preview_gives_rgb_of_the_right_colour(folder_parts, comfy) -> None:
    import latent_preview
    from comfy.cli_args import LatentPreviewMethod

    model, _, vae = folder_parts
    comfy.args.preview_method = LatentPreviewMethod.Latent2RGB
    previewer = latent_preview.get_previewer("cpu", model.model.latent_format)
    assert isinstance(previewer, latent_preview.Latent2RGBPreviewer)
    red = torch.zeros(1, 32, 32, 3)
    red[..., 0] = 0.9
    red[..., 1:] = 0.1
    x0 = model.model.process_latent_in(vae.encode(red))  # what the sampler callback previews
    kind, image, _ = previewer.decode_latent_to_preview_image("JPEG", x0)
    assert kind == "JPEG" and image.mode == "RGB" and image.size == (8, 8)
    r, g, b = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)
    assert r > g + 60 and r > b + 60, (r, g, b)


class _LiteLA(torch.nn.Module):
    """Stand-in for ExtraModels' SANA: its own attention modules, no diffusers processors."""

    def forward(self, x, timesteps, context, **kwargs):
        return x


def test_bcla_check_refuses_foreign_attention(folder_parts, sana_model) -> None:
    import comfy.model_patcher

    model, _, _ = folder_parts
    foreign = model.clone()
    foreign.model = types.SimpleNamespace(diffusion_model=_LiteLA())
    with pytest.raises(ValueError, match=r"Load SANA \(SanaTemporalCheckpointLoader\)"):
        sana_model.require_sana_linear_attention(foreign)
    with pytest.raises(ValueError, match="does not use diffusers' SANA modules"):
        sana_model.require_sana_linear_attention(comfy.model_patcher.ModelPatcher(_LiteLA(), "cpu", "cpu"))
    from diffusers.models.attention_processor import AttnProcessor2_0

    pending = model.clone()  # an object patch not applied yet is what the model will run
    pending.add_object_patch("diffusion_model.transformer_blocks.1.attn1.processor", AttnProcessor2_0())
    with pytest.raises(ValueError, match="Block 1 of this MODEL uses AttnProcessor2_0"):
        sana_model.require_sana_linear_attention(pending)
    transformer = sana_model.require_sana_linear_attention(model)
    block = transformer.transformer_blocks[1].attn1
    saved = block.processor
    block.processor = AttnProcessor2_0()
    try:
        with pytest.raises(ValueError, match="Block 1 of this MODEL uses AttnProcessor2_0"):
            sana_model.require_sana_linear_attention(model)
    finally:
        block.processor = saved


@pytest.mark.parametrize(
    ("ckpt", "vae", "text", "message"),
    [
        ("sd15.safetensors", "tiny_dcae/", "tiny_gemma2/", "not a SANA transformer checkpoint"),
        ("truncated_sana.safetensors", "tiny_dcae/", "tiny_gemma2/", "truncated or corrupt"),
        ("tiny_sana_1k.safetensors", "(from checkpoint folder)", "tiny_gemma2/", "single file without a VAE"),
        ("tiny_sana_1k.safetensors", "tiny_dcae/", "(from checkpoint folder)", "without a text encoder"),
        ("tiny_sana_16ch.safetensors", "tiny_dcae/", "tiny_gemma2/", "8-channel latents but .* expects 16"),
        ("missing.safetensors", "tiny_dcae/", "tiny_gemma2/", "not in ComfyUI's checkpoints"),
    ],
)
def test_loader_errors_name_the_file_and_the_fix(loaders, ckpt, vae, text, message) -> None:
    with pytest.raises(loaders.SanaLoadError, match=message):
        loaders.SanaCheckpointLoader.execute(ckpt, vae, text, "default", "auto")


def test_a_diffusers_folder_with_a_broken_config_names_the_file(loaders, registered) -> None:
    """A config value of the wrong type made diffusers raise a raw TypeError."""
    import json
    import shutil

    checkpoints = registered / "models" / "checkpoints"
    broken = checkpoints / "broken_config_sana"
    shutil.copytree(checkpoints / "tiny_sana_diffusers", broken, symlinks=True)
    config = broken / "transformer" / "config.json"
    try:
        config.write_text(json.dumps(json.loads(config.read_text()) | {"num_layers": "lots"}))
        with pytest.raises(
            loaders.SanaLoadError, match=r"transformer/config\.json' holds a value of the wrong type"
        ):
            loaders.SanaCheckpointLoader.execute(
                "broken_config_sana/", *("(from checkpoint folder)",) * 2, "default", "auto"
            )
        config.write_text("{not json")
        corrupt = r"transformer/config\.json' is corrupt: not valid JSON"
        with pytest.raises(loaders.SanaLoadError, match=corrupt):
            loaders.SanaCheckpointLoader.execute(
                "broken_config_sana/", *("(from checkpoint folder)",) * 2, "default", "auto"
            )
    finally:
        shutil.rmtree(broken)


def test_embedded_model_loads_with_bare_prompt_conditioning(loaders) -> None:
    if not loaders.is_pipeline_folder(loaders.EMBEDDED_MODEL):
        pytest.skip("the embedded seamlab-sana model is not built yet")
    model, clip, vae = loaders.SanaCheckpointLoader.execute(
        loaders.EMBEDDED_ENTRY, loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "default", "auto"
    ).result
    assert clip.cond_stage_model.encoder.instruction == "never"  # trained without SANA's template
    assert vae.latent_channels == model.model.latent_format.latent_channels
    assert vae.spacial_compression_decode() == vae.autoencoder.spatial_compression_ratio
