"""Splits: stratified fractions, tiny classes, balanced caps, temporal sides, cross-domain mapping."""

from __future__ import annotations

import csv
import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import fake_prepared
from plankdiff.data.mapping import cross_domain_splits, load_mapping, unmapped_labels
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import (
    SPLITS,
    Split,
    balanced_split,
    cap_per_class,
    in_and_out_of_period,
    long_tailed_split,
    temporal_split,
    translate,
)


def counts(split: Split, part: str) -> dict[str, int]:
    labels, n = np.unique(split.labels(part), return_counts=True)
    return {split.classes[label]: int(k) for label, k in zip(labels, n, strict=True)}


def assert_partition(split: Split, n_rows: int | None = None) -> None:
    parts = [set(split.indices(s).tolist()) for s in SPLITS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not parts[i] & parts[j], f"{SPLITS[i]} and {SPLITS[j]} share rows"
    if n_rows is not None:
        assert set().union(*parts) == set(range(n_rows))


@pytest.fixture
def long_tailed(tmp_path) -> PreparedDataset:
    labels = ["copepod"] * 100 + ["diatom"] * 50 + ["ostracod"] * 20
    return fake_prepared(tmp_path / "lt", list(np.random.default_rng(1).permutation(labels)))


# -- long-tailed -----------------------------------------------------------------------------------


def test_long_tailed_fractions_per_class(long_tailed):
    split = long_tailed_split(long_tailed, seed=0)
    assert split.name == "long-tailed-s0"
    assert split.classes == ["copepod", "diatom", "ostracod"]
    assert counts(split, "train") == {"copepod": 70, "diatom": 35, "ostracod": 14}
    assert counts(split, "val") == {"copepod": 10, "diatom": 5, "ostracod": 2}
    assert counts(split, "test") == {"copepod": 20, "diatom": 10, "ostracod": 4}
    assert_partition(split, len(long_tailed))
    # Targets are the dataset's own labels.
    np.testing.assert_array_equal(split.targets, long_tailed.labels)
    assert split.summary() == {"train": 119, "val": 17, "test": 34, "classes": 3}


def test_long_tailed_is_seeded(long_tailed):
    first, again = long_tailed_split(long_tailed, seed=3), long_tailed_split(long_tailed, seed=3)
    other = long_tailed_split(long_tailed, seed=4)
    for part in SPLITS:
        np.testing.assert_array_equal(first.indices(part), again.indices(part))
    assert not np.array_equal(first.indices("test"), other.indices("test"))
    assert counts(first, "test") == counts(other, "test")


def test_tiny_classes_go_to_train_with_a_warning(tmp_path):
    labels = ["copepod"] * 10 + ["single"] + ["pair"] * 2 + ["triple"] * 3
    dataset = fake_prepared(tmp_path / "tiny", labels)
    with pytest.warns(UserWarning, match=r"2 class\(es\) have fewer than 3 images and go to train only"):
        split = long_tailed_split(dataset)
    assert counts(split, "train") == {"copepod": 7, "pair": 2, "single": 1, "triple": 1}
    assert counts(split, "val") == {"copepod": 1, "triple": 1}
    assert counts(split, "test") == {"copepod": 2, "triple": 1}
    assert split.classes == ["copepod", "pair", "single", "triple"]
    assert_partition(split, len(labels))


def test_no_warning_without_tiny_classes(long_tailed):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        long_tailed_split(long_tailed)


def test_long_tailed_on_the_real_subset(ndsb_copy):
    split = long_tailed_split(ndsb_copy, seed=0)
    for label in ndsb_copy.classes:  # 12 images: 2 test, 1 val, 9 train
        assert counts(split, "train")[label] == 9
        assert counts(split, "val")[label] == 1
        assert counts(split, "test")[label] == 2
    assert_partition(split, 48)


# -- balanced --------------------------------------------------------------------------------------


def test_balanced_keeps_big_classes_and_caps_them(tmp_path):
    labels = ["a"] * 200 + ["b"] * 100 + ["c"] * 50 + ["d"] * 10
    dataset = fake_prepared(tmp_path / "bal", labels)
    split = balanced_split(dataset, seed=0, min_train=30, cap=40)
    # train counts before capping: a 140, b 70, c 35, d 7 (< 30: dropped).
    assert split.classes == ["a", "b", "c"]
    assert counts(split, "train") == {"a": 40, "b": 40, "c": 35}
    # val / test caps in proportion: round(40 × 1/7) = 6, round(40 × 2/7) = 11.
    assert counts(split, "val") == {"a": 6, "b": 6, "c": 5}
    assert counts(split, "test") == {"a": 11, "b": 11, "c": 10}
    assert_partition(split)
    assert (split.targets[np.array(labels) == "d"] == -1).all()
    kept = np.concatenate([split.indices(s) for s in SPLITS])
    assert set(np.array(labels)[kept]) == {"a", "b", "c"}
    # Capped rows are a subset of the long-tailed assignment with the same seed.
    base = long_tailed_split(dataset, seed=0)
    for part in SPLITS:
        assert set(split.indices(part)) <= set(base.indices(part))


def test_balanced_without_any_big_enough_class_says_so(ndsb_copy):
    with pytest.raises(
        ValueError, match=r"needs 2 classes with 60\+ training images, this data has 0 \(largest: 9\)"
    ):
        balanced_split(ndsb_copy)  # 12 images per class: none reaches 60 training images


# -- temporal --------------------------------------------------------------------------------------


def stamp(year: int, day: int) -> str:
    return f"{year}-06-{day:02d}T12:00:00+00:00"


@pytest.fixture
def timed(tmp_path) -> PreparedDataset:
    rows = (
        [("asplanchna", stamp(2018, d % 28 + 1)) for d in range(25)]
        + [("asplanchna", stamp(2020, d % 28 + 1)) for d in range(22)]
        + [("asplanchna", "")] * 4  # clock not set: on neither side
        + [("bosmina", stamp(2019, d % 28 + 1)) for d in range(30)]
        + [("bosmina", stamp(2020, 1))] * 5  # too few on the test side
        + [("uroglena", stamp(2020, 2))] * 30  # test side only
        + [("daphnia", stamp(2021, 3))] * 30  # neither side
    )
    return fake_prepared(tmp_path / "timed", [r[0] for r in rows], [r[1] for r in rows])


def test_temporal_split_keeps_classes_seen_on_both_sides(timed):
    split = temporal_split(timed, train_years=(2018, 2019), test_years=(2020,), min_per_side=20)
    assert split.name == "temporal-2018+2019-to-2020-s0"
    assert split.classes == ["asplanchna"]
    years = pd.to_datetime(timed.meta["capture_time"].replace("", None), utc=True).dt.year
    assert set(years[split.indices("test")]) == {2020}
    assert set(years[np.concatenate([split.indices("train"), split.indices("val")])]) == {2018}
    assert len(split.indices("test")) == 22
    assert (len(split.indices("train")), len(split.indices("val"))) == (22, 3)  # 12.5 % of 25 → 3
    assert set(timed.meta["label"][np.concatenate([split.indices(s) for s in SPLITS])]) == {"asplanchna"}
    assert_partition(split)


def test_a_temporal_split_with_another_validation_share_is_named_apart(timed):
    """`data split --kind temporal --val-fraction`: never written over the default partition's file."""
    split = temporal_split(timed, train_years=(2018, 2019), test_years=(2020,), val_fraction=0.2)
    assert split.name == "temporal-2018+2019-to-2020-v20-s0"
    assert (len(split.indices("train")), len(split.indices("val"))) == (20, 5)


def test_temporal_split_with_a_lower_threshold_keeps_more(timed):
    split = temporal_split(timed, train_years=(2018, 2019), test_years=(2020,), min_per_side=5)
    assert split.classes == ["asplanchna", "bosmina"]
    assert counts(split, "test") == {"asplanchna": 22, "bosmina": 5}


def test_temporal_split_without_shared_classes_is_an_error(timed):
    with pytest.raises(ValueError, match="no class has 40\\+ images in both"):
        temporal_split(timed, train_years=(2018, 2019), test_years=(2020,), min_per_side=40)


def test_in_and_out_of_period_share_train_and_val_and_differ_only_in_test(timed):
    split = temporal_split(timed, train_years=(2018, 2019), test_years=(2020,), min_per_side=5)
    within, across = in_and_out_of_period(split, fraction=0.2, seed=0)
    assert (within.name, across.name) == (f"{split.name}-within", f"{split.name}-across")
    for part in ("train", "val"):
        np.testing.assert_array_equal(within.indices(part), across.indices(part))
    np.testing.assert_array_equal(within.indices("val"), split.indices("val"))
    # Under shift: the later period's test rows, unchanged.
    np.testing.assert_array_equal(across.indices("test"), split.indices("test"))
    # In period: held-out training-period images that no longer train the probe (or a backbone).
    held_out, train = set(within.indices("test")), set(within.indices("train"))
    assert held_out <= set(split.indices("train")) and not held_out & train
    assert held_out | train == set(split.indices("train"))
    assert_partition(within)
    assert_partition(across)
    # Training side: asplanchna 25 (val round(3.125) = 3, train 22), bosmina 30 (val round(3.75) = 4,
    # train 26); 20 % of each class's train rows held out: round(4.4) = 4 and round(5.2) = 5.
    assert counts(split, "train") == {"asplanchna": 22, "bosmina": 26}
    assert counts(within, "test") == {"asplanchna": 4, "bosmina": 5}
    assert counts(within, "train") == {"asplanchna": 18, "bosmina": 21}
    np.testing.assert_array_equal(within.targets, split.targets)


def test_in_and_out_of_period_is_seeded(timed):
    split = temporal_split(timed, train_years=(2018, 2019), test_years=(2020,), min_per_side=5)
    first, again = in_and_out_of_period(split, seed=1)[0], in_and_out_of_period(split, seed=1)[0]
    other = in_and_out_of_period(split, seed=2)[0]
    np.testing.assert_array_equal(first.indices("test"), again.indices("test"))
    assert not np.array_equal(first.indices("test"), other.indices("test"))


# -- caps per class --------------------------------------------------------------------------------


def test_cap_per_class_caps_each_class_in_each_part_within_the_original_part(long_tailed):
    split = long_tailed_split(long_tailed, seed=0)  # train 70/35/14, val 10/5/2, test 20/10/4
    capped = cap_per_class(split, {"train": 20, "val": 3, "test": 5}, seed=0)
    assert capped.name == "long-tailed-s0-cap20" and capped.classes == split.classes
    # Classes above a cap are cut to it; smaller ones keep every row.
    assert counts(capped, "train") == {"copepod": 20, "diatom": 20, "ostracod": 14}
    assert counts(capped, "val") == {"copepod": 3, "diatom": 3, "ostracod": 2}
    assert counts(capped, "test") == {"copepod": 5, "diatom": 5, "ostracod": 4}
    for part in SPLITS:
        assert set(capped.indices(part)) <= set(split.indices(part)), f"{part} gained rows"
    np.testing.assert_array_equal(capped.targets, split.targets)
    assert_partition(capped)


def test_cap_per_class_leaves_an_uncapped_part_whole(long_tailed):
    split = long_tailed_split(long_tailed, seed=0)
    capped = cap_per_class(split, {"train": 5}, seed=0)
    assert counts(capped, "train") == {"copepod": 5, "diatom": 5, "ostracod": 5}
    for part in ("val", "test"):
        np.testing.assert_array_equal(capped.indices(part), split.indices(part))


def test_cap_per_class_is_deterministic_per_seed_and_differs_across_seeds(long_tailed):
    split = long_tailed_split(long_tailed, seed=0)
    caps = {"train": 10, "val": 3, "test": 5}
    first, again, other = (cap_per_class(split, caps, seed=s) for s in (4, 4, 5))
    for part in SPLITS:
        np.testing.assert_array_equal(first.indices(part), again.indices(part))
    assert not np.array_equal(first.indices("train"), other.indices("train"))
    assert counts(first, "train") == counts(other, "train")


# -- translate to another preparation of the same source -------------------------------------------


def test_translate_moves_each_image_to_its_row_in_the_other_preparation(tmp_path):
    labels = ["copepod"] * 20 + ["diatom"] * 10
    paths = [f"{label}/img{i:02d}.png" for i, label in enumerate(labels)]
    source = fake_prepared(tmp_path / "pol", labels, paths=paths)
    # The other preparation lists the images in another order and skipped one (unreadable there).
    order = [i for i in np.random.default_rng(0).permutation(len(labels)) if i != 3]
    target = fake_prepared(tmp_path / "nopol", [labels[i] for i in order], paths=[paths[i] for i in order])
    split = long_tailed_split(source, seed=0)
    moved = translate(split, source, target)
    assert moved.name == split.name and moved.classes == split.classes
    part_of = {paths[r]: part for part in SPLITS for r in split.indices(part)}
    for part in SPLITS:
        # Matched by path: the same images in the same part, the skipped one in none.
        got = [target.meta["path"][r] for r in moved.indices(part)]
        assert sorted(got) == sorted(p for p, q in part_of.items() if q == part and p != paths[3])
        assert list(moved.indices(part)) == sorted(moved.indices(part))
        names = [moved.classes[t] for t in moved.labels(part)]
        assert names == [p.split("/")[0] for p in got], "an image changed class"
    assert sum(len(moved.indices(part)) for part in SPLITS) == len(labels) - 1
    assert_partition(moved, len(target))


def test_translate_refuses_a_preparation_of_another_source(tmp_path):
    labels = ["a"] * 5 + ["b"] * 5
    source = fake_prepared(tmp_path / "one", labels, source_hash="one")
    other = fake_prepared(tmp_path / "two", labels, source_hash="two")
    with pytest.raises(ValueError, match="prepared from another source"):
        translate(long_tailed_split(source), source, other)


# -- cross-domain ----------------------------------------------------------------------------------


def manifest_labels(archive: Path, name: str) -> set[str]:
    with zipfile.ZipFile(archive) as source:
        text = source.read(f"{name}/manifest.csv").decode("utf-8")
    return {row["label"] for row in csv.DictReader(io.StringIO(text))}


def test_shipped_mapping_matches_the_real_datasets(shared_datasets):
    mapping = load_mapping("ndsb_pwssc")
    assert list(mapping.columns) == ["dataset", "label", "group"]
    assert set(mapping["dataset"]) == {"ndsb", "pwssc"}
    assert mapping["group"].nunique() == 13
    assert not mapping.duplicated(["dataset", "label"]).any()
    # Every group has members on both sides, else it cannot be evaluated across domains.
    assert mapping.groupby("group")["dataset"].nunique().eq(2).all()
    for key in ("ndsb", "pwssc"):
        mapped = set(mapping.loc[mapping["dataset"] == key, "label"])
        missing = mapped - manifest_labels(shared_datasets / f"{key}.zip", key)
        assert not missing, f"{key} labels in the mapping but not in {key}.zip: {sorted(missing)}"
    left_out = {"Blob", "Unknown", "Dot", "Filament", "Spiral", "Cnidaria", "Nauplius"}
    assert not left_out & set(mapping.loc[mapping["dataset"] == "pwssc", "label"])


def test_mapping_file_errors(tmp_path):
    twice = tmp_path / "twice.csv"
    twice.write_text("dataset,label,group\nndsb,a,copepod\nndsb,a,detritus\n")
    with pytest.raises(ValueError, match="'a' of 'ndsb' is mapped twice"):
        load_mapping(twice)
    columns = tmp_path / "columns.csv"
    columns.write_text("dataset,label\nndsb,a\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['group'\]"):
        load_mapping(columns)


def test_cross_domain_splits(tmp_path):
    mapping = load_mapping("ndsb_pwssc")
    source = fake_prepared(
        tmp_path / "ndsb",
        ["copepod_calanoid"] * 10
        + ["copepod_other"] * 10
        + ["chaetognath_sagitta"] * 10
        + ["tunicate_doliolid"] * 10  # mapped, but no doliolid in the target
        + ["fish_larvae_myctophids"] * 10,  # not mapped
    )
    target = fake_prepared(tmp_path / "pwssc", ["Acartia"] * 6 + ["Blob"] * 7 + ["Parasagitta"] * 5)
    assert unmapped_labels(source, mapping, "ndsb") == ["fish_larvae_myctophids"]
    assert unmapped_labels(target, mapping, "pwssc") == ["Blob"]
    base = long_tailed_split(source, seed=0)  # the partition the backbones pre-train on
    source_split, target_split = cross_domain_splits(
        source, target, mapping, source_key="ndsb", target_key="pwssc", base=base
    )
    assert source_split.classes == target_split.classes == ["chaetognath", "copepod"]
    assert source_split.name == target_split.name == "cross-ndsb-pwssc-from-long-tailed-s0"
    used = np.concatenate([source_split.indices(s) for s in SPLITS])
    assert sorted(used) == list(range(30))  # copepods and chaetognaths only
    assert_partition(source_split)
    # Every mapped image keeps its part of the pre-training partition: no backbone training row
    # reaches the source validation or test rows.
    for part in SPLITS:
        np.testing.assert_array_equal(source_split.indices(part), base.indices(part)[base.indices(part) < 30])
    assert counts(source_split, "test") == {"copepod": 4, "chaetognath": 2}
    assert len(target_split.indices("train")) == len(target_split.indices("val")) == 0
    test_labels = np.array(target.meta["label"])[target_split.indices("test")]
    assert sorted(set(test_labels)) == ["Acartia", "Parasagitta"]
    assert len(test_labels) == 11
    assert counts(target_split, "test") == {"copepod": 6, "chaetognath": 5}


# -- saving ----------------------------------------------------------------------------------------


def test_split_save_load_round_trip(ndsb_copy):
    split = long_tailed_split(ndsb_copy, seed=2)
    path = split.save(ndsb_copy)
    assert path == ndsb_copy.root / "splits" / "long-tailed-s2.csv"
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["row", "split", "target"]
    assert len(frame) == 48
    loaded = Split.load(ndsb_copy, "long-tailed-s2")
    assert loaded.classes == split.classes
    np.testing.assert_array_equal(loaded.targets, split.targets)
    for part in SPLITS:
        np.testing.assert_array_equal(loaded.indices(part), split.indices(part))
        np.testing.assert_array_equal(loaded.labels(part), split.labels(part))


def test_round_trip_of_a_split_that_leaves_rows_out(tmp_path):
    labels = ["a"] * 200 + ["b"] * 100 + ["d"] * 10
    dataset = fake_prepared(tmp_path / "bal", labels)
    split = balanced_split(dataset, seed=0, min_train=30, cap=40)
    split.save(dataset)
    loaded = Split.load(dataset, split.name)
    np.testing.assert_array_equal(loaded.targets, split.targets)
    assert (loaded.targets == -1).sum() == 310 - 2 * 57
    assert loaded.summary() == split.summary()


def test_loading_a_missing_split_names_the_command(ndsb_copy):
    with pytest.raises(FileNotFoundError, match="plankdiff data split"):
        Split.load(ndsb_copy, "nope")
