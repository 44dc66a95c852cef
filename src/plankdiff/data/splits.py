"""Train/val/test assignments over a prepared dataset, stored as `splits/<name>.csv`
(columns: row, split[, target]) beside the prepared images.

Kinds:
- `long-tailed`: stratified 70/10/20 over all classes, the natural class distribution.
- `balanced`: the same stratified assignment, keeping classes with at least `min_train` training
  images and capping each class at `cap` training images (val/test capped in proportion).
- `temporal`: train/val from one capture-time range, test from another; only classes with at
  least `min_per_side` images on both sides.
- `cross-domain`: labels mapped to shared coarse groups through a mapping file; see `mapping.py`.

Rule for tiny classes: a class needs 3 images to appear in train, val and test. Classes with
1-2 images go to train only (with a warning), so they are never silently dropped from training
and never make a split crash.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.shares import BALANCED_CAP, BALANCED_MIN_TRAIN, DEFAULT_FRACTIONS, TEMPORAL_VAL_FRACTION
from plankdiff.data.timestamps import parse_capture_times
from plankdiff.provenance import read_json, write_json

SPLITS = ("train", "val", "test")


# Below this many validation images per class (on average), selecting a (block, t) pair or a
# hyper-parameter on them is mostly noise: one image more or less changes the winner.
MIN_VAL_PER_CLASS = 5


class SplitMismatch(ValueError):
    """A saved split whose rows belong to another preparation of its dataset."""


class TooFewClasses(ValueError):
    """The data has too few classes with enough images for the split asked for."""


@dataclass
class Split:
    """Row indices of a prepared dataset per split, and the label to predict for each row."""

    name: str
    rows: dict[str, np.ndarray]
    targets: np.ndarray  # class index for every row of the dataset (-1 where not used)
    classes: list[str]

    def indices(self, split: str) -> np.ndarray:
        return self.rows[split]

    def labels(self, split: str) -> np.ndarray:
        return self.targets[self.rows[split]]

    def to_frame(self) -> pd.DataFrame:
        parts = [pd.DataFrame({"row": r, "split": s}) for s, r in self.rows.items()]
        frame = pd.concat(parts).sort_values("row").reset_index(drop=True)
        frame["target"] = frame["row"].map(lambda r: self.classes[self.targets[r]])
        return frame

    def save(self, dataset: PreparedDataset) -> Path:
        path = dataset.root / "splits" / f"{self.name}.csv"
        path.parent.mkdir(exist_ok=True)
        self.to_frame().to_csv(path, index=False)
        # Rows are positions in this one preparation: the key lets `load` refuse a split whose
        # dataset was prepared again (other images, other order) under the same name.
        write_json(
            path.with_suffix(".json"),
            {
                "name": self.name,
                "counts": self.summary(),
                "classes": self.classes,
                "dataset": dataset.name,
                "dataset_key": dataset.key,
            },
        )
        return path

    @classmethod
    def load(cls, dataset: PreparedDataset, name: str) -> Split:
        path = dataset.root / "splits" / f"{name}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such split; create it with `plankdiff data split`")
        info = read_json(path.with_suffix(".json"))
        if info.get("dataset_key") != dataset.key:
            made_on = info.get("dataset_key")
            raise SplitMismatch(
                f"{path}: split {name!r} was made on "
                + (
                    f"another preparation of {dataset.name!r} (key {made_on[:12]}, now {dataset.key[:12]})"
                    if made_on
                    else f"an unrecorded preparation of {dataset.name!r}"
                )
                + "; make it again with `plankdiff data split`"
            )
        frame = pd.read_csv(path, keep_default_na=False)
        classes = info["classes"]
        targets = np.full(len(dataset), -1, dtype=np.int64)
        targets[frame["row"].to_numpy()] = frame["target"].map({c: i for i, c in enumerate(classes)})
        rows = {s: frame.loc[frame["split"] == s, "row"].to_numpy() for s in SPLITS}
        return cls(name=name, rows=rows, targets=targets, classes=classes)

    def summary(self) -> dict[str, int]:
        return {s: len(r) for s, r in self.rows.items()} | {"classes": len(self.classes)}

    def check_usable(self) -> None:
        """Refuse a split no probe can be fitted and selected on: one with no rows, or with train rows
        but no validation rows (or the reverse). A split of test rows only is a shifted test set."""
        sizes = self.summary()
        if not any(sizes[s] for s in SPLITS):
            raise ValueError(f"split '{self.name}': no rows at all; the data is too small for this split")
        empty = [s for s in ("train", "val") if not sizes[s]]
        if empty and len(empty) < 2:
            raise ValueError(
                f"split '{self.name}': no {empty[0]} rows ({', '.join(f'{s} {sizes[s]}' for s in SPLITS)}); "
                "the data is too small for this split"
            )

    def selection_warning(self) -> str | None:
        """Why selecting on this split's validation rows is unreliable (fewer than
        MIN_VAL_PER_CLASS images per class on average, or classes without any), or None."""
        if not len(self.rows["train"]):
            return None  # a shifted test set: nothing is selected on it
        per_class = np.bincount(self.labels("val"), minlength=len(self.classes))
        missing = [c for c, n in zip(self.classes, per_class, strict=True) if n == 0]
        mean = per_class.mean() if len(per_class) else 0.0
        if mean >= MIN_VAL_PER_CLASS and not missing:
            return None
        return (
            f"split '{self.name}': {per_class.sum()} validation images for {len(self.classes)} classes "
            f"({mean:.1f} per class on average"
            + (
                f"; none for {len(missing)}: {', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}"
                if missing
                else ""
            )
            + f"), too few to select on reliably (wanted: {MIN_VAL_PER_CLASS}+ per class)"
        )


def _stratify(labels: np.ndarray, candidates: np.ndarray, fractions, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    tiny = []
    for label in np.unique(labels[candidates]):
        members = candidates[labels[candidates] == label]
        members = members[rng.permutation(len(members))]
        n = len(members)
        if n < 3:
            tiny.append(int(label))
            out["train"].append(members)
            continue
        n_test = max(1, round(fractions[2] * n)) if fractions[2] > 0 else 0
        n_val = max(1, round(fractions[1] * n)) if fractions[1] > 0 else 0
        out["test"].append(members[:n_test])
        out["val"].append(members[n_test : n_test + n_val])
        out["train"].append(members[n_test + n_val :])
    if tiny:
        warnings.warn(
            f"{len(tiny)} class(es) have fewer than 3 images and go to train only: class indices {tiny}",
            stacklevel=3,
        )
    return {s: np.sort(np.concatenate(v)) if v else np.array([], int) for s, v in out.items()}


def _relabel(name: str, rows: dict[str, np.ndarray], labels: np.ndarray, names: list[str]) -> Split:
    used = np.unique(np.concatenate(list(rows.values())))
    kept = sorted({names[labels[r]] for r in used})
    lookup = {c: i for i, c in enumerate(kept)}
    targets = np.full(len(labels), -1, dtype=np.int64)
    targets[used] = [lookup[names[labels[r]]] for r in used]
    return Split(name=name, rows=rows, targets=targets, classes=kept)


def _shares(fractions) -> str:
    """A split name's tag for non-default shares (`-v15t25`: 15 % validation, 25 % test), so a
    partition drawn with other shares never takes the name, and the saved file, of the default one."""
    if tuple(fractions) == DEFAULT_FRACTIONS:
        return ""
    return f"-v{round(fractions[1] * 100):g}t{round(fractions[2] * 100):g}"


def long_tailed_split(dataset: PreparedDataset, *, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> Split:
    labels = dataset.labels
    rows = _stratify(labels, np.arange(len(labels)), fractions, seed)
    return _relabel(f"long-tailed{_shares(fractions)}-s{seed}", rows, labels, dataset.classes)


def balanced_split(
    dataset: PreparedDataset,
    *,
    seed: int = 0,
    min_train: int = BALANCED_MIN_TRAIN,
    cap: int = BALANCED_CAP,
    fractions=DEFAULT_FRACTIONS,
) -> Split:
    labels = dataset.labels
    base = _stratify(labels, np.arange(len(labels)), fractions, seed)
    rng = np.random.default_rng(seed + 1)
    caps = {
        "train": cap,
        "val": round(cap * fractions[1] / fractions[0]),
        "test": round(cap * fractions[2] / fractions[0]),
    }
    train_counts = np.bincount(labels[base["train"]], minlength=len(dataset.classes))
    keep = np.flatnonzero(train_counts >= min_train)
    if len(keep) < 2:
        raise TooFewClasses(
            f"{dataset.root}: a balanced split needs 2 classes with {min_train}+ training images, "
            f"this data has {len(keep)} (largest: {train_counts.max()}); use --kind long-tailed"
        )
    rows = {}
    for split in SPLITS:
        chosen = []
        for label in keep:
            members = base[split][labels[base[split]] == label]
            if len(members) > caps[split]:
                members = np.sort(rng.choice(members, caps[split], replace=False))
            chosen.append(members)
        rows[split] = np.sort(np.concatenate(chosen))
    limits = "" if (min_train, cap) == (BALANCED_MIN_TRAIN, BALANCED_CAP) else f"-m{min_train}c{cap}"
    return _relabel(f"balanced{limits}{_shares(fractions)}-s{seed}", rows, labels, dataset.classes)


def translate(split: Split, source: PreparedDataset, target: PreparedDataset) -> Split:
    """The same images' partition on another preparation of the same source (e.g. without polarity
    normalisation), matched by path inside the source, so a backbone's training images stay out of
    the other preparation's validation and test rows too."""
    if source.info["source_hash"] != target.info["source_hash"]:
        raise ValueError(
            f"{target.root}: prepared from another source than {source.root}; cannot translate {split.name}"
        )
    where = {path: row for row, path in enumerate(target.meta["path"])}
    # Row in `target` of every `source` row (-1 where the other preparation skipped the image).
    moved = np.array([where.get(p, -1) for p in source.meta["path"]], dtype=np.int64)
    targets = np.full(len(target), -1, dtype=np.int64)
    rows = {}
    for part, r in split.rows.items():
        kept = r[moved[r] >= 0]
        rows[part] = np.sort(moved[kept])
        targets[moved[kept]] = split.targets[kept]
    return Split(name=split.name, rows=rows, targets=targets, classes=split.classes)


