"""`probe_features`: arguments checked before any work; the per-image test predictions it writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from plankdiff.probe.run import PREDICTIONS_FILE, probe_features


def test_an_unknown_protocol_is_refused_not_run_as_knn():
    # before #18: any protocol other than "linear" ran kNN and was saved under the given name
    with pytest.raises(ValueError, match="protocol must be one of linear, knn, not 'svm'"):
        probe_features(None, None, protocol="svm")


OPTIONS = {"epochs": 2, "min_steps": 5}


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_test_predictions_file_is_the_scored_probe_one_row_per_test_image(
    store_and_split, tmp_path, protocol
):
    dataset, store, split = store_and_split
    out = tmp_path / "probe"
    result = probe_features(store, split, protocol=protocol, bootstrap=0, probe_options=OPTIONS, out=out)
    frame = pd.read_csv(out / PREDICTIONS_FILE, keep_default_na=False)
    assert list(frame.columns) == ["row", "true", "predicted", "probability"]
    # Every test row once, in the order scored; true classes are the split's.
    assert frame["row"].tolist() == split.indices("test").tolist()
    assert frame["true"].tolist() == [split.classes[c] for c in split.targets[frame["row"]]]
    # predicted = argmax of the probabilities the metrics came from; probability = that maximum
    proba = result.test_proba
    assert proba.shape == (len(frame), len(split.classes))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert frame["predicted"].tolist() == [split.classes[c] for c in proba.argmax(axis=1)]
    np.testing.assert_allclose(frame["probability"], proba.max(axis=1), rtol=1e-6)
    # The file's accuracy is the reported test accuracy, in the result and in metrics.json.
    accuracy = float((frame["true"] == frame["predicted"]).mean())
    assert accuracy == pytest.approx(result.test["accuracy"])
    assert accuracy == pytest.approx(json.loads((out / "metrics.json").read_text())["accuracy"])
    assert frame["true"].ne(frame["predicted"]).sum() == result.test["confusion"].sum() - np.trace(
        result.test["confusion"]
    )
