"""Per-image test predictions of one selected probe, read back from `test_predictions.csv`
(`probe.run.write_result`: dataset row, true and predicted class names, top-1 probability).

Two things the per-class counts cannot show come from it: which images were misclassified (the
most confident mistakes first, with their pixels from the prepared dataset the features came from),
and what a confidence threshold buys: the accuracy of the images kept against the share kept
(`deploy.calibrate.coverage_curve`, the same curve the exported classifier's thresholds are read from).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.deploy.calibrate import CoverageCurve, coverage_curve

PREDICTIONS_FILE = "test_predictions.csv"
COLUMNS = ("row", "true", "predicted", "probability")
TOP_MISTAKES = 16  # thumbnails per method: a grid that fits a screen
TARGET_ACCURACY = 0.9  # the accuracy whose coverage the report marks


def read_predictions(path: Path) -> pd.DataFrame:
    """The file as a frame (class names kept as text, even 'NA'); refused when a column is missing."""
    frame = pd.read_csv(path, keep_default_na=False, dtype={"true": str, "predicted": str})
    missing = sorted(set(COLUMNS) - set(frame.columns))
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    if not len(frame):
        raise ValueError(f"{path}: no test images")
    return frame


def mistakes(frame: pd.DataFrame, top: int = TOP_MISTAKES) -> pd.DataFrame:
    """The `top` misclassified images, most confident first (ties by dataset row)."""
    wrong = frame[frame["true"] != frame["predicted"]]
    return wrong.sort_values(["probability", "row"], ascending=[False, True], kind="stable").head(top)


def accuracy_coverage(frame: pd.DataFrame) -> CoverageCurve:
    """Accuracy of the kept images against the share kept, as the top-1 probability threshold rises."""
    return coverage_curve(
        frame["probability"].to_numpy(float), (frame["true"] == frame["predicted"]).to_numpy()
    )


def reach(curve: CoverageCurve, target: float = TARGET_ACCURACY) -> tuple[float, float] | None:
    """(coverage, threshold) where the kept images' accuracy reaches `target` with the most kept;
    None when no threshold reaches it."""
    widest = curve.widest_reaching(target)
    return None if widest is None else (float(curve.coverage[widest]), float(curve.threshold[widest]))


def feature_dataset(folder: Path):
    """The prepared dataset behind a probe result folder: `selected.json` names the feature store,
    whose record names the dataset (refused if it was prepared again since)."""
    from plankdiff.features.store import FeatureStore

    selected = json.loads((folder / "selected.json").read_text(encoding="utf-8"))
    return FeatureStore(Path(selected["features"])).dataset()


def thumbnail(image: np.ndarray) -> bytes:
    """One prepared image, uint8 [C, S, S], as PNG bytes at its own size (the page scales it up)."""
    from PIL import Image

    pixels = np.asarray(image, dtype=np.uint8)
    picture = (
        Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
        if pixels.shape[0] == 3
        else Image.fromarray(pixels[0], "L")
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
