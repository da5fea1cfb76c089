"""Seam quality metrics for stitched tile images, judged against the image's own floor.

One module per concept: ``colour`` (Lab, CIEDE2000, PSNR), ``bands`` (where a seam and the floor are
measured), ``measure`` (line, drift and band-contrast scores of a band), ``verdict`` (seams against the
floor, per axis), ``soft_band`` (a band repeated at every seam of an axis),
``line_jump`` (plan-free), ``guide`` (fidelity to a low-res guide), ``zones`` (overlap and seam-zone
PSNR), ``views`` (pictures for a person), ``report`` (``seam_report`` and ``SeamReport``), ``inputs``,
``regions`` (images read region by region, so memory does not grow with the image).

Images are engine-side ``[B, 3, H, W]`` floats in [0, 1]; luminance is CIE L* and colour is CIE Lab
(kornia, sRGB / D65). A *line* is the boundary between pixel ``position - 1`` and ``position`` across
its axis (``vertical`` lines run down the image), ``start``..``stop`` along it.

Where a seam is measured. Two tiles' content meets anywhere inside their overlap: an unblended stitch
cuts at the later tile's border, a feather hides the centre, a lock ramp or a lock margin moves the step
to any line between. So each seam is measured on its *band*: every line from ``MARGIN_PX`` before its
overlap to ``MARGIN_PX`` after it (the shared edge ± ``MARGIN_PX`` without overlap). A seam's headline
is its worst line.

Against what. Content has edges and colour changes of its own, so windows shaped like each seam's
band (same axis, same width) are slid through the part of every tile no other tile reaches: the
*floor*, what this image scores where there is no seam. The verdict (``SeamReport.meets_targets``) is
the seams' excess over that floor, on each axis apart (``AxisJudgement``): the median over that axis'
seams of the worst-line gradient ratio below ``TARGET_RATIO`` times the floor's median, of the
worst-line ΔE and the drift ΔE less than ``delta_e_target`` above the floor's (``TARGET_DELTA_E`` on busy
content, the floor itself, at least ``QUIET_DELTA_E``, where the content is quieter; beyond the sampling
noise of both medians, ``SAMPLING_Z``). A tiling artefact is at every seam of its axis; a sun crossing a
band is at a few, and a line at every horizontal seam is not averaged away by clean vertical ones.
Worst seams are reported (and drawn by ``mark_measured_lines``) but not judged: one band crossing a
strong edge of the content decides a worst value.

The numbers:
- gradient ratio of a line: mean |ΔL*| across the line over mean |ΔL*| between neighbouring pixel lines
  within ``BAND_PX`` on both sides, both plus the image's own noise level (``noise_lstar``), so flat,
  noise-free areas do not turn rounding into drama; per ``SEGMENT_PX`` segment along the line, the
  median over the segments (``ALONG_QUANTILE``). 1 = like its surroundings.
- ΔE of a line: CIEDE2000 between the mean Lab of the ``BAND_PX`` bands on either side, per
  ``SEGMENT_PX`` segment along the line, the median over the segments.
- drift ΔE of a band: the colour step across the band that the colour trend on either side does not
  explain (``DRIFT_STRIP_PX`` strips just outside it fitted with one linear trend plus a jump, per
  ``DRIFT_SEGMENT_PX`` segment, the median jump; CIEDE2000 of it): a tile-sized colour change spread
  over the whole overlap (a feather between tiles of different colour casts, a soft step at every tile
  row) that no single line sees, while a sky's own gradient passes through.
- soft band of an axis (``soft_band``): per line, the centre-surround Lab contrast at the overlap's scale
  (a box half the overlap wide against the two boxes that far before and after it), signed, per segment
  along and the median over segments; then per line the median over the axis' seam rows (or columns),
  shrunk by ``SAMPLING_Z`` standard errors, and CIEDE2000 of it, the worst line. A darker or tinted
  stripe, or a soft step, as wide as the overlap and the same at every row is what a person sees at
  large enlargements and what no single line shows; content differs from row to row and cancels. Judged
  against the same statistic in the tiles' middles, below ``delta_e_target`` of the content's own band
  contrast there; not judged with fewer than ``MIN_POSITIONS`` rows (or columns) of seams.
- line jump (plan-free): for every row and column boundary the mean |ΔL*| along it; the worst over the
  median of its axis. A seam across the canvas is a peak; it needs no plan, so it also judges images
  from other tools.
- with a low-res guide: the image downscaled to the guide's size against the guide (PSNR, SSIM) and
  each tile's mean colour against the guide's over the same area (ΔE): layout and colour fidelity.
- overlap PSNR (between unblended tiles) and seam-zone PSNR (against a same-size reference) are
  reported but never judged: overlap PSNR is 100 dB by construction for hard locking and MultiDiffusion.

PSNR of identical inputs is infinite; it is reported as ``PSNR_CAP_DB`` (100 dB, i.e. MSE ≤ 1e-10) so
the result stays a finite JSON number.
"""

