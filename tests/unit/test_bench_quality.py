"""The quality benchmark runs the pack's own run path, and its taps do not change or miscount a run."""

import pytest
import torch

from bench.quality.model import CFG, Model
from bench.quality.pairs import Pairs, pair_noise
from bench.quality.runner import run, settings_for
from bench.quality.specs import BASELINES, GUIDED, PACK_DEFAULT, Spec, named, plan_for
from lab.fixtures import tiny_transformer
from temporal_tiling import pipeline
from temporal_tiling.bcla import BCLAConfig
from temporal_tiling.pipeline import FlowHost, FlowSampling, GuideFirst, RunSettings
from temporal_tiling.sampling import LockRelease

CANVAS = "grid 4×4"
STEPS = 2


def tiny_bench() -> tuple[Model, Pairs]:
    """The tiny transformer at 8× compression and two pairs of random prompt embeddings."""
    model = Model(tiny_transformer(), None, None, compression=8, scale=1.0, shift=3.0, name="tiny")
    gen = torch.Generator().manual_seed(3)
    embeds, negative = (torch.randn(2, 5, 16, generator=gen) for _ in range(2))
    mask = torch.ones(2, 5, dtype=torch.long)
    return model, Pairs(None, ["a", "b"], [11, 12], embeds, mask, negative, mask)


def test_a_bench_run_is_the_pack_run_with_the_same_settings() -> None:
    model, pairs = tiny_bench()
    bench = run(model, pairs, CANVAS, PACK_DEFAULT, STEPS)
    plan = plan_for(CANVAS, PACK_DEFAULT, model.compression)
    host = FlowHost(
        model.transformer,
        pairs.embeds,
        pairs.negative,
        FlowSampling(STEPS, CFG, shift=model.shift),
        prompt_mask=pairs.mask,
        negative_mask=pairs.negative_mask,
    )
    settings = RunSettings(
        method="causal", cache_config=BCLAConfig(mode="cumulative"), lock_release=LockRelease(0.0, 0)
    )
    noise = pair_noise(pairs.seeds, (4, plan.canvas_height, plan.canvas_width))
    pack = pipeline.run(plan, host, settings, (2, 4), noise=noise)
    assert torch.equal(bench.result.canvas, pack.canvas)
    assert len(bench.norms) == len(plan) + 1  # before every tile, and after the last


@pytest.mark.parametrize("spec", [named(PACK_DEFAULT, seed=1.0), GUIDED], ids=["context", "guided"])
def test_features_come_from_the_tiles_only_not_the_guide_or_seed_pass(spec: Spec) -> None:
    """The seed pass runs at every level of the schedule, the final step's included; guided's
    whole-scene pass has the tile's size here (8 × 8 cells) and ends at the same last level."""
    model, pairs = tiny_bench()
    features = run(model, pairs, CANVAS, spec, STEPS).features
    plan = plan_for(CANVAS, spec, model.compression)
    assert features is not None and features.shape[:2] == (len(plan), len(pairs))


def test_the_guided_spec_runs_the_pack_default_with_its_own_guide() -> None:
    settings = settings_for(GUIDED, None, 11)
    assert settings.method == "guided" and settings.guide == GuideFirst() and settings.seed == 11
    assert settings.cache_config == BCLAConfig(mode="cumulative")


def test_a_zeroed_cache_without_lock_gives_the_independent_tiles() -> None:
    model, pairs = tiny_bench()
    zero = Spec("zeroed", "causal", mode="cumulative", lock=False, zero_cache=True)
    zeroed = run(model, pairs, CANVAS, zero, STEPS)
    independent = run(model, pairs, CANVAS, BASELINES[0], STEPS)
    torch.testing.assert_close(zeroed.result.tiles, independent.result.tiles, atol=1e-5, rtol=0)
