"""BCLA Cache node: tell the sampler how tiles share SANA's linear-attention statistics.

The node only clones the MODEL and stores a ``BCLAConfig`` in the clone's transformer_options; the
cache itself depends on the tile plan, so the Causal SANA Sampler builds it and sets the BCLA
attention processors as object patches on its own clone at run time. The input MODEL is untouched.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..temporal_tiling.bcla import MODES, SOURCES, BCLAConfig, BCLAError, bcla_processors, is_lite_la
from .common import CATEGORY, cross_check
from .sana_model import LOADER_DISPLAY_NAME, SanaDiffusionModel, require_sana_linear_attention

OPTION_KEY = "sana_bcla"
"""Key of the BCLAConfig in ``model_options["transformer_options"]``."""


def sana_transformer(model):
    """The diffusers SANA transformer of ``model``; a readable ValueError for any other MODEL.

    The loader's check refuses MODELs that are not diffusers SANA; ``bcla_processors`` then confirms
    there are linear-attention layers to patch (the cache itself is attached later by the sampler).
    """
    transformer = require_sana_linear_attention(model)
    bcla_processors(transformer, None)
    return transformer


def bcla_transformer(model):
    """The module whose SANA linear attention BCLA patches, at object-patch paths under "diffusion_model.":
    the diffusers transformer of this pack's MODEL, or ExtraModels' SANA itself (LiteLA attention).

    A readable ValueError for any other MODEL or for LiteLA layers another node already replaced.
    """
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if isinstance(inner, SanaDiffusionModel):
        return sana_transformer(model)
    layers = [(n, m) for n, m in inner.named_modules() if is_lite_la(m)] if inner is not None else []
    if not layers:
        raise ValueError(
            f"This MODEL ({type(inner).__name__}) has no SANA linear attention for the BCLA cache. Load "
            f"SANA with '{LOADER_DISPLAY_NAME}' or with ComfyUI_ExtraModels' Sana Checkpoint Loader."
        )
    for name, layer in layers:
        # the attn_matmul the model runs: a pending object patch, else the original (also while patched)
        current = model.get_model_object(f"diffusion_model.{name}.attn_matmul")
        if getattr(current, "__func__", None) is not type(layer).attn_matmul:
            raise ValueError(
                f"LiteLA layer {name} of this MODEL runs {type(current).__name__} instead of its own "
                "attn_matmul; BCLA needs the model as ExtraModels' loader returns it."
            )
    return inner


def bcla_config(model) -> BCLAConfig | None:
    """The BCLAConfig a BCLA Cache node attached to ``model``, if any."""
    return model.model_options.get("transformer_options", {}).get(OPTION_KEY)


def _config_problem(values: dict) -> str | None:
    """BCLAConfig's own checks on the settings known before the run (links are None here)."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        BCLAConfig(**given)
    except BCLAError as error:
        return str(error)
    return None


class SanaBCLACache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalBCLACache",
            display_name="BCLA Cache",
            category=CATEGORY,
            description=(
                "Block Causal Linear Attention: while a tile is denoised, every SANA linear-attention layer "
                "also sees the summed statistics (S = Σ φ(K)ᵀV, Z = Σ φ(K)) of the tiles generated before "
                "it, at O(D²) memory per layer and step (flat in the tile count except for neighbors and "
                "distance). Returns a patched clone of MODEL."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A SANA model (linear attention) from Load SANA or ExtraModels' Sana "
                    "Checkpoint Loader; it is cloned, not modified.",
                ),
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default="cumulative",
                    tooltip="Which earlier tiles a tile sees: cumulative (all), neighbors (its "
                    "already generated 8-neighbours), sparse (first + previous), decay "
                    "(geometric weight per tile of order), distance (weight by distance on the "
                    "canvas; keeps every tile's statistics), off (locking only).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=8.0,
                    step=0.05,
                    tooltip="α in S_own + α·S_cache; 0 is the same as off.",
                ),
                io.Combo.Input(
                    "source",
                    options=list(SOURCES),
                    default="synchronous",
                    tooltip="synchronous: earlier tiles' statistics at the same noise level; "
                    "clean: statistics of each finished tile re-encoded near t = 0 (one "
                    "extra model call per tile).",
                ),
                io.Float.Input(
                    "decay",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="mode = decay: factor per tile of order (0 = previous tile only, 1 = "
                    "cumulative). mode = distance: factor per tile step of distance (0 = edge "
                    "neighbours only, 1 = cumulative).",
                ),
                io.Boolean.Input(
                    "record_locked",
                    default=True,
                    tooltip="Also record the tokens of the locked overlap (content earlier "
                    "tiles made); off records only the tile's new cells.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL",
                    tooltip="A clone of the model carrying the BCLA settings; the Causal SANA "
                    "Sampler builds the cache for its tile plan from them.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        mode: str | None = None,
        strength: float | None = None,
        source: str | None = None,
        decay: float | None = None,
    ) -> bool:
        return cross_check(cls, locals(), _config_problem)

    @classmethod
    def execute(
        cls, model, mode: str, strength: float, source: str, decay: float, record_locked: bool
    ) -> io.NodeOutput:
        config = BCLAConfig(
            mode=mode, strength=strength, source=source, decay=decay, record_locked=record_locked
        )
        bcla_transformer(model)
        patched = model.clone()
        options = dict(patched.model_options.get("transformer_options", {}))
        options[OPTION_KEY] = config
        patched.model_options["transformer_options"] = options
        return io.NodeOutput(patched)


NODES = [SanaBCLACache]
