"""Block Causal Linear Attention (BCLA) across tiles, after SANA-Video.

SANA's self-attention is ReLU linear attention: ``O_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ Z)`` with
``S = Σ φ(k) vᵀ`` and ``Z = Σ φ(k)``. Both are plain sums over tokens, so the tokens of tiles that were
already generated can be carried to later tiles as a fixed-size summary: while tile t is denoised,
each layer uses ``S_own + α·S_cache (+ β·S_seed)``. That equals full attention over the cached tokens
plus the tile's own (exact for one layer) at O(D²) memory per layer and noise level (the synchronous
source keeps one set per sampling step). The cumulative, decay and sparse modes hold a fixed number of
sets whatever the number of tiles; neighbors keeps about one tile row (grows with the grid's width),
distance keeps every tile (grows with the tile count).

Statistics are stored in the layout of diffusers' ``SanaLinearAttnProcessor2_0``: it pads v with a row
of ones, ``scores = [v;1] @ φ(K)`` has shape [B, heads, Dv+1, Dk] and its last row is Z. They are kept
per layer, per CFG branch, per batch element and per head, in float32 whatever the model dtype.
ComfyUI_ExtraModels' SANA computes the same attention in ``LiteLA.attn_matmul`` with the same padded
layout, so its layers carry the same statistics (``BCLALiteLAMatmul``).
With RoPE (``SanaLinearAttnProcessor3_0``) the numerator rows are built from rotated φ(k) and the Z row
from UN-rotated φ(k): a rotated Z is not positive and its dot with φ(q) crosses zero (NaN/Inf).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, SanaLinearAttnProcessor2_0
from diffusers.models.transformers.transformer_sana_video import SanaLinearAttnProcessor3_0
from torch import Tensor

from .errors import UserInputError
from .options import BCLA_MODES as MODES
from .options import BCLA_SOURCES as SOURCES
from .plan import Tile, TilePlan
from .position import position_patches

CLEAN_KEY = "clean"
"""Key of the statistics recorded during ``clean_pass`` (source="clean")."""

Key = float | str
Slot = tuple[str, int]  # (layer, CFG branch)

_STOCK_2_0 = SanaLinearAttnProcessor2_0()
_STOCK_3_0 = SanaLinearAttnProcessor3_0()


class BCLAError(UserInputError):
    """Impossible BCLA settings or call order; the message says what to change."""


@dataclass(frozen=True)
class BCLAConfig:
    """How tiles share attention statistics."""

    mode: str = "cumulative"
    """cumulative (all earlier tiles) | neighbors (earlier 8-neighbours) | sparse (first + previous tile)
    | decay (S ← decay·S + S_tile) | distance (every earlier tile weighted by its distance on the
    canvas: ``decay ** (d - 1)``, d in tile steps, so adjacent tiles count fully) | off."""
    strength: float = 1.0
    """α in S_own + α·S_cache (at σ = 1 when ``strength_end`` is set)."""
    strength_end: float | None = None
    """α at σ = 0, linear in σ from ``strength`` at σ = 1 (a schedule over the steps); None = constant."""
    source: str = "synchronous"
    """synchronous: earlier tiles' statistics at the same noise level (keyed by sigma); clean: recorded
    from each finished tile in a ``clean_pass`` near t=0."""
    decay: float = 0.5
    """Geometric factor per tile of order (mode="decay": 0 = previous tile only, 1 = cumulative) or per
    tile step of canvas distance (mode="distance": 0 = edge neighbours only, 1 = cumulative)."""
    record_locked: bool = True
    """Also record the tokens of locked (already generated) cells; False records only the tokens of
    the ``token_mask`` given to ``begin_tile``."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BCLAError(f"Unknown BCLA mode {self.mode!r}; choose one of {', '.join(MODES)}.")
        if self.source not in SOURCES:
            raise BCLAError(f"Unknown BCLA source {self.source!r}; choose one of {', '.join(SOURCES)}.")
        for name, value in (("strength", self.strength), ("strength_end", self.strength_end)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise BCLAError(f"BCLA {name} must be a finite number >= 0, got {value!r}.")
        if not 0.0 <= self.decay <= 1.0:
            raise BCLAError(f"BCLA decay must lie in [0, 1] (0 = previous tile only), got {self.decay!r}.")

    @property
    def active(self) -> bool:
        """Whether tiles share statistics at all (a mode other than off and some α > 0)."""
        return self.mode != "off" and (self.strength != 0 or bool(self.strength_end))

    def alpha(self, sigma: float) -> float:
        """α at noise level ``sigma``."""
        if self.strength_end is None:
            return self.strength
        level = min(max(sigma, 0.0), 1.0)
        return self.strength_end + (self.strength - self.strength_end) * level


def sigma_key(sigma: float | Tensor) -> float:
    """Round a noise level so the same schedule step from float32 or float64 gives one key."""
    return round(float(sigma), 6)


class BCLAStats:
    """Statistics [B, heads, Dv+1, Dk] (float32) per noise key, layer and CFG branch."""

    def __init__(self) -> None:
        self.data: dict[Key, dict[Slot, Tensor]] = {}

    def __bool__(self) -> bool:
        return bool(self.data)

    def put(self, key: Key, layer: str, branch: int, stats: Tensor) -> None:
        """Set (not add): repeated calls at one noise level, e.g. Heun, keep the latest."""
        self.data.setdefault(key, {})[(layer, branch)] = stats

    def resolve(self, key: Key) -> Key | None:
        """``key`` itself if recorded, else the nearest recorded noise level (multi-evaluation samplers)."""
        if key in self.data:
            return key
        numeric = [k for k in self.data if isinstance(k, float)]
        if isinstance(key, str) or not numeric:
            return None
        return min(numeric, key=lambda k: abs(k - key))

    def get(self, key: Key | None, layer: str, branch: int) -> Tensor | None:
        return None if key is None else self.data.get(key, {}).get((layer, branch))

    def tensors(self) -> Iterator[Tensor]:
        for slots in self.data.values():
            yield from slots.values()

    def add_(self, other: BCLAStats, scale: float = 1.0) -> BCLAStats:
        """self += scale · other over the union of keys (in place where both hold a tensor)."""
        for key, slots in other.data.items():
            mine = self.data.setdefault(key, {})
            for slot, stats in slots.items():
                if slot in mine:
                    mine[slot].add_(stats, alpha=scale)
                else:
                    mine[slot] = stats * scale if scale != 1.0 else stats.clone()
        return self

    def mul_(self, factor: float) -> BCLAStats:
        for stats in self.tensors():
            stats.mul_(factor)
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def norm(self) -> float:
        """Frobenius norm over every stored tensor."""
        return math.sqrt(sum(float(t.double().square().sum()) for t in self.tensors()))


@dataclass
class SeedRecording:
    """Handle of ``BCLACache.record_seed``; ``stats`` is filled when the block exits."""

    stats: BCLAStats | None = None


@dataclass
class _Call:
    """What one attention call does: record its own statistics, read context, or both."""

    branches: tuple[int, ...]
    record: BCLAStats | None = None
    record_key: Key = 0.0
    token_mask: Tensor | None = None
    context: dict[int, list[tuple[Tensor, float]]] = field(default_factory=dict)


class BCLACache:
    """Attention statistics carried from tile to tile; read and written by the BCLA processors.

    Sampler protocol::

        cache.reset()                              # once per generation
        cache.seed(context.seed_stats, strength)   # optional global context
        for tile in plan.tiles:
            cache.begin_tile(tile, token_mask)     # token_mask only matters for record_locked=False
            for each model call: cache.set_call(sigma, cond_or_uncond); model(...)
            if cache.needs_clean_pass:
                with cache.clean_pass(): cache.set_call(sigma_clean, branches); model(clean tile)
            cache.end_tile()
    """

    def __init__(self, config: BCLAConfig, plan: TilePlan) -> None:
        self.config = config
        self.plan = plan
        last_use: dict[int, int] = {}
        for later in plan.tiles:
            for earlier in later.neighbors:
                last_use[earlier] = max(last_use.get(earlier, -1), later.index)
        self._last_use = last_use
        self.reset()

    # --- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every statistic (a new generation with the same patched model)."""
        self._store = BCLAStats()  # cumulative / decay running statistics
        self._kept: dict[int, BCLAStats] = {}  # neighbors / sparse: per-tile statistics still needed
        self._context: BCLAStats | None = None  # neighbors / sparse: what the active tile reads
        self._pending: BCLAStats | None = None  # the active tile's own statistics
        self._tile: Tile | None = None
        self._token_mask: Tensor | None = None
        self._token_masks: dict[tuple, Tensor] = {}
        self._sigma: Key = 0.0
        self._branches: tuple[int, ...] = (0,)
        self._clean_open = False
        self._seed_recording: BCLAStats | None = None
        self._seed: BCLAStats | None = None
        self._seed_strength = 0.0
        self._resolved: dict[int, Key | None] = {}

    @property
    def tile(self) -> Tile | None:
        """The active tile (between begin_tile and end_tile), else None."""
        return self._tile

    @property
    def position_tile(self) -> Tile | None:
        """The tile whose canvas positions the PE/RoPE patches use: None when no tile is active or
        BCLA is off (then the model is untouched; strength 0 keeps canvas positions)."""
        return self._tile if self.config.mode != "off" else None

    @property
    def needs_clean_pass(self) -> bool:
        """source="clean": the sampler must run the finished tile once inside ``clean_pass()``."""
        c = self.config
        return c.source == "clean" and c.active

    def begin_tile(self, tile: Tile, token_mask: Tensor | None = None) -> None:
        """Start ``tile``: choose which earlier statistics it reads (per mode).

        ``token_mask`` ([h, w] at latent resolution, True = cell generated by this tile; float masks
        are thresholded at 0.5) selects the tokens recorded when ``record_locked`` is False.
        An unfinished previous tile (no end_tile) is discarded.
        """
        if tile.index >= len(self.plan) or self.plan.tiles[tile.index] != tile:
            raise BCLAError(
                f"Tile {tile.index} is not part of this cache's plan; build the cache for the tile's plan."
            )
        self._tile, self._pending, self._token_masks = tile, BCLAStats(), {}
        self._token_mask = None
        if token_mask is not None:
            cells = tile.height * tile.width
            whole = token_mask.ndim >= 2 and token_mask.numel() == cells
            mask = token_mask.reshape(token_mask.shape[-2:]) if whole else token_mask
            if tuple(mask.shape) != (tile.height, tile.width):
                raise BCLAError(
                    f"token_mask has shape {tuple(token_mask.shape)}; give the tile's [h, w] = "
                    f"[{tile.height}, {tile.width}] latent mask."
                )
            self._token_mask = mask if mask.dtype == torch.bool else mask > 0.5
        mode = self.config.mode
        if mode == "neighbors":
            self._context = self._sum(self._kept.get(i) for i in tile.neighbors)
            self._kept = {i: s for i, s in self._kept.items() if self._last_use.get(i, -1) > tile.index}
        elif mode == "sparse":
            self._context = self._sum(self._kept.values())
        elif mode == "distance":
            self._context = self._weighted(tile)
        self._resolved = {}

    def set_call(self, sigma: float | Tensor, branches: Sequence[int]) -> None:
        """Before every model call: its noise level and the CFG branch of each equal batch chunk
        (ComfyUI's ``transformer_options["cond_or_uncond"]``: 0 = cond, 1 = uncond)."""
        if not branches:
            raise BCLAError("set_call needs the CFG branch of every batch chunk, e.g. [0, 1].")
        self._sigma, self._branches = sigma_key(sigma), tuple(int(b) for b in branches)
        self._resolved = {}

    def end_tile(self) -> None:
        """Fold the active tile's recorded statistics into the cache (per mode)."""
        if self._tile is None:
            raise BCLAError("end_tile() called without an active tile; call begin_tile(tile) first.")
        own, index = self._pending, self._tile.index
        mode = self.config.mode
        if mode == "cumulative":
            self._store.add_(own)
        elif mode == "decay":
            self._store = self._store.mul_(self.config.decay).add_(own)
        elif mode == "neighbors" and self._last_use.get(index, -1) > index:
            self._kept[index] = own
        elif mode == "sparse":
            first = min(self._kept, default=index)
            self._kept = {first: self._kept.get(first, own), index: own}
        elif mode == "distance":
            self._kept[index] = own
        self._tile, self._pending, self._context, self._token_mask = None, None, None, None
        self._token_masks, self._resolved = {}, {}

    @contextmanager
    def clean_pass(self) -> Iterator[None]:
        """While open, model calls only record the active tile's own statistics (no context)."""
        if self._tile is None:
            raise BCLAError("clean_pass() needs an active tile; open it between begin_tile and end_tile.")
        self._clean_open = True
        try:
            yield
        finally:
            self._clean_open = False

    @contextmanager
    def record_seed(self) -> Iterator[SeedRecording]:
        """Model calls inside record (keyed by sigma and branch) into a fresh stats object, no context;
        it is ``handle.stats`` after the block (the global-context seed)."""
        handle = SeedRecording()
        self._seed_recording = BCLAStats()
        try:
            yield handle
        finally:
            handle.stats, self._seed_recording = self._seed_recording, None

    def seed(self, stats: BCLAStats | None, strength: float = 1.0) -> None:
        """Mix global statistics into every tile's context: S_ctx = α·S_cache + strength·S_seed."""
        if stats is not None and not isinstance(stats, BCLAStats):
            raise BCLAError("seed() takes the stats recorded by BCLACache.record_seed() (handle.stats).")
        self._seed, self._seed_strength, self._resolved = stats, float(strength), {}

    def nbytes(self) -> int:
        """Bytes held by the cache: flat in the tile count for cumulative, decay and sparse."""
        held = [self._store, self._context, self._pending, self._seed, *self._kept.values()]
        unique = {id(s): s for s in held if s is not None}
        return sum(s.nbytes() for s in unique.values()) + sum(
            m.numel() * m.element_size() for m in self._token_masks.values()
        )

    def norm(self) -> float:
        """Frobenius norm of the cached statistics (running store and per-tile statistics)."""
        return math.sqrt(sum(s.norm() ** 2 for s in self._cached()))

    def zero_(self) -> None:
        """Zero every cached statistic in place; the processors still add them (an all-zero cache),
        which must give exactly what no cache gives (seed 000's verification test 2)."""
        for stats in self._cached():
            stats.mul_(0.0)

    def _cached(self) -> list[BCLAStats]:
        return [self._store, *self._kept.values()]

    def _weighted(self, tile: Tile) -> BCLAStats:
        """mode="distance": Σ decay^(d-1)·S_i over the kept earlier tiles, d = grid distance to ``tile``."""
        total = BCLAStats()
        for index, stats in self._kept.items():
            earlier = self.plan.tiles[index]
            distance = math.hypot(earlier.row - tile.row, earlier.col - tile.col)
            weight = self.config.decay ** max(distance - 1.0, 0.0)
            if weight > 0:
                total.add_(stats, weight)
        return total

    # --- used by the processors --------------------------------------------------------------
    @staticmethod
    def _sum(parts: Iterator[BCLAStats | None] | Sequence[BCLAStats]) -> BCLAStats:
        total = BCLAStats()
        for part in parts:
            if part is not None:
                total.add_(part)
        return total

    def _read_store(self) -> BCLAStats | None:
        return self._store if self.config.mode in ("cumulative", "decay") else self._context

    def _resolve(self, which: int, stats: BCLAStats, key: Key) -> Key | None:
        if which not in self._resolved:
            self._resolved[which] = stats.resolve(key)
        return self._resolved[which]

    def _plan_call(self, layer: str) -> _Call | None:
        """None when the call must run the stock processor untouched."""
        if self._seed_recording is not None:
            return _Call(self._branches, self._seed_recording, self._sigma)
        c = self.config
        if self._tile is None or c.mode == "off":
            return None
        mask = None if c.record_locked else self._token_mask
        if self._clean_open:
            return _Call(self._branches, self._pending, CLEAN_KEY, mask) if c.active else None
        call = _Call(self._branches)
        if c.active and c.source == "synchronous":
            call.record, call.record_key, call.token_mask = self._pending, self._sigma, mask
        store = self._read_store()
        read_key = CLEAN_KEY if c.source == "clean" else self._sigma
        for branch in set(self._branches):
            parts = []
            alpha = c.alpha(self._sigma)
            if alpha != 0 and store:
                s = store.get(self._resolve(0, store, read_key), layer, branch)
                if s is not None:
                    parts.append((s, alpha))
            if self._seed and self._seed_strength != 0:
                s = self._seed.get(self._resolve(1, self._seed, self._sigma), layer, branch)
                if s is not None:
                    parts.append((s, self._seed_strength))
            if parts:
                call.context[branch] = parts
        if call.record is None and not call.context:
            return None
        return call

    def _token_mask_for(self, tokens: int, patch: tuple[int, int], device: torch.device) -> Tensor:
        """The recording mask at latent resolution mapped to patch tokens ([tokens] float).

        A patch token counts as generated when any of its cells is; video models repeat it per frame.
        """
        memo = (tokens, patch, device)
        if memo not in self._token_masks:
            mask = self._token_mask.to(device=device, dtype=torch.float32)[None, None]
            if patch != (1, 1):
                mask = F.max_pool2d(mask, patch, patch, ceil_mode=True)
            mask = mask.flatten()
            if tokens % mask.numel():
                raise BCLAError(
                    f"The model sees {tokens} tokens but the tile's token_mask covers {mask.numel()}; "
                    "pass begin_tile the mask of the tile being denoised."
                )
            self._token_masks[memo] = mask.repeat(tokens // mask.numel())
        return self._token_masks[memo]


def _by_branch(stats: Tensor, branches: tuple[int, ...]) -> dict[int, Tensor]:
    """Split the batch into its CFG chunks; chunks sharing a branch id are averaged."""
    if stats.shape[0] % len(branches):
        raise BCLAError(
            f"The model batch ({stats.shape[0]}) does not split into {len(branches)} equal CFG chunks; "
            "pass set_call the branch id of every chunk."
        )
    chunks = stats.chunk(len(branches))
    out: dict[int, Tensor] = {}
    for branch in dict.fromkeys(branches):
        own = [chunk for chunk, b in zip(chunks, branches, strict=True) if b == branch]
        out[branch] = (own[0] if len(own) == 1 else torch.stack(own).mean(0)).detach().clone()
    return out


class _BCLAProcessor:
    """Shared state of the BCLA processors: the cache, the layer key and the model's patch size."""

    def __init__(self, cache: BCLACache, layer: str, patch: tuple[int, int] = (1, 1)) -> None:
        self.cache = cache
        self.layer = layer
        self.patch = patch

    def _record(self, call: _Call, own: Callable[[Tensor | None], Tensor], tokens: int, device) -> None:
        if call.record is None:
            return
        mask = None
        if call.token_mask is not None:
            mask = self.cache._token_mask_for(tokens, self.patch, device)
        for branch, stats in _by_branch(own(mask), call.branches).items():
            call.record.put(call.record_key, self.layer, branch, stats)

    def _padded_attention(self, call: _Call, query: Tensor, key: Tensor, value: Tensor, eps: float) -> Tensor:
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
            self._mix(call, scores)
        out = torch.matmul(scores, query)
        return out[:, :, :-1] / (out[:, :, -1:] + eps)

    @staticmethod
    def _mix(call: _Call, stats: Tensor) -> None:
        """stats += Σ scale·context for every CFG chunk, in place.

        Chunks are ``narrow`` views (single-view ops), so autograd accepts the in-place add and the
        temporal LoRA trains through these same processors.
        """
        size = stats.shape[0] // len(call.branches)
        for i, branch in enumerate(call.branches):
            chunk = stats.narrow(0, i * size, size)
            for context, scale in call.context.get(branch, ()):
                if context.shape[0] not in (1, chunk.shape[0]) or context.shape[1:] != chunk.shape[1:]:
                    raise BCLAError(
                        f"Cached BCLA statistics {tuple(context.shape)} do not fit this call "
                        f"{tuple(chunk.shape)}; reset the cache when batch size or model changes."
                    )
                chunk.add_(context.to(chunk.device), alpha=scale)


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
        call = self.cache._plan_call(self.layer) if encoder_hidden_states is None else None
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


def _apply_rotary_emb(hidden_states: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
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
        call = self.cache._plan_call(self.layer) if encoder_hidden_states is None else None
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
            query_rotate = _apply_rotary_emb(query, *rotary_emb)
            key_rotate = _apply_rotary_emb(key, *rotary_emb)

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
            self._mix(call, stats)
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
        call = self.cache._plan_call(self.layer)
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
