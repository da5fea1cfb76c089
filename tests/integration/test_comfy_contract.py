"""The pack's hand-built ComfyUI objects against core's contracts: the installed one (0.3.x) and, reproduced
from the installed source, what newer cores changed (new VAE defaults read by decode/encode, process_output's
return value ignored, empty latents rescaled by `spacial_downscale_ratio`, text encoders on a dynamic-VRAM
patcher unless `disable_offload`)."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
import torch
from sana_comfy import pack_module, stock_node_outputs

from temporal_tiling.sana import decode_tiled

NEWER_VAE_DEFAULTS = {
    "handles_tiling": False,
    "format_encoded": None,
    "pad_channel_value": None,
    "size": None,
    "audio_sample_rate": 44100,
}
"""Defaults that newer cores' `VAE.__init__` sets next to the 0.3.x ones and that their decode_tiled / encode
read (`if self.handles_tiling ...`, `if self.format_encoded is not None ...`)."""


@pytest.fixture(scope="module")
def sana_model(registered):
    return pack_module("nodes.sana_model")


@pytest.fixture(scope="module")
def parts(registered):
    loaders = pack_module("nodes.loaders")
    return loaders.SanaCheckpointLoader.execute(
        "tiny_sana_diffusers/", loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "fp32", "auto"
    ).result


@pytest.fixture
def dcae(parts):
    return parts[2].autoencoder


def core_method_with(monkeypatch, cls: type, name: str, old: str, new: str) -> str:
    """Replace `cls.name` by its installed source with `old` replaced by `new`: a newer core's behaviour
    reproduced on the installed one, so a test sees what that change does to the pack."""
    source = textwrap.dedent(inspect.getsource(getattr(cls, name)))
    assert old in source, f"the installed {cls.__name__}.{name} no longer contains {old!r}"
    line = source[: source.index(old)].rsplit("\n", 1)[-1]
    new = new.replace("\n", "\n" + line[: len(line) - len(line.lstrip())])  # `old`'s indentation
    source = source.replace(old, new, 1)
    namespace: dict = {}
    exec(
        compile(source, f"<{cls.__name__}.{name}>", "exec"),
        vars(inspect.getmodule(cls)),
        namespace,
    )
    monkeypatch.setattr(cls, name, namespace[name])
    return source


def unconditional_attributes(source: str) -> set[str]:
    """`self.X` names a method's source assigns outside any branch: what every instance of a stock class
    has."""
    body = ast.parse(textwrap.dedent(source)).body[0].body
    names = set()
    for statement in body:
        if isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                names.update(
                    node.attr
                    for node in ast.walk(target)
                    if isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                )
    return names


def reference_pixels(dcae, latent: torch.Tensor) -> torch.Tensor:
    """IMAGE straight from diffusers' DC-AE: [-1, 1] mapped to [0, 1], channels last."""
    with torch.no_grad():
        return ((dcae.decode(latent).sample + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)


def decode_ignoring_return(vae, latent: torch.Tensor) -> torch.Tensor:
    """Newer cores' VAE.decode: decode into a preallocated buffer, then `process_output(buffer_slice)` with
    its return value thrown away."""
    with torch.no_grad():
        decoded = vae.first_stage_model.decode(latent.to(vae.vae_dtype)).float()
    buffer = torch.empty_like(decoded)
    buffer.copy_(decoded)
    vae.process_output(buffer)
    return buffer.movedim(1, -1)


# --- VAE ---------------------------------------------------------------------------------------------------
def test_vae_has_every_attribute_the_installed_core_vae_sets(parts) -> None:
    import comfy.sd

    expected = unconditional_attributes(inspect.getsource(comfy.sd.VAE.__init__))
    assert {"process_output", "crop_input", "patcher", "first_stage_model"} <= expected  # the parse works
    missing = sorted(name for name in expected if not hasattr(parts[2], name))
    assert not missing, f"SanaVAE lacks what this ComfyUI's VAE.__init__ sets: {missing}"


def test_vae_takes_attributes_a_newer_core_adds(monkeypatch, sana_model, dcae) -> None:
    import comfy.sd

    defaults = "".join(f"\nself.{name} = {value!r}" for name, value in NEWER_VAE_DEFAULTS.items())
    newer = core_method_with(
        monkeypatch, comfy.sd.VAE, "__init__", "self.crop_input = True", "self.crop_input = True" + defaults
    )
    assert NEWER_VAE_DEFAULTS.keys() <= unconditional_attributes(newer)
    vae = sana_model.SanaVAE(dcae)
    assert {name: getattr(vae, name, "missing") for name in NEWER_VAE_DEFAULTS} == NEWER_VAE_DEFAULTS
    assert not vae.handles_tiling  # core keeps calling the adapter's decode_tiled_ (the engine's DC-AE tiler)


def test_vae_process_output_works_in_place_and_by_return(parts, dcae) -> None:
    vae = parts[2]
    latent = torch.randn(2, 8, 6, 10, generator=torch.Generator().manual_seed(1))
    expected = reference_pixels(dcae, latent)
    assert float(expected.min()) == 0.0 and float(expected.max()) == 1.0  # the clamp matters here
    torch.testing.assert_close(decode_ignoring_return(vae, latent), expected)
    torch.testing.assert_close(vae.decode(latent), expected)  # 0.3.x: the return value is used


def test_vae_process_input_leaves_the_callers_image_alone(parts) -> None:
    image = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    kept = image.clone()
    signed = parts[2].process_input(image)
    assert torch.equal(image, kept)
    torch.testing.assert_close(signed, kept * 2.0 - 1.0)


def test_stock_vae_nodes_give_the_dcae_pixels(parts, dcae) -> None:
    """VAE Decode, VAE Decode (Tiled), VAE Encode and VAE Encode (Tiled), as the installed ComfyUI runs them
    (in inference mode): the DC-AE's pixels (tiled: the engine's DC-AE tiler's) mapped to [0, 1], and the
    latents of the image mapped to [-1, 1]."""
    with torch.inference_mode():
        check_stock_vae_nodes(parts[2], dcae)


def check_stock_vae_nodes(vae, dcae) -> None:
    import nodes as comfy_nodes

    latent = torch.randn(1, 8, 24, 32, generator=torch.Generator().manual_seed(3))
    expected = reference_pixels(dcae, latent)
    decoded = comfy_nodes.VAEDecode().decode(vae, {"samples": latent})[0]
    torch.testing.assert_close(decoded, expected)
    whole_tile = comfy_nodes.VAEDecodeTiled().decode(vae, {"samples": latent}, tile_size=256, overlap=64)[0]
    torch.testing.assert_close(whole_tile, expected)
    tiled = comfy_nodes.VAEDecodeTiled().decode(vae, {"samples": latent}, tile_size=64, overlap=16)[0]
    # 64 px / 16 px at 4x: 16-cell tiles overlapping by 4
    expected_tiled = ((decode_tiled(dcae, latent, tile=16, overlap=4) + 1.0) / 2.0).clamp(0.0, 1.0)
    torch.testing.assert_close(tiled, expected_tiled.movedim(1, -1))
    assert not torch.equal(tiled, expected)  # it did tile

    image = expected.clone()
    expected_latent = dcae.encode(image.movedim(-1, 1) * 2.0 - 1.0).latent
    encoded = comfy_nodes.VAEEncode().encode(vae, image)[0]["samples"]
    torch.testing.assert_close(encoded, expected_latent)
    encoded_tiled = comfy_nodes.VAEEncodeTiled().encode(vae, image, tile_size=512, overlap=64)[0]["samples"]
    torch.testing.assert_close(encoded_tiled, expected_latent)
    assert torch.equal(image, expected)  # the IMAGE other nodes still hold is untouched


# --- Latent format -----------------------------------------------------------------------------------------
def newer_fix_empty_latent(latent_format, samples: torch.Tensor, downscale_ratio_spacial: int | None):
    """Newer cores' fix_empty_latent_channels for an all-zero latent: channels repeated or cut to the
    model's, then resized by `downscale_ratio_spacial / latent_format.spacial_downscale_ratio` when the
    empty-latent node says which compression it made the latent for (EmptyLatentImage and
    EmptySD3LatentImage say 8; EmptyHunyuanImageLatent says nothing)."""
    import comfy.utils

    samples = comfy.utils.repeat_to_batch_size(samples, latent_format.latent_channels, dim=1)
    ratio_model = getattr(latent_format, "spacial_downscale_ratio", 8)  # LatentFormat's default there
    if downscale_ratio_spacial is not None and downscale_ratio_spacial != ratio_model:
        scale = downscale_ratio_spacial / ratio_model
        size = round(samples.shape[-1] * scale), round(samples.shape[-2] * scale)
        samples = comfy.utils.common_upscale(samples, *size, "nearest-exact", crop="disabled")
    return samples


def test_latent_format_states_its_compression_for_empty_latent_rescale(parts) -> None:
    """The tiny DC-AE is 4x: an /8 empty latent (EmptySD3LatentImage at 256x128) must become 32x64 cells so
    the VAE decodes it to the 256x128 asked for."""
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage

    model, _, vae = parts
    latent_format = model.get_model_object("latent_format")
    assert latent_format.spacial_downscale_ratio == vae.spacial_compression_decode() == 4
    empty = stock_node_outputs(EmptySD3LatentImage, width=256, height=128, batch_size=1)[0]["samples"]
    fixed = newer_fix_empty_latent(latent_format, empty, 8)
    assert tuple(fixed.shape) == (1, 8, 32, 64)
    assert tuple(vae.decode(fixed).shape[1:3]) == (128, 256)


# --- CLIP --------------------------------------------------------------------------------------------------
def test_text_encoder_stays_on_the_plain_patcher_under_dynamic_vram(monkeypatch, sana_model, parts) -> None:
    """Newer cores pick `ModelPatcher if getattr(cond_stage_model, "disable_offload", False) else
    CoreModelPatcher` (the dynamic-VRAM one); here a stand-in for the latter refuses, the rest is the
    installed CLIP."""
    import comfy.model_patcher
    import comfy.sd

    class DynamicPatcherStandIn(comfy.model_patcher.ModelPatcher):
        def __init__(self, model, *args, **kwargs) -> None:
            raise AssertionError(f"{type(model).__name__} was put on the dynamic-VRAM patcher")

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", DynamicPatcherStandIn, raising=False)
    core_method_with(
        monkeypatch,
        comfy.sd.CLIP,
        "__init__",
        "self.patcher = comfy.model_patcher.ModelPatcher(",
        "self.patcher = (comfy.model_patcher.ModelPatcher if getattr(self.cond_stage_model, "
        "'disable_offload', False) else comfy.model_patcher.CoreModelPatcher)(",
    )
    clip = sana_model.make_clip(parts[1].cond_stage_model.encoder, torch.float32)
    assert type(clip.patcher) is comfy.model_patcher.ModelPatcher
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red sky"))
    assert cond[0][0].shape == (1, 300, 32) and torch.isfinite(cond[0][0]).all()
