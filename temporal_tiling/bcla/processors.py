"""The diffusers attention processors (and ExtraModels' ``LiteLA.attn_matmul``) that read and write a
:class:`~.cache.BCLACache`, and how they are installed on a transformer.

Each processor asks the cache what its call does (:meth:`BCLACache.call_plan`); without a plan it runs
the stock code untouched. With one it runs the stock computation in float32, records the call's own
statistics ``[v; 1] @ φ(k)`` and adds the cached ones before the output is normalised by the Z row.
ComfyUI_ExtraModels' SANA computes the same attention in ``LiteLA.attn_matmul`` with the same padded
layout, so its layers carry the same statistics (``BCLALiteLAMatmul``).
With RoPE (``SanaLinearAttnProcessor3_0``) the numerator rows are built from rotated φ(k) and the Z row
from UN-rotated φ(k): a rotated Z is not positive and its dot with φ(q) crosses zero (NaN/Inf).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, SanaLinearAttnProcessor2_0
from diffusers.models.transformers.transformer_sana_video import SanaLinearAttnProcessor3_0
from torch import Tensor

from ..position import position_patches
from .cache import BCLACache, CallPlan
from .config import BCLAError

_STOCK_2_0 = SanaLinearAttnProcessor2_0()
_STOCK_3_0 = SanaLinearAttnProcessor3_0()


class _BCLAProcessor:
    """Shared state of the BCLA processors: the cache, the layer key and the model's patch size."""

    def __init__(self, cache: BCLACache, layer: str, patch: tuple[int, int] = (1, 1)) -> None:
        self.cache = cache
        self.layer = layer
        self.patch = patch

    def _record(
        self, call: CallPlan, own: Callable[[Tensor | None], Tensor], tokens: int, device: torch.device
    ) -> None:
        if call.record is None:
            return
        mask = self.cache.token_mask(tokens, self.patch, device) if call.masked else None
        call.keep(self.layer, own(mask))

    def _padded_attention(
        self, call: CallPlan, query: Tensor, key: Tensor, value: Tensor, eps: float
    ) -> Tensor:
        """The stock pad-ones linear attention in float32 with this call's recording and context:
        φ(q) [B, h, d, N], φ(k) [B, h, N, d], v [B, h, d, N] → [B, h, d, N]. ``[v; 1] @ φ(k)`` is the
        cached statistic; its last row Z normalises (diffusers' processor 2.0 and LiteLA alike)."""
        query, key, value = query.float(), key.float(), value.float()

        value = F.pad(value, (0, 0, 0, 1), mode="constant", value=1.0)
        scores = torch.matmul(value, key)

        def own(mask: Tensor | None) -> Tensor:
            return scores if mask is None else torch.matmul(value, key * mask[:, None])

        self._record(call, own, key.shape[-2], key.device)
        if call.context:
            call.add_context_(scores)
        out = torch.matmul(scores, query)
        return out[:, :, :-1] / (out[:, :, -1:] + eps)


