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

from helpers import read_manifest
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
    for source in ("ndsb", "pwssc", "zoolake"):  # the background ablation's preparations
        base = out[source]
        out[f"{source}-nobg"] = ManifestDataset(f"{source}-nobg", base.meta, base.classes, base.info)
    return out


def leaks(config, stand_ins) -> list[str]:
    """Every (seed, experiment, scored part) whose rows include a training image of its backbone."""
    found = []
    datasets = {k: stand_ins[k] for k in config.dataset_specs}
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


def own_dataset(per_class: dict[str, int]) -> ManifestDataset:
    """A dataset of one's own (not a shipped one): `per_class` images per made-up class."""
    labels = [label for label, n in per_class.items() for _ in range(n)]
    meta = pd.DataFrame({"label": labels, "path": [f"{label}/{i:04d}.png" for i, label in enumerate(labels)]})
    classes = sorted(per_class)
    meta["class_index"] = meta["label"].map({c: i for i, c in enumerate(classes)})
    meta["capture_time"] = ""
    return ManifestDataset("mine", meta, classes, {"source_hash": "sha-of-my-folder"})


OWN = """
name: mine
seeds: [0, 1, 2]
datasets: {mine: {source: my-images}}
pretrain: {mine: {dataset: mine, split: long-tailed}}
experiments: [{pretrain: mine, split: long-tailed}, {pretrain: mine, split: balanced}]
diffusion: {preset: tiny, max_tflops: 1}
baselines: {methods: [simclr], max_tflops: 1}
"""
# A long tail: three classes reach a balanced split's 60 training images, two do not.
LONG_TAIL = {"copepod": 400, "diatom_chain": 150, "marine_snow": 110, "larva": 30, "egg": 4}


