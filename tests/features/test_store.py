"""The feature store's allocation survives a kill in the middle of it."""

from __future__ import annotations

import json

import numpy as np

from plankdiff.features.pairs import Pair
from plankdiff.features.store import FeatureStore


def test_a_pair_array_cut_short_by_a_kill_is_allocated_again_and_the_extraction_restarts(tmp_path):
    info = {"rows": list(range(6)), "pairs": [{"name": "a"}, {"name": "b"}]}
    store = FeatureStore.create(tmp_path, info, {"a": 4, "b": 3})
    store.open_arrays()["a"][:] = 1.0
    store.mark_done(6)
    cut = tmp_path / "pairs" / Pair("b").file_name
    cut.write_bytes(cut.read_bytes()[:20])  # a kill during np.save of the header: not even a header

    again = FeatureStore.create(tmp_path, info, {"a": 4, "b": 3})

    arrays = again.open_arrays()
    assert arrays["b"].shape == (6, 3) and arrays["b"].dtype == np.float16
    assert (arrays["a"] == 1.0).all()  # an intact array is kept as it was
    assert json.loads((tmp_path / "progress.json").read_text()) == {"rows_done": 0}


def test_an_intact_store_is_reopened_without_losing_progress(tmp_path):
    info = {"rows": list(range(5)), "pairs": [{"name": "a"}]}
    FeatureStore.create(tmp_path, info, {"a": 2}).mark_done(3)
    assert FeatureStore.create(tmp_path, info, {"a": 2}).rows_done() == 3
