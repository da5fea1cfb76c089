"""Block Causal Linear Attention (BCLA) across tiles, after SANA-Video.

SANA's self-attention is linear, so the attention statistics of tiles already generated can be carried
to later tiles as a fixed-size summary and added to each tile's own. By role:

- :mod:`.config`: ``BCLAConfig`` (mode, strength, source, decay) and ``BCLAError``;
- :mod:`.statistics`: ``BCLAStats`` (S and Z per noise level, layer and CFG branch) and their arithmetic;
- :mod:`.cache`: ``BCLACache``, which earlier statistics each tile reads, driven by the tile loop;
- :mod:`.processors`: the attention processors that read and write the cache, and ``install_bcla``.
"""

from ..options import BCLA_MODES as MODES
from ..options import BCLA_SOURCES as SOURCES
from .cache import CLEAN_KEY, BCLACache, CallPlan, SeedRecording
from .config import BCLAConfig, BCLAError
from .processors import (
    BCLALinearAttnProcessor2_0,
    BCLALinearAttnProcessor3_0,
    BCLALiteLAMatmul,
    bcla_object_patches,
    bcla_processors,
    install_bcla,
    is_lite_la,
)
from .statistics import BCLAStats, sigma_key

__all__ = [
    "CLEAN_KEY",
    "MODES",
    "SOURCES",
    "BCLACache",
    "BCLAConfig",
    "BCLAError",
    "BCLALinearAttnProcessor2_0",
    "BCLALinearAttnProcessor3_0",
    "BCLALiteLAMatmul",
    "BCLAStats",
    "CallPlan",
    "SeedRecording",
    "bcla_object_patches",
    "bcla_processors",
    "install_bcla",
    "is_lite_la",
    "sigma_key",
]
