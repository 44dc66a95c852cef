"""Experiment files (`plankdiff run EXPERIMENT.yaml`), validated so a misspelt key or a wrong type
is reported with the file and the key, before anything runs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from plankdiff.choices import NOISE_CEILING, Markers, Precision, ShiftName
from plankdiff.data.preprocess import CHANNELS, MAX_SIZE, MIN_SIZE, default_background, default_markers
from plankdiff.data.shares import SplitOptions
from plankdiff.diffusion.config import PRESETS, EMAWarmup, TimestepSampling, load_config
from plankdiff.features.spec import SearchSpec
from plankdiff.probe.protocol import DEFAULT_KEEP, HOLD_OUT_EVERY, EvaluationProtocol
from plankdiff.validation import problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Strict):
    source: str  # zip or folder; relative paths are resolved against the project root
    size: int = Field(32, ge=MIN_SIZE, le=MAX_SIZE)
    mode: Literal["fit", "keep-scale"] = "fit"
    channels: Literal[CHANNELS] = 1
    polarity: bool = True
    # Background and contrast normalisation after polarity; None: on where polarity is normalised.
    background: Literal["none", "normalise"] | None = None
    # remove: small separate parts in a corner of the frame (scale markers) become background;
    # None: removed where the background is normalised (`default_markers`).
    markers: Markers | None = None
    # The most noise (robust σ, grey levels) the border may claim in background normalisation
    # (`NOISE_CEILING`); null: no ceiling, as preparations made before it existed.
    noise_ceiling: float | None = Field(NOISE_CEILING, gt=0)

    @property
    def resolved_background(self) -> Literal["none", "normalise"]:
        """What the preparation applies (`default_background` where the file does not say)."""
        return self.background or default_background(self.polarity)

    @property
    def resolved_markers(self) -> Markers:
        """What the preparation applies (`default_markers` where the file does not say)."""
        return self.markers or default_markers(self.resolved_background)

    @property
    def resolved_noise_ceiling(self) -> float | None:
        """What the preparation applies: none without background normalisation (`prepare`)."""
        return self.noise_ceiling if self.resolved_background == "normalise" else None

    def identity(self) -> dict:
        """What decides whether a preparation is reused (with the source's name and content), as
        applied: the resolved background and noise ceiling. The options added after preparations
        were cached join it only when they change what is applied, so those keep their key:
        `markers` when it resolves to "remove", `noise_ceiling` when not None (and background
        normalisation is on)."""
        fields = self.model_dump(exclude={"markers", "noise_ceiling"}) | {
            "background": self.resolved_background
        }
        if self.resolved_markers != "keep":
            fields["markers"] = self.resolved_markers
        if self.resolved_noise_ceiling is not None:
            fields["noise_ceiling"] = self.resolved_noise_ceiling
        return fields


class PretrainSpec(Strict):
    """The unlabelled (for SSL and diffusion) or labelled (supervised) images a backbone learns from."""

    dataset: str
    split: str  # a split kind name resolved by the runner: long-tailed | temporal:<train>-<test>


SAMPLE_GRID = 36  # images in the DDPM's sample grid after pre-training (6 × 6)


class Budget(Strict):
    """How long a backbone trains: wall-clock minutes, training FLOPs (in units of 1e12, the same on
    a busy or idle machine), or both (whichever runs out first). At least one is required."""

    max_minutes: float | None = Field(None, gt=0)
    max_tflops: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _bounded(self):
        if self.max_minutes is None and self.max_tflops is None:
            raise ValueError("give max_minutes, max_tflops or both")
        return self


class DiffusionSpec(Budget):
    preset: str = "cpu"  # a shipped preset or a YAML file (relative to the working directory)
    batch_size: int | None = Field(None, ge=1)
    # Images in the DDIM sample grid drawn after training (25 steps each; none with 0): at 64 px the
    # `paper` preset's 36 × 25 forward passes take minutes on a CPU, longer than a smoke test trains.
    samples: int = Field(SAMPLE_GRID, ge=0)
    # Training options replacing the preset's (`TrainConfig`, issue #15); None: the preset's own.
    timestep_sampling: TimestepSampling | None = None
    ema_warmup: EMAWarmup | None = None
    # Learning-rate warm-up steps; None: the preset's (the cpu preset's 100 steps are ~80 % of a
    # 25-TFLOP run of ~122 steps, so a short run barely trains at its full rate).
    warmup_steps: int | None = Field(None, ge=0)

    def train_overrides(self) -> dict:
        """The preset's `train` fields this block replaces (`load_config`'s overrides; None: kept)."""
        fields = {"timestep_sampling": self.timestep_sampling, "ema_warmup": self.ema_warmup}
        return {
            "max_minutes": self.max_minutes,
            "max_tflops": self.max_tflops,
            "batch_size": self.batch_size,
            "warmup_steps": self.warmup_steps,
            **{k: v.model_dump(mode="json") for k, v in fields.items() if v is not None},
        }

    def identity(self) -> dict:
        """What decides whether a trained backbone is reused. The options added after backbones
        were cached join it only when not at their defaults, so those backbones keep their key:
        `samples` (the grid is a figure, not the backbone), `timestep_sampling`, `ema_warmup` and
        `warmup_steps`."""
        fields = self.model_dump(mode="json")
        defaults = {
            "samples": SAMPLE_GRID,
            "timestep_sampling": None,
            "ema_warmup": None,
            "warmup_steps": None,
        }
        return {k: v for k, v in fields.items() if k not in defaults or v != defaults[k]}

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str) -> str:
        if preset not in PRESETS and not Path(preset).is_file():
            raise ValueError(f"unknown preset {preset!r}: one of {', '.join(PRESETS)} or a YAML file")
        return preset


class BaselineSpec(Budget):
    """The baselines trained beside the DDPM. `methods: []` trains none (a DDPM-only study, e.g. to
    compare DDPM options; raw pixels stay as the floor unless `include_raw_pixels: false`), and
    then needs no budget."""

    methods: tuple[str, ...] = ("supervised", "simclr", "byol", "dino", "mae")
    include_raw_pixels: bool = True
    # Every method's batch size; None: each method's own default (`BaselineConfig`).
    batch_size: int | None = Field(None, ge=2)  # contrastive losses need at least one other image
    # Every method's network width (`plankdiff baseline train --width`: the ResNet-18's base width,
    # MAE's ViT width); None: each method's own (64; MAE 192). Narrower for pipeline checks and tests:
    # a full-width ResNet-18 run folder (weights and optimizer state) is ~130 MB, at width 8 ~2 MB.
    width: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _bounded(self):  # replaces Budget's: no budget to give when nothing trains
        return super()._bounded() if self.methods else self

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        from plankdiff.baselines.registry import get_method  # imports torch: only when validating

        for method in methods:
            get_method(method)  # a ValueError naming the known methods
        return methods

    @model_validator(mode="after")
    def _width_fits_every_method(self):
        """A width a method's network cannot take (MAE's heads) is refused here, not after the data
        is prepared and the other backbones have trained."""
        from plankdiff.baselines.registry import get_method

        for method in self.methods if self.width is not None else ():
            problem = get_method(method).width_problem(self.width)
            if problem:
                raise ValueError(f"width {self.width} does not fit baseline {method}: {problem}")
        return self


class Caps(Strict):
    """Reduced budgets: at most this many images per class in each part of every split."""

    train: int = Field(gt=0)
    val: int = Field(gt=0)
    test: int = Field(gt=0)


EXPERIMENT_FAMILIES = ("ndsb", "zoolake", "ndsb-pwssc")
# The NDSB → PWSSC datasets prepared without polarity normalisation (the ndsb-pwssc family's second
# experiment, planned when the file lists both).
NOPOL = "-nopol"
UNNORMALISED = (f"ndsb{NOPOL}", f"pwssc{NOPOL}")
Family = Literal["ndsb", "zoolake", "ndsb-pwssc"]
# The background ablation's preparations (`Ablations.background`): `<dataset>-nobg`, and its
# backbones' pretrain keys, `<pretrain key>-nobg`.
NOBG = "-nobg"
# The families whose experiments the background ablation repeats.
ABLATED = ("ndsb-pwssc", "zoolake")
# The ZooLake pre-training the background ablation repeats: 2018+2019 → 2020 (issue #19).
ZOOLAKE_2020 = "temporal:2018+2019-2020"
# The scored split of an experiment on one's own data (`OwnExperiment.split`).
OwnSplit = Literal["long-tailed", "balanced"]


# The names experiments have in tables, results and `evaluations.experiments` (`plan.Experiment.name`).
NDSB_EXPERIMENTS = ("ndsb/long-tailed", "ndsb/balanced")


def zoolake_name(split: str) -> str:
    """`temporal:2018+2019-2020` → `zoolake/2018+2019→2020`."""
    train, test = split.removeprefix("temporal:").split("-")
    return f"zoolake/{train}→{test}"


def cross_domain_name(polarity: Literal["with", "without"]) -> str:
    return f"ndsb→pwssc/{polarity} polarity normalisation"


def ablated_name(name: str, family: str) -> str:
    """The background ablation's repeat of experiment `name` (`plan._ablated`):
    ndsb→pwssc/with polarity normalisation → ndsb→pwssc/without background normalisation,
    zoolake/2018+2019→2020 → zoolake/2018+2019→2020 without background normalisation."""
    head, _, setting = name.partition("/")
    setting = "" if family == "ndsb-pwssc" else f"{setting} "
    return f"{head}/{setting}without background normalisation"


class OwnExperiment(Strict):
    """An experiment on any dataset (a folder or zip of one's own), named `<dataset>/<split>`.

    Its probes read the backbones of pre-training `pretrain` (a `long-tailed` one) and are scored
    on that same partition, so no backbone sees a validation or test image: `long-tailed` is the
    pre-training split itself; `balanced` caps the same stratified assignment per class, and is
    skipped with a warning when fewer than 2 classes have `splits.balanced_min_train` training
    images."""

    pretrain: str
    split: OwnSplit = "long-tailed"


# A family name or a mapping, told apart before validation so that a mistake gets one message
# about what it is meant to be (not one per member of the union).
ExperimentEntry = Annotated[
    Annotated[Family, Tag("family")] | Annotated[OwnExperiment, Tag("own")],
    Discriminator(lambda value: "own" if isinstance(value, dict | OwnExperiment) else "family"),
]


class ProcessingShiftSpec(Strict):
    """Shifted copies of an experiment's test images, built from the raw files of its dataset's
    source and prepared like it (`plankdiff.evaluation.processing_shift`); each method's probe
    selected on clean validation is applied to them."""

    shifts: tuple[ShiftName, ...] = Field(get_args(ShiftName), min_length=1)
    seed: int = 0  # the shifts' own draws (noise, JPEG quality, corner), per image from (seed, path)
    # The study seeds (replicates) it runs in; empty: every one. Each run extracts every method's
    # features on seven shifted copies of the test images, the costliest evaluation by far.
    study_seeds: tuple[int, ...] = ()


class OpenSetSpec(Strict):
    """Classes held out of an experiment's probe (every `hold_out_every`-th class name, sorted: fixed
    before any result), and the out-of-distribution cut calibrated to keep `keep` of the known
    classes' validation images (`plankdiff.evaluation.open_set`)."""

    hold_out_every: int = Field(HOLD_OUT_EVERY, ge=2)
    keep: float = Field(DEFAULT_KEEP, gt=0, le=1)


