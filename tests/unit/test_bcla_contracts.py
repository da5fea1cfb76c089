"""BCLACache is the TileCache and the PositionSource of temporal_tiling.contracts: same members, same
signatures, and a tile loop written against the protocols alone drives it."""

import inspect

import pytest
import torch

from lab.fixtures import tiny_transformer
from temporal_tiling import contracts
from temporal_tiling.bcla import BCLACache, BCLAConfig, install_bcla
from temporal_tiling.contracts import PositionSource, TileCache
from temporal_tiling.plan import make_plan


def protocol_mismatches(protocol: type, implementation: object) -> list[str]:
    """What ``implementation`` lacks or spells differently among the members ``protocol`` declares:
    attributes, properties, and method parameters (same names and kinds; a default wherever the
    protocol has one, more defaults are fine)."""
    kind = type(implementation)
    problems = []
    for base in protocol.__mro__:
        if base.__module__ != contracts.__name__:
            continue
        for name in inspect.get_annotations(base):
            if not hasattr(implementation, name):
                problems.append(f"{name}: missing attribute")
        for name, member in vars(base).items():
            if name.startswith("_"):
                continue
            mine = inspect.getattr_static(kind, name, None)
            if isinstance(member, property):
                if not isinstance(mine, property):
                    problems.append(f"{name}: not a property")
            elif callable(member):
                if not callable(mine):
                    problems.append(f"{name}: missing method")
                    continue
                wanted = inspect.signature(member).parameters.values()
                given = inspect.signature(mine).parameters.values()
                if [(p.name, p.kind) for p in wanted] != [(p.name, p.kind) for p in given] or any(
                    theirs.default is not theirs.empty and ours.default is ours.empty
                    for theirs, ours in zip(wanted, given, strict=False)
                ):
                    problems.append(
                        f"{name}: ({', '.join(map(str, given))}) vs protocol ({', '.join(map(str, wanted))})"
                    )
    return problems


@pytest.fixture
def cache() -> BCLACache:
    return BCLACache(
        BCLAConfig(source="clean"),
        make_plan(
            width_px=16,
            height_px=8,
            tile_width_px=8,
            tile_height_px=8,
            overlap_px=0,
            compression=1,
            fit="shift",
        ),
    )


@pytest.mark.parametrize("protocol", [TileCache, PositionSource])
def test_bcla_cache_has_every_member_of_the_protocol(cache, protocol):
    assert protocol_mismatches(protocol, cache) == []


def test_the_member_check_finds_a_missing_property_and_a_renamed_parameter():
    class Wrong:
        plan = None

        def seed(self, statistics: object, strength: float) -> None: ...

    problems = protocol_mismatches(TileCache, Wrong())
    assert any(p.startswith("seed:") for p in problems)
    assert "needs_clean_pass: not a property" in problems
    assert protocol_mismatches(PositionSource, Wrong()) == ["position_tile: not a property"]


TEXT = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(1))


def denoise(model: torch.nn.Module, x: torch.Tensor, sigma: float) -> torch.Tensor:
    with torch.no_grad():
        return model(x, encoder_hidden_states=TEXT, timestep=torch.tensor([sigma * 1000])).sample


def tile_latent(tile) -> torch.Tensor:
    return torch.randn(1, 4, tile.height, tile.width, generator=torch.Generator().manual_seed(tile.index))


def run_tiles(cache: TileCache, source: PositionSource, model: torch.nn.Module, seed_with: object) -> list:
    """The causal tile loop written against the protocols only; returns each tile's output."""
    cache.reset()
    cache.seed(seed_with, 1.0)
    outputs = []
    for tile in source.plan.tiles:
        cache.begin_tile(tile)
        assert source.position_tile == tile
        cache.set_call(0.5, [0])
        outputs.append(denoise(model, tile_latent(tile), 0.5))
        if cache.needs_clean_pass:
            with cache.clean_pass():
                cache.set_call(0.0, [0])
                denoise(model, tile_latent(tile), 0.0)
        cache.end_tile()
        assert source.position_tile is None
    return outputs


def test_a_tile_loop_written_against_the_protocols_drives_the_cache(cache):
    model = tiny_transformer()
    stock = [denoise(model, tile_latent(tile), 0.5) for tile in cache.plan.tiles]
    install_bcla(model, cache)
    plain = run_tiles(cache, cache, model, None)
    with cache.record_seed() as handle:
        cache.set_call(0.5, [0])
        denoise(model, torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(9)), 0.5)
    assert handle.stats
    seeded = run_tiles(cache, cache, model, handle.stats)

    assert torch.equal(plain[0], stock[0]), "nothing is cached before the first tile"
    assert (plain[1] - stock[1]).abs().max() > 1e-4, "the second tile reads the first one's clean pass"
    assert (seeded[0] - plain[0]).abs().max() > 1e-4, "the seed reaches the first tile"
    assert all(map(torch.equal, run_tiles(cache, cache, model, None), plain)), "reset() forgets the seed"