def _project(attn: Attention, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v of self-attention with the optional q/k norms, as both stock Sana processors compute them."""
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


class BCLALinearAttnProcessor2_0(_BCLAProcessor):
    """``SanaLinearAttnProcessor2_0`` (SANA 1K/2K/4K) reading and writing a ``BCLACache``."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        call = self.cache.call_plan(self.layer) if encoder_hidden_states is None else None
        if call is None:
            return _STOCK_2_0(attn, hidden_states, encoder_hidden_states, attention_mask)
        # From here: the stock code, plus recording `scores` and adding the context to it.
        original_dtype = hidden_states.dtype
        query, key, value = _project(attn, hidden_states)

        query = query.transpose(1, 2).unflatten(1, (attn.heads, -1))
        key = key.transpose(1, 2).unflatten(1, (attn.heads, -1)).transpose(2, 3)
        value = value.transpose(1, 2).unflatten(1, (attn.heads, -1))

        query = F.relu(query)
        key = F.relu(key)

        hidden_states = self._padded_attention(call, query, key, value, 1e-15)
        hidden_states = hidden_states.flatten(1, 2).transpose(1, 2)
        hidden_states = hidden_states.to(original_dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if original_dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)

        return hidden_states


def apply_rotary_emb(hidden_states: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """The rotation of ``SanaLinearAttnProcessor3_0`` (diffusers defines it inside ``__call__``)."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class BCLALinearAttnProcessor3_0(_BCLAProcessor):
    """``SanaLinearAttnProcessor3_0`` (RoPE, SANA-Video) reading and writing a ``BCLACache``.

    Numerator statistics from rotated φ(k), the Z row from un-rotated φ(k) (SANA-Video's rule).
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        call = self.cache.call_plan(self.layer) if encoder_hidden_states is None else None
        if call is None:
            return _STOCK_3_0(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        original_dtype = hidden_states.dtype
        query, key, value = _project(attn, hidden_states)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        query = F.relu(query)
        key = F.relu(key)

        # Stock code fails without rotary_emb; no rotation is the natural reading.
        query_rotate, key_rotate = query, key
        if rotary_emb is not None:
            query_rotate = apply_rotary_emb(query, *rotary_emb)
            key_rotate = apply_rotary_emb(key, *rotary_emb)

        # B,H,C,N
        query = query.permute(0, 2, 3, 1)
        key = key.permute(0, 2, 3, 1)
        query_rotate = query_rotate.permute(0, 2, 3, 1)
        key_rotate = key_rotate.permute(0, 2, 3, 1)
        value = value.permute(0, 2, 3, 1)

        query_rotate, key_rotate, value = query_rotate.float(), key_rotate.float(), value.float()

        scores = torch.matmul(value, key_rotate.transpose(-1, -2))

        def own(mask: Tensor | None) -> Tensor:
            if mask is None:
                return torch.cat([scores, key.float().sum(dim=-1, keepdim=True).transpose(-2, -1)], dim=2)
            numerator = torch.matmul(value, (key_rotate * mask).transpose(-1, -2))
            return torch.cat([numerator, (key.float() * mask).sum(dim=-1, keepdim=True).transpose(-2, -1)], 2)

        self._record(call, own, key.shape[-1], key.device)
        if call.context:
            stats = own(None)
            call.add_context_(stats)
            scores, key_sum = stats[:, :, :-1], stats[:, :, -1:]
            z = 1 / (key_sum @ query.float() + 1e-15)
        else:
            z = 1 / (key.sum(dim=-1, keepdim=True).transpose(-2, -1) @ query + 1e-15)

        hidden_states = torch.matmul(scores, query_rotate)

        hidden_states = hidden_states * z
        # B,H,C,N
        hidden_states = hidden_states.flatten(1, 2).transpose(1, 2)
        hidden_states = hidden_states.to(original_dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        return hidden_states


class BCLALiteLAMatmul(_BCLAProcessor):
    """``LiteLA.attn_matmul`` (the SANA of ComfyUI_ExtraModels, ``Sana/models/sana_blocks.py``) reading
    and writing a ``BCLACache``.

    Set as the instance attribute ``attn_matmul`` of one LiteLA module (a ComfyUI object patch), so
    LiteLA's own forward keeps its projections and calls this with q [B, h, d, N], k [B, h, N, d] and
    v [B, h, d, N]. LiteLA pads v with a row of ones too: ``[v; 1] @ φ(k)`` is already the cache layout.
    """

    def __init__(self, cache: BCLACache, layer: str, patch: tuple[int, int], attn: torch.nn.Module) -> None:
        super().__init__(cache, layer, patch)
        self.attn = attn

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        call = self.cache.call_plan(self.layer)
        if call is None:
            return type(self.attn).attn_matmul(self.attn, q, k, v)
        q = self.attn.kernel_func(q)
        k = self.attn.kernel_func(k)
        return self._padded_attention(call, q, k, v, self.attn.eps)


def is_lite_la(module: torch.nn.Module) -> bool:
    """ExtraModels' LiteLA (recognised by name and interface; the pack does not import ExtraModels):
    ReLU linear attention whose ``attn_matmul`` pads v with ones, the layout BCLA caches."""
    kind = type(module)
    return (
        kind.__name__ == "LiteLA"
        and callable(getattr(kind, "attn_matmul", None))
        and getattr(kind, "PAD_VAL", None) == 1
        and isinstance(getattr(module, "kernel_func", None), torch.nn.ReLU)
    )


_VARIANTS: tuple[tuple[type, type[_BCLAProcessor]], ...] = (
    (SanaLinearAttnProcessor2_0, BCLALinearAttnProcessor2_0),
    (SanaLinearAttnProcessor3_0, BCLALinearAttnProcessor3_0),
    (BCLALinearAttnProcessor2_0, BCLALinearAttnProcessor2_0),
    (BCLALinearAttnProcessor3_0, BCLALinearAttnProcessor3_0),
)


def _patch_hw(transformer: torch.nn.Module) -> tuple[int, int]:
    """Patch size of a diffusers transformer (its config) or of ExtraModels' SANA (an attribute)."""
    config = getattr(transformer, "config", None)
    patch = getattr(config, "patch_size", 1) if config is not None else getattr(transformer, "patch_size", 1)
    patch = patch or 1
    if isinstance(patch, int):
        return patch, patch
    return int(patch[-2]), int(patch[-1])


def bcla_processors(transformer: torch.nn.Module, cache: BCLACache) -> dict[str, object]:
    """Module path -> BCLA processor for every SANA linear self-attention of ``transformer``.

    Keys are attribute paths ("transformer_blocks.0.attn1.processor" for diffusers' SANA,
    "blocks.0.attn.attn_matmul" for ExtraModels' LiteLA) so ComfyUI can set them as object patches on
    a model clone (prefix them with "diffusion_model.").
    """
    patch = _patch_hw(transformer)
    processors: dict[str, object] = {}
    for name, module in transformer.named_modules():
        if is_lite_la(module):
            processors[f"{name}.attn_matmul"] = BCLALiteLAMatmul(cache, name, patch, module)
        if not isinstance(module, Attention):
            continue
        for stock, replacement in _VARIANTS:
            if type(module.processor) is stock:
                processors[f"{name}.processor"] = replacement(cache, name, patch)
                break
    if not processors:
        raise BCLAError(
            f"{type(transformer).__name__} has no SANA linear attention (diffusers' "
            "SanaLinearAttnProcessor2_0/3_0 or ExtraModels' LiteLA); BCLA needs a SANA or SANA-Video "
            "transformer."
        )
    return processors


def bcla_object_patches(transformer: torch.nn.Module, cache: BCLACache) -> dict[str, object]:
    """Everything ``install_bcla`` sets: the processors and the canvas position patches (sin-cos PE
    forward for SANA 2K/4K, RoPE forward for SANA-Video)."""
    return {**bcla_processors(transformer, cache), **position_patches(transformer, cache)}


_MISSING = object()


def install_bcla(transformer: torch.nn.Module, cache: BCLACache) -> Callable[[], None]:
    """Set the BCLA processors (and the canvas sin-cos PE) on ``transformer``; returns the undo."""
    previous: list[tuple[object, str, object]] = []
    for path, value in bcla_object_patches(transformer, cache).items():
        owner_path, _, attr = path.rpartition(".")
        owner = transformer.get_submodule(owner_path)
        previous.append((owner, attr, owner.__dict__.get(attr, _MISSING)))
        setattr(owner, attr, value)

    def undo() -> None:
        for owner, attr, old in reversed(previous):
            if old is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, old)
        previous.clear()

    return undo