# The two shifts the project holds data for (issue #16): a year later, and another ocean and camera.
QUANTIFIED = ("zoolake/2018+2019→2020", "ndsb→pwssc/with polarity normalisation")


class QuantificationSpec(Strict):
    """Class counts under the experiments' shift (`plankdiff.evaluation.quantification`): each
    method's probe, as the study selected it on validation, temperature-scaled on validation and
    counted by CC, PCC, PACC and EMQ on every image of the shifted target (not the per-class capped
    test rows: a cap flattens the class mix being measured), per capture day and pooled.
    `experiments`: names (or folder names, `zoolake_2018+2019-to-2020`) of experiments with a shifted
    test set; one this study does not plan is skipped with a warning."""

    experiments: tuple[str, ...] = Field(QUANTIFIED, min_length=1)
    # A day with fewer images of the probe's classes stays in the pooled score and the per-day rows
    # but not in the per-day median: a handful of images has no composition to judge a method on.
    min_images: int = Field(20, ge=1)


class Evaluations(Strict):
    """Evaluations beyond the probes, each off unless given. `experiments`: the names of the
    experiments they run on (e.g. `ndsb/long-tailed`, `mine/long-tailed`); empty: the first
    long-tailed one (`Replicate.headline`). `quantification` names its own experiments (shifted
    ones)."""

    experiments: tuple[str, ...] = ()
    processing_shift: ProcessingShiftSpec | None = None
    open_set: OpenSetSpec | None = None
    quantification: QuantificationSpec | None = None

    @model_validator(mode="after")
    def _names_are_evaluated(self):
        if self.experiments and self.processing_shift is None and self.open_set is None:
            raise ValueError(
                "experiments are named but no evaluation is on: add processing_shift or open_set"
            )
        return self


