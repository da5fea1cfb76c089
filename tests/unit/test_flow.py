"""Flow schedule, samplers, CFG wrapper and the inpainting rule of temporal_tiling.flow."""

from __future__ import annotations

import math

import pytest
import torch

from lab.fixtures import tiny_transformer
from temporal_tiling.contracts import TileJob
from temporal_tiling.flow import (
    CFGDenoiser,
    FlowError,
    dpmpp_2m,
    euler,
    flow_sigmas,
    noise_scaling,
    sample_tile,
    shift_sigma,
)
from temporal_tiling.plan import Tile

SAMPLERS = {"euler": euler, "dpmpp_2m": dpmpp_2m}


# --- schedule -------------------------------------------------------------------------------------


def test_flow_sigmas_follow_sana_shift_and_end_at_zero() -> None:
    sigmas = flow_sigmas(10, shift=3.0)
    assert sigmas.shape == (11,) and sigmas.dtype == torch.float32
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    t = 0.7  # step 3 of 10
    assert sigmas[3].item() == pytest.approx(3 * t / (1 + 2 * t), abs=1e-7)
    assert torch.allclose(flow_sigmas(4, shift=1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_flow_sigmas_denoise_truncates_like_comfyui_ksampler() -> None:
    # KSampler: int(steps / denoise) steps planned, the last `steps` run.
    full = flow_sigmas(25, shift=3.0)
    part = flow_sigmas(10, shift=3.0, denoise=0.4)
    assert torch.equal(part, full[-11:])
    assert part[0].item() == pytest.approx(shift_sigma(torch.tensor(0.4), 3.0).item(), abs=1e-6)


@pytest.mark.parametrize(("steps", "shift", "denoise"), [(0, 3.0, 1.0), (10, 0.0, 1.0), (10, 3.0, 0.0)])
def test_flow_sigmas_refuse_impossible_settings(steps: int, shift: float, denoise: float) -> None:
    with pytest.raises(FlowError):
        flow_sigmas(steps, shift, denoise)


# --- samplers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_samplers_with_oracle_denoiser_stay_on_the_straight_path(name: str) -> None:
    """A denoiser that knows x0 makes every step land on (1-σ)·x0 + σ·noise and the end on x0."""
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 5, 5, generator=gen), torch.randn(2, 4, 5, 5, generator=gen)
    sigmas = flow_sigmas(7, shift=3.0)
    seen: list[torch.Tensor] = []
    out = SAMPLERS[name](lambda x, s: x0, noise.clone(), sigmas, lambda i, d, x, n: seen.append(x))
    assert len(seen) == 7
    for x, sigma in zip(seen, sigmas[:-1], strict=True):
        assert torch.allclose(x, (1 - sigma) * x0 + sigma * noise, atol=1e-5)
    assert torch.equal(out, x0)  # the last step returns the prediction bit for bit


def _gaussian_denoiser(variance: float):
    """Exact E[x0 | x_σ] for data ~ N(0, variance): x0 = α·s²·x / (α²·s² + σ²), α = 1 - σ."""

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1).to(x.dtype)
        a = 1 - s
        return a * variance * x / (a * a * variance + s * s)

    return model


def test_euler_on_linear_velocity_toy_matches_closed_form() -> None:
    """x0 = c(σ)·x makes each Euler step a scalar factor: x_N = x_1·Π(σ'/σ + (1 - σ'/σ)·c(σ))."""
    variance = 0.25
    x1 = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigmas = shift_sigma(torch.linspace(1, 0, 9, dtype=torch.float64), 3.0)
    factor = 1.0
    for sigma, nxt in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        a = 1 - sigma
        c = a * variance / (a * a * variance + sigma * sigma)
        factor *= nxt / sigma + (1 - nxt / sigma) * c
    assert torch.allclose(euler(_gaussian_denoiser(variance), x1, sigmas), x1 * factor, atol=1e-12)


