"""Safe reading of model files: tensors only, never pickled code.

Every failure a user can cause (missing, truncated or corrupt file, a pickle that carries code, a file
that holds no tensors) becomes a `CheckpointError` whose message names the file and says what to do.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import UserInputError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
# Training checkpoints nest the weights; the first of these keys holding tensors wins.
_NESTED_KEYS = ("state_dict", "model", "module", "ema")


class CheckpointError(UserInputError):
    """A model file cannot be used; the message says which file and what to change."""


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of a `.safetensors` or `.pth`-style file onto the CPU.

    Pickle-based files go through `torch.load(weights_only=True)`: a file that needs arbitrary code to
    unpickle is refused instead of executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Model file '{path}' does not exist. Put it in the model folder and refresh.")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state = _load_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state = _load_pickle(path)
    else:
        raise CheckpointError(
            f"'{path.name}' has an unsupported extension '{suffix}'. "
            f"Use one of {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}."
        )
    if not state:
        raise CheckpointError(f"'{path.name}' holds no tensors: it is not a model checkpoint.")
    return state


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"'{path.name}' is not a readable safetensors file (truncated or corrupt download?): {exc}. "
            "Download it again."
        ) from exc


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"'{path.name}' contains pickled Python code, which is never executed here. "
                "Convert it to .safetensors with a tool you trust, or use the official weights."
            ) from exc
        raise CheckpointError(f"'{path.name}' is corrupt ({exc}). Download it again.") from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"'{path.name}' is truncated or corrupt ({exc}). Download it again.") from exc
    return _tensors_of(obj, path)


def _tensors_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap training checkpoints ({'state_dict': ...}) and keep only tensors."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path.name}' holds a {type(obj).__name__}, not a state dict of tensors.")
    for key in _NESTED_KEYS:
        nested = obj.get(key)
        if isinstance(nested, dict) and any(isinstance(v, torch.Tensor) for v in nested.values()):
            obj = nested
            break
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
