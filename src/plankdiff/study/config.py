"""Experiment files (`plankdiff run EXPERIMENT.yaml`), validated so a misspelt key or a wrong type
is reported with the file and the key, before anything runs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plankdiff.probe.protocol import EvaluationProtocol


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Strict):
    source: str  # zip or folder; relative paths are resolved against the project root
    size: int = 32
    mode: Literal["fit", "keep-scale"] = "fit"
    channels: int = 1
    polarity: bool = True
    # Background and contrast normalisation after polarity; None: on where polarity is normalised.
    background: Literal["none", "normalise"] | None = None


class PretrainSpec(Strict):
    """The unlabelled (for SSL and diffusion) or labelled (supervised) images a backbone learns from."""

    dataset: str
    split: str  # a split kind name resolved by the runner: long-tailed | temporal:<train>-<test>


class DiffusionSpec(Strict):
    preset: str = "cpu"
    max_minutes: float = Field(gt=0)
    batch_size: int | None = None


class BaselineSpec(Strict):
    methods: tuple[str, ...] = ("supervised", "simclr", "byol", "dino", "mae")
    max_minutes: float = Field(gt=0)
    include_raw_pixels: bool = True


class FeatureSpec(Strict):
    timesteps: tuple[int, ...] = (1, 5, 10, 25, 50, 100, 200, 400, 700)
    per_class_train: int = 20
    per_class_val: int = 10
    keep_timesteps: int = 2
    keep_blocks: int | None = Field(None, ge=1)  # None: every block in the fine pass
    batch_size: int = 128


class Caps(Strict):
    """Reduced budgets: at most this many images per class in each part of every split."""

    train: int = Field(gt=0)
    val: int = Field(gt=0)
    test: int = Field(gt=0)


EXPERIMENT_FAMILIES = ("ndsb", "zoolake", "ndsb-pwssc")
Family = Literal["ndsb", "zoolake", "ndsb-pwssc"]


class ExperimentConfig(Strict):
    name: str
    description: str = ""
    # ndsb: balanced and long-tailed (with label efficiency and k-means); zoolake: the two temporal
    # shifts; ndsb-pwssc: the geographic/instrument shift. A study may run a subset of them.
    experiments: tuple[Family, ...] = EXPERIMENT_FAMILIES
    # One replicate per seed: backbones retrained with it, probes fitted with it, and (with
    # vary_partition) its own stratified train/val/test partition.
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1)
    vary_partition: bool = True
    datasets: dict[str, DatasetSpec]
    pretrain: dict[str, PretrainSpec]
    diffusion: DiffusionSpec
    baselines: BaselineSpec
    features: FeatureSpec = FeatureSpec()
    # One protocol for every method's features (orientations, object size, fusion, probe losses
    # and grid, precision); every choice in it is made on validation rows.
    protocol: EvaluationProtocol = EvaluationProtocol()
    caps: Caps | None = None
    label_fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 1.0)
    kmeans: bool = True


SHIPPED = ("quick", "cpu", "gpu", "compare", "best")


def load_experiment(path_or_name: str | Path) -> ExperimentConfig:
    if str(path_or_name) in SHIPPED:
        source = resources.files("plankdiff") / "configs" / "experiments" / f"{path_or_name}.yaml"
    else:
        source = Path(path_or_name)
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{source}: cannot read experiment file: {error}") from None
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"{source}: invalid experiment: {problems}") from None
    for name, spec in config.pretrain.items():
        if spec.dataset not in config.datasets:
            raise ValueError(f"{source}: pretrain.{name}.dataset names unknown dataset {spec.dataset!r}")
    needed = {"ndsb": ("ndsb",), "zoolake": ("zoolake",), "ndsb-pwssc": ("ndsb", "pwssc")}
    for family in config.experiments:
        for dataset in needed[family]:
            if dataset not in config.datasets:
                raise ValueError(f"{source}: datasets.{dataset} is required by the {family} experiments")
    pretrained = {(spec.dataset, spec.split) for spec in config.pretrain.values()}
    wanted = {
        "ndsb": [("ndsb", "long-tailed")],
        "ndsb-pwssc": [("ndsb", "long-tailed")],
        "zoolake": [("zoolake", "temporal:2018+2019-2020"), ("zoolake", "temporal:2018-2019")],
    }
    for family in config.experiments:
        for dataset, split in wanted[family]:
            if (dataset, split) not in pretrained:
                raise ValueError(
                    f"{source}: the {family} experiments need a pretrain entry with dataset {dataset} "
                    f"and split {split!r}"
                )
    return config
