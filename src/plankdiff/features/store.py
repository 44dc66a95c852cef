"""The feature store: one float16 array `[N, D]` per (block, t) pair, written as extraction streams.

    store.json            what was extracted (blocks, timesteps with ᾱ_t and SNR, pooling, noise
                          draws, model hash, dataset key, rows) and the pair table
    progress.json         rows finished so far (extraction resumes from here)
    pairs/<pair>.npy      float16 [N, D], row i = dataset row `rows[i]`

A pair (`plankdiff.features.pairs.Pair`) is named `<block>/t=<t>` (e.g. `dec2@16/t=5`); its file
name replaces '/' and '=' so that it is a plain file name. Baselines and raw pixels write the same
layout with t = None (`layer3@8`, `pixels`). The store's arrays go by the pairs' text names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plankdiff.data.lineage import copy_training_images
from plankdiff.data.prepare import PreparedDataset
from plankdiff.features.pairs import Pair
from plankdiff.provenance import read_json, write_json


class StoreMismatch(ValueError):
    """A feature store used with data it was not extracted from."""


def _pair_path(root: Path, name: str) -> Path:
    return root / "pairs" / Pair.parse(name).file_name


@dataclass
class FeatureStore:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def info(self) -> dict:
        return read_json(self.root / "store.json")

    @property
    def complete(self) -> bool:
        progress = self.root / "progress.json"
        return (
            (self.root / "store.json").exists()
            and progress.exists()
            and read_json(progress)["rows_done"] >= len(self.info["rows"])
        )

    @property
    def rows(self) -> np.ndarray:
        return np.asarray(self.info["rows"], dtype=np.int64)

    @property
    def pairs(self) -> list[str]:
        return [p["name"] for p in self.info["pairs"]]

    def dataset(self) -> PreparedDataset:
        """The prepared dataset the store was extracted from, refused when it was prepared again:
        store rows are positions in one preparation, and another one puts other images there."""
        info = self.info
        # The folder it was extracted from; by name (the cache) for stores written before it was recorded.
        root = info.get("dataset_root")
        dataset = PreparedDataset.open(root if root and Path(root).exists() else info["dataset"])
        self.check_dataset(dataset)
        return dataset

    def check_dataset(self, dataset: PreparedDataset) -> None:
        recorded = self.info.get("dataset_key")
        if recorded != dataset.key:
            raise StoreMismatch(
                f"{self.root / 'store.json'}: features of dataset key {str(recorded)[:12]}, "
                f"but {dataset.root} (dataset {dataset.name!r}) is key {dataset.key[:12]}; "
                "extract the features again"
            )

    def pair_table(self) -> list[dict]:
        return self.info["pairs"]

    def load(self, pair: Pair | str, *, mmap: bool = True) -> np.ndarray:
        pair = str(pair)
        path = _pair_path(self.root, pair)
        if not path.exists():
            raise ValueError(f"{self.root}: no feature pair {pair!r}; have {', '.join(self.pairs)}")
        return np.load(path, mmap_mode="r" if mmap else None)

    def load_many(self, pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        return {p: self.load(p) for p in (pairs or self.pairs)}

    def positions(self, dataset_rows: np.ndarray) -> np.ndarray:
        """Positions in the store's arrays of the given dataset rows (all must be present)."""
        lookup = {int(r): i for i, r in enumerate(self.rows)}
        missing = [int(r) for r in dataset_rows if int(r) not in lookup]
        if missing:
            raise StoreMismatch(
                f"{self.root}: {len(missing)} requested rows were not extracted (e.g. {missing[:3]})"
            )
        return np.array([lookup[int(r)] for r in dataset_rows], dtype=np.int64)

    @classmethod
    def create(
        cls, root: Path, info: dict, dims: dict[str, int], *, backbone: Path | None = None
    ) -> FeatureStore:
        """Allocate every pair's array (or reopen them when resuming the same request).

        `backbone`: the run folder the features come from; its record of training images travels
        with the store, so probes can refuse to score images the backbone learned from."""
        (root / "pairs").mkdir(parents=True, exist_ok=True)
        write_json(root / "store.json", info)
        if backbone is not None:
            copy_training_images(backbone, root)
        if not (root / "progress.json").exists():
            write_json(root / "progress.json", {"rows_done": 0})
        n = len(info["rows"])
        for pair, dim in dims.items():
            path = _pair_path(root, pair)
            if not _readable(path, (n, dim)):
                # Missing, or cut short by a kill while it was being allocated: allocate it again,
                # and start the extraction over (the rows recorded done may have been in it).
                np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim)).flush()
                write_json(root / "progress.json", {"rows_done": 0})
        return cls(root)

    def open_arrays(self) -> dict[str, np.ndarray]:
        return {p: np.load(_pair_path(self.root, p), mmap_mode="r+") for p in self.pairs}

    def rows_done(self) -> int:
        return int(read_json(self.root / "progress.json")["rows_done"])

    def mark_done(self, rows_done: int) -> None:
        write_json(self.root / "progress.json", {"rows_done": rows_done})


def _readable(path: Path, shape: tuple[int, int]) -> bool:
    """Whether `path` holds a float16 array of `shape` whose header and data are all there."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return array.shape == shape and array.dtype == np.float16
