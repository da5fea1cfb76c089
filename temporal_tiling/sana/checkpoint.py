"""Safe reading of model files: tensors only, never pickled code.

Every failure a user can cause (missing, truncated or corrupt file, a pickle that carries code, a file
that holds no tensors) becomes a `CheckpointError` whose message names the file and says what to do.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import UserInputError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")  # .sft: the short name ComfyUI also reads as safetensors
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
    return load_checkpoint(path)[0]


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, stored config) of a model file. The config is what the weights cannot tell (e.g. a
    custom SANA's cross-attention heads): safetensors metadata ``config`` (a JSON object) or the ``config``
    entry (dict or JSON text) of a pickled checkpoint; {} when the file has none."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Model file '{path}' does not exist. Put it in the model folder and refresh.")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state, config = _load_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state, config = _load_pickle(path)
    else:
        raise CheckpointError(
            f"'{path.name}' has an unsupported extension '{suffix}'. "
            f"Use one of {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}."
        )
    if not state:
        raise CheckpointError(f"'{path.name}' holds no tensors: it is not a model checkpoint.")
    return state, config


def _config(stored: object, path: Path) -> dict:
    """A stored config as a dict; a malformed one is refused rather than ignored."""
    if stored is None:
        return {}
    try:
        config = json.loads(stored) if isinstance(stored, str) else stored
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"'{path.name}' stores a config that is not JSON ({exc}).") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"'{path.name}' stores a config that is not a JSON object.")
    return config


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), "pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path), device="cpu"), _config(metadata.get("config"), path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"'{path.name}' is not a readable safetensors file (truncated or corrupt download?): {exc}. "
            "Download it again."
        ) from exc


def _has_torch_header(path: Path) -> bool:
    """torch.save writes a zip archive ('PK') or, in its legacy format, a pickle (PROTO 2-5 opcode)."""
    with path.open("rb") as handle:
        head = handle.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _load_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not _has_torch_header(path):
        raise CheckpointError(
            f"'{path.name}' is not a PyTorch checkpoint: it starts with neither a zip nor a pickle header "
            "(corrupt or truncated download, or another format). Download it again."
        )
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
    return _tensors_of(obj, path), _config(obj.get("config"), path)


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


def read_json(path: Path) -> dict:
    """A model folder's JSON file (config.json, scheduler_config.json, ...) as a dict; a file that is not a
    JSON object is a CheckpointError naming it, not a decoder traceback."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"'{path}' is corrupt: not valid JSON ({exc}). Restore it from the model's download."
        ) from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"'{path}' is corrupt: it holds a JSON {type(config).__name__}, not an object.")
    return config


def folder_load_error(what: str, root: Path, exc: Exception) -> CheckpointError:
    """Why a diffusers/transformers folder ``root`` failed to load, as one message: the first of its files
    that cannot be read (a JSON file that does not parse, a safetensors file whose header or length is
    wrong: a truncated download) named once, else the library's own first line."""
    for path in sorted(root.glob("*.json")):
        try:
            read_json(path)
        except CheckpointError as broken:
            return broken
    for path in sorted(root.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt", device="cpu"):
                pass
        except (SafetensorError, OSError) as broken:
            return CheckpointError(f"'{path}' is truncated or corrupt ({broken}). Download it again.")
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(
        f"Cannot load the {what} in '{root}': {reason} (check its config.json, or download it again)."
    )
