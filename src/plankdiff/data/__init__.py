"""Data stage: read plankton collections, prepare them once, split them."""

from plankdiff._lazy import lazy_exports

_EXPORTS = {
    "Collection": "sources",
    "PreparedDataset": "prepare",
    "SourceError": "sources",
    "Split": "splits",
    "UnsafeArchiveError": "sources",
    "balanced_split": "splits",
    "cross_domain_splits": "mapping",
    "load_mapping": "mapping",
    "long_tailed_split": "splits",
    "prepare": "prepare",
    "temporal_split": "splits",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
