"""Tile prompts: a tile's model calls hear its own prompt; rectangles map to the cells and tiles they
touch at 8× and 32×; the JSON and line formats and their errors; the CLI's --tile-prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import BASE, tiny_loader

from temporal_tiling import cli
from temporal_tiling.contracts import TileJob
from temporal_tiling.pipeline import GuideFirst, RunSettings, generate, run
from temporal_tiling.plan import Tile, make_plan
from temporal_tiling.sampling import SamplingError
from temporal_tiling.tile_prompts import (
    Region,
    TilePromptError,
    TilePrompts,
    encode_tile_prompts,
    parse_json,
    parse_lines,
    region_cells,
    tile_texts,
    tiles_covering,
    whole_scene_text,
)


@dataclass
class RecordingHost:
    """A host whose sampler returns the known latent and logs which prompt each tile's run heard."""

    steps: int = 2
    canvas_positions: bool = False
    patch_size: int = 1
    heard: list[tuple[Tile, object]] = field(default_factory=list)
    """(the job's tile, the job's prompt) per sampler run."""

    def denoise(self, job: TileJob) -> torch.Tensor:
        self.heard.append((job.tile, job.prompt))
        return job.latent + 1.0

    def schedule(self, denoise: float, steps: int | None = None) -> torch.Tensor:
        return torch.linspace(denoise, 0.0, (steps or self.steps) + 1)

    def reencode(self, x0: torch.Tensor) -> None: ...
    def seed_call(self, guide: torch.Tensor, noise: torch.Tensor, sigma: float) -> None: ...
    def model_space(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def attach_cache(self, cache) -> None: ...
    def detach_cache(self) -> None: ...
    def on_tile(self, index: int, count: int) -> None: ...


# --- the run path -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["causal", "guided", "independent"])
def test_each_tile_run_hears_its_own_prompt_and_the_others_the_runs(method: str) -> None:
    plan = make_plan(
        width_px=96, height_px=64, tile_width_px=32, tile_height_px=32, overlap_px=0, compression=8
    )  # 3 × 2 tiles of 4 × 4 cells
    host = RecordingHost()
    prompts = {1: "sun", 4: "moon"}
    guide = GuideFirst(bcla_seed=0.0) if method == "guided" else None
    # halo 0: the jobs' windows are the plan's tiles (guided's default halo widens them)
    settings = RunSettings(
        method=method, tile_prompts=prompts, guide_first=guide, guide_prompt="scene", halo=0
    )
    run(plan, host, settings, (1, 4))
    tiles = [(tile.index, prompt) for tile, prompt in host.heard if tile in plan.tiles]
    assert tiles == [(i, prompts.get(i)) for i in range(len(plan))]
    # guided's whole-scene pass (not a tile of the plan) hears the guide prompt
    others = [prompt for tile, prompt in host.heard if tile not in plan.tiles]
    assert others == (["scene"] if method == "guided" else [])


def test_tile_prompts_refuse_methods_that_do_not_sample_tile_by_tile() -> None:
    for method in ("multidiffusion", "full"):
        with pytest.raises(SamplingError, match="tile by tile"):
            RunSettings(method=method, tile_prompts={0: "sun"})
    plan = make_plan(
        width_px=64, height_px=32, tile_width_px=32, tile_height_px=32, overlap_px=0, compression=8
    )
    with pytest.raises(SamplingError, match="tiles 0 to 1"):
        run(plan, RecordingHost(), RunSettings(method="causal", tile_prompts={2: "sun"}), (1, 4))


def test_flow_host_runs_a_tile_with_its_own_embeddings(model, prompts) -> None:
    """Independent tiles, tile prompts at every step (σ ≥ 0): the tile with its own prompt is exactly the
    run with that prompt everywhere, and the other tiles are exactly the run without tile prompts."""
    plan = make_plan(
        width_px=64, height_px=32, tile_width_px=32, tile_height_px=32, overlap_px=0, compression=8
    )  # 2 tiles
    cond, uncond = prompts
    other = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(3))  # another length too
    options = {"method": "independent", "steps": 2, "cfg": 2.0, "seed": 5, "tile_prompt_sigma": 0.0}
    plain = generate(plan, model, cond, uncond, **options).tiles
    everywhere = generate(plan, model, other, uncond, **options).tiles
    mixed = generate(plan, model, cond, uncond, tile_prompts={1: other}, **options).tiles
    assert torch.equal(mixed[0], plain[0])
    assert torch.allclose(mixed[1], everywhere[1], atol=1e-6)
    assert not torch.allclose(mixed[1], plain[1], atol=1e-3)


