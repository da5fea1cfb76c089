"""SANA loading without ComfyUI: safe reading, variant detection, conversion, DC-AE, Gemma-2 conditioning.

Published sizes are checked with `meta` tensors (real key layout and shapes, no memory); toy sizes run.
"""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import SanaPipeline, SanaTransformer2DModel
from safetensors.torch import save_file

from lab import fixtures
from temporal_tiling.sana import (
    CheckpointError,
    SanaTextEncoder,
    build_transformer,
    convert_original,
    detect_variant,
    load_state_dict,
    load_text_encoder,
    load_transformer_file,
    load_transformer_folder,
    load_vae_folder,
)
from temporal_tiling.sana.text import COMPLEX_HUMAN_INSTRUCTION, MAX_SEQUENCE_LENGTH
from temporal_tiling.sana.vae import SANA_DCAE_F32C32_CONFIG, build_vae, decode_tiled, fit_latent_rgb

# (hidden, depth, latent grid, qk_norm) -> (size, px, PE interpolation scale, flow shift, params in M)
PUBLISHED = {
    "600M_512px": ((1152, 28, 16, False), ("600M", 512, None, 3.0, 591.7)),
    "600M_1024px": ((1152, 28, 32, False), ("600M", 1024, None, 3.0, 591.7)),
    "1600M_512px": ((2240, 20, 16, False), ("1600M", 512, None, 3.0, 1604.5)),
    "1600M_1024px": ((2240, 20, 32, False), ("1600M", 1024, None, 3.0, 1604.5)),
    "1600M_2Kpx": ((2240, 20, 64, False), ("1600M", 2048, 1.0, 3.0, 1604.5)),
    "1600M_4Kpx": ((2240, 20, 128, False), ("1600M", 4096, 2.0, 6.0, 1604.5)),
    "SANA1.5_1600M_1024px": ((2240, 20, 32, True), ("1600M", 1024, None, 3.0, 1604.6)),
    "SANA1.5_4800M_1024px": ((2240, 60, 32, True), ("4800M", 1024, None, 3.0, 4721.8)),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_variant_detected_and_converted(name: str) -> None:
    (hidden, depth, grid, qk_norm), (size, px, pe_scale, shift, mparams) = PUBLISHED[name]
    sd = fixtures.original_state_dict(hidden, depth, grid=grid, qk_norm=qk_norm, device="meta")
    variant = detect_variant(sd, f"Sana_{name}.pth")
    assert (variant.size, variant.resolution, variant.interpolation_scale, variant.flow_shift) == (
        size,
        px,
        pe_scale,
        shift,
    )
    assert variant.layout == "original"
    assert variant.qk_norm == ("rms_norm_across_heads" if qk_norm else None)
    assert variant.config["num_attention_heads"] * 32 == hidden
    assert variant.config["num_cross_attention_heads"] == {1152: 16, 2240: 20}[hidden]
    assert variant.config["sample_size"] == grid
    model = build_transformer(sd, variant)  # strict: every key and shape must fit
    assert isinstance(model, SanaTransformer2DModel)
    assert fixtures.param_count(model) / 1e6 == pytest.approx(mparams, abs=0.1)
    assert (model.patch_embed.pos_embed is not None) == (pe_scale is not None)


def _tiny(pe_scale: float | None = None, qk_norm: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    return fixtures.original_state_dict(
        64, 2, grid=4, caption_channels=32, in_channels=8, qk_norm=qk_norm, pe_scale=pe_scale, seed=seed
    )


def _run(model: SanaTransformer2DModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 4, 4, generator=g)
    ctx = torch.randn(2, 6, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    return model(
        x, encoder_hidden_states=ctx, timestep=torch.tensor([500.0, 20.0]), encoder_attention_mask=mask
    ).sample


def test_conversion_maps_fused_projections_exactly() -> None:
    sd = _tiny()
    converted = convert_original(sd)
    q, _, v = sd["blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(converted["transformer_blocks.1.attn1.to_q.weight"], q)
    assert torch.equal(converted["transformer_blocks.1.attn1.to_v.weight"], v)
    ck, cv = sd["blocks.0.cross_attn.kv_linear.weight"].chunk(2)
    assert torch.equal(converted["transformer_blocks.0.attn2.to_k.weight"], ck)
    assert torch.equal(converted["transformer_blocks.0.attn2.to_v.weight"], cv)
    assert torch.equal(converted["time_embed.linear.weight"], sd["t_block.1.weight"])
    # exactly the diffusers model's keys: pos_embed and the null caption y_embedding are dropped
    with torch.device("meta"):
        reference = SanaTransformer2DModel(**detect_variant(sd).config)
    assert set(converted) == set(reference.state_dict())


def test_original_and_diffusers_layouts_give_identical_outputs() -> None:
    sd = _tiny()
    variant = detect_variant(sd)
    model = build_transformer(sd, variant)
    out = _run(model)
    assert out.shape == (2, 8, 4, 4) and torch.isfinite(out).all()
    resaved = {k: v.clone() for k, v in model.state_dict().items()}
    again = detect_variant(resaved, "sana_128px.safetensors")
    assert again.layout == "diffusers"
    assert {k: v for k, v in again.config.items() if k != "sample_size"} == {
        k: v for k, v in variant.config.items() if k != "sample_size"
    }
    assert torch.equal(_run(build_transformer(resaved, again)), out)


def test_pe_scale_read_from_pos_embed_values() -> None:
    assert detect_variant(_tiny(pe_scale=None)).interpolation_scale is None
    for scale in (1.0, 2.0):
        variant = detect_variant(_tiny(pe_scale=scale))
        assert variant.interpolation_scale == scale
        model = build_transformer(_tiny(pe_scale=scale), variant)
        assert torch.allclose(model.patch_embed.pos_embed, _tiny(pe_scale=scale)["pos_embed"], atol=1e-6)
    broken = _tiny(pe_scale=1.0)
    broken["pos_embed"] = torch.randn_like(broken["pos_embed"])
    with pytest.raises(CheckpointError, match="sin-cos"):
        detect_variant(broken)


def test_qk_norm_weights_are_carried() -> None:
    sd = _tiny(qk_norm=True)
    variant = detect_variant(sd)
    assert variant.qk_norm == "rms_norm_across_heads" and variant.name.startswith("SANA-1.5")
    model = build_transformer(sd, variant)
    norm_k = model.transformer_blocks[1].attn2.norm_k.weight
    assert torch.equal(norm_k, sd["blocks.1.cross_attn.k_norm.weight"])
    assert torch.isfinite(_run(model)).all()


def test_resolution_from_file_name_when_weights_cannot_tell() -> None:
    sd = fixtures.original_state_dict(2240, 20, grid=128, device="meta")
    del sd["pos_embed"]
    variant = detect_variant(sd, "Sana_1600M_4Kpx_BF16.pth")
    assert (variant.resolution, variant.interpolation_scale, variant.flow_shift) == (4096, 2.0, 6.0)
    assert detect_variant(sd, "Sana_1600M_2Kpx.pth").resolution == 2048
    plain = detect_variant(sd, "weights.pth")
    assert (plain.resolution, plain.interpolation_scale) == (1024, None)
    build_transformer(sd, plain)  # converts without the buffer


def test_prefixed_and_nested_pth_checkpoint_loads(tmp_path) -> None:
    sd = _tiny(pe_scale=2.0)
    path = tmp_path / "Sana_tiny.pth"
    nested = {f"model.diffusion_model.{k}": v for k, v in sd.items()}
    torch.save({"state_dict": nested, "step": 3, "config": {"num_cross_attention_heads": 1}}, path)
    model, variant = load_transformer_file(path)
    assert variant.interpolation_scale == 2.0
    assert torch.equal(_run(model), _run(build_transformer(sd, detect_variant(sd))))


def test_non_sana_and_incomplete_checkpoints_refused(tmp_path) -> None:
    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}
    save_file(unet, tmp_path / "sd15.safetensors")
    with pytest.raises(CheckpointError, match="not a SANA transformer"):
        load_transformer_file(tmp_path / "sd15.safetensors")
    sd = _tiny()
    del sd["blocks.1.cross_attn.proj.bias"]
    with pytest.raises(CheckpointError, match=r"cross_attn\.proj\.bias"):
        build_transformer(sd, detect_variant(sd))
    extra = _tiny()
    extra["blocks.0.attn.surprise.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="no SANA variant uses"):
        build_transformer(extra, detect_variant(extra))
    sprint = _tiny()
    sprint["cfg_embedder.mlp.0.weight"] = torch.zeros(64, 256)
    with pytest.raises(CheckpointError, match="Sprint"):
        detect_variant(sprint)
    shapes = _tiny()
    shapes["blocks.0.attn.proj.weight"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError, match="does not fit"):
        build_transformer(shapes, detect_variant(shapes))


_RAN = []


def _payload() -> None:
    _RAN.append(True)


class _Evil:
    def __reduce__(self):
        return (_payload, ())


def test_pickle_with_code_is_refused_and_never_runs(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled Python code"):
        load_state_dict(path)
    assert not _RAN


def test_truncated_and_corrupt_files_refused(tmp_path) -> None:
    sd = {"blocks.0.cross_attn.q_linear.weight": torch.randn(64, 64)}
    good_st, good_pth = tmp_path / "a.safetensors", tmp_path / "a.pth"
    save_file(sd, good_st)
    torch.save(sd, good_pth)
    assert torch.equal(load_state_dict(good_st)["blocks.0.cross_attn.q_linear.weight"], sd[next(iter(sd))])
    for good in (good_st, good_pth):
        cut = tmp_path / f"cut{good.suffix}"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_state_dict(cut)
    garbage = tmp_path / "noise.safetensors"
    garbage.write_bytes(b"\x00\x01not a model" * 10)
    with pytest.raises(CheckpointError, match=r"noise\.safetensors"):
        load_state_dict(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "missing.safetensors")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="unsupported extension"):
        load_state_dict(tmp_path / "model.gguf")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pth")
    noise = torch.randint(0, 256, (4000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (tmp_path / "random.pth").write_bytes(noise.numpy().tobytes())
    with pytest.raises(CheckpointError, match=r"random\.pth' is not a PyTorch checkpoint"):
        load_state_dict(tmp_path / "random.pth")


def test_single_file_builds_the_folder_model_or_is_refused(tmp_path) -> None:
    """A custom size's cross-attention heads are not in the weights: the single file must store them."""
    folder = fixtures.write_pipeline_folder(tmp_path / "toy")
    from_folder, _ = load_transformer_folder(folder)
    weights = from_folder.state_dict()
    bare = tmp_path / "toy.safetensors"
    save_file(weights, bare)
    with pytest.raises(CheckpointError, match=r"safetensors metadata 'config'.*num_cross_attention_heads"):
        load_transformer_file(bare)
    config = (folder / "transformer" / "config.json").read_text()
    described = tmp_path / "toy_with_config.safetensors"
    save_file(weights, described, metadata={"config": config})
    from_file, variant = load_transformer_file(described)
    assert variant.config["num_cross_attention_heads"] == from_folder.config.num_cross_attention_heads == 2
    assert torch.equal(_run(from_file), _run(from_folder))
    save_file(weights, bare, metadata={"config": "not json"})
    with pytest.raises(CheckpointError, match="not JSON"):
        load_transformer_file(bare)


def test_sana_dcae_single_file_layout_checked() -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderDC

    with init_empty_weights():
        reference = AutoencoderDC(**SANA_DCAE_F32C32_CONFIG)
    sd = dict(reference.state_dict())
    vae = build_vae(sd, "dc-ae.safetensors")
    assert vae.spatial_compression_ratio == 32 and vae.config.latent_channels == 32
    assert vae.config.scaling_factor == pytest.approx(0.41407)
    sd["encoder.conv_out.weight"] = torch.empty(16, 1024, 3, 3, device="meta")
    with pytest.raises(CheckpointError, match="not SANA's f32c32"):
        build_vae(sd, "dc-ae-f32c16.safetensors")
    with pytest.raises(CheckpointError, match="not a DC-AE"):
        build_vae({"decoder.conv_in.weight": torch.zeros(1)}, "sdxl_vae.safetensors")


def test_tiled_decode_matches_full_decode_when_one_tile_and_bounded_shape(tmp_path) -> None:
    fixtures.tiny_vae().save_pretrained(tmp_path / "vae")
    vae = load_vae_folder(tmp_path)
    z = torch.randn(1, 8, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = vae.decode(z).sample
    assert torch.equal(decode_tiled(vae, z, tile=12, overlap=2), full)
    tiled = decode_tiled(vae, z, tile=6, overlap=2)
    assert tiled.shape == full.shape == (1, 3, 48, 48)
    assert not vae.use_tiling  # settings restored
    with pytest.raises(ValueError, match="overlap"):
        decode_tiled(vae, z, tile=4, overlap=4)


class _LinearAE(torch.nn.Module):
    """An 'autoencoder' whose latent is a known linear map of the pooled colour: the fit must invert it."""

    spatial_compression_ratio = 4

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(3)))

    def encode(self, images: torch.Tensor) -> types.SimpleNamespace:
        pooled = torch.nn.functional.avg_pool2d(images, 4)
        latent = torch.einsum("bchw,lc->blhw", pooled, self.weight) + 0.25
        return types.SimpleNamespace(latent=latent)


def test_latent_rgb_fit_recovers_a_linear_decoder() -> None:
    ae = _LinearAE()
    factors, bias = fit_latent_rgb(ae, scale=2.0)
    rgb = torch.tensor([[0.3, -0.5, 0.9]])
    latent = (rgb @ ae.weight.T.detach() + 0.25) * 2.0
    assert torch.allclose(latent @ factors + bias, rgb, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_text() -> SanaTextEncoder:
    tokenizer = fixtures.tiny_tokenizer()
    return SanaTextEncoder(fixtures.tiny_gemma2(len(tokenizer)), tokenizer)


def test_text_conditioning_matches_diffusers_sana_pipeline(tiny_text: SanaTextEncoder) -> None:
    pipe = types.SimpleNamespace(
        tokenizer=tiny_text.tokenizer,
        text_encoder=tiny_text.text_model,
        _text_preprocessing=SanaPipeline._text_preprocessing.__get__(types.SimpleNamespace()),
    )
    select = [0, *range(-MAX_SEQUENCE_LENGTH + 1, 0)]
    embeds, mask = tiny_text.encode(["A small fluffy white Cat ", ""])
    assert embeds.shape == (2, 300, 32) and mask.shape == (2, 300)
    ref, ref_mask = SanaPipeline._get_gemma_prompt_embeds(
        pipe, ["A small fluffy white Cat "], "cpu", torch.float32,
        complex_human_instruction=list(COMPLEX_HUMAN_INSTRUCTION),
    )  # fmt: skip
    assert torch.equal(ref[:, select], embeds[:1]) and torch.equal(ref_mask[:, select], mask[:1])
    neg, neg_mask = SanaPipeline._get_gemma_prompt_embeds(
        pipe, [""], "cpu", torch.float32, complex_human_instruction=False
    )
    assert torch.equal(neg[:, select], embeds[1:]) and torch.equal(neg_mask[:, select], mask[1:])
    # template tail + 5 prompt words + BOS are attended; the empty prompt attends BOS only
    assert mask.sum(1).tolist() == [7, 1]


def test_text_long_prompt_truncated_to_budget(tiny_text: SanaTextEncoder) -> None:
    embeds, mask = tiny_text.encode(" ".join(["sky"] * 2000))
    assert embeds.shape == (1, 300, 32) and int(mask.sum()) == 300 and torch.isfinite(embeds).all()
    tiny_text.instruction = "never"
    try:
        assert int(tiny_text.encode("a cat")[1].sum()) == 3
    finally:
        tiny_text.instruction = "auto"


def test_text_encoder_folder_loading(tmp_path, tiny_text: SanaTextEncoder) -> None:
    tiny_text.text_model.save_pretrained(tmp_path / "text_encoder")
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(CheckpointError, match="No tokenizer"):
        load_text_encoder(tmp_path)
    tiny_text.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = load_text_encoder(tmp_path)
    assert torch.equal(loaded.encode("a cat")[0], tiny_text.encode("a cat")[0])
    with pytest.raises(CheckpointError, match="No text encoder"):
        load_text_encoder(tmp_path / "tokenizer")


def test_prompt_settings_file_overrides_auto_only(tmp_path, tiny_text: SanaTextEncoder) -> None:
    """A model trained without SANA's instruction says so in prompt_settings.json; 'auto' follows it."""
    tiny_text.text_model.save_pretrained(tmp_path / "text_encoder")
    tiny_text.tokenizer.save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "prompt_settings.json").write_text('{"instruction": "never", "max_sequence_length": 12}')
    loaded = load_text_encoder(tmp_path)
    assert (loaded.instruction, loaded.max_sequence_length) == ("never", 12)
    assert loaded.encode("a cat")[0].shape[1] == 12
    assert load_text_encoder(tmp_path, instruction="always").instruction == "always"


def test_diffusers_pipeline_folder_loads(tmp_path) -> None:
    folder = fixtures.write_pipeline_folder(tmp_path / "toy", flow_shift=4.5)
    model, variant = load_transformer_folder(folder)
    assert variant.layout == "diffusers" and variant.flow_shift == 4.5 and variant.size == "custom"
    assert variant.resolution == 4 * 32
    assert model.config.caption_channels == 32
    with pytest.raises(CheckpointError, match="not a diffusers SANA folder"):
        load_transformer_folder(tmp_path)


def test_prompt_notes_name_unknown_words_and_cut_prompts() -> None:
    from temporal_tiling.sana import EMBEDDED_MODEL

    text = load_text_encoder(EMBEDDED_MODEL)
    assert text.prompt_notes("a navy night sky with one moon") == []
    assert text.prompt_notes("a zebra in the sky") == ["words the model does not know (read as <unk>): zebra"]
    assert text.prompt_notes("sky " * 31) == []  # 31 words + BOS: exactly what the model reads
    assert text.prompt_notes("sky " * 40) == ["the prompt is cut short: its last 9 tokens are dropped"]
    assert "empty" in text.prompt_notes("  ")[0]


def test_published_fixture_specs_are_detected_as_the_files_they_stand_for() -> None:
    expected = {
        "Sana_600M_1024px": ("SANA 600M 1024px", 3.0),
        "Sana_1600M_1024px": ("SANA 1600M 1024px", 3.0),
        "Sana_1600M_4Kpx": ("SANA 1600M 4K, sin-cos PE x2", 6.0),
    }
    assert set(fixtures.PUBLISHED_TRANSFORMERS) == set(expected)
    for name, spec in fixtures.PUBLISHED_TRANSFORMERS.items():
        variant = detect_variant(fixtures.original_state_dict(**spec, device="meta"), f"{name}_BF16.pth")
        assert (variant.name, variant.flow_shift) == expected[name]


def test_random_weights_in_any_dtype_keep_the_module_layout() -> None:
    sd = fixtures.original_state_dict(64, 2, grid=4, caption_channels=32, in_channels=8, dtype=torch.bfloat16)
    assert {v.dtype for k, v in sd.items() if k != "pos_embed"} == {torch.bfloat16}
    model = build_transformer(sd, detect_variant(sd))
    assert next(model.parameters()).dtype == torch.bfloat16
    reference = fixtures.tiny_vae()
    random = fixtures.random_state_dict(reference, torch.bfloat16, seed=3)
    assert {k: v.shape for k, v in random.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    weights = torch.cat([v.float().flatten() for v in random.values()])
    assert {v.dtype for v in random.values()} == {torch.bfloat16}
    assert abs(float(weights.std()) - 0.02) < 2e-3
