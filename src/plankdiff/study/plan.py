"""What a study trains and scores, as typed objects, computed without training anything.

One replicate per study seed: its own partition (when `vary_partition`), its own backbones (the
seed sets their initial weights and data order) and its own probe seed. Every scored split is
derived from the partition its backbones trained on, never re-drawn beside it:

- `ndsb/long-tailed` is the pre-training split itself; `ndsb/balanced` caps the same stratified
  assignment (same seed), so its validation and test rows are validation and test rows there;
- ZooLake's in-period test is carved out of the training years before pre-training
  (`in_and_out_of_period`), and the backbones train on what is left;
- NDSB → PWSSC keeps every mapped NDSB row in the part it has in the pre-training split
  (translated by image identity to the preparation without polarity normalisation);
- the background ablation (`ablations: {background: true}`) repeats the NDSB → PWSSC and ZooLake
  2018+2019 → 2020 experiments on the preparations without background normalisation: every split
  of theirs (the backbones' pre-training partition, the probe's split, the shifted test set) is
  the normalised experiment's, translated by image identity, so both read the same images;
- an experiment on one's own data (`OwnExperiment`) is planned like NDSB's: `<dataset>/long-tailed`
  is its pre-training split, `<dataset>/balanced` caps the same assignment (skipped, with a
  warning in `Replicate.skipped`, when fewer than 2 classes have enough training images).

`evaluations.quantification` gives the experiments it names a `QuantificationTarget`: the
population of their shifted set without the per-class caps (every image of the ZooLake test years,
every PWSSC image), split into the probe's classes and the rest.

Label efficiency, k-means and the t-SNE figure are read on `Replicate.headline`, the first
long-tailed experiment (`ndsb/long-tailed` in the shipped studies).

`scored_sets` lists every (backbone, scored rows) pair, which the invariant test checks for every
shipped experiment file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from plankdiff.data.mapping import cross_domain_splits, load_mapping
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import (
    Split,
    TooFewClasses,
    balanced_split,
    cap_per_class,
    in_and_out_of_period,
    long_tailed_split,
    temporal_split,
    translate,
)
from plankdiff.data.timestamps import parse_capture_times
from plankdiff.probe.ood import held_out_classes, open_set_split, unknown_split
from plankdiff.study.config import (
    ABLATED,
    NDSB_EXPERIMENTS,
    NOBG,
    NOPOL,
    ExperimentConfig,
    Family,
    PretrainSpec,
    ablated_name,
    cross_domain_name,
    zoolake_name,
)

# What an experiment's scored split is, whatever its family.
Kind = Literal["long-tailed", "balanced", "temporal", "cross-domain"]


@dataclass(frozen=True)
class ShiftedSet:
    """A test set under shift: the rows of `split`'s test part on dataset `dataset`."""

    dataset: str
    split: Split


@dataclass(frozen=True, kw_only=True)
class OpenSet:
    """An experiment's split without its held-out classes (`known`: the probe is fitted, selected
    and tested there) and the held-out classes' test rows (`unknown`: the images to reject)."""

    held_out: tuple[str, ...]
    known: Split
    unknown: Split


@dataclass(frozen=True, kw_only=True)
class QuantificationTarget:
    """Every image of an experiment's shifted target population (ZooLake: every image of the test
    years; PWSSC: every image), uncapped: `split`'s test rows are those of the probe's classes,
    `other` the rows of classes it does not know (counted apart, never in a composition)."""

    dataset: str
    split: Split
    other: np.ndarray


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """One probed setting: a backbone pre-training, the split its probe is fitted, selected and
    tested on, and the shifted test sets the same probe is applied to."""

    name: str  # e.g. "ndsb/long-tailed", "zoolake/2018+2019→2020", "mine/balanced"
    family: Family | Literal["own"]
    kind: Kind
    dataset: str
    pretrain: str
    split: Split
    shifted: tuple[ShiftedSet, ...] = ()
    # Evaluations (`ExperimentConfig.evaluations`): shifted copies of this split's test images,
    # built from the raw files of `dataset`'s source; and the open-set experiment on this split.
    processing_shift: bool = False
    open_set: OpenSet | None = None
    # Counting under the shift (`evaluations.quantification`) on the uncapped shifted target.
    quantification: QuantificationTarget | None = None
    # The background ablation: the name of the experiment this one repeats without background
    # normalisation (on the same images); None for every other experiment.
    ablation_of: str | None = None

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_").replace("→", "-to-").replace(" ", "_")