@pytest.mark.parametrize(("prompt_sigma", "told_steps"), [(0.6, 2), (0.5, 3)])
def test_flow_host_gives_the_tile_prompt_from_sigma_s_up_and_the_runs_below(
    model, prompts, prompt_sigma: float, told_steps: int
) -> None:
    """shift 1, 4 steps: σ = 1, 0.75, 0.5, 0.25. The told tile's calls at σ ≥ s hear its prompt (σ = s
    included), the rest the run's; the other tile hears the run's at every step."""
    plan = make_plan(
        width_px=64, height_px=32, tile_width_px=32, tile_height_px=32, overlap_px=0, compression=8
    )  # 2 independent tiles, sampled in order
    cond, uncond = prompts
    other = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(3))
    heard: list[tuple[float, str]] = []

    def record(module, args, kwargs) -> None:
        text = kwargs["encoder_hidden_states"][0]  # the cond branch, first chunk
        name = "tile" if torch.equal(text[: other.shape[1]], other[0]) else "run"
        assert name == "tile" or torch.equal(text[: cond.shape[1]], cond[0])
        heard.append((round(float(kwargs["timestep"][0]) / 1000, 4), name))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        options = dict(method="independent", steps=4, cfg=2.0, shift=1.0, seed=5)
        generate(
            plan, model, cond, uncond, tile_prompts={1: other}, tile_prompt_sigma=prompt_sigma, **options
        )
    finally:
        hook.remove()
    sigmas = [1.0, 0.75, 0.5, 0.25]
    told = ["tile"] * told_steps + ["run"] * (4 - told_steps)
    assert heard == [(s, "run") for s in sigmas] + list(zip(sigmas, told, strict=True))


def test_flow_host_gives_the_scene_prompt_below_sigma_s_to_every_tile(model, prompts) -> None:
    """shift 1, 4 steps (σ = 1, 0.75, 0.5, 0.25), gate 0.5, a scene prompt (automatic tile prompts' words
    every tile keeps): the told tile hears its prompt at σ ≥ 0.5, the other tile the run's, and both the
    scene prompt below: no step below the gate hears the run's prompt or the tile's."""
    plan = make_plan(
        width_px=64, height_px=32, tile_width_px=32, tile_height_px=32, overlap_px=0, compression=8
    )  # 2 independent tiles, sampled in order
    cond, uncond = prompts
    texts = {
        name: torch.randn(1, length, 16, generator=torch.Generator().manual_seed(seed))
        for name, length, seed in (("tile", 4, 3), ("scene", 5, 4))
    }
    heard: list[tuple[float, str]] = []

    def record(module, args, kwargs) -> None:
        text = kwargs["encoder_hidden_states"][0]  # the cond branch, first chunk
        known = {"run": cond, **texts}
        (name,) = [name for name, t in known.items() if torch.equal(text[: t.shape[1]], t[0])]
        heard.append((round(float(kwargs["timestep"][0]) / 1000, 4), name))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        options = dict(method="independent", steps=4, cfg=2.0, shift=1.0, seed=5, tile_prompt_sigma=0.5)
        generate(
            plan,
            model,
            cond,
            uncond,
            tile_prompts={1: texts["tile"]},
            tile_scene_prompt=texts["scene"],
            **options,
        )
    finally:
        hook.remove()
    sigmas = [1.0, 0.75, 0.5, 0.25]
    assert heard == list(zip(sigmas, ["run"] * 3 + ["scene"], strict=True)) + list(
        zip(sigmas, ["tile"] * 3 + ["scene"], strict=True)
    )


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_tile_prompt_sigma_outside_0_1_is_refused(value: float) -> None:
    with pytest.raises(SamplingError, match=r"tile_prompt_sigma is a noise level in \[0, 1\]"):
        RunSettings(method="causal", tile_prompts={0: "sun"}, tile_prompt_sigma=value)


