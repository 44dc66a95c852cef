"""Cross-domain evaluation through shared coarse groups.

A mapping file is a CSV with columns `dataset,label,group`: each fine label of each dataset
that has a counterpart in the other goes to one coarse group; labels absent from the file are
left out of the cross-domain experiment (and listed by `unmapped_labels`). The shipped
`ndsb_pwssc.csv` maps NDSB (ISIIS, Florida) and PWSSC (SPC, Alaska) onto 13 groups: copepod,
chaetognath, appendicularian, doliolid, hydromedusa, siphonophore, ctenophore, pteropod,
echinoderm_pluteus, euphausiid, polychaete, radiolarian, detritus. Deliberately left out:
PWSSC `Blob`, `Unknown`, `Dot`, `Filament`, `Spiral` (no morphological counterpart),
`Cnidaria` (could be medusa or siphonophore), `Nauplius` (NDSB has no nauplii), and NDSB
classes with no PWSSC counterpart (protists, fish larvae, shrimps, trichodesmium, …).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split

SHIPPED = {"ndsb_pwssc": "ndsb_pwssc.csv"}


def load_mapping(path_or_name: str | Path) -> pd.DataFrame:
    if str(path_or_name) in SHIPPED:
        path = resources.files("plankdiff") / "configs" / "mappings" / SHIPPED[str(path_or_name)]
    else:
        path = Path(path_or_name)
    frame = pd.read_csv(path, keep_default_na=False)
    missing = {"dataset", "label", "group"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: mapping file lacks column(s) {sorted(missing)}")
    duplicated = frame[frame.duplicated(["dataset", "label"])]
    if not duplicated.empty:
        row = duplicated.iloc[0]
        raise ValueError(f"{path}: label {row['label']!r} of {row['dataset']!r} is mapped twice")
    return frame


def _groups_for(dataset: PreparedDataset, mapping: pd.DataFrame, key: str) -> np.ndarray:
    table = mapping[mapping["dataset"] == key].set_index("label")["group"]
    return dataset.meta["label"].map(table).fillna("").to_numpy()


def unmapped_labels(dataset: PreparedDataset, mapping: pd.DataFrame, key: str) -> list[str]:
    mapped = set(mapping.loc[mapping["dataset"] == key, "label"])
    return sorted(set(dataset.classes) - mapped)


def cross_domain_splits(
    source: PreparedDataset,
    target: PreparedDataset,
    mapping: pd.DataFrame,
    *,
    source_key: str,
    target_key: str,
    base: Split,
) -> tuple[Split, Split]:
    """Source: the mapped rows of `base`, each kept in the part it has there; target: every mapped
    image as a shifted test set.

    `base` is the partition of the source images that the backbones pre-train on (its train rows),
    so the source validation and test rows are images no backbone saw. A fresh stratification by
    group would put about two thirds of the source test rows into pre-training.
    """
    source_groups, target_groups = (
        _groups_for(source, mapping, source_key),
        _groups_for(target, mapping, target_key),
    )
    shared = sorted((set(source_groups) & set(target_groups)) - {""})
    if not shared:
        raise ValueError(f"no group of the mapping occurs in both {source.name} and {target.name}")
    lookup = {g: i for i, g in enumerate(shared)}

    def encode(groups: np.ndarray) -> np.ndarray:
        return np.array([lookup.get(g, -1) for g in groups], dtype=np.int64)

    source_targets, target_targets = encode(source_groups), encode(target_groups)
    source_rows = {part: rows[source_targets[rows] >= 0] for part, rows in base.rows.items()}
    empty = np.array([], dtype=np.int64)
    target_rows = {"train": empty, "val": empty, "test": np.flatnonzero(target_targets >= 0)}
    name = f"cross-{source_key}-{target_key}-from-{base.name}"
    return (
        Split(name=name, rows=source_rows, targets=source_targets, classes=shared),
        Split(name=name, rows=target_rows, targets=target_targets, classes=shared),
    )
