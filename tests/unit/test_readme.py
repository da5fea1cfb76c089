"""The engine example (docs/engine_api.md) runs as written, so the documented API cannot drift from the
code; the README lists the embedded model's words and its empty latent."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"
ENGINE_API = README.parent / "docs" / "engine_api.md"


def test_the_engine_example_runs():
    code = re.search(r"```python\n(.*?)```", ENGINE_API.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(ENGINE_API), "exec"), namespace)
    result, plan = namespace["result"], namespace["plan"]
    assert result.canvas.shape[-2:] == (plan.canvas_height, plan.canvas_width)
    assert result.tiles.shape[0] == len(plan)
    assert torch.isfinite(result.canvas).all()


def test_readme_lists_the_embedded_vocabulary_and_its_empty_latent():
    import json

    from temporal_tiling.options import EMBEDDED_MODEL

    text = README.read_text()
    vocab = json.loads((EMBEDDED_MODEL / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    listed = re.search(r"Its vocabulary: (.*)\.", text).group(1)
    assert set(re.findall(r"`([^`]+)`", listed)) == {w for w in vocab if w[0] != "<" and w != ","}
    vae = json.loads((EMBEDDED_MODEL / "vae" / "config.json").read_text())
    compression = 2 ** (len(vae["encoder_block_out_channels"]) - 1)
    row = next(line for line in text.splitlines() if line.startswith("| the embedded seam-lab model |"))
    assert f"{compression}×, {vae['latent_channels']} channels" in row and "EmptySD3LatentImage" in row