# --- rectangles -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "cells"),
    [(8, (slice(1, 4), slice(5, 12))), (32, (slice(0, 1), slice(1, 3)))],
)
def test_rectangle_maps_to_the_cells_it_touches(compression: int, cells: tuple[slice, slice]) -> None:
    plan = make_plan(
        width_px=256,
        height_px=128,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=0,
        compression=compression,
    )
    assert region_cells(plan, Region(x=40, y=10, w=50, h=20)) == cells


@pytest.mark.parametrize("compression", [8, 32])
def test_rectangle_goes_to_the_tiles_it_touches(compression: int) -> None:
    plan = make_plan(
        width_px=512,
        height_px=256,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=0,
        compression=compression,
    )  # 4 × 2 tiles of 128 px
    assert tiles_covering(plan, Region(0, 0, 128, 128)) == [0]
    assert tiles_covering(plan, Region(100, 20, 60, 10)) == [0, 1]  # crosses x = 128
    assert tiles_covering(plan, Region(300, 120, 10, 20)) == [2, 6]  # crosses y = 128
    assert tiles_covering(plan, Region(511, 255, 1, 1)) == [7]
    # overlapping tiles: a rectangle inside the overlap belongs to both
    shifted = make_plan(
        width_px=512,
        height_px=256,
        tile_width_px=256,
        tile_height_px=256,
        overlap_px=64,
        compression=compression,
        fit="shift",
    )
    starts = [tile.x * compression for tile in shifted.tiles]
    inside = next(s for s in starts if s > 0)
    assert tiles_covering(shifted, Region(inside, 0, 8, 8)) == [0, 1]


def test_rectangles_outside_the_canvas_are_refused() -> None:
    plan = make_plan(
        width_px=256, height_px=128, tile_width_px=128, tile_height_px=128, overlap_px=0, compression=32
    )
    for region in (Region(200, 0, 100, 10), Region(-1, 0, 10, 10), Region(0, 0, 0, 10)):
        with pytest.raises(TilePromptError, match="rectangle"):
            tiles_covering(plan, region)


# --- text -------------------------------------------------------------------------------------------


def test_tile_texts_append_or_replace_the_runs_prompt() -> None:
    plan = make_plan(
        width_px=256, height_px=128, tile_width_px=128, tile_height_px=128, overlap_px=0, compression=8
    )  # 2 tiles
    prompts = TilePrompts({1: "a sun"}, ((Region(0, 0, 256, 10), "clouds"),))
    assert tile_texts(plan, prompts, "a sky") == {0: "a sky, a sun, clouds", 1: "a sky, clouds"}
    replaced = TilePrompts({2: "a moon"}, combine="replace")
    assert tile_texts(plan, replaced, "a sky") == {1: "a moon"}
    for number in (0, 3):  # numbers as the preview shows them: 1 and 2
        with pytest.raises(TilePromptError, match="tiles 1 to 2"):
            tile_texts(plan, TilePrompts({number: "x"}), "a sky")
    with pytest.raises(TilePromptError, match="combine"):
        TilePrompts(combine="average")


def test_the_whole_scene_hears_every_tiles_words_once() -> None:
    prompts = TilePrompts({1: "a sun", 3: "a tree"}, ((Region(0, 0, 8, 8), "a sun"),), combine="replace")
    assert whole_scene_text(prompts, "a sky") == "a sky, a sun, a tree"


def test_identical_texts_are_encoded_once() -> None:
    calls = []
    encoded = encode_tile_prompts({0: "a", 1: "b", 2: "a"}, lambda text: calls.append(text) or text.upper())
    assert encoded == {0: "A", 1: "B", 2: "A"} and calls == ["a", "b"]


