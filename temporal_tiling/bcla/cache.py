"""The BCLA cache: which earlier tiles' attention statistics each tile reads, per mode and source.

While tile t is denoised, each layer uses ``S_own + α·S_cache (+ β·S_seed)``. That equals full
attention over the cached tokens plus the tile's own (exact for one layer) at O(D²) memory per layer
and noise level (the synchronous source keeps one set per sampling step). The cumulative, decay and
sparse modes hold a fixed number of sets whatever the number of tiles; neighbors keeps about one tile
row (grows with the grid's width), distance keeps every tile (grows with the tile count).

The attention processors (:mod:`.processors`) ask the cache, before each attention call, what the
call does (:meth:`BCLACache.call_plan`); the causal tile loop drives it through the ``TileCache``
protocol of :mod:`temporal_tiling.contracts`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..plan import Tile, TilePlan
from .config import BCLAConfig, BCLAError
from .statistics import BCLAStats, BranchContext, Key, add_context_, sigma_key, split_branches, sum_stats

CLEAN_KEY = "clean"
"""Key of the statistics recorded during ``clean_pass`` (source="clean")."""


@dataclass
class SeedRecording:
    """Handle of ``BCLACache.record_seed``; ``stats`` is filled when the block exits."""

    stats: BCLAStats | None = None


@dataclass
class CallPlan:
    """What one attention call does: record its own statistics, add earlier ones to them, or both."""

    branches: tuple[int, ...]
    """The CFG branch of each equal chunk of the call's batch (0 = cond, 1 = uncond)."""
    record: BCLAStats | None = None
    """Where the call's own statistics go; None = not recorded."""
    record_key: Key = 0.0
    """The noise level (or ``CLEAN_KEY``) they are recorded under."""
    masked: bool = False
    """Record only the tokens of :meth:`BCLACache.token_mask` (``record_locked=False``)."""
    context: BranchContext = field(default_factory=dict)
    """What is added to each branch's own statistics before the attention output is computed."""

    def keep(self, layer: str, stats: Tensor) -> None:
        """Record ``layer``'s own statistics [B, heads, Dv+1, Dk] of this call, per CFG branch."""
        if self.record is None:
            raise BCLAError("This attention call records nothing; check call_plan(...).record first.")
        for branch, own in split_branches(stats, self.branches).items():
            self.record.put(self.record_key, layer, branch, own)

    def add_context_(self, stats: Tensor) -> None:
        """Add the context to the call's own statistics, in place, chunk by CFG chunk."""
        add_context_(stats, self.branches, self.context)


