"""Load a temporal LoRA (or any diffusers SANA LoRA) onto a SANA transformer for sampling.

The temporal LoRA teaches a SANA transformer to use the BCLA cache of earlier tiles; it is trained by
`lab.training.temporal_lora` and saved as a standard diffusers LoRA file
(`pytorch_lora_weights.safetensors`, keys `transformer.….lora_A.weight`, adapter config in the metadata)
that `load_temporal_lora` and `SanaPipeline.load_lora_weights` read back.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserInputError

ADAPTER = "temporal"
LORA_FILE = "pytorch_lora_weights.safetensors"


class LoraError(UserInputError):
    """Bad temporal-LoRA settings or files; the message says what to change."""


def load_temporal_lora(transformer, path: Path):
    """Load a file written by the temporal-LoRA trainer (or any diffusers SANA LoRA) as the active adapter."""
    path = Path(path)
    file = path / LORA_FILE if path.is_dir() else path
    if not file.is_file():
        raise LoraError(f"no LoRA file at {file}; pass the folder or the .safetensors written by the trainer")
    transformer.load_lora_adapter(str(file), prefix="transformer", adapter_name=ADAPTER)
    transformer.set_adapter(ADAPTER)
    return transformer
