"""ComfyUI entry point of the SANA temporal tiling pack: node registration and the front-end folder."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