@dataclass(frozen=True)
class Replicate:
    """Everything one study seed trains and scores."""

    seed: int
    pretrain: dict[str, tuple[str, Split]]  # pretrain key → (dataset key, split whose train rows it learns)
    experiments: tuple[Experiment, ...]
    skipped: tuple[str, ...] = ()  # experiments the data does not allow, each with the reason

    @property
    def headline(self) -> Experiment | None:
        """The first long-tailed experiment: label efficiency, k-means, the supervised network's own
        head and the t-SNE figure are read on it (the natural class distribution, every class)."""
        return next((e for e in self.experiments if e.kind == "long-tailed"), None)

    def scored_sets(self) -> list[tuple[str, str, str, Split, str]]:
        """(experiment, pretrain key, dataset key, split, part) for every part a probe selects or tests on."""
        out = []
        for experiment in self.experiments:
            for part in ("val", "test"):
                out.append((experiment.name, experiment.pretrain, experiment.dataset, experiment.split, part))
            for shifted in experiment.shifted:
                out.append((experiment.name, experiment.pretrain, shifted.dataset, shifted.split, "test"))
            if experiment.processing_shift:  # shifted copies of the test rows' own raw files
                name = f"{experiment.name} processing shift"
                out.append((name, experiment.pretrain, experiment.dataset, experiment.split, "test"))
            if experiment.open_set is not None:
                name, known = f"{experiment.name} open set", experiment.open_set.known
                for part in ("val", "test"):
                    out.append((name, experiment.pretrain, experiment.dataset, known, part))
                out.append(
                    (name, experiment.pretrain, experiment.dataset, experiment.open_set.unknown, "test")
                )
            if experiment.quantification is not None:
                target = experiment.quantification
                name = f"{experiment.name} quantification"
                out.append((name, experiment.pretrain, target.dataset, target.split, "test"))
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
    shares = config.splits
    temporal = temporal_split(
        dataset,
        train_years=train_years,
        test_years=test_years,
        val_fraction=shares.temporal_val_fraction,
        seed=seed,
    )
    return in_and_out_of_period(_cap(config, temporal, seed), fraction=shares.test_fraction, seed=seed)


def pretrain_split(
    config: ExperimentConfig, spec: PretrainSpec, dataset: PreparedDataset, seed: int
) -> Split:
    """The partition whose train rows a backbone learns from (validated kinds only)."""
    if spec.split == "long-tailed":
        return _cap(config, long_tailed_split(dataset, seed=seed, fractions=config.splits.fractions), seed)
    return _temporal(config, dataset, spec.split, seed)[0]


def _balanced(config: ExperimentConfig, dataset: PreparedDataset, seed: int) -> Split:
    """The long-tailed partition's stratified assignment (same seed, same shares), capped per class:
    its validation and test rows are validation and test rows of the pre-training split."""
    shares = config.splits
    split = balanced_split(
        dataset,
        seed=seed,
        min_train=shares.balanced_min_train,
        cap=shares.balanced_cap,
        fractions=shares.fractions,
    )
    return _cap(config, split, seed)


