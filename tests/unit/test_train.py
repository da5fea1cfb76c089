"""Flow-matching trainer: every rule of the losses table is guarded so the wrong variant fails a test."""

import difflib
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lab import seamlab
from lab.training import autoencoder as ae
from lab.training import flow_matching as fm
from lab.training import loop, plots
from lab.training import losses as ls
from lab.training import toy_models as tm
from lab.training.embedded_recipe import model_card
from lab.training.toy_models import corpus
from temporal_tiling.sana import EMBEDDED_MODEL as SEAMLAB_SANA
from temporal_tiling.sana.vae import compression


# ----------------------------------------------------------------------------- bug table
def test_interpolation_runs_from_data_to_noise():
    x0, noise = torch.full((3, 2, 2, 2), 2.0), torch.full((3, 2, 2, 2), -1.0)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    x = ls.interpolate(x0, noise, sigma)
    assert torch.equal(x[0], x0[0])  # σ = 0 is the data
    assert torch.equal(x[2], noise[2])  # σ = 1 is pure noise
    assert torch.allclose(x[1], torch.full((2, 2, 2), 0.75 * 2.0 + 0.25 * -1.0))  # swapped would be 0.25


def test_target_is_noise_minus_data_and_recovers_x0():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    v = ls.velocity_target(x0, noise)
    assert torch.equal(v, noise - x0)
    sigma = torch.tensor([0.1, 0.4, 0.7, 0.95])
    x_t = ls.interpolate(x0, noise, sigma)
    assert torch.allclose(x_t - sigma.view(-1, 1, 1, 1) * v, x0, atol=1e-6)  # SANA: x0 = x_σ - σ·v
    eps = 1e-3  # v is the derivative of x_σ along σ
    assert torch.allclose((ls.interpolate(x0, noise, sigma + eps) - x_t) / eps, v, atol=1e-3)


