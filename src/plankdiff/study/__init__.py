"""The study: every stage tied into one resumable run with one report."""

from plankdiff._lazy import lazy_exports

_EXPORTS = {"ExperimentConfig": "config", "Study": "runner", "load_experiment": "config"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
