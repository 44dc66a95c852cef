"""What a study trains and scores, as typed objects, computed without training anything.

One replicate per study seed: its own partition (when `vary_partition`), its own backbones (the
seed sets their initial weights and data order) and its own probe seed. Every scored split is
derived from the partition its backbones trained on, never re-drawn beside it:

- `ndsb/long-tailed` is the pre-training split itself; `ndsb/balanced` caps the same stratified
  assignment (same seed), so its validation and test rows are validation and test rows there;
- ZooLake's in-period test is carved out of the training years before pre-training
  (`in_and_out_of_period`), and the backbones train on what is left;
- NDSB → PWSSC keeps every mapped NDSB row in the part it has in the pre-training split
  (translated by image identity to the preparation without polarity normalisation).

`scored_sets` lists every (backbone, scored rows) pair, which the invariant test checks for every
shipped experiment file.
"""

from __future__ import annotations

from dataclasses import dataclass

from plankdiff.data.mapping import cross_domain_splits, load_mapping
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import (
    Split,
    balanced_split,
    cap_per_class,
    in_and_out_of_period,
    long_tailed_split,
    temporal_split,
    translate,
)
from plankdiff.study.config import ExperimentConfig, Family, PretrainSpec


@dataclass(frozen=True)
class ShiftedSet:
    """A test set under shift: the rows of `split`'s test part on dataset `dataset`."""

    dataset: str
    split: Split


@dataclass(frozen=True)
class Experiment:
    """One probed setting: a backbone pre-training, the split its probe is fitted, selected and
    tested on, and the shifted test sets the same probe is applied to."""

    name: str  # e.g. "ndsb/long-tailed", "zoolake/2018+2019→2020"
    family: Family
    dataset: str
    pretrain: str
    split: Split
    shifted: tuple[ShiftedSet, ...] = ()

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_").replace("→", "-to-").replace(" ", "_")


@dataclass(frozen=True)
class Replicate:
    """Everything one study seed trains and scores."""

    seed: int
    pretrain: dict[str, tuple[str, Split]]  # pretrain key → (dataset key, split whose train rows it learns)
    experiments: tuple[Experiment, ...]

    def scored_sets(self) -> list[tuple[str, str, str, Split, str]]:
        """(experiment, pretrain key, dataset key, split, part) for every part a probe selects or tests on."""
        out = []
        for experiment in self.experiments:
            for part in ("val", "test"):
                out.append((experiment.name, experiment.pretrain, experiment.dataset, experiment.split, part))
            for shifted in experiment.shifted:
                out.append((experiment.name, experiment.pretrain, shifted.dataset, shifted.split, "test"))
        return out


def partition_seed(config: ExperimentConfig, seed: int) -> int:
    return seed if config.vary_partition else 0


def _cap(config: ExperimentConfig, split: Split, seed: int) -> Split:
    return cap_per_class(split, config.caps.model_dump(), seed=seed) if config.caps else split


def _years(kind: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    train, test = kind.removeprefix("temporal:").split("-")
    return tuple(int(y) for y in train.split("+")), tuple(int(y) for y in test.split("+"))


def _temporal(
    config: ExperimentConfig, dataset: PreparedDataset, kind: str, seed: int
) -> tuple[Split, Split]:
    train_years, test_years = _years(kind)
    temporal = temporal_split(dataset, train_years=train_years, test_years=test_years, seed=seed)
    return in_and_out_of_period(_cap(config, temporal, seed), seed=seed)


def pretrain_split(
    config: ExperimentConfig, spec: PretrainSpec, dataset: PreparedDataset, seed: int
) -> Split:
    """The partition whose train rows a backbone learns from (validated kinds only)."""
    if spec.split == "long-tailed":
        return _cap(config, long_tailed_split(dataset, seed=seed), seed)
    return _temporal(config, dataset, spec.split, seed)[0]


def plan_replicate(config: ExperimentConfig, datasets: dict[str, PreparedDataset], seed: int) -> Replicate:
    s = partition_seed(config, seed)
    pretrain = {
        key: (spec.dataset, pretrain_split(config, spec, datasets[spec.dataset], s))
        for key, spec in config.pretrain.items()
    }
    experiments: list[Experiment] = []
    families = config.experiments
    ndsb_key = next((k for k, spec in config.pretrain.items() if spec.dataset == "ndsb"), None)
    if "ndsb" in families:
        long_tailed = pretrain[ndsb_key][1]
        balanced = _cap(config, balanced_split(datasets["ndsb"], seed=s), s)
        experiments += [
            Experiment("ndsb/long-tailed", "ndsb", "ndsb", ndsb_key, long_tailed),
            Experiment("ndsb/balanced", "ndsb", "ndsb", ndsb_key, balanced),
        ]
    if "zoolake" in families:
        for key, spec in config.pretrain.items():
            if spec.dataset != "zoolake":
                continue
            within, across = _temporal(config, datasets["zoolake"], spec.split, s)
            train_years, test_years = _years(spec.split)
            name = f"zoolake/{'+'.join(map(str, train_years))}→{'+'.join(map(str, test_years))}"
            experiments.append(
                Experiment(name, "zoolake", "zoolake", key, within, (ShiftedSet("zoolake", across),))
            )
    if "ndsb-pwssc" in families:
        mapping = load_mapping("ndsb_pwssc")
        base = pretrain[ndsb_key][1]
        for suffix, polarity in (("", "with"), ("-nopol", "without")):
            source, target = f"ndsb{suffix}", f"pwssc{suffix}"
            if source not in datasets or target not in datasets:
                continue
            partition = base if not suffix else translate(base, datasets["ndsb"], datasets[source])
            source_split, target_split = cross_domain_splits(
                datasets[source],
                datasets[target],
                mapping,
                source_key="ndsb",
                target_key="pwssc",
                base=partition,
            )
            experiments.append(
                Experiment(
                    f"ndsb→pwssc/{polarity} polarity normalisation",
                    "ndsb-pwssc",
                    source,
                    ndsb_key,
                    _cap(config, source_split, s),
                    (ShiftedSet(target, _cap(config, target_split, s)),),
                )
            )
    return Replicate(seed=seed, pretrain=pretrain, experiments=tuple(experiments))


__all__ = ["Experiment", "Replicate", "ShiftedSet", "partition_seed", "plan_replicate", "pretrain_split"]
