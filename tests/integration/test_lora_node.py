"""Load SANA LoRA inside ComfyUI: the embedded temporal LoRA patches a MODEL clone exactly as peft does."""

from __future__ import annotations

import pytest
import torch
from sana_comfy import pack_module


@pytest.fixture(scope="module")
def nodes(registered):
    return pack_module("nodes.loaders"), pack_module("nodes.lora")


def _call(transformer, x, text, t):
    with torch.no_grad():
        return transformer(x, text, t).sample


def test_temporal_lora_patches_a_clone_like_the_engine(nodes):
    from diffusers import SanaTransformer2DModel

    from temporal_tiling.lora import load_temporal_lora
    from temporal_tiling.sana import EMBEDDED_MODEL

    loaders, lora = nodes
    if lora.EMBEDDED_LORA_ENTRY not in lora.lora_choices():
        pytest.skip("the embedded temporal LoRA is not built")
    model = loaders.SanaCheckpointLoader.execute(
        loaders.EMBEDDED_ENTRY, loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "fp32", "auto"
    ).result[0]
    patched = lora.SanaLoraLoader.execute(model, lora.EMBEDDED_LORA_ENTRY, 1.0).result[0]
    assert len(patched.patches) == 4 * 4 and not model.patches  # 4 blocks × q, k, v, out; input untouched

    g = torch.Generator().manual_seed(0)
    x, text, t = (
        torch.randn(1, 16, 8, 8, generator=g),
        torch.randn(1, 32, 64, generator=g),
        torch.tensor([600.0]),
    )
    transformer = lora.sana_transformer(patched)
    base = _call(transformer, x, text, t)
    patched.patch_model()
    try:
        with_lora = _call(transformer, x, text, t)
    finally:
        patched.unpatch_model()
    assert torch.equal(_call(transformer, x, text, t), base)  # unpatched again

    reference = load_temporal_lora(
        SanaTransformer2DModel.from_pretrained(EMBEDDED_MODEL / "transformer"), lora.EMBEDDED_LORA
    )
    expected = _call(reference.eval(), x, text, t)
    assert (with_lora - base).abs().max() > 1e-3
    torch.testing.assert_close(with_lora, expected, atol=2e-4, rtol=1e-4)


def test_missing_lora_is_a_clear_error(nodes):
    loaders, lora = nodes
    model = loaders.SanaCheckpointLoader.execute(
        "tiny_sana_diffusers/", loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "default", "auto"
    ).result[0]
    with pytest.raises(ValueError, match="models/loras"):
        lora.SanaLoraLoader.execute(model, "no_such_lora.safetensors", 1.0)


class _Unpicklable:
    """A class in a pickle: loading it would run code, so torch's weights-only loader refuses the file."""


def test_unreadable_lora_files_name_the_file_and_never_advise_unsafe_loading(nodes, tmp_path, monkeypatch):
    loaders, lora = nodes
    model = loaders.SanaCheckpointLoader.execute(
        "tiny_sana_diffusers/", loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "default", "auto"
    ).result[0]
    (tmp_path / "header.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")  # header too large
    (tmp_path / "truncated.safetensors").write_bytes(lora.EMBEDDED_LORA.read_bytes()[:500])
    torch.save({"weights": _Unpicklable()}, tmp_path / "code.pt")
    monkeypatch.setattr(lora.folder_paths, "get_full_path", lambda kind, name: str(tmp_path / name))
    for name, message in [
        ("header.safetensors", "'header.safetensors' is not a readable safetensors file"),
        ("truncated.safetensors", "'truncated.safetensors' is not a readable safetensors file"),
        ("code.pt", "'code.pt' contains pickled Python code, which is never executed here"),
    ]:
        with pytest.raises(ValueError) as refused:
            lora.SanaLoraLoader.execute(model, name, 1.0)
        assert message in str(refused.value) and "weights_only" not in str(refused.value), refused.value
    (tmp_path / "short.sft").write_bytes(lora.EMBEDDED_LORA.read_bytes())  # ComfyUI lists .sft LoRAs too
    assert lora.SanaLoraLoader.execute(model, "short.sft", 1.0).result[0] is not model
