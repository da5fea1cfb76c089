"""Automatic tile prompts: SANA's cross-attention recorded per block, tokens grouped into the prompt's
words, a word whose attention lies outside a tile dropped from it, and the option through the run path,
the CLI (generate and refine) and the embedded model."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import BASE, one_error_line, refusing_loader, tiny_loader
from test_tile_prompts import RecordingHost

from temporal_tiling import cli
from temporal_tiling.options import DEFAULT_WORD_QUIET, DEFAULT_WORD_SIGMA
from temporal_tiling.pipeline import GuideFirst, RunSettings, generate, run, tile_steps_total
from temporal_tiling.plan import make_plan
from temporal_tiling.sampling import SamplingError
from temporal_tiling.word_maps import (
    AutoTilePrompts,
    PromptTokens,
    WordMapError,
    attention_of_words,
    cross_attention_modules,
    prompt_words,
    quiet_words,
    recording_cross_attention,
    tile_word_texts,
    tile_words,
    word_maps,
)

GRID_4X2 = make_plan(
    width_px=512, height_px=256, tile_width_px=128, tile_height_px=128, overlap_px=0, compression=8
)  # 4 × 2 tiles of 16 × 16 cells


def synthetic_maps() -> torch.Tensor:
    """Three words on a grid at a quarter of GRID_4X2's 32 × 64 cells: "sky" everywhere, "sun" inside
    tile 1 only, "moon" (uneven) inside tile 4 only."""
    maps = torch.zeros(3, 8, 16)
    maps[0] = 1.0
    maps[1, 1:3, 1:3] = 1.0
    maps[2, 0:3, 12:16] = 0.6 + 0.4 * torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    return maps


def test_a_word_whose_attention_lies_outside_a_tile_is_dropped_from_it() -> None:
    kept = tile_words(GRID_4X2, synthetic_maps(), threshold=0.5)
    assert kept[0] == [0, 1]
    assert kept[3] == [0, 2]
    assert all(kept[i] == [0] for i in (1, 2, 4, 5, 6, 7))
    texts, scene = tile_word_texts(kept, ["sky", "sun", "moon"])
    assert texts == {0: "sky sun", 1: "sky", 2: "sky", 3: "sky moon", 4: "sky", 5: "sky", 6: "sky", 7: "sky"}
    assert scene == "sky"  # what every tile hears below the σ gate: no tile's own word


def test_the_scene_is_the_words_every_tile_keeps_and_none_when_no_tile_drops_one() -> None:
    """One owner keeping every word is absent from the texts, yet the scene leaves its word out."""
    assert tile_word_texts({0: [0, 1, 2], 1: [0, 2]}, ["sky", "sun", "glow"]) == ({1: "sky glow"}, "sky glow")
    assert tile_word_texts({0: [0, 1], 1: [0, 1]}, ["sky", "sun"]) == ({}, None)


def test_an_object_word_goes_to_the_tile_that_paints_its_centre_not_to_its_neighbours_or_noise() -> None:
    """As SANA's maps are: every word gets some attention everywhere (a floor at 0.4 of the peak), with
    noise (0.55 in tile 6) and the sun's blob centred in tile 1 but reaching 2 cells into tile 2. Tile 2
    would paint a sun of its own from those cells and tile 6 from noise; tile 1 alone keeps "sun"."""
    maps = torch.full((2, 32, 64), 0.4)
    maps[0] = 1.0  # "sky": everywhere
    maps[1, 4:12, 10:18] = 0.8
    maps[1, 6:10, 12:16] = 1.0  # the sun's centre, in tile 1's cells (columns 0-15)
    maps[1, 20:28:2, 40:48:2] = 0.55
    kept = tile_words(GRID_4X2, maps, threshold=0.5)
    assert kept[0] == [0, 1]
    assert all(kept[i] == [0] for i in range(1, 8))


def test_a_tile_keeps_no_word_of_cells_an_earlier_tile_paints() -> None:
    """With overlap the first tile in order paints the shared cells: a word there is the earlier tile's."""
    plan = make_plan(
        width_px=256, height_px=128, tile_width_px=128, tile_height_px=128, overlap_px=32, compression=8
    )  # 2 tiles 18 cells wide (fitted: columns 0-17 and 14-31), sharing 4 columns
    shared = plan.tiles[1].x + 1
    maps = torch.full((2, 16, plan.canvas_width), 0.1)
    maps[0] = 1.0
    maps[1, 6:9, shared - 1 : shared + 2] = 1.0  # a blob in the shared columns
    kept = tile_words(plan, maps, threshold=0.5)
    assert kept == {0: [0, 1], 1: [0]}


