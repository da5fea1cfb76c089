"""Guide-first on a canvas 6.7× the whole-scene pass: one enlargement, DemoFusion's progressive chain,
and the pixel-space enlargement, through the run path.

Run from the repository root: ``python -m bench.bench_guide_chain`` (about 10 min on 2 CPU cores, one
torch thread). Writes ``bench/results/guide_chain.{json,md}`` and ``docs/guide_chain_comparison.png``.

Protocol: ``bench_guide_first``'s prompts, seeds, scores and whole-scene pass, on a 1024×512 px canvas
(8×4 tiles of 160×152 px, 32 px overlap; the pass is 152×76 px). Rows: the native one-pass render,
guided (latent bilinear enlargement in one step, the default), guided with ``max_upscale`` 2 (two
intermediate canvases of 296 and 552 px, each refined from the one before), guided with the pixel
enlargement (decode, bicubic, encode through the embedded model's 8× autoencoder), guided with a
context halo of 4 cells (each tile sampled with a ring of neighbouring cells that is then discarded).
"""

from __future__ import annotations

import json

from bench.bench_guide_first import ROOT, bench_model, figure, make_plans, markdown, run_all
from temporal_tiling.pipeline import GuideFirst, pixel_upscale

SHOWN = ("guide", "full", "guided", "guided, chain x2", "guided, pixel upscale", "guided + halo 4")


def main() -> None:
    model, _, _ = bench_model()
    variants = {
        "full": ("full", {}),
        "guided": ("guided", {}),
        "guided, chain x2": ("guided", {"guide_first": GuideFirst(max_upscale=2.0)}),
        "guided, pixel upscale": (
            "guided",
            {"guide_first": GuideFirst(upscale=pixel_upscale(model.decode, model.encode, model.compression))},
        ),
        "guided + halo 4": ("guided", {"halo": 4}),
    }
    images: dict = {}
    rows = run_all(model, make_plans(model.compression, 1024, 512), variants, images)
    out = ROOT / "bench" / "results"
    (out / "guide_chain.json").write_text(json.dumps(rows, indent=1) + "\n")
    title = "Guide-first at 6.7× the whole-scene pass (`python -m bench.bench_guide_chain`)"
    table = markdown(rows, names=tuple(variants), title=title, canvas="1024×512 px, 8×4 tiles")
    (out / "guide_chain.md").write_text(table)
    figure(images, ROOT / "docs" / "guide_chain_comparison.png", SHOWN, width=384)


if __name__ == "__main__":
    main()