def test_bf16_autocast_keeps_fp32_master_weights():
    lin = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2)
    with ls.autocast("cpu", "bf16"):
        y = lin(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16
    y.float().pow(2).mean().backward()
    opt.step()
    assert lin.weight.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32
    assert all(s.dtype == torch.float32 for st in opt.state.values() for s in st.values() if s.ndim)
    with pytest.raises(ls.TrainError, match="bf16"):
        ls.autocast("cpu", "fp16")


def test_shift_three_is_applied():
    assert ls.SHIFT == 3.0
    assert ls.shift_sigmas(torch.tensor(0.5)).item() == pytest.approx(0.75)
    assert ls.shift_sigmas(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]
    g = torch.Generator().manual_seed(0)
    sig = ls.sample_sigmas(20000, g)
    assert sig.median().item() == pytest.approx(0.75, abs=0.02)  # unshifted median would be 0.5


def test_timesteps_are_logit_normal_not_beta():
    u = ls.sample_logit_normal(40000, torch.Generator().manual_seed(1))
    z = torch.logit(u)
    assert z.mean().item() == pytest.approx(0.0, abs=0.03)
    assert z.std().item() == pytest.approx(1.0, abs=0.03)  # Beta(1.6, 1.605) gives a logit std ≈ 1.31
    assert (z.abs() < 1).float().mean().item() == pytest.approx(0.6827, abs=0.01)
    beta = torch.distributions.Beta(1.6, 1.605).sample((40000,))
    assert abs(torch.logit(beta).std().item() - 1.0) > 0.2  # the test can tell the two apart


class _StochasticAE(torch.nn.Module):
    """Stand-in with both a deterministic `.latent` and a sampling `.latent_dist`."""

    config = SimpleNamespace(scaling_factor=0.5)

    def encode(self, x):
        mean = x[:, :2]
        dist = SimpleNamespace(sample=lambda: mean + torch.randn_like(mean))
        return SimpleNamespace(latent=mean, latent_dist=dist)


def test_encode_is_deterministic_latent_times_scaling_factor():
    x = torch.rand(2, 3, 8, 8)
    z = ls.encode_latents(_StochasticAE(), x)
    assert torch.equal(z, (x * 2 - 1)[:, :2] * 0.5)
    torch.manual_seed(0)
    vae = tm.build_autoencoder(4, (8, 16))
    assert torch.equal(ls.encode_latents(vae, x), ls.encode_latents(vae, x))


def test_loss_is_sigma_weighted_cosmap():
    w = ls.sigma_weights(torch.tensor([0.0, 0.5, 1.0]))
    assert w.tolist() == pytest.approx([2 / math.pi, 4 / math.pi, 2 / math.pi])
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    target[1] *= 2  # errors 1 and 4
    sigma = torch.tensor([0.5, 0.1])
    expected = (ls.sigma_weights(sigma) * torch.tensor([1.0, 4.0])).mean()
    loss = ls.flow_matching_loss(pred, target, sigma)
    assert loss.item() == pytest.approx(expected.item())
    assert abs(loss.item() - 2.5) > 0.1  # unweighted MSE would be 2.5


# ----------------------------------------------------------------------------- text side
def test_tokenizer_is_a_real_word_level_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = tm.build_tokenizer(corpus(200))
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    ids = back("A blue sky, zebra").input_ids
    assert ids[0] == back.bos_token_id and back.unk_token_id in ids
    assert back.convert_ids_to_tokens(ids[1:4]) == ["a", "blue", "sky"]
    assert back.padding_side == "right" and back.pad_token_id == 0


def test_prompts_change_the_text_embedding():
    tok = tm.build_tokenizer(corpus(200))
    te = tm.build_text_encoder(tok, hidden=16, seed=0)
    emb, mask = tm.encode_prompts(tok, te, ["a red sky", "a blue sky", ""], max_length=8)
    assert emb.shape == (3, 8, 16) and mask[2].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert (emb[0, 2] - emb[1, 2]).abs().max() > 0.1  # the colour token differs
    assert torch.equal(emb[0, 1], emb[1, 1])  # causal encoder: the prefix "a" is shared


# ----------------------------------------------------------------------------- loop, resume, plots
def _tiny(seed=0):
    """Tiny stack; `seed` only changes the transformer init (the frozen parts are the same every call)."""
    tok = tm.build_tokenizer(corpus(100))
    te = tm.build_text_encoder(tok, hidden=16, seed=0)
    torch.manual_seed(0)
    vae = tm.build_autoencoder(4, (8, 16)).requires_grad_(False)
    torch.manual_seed(seed)
    transformer = tm.build_transformer(4, 16, hidden=16, heads=2, layers=1)
    cfg = fm.FlowConfig(
        steps=4, lr=1e-3, warmup=2, tokens_per_step=32, sizes=((4, 4),), crop_prob=0.5, checkpoint_every=2
    )
    return transformer, vae, tok, te, cfg


def test_resume_equals_uninterrupted_run(tmp_path):
    t1, vae, tok, te, cfg = _tiny()
    ema1, res1 = loop.run_loop(
        t1, fm.flow_loss_fn(t1, vae, tok, te, cfg), cfg, loop.Checkpoint(tmp_path / "a"), "a"
    )

    t2, vae, tok, te, cfg = _tiny()
    cfg.steps = 2
    loop.run_loop(t2, fm.flow_loss_fn(t2, vae, tok, te, cfg), cfg, loop.Checkpoint(tmp_path / "b"), "b")
    t3, vae, tok, te, cfg = _tiny(seed=1)  # fresh process stand-in: different init, state comes from disk
    ema3, res3 = loop.run_loop(
        t3, fm.flow_loss_fn(t3, vae, tok, te, cfg), cfg, loop.Checkpoint(tmp_path / "b"), "b"
    )

    assert res3.step == res1.step == 4
    for (k, a), b in zip(t1.state_dict().items(), t3.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for a, b in zip(ema1.module.state_dict().values(), ema3.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert res1.history == res3.history
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "optimizer.pt", "state.json"]
    torch.load(tmp_path / "b" / "optimizer.pt", weights_only=True)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["step"] == 4


def test_training_reduces_the_flow_loss():
    transformer, vae, tok, te, cfg = _tiny()
    cfg.steps, cfg.lr, cfg.log_every, cfg.sizes = 40, 3e-3, 10, ((4, 4),)
    _, res = loop.run_loop(transformer, fm.flow_loss_fn(transformer, vae, tok, te, cfg), cfg, None, "t")
    assert res.history["loss"][-1] < 0.8 * res.history["loss"][0]


def test_ema_decay_warms_up_then_caps():
    lin = torch.nn.Linear(1, 1, bias=False)
    ema = loop.make_ema(lin, decay=0.9)
    for value in (1.0, 2.0):
        lin.weight.data.fill_(value)
        ema.update_parameters(lin)  # first update copies, second uses decay (1 + 1) / (10 + 1)
    d = 2 / 11
    assert ema.module.weight.item() == pytest.approx(d * 1.0 + (1 - d) * 2.0)
    for _ in range(200):
        ema.update_parameters(lin)
    lin.weight.data.fill_(3.0)
    ema.update_parameters(lin)  # decay capped at 0.9 once (1 + n) / (10 + n) exceeds it
    assert ema.module.weight.item() == pytest.approx(0.9 * 2.0 + 0.1 * 3.0, abs=1e-5)


def test_loss_curve_png(tmp_path):
    path = tmp_path / "loss.png"
    plots.plot_loss_curves({"flow": ([10, 20, 30], [1.0, 0.5, 0.3]), "ae": ([10, 30], [0.2, 0.1])}, path)
    img = torch.from_numpy(np.array(Image.open(path).convert("L"))).float()
    assert Image.open(path).size == (480, 260) and (img < 128).float().mean() > 0.005


def test_autoencoder_loss_and_psnr():
    torch.manual_seed(0)
    vae = tm.build_autoencoder(4, (8, 16))
    cfg = ae.AEConfig(steps=1, batch=2, crop=16)
    loss = ae.ae_loss_fn(vae, cfg)(0, loop.step_generator(0, 0))
    loss.backward()
    assert loss.item() > 0 and vae.encoder.conv_in.weight.grad is not None
    images = seamlab.render(seamlab.sample_scenes(2, seed=0), 16, 16)
    assert 0 < ae.reconstruction_psnr(vae, images) < 30  # untrained: far from the 30 dB bar


def test_bad_settings_raise():
    t, vae, tok, te, cfg = _tiny()
    t.requires_grad_(False)
    with pytest.raises(ls.TrainError, match="no trainable parameters"):
        loop.run_loop(t, fm.flow_loss_fn(t, vae, tok, te, cfg), cfg, None, "x")


# ----------------------------------------------------------------------------- the shipped model
needs_model = pytest.mark.skipif(
    not (SEAMLAB_SANA / "model_index.json").exists(), reason="embedded model not built"
)


@needs_model
def test_embedded_model_loads_offline_and_fits_budget():
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import AutoModel, AutoTokenizer

    size = sum(f.stat().st_size for f in SEAMLAB_SANA.rglob("*") if f.is_file())
    assert size <= 25e6
    transformer = SanaTransformer2DModel.from_pretrained(SEAMLAB_SANA / "transformer")
    vae = AutoencoderDC.from_pretrained(SEAMLAB_SANA / "vae")
    te = AutoModel.from_pretrained(SEAMLAB_SANA / "text_encoder")
    tok = AutoTokenizer.from_pretrained(SEAMLAB_SANA / "tokenizer")
    assert type(te).__name__ == "Gemma2Model" and tok.unk_token_id not in tok("one sun").input_ids
    assert compression(vae) >= 8 and transformer.config.caption_channels == te.config.hidden_size
    images = seamlab.render(seamlab.sample_scenes(8, seed=424242), 64, 64)
    assert ae.reconstruction_psnr(vae.eval(), images) >= 30.0
    card = (SEAMLAB_SANA / "README.md").read_text()
    assert "python -m lab.training build" in card


@needs_model
def test_model_card_template_renders_the_committed_card():
    """The template filled in with the committed training log gives the committed card, except the
    temporal-LoRA bullet: that LoRA was retrained for longer after the build and its text edited by hand
    (the log keeps the build's 200-step run); lines added by hand elsewhere are allowed too."""
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import AutoModel, AutoTokenizer

    rendered = model_card(
        SanaTransformer2DModel.from_pretrained(SEAMLAB_SANA / "transformer"),
        AutoencoderDC.from_pretrained(SEAMLAB_SANA / "vae"),
        AutoModel.from_pretrained(SEAMLAB_SANA / "text_encoder"),
        AutoTokenizer.from_pretrained(SEAMLAB_SANA / "tokenizer"),
        json.loads((SEAMLAB_SANA / "training_log.json").read_text()),
    ).splitlines()
    committed = (SEAMLAB_SANA / "README.md").read_text().splitlines()
    lora_start = next(i for i, line in enumerate(rendered) if line.startswith("- Temporal LoRA: "))
    lora_end = next(i for i, line in enumerate(rendered) if line.startswith("- Machine: "))
    matcher = difflib.SequenceMatcher(a=rendered, b=committed, autojunk=False)
    changed = [
        rendered[i1:i2]
        for tag, i1, i2, _, _ in matcher.get_opcodes()
        if tag in ("replace", "delete") and not (lora_start <= i1 and i2 <= lora_end)
    ]
    assert not changed
    assert len(rendered) > 50 and "$" not in "".join(rendered)


@needs_model
def test_embedded_model_listens_to_the_prompt():
    from diffusers import SanaTransformer2DModel
    from transformers import AutoModel, AutoTokenizer

    transformer = SanaTransformer2DModel.from_pretrained(SEAMLAB_SANA / "transformer").eval()
    te = AutoModel.from_pretrained(SEAMLAB_SANA / "text_encoder")
    tok = AutoTokenizer.from_pretrained(SEAMLAB_SANA / "tokenizer")
    emb, mask = tm.encode_prompts(
        tok, te, ["a horizontal gradient from red to blue", "wide navy and magenta dots"]
    )
    x = torch.randn(
        1, transformer.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0)
    ).expand(2, -1, -1, -1)
    with torch.no_grad():
        v = transformer(x, emb, torch.full((2,), 700.0), encoder_attention_mask=mask).sample
    assert (v[0] - v[1]).abs().mean() > 0.05
