"""Temporal LoRA: zero-init equality, the tile-sequence loss with the BCLA cache, save/load round trip."""

import pytest
import torch
from safetensors import safe_open

from lab.training import temporal_lora as tl
from lab.training import toy_models as tm
from lab.training.toy_models import corpus
from temporal_tiling import lora
from temporal_tiling.bcla import BCLACache, BCLAConfig, install_bcla
from temporal_tiling.plan import make_plan


@pytest.fixture(scope="module")
def text():
    tok = tm.build_tokenizer(corpus(100))
    te = tm.build_text_encoder(tok, hidden=16, seed=0)
    return tm.encode_prompts(tok, te, ["a blue to pink sky with one sun at top left", ""], max_length=12)


def _transformer(seed=0):
    torch.manual_seed(seed)
    return tm.build_transformer(4, 16, hidden=32, heads=2, layers=2).eval()


def _call(t, x, text):
    emb, mask = text
    with torch.no_grad():
        return t(x, emb, torch.tensor([600.0, 600.0]), encoder_attention_mask=mask).sample


def test_zero_init_equals_base_model_exactly(text):
    t = _transformer()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    base = _call(t, x, text)
    tl.add_temporal_lora(t)
    assert torch.equal(_call(t, x, text), base)
    b_weights = [p for n, p in t.named_parameters() if "lora_B" in n]
    assert b_weights and all(float(p.detach().abs().max()) == 0.0 for p in b_weights)


def test_adapter_targets_self_attention_projections_only():
    t = tl.add_temporal_lora(_transformer())
    trainable = {n for n, p in t.named_parameters() if p.requires_grad}
    modules = {n.split(".lora_")[0] for n in trainable}
    expected = {
        f"transformer_blocks.{i}.attn1.{m}" for i in range(2) for m in ("to_q", "to_k", "to_v", "to_out.0")
    }
    assert modules == expected
    assert t.peft_config[lora.ADAPTER].r == 32 and t.peft_config[lora.ADAPTER].init_lora_weights is True


def _sequence(t, text, x0, noise, mode="cumulative", grad=False):
    plan = make_plan(
        width_px=64,
        height_px=32,
        tile_width_px=32,
        tile_height_px=32,
        overlap_px=0,
        compression=8,
        fit="shift",
    )  # two tiles side by side, 4x4 cells each
    cache = BCLACache(BCLAConfig(mode=mode), plan)
    undo = install_bcla(t, cache)
    try:
        emb, mask = text
        with torch.set_grad_enabled(grad):
            return tl.tile_sequence_losses(t, cache, x0, noise, torch.tensor([0.6, 0.6]), emb, mask), cache
    finally:
        undo()


def test_tile_loss_uses_the_cache_of_earlier_tiles_only(text):
    t = tl.add_temporal_lora(_transformer())
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 4, 4, 8, generator=g), torch.randn(2, 4, 4, 8, generator=g)
    causal, cache = _sequence(t, text, x0, noise)
    independent, _ = _sequence(t, text, x0, noise, mode="off")
    assert cache.norm() > 0
    assert torch.equal(causal[0], independent[0])  # the first tile has no cache
    assert abs(float(causal[1] - independent[1])) > 1e-4  # the second reads the first

    later = x0.clone()
    later[..., 4:] += 1.0  # change only the second tile
    changed, _ = _sequence(t, text, later, noise)
    assert torch.equal(changed[0], causal[0])  # tile 0 never sees tile 1
    earlier = x0.clone()
    earlier[..., :4] += 1.0  # change only the first tile's content (and so the cache)
    via_cache, _ = _sequence(t, text, earlier, noise)
    assert abs(float(via_cache[1] - causal[1])) > 1e-4


def test_gradient_reaches_the_adapter_through_the_cached_sequence(text):
    t = tl.add_temporal_lora(_transformer())
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 4, 4, 8, generator=g), torch.randn(2, 4, 4, 8, generator=g)
    losses, _ = _sequence(t, text, x0, noise, grad=True)
    losses.mean().backward()
    grads = {n: p.grad for n, p in t.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert sum(float(g.abs().sum()) for n, g in grads.items() if "lora_B" in n) > 0
    assert all(p.grad is None for n, p in t.named_parameters() if "lora_" not in n)  # base frozen


def test_save_and_load_round_trip(tmp_path, text):
    t = tl.add_temporal_lora(_transformer())
    with torch.no_grad():
        for name, p in t.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    trained = _call(t, x, text)
    file = tl.save_temporal_lora(t, tmp_path)
    with safe_open(file, "pt") as f:
        keys = list(f.keys())
        assert "lora_adapter_metadata" in f.metadata()
    assert len(keys) == 2 * 4 * 2 and all(k.startswith("transformer.transformer_blocks.") for k in keys)

    fresh = _transformer()
    assert not torch.equal(_call(fresh, x, text), trained)
    lora.load_temporal_lora(fresh, tmp_path)
    assert torch.allclose(_call(fresh, x, text), trained, atol=1e-6)


def test_training_run_writes_a_loadable_adapter(tmp_path):
    tok = tm.build_tokenizer(corpus(100))
    te = tm.build_text_encoder(tok, hidden=16, seed=0)
    torch.manual_seed(0)
    vae = tm.build_autoencoder(4, (8, 16, 32, 32)).requires_grad_(False)  # 8x, like the real one
    t = _transformer()
    cfg = tl.LoraTrainConfig(steps=2, batch=1, rank=4, log_every=1, checkpoint_every=1)
    log = tl.train_temporal_lora_modules(t, vae, tok, te, cfg, tmp_path / "lora", tmp_path / "work")
    assert log["steps"] == 2 and len(log["history"]["loss"]) == 2
    assert (tmp_path / "lora" / "loss.png").is_file() and (tmp_path / "work" / "lora_ckpt").is_dir()
    fresh = lora.load_temporal_lora(_transformer(), tmp_path / "lora")
    assert fresh.peft_config[lora.ADAPTER].r == 4


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(lora.LoraError, match="rank"):
        tl.temporal_lora_config(rank=0)
    with pytest.raises(lora.LoraError, match="no LoRA file"):
        lora.load_temporal_lora(_transformer(), tmp_path / "missing")
    with pytest.raises(lora.LoraError, match="not a SanaPipeline folder"):
        tl.train_temporal_lora(tmp_path, tmp_path / "out", tl.LoraTrainConfig(steps=1), tmp_path / "w")