class BCLACache:
    """Attention statistics carried from tile to tile; read and written by the BCLA processors.

    Sampler protocol (``contracts.TileCache``)::

        cache.reset()                              # once per generation
        cache.seed(context.seed_stats, strength)   # optional global context
        for tile in plan.tiles:
            cache.begin_tile(tile, token_mask)     # token_mask only matters for record_locked=False
            for each model call: cache.set_call(sigma, cond_or_uncond); model(...)
            if cache.needs_clean_pass:
                with cache.clean_pass(): cache.set_call(sigma_clean, branches); model(clean tile)
            cache.end_tile()

    It is also the ``contracts.PositionSource`` of the canvas position patches.
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
        self._window: Tile | None = None  # the region the active tile is sampled on
        self._token_mask: Tensor | None = None
        self._token_masks: dict[tuple[int, tuple[int, int], torch.device], Tensor] = {}
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
        """The region whose canvas positions the PE/RoPE patches use (the active tile, with its halo
        when it has one): None when no tile is active or BCLA is off (then the model is untouched;
        strength 0 keeps canvas positions)."""
        return self._window if self.config.mode != "off" else None

    @property
    def needs_clean_pass(self) -> bool:
        """source="clean": the sampler must run the finished tile once inside ``clean_pass()``."""
        c = self.config
        return c.source == "clean" and c.active

    @property
    def tile_stats(self) -> BCLAStats | None:
        """The active tile's own statistics recorded so far; None when no tile is active."""
        return self._pending

    @property
    def earlier_stats(self) -> BCLAStats | None:
        """The earlier tiles' statistics the active tile reads, before α and the seed (cumulative and
        decay: the running sum, which the next tile reads between tiles too); None when there are none."""
        return self._store if self.config.mode in ("cumulative", "decay") else self._context

    def begin_tile(self, tile: Tile, token_mask: Tensor | None = None, window: Tile | None = None) -> None:
        """Start ``tile``: choose which earlier statistics it reads (per mode).

        ``window`` is the region the model sees when the tile is sampled with a halo of neighbouring
        cells (``TilePlan.window``; default the tile): its canvas positions and its [h, w] are what
        the position patches and ``token_mask`` follow. ``token_mask`` ([h, w] at latent resolution,
        True = cell generated by this tile; float masks are thresholded at 0.5) selects the tokens
        recorded when ``record_locked`` is False. An unfinished previous tile (no end_tile) is discarded.
        """
        if tile.index >= len(self.plan) or self.plan.tiles[tile.index] != tile:
            raise BCLAError(
                f"Tile {tile.index} is not part of this cache's plan; build the cache for the tile's plan."
            )
        window = window or tile
        self._tile, self._window, self._pending, self._token_masks = tile, window, BCLAStats(), {}
        self._token_mask = None
        if token_mask is not None:
            cells = window.height * window.width
            whole = token_mask.ndim >= 2 and token_mask.numel() == cells
            mask = token_mask.reshape(token_mask.shape[-2:]) if whole else token_mask
            if tuple(mask.shape) != (window.height, window.width):
                raise BCLAError(
                    f"token_mask has shape {tuple(token_mask.shape)}; give the tile's [h, w] = "
                    f"[{window.height}, {window.width}] latent mask."
                )
            self._token_mask = mask if mask.dtype == torch.bool else mask > 0.5
        mode = self.config.mode
        if mode == "neighbors":
            self._context = sum_stats(self._kept.get(i) for i in tile.neighbors)
            self._kept = {i: s for i, s in self._kept.items() if self._last_use.get(i, -1) > tile.index}
        elif mode == "sparse":
            self._context = sum_stats(self._kept.values())
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
        if self._tile is None or self._pending is None:
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
        self._tile, self._window, self._pending, self._context, self._token_mask = (None,) * 5
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

    def seed(self, stats: object, strength: float = 1.0) -> None:
        """Mix global statistics into every tile's context: S_ctx = α·S_cache + strength·S_seed.

        ``stats`` is a ``record_seed()`` handle's ``stats`` (or None for no seed)."""
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
        which gives bit for bit what no cache gives."""
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

    # --- asked by the processors -------------------------------------------------------------
    def call_plan(self, layer: str) -> CallPlan | None:
        """What the attention call of ``layer`` about to run does; None when it must run the stock
        processor untouched (nothing to record and nothing to add)."""
        if self._seed_recording is not None:
            return CallPlan(self._branches, self._seed_recording, self._sigma)
        c = self.config
        if self._tile is None or c.mode == "off":
            return None
        masked = not c.record_locked and self._token_mask is not None
        if self._clean_open:
            return CallPlan(self._branches, self._pending, CLEAN_KEY, masked) if c.active else None
        call = CallPlan(self._branches)
        if c.active and c.source == "synchronous":
            call.record, call.record_key, call.masked = self._pending, self._sigma, masked
        store = self.earlier_stats
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

    def token_mask(self, tokens: int, patch: tuple[int, int], device: torch.device) -> Tensor:
        """The active tile's recording mask mapped to the model's ``tokens`` patch tokens ([tokens]
        float).

        A patch token counts as generated when any of its cells is; video models repeat it per frame.
        """
        if self._token_mask is None:
            raise BCLAError("No token_mask is active; pass begin_tile the mask of the tile being denoised.")
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

    def _resolve(self, which: int, stats: BCLAStats, key: Key) -> Key | None:
        if which not in self._resolved:
            self._resolved[which] = stats.resolve(key)
        return self._resolved[which]
