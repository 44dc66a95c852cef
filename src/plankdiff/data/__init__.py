"""Data stage: read plankton collections, prepare them once, split them."""

from plankdiff.data.mapping import cross_domain_splits, load_mapping
from plankdiff.data.prepare import PreparedDataset, prepare
from plankdiff.data.sources import Collection, SourceError, UnsafeArchiveError
from plankdiff.data.splits import Split, balanced_split, long_tailed_split, temporal_split

__all__ = [
    "Collection",
    "PreparedDataset",
    "SourceError",
    "Split",
    "UnsafeArchiveError",
    "balanced_split",
    "cross_domain_splits",
    "load_mapping",
    "long_tailed_split",
    "prepare",
    "temporal_split",
]
