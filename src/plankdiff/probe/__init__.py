"""Probe stage: arrays in, results out.

- `linear`: one linear probe per (pair, hyper-parameter), all trained as one batched model, the
  best chosen on validation macro-F1; `fit_single` for one matrix; an sklearn cross-check.
- `knn`: DINO-style weighted k-NN on cosine similarity.
- `metrics`: scores with bootstrap CIs, the files they are saved to, heatmap and confusion figures.
"""

from plankdiff.probe.knn import knn_predict
from plankdiff.probe.linear import (
    LOSSES,
    LinearClassifier,
    ProbeGrid,
    fit_probe_grid,
    fit_single,
    sklearn_crosscheck,
    train_statistics,
)
from plankdiff.probe.metrics import (
    classification_metrics,
    heatmap_grid,
    plot_confusion,
    plot_heatmap,
    save_metrics,
)

__all__ = [
    "LOSSES",
    "LinearClassifier",
    "ProbeGrid",
    "classification_metrics",
    "fit_probe_grid",
    "fit_single",
    "heatmap_grid",
    "knn_predict",
    "plot_confusion",
    "plot_heatmap",
    "save_metrics",
    "sklearn_crosscheck",
    "train_statistics",
]