def test_a_word_spread_wider_than_one_tile_stays_in_every_tile() -> None:
    """ "blue" fills the top half (4 tiles' worth): a word of the scene, not an object, so the bottom tiles
    keep it too, as every tile keeps a manual tile prompt's scene prompt."""
    maps = torch.full((2, 32, 64), 0.3)
    maps[0, :16] = 1.0
    maps[1, 6:10, 12:16] = 1.0
    kept = tile_words(GRID_4X2, maps, threshold=0.5)
    assert kept == {0: [0, 1]} | {i: [0] for i in range(1, 8)}


def with_a_missing_tree() -> torch.Tensor:
    """:func:`synthetic_maps` and a fourth word, "tree", that the scene does not show: a little attention
    everywhere with noise (as SANA's map of "tree" over an empty sky), no region standing out."""
    tree = 0.1 + 0.05 * torch.rand(1, 8, 16, generator=torch.Generator().manual_seed(1))
    return torch.cat([synthetic_maps(), tree])


def test_a_word_whose_map_has_no_concentrated_region_is_kept_by_no_tile() -> None:
    """Too spread out to be placed, "tree" would stay in every tile as a word of the scene (and every
    tile would paint a small tree); its peak is under the average word's attention, so no tile keeps it,
    nor the scene below the σ gate. "sky" is as evenly spread but strongly attended: it stays."""
    maps = with_a_missing_tree()
    assert all(3 in words for words in tile_words(GRID_4X2, maps, threshold=0.5).values())  # the rule off
    kept = tile_words(GRID_4X2, maps, threshold=0.5, quiet=DEFAULT_WORD_QUIET)
    assert kept == {0: [0, 1], 3: [0, 2]} | {i: [0] for i in (1, 2, 4, 5, 6, 7)}
    assert tile_word_texts(kept, ["sky", "sun", "moon", "tree"])[1] == "sky"
    assert quiet_words(maps[:1] * 0.01, DEFAULT_WORD_QUIET) == []  # a one-word prompt's flat word counts


def test_a_word_no_token_reads_stays_in_every_tile() -> None:
    maps = synthetic_maps()
    maps[1] = 0.0  # "sun" cut off by the tokenizer: nothing places it
    assert all(1 in words for words in tile_words(GRID_4X2, maps, threshold=0.5).values())


def test_tokens_are_grouped_into_the_prompts_words() -> None:
    # "sky," is two tokens ("sky", ","); a leading-space token ("▁one") belongs to the word after it
    tokens = PromptTokens("blue sky, one sun", (None, (0, 4), (5, 8), (8, 9), (9, 13), (14, 17), None))
    words, owners = prompt_words(tokens)
    assert words == ["blue", "sky,", "one", "sun"]
    assert owners == [-1, 0, 1, 1, 2, 3, -1]


def test_sana_text_encoder_places_each_conditioning_token_in_the_prompt() -> None:
    """Behind SANA's instruction template, the conditioning's tokens (first + last 299 positions) that read
    the prompt give back its words in order; the start token, template and padding read none."""
    from lab import fixtures
    from temporal_tiling.sana import SanaTextEncoder

    tokenizer = fixtures.tiny_tokenizer()
    encoder = SanaTextEncoder(fixtures.tiny_gemma2(len(tokenizer)), tokenizer, instruction="always")
    text, spans = encoder.token_spans("  A small fluffy white Cat ")
    assert text == "a small fluffy white cat"
    embeds, mask = encoder.encode("  A small fluffy white Cat ")
    assert len(spans) == embeds.shape[1]
    assert [text[a:b] for a, b in filter(None, spans)] == text.split()
    assert all(span is None for span, valid in zip(spans, mask[0], strict=True) if not valid)