def plan_replicate(config: ExperimentConfig, datasets: dict[str, PreparedDataset], seed: int) -> Replicate:
    s = partition_seed(config, seed)
    # Only the pre-trainings the selected experiments read: an unused one is neither split nor trained.
    pretrain = {
        key: (spec.dataset, pretrain_split(config, spec, datasets[spec.dataset], s))
        for key, spec in config.pretrain.items()
        if key in config.used_pretrain
    }
    experiments: list[Experiment] = []
    skipped: list[str] = []
    families = config.families
    ndsb_key = config.ndsb_pretrain
    if "ndsb" in families:
        common = {"family": "ndsb", "dataset": "ndsb", "pretrain": ndsb_key}
        long_tailed, balanced = NDSB_EXPERIMENTS
        experiments += [
            Experiment(name=long_tailed, kind="long-tailed", split=pretrain[ndsb_key][1], **common),
            Experiment(
                name=balanced, kind="balanced", split=_balanced(config, datasets["ndsb"], s), **common
            ),
        ]
    if "zoolake" in families:
        for key, spec in config.pretrain.items():
            if spec.dataset != "zoolake":
                continue
            within, across = _temporal(config, datasets["zoolake"], spec.split, s)
            experiments.append(
                Experiment(
                    name=zoolake_name(spec.split),
                    family="zoolake",
                    kind="temporal",
                    dataset="zoolake",
                    pretrain=key,
                    split=within,
                    shifted=(ShiftedSet("zoolake", across),),
                )
            )
    if "ndsb-pwssc" in families:
        mapping = load_mapping("ndsb_pwssc")
        base = pretrain[ndsb_key][1]
        for suffix, polarity in (("", "with"), (NOPOL, "without")):
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
                    name=cross_domain_name(polarity),
                    family="ndsb-pwssc",
                    kind="cross-domain",
                    dataset=source,
                    pretrain=ndsb_key,
                    split=_cap(config, source_split, s),
                    shifted=(ShiftedSet(target, _cap(config, target_split, s)),),
                )
            )
    for entry in config.own:
        dataset, partition = pretrain[entry.pretrain]
        name = config.own_name(entry)
        if entry.split == "long-tailed":
            split = partition
        else:
            try:
                split = _balanced(config, datasets[dataset], s)
            except TooFewClasses as error:
                skipped.append(f"{name} skipped: {error}")
                continue
        experiments.append(
            Experiment(
                name=name,
                family="own",
                kind=entry.split,
                dataset=dataset,
                pretrain=entry.pretrain,
                split=split,
            )
        )
    for key, ablated in config.background_ablated.items():
        pretrain[ablated] = _without_background(datasets, *pretrain[key])
        home = config.pretrain[key].dataset  # not the -nopol experiment: it is read on ndsb-nopol
        repeated = [e for e in experiments if e.pretrain == key and e.family in ABLATED and e.dataset == home]
        experiments += [_ablated(e, datasets, ablated) for e in repeated]
    experiments = _with_evaluations(config, experiments, skipped, seed)
    experiments = _with_quantification(config, experiments, skipped, datasets)
    return Replicate(seed=seed, pretrain=pretrain, experiments=tuple(experiments), skipped=tuple(skipped))


def _without_background(
    datasets: dict[str, PreparedDataset], dataset: str, split: Split
) -> tuple[str, Split]:
    """(`<dataset>-nobg`, the same images' split there): its preparation without background
    normalisation, matched by image identity (`translate`)."""
    return f"{dataset}{NOBG}", translate(split, datasets[dataset], datasets[f"{dataset}{NOBG}"])


def _ablated(experiment: Experiment, datasets: dict[str, PreparedDataset], pretrain: str) -> Experiment:
    """`experiment` without background normalisation: read by the backbones `pretrain` (trained on
    that preparation), on the same images in every split, the shifted test set included."""
    dataset, split = _without_background(datasets, experiment.dataset, experiment.split)
    return replace(
        experiment,
        name=ablated_name(experiment.name, experiment.family),
        dataset=dataset,
        pretrain=pretrain,
        split=split,
        shifted=tuple(
            ShiftedSet(*_without_background(datasets, s.dataset, s.split)) for s in experiment.shifted
        ),
        ablation_of=experiment.name,
    )


