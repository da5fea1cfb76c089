"""The pack's graph nodes inside ComfyUI (in-process, tiny SANA with the real layout): planner, BCLA Cache,
Causal SANA Sampler (every mode, sampler and scheduler, denoise < 1, progress, previews, interrupt), global
context, split/blend and metrics, as ComfyUI's executor calls them (``execute`` / ``validate_inputs``)."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
import torch
from sana_comfy import PACK_ROOT, pack_module, stock_node_outputs
from sana_comfy import validation_errors as refusal

STEPS = 3


@pytest.fixture(scope="module")
def nodes(registered):
    """The pack's node modules, imported as ComfyUI imports the pack."""
    names = ("loaders", "planner", "bcla_cache", "sampler", "context", "tiles", "metrics")
    return types.SimpleNamespace(**{name: pack_module(f"nodes.{name}") for name in names})


@pytest.fixture(scope="module")
def parts(nodes):
    loaders = nodes.loaders
    return loaders.SanaCheckpointLoader.execute(
        "tiny_sana_diffusers/", loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "default", "auto"
    ).result


@pytest.fixture(scope="module")
def conds(parts):
    import nodes as comfy_nodes

    _, clip, _ = parts
    encode = comfy_nodes.CLIPTextEncode()
    return encode.encode(clip, "a blue to pink sky")[0], encode.encode(clip, "")[0]


@pytest.fixture(scope="module")
def plan(nodes, parts):
    """6×4 tiles of 4×4 latent cells with 1 cell overlap would be slow; 3×2 tiles of 4 cells, overlap 1."""
    _, _, vae = parts
    c = vae.spacial_compression_encode()
    out = nodes.planner.SanaTilePlanner.execute(
        10 * c, 7 * c, 4 * c, 4 * c, c, "shift", "raster", 0, c, "manual", vae=vae
    )
    return out.result[0]


def _sample(nodes, model, conds, plan, **overrides):
    settings = dict(
        seed=3,
        steps=STEPS,
        cfg=3.0,
        sampler_name="euler",
        scheduler="simple",
        denoise=1.0,
        mode="causal",
        lock_feather=1,
        lock_margin=0,
        lock_release=0.0,
        release_band=0,
        batch_size=1,
    )
    settings.update(overrides)
    positive, negative = conds
    canvas, tiles, _ = nodes.sampler.SanaCausalSampler.execute(
        model, positive, negative, plan, **settings
    ).result
    return canvas["samples"], tiles["samples"]


def _host(nodes, model, plan, conds, sampler_name: str = "euler"):
    positive, negative = conds
    return nodes.sampler.ComfyHost(
        model,
        plan,
        positive=positive,
        negative=negative,
        steps=STEPS,
        cfg=3.0,
        sampler_name=sampler_name,
        scheduler="simple",
        seed=3,
    )


def _bcla(nodes, model, mode="cumulative", strength=1.0, source="synchronous"):
    return nodes.bcla_cache.SanaBCLACache.execute(model, mode, strength, source, 0.5, True).result[0]


# --- Validation: ComfyUI's own checks stay on ---------------------------------------------------------
def _every_node() -> list:
    """The node classes of every module in nodes/ (a new module is covered without being listed here)."""
    modules = [pack_module(f"nodes.{path.stem}") for path in sorted((PACK_ROOT / "nodes").glob("[!_]*.py"))]
    return [node for module in modules for node in getattr(module, "NODES", [])]


def test_every_node_takes_only_what_comfyui_does_not_check(registered):
    """ComfyUI switches its range check off for every input a node's validate_inputs takes by name, and
    every link-type check off when it takes ``input_types`` (or everything with ``**kwargs``). Each node
    takes its combos (ComfyUI 0.3.64 never checks a schema combo) and floats (NaN passes ComfyUI's range
    check), nothing it does not have, and defaults for all (ComfyUI leaves out what is missing or
    unlinked)."""
    import inspect

    from comfy_api.latest import io

    for node in _every_node():
        specs = {spec.id: spec for spec in node.define_schema().inputs}
        need = {n for n, s in specs.items() if isinstance(s, (io.Combo.Input, io.Float.Input))}
        if not need and "validate_inputs" not in vars(node):
            continue
        spec = inspect.getfullargspec(node.validate_inputs)
        taken = spec.args[1:]
        assert spec.varkw is None and "input_types" not in taken, node
        assert need <= set(taken) <= set(specs), (node, need - set(taken), set(taken) - set(specs))
        assert len(spec.defaults or ()) == len(taken), node


VALID_LINKS = {"SanaTemporalGlobalContext": {"latent": "LATENT"}, "SanaTemporalTileSplit": {"image": "IMAGE"}}
"""Links that make a node with an optional guide or source valid."""


