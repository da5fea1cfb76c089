"""Every default has one home, ``temporal_tiling/options.py``: the engine's signatures, the nodes' widgets
and the CLI's flags all read it, so the three layers agree (a default changed there changes everywhere).

The nodes need ComfyUI to import, so their widgets are read from the source: each checked widget's
``default=`` must name the options constant (not repeat its value)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from temporal_tiling import cli, options
from temporal_tiling.blend import feather_weights, stitch
from temporal_tiling.context import ContextSettings
from temporal_tiling.pipeline import GuideFirst, RunSettings
from temporal_tiling.plan import check_plan, make_plan
from temporal_tiling.sampling import LockRelease

NODES = Path(__file__).resolve().parents[2] / "nodes"


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


def _field(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


ENGINE = {
    "make_plan fit": (lambda: _default(make_plan, "fit"), options.DEFAULT_FIT),
    "check_plan fit": (lambda: _default(check_plan, "fit"), options.DEFAULT_FIT),
    "RunSettings method": (lambda: RunSettings().method, options.DEFAULT_METHOD),
    "RunSettings lock_feather": (lambda: RunSettings().lock_feather, options.DEFAULT_LOCK_FEATHER),
    "RunSettings lock_margin": (lambda: RunSettings().lock_margin, options.DEFAULT_LOCK_MARGIN),
    "LockRelease amount": (lambda: LockRelease().amount, options.DEFAULT_LOCK_RELEASE),
    "LockRelease band": (lambda: LockRelease().band, options.DEFAULT_RELEASE_BAND),
    "stitch method": (lambda: _default(stitch, "method"), options.DEFAULT_STITCH),
    "stitch ramp": (lambda: _default(stitch, "ramp"), options.DEFAULT_RAMP),
    "feather_weights ramp": (lambda: _default(feather_weights, "ramp"), options.DEFAULT_RAMP),
    "GuideFirst denoise": (lambda: GuideFirst().denoise, options.DEFAULT_GUIDE_DENOISE),
    "GuideFirst stats": (lambda: GuideFirst().stats, options.DEFAULT_GUIDE_STATS),
    "GuideFirst bcla_seed": (lambda: GuideFirst().bcla_seed, options.DEFAULT_GUIDE_BCLA_SEED),
    "GuideFirst refine_band_sigma": (
        lambda: GuideFirst().refine_band_sigma,
        options.DEFAULT_REFINE_BAND_SIGMA,
    ),
    "ContextSettings bcla_seed": (
        lambda: _field(ContextSettings, "bcla_seed"),
        options.DEFAULT_GUIDE_BCLA_SEED,
    ),
    "ContextSettings skip_residual": (
        lambda: _field(ContextSettings, "skip_residual"),
        options.DEFAULT_GUIDE_SKIP_RESIDUAL,
    ),
    "ContextSettings stats": (lambda: _field(ContextSettings, "stats"), options.DEFAULT_GUIDE_STATS),
    "ContextSettings skip_power": (
        lambda: _field(ContextSettings, "skip_power"),
        options.DEFAULT_GUIDE_SKIP_POWER,
    ),
}


@pytest.mark.parametrize("name", list(ENGINE))
def test_the_engine_defaults_come_from_options(name):
    read, expected = ENGINE[name]
    assert read() == expected


CLI = {
    "fit": "DEFAULT_FIT",
    "method": "DEFAULT_METHOD",
    "lock_feather": "DEFAULT_LOCK_FEATHER",
    "lock_margin": "DEFAULT_LOCK_MARGIN",
    "lock_release": "DEFAULT_LOCK_RELEASE",
    "release_band": "DEFAULT_RELEASE_BAND",
    "guide_denoise": "DEFAULT_GUIDE_DENOISE",
}


@pytest.mark.parametrize("dest", list(CLI))
def test_the_cli_defaults_come_from_options(dest):
    generate = cli.build_parser().parse_args(["generate", "--prompt", "x", "--out", "o"])
    assert getattr(generate, dest) == getattr(options, CLI[dest])


NODE_WIDGETS = {  # (file, widget): the options constant its default must name
    ("sampler.py", "mode"): "DEFAULT_METHOD",
    ("sampler.py", "lock_feather"): "DEFAULT_LOCK_FEATHER",
    ("sampler.py", "lock_margin"): "DEFAULT_LOCK_MARGIN",
    ("sampler.py", "lock_release"): "DEFAULT_LOCK_RELEASE",
    ("sampler.py", "release_band"): "DEFAULT_RELEASE_BAND",
    ("sampler.py", "guide_denoise"): "DEFAULT_GUIDE_DENOISE",
    ("sampler.py", "halo"): "HALO_AUTO",
    ("planner.py", "fit"): "DEFAULT_FIT",
    ("planner.py", "max_tiles"): "MAX_TILES",
    ("tiles.py", "method"): "DEFAULT_STITCH",
    ("tiles.py", "ramp"): "DEFAULT_RAMP",
    ("context.py", "bcla_seed"): "DEFAULT_GUIDE_BCLA_SEED",
    ("context.py", "skip_residual"): "DEFAULT_GUIDE_SKIP_RESIDUAL",
    ("context.py", "stats"): "DEFAULT_GUIDE_STATS",
    ("context.py", "skip_power"): "DEFAULT_GUIDE_SKIP_POWER",
}


def widget_keywords(path: Path) -> dict[str, dict[str, ast.expr]]:
    """Every ``io.<Type>.Input("name", key=value ...)`` of a node module: name -> {key: value expression}."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "Input"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found[node.args[0].value] = {k.arg: k.value for k in node.keywords if k.arg}
    return found


@pytest.mark.parametrize(("file", "widget"), list(NODE_WIDGETS))
def test_the_node_widgets_read_their_default_from_options(file, widget):
    default = widget_keywords(NODES / file)[widget]["default"]
    assert isinstance(default, ast.Name) and default.id == NODE_WIDGETS[file, widget], ast.unparse(default)
    assert hasattr(options, default.id)


def test_the_halo_defaults_to_the_methods_own_in_every_layer():
    """CLI and engine leave the halo to the method (guided: a halo, the others: none); the node's widget
    says so with HALO_AUTO, which its execute turns into the engine's None."""
    generate = cli.build_parser().parse_args(["generate", "--prompt", "x", "--out", "o"])
    assert generate.halo is None and RunSettings().halo is None
    assert RunSettings(method="guided").tile_halo == options.DEFAULT_GUIDE_HALO > 0
    assert RunSettings(method="causal").tile_halo == 0
    source = (NODES / "sampler.py").read_text(encoding="utf-8")
    assert "halo=None if halo == HALO_AUTO else halo" in source


def test_the_planner_bounds_sizes_by_max_side():
    widgets = widget_keywords(NODES / "planner.py")
    for name in ("width", "height", "tile_width", "tile_height"):
        assert ast.unparse(widgets[name]["max"]) == "MAX_SIDE", name
