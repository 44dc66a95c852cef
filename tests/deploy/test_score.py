import json

import pandas as pd
import pytest

from plankdiff.deploy.score import OTHER_CLASSES, bray_curtis, score_predictions

COLUMNS = [
    "sample",
    "source",
    "top1",
    "top2",
    "top3",
    "p1",
    "p2",
    "p3",
    "ood_score",
    "decision",
    "true_label",
]


def write_predictions(path, rows):
    """rows: (sample, true label, top-1, decision)."""
    frame = pd.DataFrame(
        [
            [s, f"img{i}.png", top1, "", "", 0.9, 0.0, 0.0, 1.0, decision, true]
            for i, (s, true, top1, decision) in enumerate(rows)
        ],
        columns=COLUMNS,
    )
    frame.to_csv(path, index=False)
    return path


def test_scores_separate_known_and_unknown_classes_and_compare_counts(tmp_path):
    path = write_predictions(
        tmp_path / "predictions.csv",
        [
            ("s1", "a", "a", "a"),
            ("s1", "a", "a", "a"),
            ("s1", "b", "a", "a"),
            ("s1", "c", "b", "unclassified"),  # a class the classifier never saw, abstained on
            ("s2", "b", "b", "b"),
            ("s2", "a", "b", "unclassified"),
            ("s2", "d", "a", "unknown"),  # never seen, rejected by the open-set cut
            ("s2", "e", "b", "b"),  # never seen, forced into a known class
            ("s2", "b", "b", "unknown"),  # a known class, rejected all the same
        ],
    )
    summary = score_predictions(path, ["a", "b"])
    assert summary["known_class_images"] == 6 and summary["novel_class_images"] == 3
    assert summary["known"]["abstention_rate"] == pytest.approx(1 / 6)
    assert summary["known"]["unknown_rate"] == pytest.approx(1 / 6)
    assert summary["known"]["accuracy_when_decided"] == pytest.approx(3 / 4)  # unknown is not decided
    assert summary["known"]["top1_accuracy_without_abstention"] == pytest.approx(4 / 6)
    assert summary["novel"]["abstention_rate"] == pytest.approx(1 / 3)
    assert summary["novel"]["unknown_rate"] == pytest.approx(1 / 3)
    assert summary["novel"]["forced_into_a_known_class"] == pytest.approx(1 / 3)
    # s1: true a2 b1, predicted a3 b0 -> (1 + 1) / 6; s2: true a1 b2, predicted b2 -> 1 / 5.
    by_sample = {s["sample"]: s["bray_curtis"] for s in summary["per_sample"]}
    assert by_sample == pytest.approx({"s1": 1 / 3, "s2": 1 / 5})
    # Pooled: true a3 b3, predicted a3 b2: errors offset across samples.
    assert summary["bray_curtis"]["pooled"] == pytest.approx((0 + 1) / (6 + 5))
    comparison = pd.read_csv(tmp_path / "count_comparison.csv").set_index(["sample", "class"])
    assert comparison.loc[("s1", "a")].tolist() == [2, 3]
    assert comparison.loc[("s1", OTHER_CLASSES)].tolist() == [1, 0]
    assert comparison.loc[("s2", "unclassified")].tolist() == [0, 1]
    assert comparison.loc[("s2", "unknown")].tolist() == [0, 2]
    assert json.loads((tmp_path / "score.json").read_text())["samples"] == 2


def test_unlabelled_predictions_are_refused_with_the_file_named(tmp_path):
    path = write_predictions(tmp_path / "predictions.csv", [("bin", "", "a", "a")])
    with pytest.raises(ValueError, match="predictions.csv: no image has a true label"):
        score_predictions(path, ["a"])


def test_bray_curtis_bounds():
    assert bray_curtis(pd.Series([3, 0]).to_numpy(), pd.Series([3, 0]).to_numpy()) == 0
    assert bray_curtis(pd.Series([3, 0]).to_numpy(), pd.Series([0, 2]).to_numpy()) == 1