@pytest.mark.parametrize(
    "extra",
    ["", "caps: {train: 40, val: 8, test: 10}", "splits: {val_fraction: 0.15, test_fraction: 0.25}"],
    ids=["full", "capped", "other-shares"],
)
def test_no_backbone_scores_its_own_training_images_in_an_experiment_on_ones_own_data(extra, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(OWN + extra)
    config = load_experiment(path)
    datasets = {"mine": own_dataset(LONG_TAIL)}
    assert leaks(config, datasets) == []
    replicate = plan_replicate(config, datasets, 1)
    assert [e.name for e in replicate.experiments] == ["mine/long-tailed", "mine/balanced"]
    assert replicate.headline.name == "mine/long-tailed" and not replicate.skipped
    # The scored long-tailed split is the pre-training partition itself, not one drawn beside it.
    assert replicate.experiments[0].split is replicate.pretrain["mine"][1]
    assert replicate.experiments[1].split.classes == ["copepod", "diatom_chain", "marine_snow"]


def test_the_validation_share_reaches_the_split(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(OWN + "splits: {val_fraction: 0.3, test_fraction: 0.2}")
    split = (
        plan_replicate(load_experiment(path), {"mine": own_dataset({"a": 100, "b": 100})}, 0)
        .experiments[0]
        .split
    )
    assert split.summary() == {"train": 100, "val": 60, "test": 40, "classes": 2}
    assert split.name == "long-tailed-v30t20-s0"


def test_a_balanced_split_the_data_does_not_allow_is_skipped_with_the_reason(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(OWN)
    replicate = plan_replicate(load_experiment(path), {"mine": own_dataset({"a": 50, "b": 40, "c": 9})}, 0)
    assert [e.name for e in replicate.experiments] == ["mine/long-tailed"]
    assert len(replicate.skipped) == 1
    assert (
        replicate.skipped[0].startswith("mine/balanced skipped: ")
        and "60+ training images" in replicate.skipped[0]
    )


def test_the_invariant_catches_an_own_balanced_split_drawn_with_another_seed(tmp_path, monkeypatch):
    """A balanced split re-stratified beside the pre-training partition puts training images in its
    validation and test rows: the invariant must see it on one's own data too."""
    from plankdiff.study import plan

    original = plan.balanced_split
    monkeypatch.setattr(
        plan,
        "balanced_split",
        lambda dataset, *, seed, **options: original(dataset, seed=seed + 1, **options),
    )
    path = tmp_path / "mine.yaml"
    path.write_text(OWN)
    found = leaks(load_experiment(path), {"mine": own_dataset(LONG_TAIL)})
    assert any("mine/balanced" in f and "test" in f for f in found), found


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


EVALUATED = (
    OWN
    + """
evaluations:
  experiments: [mine/long-tailed, mine/balanced]
  processing_shift: {shifts: [jpeg]}
  open_set: {hold_out_every: 2}
"""
)


def test_the_evaluations_scored_sets_are_checked_and_a_leak_in_them_is_caught(tmp_path, monkeypatch):
    """The open set's known and unknown rows and the processing shift's images are scored sets of
    the backbone's dataset; the invariant must see them, and see a leak among them."""
    from plankdiff.data.splits import Split
    from plankdiff.study import plan

    path = tmp_path / "mine.yaml"
    path.write_text(EVALUATED)
    config, datasets = load_experiment(path), {"mine": own_dataset(LONG_TAIL)}
    assert leaks(config, datasets) == []
    names = {entry[0] for entry in plan_replicate(config, datasets, 0).scored_sets()}
    assert {"mine/long-tailed open set", "mine/balanced processing shift"} <= names

    def leaky(split, unknown_rows):  # the held-out classes' training rows as "unknown" test images
        rows = {"train": split.rows["train"][:0], "val": split.rows["val"][:0], "test": split.rows["train"]}
        return Split(f"{split.name}-unknown", rows, split.targets, split.classes)

    monkeypatch.setattr(plan, "unknown_split", leaky)
    assert any("open set" in f and "test" in f for f in leaks(config, datasets))


def test_evaluations_of_an_experiment_the_data_does_not_allow_are_skipped_with_a_warning(tmp_path):
    """`mine/balanced` is an experiment of the file, but too few classes reach the balanced split:
    its evaluations are skipped at planning, with the reason (a misspelt name is refused on loading,
    tests/study/test_config.py)."""
    path = tmp_path / "mine.yaml"
    path.write_text(EVALUATED)
    replicate = plan_replicate(load_experiment(path), {"mine": own_dataset({"a": 30, "b": 30})}, 0)
    assert [e.name for e in replicate.experiments] == ["mine/long-tailed"]
    assert replicate.skipped[-1] == (
        "evaluations of mine/balanced skipped: no such experiment in this study (planned: mine/long-tailed)"
    )


@pytest.mark.parametrize("experiment", SHIPPED)
def test_the_names_a_file_evaluations_may_name_are_the_names_it_plans(experiment, stand_ins):
    """`ExperimentConfig.experiment_names` (what `evaluations.experiments` is checked against on
    loading) lists exactly the experiments `plan_replicate` plans, in its order."""
    config = load_experiment(experiment)
    replicate = plan_replicate(config, {k: stand_ins[k] for k in config.dataset_specs}, config.seeds[0])
    assert [e.name for e in replicate.experiments] == list(config.experiment_names())


def test_the_processing_shift_runs_only_in_the_study_seeds_it_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(EVALUATED.replace("{shifts: [jpeg]}", "{shifts: [jpeg], study_seeds: [1]}"))
    config, datasets = load_experiment(path), {"mine": own_dataset(LONG_TAIL)}
    shifted = {
        seed: [e.name for e in plan_replicate(config, datasets, seed).experiments if e.processing_shift]
        for seed in (0, 1)
    }
    assert shifted == {0: [], 1: ["mine/long-tailed", "mine/balanced"]}
    # the open set is planned in every seed
    assert all(e.open_set is not None for e in plan_replicate(config, datasets, 0).experiments)
    path.write_text(EVALUATED.replace("{shifts: [jpeg]}", "{shifts: [jpeg], study_seeds: [7]}"))
    with pytest.raises(ValueError, match=r"study_seeds \[7\] are not among the study's seeds"):
        load_experiment(path)


# -- issue #19: the background normalisation ablation ------------------------------------------------


def identities(datasets, dataset: str, split, part: str) -> list[int]:
    return sorted(image_ids(datasets[dataset], split.indices(part)).tolist())


def test_the_background_ablation_repeats_its_experiments_on_the_same_images(stand_ins):
    """Every split of an ablated experiment (the backbones' pre-training partition, the probe's
    train/val/test rows, the shifted test set) holds the same images as its normalised counterpart's,
    on the `-nobg` preparations. The stand-ins' preparations list their images in another order, so
    rows equal by position alone would not pass: only a translation by image identity does."""
    config = load_experiment("normalisation")
    datasets = {k: stand_ins[k] for k in config.dataset_specs}
    for key in ("ndsb-nobg", "pwssc-nobg", "zoolake-nobg"):  # the same images, listed in reverse
        base = stand_ins[key]
        meta = base.meta.iloc[::-1].reset_index(drop=True)
        datasets[key] = ManifestDataset(key, meta, base.classes, base.info)
    replicate = plan_replicate(config, datasets, 0)
    by_name = {e.name: e for e in replicate.experiments}
    ablated = [e for e in replicate.experiments if e.ablation_of]
    assert [(e.name, e.ablation_of) for e in ablated] == [
        ("ndsb→pwssc/without background normalisation", "ndsb→pwssc/with polarity normalisation"),
        ("zoolake/2018+2019→2020 without background normalisation", "zoolake/2018+2019→2020"),
    ]
    for experiment in ablated:
        normalised = by_name[experiment.ablation_of]
        assert experiment.dataset == f"{normalised.dataset}-nobg"
        assert experiment.pretrain == f"{normalised.pretrain}-nobg"
        assert replicate.pretrain[experiment.pretrain][0] == experiment.dataset
        for part in ("train", "val", "test"):
            assert identities(datasets, experiment.dataset, experiment.split, part) == identities(
                datasets, normalised.dataset, normalised.split, part
            )
            mine, theirs = (
                replicate.pretrain[experiment.pretrain][1],
                replicate.pretrain[normalised.pretrain][1],
            )
            assert identities(datasets, experiment.dataset, mine, part) == identities(
                datasets, normalised.dataset, theirs, part
            )
        assert len(experiment.shifted) == len(normalised.shifted) == 1
        moved, kept = experiment.shifted[0], normalised.shifted[0]
        assert moved.dataset == f"{kept.dataset}-nobg"
        assert identities(datasets, moved.dataset, moved.split, "test") == identities(
            datasets, kept.dataset, kept.split, "test"
        )
        assert not np.array_equal(experiment.split.indices("test"), normalised.split.indices("test"))
    assert leaks(config, stand_ins) == []


def test_the_switch_off_plans_exactly_what_was_planned_before(stand_ins):
    """The cpu study with the ablation on plans its own experiments and pre-trainings unchanged (the
    same rows, names and datasets, so the same stage keys) and only adds the ablation's."""
    off = load_experiment("cpu").model_copy(update={"seeds": (1,)})
    on = off.model_copy(update={"ablations": off.ablations.model_copy(update={"background": True})})
    planned = {}
    for config in (off, on):
        replicate = plan_replicate(config, {k: stand_ins[k] for k in config.dataset_specs}, 1)
        planned[config.ablations.background] = replicate

    def described(replicate, experiments, pretrain) -> tuple:
        splits = [(k, *replicate.pretrain[k]) for k in pretrain] + [
            (e.name, e.dataset, s) for e in experiments for s in (e.split, *(x.split for x in e.shifted))
        ]
        return tuple(
            (name, dataset, split.name, *(tuple(split.indices(p)) for p in ("train", "val", "test")))
            for name, dataset, split in splits
        )

    before, after = planned[False], planned[True]
    kept = [e for e in after.experiments if e.ablation_of is None]
    assert [e.name for e in kept] == [e.name for e in before.experiments]
    assert list(after.pretrain)[: len(before.pretrain)] == list(before.pretrain)
    assert described(after, kept, before.pretrain) == described(before, before.experiments, before.pretrain)
    assert sorted(set(after.pretrain) - set(before.pretrain)) == ["ndsb-nobg", "zoolake-2018+2019-nobg"]


def test_the_invariant_catches_an_ablated_backbone_that_trained_on_its_test_images(stand_ins, monkeypatch):
    """The ablated experiments are scored sets of their own backbones: a `-nobg` pre-training that
    learned every image (here: every translated split's train part is every row) is caught there."""
    from plankdiff.data.splits import Split
    from plankdiff.study import plan

    original = plan._without_background

    def everything(datasets, dataset, split):
        key, moved = original(datasets, dataset, split)
        rows = dict(moved.rows) | {"train": np.arange(len(datasets[key]))}
        return key, Split(moved.name, rows, moved.targets, moved.classes)

    monkeypatch.setattr(plan, "_without_background", everything)
    config = load_experiment("normalisation")
    found = leaks(config, stand_ins)
    assert found and all("without background normalisation" in f for f in found), found


def test_the_quantification_target_is_every_image_of_the_shift_not_the_capped_test_rows(stand_ins, tmp_path):
    """`evaluations.quantification` on the cpu study (test rows capped at 80 per class): ZooLake's
    target is every 2020 image, of the probe's classes or counted apart; PWSSC's every image."""
    from plankdiff.data.timestamps import parse_capture_times

    config = load_experiment("cpu", overrides=["evaluations.quantification={}"])
    replicate = plan_replicate(config, {k: stand_ins[k] for k in config.dataset_specs}, 0)
    quantified = {e.name: e for e in replicate.experiments if e.quantification is not None}
    assert set(quantified) == {"zoolake/2018+2019→2020", "ndsb→pwssc/with polarity normalisation"}
    zoolake = quantified["zoolake/2018+2019→2020"]
    target, capped = zoolake.quantification, zoolake.shifted[0].split
    years = parse_capture_times(stand_ins["zoolake"].meta["capture_time"]).dt.year.to_numpy()
    in_2020 = np.flatnonzero(years == 2020)
    assert np.array_equal(np.sort(np.concatenate([target.split.indices("test"), target.other])), in_2020)
    assert set(capped.indices("test")) < set(target.split.indices("test"))  # the capped rows, and more
    per_class = np.bincount(target.split.labels("test"), minlength=len(target.split.classes))
    assert per_class.max() > 80 >= np.bincount(capped.labels("test")).max()
    assert target.split.classes == zoolake.split.classes
    labels = stand_ins["zoolake"].meta["label"].to_numpy()
    assert not set(labels[target.other]) & set(target.split.classes) and len(target.other) > 0
    pwssc = quantified["ndsb→pwssc/with polarity normalisation"].quantification
    assert len(pwssc.split.indices("test")) + len(pwssc.other) == len(stand_ins["pwssc"])
    assert {"Blob", "Unknown"} <= set(stand_ins["pwssc"].meta["label"].to_numpy()[pwssc.other])
    assert not replicate.skipped


def test_the_quantification_of_an_experiment_the_study_does_not_run_is_skipped_with_a_warning(stand_ins):
    config = load_experiment("cpu", overrides=["experiments=[ndsb-pwssc]", "evaluations.quantification={}"])
    replicate = plan_replicate(config, {k: stand_ins[k] for k in config.used_datasets}, 0)
    assert [e.name for e in replicate.experiments if e.quantification is not None] == [
        "ndsb→pwssc/with polarity normalisation"
    ]
    skipped = [s for s in replicate.skipped if s.startswith("quantification")]
    assert len(skipped) == 1
    assert skipped[0].startswith("quantification of zoolake/2018+2019→2020 skipped: no such experiment")
    config = load_experiment(
        "cpu",
        overrides=["experiments=[ndsb]", "evaluations.quantification={experiments: [ndsb/long-tailed]}"],
    )
    replicate = plan_replicate(config, {k: stand_ins[k] for k in config.used_datasets}, 0)
    assert all(e.quantification is None for e in replicate.experiments)
    assert [s for s in replicate.skipped if s.startswith("quantification")] == [
        "quantification of ndsb/long-tailed skipped: it has no shifted target population "
        "(only the ZooLake temporal and NDSB → PWSSC experiments have one)"
    ]