def test_parse_json_reads_tiles_and_regions() -> None:
    text = '{"tiles": {"3": "a sun"}, "regions": [{"x": 1, "y": 2, "w": 3, "h": 4, "prompt": "sea"}]}'
    assert parse_json(text) == TilePrompts({3: "a sun"}, ((Region(1, 2, 3, 4), "sea"),))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"tile": {}}', "JSON object"),
        ('{"tiles": {"a": "sun"}}', "tile numbers"),
        ('{"tiles": {"0": 1}}', "tile numbers"),
        ('{"regions": {}}', "list"),
        ('{"regions": [{"x": 0, "y": 0, "w": 1, "prompt": "s"}]}', "region 0"),
        ('{"regions": [{"x": 0.5, "y": 0, "w": 1, "h": 1, "prompt": "s"}]}', "region 0"),
        ('{"combine": "mix"}', "combine"),
    ],
)
def test_parse_json_errors_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(TilePromptError, match=message):
        parse_json(text)


def test_parse_lines_reads_positions_indices_and_rectangles() -> None:
    text = "a sun\n\nclouds\n5: a moon\n0, 0, 64, 32: a bird\n"
    assert parse_lines(text) == TilePrompts(
        {1: "a sun", 3: "clouds", 5: " a moon"}, ((Region(0, 0, 64, 32), " a bird"),)
    )


# --- the CLI ----------------------------------------------------------------------------------------


def _recorded(model: cli.LoadedModel, texts: list[str]) -> cli.LoadedModel:
    """``model`` whose prompt encoder logs every text it encodes into ``texts``."""
    encode = model.encode_prompt
    model.encode_prompt = lambda prompt: texts.append(prompt) or encode(prompt)
    return model


def recording_loader(texts: list[str]):
    return lambda folder, device: _recorded(tiny_loader(folder, device), texts)


def test_cli_tile_prompts_encode_each_tiles_text(tmp_path: Path) -> None:
    spec = tmp_path / "tiles.json"
    spec.write_text(
        json.dumps(
            {"tiles": {"2": "a sun"}, "regions": [{"x": 0, "y": 32, "w": 8, "h": 8, "prompt": "a rock"}]}
        )
    )
    texts: list[str] = []
    argv = [*BASE, "--method", "causal", "--tile-prompts", str(spec), "--out", str(tmp_path / "out")]
    assert cli.main(argv, loader=recording_loader(texts)) == 0
    assert "one sun over a red sky, a sun" in texts and "one sun over a red sky, a rock" in texts
    assert (tmp_path / "out" / "causal.png").is_file()
    texts.clear()
    argv = [*BASE, "--method", "guided", "--tile-prompts", str(spec), "--out", str(tmp_path / "guided")]
    assert cli.main(argv, loader=recording_loader(texts)) == 0
    assert "one sun over a red sky, a sun, a rock" in texts  # the whole-scene pass


def test_cli_causal_context_hears_every_tiles_words_and_holds_the_pull(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """causal + tile prompts + a global context: the low-res pass hears the whole-scene text (as guided's
    does), so the held pull keeps the told object instead of pulling it away; the strengths not given
    keep the engine's defaults (guided's held pull). Without a context the CLI warns."""
    from temporal_tiling import pipeline

    calls: list[dict] = []

    def recording_generate(*args, **kwargs):
        calls.append(kwargs)
        return generate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate", recording_generate)
    spec = tmp_path / "tiles.json"
    spec.write_text(json.dumps({"tiles": {"2": "a sun"}}))
    argv = [*BASE, "--method", "causal", "--tile-prompts", str(spec), "--context-seed", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")], loader=tiny_loader) == 0
    (low_res,) = [c for c in calls if c["method"] == "full"]
    (causal,) = [c for c in calls if c["method"] == "causal"]
    model = tiny_loader(Path("unused"), torch.device("cpu"))
    assert torch.equal(low_res["prompt_embeds"], model.encode_prompt("one sun over a red sky, a sun"))
    assert "causal without a global context" not in capsys.readouterr().err
    assert cli.main([*argv[:-2], "--out", str(tmp_path / "bare")], loader=tiny_loader) == 0
    assert "warning: --tile-prompts: causal without a global context" in capsys.readouterr().err
    context = causal["context"]
    strengths = (context.skip_residual, context.stats, context.skip_power, context.bcla_seed)
    assert strengths == (1.0, 0.5, 0.0, 1.0)


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "cannot read"),
        ("{oops", [], "not valid JSON"),
        ('{"tiles": {"99": "a sun"}}', [], "tiles 1 to 6"),
        ('{"regions": [{"x": 60, "y": 0, "w": 10, "h": 1, "prompt": "s"}]}', [], "past the 64×40"),
        ("{}", ["--method", "multidiffusion"], "tile by tile"),
    ],
)
def test_cli_tile_prompt_errors_exit_2_with_one_line(tmp_path: Path, capsys, content, extra, message) -> None:
    spec = tmp_path / "tiles.json"
    if content is not None:
        spec.write_text(content)
    argv = [*BASE, "--method", "causal", *extra, "--tile-prompts", str(spec), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv, loader=tiny_loader)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--tile-prompts" in err and message in err
    assert not (tmp_path / "o").exists()


