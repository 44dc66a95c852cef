"""Score a prediction run against the true labels its inputs carry (class folders or a manifest).

What a monitoring programme needs to know before trusting the counts:
- on images of classes the classifier knows: how many it abstains on, and how often it is right
  when it does decide;
- on images of classes it never saw (a new season brings new taxa): how many it abstains on
  (`unclassified`), how many it rejects as `unknown` (the open-set cut), and how many it forces
  into a known class;
- per sample and class: the predicted count against the true count, and per sample the
  Bray–Curtis dissimilarity between the two compositions (0 = identical, 1 = nothing shared).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.deploy.export import UNCLASSIFIED, UNKNOWN

OTHER_CLASSES = "(classes unknown to the classifier)"


def bray_curtis(true_counts: np.ndarray, predicted_counts: np.ndarray) -> float:
    total = true_counts.sum() + predicted_counts.sum()
    return float(np.abs(true_counts - predicted_counts).sum() / total) if total else 0.0


def score_predictions(predictions_csv: Path, classes: list[str]) -> dict:
    """Writes `score.json` and `count_comparison.csv` beside `predictions_csv`; returns the summary."""
    predictions_csv = Path(predictions_csv)
    frame = pd.read_csv(predictions_csv, dtype={"true_label": str}, keep_default_na=False)
    labelled = frame[frame["true_label"] != ""]
    if labelled.empty:
        raise ValueError(
            f"{predictions_csv}: no image has a true label (class folders or a manifest give them); "
            "nothing to score"
        )
    known_classes = set(classes)
    known = labelled[labelled["true_label"].isin(known_classes)]
    novel = labelled[~labelled["true_label"].isin(known_classes)]
    not_decided = labelled["decision"].isin([UNCLASSIFIED, UNKNOWN])
    decided = known[~not_decided[known.index]]

    def share(part: pd.DataFrame, of: pd.DataFrame) -> float | None:
        return len(part) / len(of) if len(of) else None

    comparison = _count_comparison(labelled, classes)
    # Compositions are compared over the classifier's classes; `unclassified`, `unknown` and unseen classes are not
    # part of either composition.
    over_classes = comparison[comparison["class"].isin(known_classes)]
    by_sample = dict(tuple(over_classes.groupby("sample")))
    per_sample = [
        {
            "sample": sample,
            "images": int(group["true"].sum()),
            "bray_curtis": bray_curtis(
                by_sample[sample]["true"].to_numpy(), by_sample[sample]["predicted"].to_numpy()
            ),
        }
        for sample, group in comparison.groupby("sample", sort=True)
    ]
    pooled = over_classes.groupby("class")[["true", "predicted"]].sum()
    bray = np.array([s["bray_curtis"] for s in per_sample])
    summary = {
        "predictions": str(predictions_csv),
        "images": len(frame),
        "labelled": len(labelled),
        "known_class_images": len(known),
        "novel_class_images": len(novel),
        "known": {
            "abstention_rate": share(known[known["decision"] == UNCLASSIFIED], known),
            "unknown_rate": share(known[known["decision"] == UNKNOWN], known),
            "accuracy_when_decided": share(decided[decided["decision"] == decided["true_label"]], decided),
            "top1_accuracy_without_abstention": share(known[known["top1"] == known["true_label"]], known),
        },
        "novel": {
            "abstention_rate": share(novel[novel["decision"] == UNCLASSIFIED], novel),
            "unknown_rate": share(novel[novel["decision"] == UNKNOWN], novel),
            "forced_into_a_known_class": share(novel[~not_decided[novel.index]], novel),
        },
        "samples": len(per_sample),
        "bray_curtis": {
            "mean": float(bray.mean()) if len(bray) else None,
            "median": float(np.median(bray)) if len(bray) else None,
            "pooled": bray_curtis(pooled["true"].to_numpy(), pooled["predicted"].to_numpy()),
        },
        "per_sample": per_sample,
    }
    comparison.to_csv(predictions_csv.with_name("count_comparison.csv"), index=False)
    predictions_csv.with_name("score.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _count_comparison(labelled: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """sample, class, true, predicted: one row per sample and classifier class, plus `unclassified`
    and `unknown` (predicted only) and one row pooling the true counts of classes the classifier does not know."""
    known_classes = set(classes)
    true_class = labelled["true_label"].where(labelled["true_label"].isin(known_classes), OTHER_CLASSES)
    true = labelled.assign(cls=true_class).groupby(["sample", "cls"]).size()
    predicted = labelled.groupby(["sample", "decision"]).size()
    rows = []
    for sample in sorted(labelled["sample"].unique()):
        for name in [*classes, UNCLASSIFIED, UNKNOWN, OTHER_CLASSES]:
            rows.append(
                {
                    "sample": sample,
                    "class": name,
                    "true": int(true.get((sample, name), 0)),
                    "predicted": int(predicted.get((sample, name), 0)),
                }
            )
    return pd.DataFrame(rows, columns=["sample", "class", "true", "predicted"])