def test_word_maps_sum_each_words_tokens_and_skip_tokens_without_a_word() -> None:
    attention = torch.tensor([[0.5, 0.2, 0.3, 0.0], [0.1, 0.1, 0.8, 0.0]])  # 2 image × 4 text tokens
    maps = word_maps(attention, (1, 2), [-1, 0, 0], 2)  # the 4th token (padding) reads no word
    assert torch.allclose(maps, torch.tensor([[[0.5, 0.9]], [[0.0, 0.0]]]))


def test_recorder_keeps_softmax_weights_of_every_block_and_restores_the_processors(model, prompts) -> None:
    processors = [block.attn2.processor for block in model.transformer_blocks]
    x, cond = torch.randn(2, model.config.in_channels, 4, 6), prompts[0]
    with torch.no_grad():
        plain = model(x, encoder_hidden_states=cond.repeat(2, 1, 1), timestep=torch.tensor([500.0] * 2))[0]
        with recording_cross_attention(model) as record:
            recorded = model(
                x, encoder_hidden_states=cond.repeat(2, 1, 1), timestep=torch.tensor([500.0] * 2)
            )[0]
    assert torch.equal(plain, recorded)  # the output is the original processor's
    assert record.count == len(model.transformer_blocks)
    weights = record.mean()
    assert weights.shape == (4 * 6 // model.config.patch_size**2, cond.shape[1])
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[0]))
    assert [block.attn2.processor for block in model.transformer_blocks] == processors
    guide = torch.randn(1, model.config.in_channels, 4, 6)
    with torch.no_grad():
        words = attention_of_words(model, guide, cond, [-1, 0, 0, 1, 1, 1])
    assert words.shape == (2, 4 // model.config.patch_size, 6 // model.config.patch_size)


def test_a_model_without_sana_cross_attention_is_refused_in_one_line() -> None:
    with pytest.raises(WordMapError, match="has none: use manual tile prompts"):
        cross_attention_modules(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5])
def test_a_threshold_outside_0_1_is_refused(threshold: float) -> None:
    with pytest.raises(WordMapError, match=r"threshold must be in \(0, 1\]"):
        AutoTilePrompts(PromptTokens("sun", ((0, 3),)), str, threshold)


@pytest.mark.parametrize("sigma", [-0.1, 1.5, float("nan")])
def test_a_word_sigma_outside_0_1_is_refused(sigma: float) -> None:
    with pytest.raises(WordMapError, match=r"sigma must be a noise level in \[0, 1\]"):
        AutoTilePrompts(PromptTokens("sun", ((0, 3),)), str, sigma=sigma)


def test_a_negative_quiet_ratio_is_refused() -> None:
    with pytest.raises(WordMapError, match="quiet ratio must be 0 or more"):
        AutoTilePrompts(PromptTokens("sun", ((0, 3),)), str, quiet=-0.5)


# --- the run path -----------------------------------------------------------------------------------


@dataclass
class AttentionHost(RecordingHost):
    """A host whose sampler returns the known latent, logs each tile's prompt, and whose cross-attention
    puts ``synthetic_maps`` on any whole-scene latent (text tokens: a start token, then one per word)."""

    scenes: list[torch.Tensor] = field(default_factory=list)
    maps: torch.Tensor = field(default_factory=synthetic_maps)

    def cross_attention(
        self, latent: torch.Tensor, noise: torch.Tensor, sigma: float, prompt=None
    ) -> torch.Tensor:
        self.scenes.append(latent)
        size = latent.shape[-2:]
        maps = torch.nn.functional.interpolate(self.maps[None], size=size, mode="nearest")[0]
        return torch.cat([torch.zeros(1, *size), maps]).flatten(1).T  # [h·w, 1 + one per word]


SKY_SUN_MOON = PromptTokens("sky sun moon", (None, (0, 3), (4, 7), (8, 12)))


