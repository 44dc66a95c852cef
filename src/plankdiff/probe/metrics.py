"""Classification metrics, their bootstrap confidence intervals, and the files and figures they go to.

Macro averages (macro-F1, balanced accuracy) are taken over the classes of `range(n_classes)` that
occur in `y_true`. A class with no true example has no recall, so averaging its F1 of 0 in would
punish a split for what it does not contain, and averaging over `y_true ∪ y_pred` would let a
classifier change the denominator by what it predicts. Predictions of an absent class still count:
they are misses of the true class (lower recall there). This is sklearn's `labels=` behaviour, and
`balanced_accuracy_score` follows the same rule, so the two macro numbers agree on what a class is.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from plankdiff.provenance import atomic_write, write_json

CI_LEVEL = 0.95
BOOTSTRAP_CHUNK = 100  # replicates at a time: bounds memory at ~chunk * n * 8 bytes per array


def present_labels(y_true: np.ndarray, n_classes: int) -> np.ndarray:
    """The classes macro averages run over: those of `range(n_classes)` with a true example."""
    return np.flatnonzero(np.bincount(y_true, minlength=n_classes)[:n_classes])


def macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of every row of `y_pred` [M, n] against `y_true` ([n] or [M, n]) in one pass.

    Scores hundreds of probes, or bootstrap replicates, without a Python loop; each row averages
    over the classes present in its own `y_true` row (the module's rule), matching sklearn's
    `f1_score(average="macro", labels=present_labels(...))` row by row.
    """
    y_pred = np.atleast_2d(y_pred)
    y_true = np.broadcast_to(y_true, y_pred.shape)
    rows, n = y_pred.shape
    offset = (np.arange(rows, dtype=np.int64) * n_classes)[:, None]
    size = rows * n_classes
    true_count = np.bincount((offset + y_true).ravel(), minlength=size).reshape(rows, n_classes)
    pred_count = np.bincount((offset + y_pred).ravel(), minlength=size).reshape(rows, n_classes)
    hit = y_true == y_pred
    tp = np.bincount((offset + y_true)[hit], minlength=size).reshape(rows, n_classes)
    denominator = true_count + pred_count
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros((rows, n_classes)), where=denominator > 0)
    present = true_count > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, *, replicates: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals for accuracy and macro-F1 over test examples resampled with replacement.

    The test set is a sample of the images the classifier will meet; the interval says how much the
    score would move with another sample of the same size.
    """
    rng = np.random.default_rng(seed)
    n = len(y_true)
    accuracy, macro_f1 = [], []
    for start in range(0, replicates, BOOTSTRAP_CHUNK):
        idx = rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, replicates - start), n))
        accuracy.append((y_true[idx] == y_pred[idx]).mean(axis=1))
        macro_f1.append(macro_f1_rows(y_true[idx], y_pred[idx], n_classes))
    tail = 100 * (1 - CI_LEVEL) / 2
    return {
        name: tuple(float(v) for v in np.percentile(np.concatenate(values), [tail, 100 - tail]))
        for name, values in (("accuracy", accuracy), ("macro_f1", macro_f1))
    }


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, macro-F1, balanced accuracy, per-class scores, confusion matrix and bootstrap CIs.

    Returns a dict with scalars `accuracy`, `macro_f1`, `balanced_accuracy`, `n`, `n_classes_present`;
    `ci` ({metric: (low, high)}, absent when `bootstrap=0`); `per_class` (DataFrame over all
    `n_classes`: class, name, precision, recall, f1, support); `confusion` ([n_classes, n_classes]
    counts, rows true, columns predicted). Macro averages follow the module rule (classes in `y_true`).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if not (y_true.shape == y_pred.shape and y_true.ndim == 1):
        raise ValueError(
            f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal-length 1-D label arrays"
        )
    if not len(y_true):
        raise ValueError("no examples to score")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not (y.min() >= 0 and y.max() < n_classes):
            raise ValueError(f"{name} holds labels outside range({n_classes})")
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")

    present = present_labels(y_true, n_classes)
    everything = np.arange(n_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=everything, zero_division=0
    )
    result: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "n": len(y_true),
        "n_classes_present": len(present),
        "per_class": pd.DataFrame(
            {"class": everything, "name": names, "precision": precision, "recall": recall, "f1": f1}
            | {"support": support}
        ),
        "confusion": confusion_matrix(y_true, y_pred, labels=everything),
    }
    if bootstrap:
        result["ci"] = bootstrap_ci(y_true, y_pred, n_classes, replicates=bootstrap, seed=seed)
        result["bootstrap"] = bootstrap
    return result


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's balanced accuracy, without its warning about predicted classes absent from y_true:
    under this module's rule that case is expected and counted (as misses of the true class)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


def save_metrics(metrics: Mapping[str, Any], out_dir: Path, *, extra: Mapping[str, Any]) -> Path:
    """Write `metrics.json` (every scalar and CI, plus `extra`: git SHA, config, probe hyper-parameters),
    `per_class.csv` and `confusion.csv` into `out_dir`; returns `out_dir`.

    `extra` is merged at the top level of the JSON so a reader finds `git_sha` or `lr` without
    knowing who wrote them; a key clash with a metric would hide one of the two, so it is refused.
    """
    out_dir = Path(out_dir)
    scalars = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}
    clash = sorted(set(scalars) & set(extra))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite metrics of the same name")
    write_json(out_dir / "metrics.json", scalars | dict(extra))
    per_class: pd.DataFrame = metrics["per_class"]
    atomic_write(out_dir / "per_class.csv", lambda tmp: per_class.to_csv(tmp, index=False))
    confusion = pd.DataFrame(metrics["confusion"], index=per_class["name"], columns=per_class["name"])
    confusion.index.name = "true\\predicted"
    atomic_write(out_dir / "confusion.csv", lambda tmp: confusion.to_csv(tmp))
    return out_dir


def _save_figure(fig: Figure, out: Path, dpi: int) -> Path:
    """Render through the Agg canvas directly: no pyplot, so no global backend is switched for the caller."""
    out = Path(out)
    FigureCanvasAgg(fig)
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=out.suffix[1:]))
    return out


def heatmap_grid(table: pd.DataFrame) -> pd.DataFrame:
    """Pivot (block, t, value) rows into a block × t frame: blocks in order of first appearance (the
    caller's order, e.g. encoder → decoder, so the grid reads along the network), t increasing."""
    missing = {"block", "t", "value"} - set(table.columns)
    if missing:
        raise ValueError(f"heatmap table lacks columns {sorted(missing)}")
    grid = table.pivot_table(index="block", columns="t", values="value", aggfunc="first")
    return grid.reindex(index=list(dict.fromkeys(table["block"])), columns=sorted(grid.columns))


def plot_heatmap(
    table: pd.DataFrame,
    *,
    selected: tuple[str, int] | None,
    out: Path,
    title: str,
    value_label: str = "value",
) -> Path:
    """A block × timestep heatmap of `table` (columns block, t, value), the `selected` (block, t) boxed
    in red; layout as `heatmap_grid`. Cells carry their values while the grid is small enough to read."""
    grid = heatmap_grid(table)
    blocks = list(grid.index)
    values = grid.to_numpy(dtype=float)
    fig = Figure(figsize=(max(4.0, 0.6 * values.shape[1] + 2.5), max(3.0, 0.4 * values.shape[0] + 1.5)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label=value_label)
    ax.set_xticks(range(values.shape[1]), [str(t) for t in grid.columns])
    ax.set_yticks(range(values.shape[0]), blocks)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("block")
    ax.set_title(title)
    if values.size <= 400:
        low, high = np.nanmin(values), np.nanmax(values)
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                dark = (v - low) < 0.6 * (high - low)
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if dark else "k")
    if selected is not None:
        block, t = selected
        if not (block in blocks and t in grid.columns):
            raise ValueError(f"selected cell {selected} is not in the table")
        i, j = blocks.index(block), list(grid.columns).index(t)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    return _save_figure(fig, out, dpi=150)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], out: Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix (each row: where that true class went), legible up to ~121 classes.

    Row normalisation keeps rare classes visible next to abundant ones; the colour scale is a square
    root, so 2-10% confusions show up next to a 90% diagonal; tick labels shrink with the class count
    and the figure grows, so 121 names stay readable when zoomed.
    """
    cm = np.asarray(cm, dtype=float)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix {cm.shape} does not match {n} class names")
    totals = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    side = float(np.clip(0.12 * n + 2, 5, 18))
    fontsize = float(np.clip(500 / max(n, 1), 2.5, 9))
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, label="fraction of true class")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return _save_figure(fig, out, dpi=200 if n > 40 else 150)