def test_cli_tile_prompt_sigma_reaches_the_run_in_generate_and_refine(tmp_path: Path, monkeypatch) -> None:
    from test_refine import photo, refine

    from temporal_tiling import pipeline

    heard: list[float] = []

    def recording_generate(*args, **kwargs):
        heard.append(kwargs["tile_prompt_sigma"])
        return generate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate", recording_generate)
    spec = tmp_path / "tiles.json"
    spec.write_text(json.dumps({"tiles": {"2": "a sun"}}))
    argv = [*BASE, "--method", "causal", "--tile-prompts", str(spec), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--tile-prompt-sigma", "0.6"], loader=tiny_loader) == 0
    source = tmp_path / "photo.png"
    Image.fromarray((photo(96, 160) * 255).round().astype(np.uint8)).save(source)
    assert (
        refine(source, tmp_path / "refined", "--tile-prompts", str(spec), "--tile-prompt-sigma", "0.3") == 0
    )
    assert heard == [0.6, 0.3]


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--tile-prompt-sigma", "1.5"], "must be <= 1"), (["--tile-prompt-sigma", "-0.1"], "must be >= 0")],
)
def test_cli_tile_prompt_sigma_outside_0_1_exits_2_with_one_line(
    tmp_path: Path, capsys, extra, message
) -> None:
    spec = tmp_path / "tiles.json"
    spec.write_text(json.dumps({"tiles": {"2": "a sun"}}))
    argv = [*BASE, "--tile-prompts", str(spec), *extra, "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv, loader=tiny_loader)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--tile-prompt-sigma" in err and message in err


def test_cli_tile_prompt_sigma_needs_tile_prompts(tmp_path: Path, capsys) -> None:
    argv = [*BASE, "--tile-prompt-sigma", "0.5", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv, loader=tiny_loader)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--tile-prompt-sigma" in err and "--tile-prompts only" in err
    assert not (tmp_path / "o").exists()


def test_refine_takes_tile_prompts_too(tmp_path: Path) -> None:
    from test_refine import loader, photo, refine

    source = tmp_path / "photo.png"
    Image.fromarray((photo(96, 160) * 255).round().astype(np.uint8)).save(source)
    spec = tmp_path / "tiles.json"
    spec.write_text(json.dumps({"tiles": {"2": "a boat"}}))
    texts: list[str] = []

    def recording(folder: Path, device: torch.device) -> cli.LoadedModel:
        return _recorded(loader(folder, device), texts)

    assert refine(source, tmp_path / "plain") == 0
    assert refine(source, tmp_path / "tiled", "--tile-prompts", str(spec), model=recording) == 0
    assert "a harbour at dusk, a boat" in texts
    plain, tiled = (np.asarray(Image.open(tmp_path / name / "refined.png")) for name in ("plain", "tiled"))
    assert plain.shape == tiled.shape and not np.array_equal(plain, tiled)
    with pytest.raises(SystemExit):
        refine(source, tmp_path / "bad", "--tile-prompts", str(spec), "--method", "multidiffusion")
