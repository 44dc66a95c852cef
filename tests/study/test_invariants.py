"""The study's trust invariant, checked on every shipped experiment file without training anything:
for every replicate, no image a backbone pre-trains on is in any validation or test rows that a
probe built on that backbone selects or reports on (including shifted test sets and the other
preparations of the same source).

The datasets are stand-ins read from the shared zips' manifests (labels, paths, capture times):
the same rows and labels the planning functions see on a prepared dataset, without decoding
30,000 images per test run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import read_manifest
from plankdiff.data.lineage import image_ids
from plankdiff.data.timestamps import capture_time
from plankdiff.study.config import SHIPPED, load_experiment
from plankdiff.study.plan import plan_replicate


@dataclass
class ManifestDataset:
    """What the planning code reads of a PreparedDataset, built from a shared zip's manifest."""

    name: str
    meta: pd.DataFrame
    classes: list[str]
    info: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.name)

    @property
    def labels(self) -> np.ndarray:
        return self.meta["class_index"].to_numpy()

    def __len__(self) -> int:
        return len(self.meta)


def manifest_dataset(archive: Path, name: str, key: str) -> ManifestDataset:
    rows = read_manifest(archive, name)
    meta = pd.DataFrame(rows)
    classes = sorted(set(meta["label"]))
    meta["class_index"] = meta["label"].map({c: i for i, c in enumerate(classes)})
    times = [capture_time(p) for p in meta["path"]]
    meta["capture_time"] = [t.isoformat() if t else "" for t in times]
    # Preparations of one source share its hash: image identities are the same across them.
    return ManifestDataset(key, meta, classes, {"source_hash": f"sha-of-{archive.name}"})


@pytest.fixture(scope="module")
def stand_ins(shared_datasets: Path) -> dict[str, ManifestDataset]:
    out = {}
    for source in ("ndsb", "zoolake", "pwssc"):
        out[source] = manifest_dataset(shared_datasets / f"{source}.zip", source, source)
    for source in ("ndsb", "pwssc"):
        base = out[source]
        out[f"{source}-nopol"] = ManifestDataset(f"{source}-nopol", base.meta, base.classes, base.info)
    return out


def leaks(config, stand_ins) -> list[str]:
    """Every (seed, experiment, scored part) whose rows include a training image of its backbone."""
    found = []
    datasets = {k: stand_ins[k] for k in config.datasets}
    for seed in config.seeds:
        replicate = plan_replicate(config, datasets, seed)
        trained = {
            key: image_ids(datasets[dataset], split.indices("train"))
            for key, (dataset, split) in replicate.pretrain.items()
        }
        for experiment, pretrain, dataset, split, part in replicate.scored_sets():
            rows = split.indices(part)
            assert len(rows) > 0, f"seed {seed}, {experiment}: no {part} rows"
            seen = np.isin(image_ids(datasets[dataset], rows), trained[pretrain]).sum()
            if seen:
                found.append(
                    f"seed {seed}, {experiment}, {dataset} {split.name} {part}: {seen} training images"
                )
    return found


@pytest.mark.parametrize("experiment", SHIPPED)
def test_no_backbone_scores_its_own_training_images_in_any_shipped_experiment(experiment, stand_ins):
    config = load_experiment(experiment)
    assert leaks(config, stand_ins) == []


def test_the_invariant_catches_a_source_split_drawn_beside_the_pretraining_partition(stand_ins, monkeypatch):
    """The old NDSB → PWSSC split re-stratified NDSB by group: the invariant must see that leak."""
    from plankdiff.data import splits
    from plankdiff.study import plan

    def redrawn(source, target, mapping, *, source_key, target_key, base):
        from plankdiff.data.mapping import _groups_for

        groups = _groups_for(source, mapping, source_key)
        shared = sorted((set(groups) & set(_groups_for(target, mapping, target_key))) - {""})
        targets = np.array([shared.index(g) if g in shared else -1 for g in groups])
        rows = splits._stratify(targets, np.flatnonzero(targets >= 0), splits.DEFAULT_FRACTIONS, 0)
        source_split = splits.Split("redrawn", rows, targets, shared)
        empty = np.array([], dtype=np.int64)
        target_targets = np.zeros(len(target), dtype=np.int64)
        target_split = splits.Split(
            "redrawn", {"train": empty, "val": empty, "test": np.arange(10)}, target_targets, shared
        )
        return source_split, target_split

    monkeypatch.setattr(plan, "cross_domain_splits", redrawn)
    config = load_experiment("cpu").model_copy(update={"experiments": ("ndsb-pwssc",), "seeds": (0,)})
    found = leaks(config, stand_ins)
    assert any("ndsb→pwssc" in f and "test" in f for f in found), found


def test_the_invariant_catches_validation_redrawn_from_train_for_a_new_seed(stand_ins, monkeypatch):
    """The old `reseed` redrew a seed's validation rows from the seed-0 train rows the backbones had
    learned; with one backbone per seed and that redraw, the invariant must fail."""
    from plankdiff.study import plan

    original = plan.pretrain_split

    def shared_backbone(config, spec, dataset, seed):
        return original(config, spec, dataset, 0)  # every replicate's backbone trains on seed 0's rows

    monkeypatch.setattr(plan, "pretrain_split", shared_backbone)
    config = load_experiment("compare").model_copy(update={"seeds": (1,)})
    assert any("val" in f for f in leaks(config, stand_ins))