def _with_evaluations(
    config: ExperimentConfig, experiments: list[Experiment], skipped: list[str], seed: int
) -> list[Experiment]:
    """The experiments `config.evaluations` names (default: the first long-tailed one) with their
    processing shift and open set planned; derived from each experiment's own split only. A name
    this study does not plan (a family not selected, e.g. with `--set experiments=[ndsb]`, or a
    balanced split the data does not allow) is skipped with a warning; a name no experiment of the
    file has is refused when it is loaded (`load_experiment`)."""
    evaluations = config.evaluations
    if evaluations.processing_shift is None and evaluations.open_set is None:
        return experiments
    names = [e.name for e in experiments]
    wanted = list(evaluations.experiments) or [e.name for e in experiments if e.kind == "long-tailed"][:1]
    skipped += [
        f"evaluations of {name} skipped: no such experiment in this study (planned: {', '.join(names)})"
        for name in wanted
        if name not in names
    ]
    out = []
    for experiment in experiments:
        if experiment.name in wanted:
            open_set = None
            if evaluations.open_set is not None:
                split = experiment.split
                held_out = held_out_classes(split.classes, every=evaluations.open_set.hold_out_every)
                known, unknown_rows = open_set_split(split, held_out)
                open_set = OpenSet(
                    held_out=tuple(held_out), known=known, unknown=unknown_split(split, unknown_rows)
                )
            shift = evaluations.processing_shift
            in_seed = shift is not None and (not shift.study_seeds or seed in shift.study_seeds)
            experiment = replace(experiment, processing_shift=in_seed, open_set=open_set)
        out.append(experiment)
    return out


def _with_quantification(
    config: ExperimentConfig,
    experiments: list[Experiment],
    skipped: list[str],
    datasets: dict[str, PreparedDataset],
) -> list[Experiment]:
    """The experiments `evaluations.quantification` names (by name or folder name) with their
    uncapped target planned. A name this study does not plan, or an experiment without a shifted
    target of its own family, is skipped with a warning (`Replicate.skipped`)."""
    spec = config.evaluations.quantification
    if spec is None:
        return experiments
    chosen = {}
    for name in spec.experiments:
        experiment = next((e for e in experiments if name in (e.name, e.slug)), None)
        if experiment is None:
            planned = ", ".join(e.name for e in experiments)
            skipped.append(
                f"quantification of {name} skipped: no such experiment in this study (planned: {planned})"
            )
        elif experiment.kind not in ("temporal", "cross-domain") or experiment.ablation_of:
            skipped.append(
                f"quantification of {name} skipped: it has no shifted target population "
                "(only the ZooLake temporal and NDSB → PWSSC experiments have one)"
            )
        else:
            chosen[experiment.name] = _quantification_target(config, experiment, datasets)
    return [replace(e, quantification=chosen[e.name]) if e.name in chosen else e for e in experiments]


def _quantification_target(
    config: ExperimentConfig, experiment: Experiment, datasets: dict[str, PreparedDataset]
) -> QuantificationTarget:
    """The shifted set's population without the per-class caps: the split that `cap_per_class`
    reduced keeps its `targets` for every row it came from (the temporal split: all rows of its
    classes in every year, so the test years are picked again here; NDSB → PWSSC: every mapped
    PWSSC image)."""
    shifted = experiment.shifted[0]
    dataset = datasets[shifted.dataset]
    population = np.arange(len(dataset))
    if experiment.kind == "temporal":
        test_years = _years(config.pretrain[experiment.pretrain].split)[1]
        years = parse_capture_times(dataset.meta["capture_time"]).dt.year.to_numpy()
        population = population[np.isin(years, test_years)]
    targets = shifted.split.targets
    known = population[targets[population] >= 0]
    empty = known[:0]
    split = Split(
        name=f"{shifted.split.name}-uncapped",
        rows={"train": empty, "val": empty, "test": known},
        targets=targets,
        classes=list(shifted.split.classes),
    )
    return QuantificationTarget(
        dataset=shifted.dataset, split=split, other=population[targets[population] < 0]
    )


__all__ = [
    "Experiment",
    "Kind",
    "OpenSet",
    "QuantificationTarget",
    "Replicate",
    "ShiftedSet",
    "partition_seed",
    "plan_replicate",
    "pretrain_split",
]