class Ablations(Strict):
    """Opt-in ablations: each adds experiments beside the selected ones and changes none of them (their
    stages keep their keys). `background: true` (issue #19): the ndsb-pwssc and ZooLake 2018+2019 →
    2020 experiments again, without background and contrast normalisation. Their datasets
    (`<dataset>-nobg`: ndsb, pwssc, zoolake) are prepared from the same sources with `background:
    none` and every other setting the same; every method (DDPM and baselines, same budgets and seeds)
    is pre-trained again on that preparation, on the same images as its normalised counterpart
    (pretrain key `<key>-nobg`); probes are fitted, selected and scored on the same images, the
    shifted test set (PWSSC, ZooLake 2020) included."""

    background: bool = False


class ExperimentConfig(Strict):
    name: str
    description: str = ""
    # What the budgets mean for the numbers, shown first in the report (e.g. "a pipeline check").
    note: str = ""
    # ndsb: balanced and long-tailed; zoolake: the two temporal shifts; ndsb-pwssc: the
    # geographic/instrument shift; {pretrain: KEY, split: long-tailed|balanced}: an experiment on
    # any dataset (`OwnExperiment`). A study may run a subset of them; label efficiency, k-means
    # and the t-SNE figure are read on the first long-tailed experiment. An empty list is refused.
    experiments: tuple[ExperimentEntry, ...] = EXPERIMENT_FAMILIES
    # One replicate per seed: backbones retrained with it, probes fitted with it, and (with
    # vary_partition) its own stratified train/val/test partition.
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1)
    vary_partition: bool = True
    datasets: dict[str, DatasetSpec]
    pretrain: dict[str, PretrainSpec]
    diffusion: DiffusionSpec
    baselines: BaselineSpec
    features: SearchSpec = SearchSpec()
    # One protocol for every method's features (orientations, object size, fusion, probe losses
    # and grid, precision); every choice in it is made on validation rows.
    protocol: EvaluationProtocol = EvaluationProtocol()
    # Every backbone's training precision (plankdiff.precision): auto = bf16 autocast where the
    # hardware has bf16 units. A study compares seeds and methods, so pin it where a study began
    # before bf16 training existed or must match runs made elsewhere.
    training_precision: Precision = "auto"
    caps: Caps | None = None
    splits: SplitOptions = SplitOptions()
    label_fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 1.0)
    kmeans: bool = True
    evaluations: Evaluations = Evaluations()
    ablations: Ablations = Ablations()

    @property
    def families(self) -> tuple[str, ...]:
        """The shipped experiment families selected (ndsb, zoolake, ndsb-pwssc)."""
        return tuple(e for e in self.experiments if isinstance(e, str))

    @property
    def own(self) -> tuple[OwnExperiment, ...]:
        """The experiments on datasets of one's own, in the order the file lists them."""
        return tuple(e for e in self.experiments if isinstance(e, OwnExperiment))

    @property
    def ndsb_pretrain(self) -> str | None:
        """The pre-training the ndsb and ndsb-pwssc experiments read: the first one on NDSB."""
        return next((k for k, spec in self.pretrain.items() if spec.dataset == "ndsb"), None)

    @property
    def background_ablated(self) -> dict[str, str]:
        """The pretrain keys the background ablation repeats without normalisation (`Ablations`),
        each → its ablated key (`<key>-nobg`); empty when the ablation is off."""
        if not self.ablations.background:
            return {}
        keys = [self.ndsb_pretrain] if "ndsb-pwssc" in self.families else []
        if "zoolake" in self.families:
            keys += [
                k
                for k, spec in self.pretrain.items()
                if (spec.dataset, spec.split) == ("zoolake", ZOOLAKE_2020)
            ]
        return {key: f"{key}{NOBG}" for key in keys if key is not None}

    @property
    def background_datasets(self) -> dict[str, DatasetSpec]:
        """The background ablation's preparations: `<dataset>-nobg`, the file's spec of `<dataset>`
        with `background: none` (so everything else is the same; corner markers, which need the
        normalised background's object mask, are kept); empty when the ablation is off."""
        ablated = {self.pretrain[key].dataset for key in self.background_ablated}
        if self.ndsb_pretrain in self.background_ablated:  # NDSB → PWSSC: scored on PWSSC
            ablated.add("pwssc")
        return {
            f"{name}{NOBG}": self.datasets[name].model_copy(update={"background": "none", "markers": "keep"})
            for name in self.datasets
            if name in ablated
        }

    @property
    def dataset_specs(self) -> dict[str, DatasetSpec]:
        """Every dataset a study may prepare: the file's, then the background ablation's."""
        return self.datasets | self.background_datasets

    @property
    def used_pretrain(self) -> tuple[str, ...]:
        """The pretrain keys the selected experiments read, in file order: only these are planned
        and trained (an unused entry's split may not even be drawable on the data given)."""
        used = {e.pretrain for e in self.own}
        if {"ndsb", "ndsb-pwssc"} & set(self.families):
            used.add(self.ndsb_pretrain)
        if "zoolake" in self.families:
            used |= {k for k, spec in self.pretrain.items() if spec.dataset == "zoolake"}
        return tuple(k for k in self.pretrain if k in used)

    @property
    def used_datasets(self) -> tuple[str, ...]:
        """The datasets the selected experiments read, in file order: only these are prepared."""
        used = {self.pretrain[k].dataset for k in self.used_pretrain}
        if "ndsb-pwssc" in self.families:
            used.add("pwssc")
            # The pair without polarity normalisation is scored only when both are listed.
            if set(UNNORMALISED) <= set(self.datasets):
                used |= set(UNNORMALISED)
        # The background ablation's preparations follow the file's (`dataset_specs` order).
        used |= set(self.background_datasets)
        return tuple(k for k in self.dataset_specs if k in used)

    def experiment_names(self, families: Sequence[str] | None = None) -> tuple[str, ...]:
        """The names of the experiments the file plans with `families` selected (default: the ones
        it selects) beside its own, the background ablation's included, in planning order. A
        balanced experiment on one's own data may still be skipped for its data (`plan_replicate`)."""
        chosen = self if families is None else self.model_copy(update={"experiments": (*families, *self.own)})
        names: list[tuple[str, str, str, str]] = []  # (name, family, pretrain key, dataset)
        ndsb = chosen.ndsb_pretrain
        if "ndsb" in chosen.families:
            names += [(name, "ndsb", ndsb, "ndsb") for name in NDSB_EXPERIMENTS]
        if "zoolake" in chosen.families:
            names += [
                (zoolake_name(spec.split), "zoolake", key, "zoolake")
                for key, spec in chosen.pretrain.items()
                if spec.dataset == "zoolake"
            ]
        if "ndsb-pwssc" in chosen.families:
            names.append((cross_domain_name("with"), "ndsb-pwssc", ndsb, "ndsb"))
            if set(UNNORMALISED) <= set(chosen.datasets):
                names.append((cross_domain_name("without"), "ndsb-pwssc", ndsb, f"ndsb{NOPOL}"))
        names += [
            (chosen.own_name(e), "own", e.pretrain, chosen.pretrain[e.pretrain].dataset) for e in chosen.own
        ]
        for key in chosen.background_ablated:  # the experiments `plan_replicate` repeats
            home = chosen.pretrain[key].dataset
            names += [
                (ablated_name(name, family), family, key, dataset)
                for name, family, pretrain, dataset in list(names)
                if pretrain == key and family in ABLATED and dataset == home
            ]
        return tuple(name for name, *_ in names)

    def own_name(self, entry: OwnExperiment) -> str:
        """`<dataset>/<split>`, the name an experiment on one's own data has in tables and results."""
        return f"{self.pretrain[entry.pretrain].dataset}/{entry.split}"

    @field_validator("experiments")
    @classmethod
    def _selects_something(cls, experiments: tuple) -> tuple:
        if not experiments:
            raise ValueError(
                "selects no experiment: name a family (ndsb, zoolake, ndsb-pwssc) or "
                "{pretrain: KEY, split: long-tailed|balanced}"
            )
        return experiments

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, fractions: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"{bad} outside (0, 1]")
        return fractions

    @model_validator(mode="after")
    def _shift_seeds_are_study_seeds(self) -> ExperimentConfig:
        shift = self.evaluations.processing_shift
        stray = sorted(set(shift.study_seeds) - set(self.seeds)) if shift else []
        if stray:
            raise ValueError(
                f"evaluations.processing_shift.study_seeds {stray} are not among the study's seeds {list(self.seeds)}"
            )
        return self

    @model_validator(mode="after")
    def _background_ablation_has_something_to_ablate(self) -> ExperimentConfig:
        if not self.ablations.background:
            return self
        if not set(ABLATED) & set(self.families):
            raise ValueError(f"ablations.background needs the {' or '.join(ABLATED)} experiments")
        derived = sorted(self.background_datasets)
        for name in derived:
            base = self.datasets[name.removesuffix(NOBG)]
            if base.resolved_background != "normalise":
                raise ValueError(
                    f"ablations.background: datasets.{name.removesuffix(NOBG)} is not background-normalised "
                    "(polarity: false or background: none), so there is nothing to ablate"
                )
        taken = [f"datasets.{k}" for k in derived if k in self.datasets] + [
            f"pretrain.{k}" for k in self.background_ablated.values() if k in self.pretrain
        ]
        if taken:
            raise ValueError(
                f"ablations.background: {', '.join(taken)} is the ablation's own name; rename it"
            )
        return self

    @model_validator(mode="after")
    def _sizes_fit_the_networks(self) -> ExperimentConfig:
        """Every pre-trained dataset's size must suit the diffusion preset and each baseline, which
        a real run would only find out when it builds them, after preparing the data."""
        from plankdiff.baselines.registry import get_method

        unet = load_config(self.diffusion.preset)
        for name in sorted({spec.dataset for spec in self.pretrain.values()} & set(self.datasets)):
            size = self.datasets[name].size
            problem = unet.size_problem(size)
            if problem:
                raise ValueError(
                    f"datasets.{name}.size {size} does not fit preset {self.diffusion.preset}: {problem}"
                )
            for method in self.baselines.methods:
                problem = get_method(method).size_problem(size)
                if problem:
                    raise ValueError(f"datasets.{name}.size {size} does not fit baseline {method}: {problem}")
        return self