def test_every_node_refuses_a_wrong_choice_nan_and_out_of_range_value(registered):
    """Through ComfyUI's own validation: a value outside a combo's choices and NaN in a float are refused
    by the node; an integer beyond its maximum by ComfyUI (or the node, where it cross-checks it)."""
    from comfy_api.latest import io

    checked = 0
    for node in _every_node():
        links = VALID_LINKS.get(node.define_schema().node_id, {})
        assert refusal(node, links) is None, node  # the defaults are accepted
        for spec in node.define_schema().inputs:
            if isinstance(spec, io.Combo.Input):
                message = refusal(node, links, **{spec.id: "nonsense"})
                assert f"{spec.id} = 'nonsense' is not one of its choices" in message
            elif isinstance(spec, io.Float.Input):
                assert f"{spec.id} must be a finite number" in refusal(node, links, **{spec.id: float("nan")})
            elif isinstance(spec, io.Int.Input) and spec.max is not None:
                message = refusal(node, links, **{spec.id: spec.max + 1})
                ours = f"{spec.id} = {spec.max + 1} is above its maximum {spec.max}"
                assert f"bigger than max of {spec.max}: {spec.id}" in message or ours in message, message
            else:
                continue
            checked += 1
    assert checked > 40


# --- Tile Planner --------------------------------------------------------------------------------
def test_planner_reads_compression_from_vae_and_size_from_inputs(nodes, parts, plan):
    _, _, vae = parts
    c = vae.spacial_compression_encode()
    assert (plan.compression, plan.canvas_width, plan.canvas_height, plan.rows, plan.cols) == (c, 10, 7, 2, 3)
    latent = {"samples": torch.zeros(1, 8, 8, 12)}
    plan2, preview = nodes.planner.SanaTilePlanner.execute(
        1, 1, 4 * c, 4 * c, 0, "shift", "spiral", 0, 32, "manual", latent=latent, vae=vae
    ).result
    assert (plan2.canvas_height, plan2.canvas_width, plan2.order) == (8, 12, "spiral")
    assert preview.shape[0] == 1 and preview.shape[-1] == 3 and float(preview.max()) <= 1.0
    odd = torch.zeros(1, 10 * c + 1, 12 * c, 3)
    with pytest.raises(ValueError, match=f"scale it to {12 * c}×{10 * c} px"):
        nodes.planner.SanaTilePlanner.execute(
            1, 1, 4 * c, 4 * c, 0, "shift", "raster", 0, 32, "manual", image=odd, vae=vae
        )


def test_planner_auto_tile_size_uses_model_memory_estimate(nodes, parts):
    model, _, vae = parts
    c = vae.spacial_compression_encode()
    out = nodes.planner.SanaTilePlanner.execute(
        64 * c, 32 * c, c, c, 0, "shift", "raster", 0, c, "auto", vae=vae, model=model
    )
    plan = out.result[0]
    native = model.get_model_object("diffusion_model").config.sample_size
    assert plan.tile_height == min(native, 32) and plan.tile_width == min(native, 64)


PLANNER_WIDGETS = ("width", "height", "tile_width", "tile_height", "overlap", "compression", "tile_size")


@pytest.mark.parametrize(
    ("widgets", "links", "message"),
    [
        ((256, 256, 512, 256, 64, 32, "manual"), {}, "larger than the canvas"),
        ((512, 512, 256, 256, 256, 32, "manual"), {}, "must be smaller than the tile"),
        ((500, 512, 256, 256, 64, 32, "manual"), {}, "not a multiple of the VAE's compression factor 32"),
        ((500, 512, 256, 256, 64, 32, "manual"), {"vae": "VAE"}, None),
        ((512, 512, 256, 256, 64, 32, "auto"), {}, "needs the model input connected"),
        (
            (512, 512, 256, 256, 64, 32, "manual"),
            {"image": "LATENT"},
            "image, received_type(LATENT) mismatch input_type(IMAGE)",
        ),
        ((None, 512, 256, 256, 64, 32, "manual"), {}, None),  # width turned into an input: checked at run
        ((None, 512, 1024, 256, 256, 32, "manual"), {}, "must be smaller than the tile"),
        ((20000, 512, 256, 256, 64, 32, "manual"), {}, "width = 20000 is above its maximum 16384"),
        ((512, 512, 256, 256, 64, 32, "big"), {}, "tile_size = 'big' is not one of its choices"),
        ((16384, 16384, 64, 64, 0, 8, "manual"), {}, "65536 tiles (256×256), more than the ceiling of 1024"),
    ],
)
def test_planner_validation_messages(nodes, widgets, links, message):
    values = dict(zip(PLANNER_WIDGETS, widgets, strict=True))
    result = refusal(nodes.planner.SanaTilePlanner, links, fit="shift", **values)
    assert result is None if message is None else message in result


def test_planner_refuses_65536_tiles_fast_and_max_tiles_raises_the_ceiling(nodes):
    import time

    planner = nodes.planner.SanaTilePlanner
    widgets = dict(zip(PLANNER_WIDGETS, (16384, 16384, 64, 64, 0, 8, "manual"), strict=True))
    start = time.perf_counter()
    assert "raise max_tiles" in refusal(planner, fit="shift", **widgets)
    with pytest.raises(ValueError, match="more than the ceiling of 1024"):
        planner.execute(**widgets, fit="shift", order="raster", shuffle_seed=0)
    assert time.perf_counter() - start < 1.0
    assert refusal(planner, fit="shift", max_tiles=65536, **widgets) is None
    small = dict(widgets, width=1024, height=1024)
    plan, _ = planner.execute(**small, fit="shift", order="raster", shuffle_seed=0, max_tiles=256).result
    assert len(plan) == 256


