"""Per-image test predictions in the report: the most confident mistakes with their images from the
prepared dataset, and accuracy against coverage; on probes run for real on a small NDSB subset."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from plankdiff.probe.run import PREDICTIONS_FILE, probe_features
from plankdiff.report import render_report
from plankdiff.report.predictions import accuracy_coverage, mistakes, reach, read_predictions

EXPERIMENT, SLUG = "ndsb/long-tailed", "ndsb_long-tailed"
OPTIONS = {"epochs": 2, "min_steps": 5}


@pytest.fixture
def study(store_and_split, tmp_path: Path):
    """A results folder as the study writes it: the diffusion probe (linear) and two baselines (kNN,
    linear) run on one raw-pixel store; headline.csv ranks simclr above raw-pixels."""
    dataset, store, split = store_and_split
    root = tmp_path / "results" / "mini"
    accuracy = {}
    for method, protocol in (("diffusion", "linear"), ("simclr", "knn"), ("raw-pixels", "linear")):
        out = root / "metrics" / SLUG / method / "seed0"
        result = probe_features(store, split, protocol=protocol, bootstrap=0, probe_options=OPTIONS, out=out)
        accuracy[method] = result.test["accuracy"]
    headline = [
        [EXPERIMENT, "in distribution", method, "pixels", "accuracy", mean, np.nan, 1]
        for method, mean in (("diffusion", accuracy["diffusion"]), ("raw-pixels", 0.1), ("simclr", 0.2))
    ]
    columns = ["experiment", "setting", "method", "pair", "metric", "mean", "std", "n_seeds"]
    pd.DataFrame(headline, columns=columns).to_csv(root / "headline.csv", index=False)
    (root / "study.json").write_text(json.dumps({"name": "mini", "experiments": {EXPERIMENT: SLUG}}))
    return root, dataset, accuracy


def png_pixels(uri: str) -> np.ndarray:
    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def test_report_shows_the_most_confident_mistakes_with_their_images(study):
    root, dataset, _ = study
    page = render_report(root).read_text(encoding="utf-8")
    part = page[page.index('id="misclassified"') : page.index('id="samples"')]
    headings = re.findall(r"<h4>(.*?)</h4>", part)
    assert [h.split(" (")[0] for h in headings] == ["diffusion", "simclr"]  # raw-pixels ranks lower
    assert "best baseline" in headings[1]
    blocks = re.split(r"<h4>", part)[1:]
    for method, block in zip(("diffusion", "simclr"), blocks, strict=True):
        frame = pd.read_csv(
            root / "metrics" / SLUG / method / "seed0" / PREDICTIONS_FILE, keep_default_na=False
        )
        wrong = frame[frame["true"] != frame["predicted"]]
        assert len(wrong), f"{method}: no mistake to show, the test would check nothing"
        expected = wrong.sort_values(["probability", "row"], ascending=[False, True], kind="stable")
        shown = re.findall(
            r'<figure class="thumb" title="dataset row (\d+):[^"]*"><img src="([^"]+)"[^>]*>'
            r"<figcaption>([^<]*)</figcaption>",
            block,
        )
        assert [int(row) for row, _, _ in shown] == expected["row"].tolist()[:16]
        assert [caption for _, _, caption in shown] == [
            f"{r.true} → {r.predicted} ({r.probability:.2f})" for r in expected.head(16).itertuples()
        ]
        for row, uri, _ in shown:  # the very pixels of that dataset row
            assert np.array_equal(png_pixels(uri), dataset.images[int(row)][0])
        assert f"{len(wrong)} of {len(frame)} test images misclassified" in block
    assert "Images not shown" not in part


def test_coverage_curve_ends_at_the_test_accuracy(study):
    root, _, accuracy = study
    for method in ("diffusion", "simclr"):
        curve = accuracy_coverage(
            read_predictions(root / "metrics" / SLUG / method / "seed0" / PREDICTIONS_FILE)
        )
        assert curve.coverage[-1] == 1.0
        assert curve.accuracy[-1] == pytest.approx(accuracy[method])
        assert np.all(np.diff(curve.coverage) > 0)  # one point per distinct threshold, highest first
    page = render_report(root).read_text(encoding="utf-8")
    coverage = page[page.index('id="coverage"') :]
    assert coverage.count("<figure>") == 1
    assert f"{accuracy['diffusion'] * 100:.1f} % of all" in coverage


def toy(probability, correct) -> pd.DataFrame:
    n = len(probability)
    return pd.DataFrame(
        {
            "row": range(n),
            "true": ["a"] * n,
            "predicted": ["a" if ok else "b" for ok in correct],
            "probability": probability,
        }
    )


def test_accuracy_falls_with_coverage_when_confidence_orders_correctness():
    rng = np.random.default_rng(0)
    probability = rng.uniform(0.2, 1.0, 200).round(2)  # rounded: ties, kept together
    curve = accuracy_coverage(toy(probability, probability > 0.55))
    assert np.all(np.diff(curve.coverage) > 0)
    assert np.all(np.diff(curve.accuracy) <= 0) and curve.accuracy[0] == 1.0
    assert curve.accuracy[-1] == pytest.approx((probability > 0.55).mean())
    # The widest coverage at 90 %: every image above 0.55, plus as many below as 90 % allows.
    covered, threshold = reach(curve, 0.9)
    kept = probability >= threshold
    assert (probability[kept] > 0.55).mean() >= 0.9
    assert covered == kept.mean()
    below = np.sort(probability[probability < threshold])[::-1]
    if len(below):  # the next threshold down would fall under 90 %
        wider = probability >= below[0]
        assert (probability[wider] > 0.55).mean() < 0.9
    # A probe that is right too rarely never reaches 90 %.
    assert reach(accuracy_coverage(toy([0.9, 0.8, 0.7], [False, True, True])), 0.9) is None


def test_mistakes_most_confident_first_at_most_16():
    probability = np.linspace(0.1, 0.9, 40)
    correct = np.arange(40) % 2 == 0
    chosen = mistakes(toy(probability, correct))
    assert len(chosen) == 16 and not chosen["true"].eq(chosen["predicted"]).any()
    assert chosen["row"].tolist() == list(range(39, 7, -2))


def test_predictions_file_without_a_column_is_refused(tmp_path: Path):
    path = tmp_path / PREDICTIONS_FILE
    toy([0.5], [True]).drop(columns="probability").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"test_predictions.csv: missing columns \['probability'\]"):
        read_predictions(path)