@pytest.mark.parametrize("method", ["causal", "guided", "independent"])
def test_automatic_prompts_reach_the_tiles_whose_words_they_keep(method: str) -> None:
    host = AttentionHost()
    reported: list[dict[int, str]] = []
    auto = AutoTilePrompts(SKY_SUN_MOON, lambda text: f"encoded {text}", report=reported.append)
    guide = GuideFirst(bcla_seed=0.0) if method == "guided" else None
    settings = RunSettings(method=method, auto_tile_prompts=auto, guide_first=guide, halo=0)
    run(GRID_4X2, host, settings, (1, 4))
    tiles = {tile.index: prompt for tile, prompt in host.heard if tile in GRID_4X2.tiles}
    assert tiles == {0: "encoded sky sun", 3: "encoded sky moon"} | {
        i: "encoded sky" for i in (1, 2, 4, 5, 6, 7)
    }
    assert reported == [{i: text.removeprefix("encoded ") for i, text in tiles.items()}]
    # one model call on the whole scene at the whole-scene pass's size (the tile's long side)
    assert [tuple(scene.shape[-2:]) for scene in host.scenes] == [(8, 16)]


@dataclass
class SigmaHost(AttentionHost):
    """An AttentionHost that also logs each job's tile, prompt, σ gate and scene prompt."""

    jobs: list[tuple] = field(default_factory=list)

    def denoise(self, job):
        self.jobs.append((job.tile, job.prompt, job.prompt_sigma, job.scene_prompt))
        return super().denoise(job)


@pytest.mark.parametrize("method", ["causal", "guided"])
def test_automatic_prompts_below_the_sigma_gate_are_the_words_every_tile_keeps(method) -> None:
    """Their gate 0.5 (not manual tile prompts' 0.2): the sun's tile hears "sky sun" at σ ≥ 0.5, and every
    tile hears "sky" below it, not the run's whole prompt (which would give every tile the sun back); the
    progressive chain's levels hear the run's prompt."""
    host = SigmaHost()
    guide = GuideFirst(bcla_seed=0.0) if method == "guided" else None
    auto = AutoTilePrompts(SKY_SUN_MOON, lambda text: f"encoded {text}", sigma=0.5)
    settings = RunSettings(
        method=method, auto_tile_prompts=auto, guide_first=guide, halo=0, tile_prompt_sigma=0.2
    )
    run(GRID_4X2, host, settings, (1, 4))
    tiles = {tile.index: rest for tile, *rest in host.jobs if tile in GRID_4X2.tiles}
    assert tiles[0] == ["encoded sky sun", 0.5, "encoded sky"]
    assert tiles[3] == ["encoded sky moon", 0.5, "encoded sky"]
    assert all(tiles[i] == ["encoded sky", 0.5, "encoded sky"] for i in (1, 2, 4, 5, 6, 7))
    assert all(scene is None for tile, _, _, scene in host.jobs if tile not in GRID_4X2.tiles)
    manual = SigmaHost()
    run(GRID_4X2, manual, replace(settings, auto_tile_prompts=None, tile_prompts={0: "sun"}), (1, 4))
    told = [job for job in manual.jobs if job[0] in GRID_4X2.tiles]
    assert {job[1:] for job in told} == {("sun", 0.2, None), (None, 0.2, None)}


@pytest.mark.parametrize("method", ["causal", "guided"])
def test_no_tile_hears_a_word_the_scene_does_not_show_above_or_below_the_sigma_gate(method) -> None:
    """By default: "tree" (:func:`with_a_missing_tree`) reaches no tile; before, every tile heard it at
    every step (the run's prompt above the gate, the scene's words below)."""
    host = SigmaHost(maps=with_a_missing_tree())
    tokens = PromptTokens("sky sun moon tree", (None, (0, 3), (4, 7), (8, 12), (13, 17)))
    guide = GuideFirst(bcla_seed=0.0) if method == "guided" else None
    auto = AutoTilePrompts(tokens, lambda text: f"encoded {text}")
    run(GRID_4X2, host, RunSettings(method=method, auto_tile_prompts=auto, guide_first=guide, halo=0), (1, 4))
    tiles = {tile.index: rest for tile, *rest in host.jobs if tile in GRID_4X2.tiles}
    assert tiles[0] == ["encoded sky sun", DEFAULT_WORD_SIGMA, "encoded sky"]
    assert tiles[3] == ["encoded sky moon", DEFAULT_WORD_SIGMA, "encoded sky"]
    assert all(tiles[i] == ["encoded sky", DEFAULT_WORD_SIGMA, "encoded sky"] for i in (1, 2, 4, 5, 6, 7))