# --- BCLA Cache --------------------------------------------------------------------------------------
def test_bcla_cache_patches_a_clone_and_leaves_the_input_model_untouched(nodes, parts):
    model, _, _ = parts
    before = (dict(model.model_options.get("transformer_options", {})), dict(model.object_patches))
    patched = _bcla(nodes, model, "neighbors", 0.5)
    assert patched is not model
    config = nodes.bcla_cache.bcla_config(patched)
    assert (config.mode, config.strength) == ("neighbors", 0.5)
    assert nodes.bcla_cache.bcla_config(model) is None
    assert (dict(model.model_options.get("transformer_options", {})), dict(model.object_patches)) == before


def test_bcla_cache_refuses_a_model_without_sana_linear_attention(nodes):
    import comfy.model_patcher

    base = torch.nn.Module()
    base.diffusion_model = torch.nn.Linear(2, 2)  # e.g. a UNet: no SANA linear attention to patch
    foreign = comfy.model_patcher.ModelPatcher(base, "cpu", "cpu")
    with pytest.raises(ValueError, match="SANA linear attention"):
        _bcla(nodes, foreign)
    cache = nodes.bcla_cache.SanaBCLACache
    assert "mode = 'everything' is not one of its choices" in refusal(cache, mode="everything")
    assert "strength = 100.0 is above its maximum 8.0" in refusal(cache, strength=100.0)


# --- Causal SANA Sampler -----------------------------------------------------------------------------
def test_modes_give_canvas_and_uniform_tiles(nodes, parts, conds, plan):
    model, _, _ = parts
    results = {
        mode: _sample(nodes, model, conds, plan, mode=mode)
        for mode in ("causal", "independent", "multidiffusion")
    }
    for canvas, tiles in results.values():
        assert canvas.shape == (1, 8, plan.canvas_height, plan.canvas_width) and torch.isfinite(canvas).all()
        assert (
            tiles.shape == (len(plan), 8, plan.tile_height, plan.tile_width) and torch.isfinite(tiles).all()
        )
    causal, independent = results["causal"][1], results["independent"][1]
    assert torch.equal(causal[0], independent[0])  # the first tile has nothing to lock to
    assert not torch.equal(causal[1], independent[1])  # later tiles are locked to the first
    # causal: the finished canvas holds each tile's final content where the tile was last written
    last = plan.tiles[-1]
    assert torch.equal(results["causal"][0][0, :, last.slices[0], last.slices[1]], causal[-1])


def test_bcla_cache_changes_later_tiles_only(nodes, parts, conds, plan):
    model, _, _ = parts
    plain = _sample(nodes, model, conds, plan)[1]
    for mode, source in (
        ("cumulative", "synchronous"),
        ("neighbors", "synchronous"),
        ("cumulative", "clean"),
    ):
        shared = _sample(nodes, _bcla(nodes, model, mode, 2.0, source), conds, plan)[1]
        assert torch.equal(shared[0], plain[0]), mode  # empty cache: bit-identical first tile
        assert not torch.allclose(shared[1:], plain[1:]), mode
    off = _sample(nodes, _bcla(nodes, model, "off"), conds, plan)[1]
    assert torch.equal(off, plain)


def test_lock_release_runs_through_comfys_mask_function_after_an_earlier_one(nodes, parts, conds, plan):
    model, _, _ = parts
    locked = _sample(nodes, model, conds, plan)[1]
    released = _sample(nodes, model, conds, plan, lock_release=0.5)[1]
    assert torch.equal(released[0], locked[0])  # the first tile has no lock to release
    assert not torch.allclose(released[1:], locked[1:])
    seen: list[tuple[int, ...]] = []

    def earlier(sigma, denoise_mask, extra_options):  # e.g. Differential Diffusion's mask function
        seen.append(tuple(denoise_mask.shape))
        return denoise_mask

    spied = model.clone()
    spied.set_model_denoise_mask_function(earlier)
    assert torch.equal(_sample(nodes, spied, conds, plan, lock_release=0.5)[1], released)
    assert seen and seen[0][-2:] == (plan.tile_height, plan.tile_width)


def test_lock_margin_regenerates_the_earlier_tiles_edge(nodes, parts, conds, plan):
    model, _, _ = parts
    locked = _sample(nodes, model, conds, plan)
    margin = _sample(nodes, model, conds, plan, lock_margin=1)
    assert torch.equal(margin[1][0], locked[1][0])  # the first tile has no earlier edge
    assert not torch.allclose(margin[1][1:], locked[1][1:])


