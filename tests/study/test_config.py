from pathlib import Path

import numpy as np
import pytest

from plankdiff.data.splits import Split
from plankdiff.evaluation.label_efficiency import nested_fraction
from plankdiff.study.config import SHIPPED, load_experiment

MINIMAL = """
name: mini
datasets:
  ndsb: {source: a.zip}
  zoolake: {source: b.zip}
  pwssc: {source: c.zip}
pretrain:
  ndsb: {dataset: ndsb, split: long-tailed}
  zoolake-2018+2019: {dataset: zoolake, split: "temporal:2018+2019-2020"}
  zoolake-2018: {dataset: zoolake, split: "temporal:2018-2019"}
diffusion: {preset: tiny, max_minutes: 0.1}
baselines: {methods: [simclr], max_minutes: 0.1}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiments_validate(name):
    config = load_experiment(name)
    assert config.name == name
    needed = {"ndsb": {"ndsb"}, "zoolake": {"zoolake"}, "ndsb-pwssc": {"ndsb", "pwssc"}}
    assert set(config.datasets) >= set().union(*(needed[f] for f in config.experiments))
    # Every method gets the same minutes: one budget for all baselines, the DDPM's set beside it.
    assert config.baselines.max_minutes > 0 and config.diffusion.max_minutes > 0


def test_a_misspelt_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, MINIMAL.replace("preset: tiny", "presett: tiny"))
    with pytest.raises(ValueError) as error:
        load_experiment(path)
    assert str(path) in str(error.value) and "diffusion.presett" in str(error.value)


def test_a_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, MINIMAL.replace("max_minutes: 0.1}\nbaselines", "max_minutes: soon}\nbaselines"))
    with pytest.raises(ValueError, match=r"diffusion\.max_minutes"):
        load_experiment(path)


def test_the_minimal_study_validates_and_runs_every_experiment_family(tmp_path):
    assert load_experiment(write(tmp_path, MINIMAL)).experiments == ("ndsb", "zoolake", "ndsb-pwssc")


def test_a_subset_of_experiments_needs_only_its_datasets_and_backbones(tmp_path):
    text = MINIMAL.replace("  zoolake: {source: b.zip}\n  pwssc: {source: c.zip}\n", "")
    text = text.replace('  zoolake-2018+2019: {dataset: zoolake, split: "temporal:2018+2019-2020"}\n', "")
    text = text.replace('  zoolake-2018: {dataset: zoolake, split: "temporal:2018-2019"}\n', "")
    assert load_experiment(write(tmp_path, "experiments: [ndsb]\n" + text)).experiments == ("ndsb",)
    with pytest.raises(ValueError, match="datasets.zoolake is required by the zoolake experiments"):
        load_experiment(write(tmp_path, text))


def test_a_missing_temporal_backbone_is_named(tmp_path):
    text = MINIMAL.replace('  zoolake-2018: {dataset: zoolake, split: "temporal:2018-2019"}\n', "")
    with pytest.raises(ValueError, match="zoolake experiments need a pretrain entry .* 'temporal:2018-2019'"):
        load_experiment(write(tmp_path, text))


def test_an_unknown_experiment_family_is_named(tmp_path):
    with pytest.raises(ValueError, match="experiments"):
        load_experiment(write(tmp_path, "experiments: [ndsb, plankton]\n" + MINIMAL))


def test_pretraining_on_an_unknown_dataset_is_refused(tmp_path):
    path = write(tmp_path, MINIMAL.replace("ndsb: {dataset: ndsb", "ndsb: {dataset: ndbs"))
    with pytest.raises(ValueError, match="unknown dataset 'ndbs'"):
        load_experiment(path)


def test_label_fractions_nest_and_keep_every_class():
    targets = np.repeat(np.arange(3), [50, 10, 2])
    rows = np.arange(len(targets))
    split = Split("s", {"train": rows, "val": rows[:0], "test": rows[:0]}, targets, ["a", "b", "c"])
    small, large = nested_fraction(split, 0.1, seed=0), nested_fraction(split, 0.5, seed=0)
    assert set(small) <= set(large)
    assert set(targets[small]) == {0, 1, 2}  # at least one image per class
    assert len(small) == 5 + 1 + 1
