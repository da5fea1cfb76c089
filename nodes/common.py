"""What the pack's nodes share: category, the custom socket types and IMAGE/LATENT conversions.

ComfyUI's IMAGE is [B, H, W, C] in [0, 1]; the engine works on [B, 3, H, W]. Converting in one place
keeps every node a thin adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from comfy_api.latest import io
from torch import Tensor

from ..temporal_tiling.errors import UserInputError

CATEGORY = "sana/temporal tiling"
LISTED_CHOICES = 12
"""Choices a combo message lists before it cuts the list short (model lists can be long)."""

Rule = Callable[[dict[str, Any]], str | None]
"""A node's cross-checks: the inputs its ``validate_inputs`` takes (``cross_check``) -> message or None."""

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


class _Unlinked:
    """The default of a socket that ``validate_inputs`` takes: ComfyUI passes None for a connected socket
    (its value comes at run time) and leaves the argument out for one with nothing connected."""

    def __repr__(self) -> str:
        return "UNLINKED"


UNLINKED: Any = _Unlinked()


def connected(value: Any) -> bool:
    """Whether a socket taken by ``validate_inputs`` (default ``UNLINKED``) has a link."""
    return value is not UNLINKED


def taken_value_problem(spec: io.Input, value: Any) -> str | None:
    """A value outside its input's choices, range or the finite numbers.

    ComfyUI skips its own range check for every input that a node's ``validate_inputs`` takes by name,
    ComfyUI 0.3.64 never checks the choices of a schema-API combo, and no ComfyUI refuses NaN (it compares
    False with both limits), so these checks come back for exactly the inputs a pack node takes.
    """
    if isinstance(spec, io.Combo.Input):
        if value in spec.options:
            return None
        listed = ", ".join(map(str, spec.options[:LISTED_CHOICES]))
        more = ", …" if len(spec.options) > LISTED_CHOICES else ""
        return f"{spec.id} = {value!r} is not one of its choices ({listed}{more}); pick one from the list."
    if isinstance(spec, (io.Int.Input, io.Float.Input)):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{spec.id} must be a finite number, got {value}."
        if spec.min is not None and value < spec.min:
            return f"{spec.id} = {value} is below its minimum {spec.min}; use {spec.min} or more."
        if spec.max is not None and value > spec.max:
            return f"{spec.id} = {value} is above its maximum {spec.max}; use {spec.max} or less."
    return None


def _unconverted(spec: io.Input, value: Any) -> bool:
    """A number ComfyUI could not convert (e.g. ``steps: "abc"``): it has already filed its own error."""
    numeric = isinstance(spec, (io.Int.Input, io.Float.Input))
    return numeric and not isinstance(value, (int, float))


def cross_check(node: type[io.ComfyNode], taken: dict[str, Any], rule: Rule | None = None) -> bool:
    """The body of every pack node's ``validate_inputs``.

    A node's ``validate_inputs`` takes by name only the inputs it must look at: its combos and floats
    (see ``taken_value_problem``) and those its ``rule`` cross-checks (tile against canvas, a mode
    against a link). ComfyUI keeps converting every value and checking every link's type and the range
    of every other input. ``taken`` is the call's ``locals()``: widgets (None when linked, or missing:
    ComfyUI reports that itself), sockets (None when linked, ``UNLINKED`` when not).

    A mistake is raised, not returned: ComfyUI files a returned message once per argument of
    ``validate_inputs`` (the same sentence under every input), an exception once on the node.
    """
    values = {name: value for name, value in taken.items() if name != "cls"}
    specs = {spec.id: spec for spec in node.define_schema().inputs}
    known = {n: v for n, v in values.items() if v is not None and v is not UNLINKED}
    if any(_unconverted(specs[name], value) for name, value in known.items()):
        return True
    problem = next(filter(None, (taken_value_problem(specs[n], v) for n, v in known.items())), None)
    if problem is None and rule is not None:
        problem = rule(values)
    if problem is not None:
        raise UserInputError(problem)
    return True
