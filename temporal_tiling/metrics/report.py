"""The seam report of one stitched image: every measure, pooled over seams and batch, with the verdict."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor

from ..plan import TilePlan
from .bands import seam_bands
from .guide import guide_fidelity
from .inputs import MetricsError, check_image
from .line_jump import image_line_jump
from .measure import AxisView, BandScores, axis_views, image_noise, measure_bands
from .regions import Pixels
from .soft_band import judge_soft_bands
from .verdict import (
    TARGET_DELTA_E,
    TARGET_RATIO,
    WINDOW_MEASURES,
    AxisJudgement,
    FloorSampler,
    beyond_reference,
    floor_of,
    judge,
    pooled_floor,
    seam_floor,
)
from .zones import overlap_psnr, reference_scores


@dataclass
class SeamReport:
    """All seam metrics of one stitched image (batch-pooled: mean over seams × batch, worst = max).

    Headline: ``gradient_ratio_*`` and ``delta_e_*`` are each seam's worst line of its band; ``floor_*``
    the same measure through the tiles' middles (no seam there); ``meets_targets`` judges the excess.
    """

    gradient_ratio_mean: float
    gradient_ratio_worst: float
    delta_e_mean: float
    delta_e_worst: float
    floor_gradient_ratio_mean: float
    floor_gradient_ratio_worst: float
    floor_delta_e_mean: float
    floor_delta_e_worst: float
    drift_delta_e_mean: float
    drift_delta_e_worst: float
    floor_drift_delta_e_mean: float
    floor_drift_delta_e_worst: float
    seam_count: int
    centre_gradient_ratio_mean: float
    centre_delta_e_mean: float
    line_jump: float
    line_jump_axis: str
    line_jump_position: int
    noise_lstar: float
    border_gradient_ratio_mean: float | None = None
    border_gradient_ratio_worst: float | None = None
    border_delta_e_mean: float | None = None
    overlap_psnr_mean: float | None = None
    overlap_psnr_worst: float | None = None
    seam_zone_psnr: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    guide_psnr: float | None = None
    guide_ssim: float | None = None
    guide_delta_e_mean: float | None = None
    guide_delta_e_worst: float | None = None
    axes: dict[str, dict[str, AxisJudgement]] = field(default_factory=dict)
    """Per seam axis and judged measure: what the verdict compares (see :class:`AxisJudgement`)."""
    seams: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["excess"] = self.excess()
        data["meets_targets"] = self.meets_targets()
        data["verdict"] = self.verdict()
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def excess(self) -> dict[str, float]:
        """How far the seams stand out from the image's floor, per measure on the worse of the two seam
        axes (:class:`AxisJudgement`): the gradient ratio as a factor over the floor's, ΔE and drift ΔE in
        ΔE2000 units above it beyond sampling noise, the soft band likewise. No seam: 1, 0, 0, 0."""
        neutral = {"gradient_ratio": 1.0, "delta_e": 0.0, "drift_delta_e": 0.0, "soft_band": 0.0}
        return {
            name: max(
                [axis[name].excess for axis in self.axes.values() if name in axis and axis[name].judged]
                or [value]
            )
            for name, value in neutral.items()
        }

    def target(self, name: str) -> float:
        """The target of one measure of :meth:`excess`, on the axis that gives that excess (ΔE targets
        follow the axis' content level, :attr:`AxisJudgement.target`)."""
        if name == "gradient_ratio":
            return TARGET_RATIO
        judged = [axis[name] for axis in self.axes.values() if name in axis and axis[name].judged]
        return max(judged, key=lambda j: j.excess).target if judged else TARGET_DELTA_E

    def failures(self) -> list[str]:
        """One sentence per axis and measure whose excess over the floor misses its target."""
        out = []
        for axis, measures in self.axes.items():
            lines = "vertical seams" if axis == "vertical" else "horizontal seams"
            for name, j in measures.items():
                target = TARGET_RATIO if name == "gradient_ratio" else j.target
                if not j.judged or j.excess < target:
                    continue
                if name == "gradient_ratio":
                    sentence = (
                        f"lines stand out at the {lines}: gradient ratio {j.seams:.2f} against the image's "
                        f"own {j.floor:.2f} (×{j.excess:.2f}, target < {TARGET_RATIO}"
                    )
                elif name == "soft_band":
                    sentence = (
                        f"soft band at the {lines}: the same band at every seam, ΔE {j.seams:.2f} against "
                        f"{j.floor:.2f} in the tiles' middles ({j.excess:+.2f}, target < {target:.2f}"
                    )
                else:
                    what = "a colour step" if name == "delta_e" else "colour drift between tiles"
                    sentence = (
                        f"{what} at the {lines}: ΔE {j.seams:.2f} against {j.floor:.2f} inside the tiles "
                        f"({j.excess:+.2f}, target < {target:.2f}"
                    )
                out.append(sentence + _beyond_reference_note(name, j) + ")")
        return out

    def meets_targets(self) -> bool:
        """Seams no more visible than the image's own content: every excess over the floor below target
        (gradient ratio < 1.2× the floor's, ΔE, drift ΔE and soft band below their
        :attr:`AxisJudgement.target` above it).
        PSNRs are not judged."""
        return not self.failures()

    def verdict(self) -> str:
        failures = self.failures()
        if not failures:
            return "seamless: no seam stands out from the image's own content"
        return "seams visible: " + "; ".join(failures)

    def _soft_band_cells(self) -> tuple[str, str]:
        """Seams and floor of the soft band on the axis with the larger excess, as table cells."""
        judged = [axis["soft_band"] for axis in self.axes.values() if "soft_band" in axis]
        if not judged:
            return "–", "–"
        j = max(judged, key=lambda j: j.excess if j.judged else -float("inf"))
        return f"{j.seams:.2f}", "not judged" if j.floor is None else f"{j.floor:.2f}"

    def to_markdown(self) -> str:
        e = self.excess()
        rows = [
            (
                "gradient ratio, worst line per seam (mean / worst)",
                f"{self.gradient_ratio_mean:.3f} / {self.gradient_ratio_worst:.3f}",
                f"{self.floor_gradient_ratio_mean:.3f} / {self.floor_gradient_ratio_worst:.3f}",
                f"×{e['gradient_ratio']:.2f} (< {TARGET_RATIO})",
            ),
            (
                "ΔE2000, worst line per seam (mean / worst)",
                f"{self.delta_e_mean:.2f} / {self.delta_e_worst:.2f}",
                f"{self.floor_delta_e_mean:.2f} / {self.floor_delta_e_worst:.2f}",
                f"{e['delta_e']:+.2f} (< {self.target('delta_e'):.2f})",
            ),
            (
                "drift ΔE2000 across the overlap (mean / worst)",
                f"{self.drift_delta_e_mean:.2f} / {self.drift_delta_e_worst:.2f}",
                f"{self.floor_drift_delta_e_mean:.2f} / {self.floor_drift_delta_e_worst:.2f}",
                f"{e['drift_delta_e']:+.2f} (< {self.target('drift_delta_e'):.2f})",
            ),
            (
                "soft band ΔE2000, the same at every seam of an axis (worse axis)",
                *self._soft_band_cells(),
                f"{e['soft_band']:+.2f} (< {self.target('soft_band'):.2f})",
            ),
            (
                "line jump, plan-free (worst row/column over median)",
                f"{self.line_jump:.2f} ({self.line_jump_axis} line at {self.line_jump_position} px)",
                "",
                "",
            ),
            (
                "centre lines: gradient ratio / ΔE (mean)",
                f"{self.centre_gradient_ratio_mean:.3f} / {self.centre_delta_e_mean:.2f}",
                "",
                "",
            ),
        ]
        if self.border_gradient_ratio_mean is not None:
            rows.append(
                (
                    "overlap-border lines: gradient ratio (mean / worst) / ΔE",
                    f"{self.border_gradient_ratio_mean:.3f} / {self.border_gradient_ratio_worst:.3f} / "
                    f"{self.border_delta_e_mean:.2f}",
                    "",
                    "",
                )
            )
        if self.overlap_psnr_mean is not None:
            rows.append(
                (
                    "overlap PSNR between tiles (mean / worst)",
                    f"{self.overlap_psnr_mean:.2f} / {self.overlap_psnr_worst:.2f} dB",
                    "",
                    "not judged",
                )
            )
        if self.seam_zone_psnr is not None:
            ssim = "not measured" if self.ssim is None else f"{self.ssim:.4f}"
            rows.append(("seam-zone PSNR vs reference", f"{self.seam_zone_psnr:.2f} dB", "", "not judged"))
            rows.append(("full-image PSNR / SSIM vs reference", f"{self.psnr:.2f} dB / {ssim}", "", ""))
        if self.guide_psnr is not None:
            rows.append(
                (
                    "guide: PSNR / SSIM at its size, tile colour ΔE (mean / worst)",
                    f"{self.guide_psnr:.2f} dB / {self.guide_ssim:.3f}, {self.guide_delta_e_mean:.2f} / "
                    f"{self.guide_delta_e_worst:.2f}",
                    "",
                    "",
                )
            )
        lines = [
            self.verdict(),
            "",
            "| metric | seams | floor (no seam) | excess (judged: the worse axis, below) |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        if self.axes:
            lines += [
                "",
                "Judged per axis: medians over that axis' seams and over its floor windows.",
                "",
                "| seams | measure | seams (median) | floor (median) | chance allowance | excess |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for axis, measures in self.axes.items():
                for name, j in measures.items():
                    if not j.judged:
                        lines.append(f"| {axis} | {name} | – | – | – | not judged (no floor as wide) |")
                        continue
                    excess = f"×{j.excess:.2f}" if name == "gradient_ratio" else f"{j.excess:+.2f}"
                    lines.append(
                        f"| {axis} | {name} | {j.seams:.2f} | {j.floor:.2f} | {j.allowance:.2f} | {excess} |"
                    )
        return "\n".join(lines)


def _beyond_reference_note(name: str, judgement: AxisJudgement) -> str:
    """What the reference itself scored on those seams, where it was taken out of the excess."""
    own = judgement.reference_excess
    if own is None or own <= (1.0 if name == "gradient_ratio" else 0.0):
        return ""
    return f", beyond the reference's own {f'×{own:.2f}' if name == 'gradient_ratio' else f'{own:+.2f}'}"


def _finite_or_none(values: Tensor, reduce: str) -> float | None:
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return None
    return float(values.mean() if reduce == "mean" else values.min() if reduce == "min" else values.max())


def _judged_axes(
    views: dict[str, AxisView], plan: TilePlan, seam_scores: list[BandScores], samples: list
) -> dict[str, dict[str, AxisJudgement]]:
    """The verdict's judgements per seam axis and measure: the line measures against their floor
    samples, and the soft band."""
    axes = judge(seam_scores, samples)
    for axis, soft_band in judge_soft_bands(views, plan).items():
        axes[axis]["soft_band"] = soft_band
    return axes


def _reference_axes(reference: Pixels, plan: TilePlan) -> dict[str, dict[str, AxisJudgement]]:
    """What :func:`_judged_axes` says of the reference on the same seams (all that
    :func:`verdict.beyond_reference` needs of it: none of the report's other numbers)."""
    views = axis_views(reference, image_noise(reference))
    seam_scores = measure_bands(views, seam_bands(plan))
    if not seam_scores:
        return {}
    sample_floor = FloorSampler(views, plan)
    return _judged_axes(views, plan, seam_scores, [sample_floor(s.band) for s in seam_scores])


def _read(image: Tensor | Pixels, plan: TilePlan, name: str = "image") -> Pixels:
    """``image`` as :class:`Pixels` cut to the plan's area (a tensor checked as :func:`check_image` does;
    a :class:`Pixels` checks each region it reads for NaN)."""
    if isinstance(image, Pixels):
        if image.height < plan.height_px or image.width < plan.width_px:
            raise MetricsError(
                f"{name} is {image.width}×{image.height} px but the tile plan covers "
                f"{plan.width_px}×{plan.height_px} px; use the plan made for this image."
            )
        return replace(image, height=plan.height_px, width=plan.width_px, name=name)
    return Pixels.of(check_image(image, plan, name=name), name=name)


def seam_report(
    image: Tensor | Pixels,
    plan: TilePlan,
    *,
    tiles: Tensor | None = None,
    reference: Tensor | Pixels | None = None,
    guide: Tensor | None = None,
    ssim: bool = True,
) -> SeamReport:
    """Measure a stitched image against its plan; ``tiles`` (the unblended tile batch) adds overlap
    PSNR, ``reference`` (same size as the image: the photo a refine starts from, or a seamless pass)
    adds seam-zone and full-image PSNR and, unless ``ssim=False`` (it is the slowest part on large
    images), SSIM, and the verdict then counts each seam measure only beyond what the reference itself
    scores on the same seams (:func:`verdict.beyond_reference`); ``guide`` (a low-res image of the
    scene, any size) adds layout and colour fidelity to it.

    The image and the reference are tensors or :class:`Pixels` (read region by region: a refine's
    16K output need never exist as floats); either way they are measured region by region, in memory
    that does not grow with the image (a guide needs the image as a tensor). Only the plan's area
    (top-left ``plan.height_px`` × ``plan.width_px``) is measured.
    """
    if isinstance(reference, Tensor) and isinstance(image, Tensor):
        if reference.shape[-2:] != image.shape[-2:] or reference.shape[0] not in (1, image.shape[0]):
            raise MetricsError(
                f"reference is {tuple(reference.shape)} but the image is {tuple(image.shape)}; "
                "give a reference of the same size (batch 1 or the same batch)."
            )
    elif reference is not None and not isinstance(reference, (Tensor, Pixels)):
        raise MetricsError(
            f"reference is {type(reference).__name__}; give an image tensor of the image's size."
        )
    pixels = _read(image, plan)
    against, own = None, {}
    if reference is not None:  # the reference's judgement first: its band scores are gone before the image's
        against = _read(reference, plan, name="reference")
        if against.batch not in (1, pixels.batch):
            raise MetricsError(
                f"reference has a batch of {against.batch} but the image {pixels.batch}; "
                "give one reference or one per image."
            )
        if against.batch != pixels.batch:  # one reference for every image, as the image's batch
            one = against.read
            against = replace(
                against, read=lambda *r: one(*r).expand(pixels.batch, -1, -1, -1), batch=pixels.batch
            )
        own = _reference_axes(against, plan)
    eps = image_noise(pixels)
    views = axis_views(pixels, eps)
    seams = plan.seams()
    seam_scores = measure_bands(views, seam_bands(plan))
    sample_floor = FloorSampler(views, plan)
    if seam_scores:  # [seams, B]
        ratio, delta, drift = (
            torch.stack([getattr(s, k)[:, 0] for s in seam_scores]) for k in WINDOW_MEASURES
        )
        drift = drift.nan_to_num(0.0)
        samples = [sample_floor(s.band) for s in seam_scores]
        # seams of one axis and width share their floor windows (FloorSampler): each set is pooled once,
        # not once per seam (that grew with seams × tiles)
        pooled = {}

        def pool(scores: list[BandScores], key: str) -> Tensor:
            if (id(scores), key) not in pooled:
                pooled[id(scores), key] = pooled_floor(scores, key)
            return pooled[id(scores), key]

        no_floor: list[BandScores] = []  # drift of a seam with no floor window as wide as its band
        floors = {
            key: seam_floor(
                values,
                [
                    floor_of(pool(scores if exact or key != "drift" else no_floor, key), values[i], seamless)
                    for i, (scores, exact) in enumerate(samples)
                ],
            )
            for key, values, seamless in zip(
                WINDOW_MEASURES, (ratio, delta, drift), (1.0, None, None), strict=True
            )
        }
        axes = _judged_axes(views, plan, seam_scores, samples)
    else:  # a single tile: nothing to measure, report the invisible-seam values
        ratio, delta, drift = torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 1)
        floors = {key: (value, value) for key, value in zip(WINDOW_MEASURES, (1.0, 0.0, 0.0), strict=True)}
        axes = {}
    centre = [s.at(seam.position) for s, seam in zip(seam_scores, seams, strict=True)] or [
        (ratio[0], delta[0])
    ]
    jump = image_line_jump(pixels, eps)
    report = SeamReport(
        gradient_ratio_mean=float(ratio.mean()),
        gradient_ratio_worst=float(ratio.max()),
        delta_e_mean=float(delta.mean()),
        delta_e_worst=float(delta.max()),
        floor_gradient_ratio_mean=floors["worst_ratio"][0],
        floor_gradient_ratio_worst=floors["worst_ratio"][1],
        floor_delta_e_mean=floors["worst_delta_e"][0],
        floor_delta_e_worst=floors["worst_delta_e"][1],
        drift_delta_e_mean=float(drift.mean()),
        drift_delta_e_worst=float(drift.max()),
        floor_drift_delta_e_mean=floors["drift"][0],
        floor_drift_delta_e_worst=floors["drift"][1],
        seam_count=len(seams) * pixels.batch,
        centre_gradient_ratio_mean=float(torch.stack([r for r, _ in centre]).mean()),
        centre_delta_e_mean=float(torch.stack([d for _, d in centre]).mean()),
        line_jump=jump.value,
        line_jump_axis=jump.axis,
        line_jump_position=jump.position,
        noise_lstar=float(eps.mean()),
        axes=axes,
    )
    overlapping = [
        (s, seam)
        for s, seam in zip(seam_scores, seams, strict=True)
        if seam.overlap_stop > seam.overlap_start
    ]
    if overlapping:
        borders = [s.at(p) for s, seam in overlapping for p in (seam.overlap_start, seam.overlap_stop)]
        border_ratio = torch.stack([r for r, _ in borders])
        report.border_gradient_ratio_mean = float(border_ratio.mean())
        report.border_gradient_ratio_worst = float(border_ratio.max())
        report.border_delta_e_mean = float(torch.stack([d for _, d in borders]).mean())
    seam_psnr = overlap_psnr(tiles, plan) if tiles is not None else None
    if seam_psnr is not None:
        report.overlap_psnr_mean = _finite_or_none(seam_psnr, "mean")
        report.overlap_psnr_worst = _finite_or_none(seam_psnr, "min")
    if against is not None:
        report.axes = {
            axis: {
                name: beyond_reference(j, own.get(axis, {}).get(name), name) for name, j in measures.items()
            }
            for axis, measures in axes.items()
        }
        report.seam_zone_psnr, report.psnr, report.ssim = reference_scores(pixels, against, plan, ssim)
    if guide is not None:
        if not isinstance(image, Tensor):
            raise MetricsError("a guide needs the image as a tensor; give the image, not a pixel reader.")
        image = check_image(image, plan)
        guide = check_image(guide, name="guide")
        if guide.shape[0] not in (1, image.shape[0]):
            raise MetricsError(
                f"guide has a batch of {guide.shape[0]} but the image {image.shape[0]}; "
                "give one guide or one per image."
            )
        for key, value in guide_fidelity(image, guide.to(image.device), plan).items():
            setattr(report, key, value)
    for i, (scores, seam) in enumerate(zip(seam_scores, seams, strict=True)):
        worst_line = int(scores.ratio.mean(0).argmax()) + scores.band.first
        entry = {
            "first": seam.first,
            "second": seam.second,
            "axis": seam.axis,
            "position": seam.position,
            "band": [scores.band.first, scores.band.last],
            "worst_line": worst_line,
            "gradient_ratio": float(ratio[i].mean()),
            "delta_e": float(delta[i].mean()),
            "drift_delta_e": float(drift[i].mean()),
        }
        if seam_psnr is not None and torch.isfinite(seam_psnr[i]).all():
            entry["overlap_psnr"] = float(seam_psnr[i].mean())
        report.seams.append(entry)
    return report
