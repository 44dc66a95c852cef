"""Raw pixels as a feature store: the floor every learned representation must clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plankdiff.data.prepare import PreparedDataset
from plankdiff.features.pairs import RAW_PIXELS
from plankdiff.features.store import FeatureStore
from plankdiff.probe.protocol import Orientations
from plankdiff.provenance import sha256_json

RAW_PAIR = RAW_PIXELS.name
RAW_METHOD = "raw-pixels"  # the method name of raw pixels in studies, tables and figures


def dihedral_mean(images: np.ndarray) -> np.ndarray:
    """[N, C, S, S] images averaged over the 8 flips and 90° rotations (float32)."""
    views = [np.rot90(v, k, axes=(-2, -1)) for v in (images, images[..., ::-1]) for k in range(4)]
    return np.mean([v.astype(np.float32) for v in views], axis=0)


def _key(identity: dict, orientations: int) -> str:
    return sha256_json(identity | ({"orientations": orientations} if orientations != 1 else {}))


def stored_orientations(info: dict) -> Orientations:
    """The orientations a raw-pixel store was written with (its key says; its record does not)."""
    identity = {"dataset_key": info["dataset_key"], "rows": info["rows"], "kind": "raw"}
    return 8 if info.get("key") == _key(identity, 8) else 1


def raw_pixel_store(
    dataset: PreparedDataset, *, rows: np.ndarray, out: Path | str, orientations: Orientations = 1
) -> FeatureStore:
    """Pixels scaled to [0, 1]; `orientations` 8 averages them over the dihedral views, as every
    other method's features are under the same protocol."""
    out = Path(out)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    identity = {"dataset_key": dataset.key, "rows": rows.tolist(), "kind": "raw"}
    key = _key(identity, orientations)
    store = FeatureStore(out)
    if store.complete and store.info.get("key") == key:
        return store
    size = dataset.images.shape[1] * dataset.images.shape[2] * dataset.images.shape[3]
    info = {
        "key": key,
        "model_hash": RAW_METHOD,
        "dataset_key": dataset.key,
        "dataset": dataset.name,
        "dataset_root": str(dataset.root),
        "rows": rows.tolist(),
        "classes": dataset.classes,
        "pairs": [{"name": RAW_PAIR, "block": RAW_PIXELS.block, "t": RAW_PIXELS.t, "dim": size}],
    }
    store = FeatureStore.create(out, info, {RAW_PAIR: size})
    array = store.open_arrays()[RAW_PAIR]
    pixels = np.asarray(dataset.images[rows])
    pixels = dihedral_mean(pixels) if orientations == 8 else pixels.astype(np.float32)
    array[:] = (pixels.reshape(len(rows), -1) / 255.0).astype(np.float16)
    array.flush()
    store.mark_done(len(rows))
    return store
