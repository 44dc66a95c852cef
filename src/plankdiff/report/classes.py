"""Per-class results of one selected probe, read back from the files `probe.metrics.save_metrics` wrote.

`per_class.csv` (class, name, precision, recall, f1, support) and `confusion.csv` (rows true,
columns predicted, counts) are all the report needs: the most confused pairs and a confusion table
small enough to read at 121 classes are derived here, not recomputed from predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TOP_CLASSES = 15  # rows/columns of the confusion table; the rest is pooled into "other classes"
TOP_PAIRS = 10
OTHER = "other classes"


@dataclass(frozen=True)
class Cell:
    count: int
    share: float  # of the true class's (row's) test images
    title: str


@dataclass(frozen=True)
class ConfusionTable:
    """The confusion matrix restricted to the classes with most test images (by support), with
    every other class pooled into one row and one column, so the table stays readable at 121 classes."""

    labels: list[str]
    rows: list[tuple[str, list[Cell]]]
    pooled: int  # how many classes went into OTHER


def read_per_class(folder: Path) -> pd.DataFrame:
    """`per_class.csv` of a probe result folder, classes without a test image dropped, by support."""
    frame = pd.read_csv(folder / "per_class.csv", keep_default_na=False)
    missing = {"name", "precision", "recall", "f1", "support"} - set(frame.columns)
    if missing:
        raise ValueError(f"{folder / 'per_class.csv'}: missing columns {sorted(missing)}")
    frame = frame[frame["support"] > 0]
    return frame.sort_values(["support", "name"], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )


def read_confusion(folder: Path) -> pd.DataFrame:
    """`confusion.csv` as a square frame of counts, rows true and columns predicted."""
    frame = pd.read_csv(folder / "confusion.csv", index_col=0, keep_default_na=False)
    frame.columns = frame.columns.astype(str)
    frame.index = frame.index.astype(str)
    if list(frame.index) != list(frame.columns):
        raise ValueError(f"{folder / 'confusion.csv'}: rows and columns name different classes")
    return frame.astype(int)


def confused_pairs(confusion: pd.DataFrame, top: int = TOP_PAIRS) -> list[dict]:
    """The `top` largest off-diagonal counts: true class, predicted class, count, share of the true
    class. Ties are broken by name so the list does not depend on the CSV's order."""
    counts = confusion.to_numpy()
    totals = counts.sum(axis=1)
    names = list(confusion.index)
    off = [
        (int(counts[i, j]), names[i], names[j], i) for i, j in zip(*np.nonzero(counts), strict=True) if i != j
    ]
    off.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [
        {"true": true, "predicted": predicted, "count": count, "share": count / totals[i]}
        for count, true, predicted, i in off[:top]
    ]


def confusion_table(confusion: pd.DataFrame, top: int = TOP_CLASSES) -> ConfusionTable:
    """The `top` classes by support (ties by name), the others pooled; each cell carries its count,
    its share of the true class and a hover title naming both classes."""
    names = list(confusion.index)
    counts = confusion.to_numpy()
    support = counts.sum(axis=1)
    order = sorted(range(len(names)), key=lambda i: (-support[i], names[i]))
    kept = order[:top]
    rest = [i for i in range(len(names)) if i not in set(kept)]
    groups = [[i] for i in kept] + ([rest] if rest else [])
    labels = [names[i] for i in kept] + ([OTHER] if rest else [])
    rows = []
    for true_label, true_group in zip(labels, groups, strict=True):
        row_total = int(counts[true_group].sum())
        if row_total == 0:
            continue
        cells = []
        for predicted_label, predicted_group in zip(labels, groups, strict=True):
            count = int(counts[np.ix_(true_group, predicted_group)].sum())
            share = count / row_total
            cells.append(
                Cell(
                    count=count,
                    share=share,
                    title=f"true {true_label} → predicted {predicted_label}: {count} of {row_total} ({share:.0%})",
                )
            )
        rows.append((true_label, cells))
    return ConfusionTable(labels=labels, rows=rows, pooled=len(rest))
