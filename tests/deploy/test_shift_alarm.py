"""The sample-level shift alarm: a sample's share of `unknown` images tested against validation's
(`OpenSet.excess_unknown_p`, `predict.with_shift_alarm`)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from plankdiff.deploy.calibrate import SHIFT_ALARM_P, OpenSet
from plankdiff.deploy.export import UNKNOWN
from plankdiff.deploy.predict import SHIFT_ALARM_COLUMNS, PredictionRun, with_shift_alarm


def cut(*, n_val: int = 3000, val_kept: float = 0.95) -> OpenSet:
    return OpenSet(method="energy", keep=0.95, threshold=1.0, val_kept=val_kept, n_val=n_val)


def test_a_validation_like_share_is_no_alarm_and_a_fifth_unknown_is():
    open_set = cut()
    assert open_set.val_unknown == 150
    # The validation share itself, and the slight excess seen on in-distribution test images
    # (94.1 % kept at worst, robustness.md), even in a large sample: validation's size bounds the evidence.
    assert open_set.excess_unknown_p(50, 1000) > 0.4
    assert open_set.excess_unknown_p(590, 10_000) > SHIFT_ALARM_P
    # Another instrument: a fifth of its images beyond the cut (energy, ZooLake, robustness.md).
    assert open_set.excess_unknown_p(196, 1000) < 1e-20
    # A handful of images carries little evidence, but six of six is enough.
    assert open_set.excess_unknown_p(1, 5) > 0.2
    assert open_set.excess_unknown_p(6, 6) < SHIFT_ALARM_P
    # Fewer unknown than validation is never an alarm (one-sided).
    assert open_set.excess_unknown_p(0, 1000) == pytest.approx(1.0)


def test_no_evidence_gives_nan_and_impossible_counts_are_refused():
    assert math.isnan(cut().excess_unknown_p(0, 0))
    assert math.isnan(cut(n_val=0).excess_unknown_p(10, 10))  # a card without its validation size
    with pytest.raises(ValueError, match="11 unknown images in a sample of 10"):
        cut().excess_unknown_p(11, 10)


def test_counts_wide_gains_share_p_and_alarm_after_n_images(tmp_path):
    wide = pd.DataFrame(
        {
            "sample": ["usual", "other-instrument", "empty-bin"],
            "volume_ml": [5.0, 5.0, 5.0],
            "n_images": [1000, 1000, 0],
            "copepod": [900, 700, 0],
            "unclassified": [50, 104, 0],
            UNKNOWN: [50, 196, 0],
        }
    )
    out = with_shift_alarm(wide, cut())
    assert list(out.columns[:6]) == ["sample", "volume_ml", "n_images", *SHIFT_ALARM_COLUMNS]
    assert out["unknown_share"].tolist()[:2] == [0.05, 0.196] and math.isnan(out["unknown_share"][2])
    assert out["shift_alarm"].tolist() == [False, True, False]
    assert with_shift_alarm(wide, None) is wide  # no cut, no columns
    # The run names the flagged samples, as read back from counts_wide.csv.
    path = tmp_path / "counts_wide.csv"
    out.to_csv(path, index=False)
    table = pd.read_csv(path, keep_default_na=False)
    run = PredictionRun(
        predictions=tmp_path / "predictions.csv",
        counts=tmp_path / "counts.csv",
        skipped=tmp_path / "skipped.csv",
        n_predicted=2000,
        n_skipped=0,
        seconds=1.0,
        table=table,
    )
    assert run.shift_alarms == ["other-instrument"]
