"""The pack's ComfyUI nodes (schema API, ``comfy_api.latest``), one module per concern.

Every module lists its node classes in ``NODES``; ``comfy_entrypoint`` gathers them into one
ComfyExtension. ComfyUI is imported only when ComfyUI calls the entry point, so the package (and the
pack root that re-exports it) imports without ComfyUI: pytest imports the repository root as a package.
"""

from __future__ import annotations

from typing import Any


async def comfy_entrypoint() -> Any:
    """Called by ComfyUI when it loads the pack; returns the ComfyExtension listing every node."""
    from comfy_api.latest import ComfyExtension, io

    from . import bcla_cache, context, loaders, lora, metrics, planner, sampler, tile_prompts, tiles

    modules = (loaders, lora, planner, bcla_cache, context, tile_prompts, sampler, tiles, metrics)

    class SanaTemporalTilingExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return [node for module in modules for node in module.NODES]

    return SanaTemporalTilingExtension()