def test_samplers_converge_to_the_exact_flow_ode_solution() -> None:
    """For Gaussian data the ODE maps x(σ) = z·sqrt(α²s² + σ²) to z·s: Euler is first order, 2M better."""
    variance = 0.25
    z = torch.randn(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = _gaussian_denoiser(variance)
    start = 0.5  # img2img start: the 2M history is finite from the first step on
    x_start = z * math.sqrt((1 - start) ** 2 * variance + start**2)
    exact = z * math.sqrt(variance)

    def error(sampler, steps: int) -> float:
        sigmas = torch.linspace(start, 0, steps + 1, dtype=torch.float64)
        return (sampler(model, x_start, sigmas) - exact).abs().max().item()

    e20, e40 = error(euler, 20), error(euler, 40)
    assert e40 < 0.02 and 1.8 < e20 / e40 < 2.2  # first order
    d40, d80 = error(dpmpp_2m, 40), error(dpmpp_2m, 80)
    assert d40 < 0.15 * e40 and d40 / d80 > 2.5  # higher order
    # From pure noise with SANA's shifted schedule both still reach the exact sample.
    x1 = z.clone()
    sigmas = shift_sigma(torch.linspace(1, 0, 81, dtype=torch.float64), 3.0)
    assert (euler(model, x1, sigmas) - exact).abs().max() < 0.04
    assert (dpmpp_2m(model, x1, sigmas) - exact).abs().max() < 0.01


# --- CFG wrapper ----------------------------------------------------------------------------------


class _RecordingModel(torch.nn.Module):
    """Velocity = x + mean of the text embedding; records each call's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(
        self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask=None, return_dict=True
    ):
        self.calls.append({"x": hidden_states, "text": encoder_hidden_states, "t": timestep})
        return (hidden_states + encoder_hidden_states.mean(dim=(1, 2)).reshape(-1, 1, 1, 1),)


class _CallLog:
    def __init__(self) -> None:
        self.calls: list[tuple[float, list[int]]] = []

    def set_call(self, sigma: float, branches) -> None:
        self.calls.append((sigma, list(branches)))


def test_cfg_denoiser_batches_cond_then_uncond_and_applies_guidance() -> None:
    model, log = _RecordingModel(), _CallLog()
    cond, uncond = torch.full((1, 3, 16), 2.0), torch.full((1, 3, 16), -1.0)
    denoiser = CFGDenoiser(model, cond, uncond, cfg=4.0, cache=log)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(4))  # a tile batch T*B = 2, B = 1
    out = denoiser(x, torch.full((2,), 0.25))
    call = model.calls[0]
    assert call["x"].shape[0] == 4 and torch.equal(call["x"][:2], x) and torch.equal(call["x"][2:], x)
    assert call["text"][:2].eq(2.0).all() and call["text"][2:].eq(-1.0).all()  # chunk 0 = cond
    assert torch.allclose(call["t"], torch.full((4,), 250.0))
    assert log.calls == [(0.25, [0, 1])]
    x0_cond, x0_uncond = x - 0.25 * (x + 2.0), x - 0.25 * (x - 1.0)
    assert torch.allclose(out, x0_uncond + 4.0 * (x0_cond - x0_uncond), atol=1e-6)


def test_cfg_one_runs_only_the_cond_branch() -> None:
    model, log = _RecordingModel(), _CallLog()
    denoiser = CFGDenoiser(model, torch.ones(1, 3, 16), None, cfg=1.0, cache=log)
    x = torch.zeros(1, 4, 2, 2)
    assert torch.allclose(denoiser(x, torch.full((1,), 0.5)), torch.full_like(x, -0.5))
    assert model.calls[0]["x"].shape[0] == 1 and log.calls == [(0.5, [0])]


def test_cfg_denoiser_refuses_mismatched_batches() -> None:
    with pytest.raises(FlowError, match="negative_embeds"):
        CFGDenoiser(_RecordingModel(), torch.ones(1, 3, 16), None, cfg=3.0)
    with pytest.raises(FlowError, match="same number of prompts"):
        CFGDenoiser(_RecordingModel(), torch.ones(2, 3, 16), torch.ones(1, 3, 16), cfg=3.0)
    denoiser = CFGDenoiser(_RecordingModel(), torch.ones(2, 3, 16), torch.ones(2, 3, 16), cfg=3.0)
    with pytest.raises(FlowError, match="multiple of the prompt batch"):
        denoiser(torch.zeros(3, 4, 2, 2), torch.full((3,), 0.5))


def test_cfg_denoiser_on_sana_matches_separate_branch_calls() -> None:
    model = tiny_transformer()
    gen = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(1, 6, 16, generator=gen), torch.randn(1, 6, 16, generator=gen)
    x, sigma = torch.randn(2, 4, 8, 8, generator=gen), torch.full((2,), 0.6)
    with torch.no_grad():
        out = CFGDenoiser(model, cond, uncond, cfg=3.0)(x, sigma)
        x0_cond = CFGDenoiser(model, cond, None, cfg=1.0)(x, sigma)
        x0_uncond = CFGDenoiser(model, uncond, None, cfg=1.0)(x, sigma)
        velocity = model(x, encoder_hidden_states=cond.expand(2, -1, -1), timestep=sigma * 1000).sample
    assert torch.allclose(x0_cond, x - 0.6 * velocity, atol=1e-6)
    assert torch.allclose(out, x0_uncond + 3.0 * (x0_cond - x0_uncond), atol=1e-5)
    assert (x0_cond - x0_uncond).abs().mean() > 1e-3  # the prompt matters, so the check has teeth


# --- one tile: ComfyUI's inpainting rule ----------------------------------------------------------


def _job(mask: torch.Tensor, hook=None) -> TileJob:
    gen = torch.Generator().manual_seed(6)
    noise, latent = torch.randn(2, 4, 6, 6, generator=gen), torch.randn(2, 4, 6, 6, generator=gen)
    return TileJob(Tile.whole(6, 6), noise, latent, mask, hook)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_sample_tile_applies_ksampler_x0_inpaint_rule_at_every_call(name: str) -> None:
    mask = torch.ones(1, 1, 6, 6)
    mask[..., :, :2] = 0.0  # known columns
    mask[..., :, 2] = 0.5  # a feathered column
    job = _job(mask, hook=lambda x0, sigma: x0 + 1.0)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append((x.clone(), sigma.clone()))
        return 0.5 * x

    sigmas = flow_sigmas(5, shift=3.0)
    out = sample_tile(denoiser, job, sigmas, name)
    assert len(seen) == 5
    for (x, sigma), expected in zip(seen, sigmas[:-1], strict=True):
        assert torch.all(sigma == expected)
        known = noise_scaling(sigma, job.noise, job.latent)
        assert torch.equal(x[..., :2], known[..., :2])  # known cells re-noised to σ with the canvas noise
    assert torch.equal(out[..., :2], job.latent[..., :2])  # kept bit for bit
    # mask 1 cells: the hook's +1 applied after the denoiser, before the masking
    last_x = seen[-1][0]
    assert torch.allclose(out[..., 3:], 0.5 * last_x[..., 3:] + 1.0, atol=1e-6)
    blend = 0.5 * (0.5 * last_x[..., 2] + 1.0) + 0.5 * job.latent[..., 2]
    assert torch.allclose(out[..., 2], blend, atol=1e-6)


def test_sample_tile_img2img_starts_from_noised_latent_and_calls_back_every_step() -> None:
    job = _job(torch.ones(1, 1, 6, 6))
    sigmas = flow_sigmas(4, shift=3.0, denoise=0.5)
    first: list[torch.Tensor] = []
    steps: list[tuple[int, int]] = []

    def callback(i: int, x0: torch.Tensor, x: torch.Tensor, total: int) -> None:
        steps.append((i, total))
        if i == 0:
            first.append(x)

    sample_tile(lambda x, s: x, job, sigmas, "euler", callback)
    assert torch.allclose(first[0], sigmas[0] * job.noise + (1 - sigmas[0]) * job.latent)
    assert steps == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_sample_tile_cancellation_propagates() -> None:
    job = _job(torch.ones(1, 1, 6, 6))

    def cancel(i: int, x0, x, total: int) -> None:
        if i == 2:
            raise KeyboardInterrupt

    calls = []
    with pytest.raises(KeyboardInterrupt):
        sample_tile(lambda x, s: calls.append(1) or x, job, flow_sigmas(6), "dpmpp_2m", cancel)
    assert len(calls) == 3


def test_sample_tile_refuses_mismatched_noise_and_unknown_sampler() -> None:
    job = _job(torch.ones(1, 1, 6, 6))
    with pytest.raises(FlowError, match="choose one of"):
        sample_tile(lambda x, s: x, job, flow_sigmas(2), "heun")
    job.noise = job.noise[..., :5]
    with pytest.raises(FlowError, match="crop both"):
        sample_tile(lambda x, s: x, job, flow_sigmas(2))