def test_refine_reads_the_words_on_the_given_image() -> None:
    host = AttentionHost()
    auto = AutoTilePrompts(SKY_SUN_MOON, str)
    photo = torch.full((1, 4, 32, 64), 0.25)
    settings = RunSettings(
        method="guided", auto_tile_prompts=auto, guide_first=GuideFirst(bcla_seed=0.0), halo=0
    )
    run(GRID_4X2, host, settings, (1, 4), latent=photo)
    assert len(host.scenes) == 1 and torch.allclose(host.scenes[0], torch.full((1, 4, 8, 16), 0.25))
    assert all(tile in GRID_4X2.tiles for tile, _ in host.heard)  # no whole-scene pass of its own


def test_the_progress_total_counts_the_whole_scene_pass_a_method_renders_for_them() -> None:
    auto = AutoTilePrompts(SKY_SUN_MOON, str)
    plain = tile_steps_total(GRID_4X2, RunSettings(method="causal"), 10)
    assert tile_steps_total(GRID_4X2, RunSettings(method="causal", auto_tile_prompts=auto), 10) == plain + 10
    refine = RunSettings(method="independent", auto_tile_prompts=auto, denoise=0.5)  # reads its input latent
    assert tile_steps_total(GRID_4X2, refine, 10) == tile_steps_total(
        GRID_4X2, replace(refine, auto_tile_prompts=None), 10
    )


def test_automatic_prompts_refuse_methods_that_do_not_sample_tile_by_tile_and_manual_ones() -> None:
    auto = AutoTilePrompts(SKY_SUN_MOON, str)
    with pytest.raises(SamplingError, match="tile by tile"):
        RunSettings(method="multidiffusion", auto_tile_prompts=auto)
    with pytest.raises(SamplingError, match="not both"):
        RunSettings(method="causal", auto_tile_prompts=auto, tile_prompts={0: "sun"})


# --- the command line -------------------------------------------------------------------------------


def word_loader(texts: list[str]):
    """The tests' tiny model with a word-level tokenizer (a start token, then one token per word, as
    its encode_prompt's length says) that logs every text it encodes."""

    def load(folder: Path, device: torch.device) -> cli.LoadedModel:
        model = tiny_loader(folder, device)

        def encode_prompt(prompt: str) -> torch.Tensor:
            texts.append(prompt)
            generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            return torch.randn(1, 1 + len(prompt.split()), 16, generator=generator)

        def prompt_tokens(prompt: str) -> PromptTokens:
            spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", prompt)]
            return PromptTokens(prompt, (None, *spans))

        model.encode_prompt, model.prompt_tokens = encode_prompt, prompt_tokens
        return model

    return load


@pytest.mark.parametrize("method", ["guided", "causal"])
def test_cli_tile_prompts_auto_gives_tiles_the_words_the_guide_puts_there(
    tmp_path: Path, capsys, method: str
) -> None:
    texts: list[str] = []
    argv = [*BASE, "--method", method, "--tile-prompts", "auto", "--word-threshold", "1.0"]
    assert cli.main([*argv, "--out", str(tmp_path)], loader=word_loader(texts)) == 0
    words = set(BASE[BASE.index("--prompt") + 1].split())
    tile_texts = [t for t in texts if t.split() and set(t.split()) < words]
    assert tile_texts  # at threshold 1 a word stays only where its peak is: tiles drop words
    err = capsys.readouterr().err
    assert all(f"hears: {text}" in err for text in tile_texts)
    if method == "causal":  # the progress bar counts causal's own whole-scene pass: (1 + 6 tiles) × 2 steps
        assert "14/14" in err
    plain_run = [*BASE, "--method", method, "--out", str(tmp_path / "plain")]
    assert cli.main(plain_run, loader=word_loader([])) == 0
    auto, plain = (np.asarray(Image.open(path / f"{method}.png")) for path in (tmp_path, tmp_path / "plain"))
    assert auto.shape == plain.shape and not np.array_equal(auto, plain)  # the tiles heard their words


