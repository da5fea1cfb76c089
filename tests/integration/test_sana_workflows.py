"""API-format workflows through a real ComfyUI server (subprocess, POST /prompt, poll /history): stock
txt2img with the SANA loader, tiled VAE decoding, latent previews over the websocket, errors on the node."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sana_comfy import PACK_ROOT, run_with_previews

EMBEDDED = PACK_ROOT / "temporal_tiling" / "embedded" / "seamlab-sana" / "model_index.json"
FROM = "(from checkpoint folder)"


def txt2img(ckpt: str, vae: str = FROM, text: str = FROM, tiled: bool = False, size: int = 128) -> dict:
    """SanaTemporalCheckpointLoader -> CLIPTextEncode (+/-) -> KSampler -> VAEDecode(Tiled) -> SaveImage."""
    tiles = {"tile_size": 64, "overlap": 32, "temporal_size": 64, "temporal_overlap": 8} if tiled else {}
    decode = {
        "class_type": "VAEDecodeTiled" if tiled else "VAEDecode",
        "inputs": {"samples": ["5", 0], "vae": ["1", 2], **tiles},
    }
    return {
        "1": {
            "class_type": "SanaTemporalCheckpointLoader",
            "inputs": {
                "ckpt_name": ckpt,
                "vae_name": vae,
                "text_encoder_name": text,
                "weight_dtype": "default",
                "prompt_template": "auto",
            },
        },
        "2": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a smooth blue sky over a calm sea", "clip": ["1", 1]},
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": 7,
                "steps": 3,
                "cfg": 4.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": 1.0,
            },
        },
        "6": decode,
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "sana_it"}},
    }


def _saved_image(server, entry: dict, models_dir) -> Image.Image:
    assert entry.get("status", {}).get("status_str") == "success", (entry.get("status"), server.log_tail())
    info = entry["outputs"]["7"]["images"][0]
    path = models_dir / "output" / info["subfolder"] / info["filename"]
    assert path.is_file()
    return Image.open(path)


def test_object_info_lists_loader_choices(server) -> None:
    info = server.get("/object_info/SanaTemporalCheckpointLoader")["SanaTemporalCheckpointLoader"]
    choices = info["input"]["required"]["ckpt_name"][1]["options"]
    assert "tiny_sana_diffusers/" in choices and "tiny_sana_pe2.pth" in choices
    assert info["output"] == ["MODEL", "CLIP", "VAE"]


def test_txt2img_writes_an_image(server, models_dir) -> None:
    image = _saved_image(server, server.run(txt2img("tiny_sana_diffusers/")), models_dir)
    assert image.size == (64, 64) and image.mode == "RGB"  # 128 px EmptyLatent -> 16 cells -> 4x tiny DC-AE


def test_txt2img_single_file_with_tiled_decode(server, models_dir) -> None:
    graph = txt2img("tiny_sana_pe2.pth", "tiny_dcae/", "tiny_gemma2/", tiled=True, size=256)
    image = _saved_image(server, server.run(graph), models_dir)
    assert image.size == (128, 128) and image.mode == "RGB"


def test_latent_previews_arrive_as_rgb_images(server) -> None:
    graph = txt2img("tiny_sana_1k.safetensors", "tiny_dcae/", "tiny_gemma2/")
    graph["5"]["inputs"]["seed"] = 8  # a new prompt, not a cached one
    entry, previews = run_with_previews(server, graph)
    assert entry["status"]["status_str"] == "success"
    assert len(previews) == 3  # one per step
    preview = Image.open(io.BytesIO(previews[-1]))
    assert preview.mode == "RGB" and preview.size[0] == preview.size[1]  # upscaled by the server


@pytest.mark.skipif(not EMBEDDED.is_file(), reason="the embedded seamlab-sana model is not built yet")
def test_txt2img_with_embedded_model(server, models_dir) -> None:
    image = _saved_image(server, server.run(txt2img("seamlab-sana (embedded)")), models_dir)
    assert image.mode == "RGB"


def test_non_sana_checkpoint_fails_on_the_node_with_a_clear_message(server) -> None:
    entry = server.run(txt2img("sd15.safetensors", "tiny_dcae/", "tiny_gemma2/"))
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "SanaTemporalCheckpointLoader"
    assert "sd15.safetensors" in errors[0]["exception_message"]
    assert "not a SANA transformer checkpoint" in errors[0]["exception_message"]
