"""Border resampling: RePaint's resampling near the lock edge, inside one model call, through the run path."""

from __future__ import annotations

import pytest
import torch

from temporal_tiling.border_resample import BorderResample
from temporal_tiling.contracts import TileJob
from temporal_tiling.flow import flow_sigmas, noise_scaling, sample_tile
from temporal_tiling.pipeline import GuideFirst, RunSettings, generate
from temporal_tiling.plan import Tile, make_plan
from temporal_tiling.sampling import SamplingError

STEPS = 6
SEED = 11


def edge_mask() -> torch.Tensor:
    """[1, 1, 8, 12]: columns 0-3 known, 4 and 5 a feathered ramp, 6-11 generated."""
    mask = torch.ones(1, 1, 8, 12)
    mask[..., :4] = 0.0
    mask[..., 4], mask[..., 5] = 1 / 3, 2 / 3
    return mask


def tile_job(mask: torch.Tensor) -> TileJob:
    gen = torch.Generator().manual_seed(4)
    noise, latent = (torch.randn(2, 4, *mask.shape[-2:], generator=gen) for _ in "nl")
    return TileJob(Tile.whole(*mask.shape[-2:]), noise, latent, mask)


class Recorder:
    """A denoiser whose prediction depends on every cell of its input (like attention), logging each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(sigma.reshape(-1)[0]), x.clone()))
        return 0.5 * x + 0.1 * x.mean()


def test_region_is_the_band_on_both_sides_of_the_lock_edge() -> None:
    region = BorderResample(band=2).region(edge_mask())[0, 0]
    assert region[0].tolist() == [False] * 4 + [True] * 4 + [False] * 4  # ramp cells count as kept
    assert region.all(dim=0).tolist() == region[0].tolist()
    assert not BorderResample().region(torch.ones(1, 1, 8, 12)).any()  # nothing known: nothing to do


def test_extra_model_calls_only_below_the_sigma_and_known_cells_stay_the_known_latent() -> None:
    job, sigmas = tile_job(edge_mask()), flow_sigmas(STEPS)
    options = BorderResample(below_sigma=0.5, repeats=3, band=2)
    plain, resampled = Recorder(), Recorder()
    reference = sample_tile(plain, job, sigmas)
    job.resample = options.bind(SEED)
    out = sample_tile(resampled, job, sigmas)
    late = [float(s) for s in sigmas[:-1] if float(s) <= 0.5]
    assert 0 < len(late) < STEPS
    assert [s for s, _ in plain.calls] == [float(s) for s in sigmas[:-1]]
    expected = [float(s) for s in sigmas[:-1] for _ in range(1 + 3 * (float(s) <= 0.5))]
    assert [s for s, _ in resampled.calls] == expected
    assert torch.equal(out[..., :4], job.latent[..., :4])  # kept bit for bit, as without resampling
    assert torch.equal(reference[..., :4], job.latent[..., :4])
    assert not torch.allclose(out[..., 6:], reference[..., 6:])


def test_one_call_resamples_the_band_with_seeded_fresh_noise_and_keeps_the_rest() -> None:
    job, mask = tile_job(edge_mask()), edge_mask()
    sigma, level = torch.full((2,), 0.4), 0.4
    x = noise_scaling(sigma, job.noise, job.latent)
    options = BorderResample(below_sigma=0.5, repeats=1, band=2)
    region = options.region(mask).expand_as(x)
    denoiser = Recorder()
    first = denoiser(x, sigma)
    out = options.bind(SEED)(denoiser, x, sigma, mask, job.latent)
    (_, x_first), (_, x_again) = denoiser.calls[1:]
    assert torch.equal(x_first, x)
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))
    composite = mask * first + (1 - mask) * job.latent
    assert torch.allclose(x_again[region], ((1 - level) * composite + level * fresh)[region])
    assert torch.equal(x_again[~region], x[~region])  # the input changes in the band only
    assert torch.equal(out[~region], first[~region])  # outside the band: the first prediction
    assert torch.equal(out[region], denoiser(x_again, sigma)[region])
    high = options.bind(SEED)(denoiser, x, torch.full((2,), 0.6), mask, job.latent)
    assert torch.equal(high, denoiser(x, torch.full((2,), 0.6)))  # above below_sigma: one plain call


def _run(model, prompts, plan, **settings):
    return generate(plan, model, prompts[0], prompts[1], steps=STEPS, cfg=3.0, seed=SEED, **settings)


@pytest.mark.parametrize("method", ["causal", "guided"])
def test_run_path_resamples_tiles_with_known_cells_and_repeats_bit_for_bit(model, prompts, method) -> None:
    plan = make_plan(
        width_px=112,
        height_px=112,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=16,
        compression=8,
        fit="shift",
    )  # 2×2 tiles, overlap 2 cells
    guided = method == "guided"
    settings = {"method": method, "guide_first": GuideFirst(bcla_seed=0) if guided else None}
    options = BorderResample(below_sigma=0.55, repeats=2, band=2)
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        plain = _run(model, prompts, plan, **settings)
        plain_calls = len(calls)
        first = _run(model, prompts, plan, **settings, border_resample=options)
        resampled_calls = len(calls) - plain_calls
        again = _run(model, prompts, plan, **settings, border_resample=options)
    finally:
        handle.remove()
    assert torch.equal(first.canvas, again.canvas)
    assert torch.equal(first.tiles[:1], plain.tiles[:1])  # the first tile has no lock edge
    assert not torch.allclose(first.tiles[1:], plain.tiles[1:])
    guide = GuideFirst()
    steps, denoise = (guide.steps_per_tile(STEPS), guide.denoise) if guided else (STEPS, 1.0)
    levels = flow_sigmas(steps, denoise=denoise)[:-1]
    late = int((levels <= 0.55).sum())
    assert 0 < late < len(levels) or guided
    assert resampled_calls - plain_calls == options.repeats * late * (len(plan) - 1)  # tiles 1-3 lock


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BorderResample(below_sigma=0.0), "below_sigma"),
        (lambda: BorderResample(repeats=0), "repeats"),
        (lambda: BorderResample(band=0), "band"),
        (lambda: RunSettings(method="independent", border_resample=BorderResample()), "causal methods"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(make, match: str) -> None:
    with pytest.raises(SamplingError, match=match):
        make()
