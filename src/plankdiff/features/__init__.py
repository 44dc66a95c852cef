"""Features stage: pooled activations of a frozen denoiser at every (block, timestep) pair."""

from plankdiff.features.blocks import Block, list_blocks
from plankdiff.features.extract import DEFAULT_TIMESTEPS, ExtractionRequest, Extractor, extract_features
from plankdiff.features.store import FeatureStore, pair_name

__all__ = [
    "DEFAULT_TIMESTEPS",
    "Block",
    "ExtractionRequest",
    "Extractor",
    "FeatureStore",
    "extract_features",
    "list_blocks",
    "pair_name",
]
