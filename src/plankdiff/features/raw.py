"""Raw pixels as a feature store: the floor every learned representation must clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plankdiff.data.prepare import PreparedDataset
from plankdiff.features.store import FeatureStore
from plankdiff.provenance import sha256_json

RAW_PAIR = "pixels"


def raw_pixel_store(dataset: PreparedDataset, *, rows: np.ndarray, out: Path | str) -> FeatureStore:
    out = Path(out)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    key = sha256_json({"dataset_key": dataset.key, "rows": rows.tolist(), "kind": "raw"})
    store = FeatureStore(out)
    if store.complete and store.info.get("key") == key:
        return store
    size = dataset.images.shape[1] * dataset.images.shape[2] * dataset.images.shape[3]
    info = {
        "key": key,
        "model_hash": "raw-pixels",
        "dataset_key": dataset.key,
        "dataset": dataset.name,
        "rows": rows.tolist(),
        "classes": dataset.classes,
        "pairs": [{"name": RAW_PAIR, "block": RAW_PAIR, "t": None, "dim": size}],
    }
    store = FeatureStore.create(out, info, {RAW_PAIR: size})
    array = store.open_arrays()[RAW_PAIR]
    array[:] = np.asarray(dataset.images[rows], dtype=np.float16).reshape(len(rows), -1) / 255.0
    array.flush()
    store.mark_done(len(rows))
    return store