def cap_per_class(split: Split, caps: dict[str, int], seed: int = 0) -> Split:
    """At most `caps[part]` rows per class in each part: reduced budgets for quick studies."""
    rng = np.random.default_rng(seed)
    rows = {}
    for part in SPLITS:
        members = split.indices(part)
        if part not in caps or len(members) == 0:
            rows[part] = members
            continue
        labels = split.targets[members]
        chosen = [
            rng.choice(members[labels == c], min(caps[part], int((labels == c).sum())), replace=False)
            for c in np.unique(labels)
        ]
        rows[part] = np.sort(np.concatenate(chosen))
    return Split(
        name=f"{split.name}-cap{caps.get('train', 0)}",
        rows=rows,
        targets=split.targets,
        classes=split.classes,
    )


def temporal_split(
    dataset: PreparedDataset,
    *,
    train_years: tuple[int, ...],
    test_years: tuple[int, ...],
    min_per_side: int = 20,
    val_fraction: float = TEMPORAL_VAL_FRACTION,
    seed: int = 0,
) -> Split:
    years = parse_capture_times(dataset.meta["capture_time"]).dt.year.to_numpy()
    labels = dataset.labels
    known = ~np.isnan(years)
    train_side = np.flatnonzero(known & np.isin(years, train_years))
    test_side = np.flatnonzero(known & np.isin(years, test_years))
    n_classes = len(dataset.classes)
    both = np.flatnonzero(
        (np.bincount(labels[train_side], minlength=n_classes) >= min_per_side)
        & (np.bincount(labels[test_side], minlength=n_classes) >= min_per_side)
    )
    if len(both) == 0:
        raise ValueError(
            f"{dataset.root}: no class has {min_per_side}+ images in both {train_years} and {test_years}"
        )
    train_side = train_side[np.isin(labels[train_side], both)]
    test_side = test_side[np.isin(labels[test_side], both)]
    inner = _stratify(labels, train_side, (1 - val_fraction, val_fraction, 0.0), seed)
    rows = {"train": inner["train"], "val": inner["val"], "test": test_side}
    # Another validation share is named (`-v18.8`), so it never takes the default partition's file.
    shares = "" if val_fraction == TEMPORAL_VAL_FRACTION else f"-v{val_fraction * 100:.3g}"
    name = f"temporal-{'+'.join(map(str, train_years))}-to-{'+'.join(map(str, test_years))}{shares}-s{seed}"
    return _relabel(name, rows, labels, dataset.classes)


def in_and_out_of_period(split: Split, *, fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """From a temporal split, two splits sharing train and val: one tested on held-out images of the
    training period (in distribution), one on the later period (under shift), to measure the drop."""
    inner = _stratify(split.targets, split.indices("train"), (1 - fraction, 0.0, fraction), seed)
    shared = {"train": inner["train"], "val": split.indices("val")}
    within = Split(f"{split.name}-within", shared | {"test": inner["test"]}, split.targets, split.classes)
    across = Split(
        f"{split.name}-across", shared | {"test": split.indices("test")}, split.targets, split.classes
    )
    return within, across