from .bands import BAND_PX, MARGIN_PX, Axis, Band, floor_bands, seam_bands
from .colour import PSNR_CAP_DB, ciede2000, psnr, to_lab
from .guide import guide_fidelity
from .inputs import MetricsError
from .line_jump import LINE_JUMP_BORDER_PX, LineJump, line_jump
from .measure import (
    ALONG_QUANTILE,
    DRIFT_SEGMENT_PX,
    DRIFT_STRIP_PX,
    NOISE_FLOOR_LSTAR,
    SEGMENT_PX,
    BandScores,
    measure_bands,
    noise_lstar,
)
from .regions import CHUNK_PX, Pixels
from .report import SeamReport, seam_report
from .soft_band import FLOOR_OFFSETS, MIN_POSITIONS, band_scale, judge_soft_bands
from .verdict import (
    JUDGED,
    QUIET_DELTA_E,
    SAMPLING_Z,
    TARGET_DELTA_E,
    TARGET_RATIO,
    WINDOW_MEASURES,
    AxisJudgement,
    delta_e_target,
)
from .views import (
    FLOOR_BAND_COLOUR,
    SEAM_BAND_COLOUR,
    WORST_LINE_COLOUR,
    heatmap_image,
    mark_measured_lines,
    seam_heatmap,
    solar_view,
)
from .zones import overlap_psnr, seam_zone_mask

__all__ = [
    "ALONG_QUANTILE",
    "BAND_PX",
    "CHUNK_PX",
    "DRIFT_SEGMENT_PX",
    "DRIFT_STRIP_PX",
    "FLOOR_BAND_COLOUR",
    "FLOOR_OFFSETS",
    "JUDGED",
    "LINE_JUMP_BORDER_PX",
    "MARGIN_PX",
    "MIN_POSITIONS",
    "NOISE_FLOOR_LSTAR",
    "PSNR_CAP_DB",
    "QUIET_DELTA_E",
    "SAMPLING_Z",
    "SEAM_BAND_COLOUR",
    "SEGMENT_PX",
    "TARGET_DELTA_E",
    "TARGET_RATIO",
    "WINDOW_MEASURES",
    "WORST_LINE_COLOUR",
    "Axis",
    "AxisJudgement",
    "Band",
    "BandScores",
    "LineJump",
    "MetricsError",
    "Pixels",
    "SeamReport",
    "band_scale",
    "ciede2000",
    "delta_e_target",
    "floor_bands",
    "guide_fidelity",
    "heatmap_image",
    "judge_soft_bands",
    "line_jump",
    "mark_measured_lines",
    "measure_bands",
    "noise_lstar",
    "overlap_psnr",
    "psnr",
    "seam_bands",
    "seam_heatmap",
    "seam_report",
    "seam_zone_mask",
    "solar_view",
    "to_lab",
]
