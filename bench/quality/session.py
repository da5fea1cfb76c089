"""A benchmark session: one set of pairs, every spec run once per canvas, records kept for the report."""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import Tensor

from temporal_tiling.metrics import seam_report, seam_zone_mask
from temporal_tiling.plan import TilePlan

from .measure import Decoded, decode_run, measure, summarize
from .model import Model
from .pairs import Pairs
from .report import fmt
from .runner import Run, run
from .specs import CANVASES, FULL, LORA_FULL, Spec, plan_for


class Bench:
    """Runs specs per canvas on one set of pairs, caches the native reference, keeps every summary."""

    def __init__(
        self, model: Model, pairs: Pairs, steps: int, label: str, log: Callable[[str], None]
    ) -> None:
        self.model, self.pairs, self.steps, self.label, self.log = model, pairs, steps, label, log
        self.full: dict[str, Decoded] = {}
        self.lora_full: dict[str, Decoded] = {}
        self.done: dict[tuple, dict] = {}  # (canvas, spec.key) -> record
        self.images: dict[tuple, Tensor] = {}
        self.native: dict[tuple, dict] = {}
        self.interior = {
            name: ~seam_zone_mask(plan_for(name, Spec("", "causal"), model.compression)) for name in CANVASES
        }

    def reference(self, canvas: str) -> Decoded:
        if canvas not in self.full:
            r = run(self.model, self.pairs, canvas, FULL, self.steps)
            self.full[canvas] = decode_run(self.model, r)
            self.done[(canvas, FULL.key)] = self._record(r, self.full[canvas], None, canvas)
            self.images[(canvas, FULL.key)] = self.full[canvas].image
        return self.full[canvas]

    def lora_reference(self, canvas: str) -> Decoded:
        """The LoRA model's own native render: the LoRA changes the untiled render too (tile 0's loss
        drops as much as the others'), so LoRA rows are compared with it, not with the base model's."""
        if canvas not in self.lora_full:
            self.lora_full[canvas] = decode_run(
                self.model, run(self.model, self.pairs, canvas, LORA_FULL, self.steps)
            )
        return self.lora_full[canvas]

    def head(self, n: int, label: str) -> Bench:
        """A bench on the first ``n`` pairs that reuses this bench's native references."""
        sub = Bench(self.model, self.pairs.head(n), self.steps, label, self.log)
        for canvas, full in self.full.items():
            sub.full[canvas] = Decoded(full.image[:n], full.tiles)
            sub.images[(canvas, FULL.key)] = full.image[:n]
        for canvas, full in self.lora_full.items():
            sub.lora_full[canvas] = Decoded(full.image[:n], full.tiles)
        return sub

    def native_lines(self, canvas: str, plan: TilePlan) -> dict:
        """The native render measured on ``plan``'s seam lines: what "no seam" scores there."""
        key = (canvas, plan.overlap)
        if key not in self.native:
            image = self.full[canvas].image
            reps = [seam_report(image[b : b + 1], plan) for b in range(image.shape[0])]
            self.native[key] = {
                "gradient_ratio": sum(r.gradient_ratio_mean for r in reps) / len(reps),
                "gradient_ratio_worst": max(r.gradient_ratio_worst for r in reps),
                "delta_e": sum(r.delta_e_mean for r in reps) / len(reps),
                "excess_ratio": sum(r.excess()["gradient_ratio"] for r in reps) / len(reps),
            }
        return self.native[key]

    def _record(self, r: Run, dec: Decoded, full: Decoded | None, canvas: str) -> dict:
        per_pair = measure(r, dec, self.pairs, full, self.interior[canvas])
        summary = summarize(per_pair, r.seconds, r.cpu_seconds)
        rec = {"name": r.spec.name, "spec": r.spec.describe(), "tiles": len(r.plan), "summary": summary}
        if full is not None or r.spec.kind == "full":
            rec["native_on_these_lines"] = self.native_lines(canvas, r.plan)
        rec["per_pair"] = per_pair
        if r.norms:
            rec["cache_norms"] = r.norms
        return rec

    def get(self, canvas: str, spec: Spec) -> dict:
        key = (canvas, spec.key)
        if spec.key == FULL.key:
            self.reference(canvas)
        if key not in self.done:
            full = self.lora_reference(canvas) if spec.lora else self.reference(canvas)
            t0 = time.perf_counter()
            r = run(self.model, self.pairs, canvas, spec, self.steps)
            dec = decode_run(self.model, r)
            self.done[key] = self._record(r, dec, full, canvas)
            self.images[key] = dec.image
            self.done[key]["tiles_latent"] = r.result.tiles if spec.zero_cache or not spec.lock else None
            s = self.done[key]["summary"]
            self.log(
                f"[{self.label}] {canvas:>13} | {spec.name:<58} grad {s['gradient_ratio']:.3f}/"
                f"{s['gradient_ratio_worst']:.2f} ΔE {s['delta_e']:.2f} ovl {fmt(s['overlap_psnr'])} "
                f"psnr {fmt(s['psnr'])} ssim {fmt(s['ssim'], 3)} spk {s['speckle']:.2f} "
                f"{s['cpu_seconds_per_canvas']:.2f} cpu-s/canvas ({time.perf_counter() - t0:.0f}s)"
            )
        rec = self.done[key]
        return {**rec, "name": spec.name} if rec["name"] != spec.name else rec