def test_seam_refine_and_halo_run_through_comfys_sampler(nodes, parts, conds, plan):
    """The engine's seam refine bands and halo windows are ordinary host jobs: ComfyUI samples them too,
    and the sampler node's seam_refine and halo widgets reach the run."""
    pipeline = pack_module("temporal_tiling.pipeline")
    refine_module = pack_module("temporal_tiling.seam_refine")
    model, _, _ = parts
    shape = (1, model.get_model_object("latent_format").latent_channels)

    def canvas(**settings) -> torch.Tensor:
        host = _host(nodes, model, plan, conds)
        host.start_preview(torch.zeros(*shape, plan.canvas_height, plan.canvas_width), 1)
        run_settings = pipeline.RunSettings(method="independent", seed=3, **settings)
        return pipeline.run(plan, host, run_settings, shape).canvas

    plain = canvas()
    refine = refine_module.SeamRefine(0.5, pad=1)
    changed = (canvas(seam_refine=refine) - plain).abs().amax(dim=(0, 1)) > 1e-5  # latent in/out rounding
    in_bands = torch.zeros_like(changed)
    for band in refine_module.refine_bands(plan, refine.pad):
        in_bands[band.window.slices] |= band.mask[0, 0] > 0
    assert changed.any() and not (changed & ~in_bands).any()
    assert not torch.equal(canvas(halo=1), plain)
    for mode in ("causal", "multidiffusion"):  # the sampler node's seam_refine widget
        plain_canvas, plain_tiles = _sample(nodes, model, conds, plan, mode=mode)
        refined_canvas, refined_tiles = _sample(nodes, model, conds, plan, mode=mode, seam_refine=0.3)
        assert torch.equal(refined_tiles, plain_tiles), mode  # the tiles output stays the method's own
        assert not torch.allclose(refined_canvas, plain_canvas), mode
    plain_canvas, _ = _sample(nodes, model, conds, plan, mode="independent")
    halo_canvas, _ = _sample(nodes, model, conds, plan, mode="independent", halo=1)  # the halo widget
    assert torch.allclose(halo_canvas, canvas(halo=1), atol=1e-5)
    assert not torch.allclose(halo_canvas, plain_canvas)


def test_tiles_of_a_pe_model_get_their_canvas_positions_without_a_bcla_cache_node(nodes, conds, plan):
    """SANA 2K/4K add a sin-cos position embedding: with no BCLA Cache node in the graph the causal tiles
    still get their crop of the canvas' embedding (a positions-only cache carries it), not the stock grid
    of a small image at (0, 0)."""
    position = pack_module("temporal_tiling.position")
    loaders = nodes.loaders
    model, _, _ = loaders.SanaCheckpointLoader.execute(
        "tiny_sana_pe_diffusers/", loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "default", "auto"
    ).result
    embed = nodes.bcla_cache.bcla_transformer(model).patch_embed
    assert position.has_sincos_pos_embed(nodes.bcla_cache.bcla_transformer(model))
    added: list[torch.Tensor] = []

    def record(module, inputs, output):
        added.append(output - module.proj(inputs[0]).flatten(2).transpose(1, 2))

    hook = embed.register_forward_hook(record)
    try:
        _sample(nodes, model, conds, plan, mode="causal")
    finally:
        hook.remove()
    crops = [position.canvas_sincos_pos_embed(embed, plan, tile) for tile in plan.tiles]
    matched = {
        i for pe in added for i, crop in enumerate(crops) if torch.allclose(pe[:1].float(), crop, atol=1e-4)
    }
    assert added and matched == set(range(len(plan.tiles)))


def test_border_resample_runs_inside_comfys_inpainting_rule(nodes, parts, conds, plan):
    """The engine's border resampling is ComfyUI's post-CFG model call (a predict-noise wrapper): it gets
    the input, mask and known latent KSamplerX0Inpaint uses, and adds `repeats` model calls at the late
    levels of every tile with a lock edge, from seeded noise."""
    pipeline = pack_module("temporal_tiling.pipeline")
    flow = pack_module("temporal_tiling.flow")
    sampling = pack_module("temporal_tiling.sampling")
    BorderResample = pack_module("temporal_tiling.border_resample").BorderResample
    TileJob = pack_module("temporal_tiling.contracts").TileJob
    model, _, _ = parts
    shape = (1, model.get_model_object("latent_format").latent_channels)

    def host(sampler: str = "euler"):
        made = _host(nodes, model, plan, conds, sampler)
        made.start_preview(torch.zeros(*shape, plan.canvas_height, plan.canvas_width), 1)
        return made

    tile, seen = plan.tiles[1], []
    mask = sampling.lock_mask(plan, tile.index, feather=0, margin=0)
    noise, latent = torch.randn(2, *shape[1:], tile.height, tile.width).unbind(0)
    noise, latent = noise[None], latent[None]

    def spy(denoiser, x, sigma, denoise_mask, known):
        seen.append((x, sigma, denoise_mask, known))
        return denoiser(x, sigma)

    spying = host()
    spied = spying.denoise(TileJob(tile, noise, latent, mask, resample=spy))
    assert spying.job == nodes.sampler.JobState()  # the clone's hooks see no job between jobs
    assert torch.equal(spied, host().denoise(TileJob(tile, noise, latent, mask)))  # one call: the plain one
    assert len(seen) == STEPS
    x, sigma, denoise_mask, known = seen[-1]
    assert torch.equal(known, model.model.process_latent_in(latent))
    assert torch.equal(denoise_mask, mask.expand_as(x))
    kept = denoise_mask == 0
    assert kept.any()
    assert torch.allclose(x[kept], flow.noise_scaling(sigma, noise, known)[kept])  # the canvas noise

    forwards: list[int] = []
    diffusion_model = model.get_model_object("diffusion_model")
    hook = diffusion_model.register_forward_hook(lambda *_: forwards.append(1))
    levels = host().schedule(1.0)[:-1]
    options = BorderResample(below_sigma=float(levels[-2] + levels[-1]) / 2, repeats=2, band=1)

    def run(**settings):
        forwards.clear()
        run_settings = pipeline.RunSettings(
            method="causal", seed=3, lock_feather=0, lock_margin=0, **settings
        )
        return pipeline.run(plan, host(), run_settings, shape).tiles, len(forwards)

    try:
        plain, plain_calls = run()
        resampled, calls = run(border_resample=options)
        again, _ = run(border_resample=options)
    finally:
        hook.remove()
    per_call = plain_calls // (len(plan) * STEPS)  # CFG branches per forward: ComfyUI may batch them
    assert calls - plain_calls == per_call * options.repeats * 1 * (len(plan) - 1)  # one late level
    assert torch.equal(resampled[0], plain[0])  # the first tile has no lock edge
    assert not torch.allclose(resampled[1:], plain[1:])
    assert torch.equal(again, resampled)