# ddpm-*: one DDPM option each against the `cpu` preset at 25 TFLOP (issue #15 §3)
SHIPPED = (
    "quick",
    "cpu",
    "gpu",
    "compare",
    "best",
    "scaling-low",
    "scaling-high",
    "ddpm-lownoise",
    "ddpm-ema-warmup",
    "ddpm-wide8",
    "ddpm-64px",
    "ddpm-warmup10",
    "ddpm-bf16",
    "normalisation",  # issue #19: with and without background normalisation
    "markers",  # issue #19: scale-marker removal, with the processing-shift benchmark
    "compare-64px",  # issue #15: every method at 64 px, after the ddpm-64px option
)


def parse_override(text: str) -> tuple[tuple[str, ...], object]:
    """`diffusion.max_minutes=0.05` → (("diffusion", "max_minutes"), 0.05); the value is read as YAML,
    so numbers, lists (`seeds=[0]`) and mappings (`caps={train: 4, val: 2, test: 2}`) keep their type."""
    key, sep, value = text.partition("=")
    path = tuple(key.strip().split("."))
    if not sep or not all(path):
        raise ValueError(f"--set {text!r}: not KEY=VALUE with a dotted KEY (e.g. diffusion.max_minutes=5)")
    try:
        return path, yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ValueError(f"--set {text!r}: the value is not YAML: {str(error).splitlines()[0]}") from None


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """A copy of an experiment file's contents with each `KEY=VALUE` set, before validation: an
    override is checked exactly as the file's own keys are (a misspelt key or a wrong type is refused
    by the same model), so a shipped experiment can run with other budgets without editing it."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for depth, key in enumerate(path[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ValueError(f"--set {text!r}: {where} is {child!r}, not a mapping with keys")
            node = child
        node[path[-1]] = value
    return raw


def load_experiment(path_or_name: str | Path, *, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """`overrides`: `KEY=VALUE` settings applied on top of the file (`plankdiff run --set`)."""
    if str(path_or_name) in SHIPPED:
        source = resources.files("plankdiff") / "configs" / "experiments" / f"{path_or_name}.yaml"
    else:
        source = Path(path_or_name)
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{source}: cannot read experiment file: {error}") from None
    if overrides:
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: not a mapping of experiment keys; cannot apply --set")
        raw = apply_overrides(raw, overrides)
        source = f"{source} with --set {' '.join(overrides)}"
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ValueError(problems(error, source=source, what="experiment")) from None
    for name, spec in config.pretrain.items():
        if spec.dataset not in config.datasets:
            raise ValueError(f"{source}: pretrain.{name}.dataset names unknown dataset {spec.dataset!r}")
    _check_datasets_are_read(config, source)
    for family in config.families:
        problem = _family_problem(config, family)
        if problem:
            raise ValueError(f"{source}: {problem}")
    _check_own(config, source)
    _check_evaluated(config, source)
    return config


# What each experiment family reads: datasets, and pre-trainings as (dataset, split).
FAMILY_DATASETS = {"ndsb": ("ndsb",), "zoolake": ("zoolake",), "ndsb-pwssc": ("ndsb", "pwssc")}
FAMILY_PRETRAIN = {
    "ndsb": (("ndsb", "long-tailed"),),
    "ndsb-pwssc": (("ndsb", "long-tailed"),),
    "zoolake": (("zoolake", "temporal:2018+2019-2020"), ("zoolake", "temporal:2018-2019")),
}


def _family_problem(config: ExperimentConfig, family: str) -> str | None:
    """Why the file cannot run `family`'s experiments (a dataset or a pre-training missing), or None."""
    for dataset in FAMILY_DATASETS[family]:
        if dataset not in config.datasets:
            return f"datasets.{dataset} is required by the {family} experiments"
    pretrained = {(spec.dataset, spec.split) for spec in config.pretrain.values()}
    for dataset, split in FAMILY_PRETRAIN[family]:
        if (dataset, split) not in pretrained:
            return (
                f"the {family} experiments need a pretrain entry with dataset {dataset} and split {split!r}"
            )
    return None


