"""Fixed runs through every public way into the engine, compared with outputs saved before the run path
was unified: a refactor must not change a single bit of what a seed gives.

The saved tensors live in ``reference_runs.safetensors`` with the torch version and CPU capability they
were made on. There the comparison is exact (``torch.equal``); elsewhere float kernels may round
differently, so it falls back to a tolerance far below anything a changed algorithm would produce.
``RECORD_REFERENCE_RUNS=1`` rewrites the file (only when the change is meant to alter outputs).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lab.fixtures import tiny_transformer
from temporal_tiling import cli
from temporal_tiling.bcla import BCLAConfig
from temporal_tiling.pipeline import GuideFirst, generate
from temporal_tiling.plan import make_plan
from temporal_tiling.sampling import LockRelease

REFERENCE = Path(__file__).with_name("reference_runs.safetensors")
RECORD = os.environ.get("RECORD_REFERENCE_RUNS") == "1"


BEFORE_PULL = {"skip_residual": 0.0, "skip_power": 3.0}
"""The guided defaults these runs were recorded with (before the held low-band pull and the halo)."""


def environment() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def engine_runs() -> dict[str, Callable[[], torch.Tensor]]:
    """Each entry: one generate() call on the tiny model, returning the canvas latent."""
    model = tiny_transformer()
    gen = torch.Generator().manual_seed(7)
    positive, negative = torch.randn(1, 6, 16, generator=gen), torch.randn(1, 6, 16, generator=gen)
    plan = make_plan(
        width_px=112,
        height_px=112,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=16,
        compression=8,
        fit="shift",
    )  # 2×2 tiles of 8 cells, overlap 2
    start = torch.randn(1, 4, 14, 14, generator=gen)

    def run(**options) -> torch.Tensor:
        settings = {"steps": 3, "cfg": 3.0, "seed": 11, **options}
        return generate(plan, model, positive, negative, **settings).canvas

    sync = BCLAConfig(mode="cumulative")
    return {
        "full": lambda: run(method="full"),
        "multidiffusion": lambda: run(method="multidiffusion"),
        "independent": lambda: run(method="independent"),
        "causal_plain_margin0": lambda: run(method="causal", lock_margin=0, lock_feather=2),
        "causal_bcla": lambda: run(method="causal", cache_config=sync),
        "causal_clean_decay_release": lambda: run(
            method="causal",
            cache_config=BCLAConfig(mode="decay", source="clean", decay=0.5),
            lock_release=LockRelease(0.5, 1),
        ),
        "causal_img2img": lambda: run(method="causal", cache_config=sync, latent=start, denoise=0.6),
        "guided": lambda: run(  # tile_steps = steps: every tile ran all steps before tile_steps existed
            method="guided",
            cache_config=sync,
            guide_first=GuideFirst(**BEFORE_PULL, denoise=0.5, stats=0.0, tile_steps=3),
            halo=0,
        ),
        "guided_skip_stats": lambda: run(
            method="guided",
            cache_config=sync,
            guide_first=GuideFirst(
                long_side=48,
                denoise=0.7,
                skip_residual=0.5,
                skip_power=3.0,
                stats=0.5,
                bcla_seed=0.5,
                tile_steps=3,
            ),
            halo=0,
        ),
        "guided_default_tile_steps": lambda: run(
            method="guided",
            cache_config=sync,
            guide_first=GuideFirst(**BEFORE_PULL, denoise=0.5, stats=0.0),
            halo=0,
        ),
    }


def tiny_loader(folder: Path, device: torch.device) -> cli.LoadedModel:
    """The CLI's model contract on the tiny transformer: prompt-dependent embeddings, a fixed decoder."""

    def encode_prompt(prompt: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        return torch.randn(1, 3 + len(prompt.split()), 16, generator=generator)

    def decode(latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.nn.functional.interpolate(latent[:, :3], scale_factor=8, mode="bilinear"))

    return cli.LoadedModel(tiny_transformer(), encode_prompt, decode, 8, 3.0, "tiny")


def cli_images(folder: Path) -> dict[str, torch.Tensor]:
    """The CLI's compare run with a global context: every method's PNG and the guide, as uint8 tensors."""
    argv = ["generate", "--prompt", "one sun over a red sky", "--width", "64", "--height", "40",
            "--tile", "32", "--overlap", "8", "--fit", "shift", "--steps", "2", "--cfg", "2.0",
            "--threads", "1", "--method", "compare", "--context-skip", "0.5", "--context-stats", "0.5",
            "--context-seed", "1.0", "--out", str(folder)]  # fmt: skip
    assert cli.main(argv, loader=tiny_loader) == 0
    return {
        f"cli_{path.stem}": torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
        for path in sorted(folder.glob("*.png"))
    }


def compare(name: str, got: torch.Tensor, saved: torch.Tensor, exact: bool) -> None:
    assert got.shape == saved.shape, f"{name}: shape {tuple(got.shape)} != saved {tuple(saved.shape)}"
    if exact:
        assert torch.equal(got, saved), f"{name}: differs from the saved run by {(got - saved).abs().max()}"
    elif got.is_floating_point():
        torch.testing.assert_close(got, saved, atol=1e-4, rtol=1e-4, msg=name)
    else:
        assert (got.int() - saved.int()).abs().max() <= 1, name


def test_every_run_path_gives_the_saved_outputs(tmp_path: Path) -> None:
    outputs = {name: make().contiguous() for name, make in engine_runs().items()}
    outputs.update(cli_images(tmp_path))
    if RECORD:
        save_file(outputs, REFERENCE, metadata=environment())
        pytest.skip(f"recorded {len(outputs)} reference runs")
    with safe_open(REFERENCE, "pt") as handle:
        exact = handle.metadata() == environment()
    saved = load_file(REFERENCE)
    assert sorted(outputs) == sorted(saved)
    for name, tensor in outputs.items():
        compare(name, tensor, saved[name], exact)