def test_every_sampler_and_scheduler_runs(nodes, parts, conds, plan):
    import comfy.samplers

    model = _bcla(nodes, parts[0])
    small = pack_module("temporal_tiling.plan").make_plan(
        width_px=6 * plan.compression,
        height_px=4 * plan.compression,
        tile_width_px=4 * plan.compression,
        tile_height_px=4 * plan.compression,
        overlap_px=plan.compression,
        compression=plan.compression,
        fit="shift",
    )
    failures = {}
    for sampler_name in comfy.samplers.KSampler.SAMPLERS:
        canvas, _ = _sample(nodes, model, conds, small, steps=2, sampler_name=sampler_name)
        if not torch.isfinite(canvas).all():
            failures[sampler_name] = "non-finite"
    for scheduler in comfy.samplers.KSampler.SCHEDULERS:
        canvas, _ = _sample(nodes, model, conds, small, steps=2, scheduler=scheduler)
        if not torch.isfinite(canvas).all():
            failures[scheduler] = "non-finite"
    assert failures == {}


def test_denoise_below_one_refines_the_input_latent(nodes, parts, conds, plan):
    model, _, _ = parts
    source = torch.randn(
        1, 8, plan.canvas_height, plan.canvas_width, generator=torch.Generator().manual_seed(1)
    )
    light = _sample(nodes, model, conds, plan, denoise=0.2, latent_image={"samples": source})[0]
    strong = _sample(nodes, model, conds, plan, denoise=0.9, latent_image={"samples": source})[0]
    assert (light - source).abs().mean() < 0.7 * (strong - source).abs().mean()
    assert "connect latent_image" in refusal(nodes.sampler.SanaCausalSampler, denoise=0.5, mode="causal")
    wrong = {"samples": torch.zeros(1, 8, plan.canvas_height + 1, plan.canvas_width)}
    with pytest.raises(ValueError, match="Tile Planner"):
        _sample(nodes, model, conds, plan, denoise=0.5, latent_image=wrong)


def test_progress_counts_tiles_times_steps_with_canvas_previews(nodes, parts, conds, plan, monkeypatch):
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args

    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.Latent2RGB)
    seen = []
    monkeypatch.setattr(
        comfy.utils,
        "PROGRESS_BAR_HOOK",
        lambda value, total, preview, node_id=None: seen.append((value, total, preview)),
    )
    _sample(nodes, parts[0], conds, plan)
    total = len(plan) * STEPS
    assert [v for v, _, _ in seen] == list(range(1, total + 1)) and {t for _, t, _ in seen} == {total}
    previews = [p for _, _, p in seen if p is not None]
    assert len(previews) == total
    width, height = previews[-1][1].size
    assert width / height == pytest.approx(plan.canvas_width / plan.canvas_height, rel=0.05)  # whole canvas


def test_interrupt_is_honoured_within_a_tile(nodes, parts, conds, plan):
    import comfy.model_management

    model = parts[0].clone()
    calls = []

    def interrupt_after_two(apply_model, args):
        calls.append(1)
        if len(calls) == 2:
            comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(interrupt_after_two)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _sample(nodes, model, conds, plan, steps=20)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 2  # stopped before the third model call of the first tile


def test_sampler_refuses_before_any_model_call(nodes, parts, conds, plan):
    """A plan for another compression, NaN in the latent, unknown sampler names: refused with a message,
    the model never called."""
    model, _, vae = parts
    calls = []
    counted = model.clone()
    counted.set_model_unet_function_wrapper(
        lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"])
    )
    c = vae.spacial_compression_encode()
    other = nodes.planner.SanaTilePlanner.execute(
        10 * 8, 7 * 8, 4 * 8, 4 * 8, 8, "shift", "raster", 0, 8, "manual"
    ).result[0]
    with pytest.raises(ValueError, match=f"compression 8 but this model's VAE has {c} px per latent cell"):
        _sample(nodes, counted, conds, other)
    with pytest.raises(ValueError, match=f"compression 8 but this model's VAE has {c} px per latent cell"):
        nodes.planner.SanaTilePlanner.execute(
            80, 56, 32, 32, 8, "shift", "raster", 0, 8, "manual", model=model
        )
    nan = torch.full((1, 8, plan.canvas_height, plan.canvas_width), float("nan"))
    with pytest.raises(ValueError, match="latent_image holds NaN"):
        _sample(nodes, counted, conds, plan, denoise=0.5, latent_image={"samples": nan})
    assert calls == []
    sampler = nodes.sampler.SanaCausalSampler
    assert "sampler_name = 'foo' is not one of its choices" in refusal(sampler, sampler_name="foo")
    assert "scheduler = 'bar' is not one of its choices" in refusal(sampler, scheduler="bar")
    assert "cfg must be a finite number" in refusal(sampler, cfg=float("nan"))
    assert "Value 0 smaller than min of 1: steps" in refusal(sampler, steps=0)  # ComfyUI's own check
    assert "Failed to convert an input value to a INT value: steps, abc" in refusal(sampler, steps="abc")


