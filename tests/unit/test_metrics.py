"""Seam metrics on synthetic images whose answers are known in advance."""

import json

import kornia
import pytest
import torch

from temporal_tiling.blend import split_tiles
from temporal_tiling.metrics import (
    PSNR_CAP_DB,
    MetricsError,
    ciede2000,
    heatmap_image,
    overlap_psnr,
    seam_heatmap,
    seam_report,
    seam_zone_mask,
    solar_view,
)
from temporal_tiling.plan import PlanError, make_plan

# Sharma, Wu & Dalal (2005) test pairs: Lab 1, Lab 2, ΔE00.
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, -1.3802, -84.2814), (50.0, 0.0, -82.7485), 1.0000),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
]


def ramp_image(height=128, width=256, lo=0.2, hi=0.8):
    """A smooth diagonal grey ramp: no edge anywhere."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    grey = lo + (hi - lo) * (0.7 * xx + 0.3 * yy)
    return grey.expand(1, 3, -1, -1).clone()


def two_colour_image(lab_left, lab_right, height=64, width=128, split=64):
    lab = torch.empty(1, 3, height, width)
    lab[..., :split] = torch.tensor(lab_left)[:, None, None]
    lab[..., split:] = torch.tensor(lab_right)[:, None, None]
    return kornia.color.lab_to_rgb(lab).clamp(0, 1)


def test_ciede2000_matches_sharma_reference_pairs():
    lab1 = torch.tensor([p[0] for p in SHARMA])
    lab2 = torch.tensor([p[1] for p in SHARMA])
    expected = torch.tensor([p[2] for p in SHARMA], dtype=torch.float64)
    torch.testing.assert_close(ciede2000(lab1, lab2), expected, atol=1e-4, rtol=0)


def test_ciede2000_matches_scikit_image():
    color = pytest.importorskip("skimage.color")
    g = torch.Generator().manual_seed(0)
    lab1 = torch.rand(500, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [100.0, 200, 200]
    ) - torch.tensor([0.0, 100, 100])
    lab2 = lab1 + 6 * torch.randn(500, 3, generator=g, dtype=torch.float64)
    expected = torch.from_numpy(color.deltaE_ciede2000(lab1.numpy(), lab2.numpy()))
    torch.testing.assert_close(ciede2000(lab1, lab2), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pair", [SHARMA[3], SHARMA[4]])
@pytest.mark.parametrize("overlap", [0, 32])
def test_hard_step_of_known_lab_jump_gives_that_delta_e(pair, overlap):
    plan = make_plan(128 if overlap == 0 else 96, 64, 64, 64, overlap, 8)
    seam = plan.seams()[0]
    image = two_colour_image(pair[0], pair[1], width=plan.width_px, split=seam.position)
    report = seam_report(image, plan)
    assert report.delta_e_mean == pytest.approx(pair[2], abs=0.02)
    assert report.interior_delta_e == pytest.approx(0.0, abs=0.02)


def test_smooth_ramp_gives_gradient_ratio_one():
    plan = make_plan(256, 128, 96, 64, 32, 8)
    report = seam_report(ramp_image(), plan)
    assert report.gradient_ratio_mean == pytest.approx(1.0, abs=0.05)
    assert report.gradient_ratio_worst == pytest.approx(1.0, abs=0.05)
    assert report.delta_e_mean == pytest.approx(report.interior_delta_e, abs=0.3)


def test_step_at_seam_gives_ratio_far_above_one():
    plan = make_plan(256, 128, 128, 128, 0, 8)
    image = ramp_image()
    image[..., 128:] += 0.03
    report = seam_report(image, plan)
    assert report.gradient_ratio_mean > 5.0
    assert report.interior_gradient_ratio == pytest.approx(1.0, abs=0.05)


def test_identical_tiles_give_capped_psnr():
    plan = make_plan(256, 128, 96, 64, 32, 8)
    image = ramp_image()
    tiles = split_tiles(image, plan)
    assert torch.all(overlap_psnr(tiles, plan) == PSNR_CAP_DB)
    report = seam_report(image, plan, tiles=tiles, reference=image)
    assert report.overlap_psnr_mean == PSNR_CAP_DB and report.overlap_psnr_worst == PSNR_CAP_DB
    assert report.seam_zone_psnr == PSNR_CAP_DB and report.psnr == PSNR_CAP_DB
    assert report.ssim == pytest.approx(1.0, abs=1e-5)


def test_overlap_and_seam_zone_psnr_known_values():
    plan = make_plan(256, 128, 96, 64, 32, 8)
    image = ramp_image()
    tiles = split_tiles(image, plan)
    tiles[1] += 0.01  # tile 1 differs by 0.01 everywhere: 40 dB against each neighbour's overlap
    values = overlap_psnr(tiles, plan)
    seams = plan.seams()
    for i, s in enumerate(seams):
        expected = 40.0 if 1 in (s.first, s.second) else PSNR_CAP_DB
        assert values[i].item() == pytest.approx(expected, abs=1e-3)
    zone = seam_zone_mask(plan)
    shifted = image + 0.01 * zone
    report = seam_report(shifted, plan, reference=image)
    assert report.seam_zone_psnr == pytest.approx(40.0, abs=1e-3)
    assert report.psnr > 40.5


def test_zero_overlap_seam_zone_is_the_bands_around_the_edge():
    plan = make_plan(128, 64, 64, 64, 0, 8)
    zone = seam_zone_mask(plan)
    assert zone.sum() == 16 * 64 and zone[:, 56:72].all()


def test_untouched_image_scores_like_its_interior():
    g = torch.Generator().manual_seed(1)
    image = torch.nn.functional.interpolate(
        torch.rand(2, 3, 16, 32, generator=g), size=(128, 256), mode="bicubic"
    )
    image = image.clamp(0, 1)
    plan = make_plan(256, 128, 96, 64, 32, 8)
    report = seam_report(image, plan)
    assert report.gradient_ratio_mean == pytest.approx(report.interior_gradient_ratio, abs=0.15)
    assert report.delta_e_mean == pytest.approx(report.interior_delta_e, rel=0.5)


def test_report_serialises_to_json_and_markdown():
    plan = make_plan(256, 128, 96, 64, 32, 8)
    image = ramp_image()
    report = seam_report(image, plan, tiles=split_tiles(image, plan), reference=image)
    data = json.loads(report.to_json())
    assert data["gradient_ratio_mean"] == pytest.approx(report.gradient_ratio_mean)
    assert len(data["seams"]) == len(plan.seams())
    table = report.to_markdown()
    assert table.startswith("| metric | value |") and "ΔE2000" in table and "seam-zone PSNR" in table
    assert report.meets_targets()


def test_heatmap_peaks_on_the_seam():
    image = ramp_image()
    image[..., 128:] += 0.02
    heat = seam_heatmap(image)
    assert heat.shape == (1, 1, 128, 256)
    assert heat[..., 127].mean() > 3 * heat[..., 40:100].mean()
    rendered = heatmap_image(heat)
    assert rendered.shape == (1, 3, 128, 256) and rendered.min() >= 0 and rendered.max() <= 1
    assert rendered[..., 127].mean() > rendered[..., 40:100].mean()


def test_solar_view_amplifies_a_faint_step():
    image = torch.linspace(0.1, 0.9, 128)[:, None].expand(1, 3, 128, 128).clone()  # every grey level
    image[..., 64:] += 0.005  # ≈ 0.5 L*: invisible at normal viewing
    solar = solar_view(image, cycles=3)
    plain_jump = (image[..., 64] - image[..., 63]).abs().mean()
    solar_jump = (solar[..., 64] - solar[..., 63]).abs().mean()
    assert solar.shape == image.shape and solar_jump > 3 * plain_jump


def test_bad_inputs_raise_clear_errors():
    plan = make_plan(256, 128, 96, 64, 32, 8)
    image = ramp_image()
    with pytest.raises(MetricsError, match="NaN"):
        seam_report(image.masked_fill(image > 0.7, float("nan")), plan)
    with pytest.raises(MetricsError, match="covers 256×128"):
        seam_report(image[..., :100], plan)
    with pytest.raises(PlanError, match=f"plan has {len(plan)} tiles"):
        seam_report(image, plan, tiles=split_tiles(image, plan)[:5])
    with pytest.raises(MetricsError, match="same size"):
        seam_report(image, plan, reference=torch.rand(1, 3, 128, 300))
    with pytest.raises(MetricsError, match=r"\[B, 3, H, W\]"):
        seam_report(image[0], plan)
