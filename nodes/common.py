"""What the pack's nodes share: category, the custom socket types and IMAGE/LATENT conversions.

ComfyUI's IMAGE is [B, H, W, C] in [0, 1]; the engine works on [B, 3, H, W]. Converting in one place
keeps every node a thin adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from comfy_api.latest import io
from comfy_execution.validation import validate_node_input
from torch import Tensor

from ..temporal_tiling.errors import UserInputError

CATEGORY = "sana/temporal tiling"
LISTED_CHOICES = 12
"""Choices a combo message lists before it cuts the list short (model lists can be long)."""

Rules = Callable[[dict[str, Any], dict[str, str]], str | None]
"""A node's own checks: (widget values, None where linked; linked input -> type) -> message or None."""

TilePlanSocket = io.Custom("TILE_PLAN")
"""A ``temporal_tiling.plan.TilePlan``: canvas, tiles and generation order."""

GlobalContextSocket = io.Custom("GLOBAL_CONTEXT")
"""A ``temporal_tiling.context.ContextSettings``: low-res guide latent and the global-context strengths."""


def image_to_engine(image: Tensor) -> Tensor:
    """ComfyUI IMAGE [B, H, W, C] → engine [B, 3, H, W] (alpha dropped)."""
    return image[..., :3].movedim(-1, 1)


def image_from_engine(image: Tensor) -> Tensor:
    """Engine [B, C, H, W] → ComfyUI IMAGE [B, H, W, C], float32 on the intermediate device, clamped."""
    return image.movedim(1, -1).clamp(0.0, 1.0).float().contiguous()


def compression_problem(model, compression: int) -> str | None:
    """A plan's compression that is not the model's own (the pack's SANA latent formats carry it; other
    models are not checked): such a plan samples a canvas of the wrong size in pixels, without an error."""
    ratio = getattr(model.get_model_object("latent_format"), "downscale_ratio", None)
    if ratio is None or ratio == compression:
        return None
    return (
        f"The tile plan uses compression {compression} but this model's VAE has {ratio} px per latent "
        f"cell; connect the VAE to the Tile Planner (or set its compression to {ratio})."
    )


def vae_compression(vae) -> object:
    """Pixels per latent cell of a ComfyUI VAE. ExtraModels' VAE skips ``comfy.sd.VAE.__init__``, so
    ``spacial_compression_encode`` fails on it; it keeps the factor as ``latent_scale``."""
    try:
        return vae.spacial_compression_encode()
    except AttributeError:
        return getattr(vae, "latent_scale", None)


def link_problem(inputs: list[io.Input], linked: dict[str, str]) -> str | None:
    """A linked socket of the wrong type (ComfyUI leaves that check to nodes that take ``input_types``)."""
    for spec in inputs:
        received = linked.get(spec.id)
        if received is None or isinstance(spec, io.WidgetInput):
            continue
        if not validate_node_input(received, spec.get_io_type()):
            return f"{spec.id} expects {spec.get_io_type()}, but a {received} is connected."
    return None


def widget_problem(inputs: list[io.Input], widgets: dict[str, Any]) -> str | None:
    """The first widget value outside its input's range or choices (None values come from links).

    ComfyUI checks min/max only for inputs a node's ``validate_inputs`` does not take, and does not check
    schema-API combos at all, so a value sent through the API would otherwise reach ``execute``.
    """
    for spec in inputs:
        value = widgets.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, io.Combo.Input) and value not in spec.options:
            listed = ", ".join(map(str, spec.options[:LISTED_CHOICES]))
            more = ", …" if len(spec.options) > LISTED_CHOICES else ""
            return (
                f"{spec.id} = {value!r} is not one of its choices ({listed}{more}); pick one from the list."
            )
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            if isinstance(value, float) and not math.isfinite(value):
                return f"{spec.id} must be a finite number, got {value}."
            if spec.min is not None and value < spec.min:
                return f"{spec.id} = {value} is below its minimum {spec.min}; use {spec.min} or more."
            if spec.max is not None and value > spec.max:
                return f"{spec.id} = {value} is above its maximum {spec.max}; use {spec.max} or less."
    return None


def check_inputs(
    node: type[io.ComfyNode], widgets: dict[str, Any], input_types: dict | None, rules: Rules | None = None
) -> bool:
    """The ``validate_inputs`` of every pack node: link types, widget ranges and choices, then the node's
    own ``rules``. A mistake is raised, not returned: ComfyUI files a returned message once per argument
    of ``validate_inputs`` (the same sentence under every input), an exception once on the node."""
    linked = input_types or {}
    inputs = node.define_schema().inputs  # the schema, not GET_SCHEMA: ComfyUI validates on a locked clone
    problem = link_problem(inputs, linked) or widget_problem(inputs, widgets)
    if problem is None and rules is not None:
        problem = rules(widgets, linked)
    if problem is not None:
        raise UserInputError(problem)
    return True
