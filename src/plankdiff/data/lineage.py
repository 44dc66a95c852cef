"""Which images a backbone learned from, so that no test image can be scored by a backbone that saw it.

An image's identity is its source (the sha256 of the zip, or of the folder listing) and its path
inside that source, hashed to 64 bits. Two preparations of the same source (with and without
polarity normalisation, at 32 and 64 px) give the same identities, so a backbone trained on one
preparation is still caught scoring its training images through another.

Every backbone run writes `training_images.npy` (sorted uint64 identities) and every feature store
extracted from it carries a copy, so the check still holds when the run folder is gone.
`check_unseen` refuses, with a one-line `LeakError` naming the backbone and the split, any scored
row that was a training image, unless the caller says the use is deliberately transductive.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from plankdiff.data.prepare import PreparedDataset
from plankdiff.provenance import save_npy

TRAINING_IMAGES_FILE = "training_images.npy"


class LeakError(ValueError):
    """A row being scored (test, or validation used for selection) was a training image of the backbone."""


def image_ids(dataset: PreparedDataset, rows: np.ndarray) -> np.ndarray:
    """64-bit identities of the given rows: (source hash, path inside the source)."""
    source = dataset.info["source_hash"]
    paths = dataset.meta["path"].to_numpy()[np.asarray(rows, dtype=np.int64)]
    return np.array(
        [int.from_bytes(hashlib.sha1(f"{source}:{p}".encode()).digest()[:8], "little") for p in paths],
        dtype=np.uint64,
    )


def write_training_images(folder: Path, dataset: PreparedDataset, rows: np.ndarray) -> Path:
    """Record the images a backbone trains on in its run folder (before the first step)."""
    path = Path(folder) / TRAINING_IMAGES_FILE
    save_npy(path, np.unique(image_ids(dataset, rows)))
    return path


def read_training_images(folder: Path) -> np.ndarray | None:
    """The identities a run (or a store copied from it) trained on; None where nothing was recorded."""
    path = Path(folder) / TRAINING_IMAGES_FILE
    return np.load(path) if path.exists() else None


def copy_training_images(run: Path, store_root: Path) -> None:
    """Carry a backbone's training record into a feature store extracted from it."""
    trained = read_training_images(run)
    if trained is not None:
        save_npy(Path(store_root) / TRAINING_IMAGES_FILE, trained)


def overlap(trained: np.ndarray, dataset: PreparedDataset, rows: np.ndarray) -> int:
    """How many of `rows` of `dataset` are among the `trained` identities."""
    if len(rows) == 0 or len(trained) == 0:
        return 0
    return int(np.isin(image_ids(dataset, rows), trained).sum())


def check_unseen(
    trained: np.ndarray | None,
    dataset: PreparedDataset,
    rows: np.ndarray,
    *,
    backbone: str,
    split: str,
    part: str,
    transductive: bool = False,
) -> None:
    """Refuse to score `rows` (the `part` of `split`) when the backbone trained on any of them."""
    if trained is None or transductive:
        return
    seen = overlap(trained, dataset, rows)
    if seen:
        raise LeakError(
            f"{backbone}: {seen} of the {len(rows)} {part} images of split {split} were training images of "
            "this backbone; score a split whose test and validation rows it never saw "
            "(or pass --transductive for deliberate use of unlabelled target images)"
        )


def pretraining_rows(dataset: PreparedDataset, split: str | None, *, all_rows: bool) -> np.ndarray:
    """The rows a backbone may learn from: the train rows of `split`, or every row only when asked.

    There is no silent default: pre-training on every row puts the test images into the backbone,
    which `check_unseen` then refuses to score unless the use is declared transductive.
    """
    from plankdiff.data.splits import Split  # splits imports prepare, as this module does

    if split and all_rows:
        raise ValueError(f"--split {split} and --all-rows exclude each other")
    if all_rows:
        return np.arange(len(dataset))
    if not split:
        raise ValueError(
            f"{dataset.root}: give --split (the backbone learns its train rows; val and test stay unseen) "
            "or --all-rows to pre-train on every image, test images included"
        )
    return Split.load(dataset, split).indices("train")


READOUTS_SUFFIX = ".readouts.jsonl"


def log_readout(dataset: PreparedDataset, split: str, what: dict) -> None:
    """Append one test readout of `split` (when, which code, what was scored) to its log beside the
    split, so a report can say how often those test rows have been read."""
    import json
    from datetime import datetime, timezone

    from plankdiff.provenance import git_sha

    path = dataset.root / "splits" / f"{split}{READOUTS_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_sha": git_sha(), **what}
    with open(path, "a") as log:
        log.write(json.dumps(entry) + "\n")


def readouts(dataset: PreparedDataset, split: str) -> int:
    """How many times the test rows of `split` have been scored."""
    path = dataset.root / "splits" / f"{split}{READOUTS_SUFFIX}"
    return sum(1 for _ in open(path)) if path.exists() else 0


__all__ = [
    "LeakError",
    "log_readout",
    "readouts",
    "pretraining_rows",
    "TRAINING_IMAGES_FILE",
    "check_unseen",
    "copy_training_images",
    "image_ids",
    "overlap",
    "read_training_images",
    "write_training_images",
]