def test_sampler_refuses_a_non_finite_result(nodes, parts, conds, plan):
    model = parts[0].clone()
    model.set_model_unet_function_wrapper(lambda apply, args: torch.full_like(args["input"], float("nan")))
    with pytest.raises(ValueError, match="produced NaN or infinite values"):
        _sample(nodes, model, conds, plan, mode="independent")


# --- Guided ------------------------------------------------------------------------------------------
def test_guided_mode_renders_the_whole_scene_first_and_starts_the_tiles_from_it(
    nodes, parts, conds, plan, monkeypatch
):
    import comfy.utils
    from comfy_execution.graph_utils import ExecutionBlocker

    model = _bcla(nodes, parts[0])
    seen = []
    monkeypatch.setattr(
        comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: seen.append(total)
    )
    positive, negative = conds
    settings = dict(seed=3, steps=STEPS, cfg=3.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    locks = dict(lock_feather=1, lock_margin=1, lock_release=0.0, release_band=0, batch_size=1)
    run = nodes.sampler.SanaCausalSampler.execute
    canvas, _, guide = run(model, positive, negative, plan, **settings, mode="guided", **locks).result
    # the whole-scene pass counts as one more tile; tiles run steps × guide_denoise from it by default
    tile_steps = max(1, round(STEPS * pack_module("temporal_tiling.options").DEFAULT_GUIDE_DENOISE))
    assert set(seen) == {STEPS + len(plan) * tile_steps} and tile_steps < STEPS
    seen.clear()
    run(model, positive, negative, plan, **settings, mode="guided", tile_steps=STEPS, **locks)
    assert set(seen) == {(len(plan) + 1) * STEPS}
    small = guide["samples"]
    assert small.shape[:2] == canvas["samples"].shape[:2]
    assert max(small.shape[-2:]) == max(plan.tile_height, plan.tile_width)  # the model's own size
    upscaled = torch.nn.functional.interpolate(small, size=canvas["samples"].shape[-2:], mode="bilinear")
    from_noise = run(model, positive, negative, plan, **settings, mode="causal", **locks).result[0]["samples"]
    closer = (canvas["samples"] - upscaled).abs().mean()
    assert closer < 0.8 * (from_noise - upscaled).abs().mean()  # the tiles keep the guide's layout
    low = run(model, positive, negative, plan, **settings, mode="guided", guide_denoise=0.2, **locks).result[
        0
    ]
    assert (low["samples"] - upscaled).abs().mean() < closer  # less denoise, closer to the guide
    assert isinstance(
        run(model, positive, negative, plan, **settings, mode="causal", **locks).result[2], ExecutionBlocker
    )


def test_guided_mode_refines_latent_image_as_its_guide(nodes, parts, conds, plan, monkeypatch):
    """img2img in mode = guided is a refine: latent_image is the guide (no whole-scene pass), the tiles
    start from it; a smaller one is enlarged, in pixels through the VAE when one is connected."""
    import comfy.utils

    model, _, vae = parts
    model = _bcla(nodes, model)
    seen = []
    monkeypatch.setattr(
        comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: seen.append(total)
    )
    assert refusal(nodes.sampler.SanaCausalSampler, {"latent_image": "LATENT"}, mode="guided") is None
    source = torch.randn(
        1, 8, plan.canvas_height, plan.canvas_width, generator=torch.Generator().manual_seed(4)
    )
    settings = dict(mode="guided", guide_denoise=0.34, lock_margin=1)
    canvas, _, guide = nodes.sampler.SanaCausalSampler.execute(
        model, *conds, plan, 3, STEPS, 3.0, "euler", "simple", 1.0, "guided", 1, 1, 0.0, 0, 1,
        guide_denoise=0.34, latent_image={"samples": source},
    ).result  # fmt: skip
    assert set(seen) == {len(plan) * 1}  # tiles only: 1 step each (3 × 0.34), no whole-scene pass
    assert torch.equal(guide["samples"], source)
    fresh = _sample(nodes, model, conds, plan, mode="causal")[0]
    refined = canvas["samples"]
    assert (refined - source).abs().mean() < 0.7 * (fresh - source).abs().mean()
    calls = []

    class CountingVAE:
        def decode(self, latent):
            calls.append("decode")
            return vae.decode(latent)

        def encode(self, image):
            calls.append("encode")
            return vae.encode(image)

    small = {"samples": source[..., ::2, ::2]}
    enlarged = _sample(nodes, model, conds, plan, **settings, latent_image=small, vae=CountingVAE())[0]
    assert enlarged.shape == source.shape and calls == ["decode", "encode"]


# --- Global context ----------------------------------------------------------------------------------
def test_global_context_guides_the_tiles(nodes, parts, conds, plan):
    model = parts[0]
    guide = {"samples": torch.randn(1, 8, 4, 6, generator=torch.Generator().manual_seed(5))}
    context = nodes.context.SanaGlobalContext
    assert "exactly one guide" in refusal(context)
    assert refusal(context, {"latent": "LATENT"}) is None
    spec = context.execute(1.0, 1.0, 0.0, 3.0, 0.5, 0, 0, latent=guide).result[0]
    plain = _sample(nodes, model, conds, plan)[0]
    guided = _sample(nodes, model, conds, plan, global_context=spec)[0]
    assert not torch.allclose(plain, guided)
    seeded_spec = context.execute(0.0, 0.0, 1.0, 3.0, 0.5, 0, 0, latent=guide).result[0]
    with pytest.raises(ValueError, match="BCLA Cache"):
        _sample(nodes, model, conds, plan, global_context=seeded_spec)
    seeded = _sample(nodes, _bcla(nodes, model), conds, plan, global_context=seeded_spec)[1]
    unseeded = _sample(nodes, _bcla(nodes, model), conds, plan)[1]
    assert not torch.allclose(seeded[0], unseeded[0])  # the seed reaches even the first tile
    assert "mode = causal" in refusal(
        nodes.sampler.SanaCausalSampler,
        {"global_context": "GLOBAL_CONTEXT"},
        denoise=1.0,
        mode="multidiffusion",
    )


def test_bcla_seed_pass_records_at_every_level_of_the_schedule(nodes, parts, conds, plan, monkeypatch):
    import comfy.sample
    import comfy.samplers

    model = _bcla(nodes, parts[0])
    guide = {"samples": torch.randn(1, 8, 4, 6, generator=torch.Generator().manual_seed(5))}
    levels: list[float] = []
    original = comfy.sample.sample

    def spy(*args, **kwargs):
        if kwargs.get("sigmas") is not None:
            levels.append(round(float(kwargs["sigmas"][0]), 5))
        return original(*args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", spy)
    every = nodes.context.SanaGlobalContext.execute(0.0, 0.0, 1.0, 3.0, 0.0, 0, 0, latent=guide).result[0]
    _sample(nodes, model, conds, plan, global_context=every, scheduler="karras")
    schedule = comfy.samplers.KSampler(model, STEPS, "cpu", "euler", "karras", 1.0).sigmas
    assert levels == [round(float(s), 5) for s in schedule[:-1]]
    levels.clear()
    one = nodes.context.SanaGlobalContext.execute(0.0, 0.0, 1.0, 3.0, 0.5, 0, 0, latent=guide).result[0]
    _sample(nodes, model, conds, plan, global_context=one)
    assert levels == [0.5]


def test_global_context_encodes_an_image_with_the_vae(nodes, parts, plan):
    _, _, vae = parts
    image = torch.rand(1, 30, 45, 3)
    spec = nodes.context.SanaGlobalContext.execute(
        0.5, 0.0, 0.0, 3.0, 0.5, 0, 32, image=image, vae=vae
    ).result[0]
    c = vae.spacial_compression_encode()
    assert spec.guide.shape == (1, 8, round(30 * 32 / 45 / c), round(32 / c))


# --- Split / blend / metrics -------------------------------------------------------------------------
def test_split_blend_roundtrip_and_metrics_report(nodes, plan, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    image = torch.rand(1, plan.height_px, plan.width_px, 3, generator=torch.Generator().manual_seed(0))
    tiles = nodes.tiles.SanaTileSplit.execute(plan, image=image).result[0]
    assert tiles.shape == (len(plan), plan.tile_height_px, plan.tile_width_px, 3)
    for method in ("none", "feather", "laplacian", "poisson"):
        out = nodes.tiles.SanaSeamBlender.execute(tiles, plan, method, "cosine", "none").result[0]
        assert torch.allclose(out, image, atol=1e-4), method
    assert "reference input connected" in refusal(nodes.tiles.SanaSeamBlender, color_correction="reference")
    two = nodes.tiles.SanaTileSplit.execute(plan, image=torch.cat([image, image])).result[0]
    pair = nodes.tiles.SanaSeamBlender.execute(two, plan, "feather", "cosine", "none", batch_size=2).result[0]
    assert torch.allclose(pair[1], image[0], atol=1e-4)
    with pytest.raises(ValueError, match="set batch_size to the number of canvases"):
        nodes.tiles.SanaSeamBlender.execute(two, plan, "feather", "cosine", "none")
    result = nodes.metrics.SanaTileMetrics.execute(image, plan, "sana/report", tiles=tiles)
    report, ratio, delta_e, psnr, heatmap, jump, seamless = result.result
    assert "gradient ratio" in report and psnr == pytest.approx(100.0)  # identical overlaps: capped PSNR
    assert heatmap.shape == image.shape and ratio > 0 and delta_e >= 0 and jump > 0
    assert seamless is True  # an untouched image re-stitched has no seam
    saved = list((tmp_path / "sana").glob("report_*_.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["report"]["meets_targets"] is True
    assert result.ui["text"][0].startswith("seamless") and not list(tmp_path.rglob(".tmp_*"))

    ramp = torch.linspace(0.2, 0.7, plan.width_px)
    stepped = ramp[None, None, :, None].expand(1, plan.height_px, -1, 3).clone()  # smooth, no seam
    seam = plan.seams()[0]
    if seam.axis == "vertical":
        stepped[:, :, seam.overlap_start :] += 0.15  # a hard step at the overlap's border, not its centre
    else:
        stepped[:, seam.overlap_start :] += 0.15
    guide = torch.nn.functional.avg_pool2d(stepped.movedim(-1, 1), 4).movedim(1, -1)
    flagged = nodes.metrics.SanaTileMetrics.execute(stepped.clamp(0, 1), plan, "sana/report", guide=guide)
    assert flagged.result[-1] is False and flagged.ui["text"][0].startswith("seams visible")
    assert "guide" in flagged.result[0]


# --- README advice and prompt warnings ---------------------------------------------------------------
def test_readme_empty_latent_advice_gives_the_requested_size(nodes):
    """The embedded model is 8× with 16 channels: EmptySD3LatentImage decodes to the size asked for.
    SANA's DC-AE is 32× with 32 channels: EmptyHunyuanImageLatent is 32× and its 64 zero channels are
    cut to the model's 32."""
    import comfy.sample
    from comfy_extras.nodes_hunyuan import EmptyHunyuanImageLatent
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage

    import nodes as comfy_nodes

    loaders = nodes.loaders
    model, clip, vae = loaders.SanaCheckpointLoader.execute(
        loaders.EMBEDDED_ENTRY, loaders.FROM_CHECKPOINT, loaders.FROM_CHECKPOINT, "default", "auto"
    ).result
    assert model.get_model_object("latent_format").downscale_ratio == 8
    latent = EmptySD3LatentImage.execute(256, 128, 1).result[0]
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "a blue sky")[0]
    sampled = comfy_nodes.common_ksampler(model, 0, 1, 1.0, "euler", "simple", positive, positive, latent)[0]
    image = comfy_nodes.VAEDecode().decode(vae, sampled)[0]
    assert tuple(image.shape[1:3]) == (128, 256)

    sana = types.SimpleNamespace(
        get_model_object=lambda name: types.SimpleNamespace(latent_channels=32, latent_dimensions=2)
    )
    empty = stock_node_outputs(EmptyHunyuanImageLatent, width=1024, height=512)[0]["samples"]
    assert tuple(comfy.sample.fix_empty_latent_channels(sana, empty).shape) == (1, 32, 16, 32)


def test_unknown_words_and_cut_prompts_are_logged(nodes, parts, caplog):
    import nodes as comfy_nodes

    clip = parts[1]
    with caplog.at_level("WARNING"):
        comfy_nodes.CLIPTextEncode().encode(clip, "zebra " + "the " * 400)
        comfy_nodes.CLIPTextEncode().encode(clip, "")
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "words the model does not know (read as <unk>): zebra" in logged
    assert "the prompt is cut short" in logged
    assert logged.count("SANA prompt") == 2  # the empty negative is not a mistake


# --- Saved outputs -----------------------------------------------------------------------------------
NODE_REFERENCE = Path(__file__).with_name("reference_node_runs.safetensors")


def test_sampler_modes_give_the_outputs_saved_before_the_run_path_was_unified(nodes, parts, conds, plan):
    """Canvas and tiles of fixed sampler runs, compared with ones saved before the engine's run path was
    unified. Exact where the torch version and CPU capability match the recording, to 1e-4 elsewhere;
    ``RECORD_REFERENCE_RUNS=1`` rewrites the file."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = parts[0]
    guide = {"samples": torch.randn(1, 8, 4, 6, generator=torch.Generator().manual_seed(5))}
    source = torch.randn(
        1, 8, plan.canvas_height, plan.canvas_width, generator=torch.Generator().manual_seed(1)
    )
    context = nodes.context.SanaGlobalContext.execute
    runs = {
        "causal": dict(model=model),
        "causal_bcla_margin1": dict(model=_bcla(nodes, model), lock_margin=1),
        "causal_clean_release_context": dict(
            model=_bcla(nodes, model, mode="decay", source="clean"),
            lock_release=0.5,
            release_band=1,
            global_context=context(0.5, 0.5, 1.0, 3.0, 0.0, 0, 0, latent=guide).result[0],
        ),
        "causal_img2img": dict(model=model, denoise=0.6, latent_image={"samples": source}),
        "independent": dict(model=model, mode="independent"),
        "multidiffusion": dict(model=model, mode="multidiffusion"),
    }
    outputs = {}
    for name, settings in runs.items():
        canvas, tiles = _sample(nodes, settings.pop("model"), conds, plan, **settings)
        outputs[f"{name}_canvas"], outputs[f"{name}_tiles"] = canvas.contiguous(), tiles.contiguous()
    environment = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}
    if os.environ.get("RECORD_REFERENCE_RUNS") == "1":
        save_file(outputs, NODE_REFERENCE, metadata=environment)
        pytest.skip(f"recorded {len(outputs)} node reference runs")
    with safe_open(NODE_REFERENCE, "pt") as handle:
        exact = handle.metadata() == environment
    saved = load_file(NODE_REFERENCE)
    assert sorted(outputs) == sorted(saved)
    for name, tensor in outputs.items():
        if exact:
            assert torch.equal(tensor, saved[name]), f"{name} differs by {(tensor - saved[name]).abs().max()}"
        else:
            torch.testing.assert_close(tensor, saved[name], atol=1e-4, rtol=1e-4, msg=name)
