"""Load SANA LoRA: a diffusers-format LoRA (the pack's temporal LoRA or any SANA LoRA) on a MODEL clone.

The file's module names (``transformer.<module>.lora_A/lora_B.weight``, peft/diffusers layout) are mapped
to the weight keys of the SANA MODEL and handed to ComfyUI's own LoRA loader as ModelPatcher weight
patches, so strength, offloading and unpatching behave as for any LoRA; the input MODEL is untouched.
"""

from __future__ import annotations

import comfy.lora
import folder_paths
from comfy_api.latest import io

from ..temporal_tiling.sana import EMBEDDED_MODEL, load_state_dict
from .bcla_cache import sana_transformer
from .common import CATEGORY, cross_check

EMBEDDED_LORA_ENTRY = "seamlab temporal LoRA (embedded)"
EMBEDDED_LORA = EMBEDDED_MODEL / "temporal_lora" / "pytorch_lora_weights.safetensors"


def lora_choices() -> list[str]:
    embedded = [EMBEDDED_LORA_ENTRY] if EMBEDDED_LORA.is_file() else []
    return embedded + folder_paths.get_filename_list("loras")


def lora_key_map(model) -> dict[str, str]:
    """diffusers LoRA module name -> weight key of ``model`` for every weight of its SANA transformer."""
    transformer = sana_transformer(model)
    prefix = next(
        key[: -len("transformer_blocks.0.attn1.to_q.weight")]
        for key in model.model_state_dict()
        if key.endswith("transformer_blocks.0.attn1.to_q.weight")
    )
    return {
        f"transformer.{name}": f"{prefix}{name}.weight"
        for name, module in transformer.named_modules()
        if getattr(module, "weight", None) is not None
    }


class SanaLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalLoraLoader",
            display_name="Load SANA LoRA",
            category=CATEGORY,
            description=(
                "Applies a diffusers-format SANA LoRA (e.g. the temporal LoRA trained with the BCLA cache "
                "in the loop) to a clone of the MODEL."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A SANA model from Load SANA."),
                io.Combo.Input(
                    "lora_name",
                    options=lora_choices(),
                    tooltip="A LoRA from models/loras, or the embedded model's temporal LoRA.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="How strongly the LoRA changes the model (0 = not at all, 1 = as trained).",
                ),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model with the LoRA applied.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None, strength: float | None = None) -> bool:
        return cross_check(cls, locals())

    @classmethod
    def execute(cls, model, lora_name: str, strength: float) -> io.NodeOutput:
        path = (
            EMBEDDED_LORA
            if lora_name == EMBEDDED_LORA_ENTRY
            else folder_paths.get_full_path("loras", lora_name)
        )
        if path is None:
            raise ValueError(f"LoRA '{lora_name}' is not in models/loras; pick one from the list.")
        patches = comfy.lora.load_lora(load_state_dict(path), lora_key_map(model))
        if not patches:
            raise ValueError(
                f"'{lora_name}' has no weights for this SANA model: expected diffusers LoRA keys such as "
                "'transformer.transformer_blocks.0.attn1.to_q.lora_A.weight'."
            )
        patched = model.clone()
        patched.add_patches(patches, strength)
        return io.NodeOutput(patched)


NODES = [SanaLoraLoader]
