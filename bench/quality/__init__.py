"""Seam-lab quality benchmark: every tiling method on the embedded model, side by side, same noise.

Run from the repository root: ``python -m bench.quality`` (embedded model, ≤ 45 min on 2 CPU
cores) or ``python -m bench.quality --quick`` (a tiny random model, about 10 min on a loaded 2-core
machine, for the code path; writes to ``out/bench-quality-quick/``). Writes
``bench/results/quality.json``, ``bench/results/quality.md`` and ``docs/quality_grid.png``.

Files: ``specs`` (what is run: methods, canvases, plans), ``model`` and ``pairs`` (the model, the
prompt × seed pairs and their noise), ``runner`` (one spec through ``temporal_tiling.pipeline.run``,
the run path the node and the CLI use), ``measure`` (metrics and summaries), ``session`` (runs and
records of one set of pairs), ``tuning`` and ``verification`` (choosing the best configuration, the
four verification tests), ``report`` and ``figure`` (markdown/JSON and the image grid),
``__main__`` (the command line).

Protocol.
- Pairs: seam-lab prompts (half of them skies, which carry countable objects) × one noise seed each.
  Every method of a pair starts from the same canvas noise. The best configuration is chosen on a
  separate TUNING set (other scenes, other seeds); the tables report the HELD-OUT pairs only.
- Canvases at the embedded model's tile size (8 × 8 latent cells, its training size) with 25 %
  overlap: a 4 × 4 grid and an 8 × 1 panorama. MultiDiffusion 50 % runs on the same canvas with a
  50 % overlap plan (more tiles: that is its cost).
- All pairs of a canvas run as one batch (B = pairs); times are sampling seconds per canvas
  (batch time / B), decode excluded (identical for every method), guide passes included.
- Metrics (``temporal_tiling.metrics``: seam ratio, ΔE and drift against the image's own floor, line
  jump, overlap PSNR) per pair on the decoded canvas; overlap PSNR from the unblended, separately
  decoded tiles; PSNR/SSIM against the native full-canvas render of the same noise ("full"; for LoRA
  rows the LoRA model's own native render, since the LoRA changes the untiled render too). Averaged
  over pairs; "worst" = worst seam / worst pair.
- Speckle: high-frequency L* energy (L* minus its Gaussian blur, σ = 1.5 px) inside the tiles (outside
  every overlap zone of the 25 % plan), divided by the same energy of the native render of the pair:
  1.0 = as much fine structure as the untiled render, > 1 = added speckle/blobs, < 1 = smeared.
- Duplicated objects: seamlab's counter on the decoded canvas; rate = (prompt says "one X" and more
  than one X is counted) / (prompt says "one X"); "missed" = none counted.
- Adjacent-tile feature cosine (verification test 3), two features: the mean-pooled output of the last
  transformer block (cond branch, final sampling step, the tile's own tokens; the native render's
  hidden states cropped per tile) and a 512-bin RGB colour histogram of each decoded tile.
"""