def test_cli_word_sigma_reaches_the_run_in_generate_and_refine(tmp_path: Path, monkeypatch) -> None:
    """--word-sigma reaches the run's automatic tile prompts (generate and refine), and its default fills
    in without it."""
    from test_refine import encode, photo, refine

    from temporal_tiling import pipeline

    heard: list[float] = []

    def recording_generate(*args, **kwargs):
        heard.append(kwargs["auto_tile_prompts"].sigma)
        return generate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate", recording_generate)
    auto = [*BASE, "--method", "causal", "--tile-prompts", "auto"]
    gated = [*auto, "--word-sigma", "0.7", "--out", str(tmp_path / "a")]
    assert cli.main(gated, loader=word_loader([])) == 0
    assert cli.main([*auto, "--out", str(tmp_path / "b")], loader=word_loader([])) == 0

    def loader(folder: Path, device: torch.device) -> cli.LoadedModel:
        model = word_loader([])(folder, device)
        model.encode = encode
        return model

    source = tmp_path / "photo.png"
    Image.fromarray((photo(96, 160) * 255).round().astype(np.uint8)).save(source)
    flags = ("--tile-prompts", "auto", "--word-sigma", "0.3")
    assert refine(source, tmp_path / "refined", *flags, model=loader) == 0
    assert heard == [0.7, DEFAULT_WORD_SIGMA, 0.3]


def test_refine_takes_tile_prompts_auto(tmp_path: Path, capsys) -> None:
    from test_refine import encode, photo, refine

    source = tmp_path / "photo.png"
    Image.fromarray((photo(96, 160) * 255).round().astype(np.uint8)).save(source)
    texts: list[str] = []

    def loader(folder: Path, device: torch.device) -> cli.LoadedModel:
        model = word_loader(texts)(folder, device)
        model.encode = encode
        return model

    auto = ("--tile-prompts", "auto", "--word-threshold", "1.0")
    assert refine(source, tmp_path / "out", *auto, model=loader) == 0
    assert "hears: " in capsys.readouterr().err
    assert (tmp_path / "out" / "refined.png").is_file()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--tile-prompts", "auto", "--word-threshold", "1.5"], "argument --word-threshold: must be <= 1"),
        (["--tile-prompts", "auto", "--word-threshold", "0"], "argument --word-threshold: must be > 0"),
        (["--word-threshold", "0.5"], "argument --word-threshold: is read by --tile-prompts auto only"),
        (["--tile-prompts", "auto", "--method", "multidiffusion"], "argument --tile-prompts: tile prompts"),
        (["--tile-prompts", "auto", "--word-sigma", "1.5"], "argument --word-sigma: must be <= 1"),
        (["--tile-prompts", "auto", "--word-sigma", "nan"], "argument --word-sigma: must be >= 0, got nan"),
        (["--word-sigma", "0.5"], "argument --word-sigma: is read by --tile-prompts auto only"),
        (
            ["--tile-prompts", "auto", "--tile-prompt-sigma", "0.5"],
            "argument --tile-prompt-sigma: is read with a --tile-prompts file only; --tile-prompts auto has "
            "its own gate, --word-sigma",
        ),
    ],
)
def test_cli_automatic_prompt_errors_are_one_line_before_the_model_loads(capsys, flags, expected) -> None:
    line = one_error_line(capsys, [*BASE, *flags, "--out", "unused"], refusing_loader)
    assert expected in line


def test_cli_tile_prompts_auto_needs_a_model_with_a_tokenizer(tmp_path: Path, capsys) -> None:
    line = one_error_line(capsys, [*BASE, "--tile-prompts", "auto", "--out", str(tmp_path / "o")])
    assert "argument --tile-prompts: auto needs a model with a tokenizer; tiny has none" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(
    not (cli.EMBEDDED_MODEL / "model_index.json").is_file(), reason="the embedded model has not been built"
)
def test_embedded_model_runs_tile_prompts_auto_end_to_end(tmp_path: Path, capsys) -> None:
    prompt = "a blue to pink sky with one sun at top left"
    size = ["--width", "128", "--height", "64", "--tile", "64", "--overlap", "16", "--steps", "3"]
    argv = ["generate", "--prompt", prompt, *size, "--threads", "1", "--tile-prompts", "auto"]
    assert cli.main([*argv, "--word-threshold", "0.9", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    heard = [line.split("hears: ")[1] for line in err.splitlines() if "hears: " in line]
    assert heard and all(set(text.split()) < set(prompt.split()) for text in heard)
    with Image.open(tmp_path / "guided.png") as image:
        assert image.size == (128, 64)
