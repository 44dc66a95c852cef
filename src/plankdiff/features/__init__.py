"""Features stage: pooled activations of a frozen denoiser at every (block, timestep) pair."""

from plankdiff._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_TIMESTEPS": "extract",
    "Block": "blocks",
    "ExtractionRequest": "extract",
    "Extractor": "extract",
    "FeatureStore": "store",
    "Pair": "pairs",
    "Selection": "pairs",
    "extract_features": "extract",
    "list_blocks": "blocks",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
