"""Probe stage: arrays in, results out.

- `linear`: one linear probe per (pair, hyper-parameter), all trained as one batched model, the
  best chosen on validation macro-F1; `fit_single` for one matrix; an sklearn cross-check.
- `knn`: DINO-style weighted k-NN on cosine similarity.
- `metrics`: scores with bootstrap CIs, the files they are saved to, heatmap and confusion figures.
"""

from plankdiff._lazy import lazy_exports

_EXPORTS = {
    "LOSSES": "linear",
    "LinearClassifier": "linear",
    "ProbeGrid": "linear",
    "classification_metrics": "metrics",
    "fit_probe_grid": "linear",
    "fit_single": "linear",
    "heatmap_grid": "metrics",
    "knn_predict": "knn",
    "plot_confusion": "metrics",
    "plot_heatmap": "metrics",
    "save_metrics": "metrics",
    "sklearn_crosscheck": "linear",
    "train_statistics": "linear",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
