"""Per-class views of a probe result: the most confused pairs and a confusion table that stays
readable at 121 classes, checked against counts worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plankdiff.report.classes import OTHER, confused_pairs, confusion_table, read_confusion, read_per_class


def frame(counts: list[list[int]], names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(np.array(counts), index=names, columns=names)


def test_confused_pairs_are_the_largest_off_diagonal_counts_ties_by_name() -> None:
    confusion = frame([[5, 3, 1], [0, 4, 3], [3, 0, 9]], ["a", "b", "c"])
    pairs = confused_pairs(confusion, top=3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("a", "b", 3),
        ("b", "c", 3),
        ("c", "a", 3),
    ]
    assert pairs[0]["share"] == pytest.approx(3 / 9) and pairs[1]["share"] == pytest.approx(3 / 7)
    assert confused_pairs(frame([[2, 0], [0, 3]], ["a", "b"])) == []  # a perfect diagonal has none


def test_confusion_table_keeps_top_classes_and_pools_the_rest() -> None:
    rng = np.random.default_rng(0)
    n = 121
    names = [f"class{i:03d}" for i in range(n)]
    counts = rng.integers(0, 4, size=(n, n))
    counts[np.arange(n), np.arange(n)] += 1000 * np.arange(n)  # later classes have more test images
    counts[7] = 0  # a class without test images is neither kept nor pooled as a row
    table = confusion_table(frame(counts.tolist(), names), top=15)
    top = [names[i] for i in range(n - 1, n - 16, -1)]
    assert table.labels == [*top, OTHER] and table.pooled == n - 15
    assert [label for label, _ in table.rows] == table.labels  # the pooled row has images
    total = sum(cell.count for _, cells in table.rows for cell in cells)
    assert total == counts.sum()  # pooling loses no image
    first, cells = table.rows[0]
    assert first == "class120" and cells[0].count == counts[120, 120]
    assert cells[-1].count == counts[120].sum() - counts[120, [names.index(t) for t in top]].sum()
    assert sum(cell.share for cell in cells) == pytest.approx(1.0)
    assert cells[0].title.startswith(f"true class120 → predicted class120: {counts[120, 120]} of")


def test_small_confusion_table_has_no_pooled_class() -> None:
    table = confusion_table(frame([[2, 1], [0, 0]], ["b", "a"]))
    assert table.labels == ["b", "a"] and table.pooled == 0
    assert [label for label, _ in table.rows] == ["b"]  # 'a' has no test image: no row


def test_reading_probe_files(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "class": [0, 1, 2],
            "name": ["x", "y", "z"],
            "precision": [0.5, 0.0, 1.0],
            "recall": [0.5, 0.0, 1.0],
            "f1": [0.5, 0.0, 1.0],
            "support": [2, 0, 5],
        }
    ).to_csv(tmp_path / "per_class.csv", index=False)
    assert list(read_per_class(tmp_path)["name"]) == ["z", "x"]  # by support; y has no test image
    confusion = frame([[1, 1, 0], [0, 0, 0], [0, 0, 5]], ["x", "y", "z"])
    confusion.index.name = "true\\predicted"
    confusion.to_csv(tmp_path / "confusion.csv")
    assert read_confusion(tmp_path).equals(frame([[1, 1, 0], [0, 0, 0], [0, 0, 5]], ["x", "y", "z"]))
    pd.DataFrame({"name": ["x"]}).to_csv(tmp_path / "per_class.csv", index=False)
    with pytest.raises(ValueError, match="missing columns"):
        read_per_class(tmp_path)