def _check_datasets_are_read(config: ExperimentConfig, source: object) -> None:
    """Every dataset the file lists is read by something: a misspelt name (`pwssc-nopl`) would
    otherwise leave its experiment out of the study without a word."""
    families = sorted({d for datasets in FAMILY_DATASETS.values() for d in datasets} | set(UNNORMALISED))
    read = {spec.dataset for spec in config.pretrain.values()} | set(families)
    for name in config.datasets:
        if name not in read:
            raise ValueError(
                f"{source}: datasets.{name} is read by no pretrain entry and no experiment family "
                f"(the families read {', '.join(families)})"
            )
    listed = [name for name in UNNORMALISED if name in config.datasets]
    if len(listed) == 1:
        missing = next(name for name in UNNORMALISED if name not in listed)
        raise ValueError(
            f"{source}: datasets.{listed[0]} is read only beside datasets.{missing} (the ndsb-pwssc "
            "experiment without polarity normalisation); add it or remove both"
        )


def _check_evaluated(config: ExperimentConfig, source: object) -> None:
    """`evaluations.experiments` names experiments of the file: of the families it selects or has
    the data for (a family left out, e.g. with `--set experiments=[ndsb]`, skips its evaluations
    with a warning) and its own; any other name (a misspelling) would quietly evaluate nothing."""
    valid = config.experiment_names([f for f in EXPERIMENT_FAMILIES if not _family_problem(config, f)])
    for position, name in enumerate(config.evaluations.experiments):
        if name not in valid:
            raise ValueError(
                f"{source}: evaluations.experiments.{position} names no experiment of this file: {name!r} "
                f"(valid: {', '.join(valid)})"
            )


def _check_own(config: ExperimentConfig, source: object) -> None:
    """Experiments on one's own data: each reads an existing long-tailed pre-training (its scored
    split is drawn from that partition), and no two experiments share a name."""
    names = ["ndsb/long-tailed", "ndsb/balanced"] if "ndsb" in config.families else []
    for position, entry in enumerate(config.experiments):
        if not isinstance(entry, OwnExperiment):
            continue
        key = f"experiments.{position}.pretrain"
        spec = config.pretrain.get(entry.pretrain)
        if spec is None:
            known = ", ".join(config.pretrain) or "none"
            raise ValueError(
                f"{source}: {key} names unknown pretrain entry {entry.pretrain!r} (known: {known})"
            )
        if spec.split != "long-tailed":
            raise ValueError(
                f"{source}: {key}: pretrain.{entry.pretrain} has split {spec.split!r}; an experiment on "
                "one's own data is scored on its pre-training partition, which must be 'long-tailed'"
            )
        name = config.own_name(entry)
        if name in names:
            raise ValueError(f"{source}: {key}: experiment {name!r} is selected twice")
        names.append(name)
