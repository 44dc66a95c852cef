"""Evaluation stage: clustering of frozen features, distribution shift, label efficiency."""

from plankdiff._lazy import lazy_exports

_EXPORTS = {"cluster_scores": "clustering", "kmeans_scores": "clustering", "pair_kmeans_scores": "clustering"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
